//! The hardware side of the VMM's platform traits: VMX capability MSRs, the MSRs a guest
//! may read through to the host, the performance-monitoring MSRs and the host MSRs a VMCS
//! needs. Every MSR access of the run loop goes through here, each limited to MSRs that
//! exist whenever the check in front of it passed.

use super::caps::CapabilitySource;
use crate::arch::cpu::{self, Msr};
use crate::vmm::msrs::{self, MsrAction};
use crate::vmm::pmu::PmuHw;

/// The capability MSRs of this CPU.
pub struct CpuCaps;

impl CapabilitySource for CpuCaps {
    fn cpuid1_ecx(&self) -> u32 {
        cpu::cpuid(1, 0).ecx
    }
    fn read_msr(&self, msr: Msr) -> u64 {
        if !is_vmx_capability(msr) {
            return 0;
        }
        // SAFETY: IA32_FEATURE_CONTROL or a VMX capability MSR. VmxCaps::probe reads them
        // only after CPUID reported VMX, the TRUE_* ones only when IA32_VMX_BASIC bit 55
        // says they exist, PROCBASED_CTLS2/EPT_VPID_CAP/VMFUNC only when allowed.
        unsafe { cpu::rdmsr(msr) }
    }
}

fn is_vmx_capability(msr: Msr) -> bool {
    msr == Msr::IA32_FEATURE_CONTROL
        || (Msr::IA32_VMX_BASIC.0..=Msr::IA32_VMX_VMFUNC.0).contains(&msr.0)
}

/// The host's value of an MSR that the guest MSR policy passes through on read
/// ([`MsrAction::ReadHost`]: PAT, the MTRRs, MISC_ENABLE); 0 for any other MSR.
pub fn read_host_msr_for_guest(msr: Msr) -> u64 {
    if msrs::on_read(msr) != MsrAction::ReadHost {
        return 0;
    }
    // SAFETY: the ReadHost MSRs exist on every CPU with VMX and reading them has no side
    // effect.
    unsafe { cpu::rdmsr(msr) }
}

/// The host's FS base, GS base, EFER and PAT, for the VMCS host-state area.
pub fn host_msrs() -> (u64, u64, u64, u64) {
    // SAFETY: FS_BASE, GS_BASE, EFER and PAT exist on every CPU with VMX (long mode and the
    // PAT feature are prerequisites); reading them has no side effect.
    unsafe {
        (
            cpu::rdmsr(Msr::IA32_FS_BASE),
            cpu::rdmsr(Msr::IA32_GS_BASE),
            cpu::rdmsr(Msr::IA32_EFER),
            cpu::rdmsr(Msr::IA32_PAT),
        )
    }
}

/// The PMU MSRs of this CPU. Only architectural perfmon MSRs are touched, and only after
/// CPUID.0xA reported architectural perfmon (the sampler asks for nothing else before).
pub struct HwPmu;

fn is_perfmon(msr: Msr) -> bool {
    let m = msr.0;
    (Msr::IA32_PMC0.0..=Msr::IA32_PMC7.0).contains(&m)
        || (Msr::IA32_PERFEVTSEL0.0..=Msr::IA32_PERFEVTSEL7.0).contains(&m)
        || (Msr::IA32_FIXED_CTR0.0..=Msr::IA32_FIXED_CTR2.0).contains(&m)
        || m == Msr::IA32_FIXED_CTR_CTRL.0
        || m == Msr::IA32_PERF_GLOBAL_STATUS.0
        || m == Msr::IA32_PERF_GLOBAL_CTRL.0
        || m == Msr::IA32_PERF_GLOBAL_OVF_CTRL.0
}

fn has_arch_perfmon() -> bool {
    cpu::cpuid(0, 0).eax >= 0xa && cpu::cpuid(0xa, 0).eax & 0xff > 0
}

impl PmuHw for HwPmu {
    fn cpuid_0a_eax(&self) -> u32 {
        cpu::cpuid(0xa, 0).eax
    }
    fn read_msr(&mut self, msr: Msr) -> u64 {
        if !is_perfmon(msr) || !has_arch_perfmon() {
            return 0;
        }
        // SAFETY: an architectural perfmon MSR on a CPU that reports architectural
        // perfmon; reading a counter has no side effect.
        unsafe { cpu::rdmsr(msr) }
    }
    fn write_msr(&mut self, msr: Msr, value: u64) {
        if !is_perfmon(msr) || !has_arch_perfmon() {
            return;
        }
        // SAFETY: as above; the counters are the hypervisor's (guests never reach the PMU
        // MSRs: the MSR bitmap traps them), so programming them affects only the sampler.
        unsafe { cpu::wrmsr(msr, value) }
    }
    fn busy_work(&mut self) {
        let mut x = 0u64;
        for i in 0..20_000u64 {
            x = core::hint::black_box(x.wrapping_add(i));
        }
    }
    fn route_pmi_to_nmi(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_filters() {
        assert!(is_vmx_capability(Msr::IA32_VMX_BASIC));
        assert!(is_vmx_capability(Msr::IA32_VMX_TRUE_ENTRY_CTLS));
        assert!(is_vmx_capability(Msr::IA32_FEATURE_CONTROL));
        assert!(!is_vmx_capability(Msr::IA32_EFER));
        assert!(!is_vmx_capability(Msr(0x492)));
        assert!(is_perfmon(Msr::IA32_PMC0));
        assert!(is_perfmon(Msr::IA32_PERFEVTSEL7));
        assert!(is_perfmon(Msr::IA32_PERF_GLOBAL_CTRL));
        assert!(!is_perfmon(Msr::IA32_MISC_ENABLE));
        assert!(!is_perfmon(Msr(0x1c9)));
    }
}
