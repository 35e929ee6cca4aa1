//! Which guest MSR accesses trap, and what a trapped access does.
//!
//! Writes: every WRMSR exits except those of an allow-list of MSRs that are per-vCPU
//! architectural state the VMCS switches (EFER, PAT when the CPU offers the PAT controls,
//! FS/GS base, SYSENTER_*) or that the host never uses (STAR/LSTAR/CSTAR/FMASK,
//! KERNEL_GS_BASE, TSC_AUX: the hypervisor uses neither SYSCALL nor SWAPGS nor RDTSCP).
//! A trapped write is ignored for a few MSRs guests write as a matter of course (the PMU,
//! the MTRRs, microcode, ...) and raises #GP for every other one.
//!
//! Reads: run on the hardware except the VMX capabilities, the PMU, IA32_FEATURE_CONTROL
//! (which trap and are emulated or #GP) and the local APIC's MSRs (IA32_APIC_BASE,
//! IA32_TSC_DEADLINE, x2APIC), which the vCPU's APIC model answers, as it does their
//! writes; an RDMSR outside the bitmap's ranges always exits and raises #GP unless listed
//! in [`on_read`].

use crate::vmx::bitmap::MsrBitmap;
use crate::vmx::msr::{Msr, feature_control};

/// What a trapped RDMSR/WRMSR does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAction {
    /// RDMSR returns this value.
    Read(u64),
    /// RDMSR returns the host's value.
    ReadHost,
    /// WRMSR is accepted and has no effect.
    IgnoreWrite,
    /// #GP(0) in the guest.
    Fault,
    /// The vCPU's local APIC model answers (IA32_APIC_BASE, IA32_TSC_DEADLINE, x2APIC).
    Apic,
}

/// MSRs whose WRMSR runs in the guest: the VMCS loads and saves them on every entry and
/// exit, or the host never reads them.
pub const WRITE_ALLOWED: [Msr; 12] = [
    Msr::IA32_EFER,
    Msr::IA32_FS_BASE,
    Msr::IA32_GS_BASE,
    Msr::IA32_KERNEL_GS_BASE,
    Msr::IA32_STAR,
    Msr::IA32_LSTAR,
    Msr::IA32_CSTAR,
    Msr::IA32_FMASK,
    Msr::IA32_SYSENTER_CS,
    Msr::IA32_SYSENTER_ESP,
    Msr::IA32_SYSENTER_EIP,
    Msr::IA32_TSC_AUX,
];

/// Trapped writes that are accepted and dropped: state a guest sets up routinely that the
/// host owns (TSC, APIC base, microcode, MTRRs, caching, speculation control) or that is
/// hidden from guests (the PMU).
const WRITE_IGNORED: [Msr; 8] = [
    Msr::IA32_TIME_STAMP_COUNTER,
    Msr::IA32_TSC_ADJUST,
    Msr::IA32_SPEC_CTRL,
    Msr::IA32_PRED_CMD,
    Msr::IA32_BIOS_UPDT_TRIG,
    Msr::IA32_BIOS_SIGN_ID,
    Msr::IA32_MISC_ENABLE,
    Msr::IA32_DEBUGCTL,
];

/// MSRs of the local APIC: the vCPU's model answers reads and writes.
fn is_apic(msr: Msr) -> bool {
    msr == Msr::IA32_APIC_BASE
        || msr == Msr::IA32_TSC_DEADLINE
        || within(msr, Msr::IA32_X2APIC_FIRST, Msr::IA32_X2APIC_LAST)
}

/// Whether `msr` lies in `[first, last]`.
fn within(msr: Msr, first: Msr, last: Msr) -> bool {
    (first.0..=last.0).contains(&msr.0)
}

/// Performance-monitoring MSRs: the PMU belongs to the sampler.
fn is_pmu(msr: Msr) -> bool {
    PMU_RANGES
        .iter()
        .any(|&(first, last)| within(msr, first, last))
}

const PMU_RANGES: [(Msr, Msr); 4] = [
    (Msr::IA32_PMC0, Msr::IA32_PMC7),
    (Msr::IA32_PERFEVTSEL0, Msr::IA32_PERFEVTSEL7),
    (Msr::IA32_FIXED_CTR0, Msr::IA32_FIXED_CTR2),
    (Msr::IA32_FIXED_CTR_CTRL, Msr::IA32_PERF_GLOBAL_OVF_CTRL),
];

/// MTRRs: writes would change the host's caching.
fn is_mtrr(msr: Msr) -> bool {
    within(msr, Msr::IA32_MTRR_PHYSBASE0, Msr::IA32_MTRR_VARIABLE_LAST)
        || within(msr, Msr::IA32_MTRR_FIX64K_00000, Msr::IA32_MTRR_FIX4K_F8000)
        || msr == Msr::IA32_MTRR_DEF_TYPE
}

/// The trapping policy as an MSR bitmap. `pat_switched`: the VMCS loads/saves PAT.
pub fn msr_bitmap(pat_switched: bool) -> MsrBitmap {
    let mut bm = MsrBitmap::default();
    bm.trap_all_writes();
    for m in WRITE_ALLOWED {
        bm.pass_write(m);
    }
    if pat_switched {
        bm.pass_write(Msr::IA32_PAT);
    }
    bm.trap_read(Msr::IA32_FEATURE_CONTROL);
    bm.trap_read(Msr::IA32_APIC_BASE);
    bm.trap_read(Msr::MSR_MISC_FEATURES_ENABLES);
    bm.trap_read(Msr::IA32_TSC_DEADLINE);
    let read_ranges = PMU_RANGES.into_iter().chain([
        (Msr::IA32_VMX_BASIC, Msr::IA32_VMX_VMFUNC),
        (Msr::IA32_X2APIC_FIRST, Msr::IA32_X2APIC_LAST),
    ]);
    for (first, last) in read_ranges {
        for n in first.0..=last.0 {
            bm.trap_read(Msr(n));
        }
    }
    bm
}

/// What a trapped RDMSR of `msr` does.
pub fn on_read(msr: Msr) -> MsrAction {
    if is_apic(msr) {
        MsrAction::Apic
    } else if msr == Msr::IA32_FEATURE_CONTROL {
        // Locked, VMX off: the guest sees a CPU without usable VMX.
        MsrAction::Read(feature_control::LOCKED)
    } else if is_pmu(msr) {
        // No PMU for guests: counters read 0 (as Bochs and QEMU TCG do).
        MsrAction::Read(0)
    } else if msr == Msr::IA32_PAT || is_mtrr(msr) || msr == Msr::IA32_MISC_ENABLE {
        MsrAction::ReadHost
    } else {
        // VMX capabilities, MISC_FEATURES_ENABLES (CPUID faulting and ring-3 MWAIT, not
        // virtualized: Linux probes it with rdmsr_safe and then leaves it alone) and every
        // MSR not known here.
        MsrAction::Fault
    }
}

/// What a trapped WRMSR of `msr` does: PAT only traps when the VMCS does not switch it,
/// and then its writes are dropped like the MTRRs'.
pub fn on_write(msr: Msr) -> MsrAction {
    if is_apic(msr) {
        MsrAction::Apic
    } else if is_pmu(msr) || is_mtrr(msr) || msr == Msr::IA32_PAT || WRITE_IGNORED.contains(&msr) {
        MsrAction::IgnoreWrite
    } else {
        MsrAction::Fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_trap_unless_allowed_and_sensitive_reads_trap() {
        let bm = msr_bitmap(true);
        assert!(bm.traps_read(Msr::IA32_FEATURE_CONTROL));
        assert!(bm.traps_read(Msr::IA32_VMX_BASIC) && bm.traps_write(Msr::IA32_VMX_VMFUNC));
        assert!(bm.traps_read(Msr::IA32_PERF_GLOBAL_CTRL));
        assert!(bm.traps_read(Msr(0x830)) && bm.traps_write(Msr(0x830)));
        assert!(!bm.traps_read(Msr::IA32_MTRRCAP) && !bm.traps_read(Msr(0x200)));
        assert!(bm.traps_read(Msr::IA32_APIC_BASE) && bm.traps_read(Msr::IA32_TSC_DEADLINE));
        assert!(bm.traps_write(Msr(0x200)) && bm.traps_write(Msr::IA32_MTRR_DEF_TYPE));
        assert!(!bm.traps_read(Msr::IA32_EFER) && !bm.traps_write(Msr::IA32_EFER));
        for m in WRITE_ALLOWED {
            assert!(!bm.traps_write(m), "{m:?}");
        }
        assert!(!bm.traps_write(Msr::IA32_PAT));
        assert!(msr_bitmap(false).traps_write(Msr::IA32_PAT));
        // Everything else writes through the hypervisor, known or not.
        for m in [
            Msr::IA32_TIME_STAMP_COUNTER,
            Msr::IA32_SPEC_CTRL,
            Msr::MSR_PLATFORM_INFO,
            Msr(0x1234),
            Msr(0xc000_0104),
        ] {
            assert!(bm.traps_write(m), "{m:?}");
        }
        assert!(!bm.traps_read(Msr::IA32_TIME_STAMP_COUNTER));
        assert!(
            bm.traps_read(Msr(0x4000_0000)),
            "outside the bitmap everything exits"
        );
    }

    #[test]
    fn trapped_accesses() {
        assert_eq!(on_read(Msr::IA32_FEATURE_CONTROL), MsrAction::Read(1));
        assert_eq!(on_read(Msr::IA32_VMX_BASIC), MsrAction::Fault);
        assert_eq!(on_read(Msr::IA32_PMC0), MsrAction::Read(0));
        assert_eq!(on_read(Msr(0x4000_0000)), MsrAction::Fault);
        assert_eq!(on_read(Msr(0x830)), MsrAction::Apic);
        assert_eq!(on_read(Msr::MSR_MISC_FEATURES_ENABLES), MsrAction::Fault);
        assert_eq!(on_read(Msr::IA32_APIC_BASE), MsrAction::Apic);
        assert_eq!(on_write(Msr::IA32_TSC_DEADLINE), MsrAction::Apic);
        assert_eq!(on_write(Msr::IA32_FEATURE_CONTROL), MsrAction::Fault);
        assert_eq!(on_write(Msr(0x202)), MsrAction::IgnoreWrite);
        assert_eq!(on_write(Msr::IA32_MTRR_FIX4K_F8000), MsrAction::IgnoreWrite);
        assert_eq!(on_write(Msr::IA32_PERFEVTSEL0), MsrAction::IgnoreWrite);
        assert_eq!(on_write(Msr::IA32_SPEC_CTRL), MsrAction::IgnoreWrite);
        assert_eq!(on_write(Msr(0x830)), MsrAction::Apic);
        assert_eq!(on_write(Msr::MSR_PLATFORM_INFO), MsrAction::Fault);
        assert_eq!(on_write(Msr(0x1234)), MsrAction::Fault);
    }
}
