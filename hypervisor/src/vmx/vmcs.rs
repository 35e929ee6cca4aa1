//! VMCS field encodings (SDM Vol. 3D appendix B), typed by group and width. Read-only
//! fields (`ReadOnly*`) implement only [`VmcsField`], so [`Vmcs::write`] does not accept
//! them.

use core::fmt;

/// A VMCS field.
pub trait VmcsField: Copy {
    fn encoding(self) -> u32;
}

/// A VMCS field software may write.
pub trait WritableField: VmcsField {}

macro_rules! fields {
    ($(#[$m:meta])* $name:ident, writable = $w:tt { $($var:ident = $enc:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum $name { $($var = $enc),* }
        impl VmcsField for $name {
            fn encoding(self) -> u32 { self as u32 }
        }
        fields!(@w $name $w);
    };
    (@w $name:ident true) => { impl WritableField for $name {} };
    (@w $name:ident false) => {};
}

fields!(
    /// 16-bit control fields (B.1.1).
    Control16, writable = true { Vpid = 0x0000 });
fields!(
/// 16-bit guest-state fields (B.1.2).
Guest16, writable = true {
    EsSelector = 0x0800, CsSelector = 0x0802, SsSelector = 0x0804, DsSelector = 0x0806,
    FsSelector = 0x0808, GsSelector = 0x080a, LdtrSelector = 0x080c, TrSelector = 0x080e,
});
fields!(
/// 16-bit host-state fields (B.1.3).
Host16, writable = true {
    EsSelector = 0x0c00, CsSelector = 0x0c02, SsSelector = 0x0c04, DsSelector = 0x0c06,
    FsSelector = 0x0c08, GsSelector = 0x0c0a, TrSelector = 0x0c0c,
});
fields!(
/// 64-bit control fields (B.2.1).
Control64, writable = true {
    IoBitmapA = 0x2000, IoBitmapB = 0x2002, MsrBitmap = 0x2004,
    ExitMsrStoreAddr = 0x2006, ExitMsrLoadAddr = 0x2008, EntryMsrLoadAddr = 0x200a,
    TscOffset = 0x2010, Eptp = 0x201a,
});
fields!(
    /// 64-bit read-only data fields (B.2.2).
    ReadOnly64, writable = false { GuestPhysicalAddress = 0x2400 });
fields!(
/// 64-bit guest-state fields (B.2.3).
Guest64, writable = true {
    VmcsLinkPointer = 0x2800, Ia32Debugctl = 0x2802, Ia32Pat = 0x2804, Ia32Efer = 0x2806,
    Pdpte0 = 0x280a, Pdpte1 = 0x280c, Pdpte2 = 0x280e, Pdpte3 = 0x2810,
});
fields!(
    /// 64-bit host-state fields (B.2.4).
    Host64, writable = true { Ia32Pat = 0x2c00, Ia32Efer = 0x2c02 });
fields!(
/// 32-bit control fields (B.3.1).
Control32, writable = true {
    PinBasedControls = 0x4000, ProcBasedControls = 0x4002, ExceptionBitmap = 0x4004,
    PageFaultErrorCodeMask = 0x4006, PageFaultErrorCodeMatch = 0x4008,
    Cr3TargetCount = 0x400a, ExitControls = 0x400c, ExitMsrStoreCount = 0x400e,
    ExitMsrLoadCount = 0x4010, EntryControls = 0x4012, EntryMsrLoadCount = 0x4014,
    EntryInterruptionInfo = 0x4016, EntryExceptionErrorCode = 0x4018,
    EntryInstructionLength = 0x401a, TprThreshold = 0x401c, ProcBasedControls2 = 0x401e,
});
fields!(
/// 32-bit read-only data fields (B.3.2).
ReadOnly32, writable = false {
    VmInstructionError = 0x4400, ExitReason = 0x4402, ExitInterruptionInfo = 0x4404,
    ExitInterruptionErrorCode = 0x4406, IdtVectoringInfo = 0x4408,
    IdtVectoringErrorCode = 0x440a, ExitInstructionLength = 0x440c,
    ExitInstructionInfo = 0x440e,
});
fields!(
/// 32-bit guest-state fields (B.3.3).
Guest32, writable = true {
    EsLimit = 0x4800, CsLimit = 0x4802, SsLimit = 0x4804, DsLimit = 0x4806,
    FsLimit = 0x4808, GsLimit = 0x480a, LdtrLimit = 0x480c, TrLimit = 0x480e,
    GdtrLimit = 0x4810, IdtrLimit = 0x4812,
    EsAccessRights = 0x4814, CsAccessRights = 0x4816, SsAccessRights = 0x4818,
    DsAccessRights = 0x481a, FsAccessRights = 0x481c, GsAccessRights = 0x481e,
    LdtrAccessRights = 0x4820, TrAccessRights = 0x4822,
    InterruptibilityState = 0x4824, ActivityState = 0x4826, Smbase = 0x4828,
    Ia32SysenterCs = 0x482a, PreemptionTimerValue = 0x482e,
});
fields!(
    /// 32-bit host-state field (B.3.4).
    Host32, writable = true { Ia32SysenterCs = 0x4c00 });
fields!(
/// Natural-width control fields (B.4.1).
ControlNW, writable = true {
    Cr0GuestHostMask = 0x6000, Cr4GuestHostMask = 0x6002,
    Cr0ReadShadow = 0x6004, Cr4ReadShadow = 0x6006,
});
fields!(
/// Natural-width read-only data fields (B.4.2).
ReadOnlyNW, writable = false {
    ExitQualification = 0x6400, IoRcx = 0x6402, IoRsi = 0x6404, IoRdi = 0x6406,
    IoRip = 0x6408, GuestLinearAddress = 0x640a,
});
fields!(
/// Natural-width guest-state fields (B.4.3).
GuestNW, writable = true {
    Cr0 = 0x6800, Cr3 = 0x6802, Cr4 = 0x6804,
    EsBase = 0x6806, CsBase = 0x6808, SsBase = 0x680a, DsBase = 0x680c,
    FsBase = 0x680e, GsBase = 0x6810, LdtrBase = 0x6812, TrBase = 0x6814,
    GdtrBase = 0x6816, IdtrBase = 0x6818, Dr7 = 0x681a, Rsp = 0x681c, Rip = 0x681e,
    Rflags = 0x6820, PendingDebugExceptions = 0x6822,
    Ia32SysenterEsp = 0x6824, Ia32SysenterEip = 0x6826,
});
fields!(
/// Natural-width host-state fields (B.4.4).
HostNW, writable = true {
    Cr0 = 0x6c00, Cr3 = 0x6c02, Cr4 = 0x6c04, FsBase = 0x6c06, GsBase = 0x6c08,
    TrBase = 0x6c0a, GdtrBase = 0x6c0c, IdtrBase = 0x6c0e,
    Ia32SysenterEsp = 0x6c10, Ia32SysenterEip = 0x6c12, Rsp = 0x6c14, Rip = 0x6c16,
});

/// Why a VMX instruction failed (SDM 31.2): VMfailInvalid has no current VMCS to hold an
/// error number; VMfailValid stores one in the VM-instruction error field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    Invalid,
    Valid(u32),
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => f.write_str("VMfailInvalid"),
            VmFail::Valid(n) => write!(f, "VMfailValid error {n} ({})", instruction_error_name(*n)),
        }
    }
}

/// VM-instruction error numbers (SDM 31.4).
pub fn instruction_error_name(n: u32) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        26 => "VM entry with events blocked by MOV SS",
        28 => "Invalid operand to INVEPT/INVVPID",
        _ => "unknown",
    }
}

/// Access to the current VMCS. Implemented by the CPU ([`super::instr::CurrentVmcs`]) and
/// by a map in tests.
pub trait Vmcs {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail>;
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail>;

    /// Reads a field; an unsupported field reads as 0 (the decoders treat 0 as "absent").
    fn read<F: VmcsField>(&self, field: F) -> u64 {
        self.read_raw(field.encoding()).unwrap_or(0)
    }

    /// Writes a field, naming it in the error.
    fn write<F: WritableField + fmt::Debug>(
        &mut self,
        field: F,
        value: u64,
    ) -> Result<(), VmcsWriteError> {
        self.write_raw(field.encoding(), value)
            .map_err(|fail| VmcsWriteError {
                encoding: field.encoding(),
                value,
                fail,
            })
    }
}

/// A failed VMWRITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcsWriteError {
    pub encoding: u32,
    pub value: u64,
    pub fail: VmFail,
}

impl fmt::Display for VmcsWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VMWRITE of {:#x} to field {:#06x} failed: {}",
            self.value, self.encoding, self.fail
        )
    }
}

/// Segment access rights as the VMCS holds them (SDM 25.4.1, table 25-2).
pub mod access_rights {
    pub const UNUSABLE: u64 = 1 << 16;
    pub const DPL_SHIFT: u32 = 5;
    pub const DPL_MASK: u64 = 0x3;
    /// The L bit: a 64-bit code segment (CS only).
    pub const LONG_MODE: u64 = 1 << 13;
    /// The D/B bit: 32-bit default operand size (must be clear with L, SDM 26.3.1.2).
    pub const DEFAULT_BIG: u64 = 1 << 14;
    /// Present, DPL 0, code, execute/read, accessed, 32-bit, 4 KiB granularity.
    pub const CODE32: u64 = 0xc09b;
    /// Present, DPL 0, data, read/write, accessed, 32-bit, 4 KiB granularity.
    pub const DATA32: u64 = 0xc093;
    /// Present, 32-bit busy TSS.
    pub const TSS32_BUSY: u64 = 0x8b;
    /// Present LDT (system descriptor type 2).
    pub const LDT: u64 = 0x82;

    /// The descriptor privilege level in access rights (the guest CPL when read from SS).
    pub const fn dpl(ar: u64) -> u8 {
        ((ar >> DPL_SHIFT) & DPL_MASK) as u8
    }
}

#[cfg(test)]
pub mod mock {
    //! A VMCS in a map, for host tests.
    use super::*;
    use std::collections::HashMap;

    #[derive(Default, Debug)]
    pub struct MockVmcs {
        pub fields: HashMap<u32, u64>,
    }

    impl MockVmcs {
        pub fn with(pairs: &[(u32, u64)]) -> Self {
            MockVmcs {
                fields: pairs.iter().copied().collect(),
            }
        }
        pub fn get<F: VmcsField>(&self, f: F) -> Option<u64> {
            self.fields.get(&f.encoding()).copied()
        }
    }

    impl Vmcs for MockVmcs {
        fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
            self.fields.get(&encoding).copied().ok_or(VmFail::Valid(12))
        }
        fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
            // Read-only fields have type bits 11:10 = 1 (SDM 25.11.2).
            if (encoding >> 10) & 3 == 1 {
                return Err(VmFail::Valid(13));
            }
            self.fields.insert(encoding, value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_groups_have_the_read_only_type_bits() {
        // Encoding bits 11:10 are the field type; 1 = VM-exit information (read-only).
        for enc in [
            ReadOnly32::ExitReason.encoding(),
            ReadOnly64::GuestPhysicalAddress.encoding(),
            ReadOnlyNW::ExitQualification.encoding(),
        ] {
            assert_eq!((enc >> 10) & 3, 1, "{enc:#x}");
        }
        for enc in [
            GuestNW::Rip.encoding(),
            Control32::PinBasedControls.encoding(),
            HostNW::Rip.encoding(),
        ] {
            assert_ne!((enc >> 10) & 3, 1, "{enc:#x}");
        }
    }

    #[test]
    fn access_rights_dpl() {
        assert_eq!(access_rights::dpl(0xc0f3), 3);
        assert_eq!(access_rights::dpl(access_rights::DATA32), 0);
    }
}
