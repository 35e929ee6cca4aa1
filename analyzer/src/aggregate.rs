//! One streaming pass over the samples: host-level counts, and per vCPU its
//! own samples plus the blank slots (idle / steal) on the host-time axis.
//!
//! Model (see `profiler-semantics.md`): every sample stands for one sampling
//! period of its pCPU. A vCPU is *resident* on the pCPU where it was last seen
//! (a guest sample of it, or a host sample serving it). Each sample of that
//! pCPU that is not the vCPU's own is a blank slot of the vCPU: steal
//! `(on vcpuN)` when a sibling vCPU of the same VM ran, `(outside)` otherwise.
//! A gap between two own samples longer than the period that the pCPU's samples
//! do not explain (lost samples, another pCPU) adds blank slots `(outside)`.
//! Blank slots are classified when the vCPU is next seen: idle
//! `[idle] (halt_exit)` if it was halted (host sample in the halted state, or a
//! guest sample whose last exit was HLT), steal otherwise. Host samples serving
//! the vCPU itself count as idle when it is halted, else as steal `(outside)`.

use std::collections::BTreeMap;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rustc_hash::FxHashMap;
use vmlog::{Context, ExitReason, Sample, SchedDir, SchedEvent, SchedReason, VcpuState};

use crate::merge::Tagged;
use crate::procs::{ProcIndex, ProcKey};

/// Key of one guest function bucket before symbolisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestKey {
    /// True for CPL 0 (kernel).
    pub kernel: bool,
    /// The process (from the CR3).
    pub proc_: ProcKey,
    /// Guest RIP.
    pub rip: u64,
}

/// Hasher for the per-sample table: RIPs differ mostly in their low bits,
/// which a plain multiplicative hash leaves in the low bits only; the
/// murmur3 finaliser spreads them over the whole word (hashbrown takes its
/// tag from the top bits).
#[derive(Default)]
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Everything counted for one vCPU.
#[derive(Clone, Debug, Default)]
pub struct VcpuCounts {
    /// VM id.
    pub vm: u16,
    /// vCPU index.
    pub vcpu: u16,
    /// Guest samples at CPL 0.
    pub os: u64,
    /// Guest samples at CPL 3 (or 1-2).
    pub user: u64,
    /// Idle slots.
    pub idle: u64,
    /// Steal slots while nothing of this VM ran.
    pub steal_outside: u64,
    /// Steal slots while a sibling vCPU ran, by sibling.
    pub steal_on: BTreeMap<u16, u64>,
    /// Guest samples by (RIP, process id | kernel bit 31): a compact key keeps
    /// the table small (it is hit once per sample).
    raw: HashMap<u64, u64, BuildHasherDefault<MixHasher>>,
    /// The rare keys that do not pack (non-canonical RIP, > 32767 processes).
    wide: FxHashMap<(u64, u32), u64>,
    proc_keys: Vec<ProcKey>,
    proc_ids: FxHashMap<ProcKey, u32>,
    // Streaming state.
    resident: Option<u16>,
    last_own: Option<u64>,
    blanks: u64,
    halted: bool,
    pending_outside: u64,
    pending_on: BTreeMap<u16, u64>,
    /// Where the latest blank slot went: `Some(sibling)` or outside.
    last_blank_on: Option<u16>,
    stopped: bool,
    /// Last process lookup: (CR3 key, valid from, valid to, interned answer).
    proc_cache: Option<(u64, u64, u64, u32)>,
}

const KERNEL_BIT: u32 = 1 << 31;

/// Packs (RIP, tag) into one word: a canonical RIP's bits 63:48 repeat bit
/// 47, so they can carry the tag (kernel bit + a 15-bit process id).
fn pack(rip: u64, tag: u32) -> Option<u64> {
    let canonical = ((rip << 16) as i64 >> 16) as u64 == rip;
    let small = tag & !KERNEL_BIT < 1 << 15;
    (canonical && small).then(|| {
        let t = u64::from(tag & !KERNEL_BIT) | u64::from(tag >> 31) << 15;
        (rip & 0xffff_ffff_ffff) | t << 48
    })
}

fn unpack(k: u64) -> (u64, u32) {
    let rip = ((k << 16) as i64 >> 16) as u64;
    let t = (k >> 48) as u32;
    let tag = (t & 0x7fff) | (t >> 15) << 31;
    (rip, tag)
}

impl VcpuCounts {
    /// Guest samples by function key.
    pub fn funcs(&self) -> impl Iterator<Item = (GuestKey, u64)> + '_ {
        let packed = self.raw.iter().map(|(&k, &n)| (unpack(k), n));
        let wide = self.wide.iter().map(|(&k, &n)| (k, n));
        packed.chain(wide).map(|((rip, tag), n)| {
            let key = GuestKey {
                kernel: tag & KERNEL_BIT != 0,
                proc_: self.proc_keys[(tag & !KERNEL_BIT) as usize],
                rip,
            };
            (key, n)
        })
    }

    fn intern(&mut self, k: ProcKey) -> u32 {
        if let Some(&i) = self.proc_ids.get(&k) {
            return i;
        }
        let i = self.proc_keys.len() as u32;
        self.proc_keys.push(k);
        self.proc_ids.insert(k, i);
        i
    }

    /// Guest-level total of this vCPU.
    pub fn total(&self) -> u64 {
        self.os + self.user + self.idle + self.steal()
    }
    /// All steal slots.
    pub fn steal(&self) -> u64 {
        self.steal_outside + self.steal_on.values().sum::<u64>()
    }

    /// Takes back `n` pending blank slots, the latest first.
    fn trim(&mut self, mut n: u64) {
        let latest = match self.last_blank_on {
            Some(v) => self.pending_on.get_mut(&v),
            None => Some(&mut self.pending_outside),
        };
        if let Some(c) = latest {
            let k = n.min(*c).min(1);
            *c -= k;
            n -= k;
        }
        let k = n.min(self.pending_outside);
        self.pending_outside -= k;
        n -= k;
        for c in self.pending_on.values_mut() {
            let k = n.min(*c);
            *c -= k;
            n -= k;
        }
        self.pending_on.retain(|_, c| *c > 0);
    }

    /// Settles the pending blank slots (cheap when there are none: it runs
    /// once per own sample).
    #[inline(always)]
    fn resolve(&mut self, idle: bool) {
        if self.pending_outside == 0 && self.pending_on.is_empty() {
            return;
        }
        self.resolve_pending(idle);
    }

    #[inline(never)]
    fn resolve_pending(&mut self, idle: bool) {
        let on: u64 = self.pending_on.values().sum();
        if idle {
            self.idle += self.pending_outside + on;
        } else {
            self.steal_outside += self.pending_outside;
            for (k, v) in &self.pending_on {
                *self.steal_on.entry(*k).or_default() += v;
            }
        }
        self.pending_outside = 0;
        self.pending_on.clear();
    }
}

/// Host-level counts.
#[derive(Clone, Debug, Default)]
pub struct HostCounts {
    /// All samples in the window.
    pub total: u64,
    /// Samples in the hypervisor, by RIP.
    pub host_rips: HashMap<u64, u64, BuildHasherDefault<MixHasher>>,
    /// Samples in the hypervisor.
    pub host: u64,
    /// Guest samples by VM id (index).
    pub per_vm: Vec<u64>,
}

/// The streaming aggregator.
pub struct Aggregator {
    period: u64,
    window: (u64, u64),
    /// Host level.
    pub host: HostCounts,
    /// Per vCPU, indexed through `index`.
    pub vcpus: Vec<VcpuCounts>,
    index: FxHashMap<(u16, u16), usize>,
    residents: Vec<Vec<usize>>,
    procs: FxHashMap<u16, ProcIndex>,
    /// Per pCPU: the last owner looked up, and its index.
    last_owner: Vec<Option<((u16, u16), usize)>>,
    /// Samples seen (before the time window).
    pub seen: u64,
}

impl Aggregator {
    /// `period` in TSC ticks; samples outside `[window.0, window.1]` are ignored.
    pub fn new(period: u64, window: (u64, u64), procs: FxHashMap<u16, ProcIndex>) -> Self {
        Aggregator {
            period: period.max(1),
            window,
            host: HostCounts::default(),
            vcpus: Vec::new(),
            index: FxHashMap::default(),
            residents: Vec::new(),
            procs,
            last_owner: Vec::new(),
            seen: 0,
        }
    }

    fn vcpu_idx(&mut self, vm: u16, vcpu: u16) -> usize {
        if let Some(&i) = self.index.get(&(vm, vcpu)) {
            return i;
        }
        let i = self.vcpus.len();
        self.vcpus.push(VcpuCounts {
            vm,
            vcpu,
            ..Default::default()
        });
        self.index.insert((vm, vcpu), i);
        i
    }

    fn grow(&mut self, p: usize) {
        if self.residents.len() <= p {
            self.residents.resize_with(p + 1, Vec::new);
            self.last_owner.resize(p + 1, None);
        }
    }

    /// Feeds samples of one pCPU. Exact only when the samples of all pCPUs
    /// come in host-time order (see [`Aggregator::feed_tagged`]).
    pub fn feed(&mut self, pcpu: u16, samples: &[Sample]) {
        let p = usize::from(pcpu);
        self.grow(p);
        for s in samples {
            self.seen += 1;
            if s.tsc < self.window.0 || s.tsc > self.window.1 {
                continue;
            }
            self.one(p, s);
        }
    }

    /// Feeds samples of any pCPUs, in host-time order (as
    /// [`crate::merge::Merger`] hands them on).
    pub fn feed_tagged(&mut self, run: &[Tagged]) {
        for t in run {
            let p = usize::from(t.pcpu);
            self.grow(p);
            self.seen += 1;
            if t.sample.tsc < self.window.0 || t.sample.tsc > self.window.1 {
                continue;
            }
            self.one(p, &t.sample);
        }
    }

    // Inlined into both feeders: it is most of the per-sample work.
    #[inline(always)]
    fn one(&mut self, p: usize, s: &Sample) {
        self.host.total += 1;
        let owner = match &s.context {
            Context::Guest(g) => {
                let vm = usize::from(g.vm);
                if self.host.per_vm.len() <= vm {
                    self.host.per_vm.resize(vm + 1, 0);
                }
                self.host.per_vm[vm] += 1;
                Some((g.vm, g.vcpu))
            }
            Context::Host(h) => {
                self.host.host += 1;
                *self.host.host_rips.entry(h.rip).or_default() += 1;
                h.serving.map(|r| (r.vm, r.vcpu))
            }
        };
        let owner_idx = owner.map(|o| match self.last_owner[p] {
            Some((k, i)) if k == o => i,
            _ => {
                let i = self.vcpu_idx(o.0, o.1);
                self.last_owner[p] = Some((o, i));
                i
            }
        });

        // Blank slots of the other vCPUs resident on this pCPU.
        for &w in &self.residents[p] {
            if Some(w) == owner_idx {
                continue;
            }
            let t = &mut self.vcpus[w];
            t.blanks += 1;
            t.last_blank_on = match &s.context {
                Context::Guest(g) if g.vm == t.vm => {
                    *t.pending_on.entry(g.vcpu).or_default() += 1;
                    Some(g.vcpu)
                }
                _ => {
                    t.pending_outside += 1;
                    None
                }
            };
        }

        let Some(v) = owner_idx else { return };
        let period = self.period;
        let t = &mut self.vcpus[v];
        if let Some(last) = t.last_own {
            let d = s.tsc.saturating_sub(last);
            // Mostly one period apart: skip the division then.
            let slots = if d == period {
                1
            } else {
                d.saturating_add(period / 2) / period
            };
            let expected = slots.saturating_sub(1);
            if t.blanks > expected {
                // The vCPU moved to another pCPU: the old pCPU's sample of
                // the slot where it reappeared is no blank of it.
                t.trim(t.blanks - expected);
            } else {
                t.pending_outside += expected - t.blanks;
            }
        }
        let idle_hint = match &s.context {
            Context::Guest(g) => g.last_exit_reason == Some(ExitReason::HLT),
            Context::Host(h) => h.vcpu_state == VcpuState::Halted,
        };
        let halted_before = t.halted;
        t.resolve(halted_before || idle_hint);
        match &s.context {
            Context::Guest(g) => {
                let kernel = g.cpl == 0;
                if kernel {
                    t.os += 1;
                } else {
                    t.user += 1;
                }
                // Cached by key, not raw CR3: with KPTI and PCIDs one process runs
                // under several raw values (user/kernel half, ASIDs).
                let cr3 = guest_kit::cr3_key(g.cr3);
                let proc_ = match t.proc_cache {
                    Some((key, from, to, id)) if key == cr3 && from <= s.tsc && s.tsc <= to => id,
                    _ => {
                        let (key, from, to) = match self.procs.get(&g.vm) {
                            Some(ix) => ix.lookup_range(cr3, s.tsc),
                            None => (ProcKey::Unknown(cr3), 0, u64::MAX),
                        };
                        let id = t.intern(key);
                        t.proc_cache = Some((cr3, from, to, id));
                        id
                    }
                };
                let tag = if kernel { proc_ | KERNEL_BIT } else { proc_ };
                match pack(g.rip, tag) {
                    Some(k) => *t.raw.entry(k).or_default() += 1,
                    None => *t.wide.entry((g.rip, tag)).or_default() += 1,
                }
                t.halted = false;
            }
            Context::Host(h) => match h.vcpu_state {
                VcpuState::Halted
                | VcpuState::ExitHandling {
                    reason: ExitReason::HLT,
                } => {
                    t.idle += 1;
                    t.halted = true;
                }
                VcpuState::ExitHandling { .. } | VcpuState::Running => {
                    t.steal_outside += 1;
                    t.halted = false;
                }
            },
        }
        t.last_own = Some(s.tsc);
        t.blanks = 0;
        t.stopped = false;
        let old = t.resident.replace(p as u16);
        if old != Some(p as u16) {
            if let Some(o) = old {
                self.residents[usize::from(o)].retain(|&x| x != v);
            }
            self.residents[p].push(v);
        }
    }

    /// A scheduling event: a stopped vCPU leaves its pCPU (its pending blank
    /// slots are settled first).
    pub fn sched(&mut self, pcpu: u16, ev: &SchedEvent) {
        if ev.dir != SchedDir::Out || ev.reason != SchedReason::Stopped {
            return;
        }
        let v = self.vcpu_idx(ev.vcpu.vm, ev.vcpu.vcpu);
        let t = &mut self.vcpus[v];
        let halted = t.halted;
        t.resolve(halted);
        t.stopped = true;
        t.resident = None;
        if let Some(list) = self.residents.get_mut(usize::from(pcpu)) {
            list.retain(|&x| x != v);
        }
    }

    /// Settles what is still pending at the end of the log: blank slots after
    /// a vCPU's last own sample count as idle when it was halted, and are left
    /// out otherwise (the vCPU may have stopped).
    pub fn finish(&mut self) {
        for t in &mut self.vcpus {
            if t.halted {
                t.resolve(true);
            }
            t.pending_outside = 0;
            t.pending_on.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_keys_round_trip() {
        for (rip, tag) in [
            (0xffff_ffff_8100_0010, KERNEL_BIT | 3),
            (0x5555_5555_0123, 0x7fff),
            (0x10_0100, KERNEL_BIT),
            (0x7fff_ffff_ffff, 0),
        ] {
            assert_eq!(unpack(pack(rip, tag).unwrap()), (rip, tag));
        }
        assert_eq!(pack(0x8000_0000_0000, 0), None);
        assert_eq!(pack(0x1000, 0x8000), None);
    }
}
