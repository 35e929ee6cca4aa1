//! Sampling: building a `vmlog::Sample` from the VMCS (guest mode) or from the interrupted
//! host context (host mode), the per-pCPU state the host-mode handler reads, and the
//! per-pCPU rings. Nothing here allocates or locks.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vmlog::{
    Context, ExitReason as LogExitReason, GuestContext, HostContext, Sample, VcpuRef, VcpuState,
};

use crate::vmx::vmcs::{Guest32, GuestNW, Vmcs, access_rights};

use super::grid::SampleGrid;
use super::ring::SampleRing;

/// Samples one pCPU's ring holds. 8 s at 1 kHz: the run loop drains it only when it is
/// three-quarters full (and at the end), because the sample log's serial line is slow
/// (115200 baud, ~11 KB/s: under Bochs a drain of 2000 samples takes seconds of host time,
/// which the samples then show as hypervisor time).
pub const RING_LEN: usize = 8192;
/// Fill level at which the run loop drains the ring.
pub const DRAIN_AT: usize = RING_LEN / 4 * 3;
/// pCPUs with a ring (one per CPU slot of `crate::arch::percpu`).
pub const MAX_PCPUS: usize = crate::arch::percpu::MAX_CPUS;

const NOT_SERVING: u32 = u32::MAX;
const STATE_RUNNING: u32 = 0;
const STATE_HALTED: u32 = 1;
const STATE_EXIT: u32 = 0x1_0000;

/// What one pCPU is doing, as its sampling handler sees it.
pub struct PcpuState {
    pub ring: SampleRing<Sample, RING_LEN>,
    /// The slots on the host TSC; every sample claims one (see [`super::grid`]).
    pub grid: SampleGrid,
    serving: AtomicU32,
    state: AtomicU32,
    /// Sampling exits taken and TSC ticks from each to the following VM entry.
    pub sample_exits: AtomicU64,
    pub sample_exit_to_entry: AtomicU64,
    pub host_samples: AtomicU64,
    pub guest_samples: AtomicU64,
}

impl Default for PcpuState {
    fn default() -> Self {
        Self::new()
    }
}

impl PcpuState {
    pub const fn new() -> Self {
        PcpuState {
            ring: SampleRing::new(),
            grid: SampleGrid::new(),
            serving: AtomicU32::new(NOT_SERVING),
            state: AtomicU32::new(STATE_RUNNING),
            sample_exits: AtomicU64::new(0),
            sample_exit_to_entry: AtomicU64::new(0),
            host_samples: AtomicU64::new(0),
            guest_samples: AtomicU64::new(0),
        }
    }

    /// The pCPU now serves `vcpu` (None: no vCPU, e.g. all halted or stopped).
    pub fn set_serving(&self, vcpu: Option<VcpuRef>) {
        let v = vcpu.map_or(NOT_SERVING, |r| (r.vm as u32) << 16 | r.vcpu as u32);
        self.serving.store(v, Ordering::Relaxed);
    }

    pub fn set_running(&self) {
        self.state.store(STATE_RUNNING, Ordering::Relaxed);
    }

    pub fn set_halted(&self) {
        self.state.store(STATE_HALTED, Ordering::Relaxed);
    }

    pub fn set_handling(&self, reason: u16) {
        self.state
            .store(STATE_EXIT | reason as u32, Ordering::Relaxed);
    }

    fn serving(&self) -> Option<VcpuRef> {
        match self.serving.load(Ordering::Relaxed) {
            NOT_SERVING => None,
            v => Some(VcpuRef {
                vm: (v >> 16) as u16,
                vcpu: v as u16,
            }),
        }
    }

    fn vcpu_state(&self) -> VcpuState {
        match self.state.load(Ordering::Relaxed) {
            STATE_HALTED => VcpuState::Halted,
            s if s & STATE_EXIT != 0 => VcpuState::ExitHandling {
                reason: LogExitReason(s as u16),
            },
            _ => VcpuState::Running,
        }
    }

    /// Host-mode sample: the sampling interrupt hit the hypervisor at `rip`.
    pub fn host_sample(&self, rip: u64, tsc: u64) -> Sample {
        Sample {
            tsc,
            context: Context::Host(HostContext {
                rip,
                serving: self.serving(),
                vcpu_state: self.vcpu_state(),
            }),
        }
    }

    /// Records a host-mode sample in the ring (drops and counts when full).
    pub fn take_host_sample(&self, rip: u64, tsc: u64) {
        self.host_samples.fetch_add(1, Ordering::Relaxed);
        self.ring.push(self.host_sample(rip, tsc));
    }

    /// Records a guest-mode sample read from the current VMCS.
    pub fn take_guest_sample(&self, vmcs: &impl Vmcs, who: GuestId, tsc: u64) {
        self.guest_samples.fetch_add(1, Ordering::Relaxed);
        self.ring.push(guest_sample(vmcs, who, tsc));
    }

    /// Host-mode sampling point (the periodic tick, or the run loop before a VM entry):
    /// samples the hypervisor at `rip` if the slot `tsc` falls in has no sample yet.
    pub fn sample_host_if_due(&self, rip: u64, tsc: u64) -> bool {
        let due = self.grid.claim(tsc).is_some();
        if due {
            self.take_host_sample(rip, tsc);
        }
        due
    }

    /// Guest-mode sampling point (a preemption-timer or sampling-interrupt exit): samples
    /// the guest from the current VMCS if the slot `tsc` falls in has no sample yet.
    pub fn sample_guest_if_due(&self, vmcs: &impl Vmcs, who: GuestId, tsc: u64) -> bool {
        let due = self.grid.claim(tsc).is_some();
        if due {
            self.take_guest_sample(vmcs, who, tsc);
        }
        due
    }

    /// Adds one exit->entry interval of a sampling exit.
    pub fn record_sample_latency(&self, ticks: u64) {
        self.sample_exits.fetch_add(1, Ordering::Relaxed);
        self.sample_exit_to_entry
            .fetch_add(ticks, Ordering::Relaxed);
    }

    /// Average TSC ticks from a sampling exit to the next VM entry.
    pub fn average_sample_latency(&self) -> Option<u64> {
        let n = self.sample_exits.load(Ordering::Relaxed);
        (n > 0).then(|| self.sample_exit_to_entry.load(Ordering::Relaxed) / n)
    }
}

/// Who a guest sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestId {
    pub vm: u16,
    pub vcpu: u16,
    pub vpid: u16,
    /// The vCPU's last exit that was not a sampling interrupt.
    pub last_exit: Option<u16>,
}

/// Guest-mode sample from the VMCS: RIP, CR3, CPL (SS.DPL).
pub fn guest_sample(vmcs: &impl Vmcs, who: GuestId, tsc: u64) -> Sample {
    Sample {
        tsc,
        context: Context::Guest(GuestContext {
            vm: who.vm,
            vcpu: who.vcpu,
            vpid: who.vpid,
            rip: vmcs.read(GuestNW::Rip),
            cr3: vmcs.read(GuestNW::Cr3),
            cpl: access_rights::dpl(vmcs.read(Guest32::SsAccessRights)),
            last_exit_reason: who.last_exit.map(LogExitReason),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::vmcs::VmcsField;
    use crate::vmx::vmcs::mock::MockVmcs;

    #[test]
    fn guest_sample_reads_rip_cr3_and_cpl() {
        let vmcs = MockVmcs::with(&[
            (GuestNW::Rip.encoding(), 0x40_1234),
            (GuestNW::Cr3.encoding(), 0x1a2b_3000),
            (Guest32::SsAccessRights.encoding(), 0xc0f3),
        ]);
        let s = guest_sample(
            &vmcs,
            GuestId {
                vm: 1,
                vcpu: 0,
                vpid: 2,
                last_exit: Some(12),
            },
            99,
        );
        assert_eq!(
            s,
            Sample {
                tsc: 99,
                context: Context::Guest(GuestContext {
                    vm: 1,
                    vcpu: 0,
                    vpid: 2,
                    rip: 0x40_1234,
                    cr3: 0x1a2b_3000,
                    cpl: 3,
                    last_exit_reason: Some(LogExitReason::HLT)
                })
            }
        );
    }

    #[test]
    fn host_samples_name_the_vcpu_and_its_state() {
        let p = PcpuState::new();
        assert_eq!(
            p.host_sample(5, 6).context,
            Context::Host(HostContext {
                rip: 5,
                serving: None,
                vcpu_state: VcpuState::Running
            })
        );
        p.set_serving(Some(VcpuRef { vm: 2, vcpu: 1 }));
        p.set_handling(30);
        assert_eq!(
            p.host_sample(7, 8).context,
            Context::Host(HostContext {
                rip: 7,
                serving: Some(VcpuRef { vm: 2, vcpu: 1 }),
                vcpu_state: VcpuState::ExitHandling {
                    reason: LogExitReason::IO_INSTRUCTION
                }
            })
        );
        p.set_halted();
        p.take_host_sample(9, 10);
        let mut out = [p.host_sample(0, 0); 2];
        assert_eq!(p.ring.pop_into(&mut out), 1);
        assert_eq!(
            out[0].context,
            Context::Host(HostContext {
                rip: 9,
                serving: Some(VcpuRef { vm: 2, vcpu: 1 }),
                vcpu_state: VcpuState::Halted
            })
        );
        p.record_sample_latency(100);
        p.record_sample_latency(50);
        assert_eq!(p.average_sample_latency(), Some(75));
    }

    #[test]
    fn guest_and_host_sampling_points_share_one_slot_each() {
        let p = PcpuState::new();
        let vmcs = MockVmcs::with(&[
            (GuestNW::Rip.encoding(), 0x1000),
            (GuestNW::Cr3.encoding(), 0x18_4000),
            (Guest32::SsAccessRights.encoding(), 0xc0f3),
        ]);
        let who = GuestId {
            vm: 0,
            vcpu: 0,
            vpid: 1,
            last_exit: None,
        };
        // Not started: nothing is sampled.
        assert!(!p.sample_host_if_due(1, 10));
        p.grid.start(100, 50);
        // Slot 0: the preemption exit at the boundary wins, the tick after it does nothing.
        assert!(p.sample_guest_if_due(&vmcs, who, 100));
        assert!(!p.sample_host_if_due(7, 120));
        // Slot 1: the tick (host mode) wins, a later interrupt exit does nothing.
        assert!(p.sample_host_if_due(7, 160));
        assert!(!p.sample_guest_if_due(&vmcs, who, 170));
        // Slots 2 and 3 pass unsampled; slot 4 sampled before an entry.
        assert!(p.sample_host_if_due(8, 310));
        assert_eq!(p.guest_samples.load(Ordering::Relaxed), 1);
        assert_eq!(p.host_samples.load(Ordering::Relaxed), 2);
        let mut out = [p.host_sample(0, 0); 8];
        assert_eq!(p.ring.pop_into(&mut out), 3);
        assert_eq!(
            out[..3].iter().map(|s| s.tsc).collect::<Vec<_>>(),
            [100, 160, 310]
        );
        assert!(matches!(out[0].context, Context::Guest(g) if g.cr3 == 0x18_4000 && g.cpl == 3));
        assert_eq!(
            p.grid.finish(420),
            crate::vmm::grid::GridTotals {
                sampled: 3,
                missed: 3,
                redundant: 2
            },
            "slots 2, 3 and 5 missed; 6 is partial"
        );
        assert_eq!(p.ring.dropped(), 0);
    }

    #[test]
    fn ring_overflow_is_counted_not_blocking() {
        let p = PcpuState::new();
        for i in 0..RING_LEN as u64 + 10 {
            p.take_host_sample(i, i);
        }
        assert_eq!(p.ring.dropped(), 10);
        assert_eq!(p.host_samples.load(Ordering::Relaxed), RING_LEN as u64 + 10);
    }
}
