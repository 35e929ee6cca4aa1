//! VM-execution, VM-exit and VM-entry control bits (SDM Vol. 3C 25.6-25.8, rev. 084 numbering
//! "24.x" in older revisions), and the adjustment of wanted controls against what the CPU
//! allows (SDM Vol. 3D A.3-A.5).

use bitflags::bitflags;

bitflags! {
    /// Pin-based VM-execution controls (SDM 25.6.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PinCtls: u32 {
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        const NMI_EXITING = 1 << 3;
        const VIRTUAL_NMIS = 1 << 5;
        const PREEMPTION_TIMER = 1 << 6;
        const POSTED_INTERRUPTS = 1 << 7;
    }

    /// Primary processor-based VM-execution controls (SDM 25.6.2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ProcCtls: u32 {
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        const USE_TSC_OFFSETTING = 1 << 3;
        const HLT_EXITING = 1 << 7;
        const INVLPG_EXITING = 1 << 9;
        const MWAIT_EXITING = 1 << 10;
        const RDPMC_EXITING = 1 << 11;
        const RDTSC_EXITING = 1 << 12;
        const CR3_LOAD_EXITING = 1 << 15;
        const CR3_STORE_EXITING = 1 << 16;
        const CR8_LOAD_EXITING = 1 << 19;
        const CR8_STORE_EXITING = 1 << 20;
        const USE_TPR_SHADOW = 1 << 21;
        const NMI_WINDOW_EXITING = 1 << 22;
        const MOV_DR_EXITING = 1 << 23;
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        const USE_IO_BITMAPS = 1 << 25;
        const MONITOR_TRAP_FLAG = 1 << 27;
        const USE_MSR_BITMAPS = 1 << 28;
        const MONITOR_EXITING = 1 << 29;
        const PAUSE_EXITING = 1 << 30;
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }

    /// Secondary processor-based VM-execution controls (SDM 25.6.2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Proc2Ctls: u32 {
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        const ENABLE_EPT = 1 << 1;
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        const ENABLE_RDTSCP = 1 << 3;
        const VIRTUALIZE_X2APIC = 1 << 4;
        const ENABLE_VPID = 1 << 5;
        const WBINVD_EXITING = 1 << 6;
        const UNRESTRICTED_GUEST = 1 << 7;
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        const PAUSE_LOOP_EXITING = 1 << 10;
        const RDRAND_EXITING = 1 << 11;
        const ENABLE_INVPCID = 1 << 12;
        const ENABLE_VMFUNC = 1 << 13;
        const VMCS_SHADOWING = 1 << 14;
        const RDSEED_EXITING = 1 << 16;
        const ENABLE_PML = 1 << 17;
        const EPT_VIOLATION_VE = 1 << 18;
        const ENABLE_XSAVES = 1 << 20;
        const USE_TSC_SCALING = 1 << 25;
    }

    /// VM-exit controls (SDM 25.7.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ExitCtls: u32 {
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        const SAVE_PAT = 1 << 18;
        const LOAD_PAT = 1 << 19;
        const SAVE_EFER = 1 << 20;
        const LOAD_EFER = 1 << 21;
        const SAVE_PREEMPTION_TIMER = 1 << 22;
    }

    /// VM-entry controls (SDM 25.8.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EntryCtls: u32 {
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        const IA32E_MODE_GUEST = 1 << 9;
        const ENTRY_TO_SMM = 1 << 10;
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        const LOAD_PAT = 1 << 14;
        const LOAD_EFER = 1 << 15;
    }
}

/// One VMX control capability MSR: the low half holds the allowed-0 settings (a 1 there
/// means the control must be 1), the high half the allowed-1 settings (a 0 there means the
/// control must be 0). SDM Vol. 3D A.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedBits {
    pub must_be_one: u32,
    pub may_be_one: u32,
}

impl AllowedBits {
    pub const fn from_msr(raw: u64) -> Self {
        AllowedBits {
            must_be_one: raw as u32,
            may_be_one: (raw >> 32) as u32,
        }
    }

    /// Whether `bits` may all be set.
    pub const fn allows(&self, bits: u32) -> bool {
        bits & !self.may_be_one == 0
    }

    /// The control value to program: every `required` bit (an error names those the CPU
    /// cannot set), every `optional` bit the CPU allows, and every bit the CPU forces to 1.
    pub const fn adjust(&self, required: u32, optional: u32) -> Result<u32, u32> {
        let missing = required & !self.may_be_one;
        if missing != 0 {
            return Err(missing);
        }
        Ok((required | (optional & self.may_be_one)) | self.must_be_one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjust_sets_forced_bits_and_drops_unsupported_optional_ones() {
        // Must-be-one 0x16, may-be-one 0x7f: a typical pin-based MSR.
        let caps = AllowedBits::from_msr(0x0000_007f_0000_0016);
        assert_eq!(caps.adjust(0x1, 0x80), Ok(0x17));
        assert_eq!(caps.adjust(0x81, 0), Err(0x80));
        assert!(caps.allows(0x40));
        assert!(!caps.allows(0x100));
    }
}
