//! VM-exit reasons (SDM Vol. 3D appendix C) and decoders for the exit qualification and
//! interruption-information fields (SDM 28.2).

use core::fmt;

macro_rules! exit_reasons {
    ($($var:ident = $n:expr, $name:expr;)*) => {
        /// Basic exit reason (bits 15:0 of the exit-reason field).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum ExitReason { $($var = $n),* }

        impl TryFrom<u32> for ExitReason {
            type Error = UnknownExitReason;
            fn try_from(n: u32) -> Result<Self, UnknownExitReason> {
                match n { $($n => Ok(ExitReason::$var),)* _ => Err(UnknownExitReason(n)) }
            }
        }

        impl ExitReason {
            /// The SDM's name for this exit reason.
            pub const fn name(self) -> &'static str {
                match self { $(ExitReason::$var => $name),* }
            }
        }
    };
}

exit_reasons! {
    ExceptionOrNmi = 0, "exception or NMI";
    ExternalInterrupt = 1, "external interrupt";
    TripleFault = 2, "triple fault";
    InitSignal = 3, "INIT signal";
    StartupIpi = 4, "SIPI";
    IoSmi = 5, "I/O SMI";
    OtherSmi = 6, "other SMI";
    InterruptWindow = 7, "interrupt window";
    NmiWindow = 8, "NMI window";
    TaskSwitch = 9, "task switch";
    Cpuid = 10, "CPUID";
    Getsec = 11, "GETSEC";
    Hlt = 12, "HLT";
    Invd = 13, "INVD";
    Invlpg = 14, "INVLPG";
    Rdpmc = 15, "RDPMC";
    Rdtsc = 16, "RDTSC";
    Rsm = 17, "RSM";
    Vmcall = 18, "VMCALL";
    Vmclear = 19, "VMCLEAR";
    Vmlaunch = 20, "VMLAUNCH";
    Vmptrld = 21, "VMPTRLD";
    Vmptrst = 22, "VMPTRST";
    Vmread = 23, "VMREAD";
    Vmresume = 24, "VMRESUME";
    Vmwrite = 25, "VMWRITE";
    Vmxoff = 26, "VMXOFF";
    Vmxon = 27, "VMXON";
    CrAccess = 28, "control-register access";
    DrAccess = 29, "MOV DR";
    IoInstruction = 30, "I/O instruction";
    Rdmsr = 31, "RDMSR";
    Wrmsr = 32, "WRMSR";
    InvalidGuestState = 33, "VM-entry failure due to invalid guest state";
    MsrLoading = 34, "VM-entry failure due to MSR loading";
    Mwait = 36, "MWAIT";
    MonitorTrapFlag = 37, "monitor trap flag";
    Monitor = 39, "MONITOR";
    Pause = 40, "PAUSE";
    MachineCheck = 41, "VM-entry failure due to machine-check event";
    TprBelowThreshold = 43, "TPR below threshold";
    ApicAccess = 44, "APIC access";
    VirtualizedEoi = 45, "virtualized EOI";
    GdtrIdtrAccess = 46, "access to GDTR or IDTR";
    LdtrTrAccess = 47, "access to LDTR or TR";
    EptViolation = 48, "EPT violation";
    EptMisconfiguration = 49, "EPT misconfiguration";
    Invept = 50, "INVEPT";
    Rdtscp = 51, "RDTSCP";
    PreemptionTimer = 52, "VMX-preemption timer expired";
    Invvpid = 53, "INVVPID";
    Wbinvd = 54, "WBINVD";
    Xsetbv = 55, "XSETBV";
    ApicWrite = 56, "APIC write";
    Rdrand = 57, "RDRAND";
    Invpcid = 58, "INVPCID";
    Vmfunc = 59, "VMFUNC";
    Encls = 60, "ENCLS";
    Rdseed = 61, "RDSEED";
    PmlFull = 62, "page-modification log full";
    Xsaves = 63, "XSAVES";
    Xrstors = 64, "XRSTORS";
}

/// The highest basic exit reason number this table knows, for per-reason counters.
pub const MAX_EXIT_REASON: u32 = 64;

/// An exit-reason number not in [`ExitReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownExitReason(pub u32);

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", *self as u32, self.name())
    }
}

/// The full exit-reason field (SDM 25.9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawExitReason(pub u32);

impl RawExitReason {
    pub const ENTRY_FAILURE: u32 = 1 << 31;

    pub const fn basic(self) -> u32 {
        self.0 & 0xffff
    }
    pub const fn is_entry_failure(self) -> bool {
        self.0 & Self::ENTRY_FAILURE != 0
    }
    pub fn reason(self) -> Result<ExitReason, UnknownExitReason> {
        ExitReason::try_from(self.basic())
    }
}

/// Exit qualification of an I/O instruction exit (SDM table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    /// 1, 2 or 4 bytes.
    pub size: u8,
    pub is_in: bool,
    pub is_string: bool,
    pub is_rep: bool,
    pub port: u16,
}

impl IoQualification {
    pub const fn decode(q: u64) -> Self {
        IoQualification {
            size: ((q & 0x7) + 1) as u8,
            is_in: q & (1 << 3) != 0,
            is_string: q & (1 << 4) != 0,
            is_rep: q & (1 << 5) != 0,
            port: (q >> 16) as u16,
        }
    }
}

/// How a control-register access exit accessed the register (SDM table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessType {
    MovToCr,
    MovFromCr,
    Clts,
    Lmsw,
}

/// Exit qualification of a control-register access exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccessQualification {
    pub cr: u8,
    pub access: CrAccessType,
    /// General-purpose register number (0 = RAX ... 15 = R15).
    pub gpr: u8,
    pub lmsw_source: u16,
}

impl CrAccessQualification {
    pub const fn decode(q: u64) -> Self {
        CrAccessQualification {
            cr: (q & 0xf) as u8,
            access: match (q >> 4) & 3 {
                0 => CrAccessType::MovToCr,
                1 => CrAccessType::MovFromCr,
                2 => CrAccessType::Clts,
                _ => CrAccessType::Lmsw,
            },
            gpr: ((q >> 8) & 0xf) as u8,
            lmsw_source: (q >> 16) as u16,
        }
    }
}

/// Exit qualification of an EPT violation (SDM table 28-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolationQualification {
    pub read: bool,
    pub write: bool,
    pub fetch: bool,
    /// The access rights the failing translation allowed (R, W, X).
    pub allowed: u8,
    pub linear_address_valid: bool,
}

impl EptViolationQualification {
    pub const fn decode(q: u64) -> Self {
        EptViolationQualification {
            read: q & 1 != 0,
            write: q & 2 != 0,
            fetch: q & 4 != 0,
            allowed: ((q >> 3) & 7) as u8,
            linear_address_valid: q & (1 << 7) != 0,
        }
    }

    pub const fn access_name(&self) -> &'static str {
        if self.fetch {
            "fetch"
        } else if self.write {
            "write"
        } else {
            "read"
        }
    }
}

/// Type of an event in interruption-information fields (SDM table 25-17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptionType {
    External = 0,
    Nmi = 2,
    HardwareException = 3,
    SoftwareInterrupt = 4,
    PrivilegedSoftwareException = 5,
    SoftwareException = 6,
    Other = 7,
}

/// A VM-exit or VM-entry interruption-information field (SDM 25.8.3, 25.9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo(pub u32);

impl InterruptionInfo {
    pub const VALID: u32 = 1 << 31;
    pub const ERROR_CODE_VALID: u32 = 1 << 11;

    /// A valid event of `kind` with `vector`.
    pub const fn new(kind: InterruptionType, vector: u8, error_code: bool) -> Self {
        InterruptionInfo(
            Self::VALID
                | (kind as u32) << 8
                | vector as u32
                | if error_code {
                    Self::ERROR_CODE_VALID
                } else {
                    0
                },
        )
    }
    pub const fn valid(self) -> bool {
        self.0 & Self::VALID != 0
    }
    pub const fn vector(self) -> u8 {
        self.0 as u8
    }
    /// The bits a VM-entry interruption-information field may carry: vector, type,
    /// deliver-error-code and valid. Bit 12 of the IDT-vectoring field is undefined and bits
    /// 30:12 of the entry field are reserved (SDM 25.8.3, 28.2.4).
    pub const ENTRY_BITS: u32 = Self::VALID | Self::ERROR_CODE_VALID | 0x7ff;

    /// Whether the error-code bit is set.
    pub const fn has_error_code(self) -> bool {
        self.0 & Self::ERROR_CODE_VALID != 0
    }
    /// Whether VM entry needs the instruction length for this event (software interrupt,
    /// privileged software exception, software exception: SDM 26.6.1.1).
    pub const fn is_software(self) -> bool {
        matches!(
            self.kind(),
            InterruptionType::SoftwareInterrupt
                | InterruptionType::PrivilegedSoftwareException
                | InterruptionType::SoftwareException
        )
    }
    pub const fn kind(self) -> InterruptionType {
        match (self.0 >> 8) & 7 {
            0 => InterruptionType::External,
            2 => InterruptionType::Nmi,
            3 => InterruptionType::HardwareException,
            4 => InterruptionType::SoftwareInterrupt,
            5 => InterruptionType::PrivilegedSoftwareException,
            6 => InterruptionType::SoftwareException,
            _ => InterruptionType::Other,
        }
    }
}

/// Exception vectors the handlers inject.
pub mod vector {
    pub const UD: u8 = 6;
    pub const GP: u8 = 13;
    pub const NMI: u8 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_round_trip_and_unknown_is_an_error() {
        assert_eq!(ExitReason::try_from(10), Ok(ExitReason::Cpuid));
        assert_eq!(ExitReason::try_from(52), Ok(ExitReason::PreemptionTimer));
        assert_eq!(ExitReason::try_from(35), Err(UnknownExitReason(35)));
        assert_eq!(ExitReason::try_from(9999), Err(UnknownExitReason(9999)));
        assert_eq!(
            format!("{}", ExitReason::EptViolation),
            "48 (EPT violation)"
        );
        let raw = RawExitReason(0x8000_0021);
        assert!(raw.is_entry_failure());
        assert_eq!(raw.reason(), Ok(ExitReason::InvalidGuestState));
    }

    #[test]
    fn io_qualification() {
        // OUT DX, AL to 0x3f8: size 0 (1 byte), out, operand in DX.
        let q = IoQualification::decode(0x03f8_0040);
        assert_eq!(
            q,
            IoQualification {
                size: 1,
                is_in: false,
                is_string: false,
                is_rep: false,
                port: 0x3f8
            }
        );
        let q = IoQualification::decode(0x03fd_0008);
        assert_eq!((q.size, q.is_in, q.port), (1, true, 0x3fd));
        let q = IoQualification::decode(0x0080_0033);
        assert_eq!(
            (q.size, q.is_in, q.is_string, q.is_rep, q.port),
            (4, false, true, true, 0x80)
        );
    }

    #[test]
    fn cr_and_ept_qualifications() {
        // MOV CR4, RCX
        let q = CrAccessQualification::decode(0x104);
        assert_eq!((q.cr, q.access, q.gpr), (4, CrAccessType::MovToCr, 1));
        let e = EptViolationQualification::decode(0x182);
        assert!(e.write && !e.read && !e.fetch && e.linear_address_valid);
        assert_eq!(e.access_name(), "write");
        assert_eq!(e.allowed, 0);
    }

    #[test]
    fn interruption_info() {
        // The self-NMI Bochs reports: 0x80000202.
        let i = InterruptionInfo(0x8000_0202);
        assert!(i.valid());
        assert_eq!((i.kind(), i.vector()), (InterruptionType::Nmi, 2));
        assert_eq!(
            InterruptionInfo::new(InterruptionType::HardwareException, 13, true).0,
            0x8000_0b0d
        );
        assert_eq!(
            InterruptionInfo::new(InterruptionType::External, 0x30, false).0,
            0x8000_0030
        );
    }
}
