//! Streaming decoder (std): frames from a byte slice or any reader, skipping
//! and counting corrupt ones, detecting sequence gaps per stream. Never panics.

use std::collections::BTreeMap;
use std::io::{self, BufRead};

use crate::types::*;
use crate::wire::{self, Body, FrameError, GLOBAL_STREAM, MAX_FRAME_LEN};

/// A log header with owned strings and the VM table gathered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// Format major version.
    pub format_major: u8,
    /// Format minor version.
    pub format_minor: u8,
    /// Hypervisor build id.
    pub hv_build_id: String,
    /// TSC frequency in Hz.
    pub tsc_hz: u64,
    /// Sampling source.
    pub source: SamplingSource,
    /// Sampling period in TSC ticks.
    pub period_tsc: u64,
    /// pCPU count.
    pub pcpus: u16,
    /// Number of VM table entries announced.
    pub vm_count: u16,
    /// TSC at start.
    pub start_tsc: u64,
}

impl From<&Header<'_>> for LogHeader {
    fn from(h: &Header<'_>) -> Self {
        LogHeader {
            format_major: h.format_major,
            format_minor: h.format_minor,
            hv_build_id: h.hv_build_id.to_owned(),
            tsc_hz: h.tsc_hz,
            source: h.source,
            period_tsc: h.period_tsc,
            pcpus: h.pcpus,
            vm_count: h.vm_count,
            start_tsc: h.start_tsc,
        }
    }
}

/// A VM table entry with an owned name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEntry {
    /// VM id.
    pub id: u16,
    /// Name.
    pub name: String,
    /// vCPU count.
    pub vcpus: u16,
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// The header.
    Header(LogHeader),
    /// A VM table entry.
    Vm(VmEntry),
    /// A batch of samples of one pCPU, in time order.
    Samples {
        /// pCPU.
        pcpu: u16,
        /// The samples.
        samples: Vec<Sample>,
    },
    /// Samples lost on a pCPU.
    Dropped {
        /// pCPU.
        pcpu: u16,
        /// How many.
        count: u64,
    },
    /// Exit statistics.
    ExitStat(ExitStat),
    /// A scheduling event on a pCPU.
    Sched {
        /// pCPU.
        pcpu: u16,
        /// The event.
        event: SchedEvent,
    },
    /// Guest clock offset.
    GuestTimeOffset(GuestTimeOffset),
    /// End record.
    End(End),
    /// Bytes a guest delivered (see [`GuestData`]): concatenate the `data` of one
    /// `(vm, kind)` in `seq` order to get the whole stream.
    GuestData {
        /// VM id.
        vm: u16,
        /// What the bytes are ([`GUEST_DATA_BUNDLE`]: a guest bundle).
        kind: u16,
        /// Record number within `(vm, kind)`, from 0.
        seq: u32,
        /// The bytes (at most [`MAX_GUEST_DATA_RECORD`]).
        data: Vec<u8>,
    },
}

/// Why decoding stopped.
#[derive(Debug)]
pub enum LogError {
    /// The log was written by a newer major version of the format.
    NewerVersion {
        /// Its major version.
        major: u8,
    },
    /// Reading failed.
    Io(io::Error),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::NewerVersion { major } => {
                write!(f, "{}", FrameError::NewerVersion { major: *major })
            }
            LogError::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

impl std::error::Error for LogError {}

/// Per-stream counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Frames decoded.
    pub frames: u64,
    /// Samples decoded.
    pub samples: u64,
    /// Samples the writer reported dropped.
    pub dropped: u64,
    /// Sequence gaps seen (places where frames went missing or came out of order).
    pub gaps: u64,
    /// Frames missing according to the sequence numbers.
    pub missing_frames: u64,
    /// TSC of the first and last sample.
    pub first_tsc: Option<u64>,
    /// TSC of the last sample.
    pub last_tsc: Option<u64>,
    last_seq: Option<u32>,
}

/// What the decoder saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes read.
    pub bytes: u64,
    /// Frames decoded.
    pub frames: u64,
    /// Chunks between delimiters that were not valid frames.
    pub corrupt_frames: u64,
    /// Valid frames of a record kind this reader does not know (newer minor).
    pub unknown_records: u64,
    /// Per stream (pCPU number, or [`GLOBAL_STREAM`]).
    pub streams: BTreeMap<u16, StreamStats>,
}

impl Stats {
    /// Samples decoded, all pCPUs.
    pub fn samples(&self) -> u64 {
        self.streams.values().map(|s| s.samples).sum()
    }
    /// Sequence gaps, all streams.
    pub fn gaps(&self) -> u64 {
        self.streams.values().map(|s| s.gaps).sum()
    }
    /// Dropped samples reported, all pCPUs.
    pub fn dropped(&self) -> u64 {
        self.streams.values().map(|s| s.dropped).sum()
    }
}

/// Iterates the records of a log. Corrupt frames are skipped and counted in
/// [`Decoder::stats`]; a frame of a newer major version ends the iteration
/// with [`LogError::NewerVersion`].
pub struct Decoder<R> {
    reader: R,
    chunk: Vec<u8>,
    stats: Stats,
    done: bool,
    /// Sample buffers handed back with [`Decoder::recycle`].
    spare: Vec<Vec<Sample>>,
}

impl<'a> Decoder<&'a [u8]> {
    /// Decodes a log held in memory.
    pub fn from_slice(bytes: &'a [u8]) -> Self {
        Decoder::new(bytes)
    }
}

impl<R: BufRead> Decoder<R> {
    /// Decodes a log from a buffered reader.
    pub fn new(reader: R) -> Self {
        Decoder {
            reader,
            chunk: Vec::with_capacity(MAX_FRAME_LEN),
            stats: Stats::default(),
            done: false,
            spare: Vec::new(),
        }
    }

    /// Hands back the buffer of a decoded [`Item::Samples`] once its samples
    /// are used: a later batch is decoded into it instead of a new one.
    pub fn recycle(&mut self, mut samples: Vec<Sample>) {
        const KEEP: usize = 64;
        if self.spare.len() < KEEP && samples.capacity() > 0 {
            samples.clear();
            self.spare.push(samples);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Reads up to the next delimiter into `self.chunk`. Returns false at end of
    /// input with nothing read. Chunks longer than any frame are cut short
    /// (and then fail to decode).
    fn read_chunk(&mut self) -> io::Result<bool> {
        self.chunk.clear();
        let mut any = false;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(any);
            }
            any = true;
            let (take, found) = match find_zero(buf) {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            let room = (MAX_FRAME_LEN + 1).saturating_sub(self.chunk.len());
            self.chunk.extend_from_slice(&buf[..take.min(room)]);
            let consumed = if found { take + 1 } else { take };
            self.reader.consume(consumed);
            self.stats.bytes += consumed as u64;
            if found {
                return Ok(true);
            }
        }
    }

    fn note_seq(&mut self, stream: u16, seq: u32) {
        let st = self.stats.streams.entry(stream).or_default();
        st.frames += 1;
        let expected = st.last_seq.map_or(0, |s| s.wrapping_add(1));
        if seq != expected {
            st.gaps += 1;
            if seq > expected {
                st.missing_frames += u64::from(seq - expected);
            }
        }
        st.last_seq = Some(seq);
    }

    fn next_item(&mut self) -> Option<Result<Item, LogError>> {
        while !self.done {
            match self.read_chunk() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(LogError::Io(e)));
                }
            }
            if self.chunk.is_empty() {
                continue;
            }
            let mut chunk = std::mem::take(&mut self.chunk);
            let result = self.decode_chunk(&mut chunk);
            self.chunk = chunk;
            match result {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }

    fn decode_chunk(&mut self, chunk: &mut [u8]) -> Result<Option<Item>, LogError> {
        let frame = match wire::decode_frame(chunk) {
            Ok(f) => f,
            Err(FrameError::NewerVersion { major }) => {
                return Err(LogError::NewerVersion { major });
            }
            Err(FrameError::UnknownKind { .. }) => {
                self.stats.unknown_records += 1;
                return Ok(None);
            }
            Err(_) => {
                self.stats.corrupt_frames += 1;
                return Ok(None);
            }
        };
        let (stream, seq) = (frame.stream, frame.seq);
        let item = match frame.body {
            Body::Samples(iter) => {
                let mut samples = self.spare.pop().unwrap_or_default();
                if iter.decode_into(&mut samples).is_err() {
                    self.stats.corrupt_frames += 1;
                    self.spare.push(samples);
                    return Ok(None);
                }
                if stream == GLOBAL_STREAM {
                    self.stats.corrupt_frames += 1;
                    return Ok(None);
                }
                self.note_seq(stream, seq);
                let st = self.stats.streams.entry(stream).or_default();
                st.samples += samples.len() as u64;
                if let Some(f) = samples.first() {
                    st.first_tsc.get_or_insert(f.tsc);
                }
                if let Some(l) = samples.last() {
                    st.last_tsc = Some(l.tsc);
                }
                Item::Samples {
                    pcpu: stream,
                    samples,
                }
            }
            Body::Record(rec) => {
                self.note_seq(stream, seq);
                match rec {
                    Record::Header(h) => Item::Header(LogHeader::from(&h)),
                    Record::Vm(v) => Item::Vm(VmEntry {
                        id: v.id,
                        name: v.name.to_owned(),
                        vcpus: v.vcpus,
                    }),
                    Record::Dropped(d) => {
                        self.stats.streams.entry(stream).or_default().dropped += d.count;
                        Item::Dropped {
                            pcpu: stream,
                            count: d.count,
                        }
                    }
                    Record::ExitStat(e) => Item::ExitStat(e),
                    Record::Sched(event) => Item::Sched {
                        pcpu: stream,
                        event,
                    },
                    Record::GuestTimeOffset(o) => Item::GuestTimeOffset(o),
                    Record::End(e) => Item::End(e),
                    Record::GuestData(g) => Item::GuestData {
                        vm: g.vm,
                        kind: g.kind,
                        seq: g.seq,
                        data: g.data.to_vec(),
                    },
                }
            }
        };
        self.stats.frames += 1;
        Ok(Some(item))
    }
}

use crate::wire::find_zero;

impl<R: BufRead> Iterator for Decoder<R> {
    type Item = Result<Item, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_item()
    }
}

/// Writes a whole log into a `Vec<u8>`, keeping one sequence counter per
/// stream. For tests, tools and the synthetic generator. The log starts with a
/// delimiter so that line noise before it cannot swallow the first frame.
pub struct LogWriter {
    out: Vec<u8>,
    seqs: BTreeMap<u16, u32>,
    /// Next [`GuestData::seq`] per `(vm, kind)`.
    guest_seqs: BTreeMap<(u16, u16), u32>,
    frames: u64,
    samples: u64,
}

impl Default for LogWriter {
    fn default() -> Self {
        LogWriter {
            out: vec![0],
            seqs: BTreeMap::new(),
            guest_seqs: BTreeMap::new(),
            frames: 0,
            samples: 0,
        }
    }
}

impl LogWriter {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn seq(&mut self, stream: u16) -> u32 {
        let s = self.seqs.entry(stream).or_insert(0);
        let v = *s;
        *s = s.wrapping_add(1);
        v
    }

    /// Appends one record frame.
    pub fn record(&mut self, stream: u16, record: &Record<'_>) -> Result<(), wire::EncodeError> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let seq = self.seq(stream);
        let n = wire::encode_record(&mut buf, stream, seq, record)?;
        self.out.extend_from_slice(&buf[..n]);
        self.frames += 1;
        Ok(())
    }

    /// Appends the header and the VM table.
    pub fn header(
        &mut self,
        header: &Header<'_>,
        vms: &[VmInfo<'_>],
    ) -> Result<(), wire::EncodeError> {
        self.record(GLOBAL_STREAM, &Record::Header(*header))?;
        for vm in vms {
            self.record(GLOBAL_STREAM, &Record::Vm(*vm))?;
        }
        Ok(())
    }

    /// Appends samples of one pCPU as batch frames.
    pub fn samples(
        &mut self,
        pcpu: u16,
        period: u64,
        mut samples: &[Sample],
    ) -> Result<(), wire::EncodeError> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        while !samples.is_empty() {
            let seq = self.seq(pcpu);
            let e = wire::encode_samples(&mut buf, pcpu, seq, period, samples)?;
            self.out.extend_from_slice(&buf[..e.bytes]);
            self.frames += 1;
            self.samples += e.samples as u64;
            samples = &samples[e.samples..];
        }
        Ok(())
    }

    /// Appends `data` as [`GuestData`] records on [`GLOBAL_STREAM`], split into pieces of
    /// [`MAX_GUEST_DATA_RECORD`] bytes, numbered on from the last record of `(vm, kind)`,
    /// as the hypervisor writes a delivery. Empty `data` writes nothing.
    pub fn guest_data(&mut self, vm: u16, kind: u16, data: &[u8]) -> Result<(), wire::EncodeError> {
        for chunk in data.chunks(MAX_GUEST_DATA_RECORD) {
            let next = self.guest_seqs.entry((vm, kind)).or_insert(0);
            let seq = *next;
            *next = next.wrapping_add(1);
            let record = Record::GuestData(GuestData {
                vm,
                kind,
                seq,
                data: chunk,
            });
            self.record(GLOBAL_STREAM, &record)?;
        }
        Ok(())
    }

    /// Appends an `End` record with the totals written so far.
    pub fn end(&mut self, end_tsc: u64, dropped_total: u64) -> Result<(), wire::EncodeError> {
        let end = End {
            end_tsc,
            samples_total: self.samples,
            dropped_total,
            frames_total: self.frames,
        };
        self.record(GLOBAL_STREAM, &Record::End(end))
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// The log.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

/// COBS-stuffs an arbitrary raw frame (CRC appended here) and appends it to
/// `out`: lets tests build frames this writer never would (e.g. a newer major).
#[doc(hidden)]
pub fn push_raw_frame(out: &mut Vec<u8>, raw: &[u8]) {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut data = raw.to_vec();
    data.extend_from_slice(&CRC.checksum(raw).to_le_bytes());
    let mut stuffed = vec![0u8; cobs::max_encoding_length(data.len())];
    let n = cobs::encode(&data, &mut stuffed);
    out.extend_from_slice(&stuffed[..n]);
    out.push(0);
}

#[cfg(test)]
mod find_zero_tests {
    use super::find_zero;

    #[test]
    fn finds_the_first_zero_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut v = vec![0x80u8; len];
                v[at] = 0;
                if at + 3 < len {
                    v[at + 3] = 0;
                }
                assert_eq!(find_zero(&v), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_zero(&vec![1u8; len]), None);
        }
    }
}

#[cfg(test)]
mod cobs_tests {
    use crate::wire::cobs_decode_in_place;

    /// Same answers as the `cobs` crate on random and edge-case input.
    #[test]
    fn in_place_decode_matches_the_cobs_crate() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut checked = 0;
        for round in 0..20_000 {
            let len = (next() % 600) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Well-formed frames too, not only noise.
                let mut enc = vec![0u8; cobs::max_encoding_length(len)];
                let n = cobs::encode(&v, &mut enc);
                enc.truncate(n);
                v = enc;
            }
            if round % 7 == 0 && !v.is_empty() {
                let k = (next() as usize) % v.len();
                v[k] = 0xff;
            }
            let mut a = v.clone();
            let mut b = v.clone();
            let want = cobs::decode_in_place(&mut a).ok();
            let got = cobs_decode_in_place(&mut b);
            assert_eq!(got, want, "input {v:?}");
            if let Some(n) = got {
                assert_eq!(a[..n], b[..n]);
                checked += 1;
            }
        }
        assert!(checked > 10_000);
    }
}
