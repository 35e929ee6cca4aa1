//! Sampling: building a `vmlog::Sample` from the VMCS (guest mode) or from the interrupted
//! host context (host mode), the per-pCPU state the host-mode handler reads, and the
//! per-pCPU rings. Nothing here allocates or locks.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vmlog::{
    Context, ExitReason as LogExitReason, GuestContext, HostContext, Sample, VcpuRef, VcpuState,
};

use crate::vmx::vmcs::{Guest32, GuestNW, Vmcs, access_rights};

use super::ring::SampleRing;

/// Samples one pCPU's ring holds before the exporter must drain it.
pub const RING_LEN: usize = 4096;
/// pCPUs with a ring (only the boot pCPU runs guests so far).
pub const MAX_PCPUS: usize = 1;

const NOT_SERVING: u32 = u32::MAX;
const STATE_RUNNING: u32 = 0;
const STATE_HALTED: u32 = 1;
const STATE_EXIT: u32 = 0x1_0000;

/// What one pCPU is doing, as its sampling handler sees it.
pub struct PcpuState {
    pub ring: SampleRing<Sample, RING_LEN>,
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
    fn ring_overflow_is_counted_not_blocking() {
        let p = PcpuState::new();
        for i in 0..RING_LEN as u64 + 10 {
            p.take_host_sample(i, i);
        }
        assert_eq!(p.ring.dropped(), 10);
        assert_eq!(p.host_samples.load(Ordering::Relaxed), RING_LEN as u64 + 10);
    }
}
