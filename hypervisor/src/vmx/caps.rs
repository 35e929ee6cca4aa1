//! VMX capability discovery (SDM Vol. 3C ch. 24.6-24.8 and Vol. 3D appendix A): what this
//! CPU offers, whether it is enough for this hypervisor, and the one-line explanation when
//! it is not.

use core::fmt;

use super::controls::{AllowedBits, EntryCtls, ExitCtls, PinCtls, Proc2Ctls, ProcCtls};
use super::msr::{Msr, feature_control};

/// Where capability values come from: the CPU on bare metal, recorded values in tests.
pub trait CapabilitySource {
    /// CPUID.1:ECX.
    fn cpuid1_ecx(&self) -> u32;
    /// Reads an MSR; only called for MSRs that exist when CPUID says VMX is present.
    fn read_msr(&self, msr: Msr) -> u64;
}

/// CPUID.1:ECX bit 5: VMX.
pub const CPUID1_ECX_VMX: u32 = 1 << 5;

/// IA32_VMX_BASIC fields (SDM A.1).
pub mod basic {
    pub const REVISION_MASK: u64 = 0x7fff_ffff;
    pub const TRUE_CONTROLS: u64 = 1 << 55;
    pub const MEMORY_TYPE_SHIFT: u32 = 50;
    pub const MEMORY_TYPE_MASK: u64 = 0xf;
}

/// IA32_VMX_MISC fields (SDM A.6).
pub mod misc {
    pub const PREEMPTION_TIMER_RATE_MASK: u64 = 0x1f;
    pub const ACTIVITY_HLT: u64 = 1 << 6;
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM A.10).
pub mod ept_vpid_cap {
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    pub const WALK_LENGTH_4: u64 = 1 << 6;
    pub const MEMORY_TYPE_UC: u64 = 1 << 8;
    pub const MEMORY_TYPE_WB: u64 = 1 << 14;
    pub const PAGE_2M: u64 = 1 << 16;
    pub const PAGE_1G: u64 = 1 << 17;
    pub const INVEPT: u64 = 1 << 20;
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
    pub const INVEPT_ALL_CONTEXT: u64 = 1 << 26;
    pub const INVVPID: u64 = 1 << 32;
    pub const INVVPID_INDIVIDUAL_ADDRESS: u64 = 1 << 40;
    pub const INVVPID_SINGLE_CONTEXT: u64 = 1 << 41;
    pub const INVVPID_ALL_CONTEXT: u64 = 1 << 42;
}

/// What is missing for this hypervisor to run. `Display` gives "<what is missing>; <how to
/// get it>"; [`VmxUnavailable::fatal_line`] the whole console line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxUnavailable {
    NoVmx,
    DisabledByFirmware,
    NoSecondaryControls,
    NoEpt,
    NoEptWalk4OrWriteBack,
    NoInvept,
    NoUnrestrictedGuest,
    NoVpid,
    NoInvvpid,
    NoPreemptionTimer,
    /// A control every VMX CPU should allow is forced off: `(kind, bits)`.
    ControlNotAllowed(ControlKind, u32),
}

/// Which VMX control word a [`VmxUnavailable::ControlNotAllowed`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlKind {
    PinBased,
    PrimaryProcBased,
    SecondaryProcBased,
    Exit,
    Entry,
}

impl fmt::Display for ControlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlKind::PinBased => "pin-based VM-execution",
            ControlKind::PrimaryProcBased => "primary processor-based VM-execution",
            ControlKind::SecondaryProcBased => "secondary processor-based VM-execution",
            ControlKind::Exit => "VM-exit",
            ControlKind::Entry => "VM-entry",
        })
    }
}

const NESTED_HINT: &str = "under nested QEMU/KVM load kvm_intel with nested=1 and pass -cpu host";

impl fmt::Display for VmxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxUnavailable::NoVmx => {
                write!(f, "this CPU or emulator offers no VT-x; {NESTED_HINT}")
            }
            VmxUnavailable::DisabledByFirmware => write!(
                f,
                "VT-x is disabled by the firmware (IA32_FEATURE_CONTROL is locked without VMX \
                 outside SMX); enable Intel Virtualization Technology in the firmware setup"
            ),
            VmxUnavailable::NoSecondaryControls => write!(
                f,
                "no secondary processor-based controls (so no EPT, VPID or unrestricted guest); \
                 use a Westmere or newer CPU, {NESTED_HINT}"
            ),
            VmxUnavailable::NoEpt => write!(
                f,
                "no EPT (extended page tables); use a Nehalem or newer CPU, under nested \
                 QEMU/KVM load kvm_intel with nested=1 ept=1 and pass -cpu host"
            ),
            VmxUnavailable::NoEptWalk4OrWriteBack => write!(
                f,
                "EPT lacks 4-level page walks or the write-back memory type; use a Nehalem or \
                 newer CPU, {NESTED_HINT}"
            ),
            VmxUnavailable::NoInvept => write!(
                f,
                "no INVEPT single-context or all-context invalidation; use a Nehalem or newer \
                 CPU, {NESTED_HINT}"
            ),
            VmxUnavailable::NoUnrestrictedGuest => write!(
                f,
                "no unrestricted guest; use a Westmere or newer CPU, under nested QEMU/KVM load \
                 kvm_intel with nested=1 unrestricted_guest=1 and pass -cpu host"
            ),
            VmxUnavailable::NoVpid => write!(
                f,
                "no VPID; use a Nehalem or newer CPU, under nested QEMU/KVM load kvm_intel with \
                 nested=1 vpid=1 and pass -cpu host"
            ),
            VmxUnavailable::NoInvvpid => write!(
                f,
                "no INVVPID single-context or all-context invalidation; use a Nehalem or newer \
                 CPU, {NESTED_HINT}"
            ),
            VmxUnavailable::NoPreemptionTimer => write!(
                f,
                "no VMX-preemption timer; use a Westmere or newer CPU, under nested QEMU/KVM \
                 load kvm_intel with nested=1 preemption_timer=1 and pass -cpu host"
            ),
            VmxUnavailable::ControlNotAllowed(kind, bits) => write!(
                f,
                "required {kind} controls {bits:#x} are not allowed by this CPU; {NESTED_HINT}"
            ),
        }
    }
}

impl VmxUnavailable {
    /// The whole fatal console line (contract: status 3 follows).
    pub fn fatal_line(&self) -> FatalLine {
        FatalLine(*self)
    }
}

/// `hv: fatal: VMX unavailable: <what>; <how>`.
pub struct FatalLine(VmxUnavailable);

impl fmt::Display for FatalLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hv: fatal: VMX unavailable: {}", self.0)
    }
}

/// What IA32_FEATURE_CONTROL asks of us before VMXON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureControlAction {
    /// Locked with VMX outside SMX enabled: nothing to do.
    Ready,
    /// Unlocked: write this value (VMX outside SMX + lock) first.
    WriteAndLock(u64),
}

/// Decides what IA32_FEATURE_CONTROL allows (SDM 24.7).
pub fn feature_control_action(value: u64) -> Result<FeatureControlAction, VmxUnavailable> {
    if value & feature_control::LOCKED != 0 {
        if value & feature_control::VMX_OUTSIDE_SMX != 0 {
            Ok(FeatureControlAction::Ready)
        } else {
            Err(VmxUnavailable::DisabledByFirmware)
        }
    } else {
        Ok(FeatureControlAction::WriteAndLock(
            value | feature_control::VMX_OUTSIDE_SMX | feature_control::LOCKED,
        ))
    }
}

/// Every VMX capability value this hypervisor consults, read once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxCaps {
    pub basic: u64,
    pub feature_control: FeatureControlAction,
    /// Whether the TRUE_* control MSRs exist (IA32_VMX_BASIC bit 55).
    pub true_controls: bool,
    pub pin: AllowedBits,
    pub proc: AllowedBits,
    pub proc2: AllowedBits,
    pub exit: AllowedBits,
    pub entry: AllowedBits,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    pub ept_vpid: u64,
}

/// Controls this hypervisor cannot run without, and those it takes when offered.
pub mod wanted {
    use super::*;

    pub const PIN_REQUIRED: PinCtls = PinCtls::EXTERNAL_INTERRUPT_EXITING
        .union(PinCtls::NMI_EXITING)
        .union(PinCtls::PREEMPTION_TIMER);
    /// No virtual NMIs: the hypervisor never injects an NMI into a guest (host NMIs exit and
    /// are reflected to the host), so there is no virtual-NMI blocking to track (SDM
    /// 25.6.1, 26.7.1: "virtual NMIs" only matters for injected NMIs and NMI-window exits).
    pub const PIN_OPTIONAL: PinCtls = PinCtls::empty();
    pub const PROC_REQUIRED: ProcCtls = ProcCtls::HLT_EXITING
        .union(ProcCtls::USE_IO_BITMAPS)
        .union(ProcCtls::USE_MSR_BITMAPS)
        .union(ProcCtls::ACTIVATE_SECONDARY_CONTROLS);
    pub const PROC_OPTIONAL: ProcCtls = ProcCtls::MWAIT_EXITING.union(ProcCtls::MONITOR_EXITING);
    pub const PROC2_REQUIRED: Proc2Ctls = Proc2Ctls::ENABLE_EPT
        .union(Proc2Ctls::ENABLE_VPID)
        .union(Proc2Ctls::UNRESTRICTED_GUEST);
    /// Instructions a Linux guest uses when CPUID offers them; without these controls they
    /// would raise #UD in the guest. Not "enable XSAVES/XRSTORS": guest CPUID hides XSAVE
    /// (leaf 1 ECX.XSAVE and leaf 0xd), and with the control 0 XSAVES/XRSTORS raise #UD
    /// (SDM 25.6.2, table 25-7), which is what a CPU without XSAVE does.
    pub const PROC2_OPTIONAL: Proc2Ctls = Proc2Ctls::ENABLE_RDTSCP.union(Proc2Ctls::ENABLE_INVPCID);
    pub const EXIT_REQUIRED: ExitCtls = ExitCtls::HOST_ADDRESS_SPACE_SIZE
        .union(ExitCtls::ACK_INTERRUPT_ON_EXIT)
        .union(ExitCtls::SAVE_EFER)
        .union(ExitCtls::LOAD_EFER);
    pub const EXIT_OPTIONAL: ExitCtls = ExitCtls::SAVE_PAT.union(ExitCtls::LOAD_PAT);
    pub const ENTRY_REQUIRED: EntryCtls = EntryCtls::LOAD_EFER;
    pub const ENTRY_OPTIONAL: EntryCtls = EntryCtls::LOAD_PAT;
}

/// The control words to program, adjusted to what the CPU allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    pub entry: u32,
}

impl VmxCaps {
    /// Reads every capability and checks that this hypervisor can run: the first missing
    /// feature is the error. A CPU without TRUE_* control MSRs is fine: the plain ones are
    /// used instead.
    pub fn probe(src: &impl CapabilitySource) -> Result<VmxCaps, VmxUnavailable> {
        if src.cpuid1_ecx() & CPUID1_ECX_VMX == 0 {
            return Err(VmxUnavailable::NoVmx);
        }
        let feature_control = feature_control_action(src.read_msr(Msr::IA32_FEATURE_CONTROL))?;
        let basic = src.read_msr(Msr::IA32_VMX_BASIC);
        let true_controls = basic & basic::TRUE_CONTROLS != 0;
        let pick = |plain: Msr, tru: Msr| {
            AllowedBits::from_msr(src.read_msr(if true_controls { tru } else { plain }))
        };
        let pin = pick(
            Msr::IA32_VMX_PINBASED_CTLS,
            Msr::IA32_VMX_TRUE_PINBASED_CTLS,
        );
        let proc = pick(
            Msr::IA32_VMX_PROCBASED_CTLS,
            Msr::IA32_VMX_TRUE_PROCBASED_CTLS,
        );
        let exit = pick(Msr::IA32_VMX_EXIT_CTLS, Msr::IA32_VMX_TRUE_EXIT_CTLS);
        let entry = pick(Msr::IA32_VMX_ENTRY_CTLS, Msr::IA32_VMX_TRUE_ENTRY_CTLS);
        if !proc.allows(ProcCtls::ACTIVATE_SECONDARY_CONTROLS.bits()) {
            return Err(VmxUnavailable::NoSecondaryControls);
        }
        let proc2 = AllowedBits::from_msr(src.read_msr(Msr::IA32_VMX_PROCBASED_CTLS2));
        let caps = VmxCaps {
            basic,
            feature_control,
            true_controls,
            pin,
            proc,
            proc2,
            exit,
            entry,
            misc: src.read_msr(Msr::IA32_VMX_MISC),
            cr0_fixed0: src.read_msr(Msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: src.read_msr(Msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: src.read_msr(Msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: src.read_msr(Msr::IA32_VMX_CR4_FIXED1),
            ept_vpid: 0,
        };
        if !proc2.allows(Proc2Ctls::ENABLE_EPT.bits()) {
            return Err(VmxUnavailable::NoEpt);
        }
        if !proc2.allows(Proc2Ctls::UNRESTRICTED_GUEST.bits()) {
            return Err(VmxUnavailable::NoUnrestrictedGuest);
        }
        if !proc2.allows(Proc2Ctls::ENABLE_VPID.bits()) {
            return Err(VmxUnavailable::NoVpid);
        }
        let ept_vpid = src.read_msr(Msr::IA32_VMX_EPT_VPID_CAP);
        use ept_vpid_cap as e;
        if ept_vpid & e::WALK_LENGTH_4 == 0 || ept_vpid & e::MEMORY_TYPE_WB == 0 {
            return Err(VmxUnavailable::NoEptWalk4OrWriteBack);
        }
        if ept_vpid & e::INVEPT == 0
            || ept_vpid & (e::INVEPT_SINGLE_CONTEXT | e::INVEPT_ALL_CONTEXT) == 0
        {
            return Err(VmxUnavailable::NoInvept);
        }
        if ept_vpid & e::INVVPID == 0
            || ept_vpid & (e::INVVPID_SINGLE_CONTEXT | e::INVVPID_ALL_CONTEXT) == 0
        {
            return Err(VmxUnavailable::NoInvvpid);
        }
        if !pin.allows(PinCtls::PREEMPTION_TIMER.bits()) {
            return Err(VmxUnavailable::NoPreemptionTimer);
        }
        let caps = VmxCaps { ept_vpid, ..caps };
        caps.controls()?;
        Ok(caps)
    }

    /// The VMCS revision identifier for VMXON and VMCS regions.
    pub fn revision_id(&self) -> u32 {
        (self.basic & basic::REVISION_MASK) as u32
    }

    /// The VMX-preemption timer counts down once every 2^rate TSC ticks.
    pub fn preemption_timer_rate(&self) -> u32 {
        (self.misc & misc::PREEMPTION_TIMER_RATE_MASK) as u32
    }

    /// Whether VMCS and EPT invalidation by single context is offered (else all-context).
    pub fn invept_single_context(&self) -> bool {
        self.ept_vpid & ept_vpid_cap::INVEPT_SINGLE_CONTEXT != 0
    }

    pub fn invvpid_single_context(&self) -> bool {
        self.ept_vpid & ept_vpid_cap::INVVPID_SINGLE_CONTEXT != 0
    }

    /// Adjusts [`wanted`] against the allowed-0/allowed-1 settings.
    pub fn controls(&self) -> Result<Controls, VmxUnavailable> {
        use wanted::*;
        let adj = |caps: &AllowedBits, req: u32, opt: u32, kind| {
            caps.adjust(req, opt)
                .map_err(|bits| VmxUnavailable::ControlNotAllowed(kind, bits))
        };
        Ok(Controls {
            pin: adj(
                &self.pin,
                PIN_REQUIRED.bits(),
                PIN_OPTIONAL.bits(),
                ControlKind::PinBased,
            )?,
            proc: adj(
                &self.proc,
                PROC_REQUIRED.bits(),
                PROC_OPTIONAL.bits(),
                ControlKind::PrimaryProcBased,
            )?,
            proc2: adj(
                &self.proc2,
                PROC2_REQUIRED.bits(),
                PROC2_OPTIONAL.bits(),
                ControlKind::SecondaryProcBased,
            )?,
            exit: adj(
                &self.exit,
                EXIT_REQUIRED.bits(),
                EXIT_OPTIONAL.bits(),
                ControlKind::Exit,
            )?,
            entry: adj(
                &self.entry,
                ENTRY_REQUIRED.bits(),
                ENTRY_OPTIONAL.bits(),
                ControlKind::Entry,
            )?,
        })
    }

    /// A host CR0 value with the VMX-fixed bits applied (SDM A.7).
    pub fn fix_cr0(&self, cr0: u64) -> u64 {
        (cr0 | self.cr0_fixed0) & self.cr0_fixed1
    }

    /// A host CR4 value with the VMX-fixed bits applied (SDM A.8).
    pub fn fix_cr4(&self, cr4: u64) -> u64 {
        (cr4 | self.cr4_fixed0) & self.cr4_fixed1
    }

    /// The guest CR0 to load for a value the guest wants, under unrestricted guest (PE and
    /// PG may be 0 there, SDM 26.3.1.1), and the bits the guest must not own (the CR0
    /// guest/host mask: every fixed bit).
    pub fn guest_cr0(&self, wanted: u64) -> (u64, u64) {
        let exempt = super::cr0::PE | super::cr0::PG;
        let fixed0 = self.cr0_fixed0 & !exempt;
        (
            (wanted | fixed0) & self.cr0_fixed1,
            fixed0 | !self.cr0_fixed1 & 0xffff_ffff,
        )
    }

    /// The CR4 bits a guest may set: those VMX operation allows to be 1 (IA32_VMX_CR4_FIXED1,
    /// which only has bits this CPU supports, SDM A.8), less those of features guest CPUID
    /// hides: VMX (VMXE), SMX (SMXE: GETSEC raises #UD) and XSAVE (OSXSAVE).
    pub fn guest_cr4_allowed(&self) -> u64 {
        use super::cr4;
        self.cr4_fixed1 & !(cr4::VMXE | cr4::SMXE | cr4::OSXSAVE)
    }

    /// As [`Self::guest_cr0`] for CR4 (VMXE is always forced on and hidden).
    pub fn guest_cr4(&self, wanted: u64) -> (u64, u64) {
        (
            (wanted | self.cr4_fixed0) & self.cr4_fixed1,
            self.cr4_fixed0 | !self.cr4_fixed1 & 0xffff_ffff,
        )
    }
}

#[cfg(test)]
pub(crate) mod recorded {
    //! Capability MSR values recorded from real configurations.
    use super::*;

    /// A table of recorded MSR values; a missing MSR reads as 0.
    pub struct Recorded {
        pub cpuid1_ecx: u32,
        pub msrs: &'static [(Msr, u64)],
    }

    impl CapabilitySource for Recorded {
        fn cpuid1_ecx(&self) -> u32 {
            self.cpuid1_ecx
        }
        fn read_msr(&self, msr: Msr) -> u64 {
            self.msrs
                .iter()
                .find(|(m, _)| *m == msr)
                .map_or(0, |(_, v)| *v)
        }
    }

    /// A Coffee Lake (Skylake family, CPUID 0x906ea) host as VirtualBox's HM log prints it
    /// (myspaghetti/macos-virtualbox#357); a nested KVM L1 on such a host sees a subset.
    pub const SKYLAKE_HOST: Recorded = Recorded {
        cpuid1_ecx: 0x7ffa_fbbf,
        msrs: &[
            (Msr::IA32_FEATURE_CONTROL, 0x20005),
            (Msr::IA32_VMX_BASIC, 0x00da_0400_0000_0004),
            (Msr::IA32_VMX_PINBASED_CTLS, 0x7f_0000_0016),
            (Msr::IA32_VMX_PROCBASED_CTLS, 0xfff9_fffe_0401_e172),
            (Msr::IA32_VMX_EXIT_CTLS, 0x01ff_ffff_0003_6dff),
            (Msr::IA32_VMX_ENTRY_CTLS, 0x0003_ffff_0000_11ff),
            (Msr::IA32_VMX_MISC, 0x7004_c1e7),
            (Msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
            (Msr::IA32_VMX_CR0_FIXED1, 0xffff_ffff),
            (Msr::IA32_VMX_CR4_FIXED0, 0x2000),
            (Msr::IA32_VMX_CR4_FIXED1, 0x3727ff),
            (Msr::IA32_VMX_VMCS_ENUM, 0x2e),
            (Msr::IA32_VMX_PROCBASED_CTLS2, 0x005f_bcff_0000_0000),
            (Msr::IA32_VMX_EPT_VPID_CAP, 0xf01_0673_4141),
            (Msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x7f_0000_0016),
            (Msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
            (Msr::IA32_VMX_TRUE_EXIT_CTLS, 0x01ff_ffff_0003_6dfb),
            (Msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0003_ffff_0000_11fb),
        ],
    };

    /// Bochs 2.7, `cpu: model=corei7_haswell_4770`, printed by this hypervisor's
    /// `hv: vmx caps` lines at boot. CPUID.1:ECX is a stand-in with only VMX known set.
    pub const BOCHS_HASWELL: Recorded = Recorded {
        cpuid1_ecx: CPUID1_ECX_VMX,
        msrs: &[
            (Msr::IA32_FEATURE_CONTROL, 0x5),
            (Msr::IA32_VMX_BASIC, 0x00d8_1000_0000_002b),
            (Msr::IA32_VMX_PINBASED_CTLS, 0x7f_0000_0016),
            (Msr::IA32_VMX_PROCBASED_CTLS, 0xf7f9_fffe_0401_e172),
            (Msr::IA32_VMX_EXIT_CTLS, 0x007f_ffff_0003_6dff),
            (Msr::IA32_VMX_ENTRY_CTLS, 0xffff_0000_11ff),
            (Msr::IA32_VMX_MISC, 0x2004_01e0),
            (Msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
            (Msr::IA32_VMX_CR0_FIXED1, 0xffff_ffff),
            (Msr::IA32_VMX_CR4_FIXED0, 0x2000),
            (Msr::IA32_VMX_CR4_FIXED1, 0x1727ff),
            (Msr::IA32_VMX_PROCBASED_CTLS2, 0x0004_7fff_0000_0000),
            (Msr::IA32_VMX_EPT_VPID_CAP, 0xf01_0633_4141),
            (Msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x7f_0000_0016),
            (Msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xf7f9_fffe_0400_6172),
            (Msr::IA32_VMX_TRUE_EXIT_CTLS, 0x007f_ffff_0003_6dfb),
            (Msr::IA32_VMX_TRUE_ENTRY_CTLS, 0xffff_0000_11fb),
        ],
    };
}

#[cfg(test)]
mod tests {
    use super::recorded::*;
    use super::*;

    fn probe_with(
        base: &Recorded,
        over: &[(Msr, u64)],
        ecx: Option<u32>,
    ) -> Result<VmxCaps, VmxUnavailable> {
        struct Patched<'a>(&'a Recorded, &'a [(Msr, u64)], Option<u32>);
        impl CapabilitySource for Patched<'_> {
            fn cpuid1_ecx(&self) -> u32 {
                self.2.unwrap_or(self.0.cpuid1_ecx)
            }
            fn read_msr(&self, msr: Msr) -> u64 {
                self.1
                    .iter()
                    .find(|(m, _)| *m == msr)
                    .map_or_else(|| self.0.read_msr(msr), |(_, v)| *v)
            }
        }
        VmxCaps::probe(&Patched(base, over, ecx))
    }

    #[test]
    fn skylake_host_controls_use_the_true_msrs() {
        let caps = VmxCaps::probe(&SKYLAKE_HOST).unwrap();
        assert!(caps.true_controls);
        assert_eq!(caps.revision_id(), 4);
        assert_eq!(caps.preemption_timer_rate(), 7);
        let c = caps.controls().unwrap();
        // Pin: ext-int, NMI, preemption timer, plus forced bits 1,2,4; no virtual NMIs.
        assert_eq!(c.pin, 0x5f);
        assert_eq!(c.pin & PinCtls::VIRTUAL_NMIS.bits(), 0);
        // TRUE procbased lets CR3-load/store exiting (bits 15,16) be 0: 0x04006172 forced.
        assert_eq!(
            c.proc,
            0x0400_6172 | 0x80 | 0x0200_0000 | 0x1000_0000 | 0x8000_0000 | 0x400 | 0x2000_0000
        );
        assert_eq!(c.proc & (1 << 15 | 1 << 16), 0);
        // XSAVES is offered but left off: guest CPUID hides XSAVE.
        assert_eq!(c.proc2, 0x2 | 0x20 | 0x80 | 0x8 | 0x1000);
        assert_eq!(c.proc2 & Proc2Ctls::ENABLE_XSAVES.bits(), 0);
        assert_eq!(
            c.exit,
            0x36dfb | 0x200 | 0x8000 | 0x10_0000 | 0x20_0000 | 0x4_0000 | 0x8_0000
        );
        assert_eq!(c.entry, 0x11fb | 0x8000 | 0x4000);
    }

    #[test]
    fn guest_cr4_allowed_drops_hidden_features() {
        let caps = VmxCaps::probe(&SKYLAKE_HOST).unwrap();
        // CR4_FIXED1 0x3727ff less VMXE (bit 13) and OSXSAVE (bit 18); no SMXE there.
        assert_eq!(caps.guest_cr4_allowed(), 0x3307ff);
    }

    #[test]
    fn bochs_haswell_controls() {
        let caps = VmxCaps::probe(&BOCHS_HASWELL).unwrap();
        assert_eq!(
            (caps.revision_id(), caps.preemption_timer_rate()),
            (0x2b, 0)
        );
        let c = caps.controls().unwrap();
        assert_eq!(c.pin, 0x5f);
        // Haswell model: no MTF (bit 27) but MWAIT/MONITOR exiting are offered.
        assert_eq!(
            c.proc,
            0x0400_6172 | 0x80 | 0x0200_0000 | 0x1000_0000 | 0x8000_0000 | 0x400 | 0x2000_0000
        );
        // No XSAVES on haswell (bit 20 not in 0x47fff): RDTSCP and INVPCID only.
        assert_eq!(c.proc2, 0x2 | 0x20 | 0x80 | 0x8 | 0x1000);
        assert_eq!(
            c.exit,
            0x36dfb | 0x200 | 0x8000 | 0x10_0000 | 0x20_0000 | 0x4_0000 | 0x8_0000
        );
        assert_eq!(c.entry, 0x11fb | 0x8000 | 0x4000);
        assert!(caps.invept_single_context() && caps.invvpid_single_context());
    }

    #[test]
    fn without_true_controls_the_plain_msrs_force_cr3_exiting() {
        let caps = probe_with(
            &SKYLAKE_HOST,
            &[(Msr::IA32_VMX_BASIC, 0x005a_0400_0000_0004)],
            None,
        )
        .unwrap();
        assert!(!caps.true_controls);
        let c = caps.controls().unwrap();
        assert_eq!(c.proc & (1 << 15 | 1 << 16), 1 << 15 | 1 << 16);
        // Plain entry MSR forces LOAD_DEBUG_CONTROLS (bit 2).
        assert_eq!(c.entry & 0x4, 0x4);
    }

    #[test]
    fn missing_features_give_their_own_line() {
        let line = |r: Result<VmxCaps, VmxUnavailable>| format!("{}", r.unwrap_err().fatal_line());
        assert_eq!(
            line(probe_with(&SKYLAKE_HOST, &[], Some(0))),
            "hv: fatal: VMX unavailable: this CPU or emulator offers no VT-x; under nested \
             QEMU/KVM load kvm_intel with nested=1 and pass -cpu host"
        );
        assert_eq!(
            line(probe_with(
                &SKYLAKE_HOST,
                &[(Msr::IA32_FEATURE_CONTROL, 0x1)],
                None
            )),
            "hv: fatal: VMX unavailable: VT-x is disabled by the firmware (IA32_FEATURE_CONTROL \
             is locked without VMX outside SMX); enable Intel Virtualization Technology in the \
             firmware setup"
        );
        assert_eq!(
            line(probe_with(
                &SKYLAKE_HOST,
                &[(Msr::IA32_VMX_PROCBASED_CTLS2, 0x00ff_fffd_0000_0000)],
                None
            )),
            "hv: fatal: VMX unavailable: no EPT (extended page tables); use a Nehalem or newer \
             CPU, under nested QEMU/KVM load kvm_intel with nested=1 ept=1 and pass -cpu host"
        );
        assert_eq!(
            line(probe_with(
                &SKYLAKE_HOST,
                &[(Msr::IA32_VMX_PROCBASED_CTLS2, 0x7f_0000_0000)],
                None
            )),
            "hv: fatal: VMX unavailable: no unrestricted guest; use a Westmere or newer CPU, \
             under nested QEMU/KVM load kvm_intel with nested=1 unrestricted_guest=1 and pass \
             -cpu host"
        );
        assert_eq!(
            line(probe_with(
                &SKYLAKE_HOST,
                &[(Msr::IA32_VMX_PROCBASED_CTLS2, 0xdf_0000_0000)],
                None
            )),
            "hv: fatal: VMX unavailable: no VPID; use a Nehalem or newer CPU, under nested \
             QEMU/KVM load kvm_intel with nested=1 vpid=1 and pass -cpu host"
        );
        assert_eq!(
            line(probe_with(
                &SKYLAKE_HOST,
                &[(Msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x3f_0000_0016)],
                None
            )),
            "hv: fatal: VMX unavailable: no VMX-preemption timer; use a Westmere or newer CPU, \
             under nested QEMU/KVM load kvm_intel with nested=1 preemption_timer=1 and pass \
             -cpu host"
        );
        assert_eq!(
            line(probe_with(
                &SKYLAKE_HOST,
                &[(Msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0x7ff9_fffe_0400_6172)],
                None
            )),
            "hv: fatal: VMX unavailable: no secondary processor-based controls (so no EPT, VPID \
             or unrestricted guest); use a Westmere or newer CPU, under nested QEMU/KVM load \
             kvm_intel with nested=1 and pass -cpu host"
        );
        assert_eq!(
            line(probe_with(
                &SKYLAKE_HOST,
                &[(Msr::IA32_VMX_TRUE_EXIT_CTLS, 0x01ff_7fff_0003_6dfb)],
                None
            )),
            "hv: fatal: VMX unavailable: required VM-exit controls 0x8000 are not allowed by \
             this CPU; under nested QEMU/KVM load kvm_intel with nested=1 and pass -cpu host"
        );
    }

    #[test]
    fn unlocked_feature_control_is_enabled_and_locked() {
        let caps = probe_with(&SKYLAKE_HOST, &[(Msr::IA32_FEATURE_CONTROL, 0)], None).unwrap();
        assert_eq!(
            caps.feature_control,
            FeatureControlAction::WriteAndLock(0x5)
        );
    }

    #[test]
    fn guest_cr0_may_clear_pe_and_pg_but_not_ne() {
        let caps = VmxCaps::probe(&SKYLAKE_HOST).unwrap();
        let (cr0, mask) = caps.guest_cr0(0x11);
        assert_eq!(cr0, 0x31);
        assert_eq!(mask, 0x20);
        let (cr4, mask4) = caps.guest_cr4(0);
        assert_eq!(cr4, 0x2000);
        assert_eq!(mask4 & 0x2000, 0x2000);
        assert_eq!(caps.fix_cr0(0x8000_0011), 0x8000_0031);
    }
}
