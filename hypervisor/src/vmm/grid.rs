//! The sampling grid: one grid of slots on the host TSC per pCPU, slot `k` covering
//! `[t0 + k*P, t0 + (k+1)*P)`, and at most one sample per slot.
//!
//! Several sources race to sample a slot, whichever comes first wins it:
//! - guest mode: the VMX-preemption timer, armed for the start of the next unclaimed slot
//!   ([`SampleGrid::next_unclaimed_start`]), exits at the boundary and the exit samples the
//!   guest from the VMCS; an external-interrupt exit on the sampling vector does the same;
//! - host mode: the periodic LAPIC timer tick (which runs slightly faster than the grid, so
//!   every slot holds at least one tick), and the run loop just before each VM entry.
//!
//! A slot whose turn passed without any source claiming it is *missed* (counted when a later
//! slot is claimed, or at [`SampleGrid::finish`]); that is different from a sample the ring
//! had no room for (a *drop*, counted by the ring).
//!
//! Claims are a compare-and-swap on one counter, so the interrupt handler and the run loop
//! of one pCPU can interleave anywhere.

use core::sync::atomic::{AtomicU64, Ordering};

/// A claimed slot: the caller must now take exactly one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Index of the slot (0 = the one starting at `t0`).
    pub slot: u64,
    /// Earlier slots that got no sample (newly counted as missed by this claim).
    pub missed_before: u64,
}

/// Totals of a grid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GridTotals {
    /// Slots that got their sample.
    pub sampled: u64,
    /// Slots that ended with no sample.
    pub missed: u64,
    /// Sampling opportunities that found their slot already sampled.
    pub redundant: u64,
}

/// One pCPU's grid. `period == 0` means not started: nothing is ever claimed.
pub struct SampleGrid {
    t0: AtomicU64,
    period: AtomicU64,
    /// Every slot below this index is settled (sampled or missed).
    settled: AtomicU64,
    sampled: AtomicU64,
    missed: AtomicU64,
    redundant: AtomicU64,
}

impl Default for SampleGrid {
    fn default() -> Self {
        Self::new()
    }
}

impl SampleGrid {
    pub const fn new() -> Self {
        SampleGrid {
            t0: AtomicU64::new(0),
            period: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            redundant: AtomicU64::new(0),
        }
    }

    /// Starts the grid at `t0` with `period` TSC ticks a slot (call before any sampling
    /// source is live).
    pub fn start(&self, t0: u64, period: u64) {
        self.t0.store(t0, Ordering::Relaxed);
        self.settled.store(0, Ordering::Relaxed);
        self.period.store(period, Ordering::Release);
    }

    pub fn period(&self) -> u64 {
        self.period.load(Ordering::Acquire)
    }

    /// The slot `tsc` falls in (None before `t0` or before [`Self::start`]).
    pub fn slot_of(&self, tsc: u64) -> Option<u64> {
        let period = self.period();
        let t0 = self.t0.load(Ordering::Relaxed);
        (period > 0 && tsc >= t0).then(|| (tsc - t0) / period)
    }

    /// Claims the slot `tsc` falls in if nothing sampled it yet.
    pub fn claim(&self, tsc: u64) -> Option<Claim> {
        let slot = self.slot_of(tsc)?;
        let mut settled = self.settled.load(Ordering::Acquire);
        loop {
            if slot < settled {
                self.redundant.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.settled.compare_exchange_weak(
                settled,
                slot + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let missed_before = slot - settled;
                    self.missed.fetch_add(missed_before, Ordering::Relaxed);
                    self.sampled.fetch_add(1, Ordering::Relaxed);
                    return Some(Claim {
                        slot,
                        missed_before,
                    });
                }
                Err(now) => settled = now,
            }
        }
    }

    /// TSC at which the first slot nobody sampled yet starts: the deadline for the
    /// preemption timer (may be in the past: then the slot is due now). None before
    /// [`Self::start`].
    pub fn next_unclaimed_start(&self) -> Option<u64> {
        let period = self.period();
        (period > 0).then(|| {
            let t0 = self.t0.load(Ordering::Relaxed);
            t0.saturating_add(self.settled.load(Ordering::Acquire).saturating_mul(period))
        })
    }

    /// Ends the grid at `end_tsc`: every complete slot before the one `end_tsc` falls in
    /// that got no sample is counted as missed. Returns the totals.
    pub fn finish(&self, end_tsc: u64) -> GridTotals {
        if let Some(slot) = self.slot_of(end_tsc) {
            let before = self.settled.fetch_max(slot, Ordering::AcqRel);
            self.missed
                .fetch_add(slot.saturating_sub(before), Ordering::Relaxed);
        }
        self.totals()
    }

    pub fn totals(&self) -> GridTotals {
        GridTotals {
            sampled: self.sampled.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            redundant: self.redundant.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(t0: u64, p: u64) -> SampleGrid {
        let g = SampleGrid::new();
        g.start(t0, p);
        g
    }

    #[test]
    fn not_started_claims_nothing() {
        let g = SampleGrid::new();
        assert_eq!(g.claim(5), None);
        assert_eq!(g.next_unclaimed_start(), None);
        assert_eq!(g.finish(1000), GridTotals::default());
    }

    #[test]
    fn one_claim_per_slot_and_missed_slots_counted() {
        let g = grid(1000, 100);
        assert_eq!(g.claim(999), None, "before t0");
        assert_eq!(g.next_unclaimed_start(), Some(1000));
        assert_eq!(
            g.claim(1000),
            Some(Claim {
                slot: 0,
                missed_before: 0
            })
        );
        assert_eq!(g.claim(1099), None, "slot 0 taken");
        assert_eq!(g.next_unclaimed_start(), Some(1100));
        // Slots 1 and 2 pass with nothing: the claim of slot 3 counts them.
        assert_eq!(
            g.claim(1350),
            Some(Claim {
                slot: 3,
                missed_before: 2
            })
        );
        assert_eq!(g.next_unclaimed_start(), Some(1400));
        // An older TSC (a sample source that read the clock before the claim) loses.
        assert_eq!(g.claim(1250), None);
        // Finish inside slot 6: slots 4 and 5 were complete and unsampled; 6 is partial.
        assert_eq!(
            g.finish(1650),
            GridTotals {
                sampled: 2,
                missed: 4,
                redundant: 2
            }
        );
        // Finishing twice adds nothing.
        assert_eq!(g.finish(1650).missed, 4);
    }

    /// A tiny deterministic PRNG (xorshift64*) for the interleaving tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Source {
        HostTick,
        PreemptionExit,
        InterruptExit,
        EntryCheckpoint,
    }

    /// Simulates a pCPU that alternates between guest and host mode at random, with a host
    /// tick slightly faster than the grid, a preemption timer armed at
    /// `next_unclaimed_start` while in guest mode, stray interrupt exits and entry
    /// checkpoints. Every slot must get exactly one sample, at a TSC inside it.
    #[test]
    fn every_slot_gets_exactly_one_sample_under_random_interleavings() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let period = 50_000u64;
            let tick = period - period / 256;
            let t0 = 7_000u64;
            let g = grid(t0, period);
            let mut samples: Vec<(u64, Source)> = Vec::new();
            let take = |tsc: u64, src: Source, samples: &mut Vec<(u64, Source)>| {
                if let Some(c) = g.claim(tsc) {
                    samples.push((tsc, src));
                    assert_eq!(c.slot, (tsc - t0) / period);
                }
            };
            let end = t0 + 400 * period;
            let mut now = t0;
            let mut next_tick = t0 + rng.below(tick);
            let mut in_guest = false;
            while now < end {
                if in_guest {
                    // Guest runs until the preemption deadline or an earlier exit.
                    let deadline = g.next_unclaimed_start().unwrap().max(now);
                    let other_exit = now + rng.below(3 * period);
                    // On hardware a tick in guest mode exits at once (interrupt exit).
                    let t = deadline.min(other_exit).min(next_tick);
                    now = t;
                    if t == deadline {
                        take(t, Source::PreemptionExit, &mut samples);
                    } else if t == next_tick {
                        take(t, Source::InterruptExit, &mut samples);
                        next_tick += tick;
                    }
                    in_guest = false;
                } else {
                    // Host handles the exit (or idles) for a random while; ticks arrive.
                    let until = now + rng.below(2 * period);
                    while next_tick <= until {
                        take(next_tick, Source::HostTick, &mut samples);
                        next_tick += tick;
                    }
                    now = until;
                    take(now, Source::EntryCheckpoint, &mut samples);
                    in_guest = true;
                }
            }
            let totals = g.finish(end);
            let slots = (end - t0) / period;
            assert_eq!(totals.missed, 0, "seed {seed}");
            assert_eq!(totals.sampled, samples.len() as u64);
            let mut seen: Vec<u64> = samples.iter().map(|(t, _)| (t - t0) / period).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(
                seen.len(),
                samples.len(),
                "seed {seed}: two samples in one slot"
            );
            // Every complete slot before `end` has its sample (the loop may overshoot end).
            assert!(seen.iter().take_while(|s| **s < slots).count() as u64 == slots);
            for src in [
                Source::HostTick,
                Source::PreemptionExit,
                Source::EntryCheckpoint,
            ] {
                assert!(
                    samples.iter().any(|(_, s)| *s == src),
                    "seed {seed}: no sample from {src:?}"
                );
            }
        }
    }

    #[test]
    fn concurrent_claimers_never_share_a_slot() {
        use std::sync::Arc;
        let g = Arc::new(grid(0, 10));
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut won = Vec::new();
                    for t in (k..20_000u64).step_by(3) {
                        if let Some(c) = g.claim(t) {
                            won.push(c.slot);
                        }
                    }
                    won
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a slot was claimed twice");
        let totals = g.finish(20_000);
        assert_eq!(totals.sampled + totals.missed, 2000);
    }
}
