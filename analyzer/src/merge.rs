//! Merging the per-pCPU streams of a log into one host-time order.
//!
//! The hypervisor keeps one sample ring per pCPU and drains them one after the
//! other (when one is three-quarters full, and at the end), so the log holds
//! a whole ring of pCPU 0, then a whole ring of pCPU 1, and so on: batches of
//! different pCPUs interleave only coarsely. The aggregator needs the samples
//! in global TSC order (a vCPU that migrates is seen leaving one pCPU and
//! arriving on another), so each stream is buffered until every other stream
//! has caught up with it, and the smallest head is handed on first (ties: the
//! lower pCPU first).
//!
//! Memory stays bounded: a stream buffers at most [`LOOKAHEAD_SAMPLES`]
//! samples. Beyond that (a pCPU whose stream stopped, or lags by more than two
//! rings) the oldest buffered samples are handed on anyway; a sample that then
//! arrives older than one already handed on is still aggregated, but counted
//! in [`MergeStats::out_of_order`] (as is a sample whose pCPU's TSC went
//! back), so the report can say that steal/idle near it is approximate.
//!
//! Merged samples are handed on in runs of about a thousand, each tagged with
//! its pCPU, so samples that alternate between pCPUs cost no call each.

use std::collections::VecDeque;

use vmlog::{Sample, SchedEvent};

/// Samples a stream may buffer while waiting for the other streams: two of
/// the hypervisor's 8192-sample rings (a ring is drained at 3/4 full, and a
/// pCPU's ring can fill up while the others are being written out).
pub const LOOKAHEAD_SAMPLES: usize = 2 * 8192;

/// What the merge saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// pCPU streams merged.
    pub streams: usize,
    /// Look-ahead limit per stream, in samples.
    pub lookahead: usize,
    /// Most samples one stream held at once.
    pub peak_buffered: usize,
    /// Samples handed on before every stream had caught up (look-ahead full
    /// while another stream had nothing buffered).
    pub forced: u64,
    /// Samples handed on with a TSC below one handed on before them.
    pub out_of_order: u64,
}

/// A sample and the pCPU that took it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tagged {
    /// The pCPU (stream) of the sample.
    pub pcpu: u16,
    /// The sample.
    pub sample: Sample,
}

/// Receives the merged records, in host-time order.
pub trait MergeOut {
    /// The next samples, of any pCPUs, in order.
    fn samples(&mut self, run: &[Tagged]);
    /// A scheduling event of one pCPU (the samples before it were handed on
    /// before it).
    fn sched(&mut self, pcpu: u16, event: &SchedEvent);
}

/// Samples collected before they are handed on in one call.
const STAGE: usize = 1024;

enum Entry {
    Samples(Vec<Sample>),
    Sched(SchedEvent),
}

struct Stream {
    pcpu: u16,
    queue: VecDeque<Entry>,
    /// Samples of the front entry already handed on.
    pos: usize,
    /// Samples buffered.
    buffered: usize,
}

impl Stream {
    /// TSC of the next record.
    fn head(&self) -> Option<u64> {
        match self.queue.front()? {
            Entry::Samples(v) => v.get(self.pos).map(|s| s.tsc),
            Entry::Sched(e) => Some(e.tsc),
        }
    }
}

/// The k-way merge. Streams are kept sorted by pCPU, so on equal TSCs the
/// lower stream index (pCPU) goes first.
pub struct Merger {
    streams: Vec<Stream>,
    /// `streams[i].head()`, kept up to date.
    heads: Vec<Option<u64>>,
    /// Streams announced by the log header (pCPUs 0..expected).
    expected: usize,
    cap: usize,
    /// Streams holding more than `cap` samples.
    over: usize,
    /// Highest TSC handed on.
    last: u64,
    staged: Vec<Tagged>,
    /// Batches fully handed on, for [`Merger::spent`].
    spent: Vec<Vec<Sample>>,
    stats: MergeStats,
}

impl Default for Merger {
    fn default() -> Self {
        Self::new(LOOKAHEAD_SAMPLES)
    }
}

impl Merger {
    /// A merge buffering at most `cap` samples per stream (at least one batch
    /// is always held).
    pub fn new(cap: usize) -> Self {
        Merger {
            streams: Vec::new(),
            heads: Vec::new(),
            expected: 0,
            cap,
            over: 0,
            last: 0,
            staged: Vec::with_capacity(STAGE + vmlog::MAX_BATCH_SAMPLES),
            spent: Vec::new(),
            stats: MergeStats {
                lookahead: cap,
                ..Default::default()
            },
        }
    }

    /// The log header says `pcpus` streams will come: nothing is handed on
    /// until each of them has something buffered (or the look-ahead is full).
    pub fn expect(&mut self, pcpus: u16) {
        self.expected = usize::from(pcpus);
        for p in 0..pcpus {
            self.stream(p);
        }
    }

    fn stream(&mut self, pcpu: u16) -> usize {
        if let Some(i) = self.streams.iter().position(|s| s.pcpu == pcpu) {
            return i;
        }
        let i = self.streams.partition_point(|s| s.pcpu < pcpu);
        self.streams.insert(
            i,
            Stream {
                pcpu,
                queue: VecDeque::new(),
                pos: 0,
                buffered: 0,
            },
        );
        self.heads.insert(i, None);
        self.stats.streams = self.streams.len();
        i
    }

    /// Adds a decoded batch of pCPU `pcpu` and hands on what is ready.
    pub fn push_samples(&mut self, pcpu: u16, samples: Vec<Sample>, out: &mut dyn MergeOut) {
        if samples.is_empty() {
            return;
        }
        let i = self.stream(pcpu);
        let s = &mut self.streams[i];
        let was_over = s.buffered > self.cap;
        s.buffered += samples.len();
        if !was_over && s.buffered > self.cap {
            self.over += 1;
        }
        self.stats.peak_buffered = self.stats.peak_buffered.max(s.buffered);
        s.queue.push_back(Entry::Samples(samples));
        self.heads[i] = s.head();
        self.pump(false, out);
    }

    /// A batch whose samples have all been handed on (its buffer can be
    /// reused, e.g. with `vmlog::Decoder::recycle`).
    pub fn spent(&mut self) -> Option<Vec<Sample>> {
        self.spent.pop()
    }

    /// Adds a scheduling event of pCPU `pcpu` and hands on what is ready.
    pub fn push_sched(&mut self, pcpu: u16, event: SchedEvent, out: &mut dyn MergeOut) {
        let i = self.stream(pcpu);
        self.streams[i].queue.push_back(Entry::Sched(event));
        self.heads[i] = self.streams[i].head();
        self.pump(false, out);
    }

    /// End of the log: hands on everything still buffered.
    pub fn finish(&mut self, out: &mut dyn MergeOut) -> MergeStats {
        self.pump(true, out);
        self.stats
    }

    /// Hands on records in (TSC, pCPU) order while that order is known
    /// (every stream has a head), or while a stream exceeds the look-ahead,
    /// or all of them at the end.
    fn pump(&mut self, end: bool, out: &mut dyn MergeOut) {
        let missing = self.streams.len() < self.expected;
        loop {
            // The smallest head, and the smallest of the others (the limit).
            let mut best: Option<(u64, usize)> = None;
            let mut limit: Option<(u64, usize)> = None;
            let mut waiting = missing;
            for (i, h) in self.heads.iter().enumerate() {
                let Some(t) = *h else {
                    waiting = true;
                    continue;
                };
                match best {
                    Some((bt, _)) if bt <= t => {
                        if limit.is_none_or(|(lt, _)| t < lt) {
                            limit = Some((t, i));
                        }
                    }
                    // The old best is below everything seen before it.
                    _ => limit = best.replace((t, i)),
                }
            }
            let Some((_, bi)) = best else { break };
            if !waiting && self.merge_fronts(out) {
                continue;
            }
            let forced = waiting && !end;
            if forced && self.over == 0 {
                break;
            }
            let (lt, inclusive) = limit.map_or((u64::MAX, true), |(t, li)| (t, bi < li));
            // Ahead of a lagging or missing stream: one batch at a time, so
            // the look-ahead stays as full as the limit allows.
            self.emit(bi, lt, inclusive, forced, out);
        }
        if !self.staged.is_empty() {
            out.samples(&self.staged);
            self.staged.clear();
        }
    }

    /// Every stream has a head: when all of them are samples, merges them
    /// sample by sample until a front batch runs out (the hot path: the
    /// pCPUs sample on one time grid, so their streams alternate). Returns
    /// false, doing nothing, when a front is a scheduling event.
    fn merge_fronts(&mut self, out: &mut dyn MergeOut) -> bool {
        let Merger {
            streams,
            heads,
            cap,
            over,
            last,
            staged,
            spent,
            stats,
            ..
        } = self;
        let mut fronts = Vec::with_capacity(streams.len());
        for s in streams.iter() {
            match s.queue.front() {
                Some(Entry::Samples(v)) if s.pos < v.len() => fronts.push((&v[..], s.pos)),
                _ => return false,
            }
        }
        if let [(a, pa), (b, pb)] = fronts[..] {
            // Two pCPUs, the common case: the pick without an inner loop.
            let (v, pcpu, mut p) = ([a, b], [streams[0].pcpu, streams[1].pcpu], [pa, pb]);
            loop {
                let i = usize::from(v[1][p[1]].tsc < v[0][p[0]].tsc);
                let x = &v[i][p[i]];
                hand_on(x.tsc, last, stats);
                staged.push(Tagged {
                    pcpu: pcpu[i],
                    sample: *x,
                });
                p[i] += 1;
                flush_full(staged, out);
                if p[i] == v[i].len() {
                    break;
                }
            }
            (fronts[0].1, fronts[1].1) = (p[0], p[1]);
        } else {
            loop {
                let (mut bi, mut bt) = (0, fronts[0].0[fronts[0].1].tsc);
                for (i, &(v, p)) in fronts.iter().enumerate().skip(1) {
                    if v[p].tsc < bt {
                        (bi, bt) = (i, v[p].tsc);
                    }
                }
                hand_on(bt, last, stats);
                let (v, p) = &mut fronts[bi];
                staged.push(Tagged {
                    pcpu: streams[bi].pcpu,
                    sample: v[*p],
                });
                *p += 1;
                flush_full(staged, out);
                if *p == v.len() {
                    break;
                }
            }
        }
        let ends: Vec<(usize, bool)> = fronts.iter().map(|&(v, p)| (p, p == v.len())).collect();
        for (i, (s, (p, done))) in streams.iter_mut().zip(ends).enumerate() {
            let was_over = s.buffered > *cap;
            s.buffered -= p - s.pos;
            s.pos = p;
            if done {
                s.pos = 0;
                if let Some(Entry::Samples(v)) = s.queue.pop_front() {
                    spent.push(v);
                }
            }
            if was_over && s.buffered <= *cap {
                *over -= 1;
            }
            heads[i] = s.head();
        }
        true
    }

    /// Stages stream `i`'s records below the limit (TSC `lt`, and `lt`
    /// itself when `inclusive`): runs of consecutive batches, or only up to
    /// the end of the front batch when `one_batch`.
    fn emit(
        &mut self,
        i: usize,
        lt: u64,
        inclusive: bool,
        one_batch: bool,
        out: &mut dyn MergeOut,
    ) {
        let Merger {
            streams,
            heads,
            cap,
            over,
            last,
            staged,
            spent,
            stats,
            ..
        } = self;
        let s = &mut streams[i];
        let pcpu = s.pcpu;
        let was_over = s.buffered > *cap;
        let below = |t: u64| t < lt || (inclusive && t == lt);
        while let Some(front) = s.queue.front() {
            match front {
                Entry::Sched(e) => {
                    if !below(e.tsc) {
                        break;
                    }
                    if !staged.is_empty() {
                        out.samples(staged);
                        staged.clear();
                    }
                    out.sched(pcpu, e);
                    s.queue.pop_front();
                }
                Entry::Samples(v) => {
                    let start = s.pos;
                    let mut p = start;
                    while let Some(x) = v.get(p)
                        && below(x.tsc)
                    {
                        hand_on(x.tsc, last, stats);
                        staged.push(Tagged { pcpu, sample: *x });
                        p += 1;
                    }
                    s.buffered -= p - start;
                    if one_batch {
                        stats.forced += (p - start) as u64;
                    }
                    if p < v.len() {
                        s.pos = p;
                        break;
                    }
                    s.pos = 0;
                    if let Some(Entry::Samples(v)) = s.queue.pop_front() {
                        spent.push(v);
                    }
                    flush_full(staged, out);
                    if one_batch {
                        break;
                    }
                }
            }
        }
        flush_full(staged, out);
        if was_over && s.buffered <= *cap {
            *over -= 1;
        }
        heads[i] = s.head();
    }
}

/// Counts a sample at `tsc` as out of order when it is below the highest TSC
/// handed on (`last`), else makes it the new highest.
#[inline]
fn hand_on(tsc: u64, last: &mut u64, stats: &mut MergeStats) {
    if tsc < *last {
        stats.out_of_order += 1;
    } else {
        *last = tsc;
    }
}

/// Hands the staged samples on once there are [`STAGE`] of them.
#[inline]
fn flush_full(staged: &mut Vec<Tagged>, out: &mut dyn MergeOut) {
    if staged.len() >= STAGE {
        out.samples(staged);
        staged.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::host;
    use vmlog::{SchedDir, SchedReason, VcpuRef, VcpuState};

    #[derive(Default)]
    struct Trace {
        seen: Vec<(u16, u64)>,
        calls: usize,
    }

    impl MergeOut for Trace {
        fn samples(&mut self, run: &[Tagged]) {
            self.calls += 1;
            self.seen.extend(run.iter().map(|t| (t.pcpu, t.sample.tsc)));
        }
        fn sched(&mut self, pcpu: u16, event: &SchedEvent) {
            self.seen.push((pcpu + 100, event.tsc));
        }
    }

    fn batch(tscs: impl IntoIterator<Item = u64>) -> Vec<Sample> {
        tscs.into_iter()
            .map(|t| host(t, 0x1000, None, VcpuState::Running))
            .collect()
    }

    #[test]
    fn whole_rings_of_two_pcpus_come_out_in_tsc_order() {
        let mut m = Merger::default();
        let mut t = Trace::default();
        m.expect(2);
        // pCPU 0's ring (two batches), then pCPU 1's, then pCPU 0's next ring.
        m.push_samples(0, batch([10, 20, 30]), &mut t);
        m.push_samples(0, batch([40, 50]), &mut t);
        assert!(t.seen.is_empty());
        m.push_samples(1, batch([15, 20, 45, 60]), &mut t);
        m.push_samples(0, batch([70]), &mut t);
        let st = m.finish(&mut t);
        assert_eq!(
            t.seen,
            [
                (0, 10),
                (1, 15),
                (0, 20),
                (1, 20),
                (0, 30),
                (0, 40),
                (1, 45),
                (0, 50),
                (1, 60),
                (0, 70)
            ]
        );
        assert_eq!(st.out_of_order, 0);
        assert_eq!(st.peak_buffered, 5);
        assert_eq!(st.streams, 2);
    }

    #[test]
    fn disjoint_batches_keep_file_order_in_few_calls() {
        let mut m = Merger::default();
        let mut t = Trace::default();
        m.expect(2);
        m.push_samples(0, batch(0..100), &mut t);
        m.push_samples(1, batch(100..200), &mut t);
        m.push_samples(0, batch(200..300), &mut t);
        m.push_samples(1, batch(300..400), &mut t);
        m.finish(&mut t);
        assert_eq!(t.calls, 4);
        assert_eq!(t.seen.len(), 400);
        assert!(t.seen.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn a_stream_far_behind_is_flushed_in_order_and_counted() {
        let mut m = Merger::new(4);
        let mut t = Trace::default();
        m.expect(2);
        m.push_samples(0, batch([1, 2, 3]), &mut t);
        assert!(t.seen.is_empty());
        // Over the look-ahead: the oldest batch goes out, one batch is kept.
        m.push_samples(0, batch([4, 5, 6]), &mut t);
        assert_eq!(t.seen, [(0, 1), (0, 2), (0, 3)]);
        // pCPU 1 arrives late: 1 and 2 are older than what went out.
        m.push_samples(1, batch([1, 2, 4, 7]), &mut t);
        let st = m.finish(&mut t);
        assert_eq!(
            t.seen[3..],
            [(1, 1), (1, 2), (0, 4), (1, 4), (0, 5), (0, 6), (1, 7)]
        );
        assert_eq!(st.out_of_order, 2);
        assert_eq!(st.forced, 3);
        assert_eq!(st.peak_buffered, 6);
    }

    #[test]
    fn a_tsc_going_back_on_one_pcpu_is_counted() {
        let mut m = Merger::default();
        let mut t = Trace::default();
        m.push_samples(0, batch([10, 20, 15, 30]), &mut t);
        let st = m.finish(&mut t);
        assert_eq!(t.seen, [(0, 10), (0, 20), (0, 15), (0, 30)]);
        assert_eq!(st.out_of_order, 1);
    }

    #[test]
    fn missing_stream_and_sched_events() {
        // The header announces 2 pCPUs but only pCPU 0 ever writes: nothing
        // is held back forever, and the end flushes everything.
        let mut m = Merger::new(8);
        let mut t = Trace::default();
        m.expect(2);
        m.push_samples(0, batch([1, 2]), &mut t);
        let ev = SchedEvent {
            tsc: 3,
            vcpu: VcpuRef { vm: 0, vcpu: 0 },
            dir: SchedDir::Out,
            reason: SchedReason::Stopped,
        };
        m.push_sched(0, ev, &mut t);
        m.push_samples(0, batch([4]), &mut t);
        assert!(t.seen.is_empty());
        let st = m.finish(&mut t);
        assert_eq!(t.seen, [(0, 1), (0, 2), (100, 3), (0, 4)]);
        assert_eq!(st.out_of_order, 0);
    }
}
