//! Model-specific register numbers the VMX core and the exit handlers use (SDM Vol. 4,
//! "Model-Specific Registers"). Always named, never bare numbers at the call site.

/// An MSR number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Msr(pub u32);

impl Msr {
    pub const IA32_TIME_STAMP_COUNTER: Msr = Msr(0x10);
    pub const IA32_PLATFORM_ID: Msr = Msr(0x17);
    pub const IA32_APIC_BASE: Msr = Msr(0x1b);
    pub const IA32_FEATURE_CONTROL: Msr = Msr(0x3a);
    pub const IA32_TSC_ADJUST: Msr = Msr(0x3b);
    pub const IA32_SPEC_CTRL: Msr = Msr(0x48);
    pub const IA32_PRED_CMD: Msr = Msr(0x49);
    pub const IA32_BIOS_UPDT_TRIG: Msr = Msr(0x79);
    pub const IA32_BIOS_SIGN_ID: Msr = Msr(0x8b);
    pub const IA32_PMC0: Msr = Msr(0xc1);
    pub const IA32_PMC7: Msr = Msr(0xc8);
    pub const MSR_PLATFORM_INFO: Msr = Msr(0xce);
    pub const IA32_MTRRCAP: Msr = Msr(0xfe);
    pub const IA32_ARCH_CAPABILITIES: Msr = Msr(0x10a);
    pub const IA32_SYSENTER_CS: Msr = Msr(0x174);
    pub const IA32_SYSENTER_ESP: Msr = Msr(0x175);
    pub const IA32_SYSENTER_EIP: Msr = Msr(0x176);
    pub const IA32_PERFEVTSEL0: Msr = Msr(0x186);
    pub const IA32_PERFEVTSEL7: Msr = Msr(0x18d);
    pub const IA32_MISC_ENABLE: Msr = Msr(0x1a0);
    pub const IA32_DEBUGCTL: Msr = Msr(0x1d9);
    pub const IA32_MTRR_PHYSBASE0: Msr = Msr(0x200);
    /// The last MSR of the variable-range MTRR block (room for 16 base/mask pairs).
    pub const IA32_MTRR_VARIABLE_LAST: Msr = Msr(0x21f);
    pub const IA32_MTRR_FIX64K_00000: Msr = Msr(0x250);
    /// The last fixed-range MTRR.
    pub const IA32_MTRR_FIX4K_F8000: Msr = Msr(0x26f);
    pub const IA32_PAT: Msr = Msr(0x277);
    pub const IA32_MTRR_DEF_TYPE: Msr = Msr(0x2ff);
    pub const IA32_FIXED_CTR0: Msr = Msr(0x309);
    pub const IA32_FIXED_CTR2: Msr = Msr(0x30b);
    pub const IA32_PERF_CAPABILITIES: Msr = Msr(0x345);
    pub const IA32_FIXED_CTR_CTRL: Msr = Msr(0x38d);
    pub const IA32_PERF_GLOBAL_STATUS: Msr = Msr(0x38e);
    pub const IA32_PERF_GLOBAL_CTRL: Msr = Msr(0x38f);
    pub const IA32_PERF_GLOBAL_OVF_CTRL: Msr = Msr(0x390);
    pub const IA32_VMX_BASIC: Msr = Msr(0x480);
    pub const IA32_VMX_PINBASED_CTLS: Msr = Msr(0x481);
    pub const IA32_VMX_PROCBASED_CTLS: Msr = Msr(0x482);
    pub const IA32_VMX_EXIT_CTLS: Msr = Msr(0x483);
    pub const IA32_VMX_ENTRY_CTLS: Msr = Msr(0x484);
    pub const IA32_VMX_MISC: Msr = Msr(0x485);
    pub const IA32_VMX_CR0_FIXED0: Msr = Msr(0x486);
    pub const IA32_VMX_CR0_FIXED1: Msr = Msr(0x487);
    pub const IA32_VMX_CR4_FIXED0: Msr = Msr(0x488);
    pub const IA32_VMX_CR4_FIXED1: Msr = Msr(0x489);
    pub const IA32_VMX_VMCS_ENUM: Msr = Msr(0x48a);
    pub const IA32_VMX_PROCBASED_CTLS2: Msr = Msr(0x48b);
    pub const IA32_VMX_EPT_VPID_CAP: Msr = Msr(0x48c);
    pub const IA32_VMX_TRUE_PINBASED_CTLS: Msr = Msr(0x48d);
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: Msr = Msr(0x48e);
    pub const IA32_VMX_TRUE_EXIT_CTLS: Msr = Msr(0x48f);
    pub const IA32_VMX_TRUE_ENTRY_CTLS: Msr = Msr(0x490);
    pub const IA32_VMX_VMFUNC: Msr = Msr(0x491);
    pub const IA32_X2APIC_FIRST: Msr = Msr(0x800);
    pub const IA32_X2APIC_LAST: Msr = Msr(0x8ff);
    pub const IA32_TSC_DEADLINE: Msr = Msr(0x6e0);
    /// CPUID faulting and ring-3 MONITOR/MWAIT enables (model-specific, SDM Vol. 4 2.17).
    pub const MSR_MISC_FEATURES_ENABLES: Msr = Msr(0x140);
    pub const IA32_EFER: Msr = Msr(0xc000_0080);
    pub const IA32_STAR: Msr = Msr(0xc000_0081);
    pub const IA32_LSTAR: Msr = Msr(0xc000_0082);
    pub const IA32_CSTAR: Msr = Msr(0xc000_0083);
    pub const IA32_FMASK: Msr = Msr(0xc000_0084);
    pub const IA32_FS_BASE: Msr = Msr(0xc000_0100);
    pub const IA32_GS_BASE: Msr = Msr(0xc000_0101);
    pub const IA32_KERNEL_GS_BASE: Msr = Msr(0xc000_0102);
    pub const IA32_TSC_AUX: Msr = Msr(0xc000_0103);
}

/// IA32_FEATURE_CONTROL bits (SDM Vol. 3C 24.7).
pub mod feature_control {
    pub const LOCKED: u64 = 1 << 0;
    pub const VMX_INSIDE_SMX: u64 = 1 << 1;
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// IA32_EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}
