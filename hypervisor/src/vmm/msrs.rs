//! Which guest MSR accesses trap, and what a trapped access does. Everything not listed
//! runs on the hardware: MSRs that VMX switches through the VMCS (EFER, PAT when the CPU
//! offers the PAT controls, FS/GS base, SYSENTER_*) and those the host never uses
//! (STAR/LSTAR/CSTAR/FMASK, KERNEL_GS_BASE, TSC_AUX: the hypervisor uses neither SYSCALL
//! nor SWAPGS nor RDTSCP).

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
}

/// Whether `msr` lies in `[first, last]`.
fn within(msr: Msr, first: Msr, last: Msr) -> bool {
    (first.0..=last.0).contains(&msr.0)
}

/// The VMX capability MSRs: VMX is hidden from guests.
fn is_vmx_capability(msr: Msr) -> bool {
    within(msr, Msr::IA32_VMX_BASIC, Msr::IA32_VMX_VMFUNC)
}

/// Performance-monitoring MSRs: the PMU belongs to the sampler.
fn is_pmu(msr: Msr) -> bool {
    within(msr, Msr::IA32_PMC0, Msr::IA32_PMC7)
        || within(msr, Msr::IA32_PERFEVTSEL0, Msr::IA32_PERFEVTSEL7)
        || within(msr, Msr::IA32_FIXED_CTR0, Msr::IA32_FIXED_CTR2)
        || within(
            msr,
            Msr::IA32_FIXED_CTR_CTRL,
            Msr::IA32_PERF_GLOBAL_OVF_CTRL,
        )
}

/// MTRRs: writes would change the host's caching.
fn is_mtrr(msr: Msr) -> bool {
    within(msr, Msr::IA32_MTRR_PHYSBASE0, Msr(0x21f))
        || within(msr, Msr::IA32_MTRR_FIX64K_00000, Msr(0x26f))
        || msr == Msr::IA32_MTRR_DEF_TYPE
}

fn is_x2apic(msr: Msr) -> bool {
    within(msr, Msr::IA32_X2APIC_FIRST, Msr::IA32_X2APIC_LAST)
}

/// The trapping policy as an MSR bitmap. `pat_switched`: the VMCS loads/saves PAT.
pub fn msr_bitmap(pat_switched: bool) -> MsrBitmap {
    let mut bm = MsrBitmap::default();
    let both = [Msr::IA32_FEATURE_CONTROL];
    let ranges: [(Msr, Msr); 7] = [
        (Msr::IA32_VMX_BASIC, Msr::IA32_VMX_VMFUNC),
        (Msr::IA32_PMC0, Msr::IA32_PMC7),
        (Msr::IA32_PERFEVTSEL0, Msr::IA32_PERFEVTSEL7),
        (Msr::IA32_FIXED_CTR0, Msr::IA32_FIXED_CTR2),
        (Msr::IA32_FIXED_CTR_CTRL, Msr::IA32_PERF_GLOBAL_OVF_CTRL),
        (Msr::IA32_X2APIC_FIRST, Msr::IA32_X2APIC_LAST),
        (Msr::IA32_MTRR_FIX64K_00000, Msr(0x26f)),
    ];
    for m in both {
        bm.trap_read(m);
        bm.trap_write(m);
    }
    for (first, last) in ranges {
        for n in first.0..=last.0 {
            if !is_mtrr(Msr(n)) {
                bm.trap_read(Msr(n));
            }
            bm.trap_write(Msr(n));
        }
    }
    for n in Msr::IA32_MTRR_PHYSBASE0.0..=0x21f {
        bm.trap_write(Msr(n));
    }
    for m in [
        Msr::IA32_TIME_STAMP_COUNTER,
        Msr::IA32_APIC_BASE,
        Msr::IA32_TSC_ADJUST,
        Msr::IA32_BIOS_UPDT_TRIG,
        Msr::IA32_BIOS_SIGN_ID,
        Msr::IA32_MISC_ENABLE,
        Msr::IA32_DEBUGCTL,
        Msr::IA32_MTRR_DEF_TYPE,
        Msr::IA32_TSC_DEADLINE,
    ] {
        bm.trap_write(m);
    }
    if !pat_switched {
        bm.trap_write(Msr::IA32_PAT);
    }
    bm
}

/// What a trapped RDMSR of `msr` does.
pub fn on_read(msr: Msr) -> MsrAction {
    if msr == Msr::IA32_FEATURE_CONTROL {
        // Locked, VMX off: the guest sees a CPU without usable VMX.
        MsrAction::Read(feature_control::LOCKED)
    } else if is_pmu(msr) {
        // No PMU for guests: counters read 0 (as Bochs and QEMU TCG do).
        MsrAction::Read(0)
    } else if is_vmx_capability(msr) || is_x2apic(msr) {
        MsrAction::Fault
    } else if msr == Msr::IA32_PAT || is_mtrr(msr) || msr == Msr::IA32_MISC_ENABLE {
        MsrAction::ReadHost
    } else {
        MsrAction::Fault
    }
}

/// What a trapped WRMSR of `msr` does.
pub fn on_write(msr: Msr) -> MsrAction {
    if is_pmu(msr)
        || is_mtrr(msr)
        || matches!(
            msr,
            Msr::IA32_TIME_STAMP_COUNTER
                | Msr::IA32_APIC_BASE
                | Msr::IA32_TSC_ADJUST
                | Msr::IA32_BIOS_UPDT_TRIG
                | Msr::IA32_BIOS_SIGN_ID
                | Msr::IA32_MISC_ENABLE
                | Msr::IA32_DEBUGCTL
                | Msr::IA32_PAT
                | Msr::IA32_TSC_DEADLINE
        )
    {
        MsrAction::IgnoreWrite
    } else {
        MsrAction::Fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_must_trap_traps() {
        let bm = msr_bitmap(true);
        assert!(bm.traps_read(Msr::IA32_FEATURE_CONTROL));
        assert!(bm.traps_read(Msr::IA32_VMX_BASIC) && bm.traps_write(Msr::IA32_VMX_VMFUNC));
        assert!(bm.traps_read(Msr::IA32_PERF_GLOBAL_CTRL));
        assert!(!bm.traps_read(Msr::IA32_MTRRCAP) && !bm.traps_read(Msr(0x200)));
        assert!(bm.traps_write(Msr(0x200)) && bm.traps_write(Msr::IA32_MTRR_DEF_TYPE));
        assert!(!bm.traps_read(Msr::IA32_EFER) && !bm.traps_write(Msr::IA32_EFER));
        assert!(!bm.traps_write(Msr::IA32_LSTAR) && !bm.traps_write(Msr::IA32_FS_BASE));
        assert!(!bm.traps_write(Msr::IA32_PAT));
        assert!(msr_bitmap(false).traps_write(Msr::IA32_PAT));
        assert!(
            !bm.traps_read(Msr::IA32_TIME_STAMP_COUNTER)
                && bm.traps_write(Msr::IA32_TIME_STAMP_COUNTER)
        );
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
        assert_eq!(on_write(Msr::IA32_FEATURE_CONTROL), MsrAction::Fault);
        assert_eq!(on_write(Msr(0x202)), MsrAction::IgnoreWrite);
        assert_eq!(on_write(Msr::IA32_PERFEVTSEL0), MsrAction::IgnoreWrite);
        assert_eq!(on_write(Msr(0x830)), MsrAction::Fault);
    }
}
