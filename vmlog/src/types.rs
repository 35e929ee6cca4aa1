//! Record types of the sample log.

use serde::{Deserialize, Serialize};

/// Major version of the wire format. A reader rejects frames of a newer major.
pub const FORMAT_MAJOR: u8 = 1;
/// Minor version of the wire format. Newer minors only add record kinds, which an
/// older reader skips (counted as unknown records). Minor 1 added [`GuestData`].
pub const FORMAT_MINOR: u8 = 1;

/// A VMX basic exit reason (Intel SDM Vol. 3C, Appendix C), bits 15:0 of the
/// VM-exit reason field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExitReason(pub u16);

impl ExitReason {
    /// Exception or NMI.
    pub const EXCEPTION_NMI: Self = Self(0);
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: Self = Self(1);
    /// Triple fault.
    pub const TRIPLE_FAULT: Self = Self(2);
    /// Interrupt window.
    pub const INTERRUPT_WINDOW: Self = Self(7);
    /// CPUID.
    pub const CPUID: Self = Self(10);
    /// HLT: the guest halted, waiting for an interrupt.
    pub const HLT: Self = Self(12);
    /// VMCALL (paravirtual call).
    pub const VMCALL: Self = Self(18);
    /// Control-register access.
    pub const CR_ACCESS: Self = Self(28);
    /// I/O instruction.
    pub const IO_INSTRUCTION: Self = Self(30);
    /// RDMSR.
    pub const RDMSR: Self = Self(31);
    /// WRMSR.
    pub const WRMSR: Self = Self(32);
    /// PAUSE.
    pub const PAUSE: Self = Self(40);
    /// APIC access.
    pub const APIC_ACCESS: Self = Self(44);
    /// EPT violation.
    pub const EPT_VIOLATION: Self = Self(48);
    /// EPT misconfiguration.
    pub const EPT_MISCONFIG: Self = Self(49);
    /// VMX-preemption timer expired.
    pub const PREEMPTION_TIMER: Self = Self(52);

    /// Short lower-case name, or `None` for a number without one here.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::EXCEPTION_NMI => "exception_nmi",
            Self::EXTERNAL_INTERRUPT => "external_interrupt",
            Self::TRIPLE_FAULT => "triple_fault",
            Self::INTERRUPT_WINDOW => "interrupt_window",
            Self::CPUID => "cpuid",
            Self::HLT => "hlt",
            Self::VMCALL => "vmcall",
            Self::CR_ACCESS => "cr_access",
            Self::IO_INSTRUCTION => "io_instruction",
            Self::RDMSR => "rdmsr",
            Self::WRMSR => "wrmsr",
            Self::PAUSE => "pause",
            Self::APIC_ACCESS => "apic_access",
            Self::EPT_VIOLATION => "ept_violation",
            Self::EPT_MISCONFIG => "ept_misconfig",
            Self::PREEMPTION_TIMER => "preemption_timer",
            _ => return None,
        })
    }
}

/// What fires the sampling interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplingSource {
    /// The local APIC timer of each pCPU.
    LapicTimer,
    /// A performance-counter overflow delivered as an NMI; `event` is the
    /// IA32_PERFEVTSELx event/umask value.
    PmuNmi {
        /// Event select and unit mask.
        event: u32,
    },
}

/// First record of a log (global stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header<'a> {
    /// Format major version the writer used.
    pub format_major: u8,
    /// Format minor version the writer used.
    pub format_minor: u8,
    /// Build identifier of the hypervisor (e.g. a git hash), to match `--hv-elf`.
    pub hv_build_id: &'a str,
    /// TSC frequency in Hz.
    pub tsc_hz: u64,
    /// What triggers samples.
    pub source: SamplingSource,
    /// Sampling period in TSC ticks.
    pub period_tsc: u64,
    /// Number of physical CPUs sampled.
    pub pcpus: u16,
    /// Number of [`VmInfo`] records that follow the header (the VM table).
    pub vm_count: u16,
    /// TSC when sampling started.
    pub start_tsc: u64,
}

/// One entry of the VM table (a record of its own after the [`Header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo<'a> {
    /// VM id as used in samples.
    pub id: u16,
    /// VM name (from the hypervisor command line).
    pub name: &'a str,
    /// Number of vCPUs.
    pub vcpus: u16,
}

/// A (VM, vCPU) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VcpuRef {
    /// VM id.
    pub vm: u16,
    /// vCPU index inside the VM.
    pub vcpu: u16,
}

/// State of the vCPU a pCPU is serving when a sample hits the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VcpuState {
    /// Between exit handling and the next VM entry (entry path, scheduling).
    Running,
    /// The vCPU executed HLT and the pCPU waits for its next interrupt.
    Halted,
    /// The hypervisor is handling a VM exit of the vCPU.
    ExitHandling {
        /// The exit being handled.
        reason: ExitReason,
    },
}

/// Context of a sample taken while the hypervisor itself ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostContext {
    /// Hypervisor RIP.
    pub rip: u64,
    /// The vCPU this pCPU was serving, if any.
    pub serving: Option<VcpuRef>,
    /// That vCPU's state.
    pub vcpu_state: VcpuState,
}

/// Context of a sample taken while a guest ran (read from the VMCS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestContext {
    /// VM id.
    pub vm: u16,
    /// vCPU index.
    pub vcpu: u16,
    /// VPID of the vCPU.
    pub vpid: u16,
    /// Guest RIP.
    pub rip: u64,
    /// Guest CR3 as the VMCS holds it.
    pub cr3: u64,
    /// Current privilege level (0 kernel, 3 user).
    pub cpl: u8,
    /// Reason of the vCPU's last VM exit before this sample, if it had one.
    pub last_exit_reason: Option<ExitReason>,
}

/// Where a sample hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// In the hypervisor.
    Host(HostContext),
    /// In a guest.
    Guest(GuestContext),
}

impl Context {
    /// The instruction pointer of the sample.
    pub fn rip(&self) -> u64 {
        match self {
            Context::Host(h) => h.rip,
            Context::Guest(g) => g.rip,
        }
    }
}

/// One sample: what the sampling interrupt pushes into its pCPU's ring.
/// Fixed size and `Copy`; building one neither allocates nor locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sample {
    /// Host TSC when the sample was taken.
    pub tsc: u64,
    /// Where it hit.
    pub context: Context,
}

const _: () = assert!(core::mem::size_of::<Sample>() <= 48);

/// Samples lost on a pCPU (ring overflow), reported on that pCPU's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Number of samples lost since the previous `Dropped` record.
    pub count: u64,
}

/// Per-vCPU exit statistics for one exit reason (cumulative since start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStat {
    /// The vCPU.
    pub vcpu: VcpuRef,
    /// The exit reason.
    pub reason: ExitReason,
    /// Number of exits.
    pub count: u64,
    /// TSC ticks spent handling them.
    pub tsc_total: u64,
}

/// Why a vCPU was put on or taken off a pCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedReason {
    /// First entry of the vCPU.
    Start,
    /// Its time slice ended.
    Preempted,
    /// It executed HLT.
    Halted,
    /// An interrupt woke it.
    Woken,
    /// It stopped (VMCALL STOP or a fatal exit).
    Stopped,
}

/// Direction of a [`SchedEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedDir {
    /// The vCPU was put on the pCPU.
    In,
    /// The vCPU was taken off the pCPU.
    Out,
}

/// A vCPU was put on or taken off the pCPU of the stream it appears in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedEvent {
    /// Host TSC of the event.
    pub tsc: u64,
    /// The vCPU.
    pub vcpu: VcpuRef,
    /// In or out.
    pub dir: SchedDir,
    /// Why.
    pub reason: SchedReason,
}

/// Offset between a VM's TSC and the host TSC: `guest = host + offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestTimeOffset {
    /// VM id.
    pub vm: u16,
    /// Signed offset in TSC ticks.
    pub offset: i64,
}

/// Last record of a log (global stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// TSC when sampling stopped.
    pub end_tsc: u64,
    /// Samples written, all pCPUs.
    pub samples_total: u64,
    /// Samples dropped, all pCPUs.
    pub dropped_total: u64,
    /// Frames written, all streams, not counting this one.
    pub frames_total: u64,
}

/// [`GuestData::kind`] of a guest bundle (the text format of docs/contracts.md, "Guest
/// bundle"), as `guest-kit` delivers it through the hypercall channel.
pub const GUEST_DATA_BUNDLE: u16 = 1;

/// Most data bytes one [`GuestData`] record carries. A longer delivery is split into
/// consecutive records whose [`GuestData::seq`] counts up.
pub const MAX_GUEST_DATA_RECORD: usize = 1024;

/// Bytes a guest handed to the hypervisor (VMCALL `GUEST_DATA`, docs/contracts.md,
/// "Guests"), written on [`crate::GLOBAL_STREAM`] in the order the guest made its calls.
///
/// A delivery longer than [`MAX_GUEST_DATA_RECORD`] bytes is split into several records.
/// `seq` counts the records of one `(vm, kind)` pair from 0 over the whole run, so a
/// reader concatenating the `data` of one pair in `seq` order gets every accepted byte
/// in order, and a gap in `seq` shows a lost record. Each delivery starts a new record (no
/// record holds bytes of two), but nothing else marks where one ended.
///
/// Wire body (not postcard): `vm:varint kind:varint seq:varint len:varint data[len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestData<'a> {
    /// VM id (as in [`VmInfo::id`]).
    pub vm: u16,
    /// What the bytes are, e.g. [`GUEST_DATA_BUNDLE`].
    pub kind: u16,
    /// Record number within `(vm, kind)`, from 0.
    pub seq: u32,
    /// The bytes, at most [`MAX_GUEST_DATA_RECORD`].
    pub data: &'a [u8],
}

/// Any record except sample batches (those go through
/// [`crate::encode_samples`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Log header.
    Header(Header<'a>),
    /// VM table entry.
    Vm(VmInfo<'a>),
    /// Lost samples.
    Dropped(Dropped),
    /// Exit statistics.
    ExitStat(ExitStat),
    /// Scheduling event.
    Sched(SchedEvent),
    /// Guest clock offset.
    GuestTimeOffset(GuestTimeOffset),
    /// End of log.
    End(End),
    /// Bytes delivered by a guest (format minor 1).
    GuestData(GuestData<'a>),
}
