//! VMs and vCPUs: their state, why they stop, their exit counters, and the initial VMCS of
//! a vCPU entered PVH-style (docs/contracts.md, "Guests").

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

use crate::vmx::caps::{Controls, VmxCaps};
use crate::vmx::entry::GuestRegs;
use crate::vmx::exit::{ExitReason, InterruptionInfo, MAX_EXIT_REASON};
use crate::vmx::msr::efer;
use crate::vmx::vmcs::{
    Control16, Control32, Control64, ControlNW, Guest16, Guest32, Guest64, GuestNW, Host16, Host32,
    Host64, HostNW, VmFail, Vmcs, VmcsWriteError, access_rights as ar,
};
use crate::vmx::{cr0, cr4, dr7, rflags};

use super::channel::{Channel, GuestChannel};
use super::devices::PortBus;
use super::lapic::{Lapic, TimerClock};
use super::mmio::MmioError;
use crate::vmx::hostmem::HostFrames;

/// Why a VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// VMCALL STOP with this status.
    Requested {
        status: u64,
    },
    EptViolation {
        gpa: u64,
        access: &'static str,
        rip: u64,
    },
    TripleFault {
        rip: u64,
    },
    /// VM entry failed (exit reason with bit 31 set).
    EntryFailed {
        reason: u32,
        qualification: u64,
        rip: u64,
    },
    /// VMLAUNCH (`resume` false) or VMRESUME refused the entry (VMfail), with the
    /// VM-instruction error number when there is one.
    EntryRefused {
        resume: bool,
        fail: VmFail,
        rip: u64,
    },
    Unhandled {
        reason: u32,
        qualification: u64,
        rip: u64,
    },
    /// INS/OUTS (REP or not): not emulated.
    StringIo {
        port: u16,
        input: bool,
        rep: bool,
        rip: u64,
    },
    /// A guest mode this hypervisor does not support.
    Unsupported {
        what: &'static str,
        rip: u64,
    },
    /// The guest powered itself off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register); restarting a VM is not supported,
    /// so it stops.
    Reset,
    /// A guest access to emulated MMIO that could not be emulated.
    Mmio {
        gpa: u64,
        rip: u64,
        error: MmioError,
    },
    /// The host's run_ms elapsed.
    RunTimeOver,
    /// Every vCPU halted with no timer armed: nothing could ever wake the VM.
    HaltedForever,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |n: u32| {
            ExitReason::try_from(n)
                .map(|r| r.name())
                .unwrap_or("unknown")
        };
        match *self {
            StopReason::Requested { status } => write!(f, "status={status}"),
            StopReason::EptViolation { gpa, access, rip } => {
                write!(
                    f,
                    "EPT violation: {access} of guest-physical {gpa:#x} at rip {rip:#x}"
                )
            }
            StopReason::TripleFault { rip } => write!(f, "triple fault at rip {rip:#x}"),
            StopReason::EntryFailed {
                reason,
                qualification,
                rip,
            } => write!(
                f,
                "VM entry failed: exit reason {reason} ({}) qualification {qualification:#x} rip {rip:#x}",
                name(reason)
            ),
            StopReason::EntryRefused { resume, fail, rip } => write!(
                f,
                "VM entry refused: {} {fail} rip {rip:#x}",
                if resume { "VMRESUME" } else { "VMLAUNCH" }
            ),
            StopReason::StringIo {
                port,
                input,
                rep,
                rip,
            } => write!(
                f,
                "string I/O not emulated: {}{} port {port:#x} rip {rip:#x}",
                if rep { "REP " } else { "" },
                if input { "INS" } else { "OUTS" }
            ),
            StopReason::Unsupported { what, rip } => {
                write!(f, "not supported: {what} rip {rip:#x}")
            }
            StopReason::Unhandled {
                reason,
                qualification,
                rip,
            } => write!(
                f,
                "unhandled exit reason {reason} ({}) qualification {qualification:#x} rip {rip:#x}",
                name(reason)
            ),
            StopReason::PowerOff => f.write_str("powered off (ACPI S5)"),
            StopReason::Reset => {
                f.write_str("reset requested (ACPI reset register); VMs are not restarted")
            }
            StopReason::Mmio { gpa, rip, error } => {
                write!(
                    f,
                    "MMIO at guest-physical {gpa:#x} from rip {rip:#x}: {error}"
                )
            }
            StopReason::RunTimeOver => f.write_str("run_ms elapsed"),
            StopReason::HaltedForever => {
                f.write_str("halted with no timer set (nothing can wake it)")
            }
        }
    }
}

impl StopReason {
    /// The guest's own exit status, or 1 for a stop the guest did not ask for.
    pub fn status(&self) -> u64 {
        match self {
            StopReason::Requested { status } => *status,
            StopReason::RunTimeOver | StopReason::PowerOff => 0,
            _ => 1,
        }
    }
}

/// Exits and TSC ticks spent handling them, per basic exit reason.
#[derive(Clone, Debug)]
pub struct ExitCounters {
    pub count: [u64; MAX_EXIT_REASON as usize + 1],
    pub tsc: [u64; MAX_EXIT_REASON as usize + 1],
    /// Exits with a reason number past the table.
    pub other: u64,
}

impl Default for ExitCounters {
    fn default() -> Self {
        ExitCounters {
            count: [0; MAX_EXIT_REASON as usize + 1],
            tsc: [0; MAX_EXIT_REASON as usize + 1],
            other: 0,
        }
    }
}

impl ExitCounters {
    pub fn record(&mut self, basic_reason: u32, tsc: u64) {
        match self.count.get_mut(basic_reason as usize) {
            Some(c) => {
                *c += 1;
                self.tsc[basic_reason as usize] += tsc;
            }
            None => self.other += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.count.iter().sum::<u64>() + self.other
    }

    /// (reason, count, tsc) for every reason seen.
    pub fn seen(&self) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        self.count
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(r, c)| (r as u32, *c, self.tsc[r]))
    }
}

/// A one-shot guest timer (VMCALL SET_TIMER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTimer {
    pub deadline_tsc: u64,
    pub vector: u8,
}

/// An event to inject at the next VM entry (SDM 26.6): its interruption information, the
/// error code (used when the info says so) and, for software interrupts and exceptions,
/// the length of the instruction that raised it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingEvent {
    pub info: InterruptionInfo,
    pub error_code: u32,
    pub instruction_len: u32,
}

impl PendingEvent {
    /// A hardware exception, or an external interrupt, without instruction length.
    pub const fn new(info: InterruptionInfo, error_code: u32) -> Self {
        PendingEvent {
            info,
            error_code,
            instruction_len: 0,
        }
    }
}

/// One vCPU.
pub struct Vcpu {
    pub index: u16,
    pub vpid: u16,
    pub regs: GuestRegs,
    /// Host-physical address of its VMCS region.
    pub vmcs: u64,
    pub launched: bool,
    pub halted: bool,
    /// Whether the halted vCPU can take an external interrupt: RFLAGS.IF was set at its
    /// HLT (the STI/MOV-SS shadow ends with the HLT, and the halted guest changes nothing).
    pub halted_interruptible: bool,
    pub timer: Option<GuestTimer>,
    /// An external-interrupt vector waiting for the guest to accept it.
    pub pending_vector: Option<u8>,
    /// An exception, or an event whose delivery an exit interrupted (IDT-vectoring
    /// information), to inject at the next entry; it goes before [`Self::pending_vector`].
    pub pending_event: Option<PendingEvent>,
    /// The last exit that was not a sampling interrupt.
    pub last_exit: Option<u16>,
    pub exits: ExitCounters,
    /// Its local APIC (x2APIC mode from reset; see [`Lapic`]).
    pub lapic: Lapic,
    /// Guest-owned CR0/CR4 bits as the guest last wrote them (the read shadows).
    pub cr0_shadow: u64,
    pub cr4_shadow: u64,
    /// Whether interrupt-window exiting is on in its VMCS.
    pub window_exiting: bool,
    /// CR4 bits the guest may set ([`crate::vmx::caps::VmxCaps::guest_cr4_allowed`]); a
    /// trapped MOV to CR4 setting any other bit raises #GP.
    pub cr4_allowed: u64,
}

impl Vcpu {
    pub fn new(index: u16, vpid: u16, vmcs: u64) -> Self {
        Vcpu {
            index,
            vpid,
            regs: GuestRegs::default(),
            vmcs,
            launched: false,
            halted: false,
            halted_interruptible: false,
            timer: None,
            pending_vector: None,
            pending_event: None,
            last_exit: None,
            exits: ExitCounters::default(),
            lapic: Lapic::new(u32::from(index), LAPIC_CLOCK),
            cr0_shadow: PVH_CR0,
            cr4_shadow: 0,
            window_exiting: false,
            cr4_allowed: 0,
        }
    }

    /// Fires the timers whose deadline is at or before `now`: the paravirtual timer queues
    /// its vector, the local APIC's timer sets its vector in IRR. A halted vCPU wakes if it
    /// can take the interrupt (as the HLT handler decides; else it stays pending). Returns
    /// whether a timer fired.
    pub fn fire_timer(&mut self, now: u64) -> bool {
        let mut fired = false;
        if let Some(t) = self.timer
            && now >= t.deadline_tsc
        {
            self.timer = None;
            self.pending_vector = Some(t.vector);
            fired = true;
        }
        if self.lapic.next_timer_tsc().is_some_and(|t| now >= t) {
            self.lapic.tick(now);
            fired = true;
        }
        if fired && self.halted_interruptible && self.interrupt_waiting() {
            self.halted = false;
        }
        fired
    }

    /// Whether an interrupt waits for the vCPU: a queued vector or event, or one its local
    /// APIC would deliver now.
    pub fn interrupt_waiting(&self) -> bool {
        self.pending_vector.is_some() || self.pending_event.is_some() || self.lapic.wants_wakeup()
    }

    /// The earliest armed timer (paravirtual or local APIC), as a host TSC value.
    pub fn next_timer_tsc(&self) -> Option<u64> {
        let pv = self.timer.map(|t| t.deadline_tsc);
        match (pv, self.lapic.next_timer_tsc()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Halted for good: no timer armed, and no pending interrupt it could take.
    pub fn can_never_wake(&self) -> bool {
        self.halted
            && self.next_timer_tsc().is_none()
            && (!self.interrupt_waiting() || !self.halted_interruptible)
    }
}

/// A VM's RAM (guest-physical 0 up), as the hypervisor reads it for instruction fetches.
pub enum GuestRam {
    /// Not recorded (nothing reads it).
    None,
    /// Frames of the host.
    Host(HostFrames),
    /// A buffer of host memory standing in for it in tests.
    #[cfg(test)]
    Test(Vec<u8>),
}

impl GuestRam {
    pub fn bytes(&mut self) -> &mut [u8] {
        match self {
            GuestRam::None => &mut [],
            GuestRam::Host(f) => f.bytes(),
            #[cfg(test)]
            GuestRam::Test(v) => v,
        }
    }
}

/// VM-wide facts guest CPUID reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmCpu {
    /// RDTSCP / INVPCID work in the guest (their VM-execution controls are on).
    pub rdtscp: bool,
    pub invpcid: bool,
}

/// One VM.
pub struct Vm {
    pub id: u16,
    pub name: &'static str,
    /// Its port devices (console UART, ACPI power management, CMOS clock).
    pub bus: PortBus,
    pub ram: GuestRam,
    pub cpu: VmCpu,
    pub vcpus: Vec<Vcpu>,
    pub stopped: Option<StopReason>,
    /// The guest-data hypercall channel (off until the VM's configuration sets it).
    pub channel: GuestChannel,
}

impl Vm {
    pub fn new(id: u16, name: &'static str) -> Self {
        Vm {
            id,
            name,
            bus: PortBus::new(0, 0, 1),
            ram: GuestRam::None,
            cpu: VmCpu {
                rdtscp: false,
                invpcid: false,
            },
            vcpus: Vec::new(),
            stopped: None,
            channel: GuestChannel::new(Channel::Off),
        }
    }
}

/// The local APIC timer's input clock: the TSC, which guest CPUID reports as the crystal
/// clock (leaf 0x15), so Linux's LAPIC timer period matches what the model counts.
const LAPIC_CLOCK: TimerClock = TimerClock::TSC;

/// CR0 a PVH guest starts with: protected mode, paging off (ET is hard-wired to 1).
pub const PVH_CR0: u64 = cr0::PE | cr0::ET;
/// The PVH entry's segment selectors (the values are the guest's business; a GDT with
/// code at 0x10 and data at 0x18 is what Linux's PVH entry builds).
pub const PVH_CODE_SELECTOR: u64 = 0x10;
pub const PVH_DATA_SELECTOR: u64 = 0x18;
/// A flat 4 GiB segment limit (byte granularity view of G=1, limit 0xfffff).
pub const FLAT_LIMIT: u64 = 0xffff_ffff;
/// Limit of a 32-bit TSS: 104 bytes (SDM 8.2.1).
pub const TSS32_LIMIT: u64 = 104 - 1;
/// IA32_PAT after power-on and reset (SDM 13.12.4).
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;

/// The host state a VMCS needs, read from the running hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub tr: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub tr_base: u64,
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub efer: u64,
    pub pat: u64,
    /// The VM-exit landing point.
    pub rip: u64,
}

/// Addresses of the per-VM structures the VMCS points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcsAddrs {
    pub io_bitmap_a: u64,
    pub io_bitmap_b: u64,
    pub msr_bitmap: u64,
    pub eptp: u64,
}

/// Where and in which CPU mode the guest starts. General-purpose registers (EBX for PVH,
/// RSI for Linux's 64-bit boot protocol) are not in the VMCS: the caller sets them in
/// [`Vcpu::regs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEntry {
    /// PVH: 32-bit protected mode, paging off, flat 4 GiB CS/DS.
    Protected32 { rip: u64 },
    /// Linux 64-bit boot protocol: IA-32e mode with the identity page tables at `cr3` and a
    /// GDT in guest memory whose selector 0x10 is 64-bit code and 0x18 data.
    Long64 {
        rip: u64,
        cr3: u64,
        gdt_base: u64,
        gdt_limit: u16,
    },
}

impl GuestEntry {
    pub fn rip(&self) -> u64 {
        match *self {
            GuestEntry::Protected32 { rip } | GuestEntry::Long64 { rip, .. } => rip,
        }
    }

    /// CR0 as the guest believes it starts (the read shadow).
    pub fn cr0(&self) -> u64 {
        match self {
            GuestEntry::Protected32 { .. } => PVH_CR0,
            GuestEntry::Long64 { .. } => LONG64_CR0,
        }
    }

    /// CR4 as the guest believes it starts.
    pub fn cr4(&self) -> u64 {
        match self {
            GuestEntry::Protected32 { .. } => 0,
            GuestEntry::Long64 { .. } => cr4::PAE,
        }
    }

    /// IA32_EFER at entry: LME and LMA in IA-32e mode (SDM 26.3.1.1 wants LMA equal to the
    /// "IA-32e mode guest" entry control).
    pub fn efer(&self) -> u64 {
        match self {
            GuestEntry::Protected32 { .. } => 0,
            GuestEntry::Long64 { .. } => efer::LME | efer::LMA,
        }
    }
}

/// CR0 of a vCPU entered in 64-bit mode: protected mode and paging on.
pub const LONG64_CR0: u64 = cr0::PE | cr0::ET | cr0::PG;
/// Access rights of a 64-bit code segment: [`ar::CODE32`] with L set and D clear
/// (SDM 26.3.1.2: L and D both set is invalid).
pub const CODE64_ACCESS_RIGHTS: u64 = (ar::CODE32 | ar::LONG_MODE) & !ar::DEFAULT_BIG;

/// Why a host-state field would make VM entry fail; checked before the first entry so the
/// error is ours, not a VMfail number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    Write(VmcsWriteError),
    /// SDM 27.2.3: host TR must not be 0 (Bochs: "VMFAIL: VMCS host state invalid TR").
    HostTrZero,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Write(e) => e.fmt(f),
            SetupError::HostTrZero => {
                f.write_str("host TR selector is 0; the GDT needs a TSS before VM entry")
            }
        }
    }
}

impl From<VmcsWriteError> for SetupError {
    fn from(e: VmcsWriteError) -> Self {
        SetupError::Write(e)
    }
}

/// Fills a cleared, current VMCS for a vCPU that enters PVH-style: 32-bit protected mode,
/// paging off, flat 4 GiB CS/DS, RIP = entry. EBX (a GPR, not in the VMCS) is set by the
/// caller in [`Vcpu::regs`]. The preemption timer value is set per entry.
pub fn setup_vmcs(
    vmcs: &mut impl Vmcs,
    caps: &VmxCaps,
    ctl: &Controls,
    host: &HostState,
    addrs: &VmcsAddrs,
    vpid: u16,
    entry: GuestEntry,
) -> Result<(), SetupError> {
    if host.tr & !7 == 0 {
        return Err(SetupError::HostTrZero);
    }
    // Controls.
    vmcs.write(Control32::PinBasedControls, ctl.pin as u64)?;
    vmcs.write(Control32::ProcBasedControls, ctl.proc as u64)?;
    vmcs.write(Control32::ProcBasedControls2, ctl.proc2 as u64)?;
    vmcs.write(Control32::ExitControls, ctl.exit as u64)?;
    let long_mode = matches!(entry, GuestEntry::Long64 { .. });
    let entry_ctls = if long_mode {
        ctl.entry | crate::vmx::controls::EntryCtls::IA32E_MODE_GUEST.bits()
    } else {
        ctl.entry
    };
    vmcs.write(Control32::EntryControls, entry_ctls as u64)?;
    vmcs.write(Control32::ExceptionBitmap, 0)?;
    vmcs.write(Control32::PageFaultErrorCodeMask, 0)?;
    vmcs.write(Control32::PageFaultErrorCodeMatch, 0)?;
    vmcs.write(Control32::Cr3TargetCount, 0)?;
    vmcs.write(Control32::ExitMsrStoreCount, 0)?;
    vmcs.write(Control32::ExitMsrLoadCount, 0)?;
    vmcs.write(Control32::EntryMsrLoadCount, 0)?;
    vmcs.write(Control32::EntryInterruptionInfo, 0)?;
    vmcs.write(Control16::Vpid, vpid as u64)?;
    vmcs.write(Control64::IoBitmapA, addrs.io_bitmap_a)?;
    vmcs.write(Control64::IoBitmapB, addrs.io_bitmap_b)?;
    vmcs.write(Control64::MsrBitmap, addrs.msr_bitmap)?;
    vmcs.write(Control64::Eptp, addrs.eptp)?;
    vmcs.write(Control64::TscOffset, 0)?;
    let (guest_cr0, cr0_mask) = caps.guest_cr0(entry.cr0());
    let (guest_cr4, cr4_mask) = caps.guest_cr4(entry.cr4());
    vmcs.write(ControlNW::Cr0GuestHostMask, cr0_mask)?;
    vmcs.write(ControlNW::Cr0ReadShadow, entry.cr0())?;
    vmcs.write(ControlNW::Cr4GuestHostMask, cr4_mask)?;
    vmcs.write(ControlNW::Cr4ReadShadow, entry.cr4())?;

    // Host state (SDM 27.2.2-27.2.4).
    vmcs.write(HostNW::Cr0, host.cr0)?;
    vmcs.write(HostNW::Cr3, host.cr3)?;
    vmcs.write(HostNW::Cr4, host.cr4)?;
    vmcs.write(Host16::CsSelector, (host.cs & !7) as u64)?;
    vmcs.write(Host16::SsSelector, (host.ss & !7) as u64)?;
    vmcs.write(Host16::DsSelector, (host.ds & !7) as u64)?;
    vmcs.write(Host16::EsSelector, (host.es & !7) as u64)?;
    vmcs.write(Host16::FsSelector, (host.fs & !7) as u64)?;
    vmcs.write(Host16::GsSelector, (host.gs & !7) as u64)?;
    vmcs.write(Host16::TrSelector, (host.tr & !7) as u64)?;
    vmcs.write(HostNW::FsBase, host.fs_base)?;
    vmcs.write(HostNW::GsBase, host.gs_base)?;
    vmcs.write(HostNW::TrBase, host.tr_base)?;
    vmcs.write(HostNW::GdtrBase, host.gdtr_base)?;
    vmcs.write(HostNW::IdtrBase, host.idtr_base)?;
    vmcs.write(Host32::Ia32SysenterCs, 0)?;
    vmcs.write(HostNW::Ia32SysenterEsp, 0)?;
    vmcs.write(HostNW::Ia32SysenterEip, 0)?;
    vmcs.write(Host64::Ia32Efer, host.efer)?;
    if ctl.exit & crate::vmx::controls::ExitCtls::LOAD_PAT.bits() != 0 {
        vmcs.write(Host64::Ia32Pat, host.pat)?;
    }
    vmcs.write(HostNW::Rip, host.rip)?;
    // HOST_RSP is written by the entry code on every entry.

    // Guest state (SDM 26.3.1): flat segments, 32-bit or (CS only) 64-bit.
    let (cr3, gdt_base, gdt_limit, code_rights) = match entry {
        GuestEntry::Protected32 { .. } => (0, 0, 0, ar::CODE32),
        GuestEntry::Long64 {
            cr3,
            gdt_base,
            gdt_limit,
            ..
        } => (cr3, gdt_base, u64::from(gdt_limit), CODE64_ACCESS_RIGHTS),
    };
    vmcs.write(GuestNW::Cr0, guest_cr0)?;
    vmcs.write(GuestNW::Cr3, cr3)?;
    vmcs.write(GuestNW::Cr4, guest_cr4)?;
    vmcs.write(GuestNW::Dr7, dr7::INIT)?;
    vmcs.write(GuestNW::Rsp, 0)?;
    vmcs.write(GuestNW::Rip, entry.rip())?;
    vmcs.write(GuestNW::Rflags, rflags::FIXED)?;
    let segs = [
        (
            Guest16::CsSelector,
            Guest32::CsLimit,
            Guest32::CsAccessRights,
            GuestNW::CsBase,
            PVH_CODE_SELECTOR,
            code_rights,
        ),
        (
            Guest16::SsSelector,
            Guest32::SsLimit,
            Guest32::SsAccessRights,
            GuestNW::SsBase,
            PVH_DATA_SELECTOR,
            ar::DATA32,
        ),
        (
            Guest16::DsSelector,
            Guest32::DsLimit,
            Guest32::DsAccessRights,
            GuestNW::DsBase,
            PVH_DATA_SELECTOR,
            ar::DATA32,
        ),
        (
            Guest16::EsSelector,
            Guest32::EsLimit,
            Guest32::EsAccessRights,
            GuestNW::EsBase,
            PVH_DATA_SELECTOR,
            ar::DATA32,
        ),
        (
            Guest16::FsSelector,
            Guest32::FsLimit,
            Guest32::FsAccessRights,
            GuestNW::FsBase,
            PVH_DATA_SELECTOR,
            ar::DATA32,
        ),
        (
            Guest16::GsSelector,
            Guest32::GsLimit,
            Guest32::GsAccessRights,
            GuestNW::GsBase,
            PVH_DATA_SELECTOR,
            ar::DATA32,
        ),
    ];
    for (sel, limit, rights, base, selector, access) in segs {
        vmcs.write(sel, selector)?;
        vmcs.write(limit, FLAT_LIMIT)?;
        vmcs.write(rights, access)?;
        vmcs.write(base, 0)?;
    }
    vmcs.write(Guest16::TrSelector, 0)?;
    vmcs.write(Guest32::TrLimit, TSS32_LIMIT)?;
    vmcs.write(Guest32::TrAccessRights, ar::TSS32_BUSY)?;
    vmcs.write(GuestNW::TrBase, 0)?;
    vmcs.write(Guest16::LdtrSelector, 0)?;
    vmcs.write(Guest32::LdtrLimit, 0)?;
    vmcs.write(Guest32::LdtrAccessRights, ar::UNUSABLE)?;
    vmcs.write(GuestNW::LdtrBase, 0)?;
    vmcs.write(Guest32::GdtrLimit, gdt_limit)?;
    vmcs.write(GuestNW::GdtrBase, gdt_base)?;
    vmcs.write(Guest32::IdtrLimit, 0)?;
    vmcs.write(GuestNW::IdtrBase, 0)?;
    vmcs.write(Guest32::InterruptibilityState, 0)?;
    vmcs.write(Guest32::ActivityState, 0)?;
    vmcs.write(GuestNW::PendingDebugExceptions, 0)?;
    vmcs.write(Guest32::Ia32SysenterCs, 0)?;
    vmcs.write(GuestNW::Ia32SysenterEsp, 0)?;
    vmcs.write(GuestNW::Ia32SysenterEip, 0)?;
    vmcs.write(Guest64::VmcsLinkPointer, u64::MAX)?;
    vmcs.write(Guest64::Ia32Debugctl, 0)?;
    vmcs.write(Guest64::Ia32Efer, entry.efer())?;
    if ctl.entry & crate::vmx::controls::EntryCtls::LOAD_PAT.bits() != 0 {
        vmcs.write(Guest64::Ia32Pat, PAT_POWER_ON)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::caps::recorded::SKYLAKE_HOST;
    use crate::vmx::vmcs::mock::MockVmcs;

    fn host() -> HostState {
        HostState {
            cr0: 0x8001_0033,
            cr3: 0x1000,
            cr4: 0x2020,
            cs: 8,
            ss: 16,
            ds: 16,
            es: 16,
            tr: 24,
            rip: 0x20_1000,
            efer: 0xd00,
            ..Default::default()
        }
    }

    #[test]
    fn guest_timer_fires_once_at_its_deadline_and_wakes_the_vcpu() {
        let mut v = Vcpu::new(0, 1, 0x9000);
        assert!(!v.fire_timer(100), "no timer set");
        v.halted = true;
        v.halted_interruptible = true;
        v.timer = Some(GuestTimer {
            deadline_tsc: 1000,
            vector: 0x30,
        });
        assert!(!v.fire_timer(999));
        assert!(v.halted);
        assert_eq!(v.pending_vector, None);
        assert!(v.fire_timer(1000));
        assert_eq!(
            (v.halted, v.pending_vector, v.timer),
            (false, Some(0x30), None)
        );
        assert!(!v.fire_timer(2000), "one-shot");
        assert!(!v.can_never_wake());
    }

    #[test]
    fn guest_timer_leaves_a_vcpu_halted_with_interrupts_off_asleep() {
        let mut v = Vcpu::new(0, 1, 0x9000);
        v.halted = true;
        v.halted_interruptible = false;
        v.timer = Some(GuestTimer {
            deadline_tsc: 10,
            vector: 0x30,
        });
        assert!(!v.can_never_wake(), "the timer is still armed");
        assert!(v.fire_timer(10));
        assert_eq!((v.halted, v.pending_vector), (true, Some(0x30)));
        assert!(
            v.can_never_wake(),
            "HLT with IF clear: only an NMI could wake it"
        );
    }

    /// A VMCS set up on the recorded Skylake host for `entry`, and the controls used.
    fn set_up(entry: GuestEntry) -> (MockVmcs, Controls) {
        let caps = VmxCaps::probe(&SKYLAKE_HOST).unwrap();
        let ctl = caps.controls().unwrap();
        let mut vmcs = MockVmcs::default();
        let addrs = VmcsAddrs {
            io_bitmap_a: 0x5000,
            io_bitmap_b: 0x6000,
            msr_bitmap: 0x7000,
            eptp: 0x801e,
        };
        setup_vmcs(&mut vmcs, &caps, &ctl, &host(), &addrs, 1, entry).unwrap();
        (vmcs, ctl)
    }

    #[test]
    fn pvh_guest_state() {
        let (vmcs, ctl) = set_up(GuestEntry::Protected32 { rip: 0x10_0000 });
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0000));
        assert_eq!(
            vmcs.get(GuestNW::Cr0),
            Some(0x31),
            "PE|ET plus the fixed NE, paging off"
        );
        assert_eq!(vmcs.get(ControlNW::Cr0ReadShadow), Some(0x11));
        assert_eq!(
            vmcs.get(GuestNW::Cr4),
            Some(0x2000),
            "VMXE forced, hidden by the mask"
        );
        assert_eq!(vmcs.get(Guest32::CsAccessRights), Some(0xc09b));
        assert_eq!(vmcs.get(Guest32::SsAccessRights), Some(0xc093));
        assert_eq!(vmcs.get(Guest32::CsLimit), Some(0xffff_ffff));
        assert_eq!(vmcs.get(Guest32::LdtrAccessRights), Some(0x10000));
        assert_eq!(vmcs.get(Guest32::TrAccessRights), Some(0x8b));
        assert_eq!(vmcs.get(Guest64::VmcsLinkPointer), Some(u64::MAX));
        assert_eq!(vmcs.get(Guest64::Ia32Efer), Some(0));
        assert_eq!(vmcs.get(Control64::Eptp), Some(0x801e));
        assert_eq!(vmcs.get(Control16::Vpid), Some(1));
        assert_eq!(vmcs.get(Host16::TrSelector), Some(24));
        assert_eq!(vmcs.get(HostNW::Rip), Some(0x20_1000));
        assert_eq!(vmcs.get(Control32::PinBasedControls), Some(ctl.pin as u64));
    }

    #[test]
    fn long_mode_guest_state_for_the_linux_64_bit_entry() {
        let entry = GuestEntry::Long64 {
            rip: 0x100_0200,
            cr3: 0x9000,
            gdt_base: 0x8000,
            gdt_limit: 0x1f,
        };
        let (vmcs, _) = set_up(entry);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x100_0200));
        assert_eq!(vmcs.get(GuestNW::Cr3), Some(0x9000));
        assert_eq!(
            vmcs.get(GuestNW::Cr0),
            Some(0x8000_0031),
            "PE|ET|PG plus the fixed NE"
        );
        assert_eq!(vmcs.get(ControlNW::Cr0ReadShadow), Some(0x8000_0011));
        assert_eq!(vmcs.get(GuestNW::Cr4), Some(0x2020), "PAE, VMXE forced");
        assert_eq!(vmcs.get(ControlNW::Cr4ReadShadow), Some(0x20));
        assert_eq!(vmcs.get(Guest64::Ia32Efer), Some(0x500), "LME|LMA");
        let entry_ctls = vmcs.get(Control32::EntryControls).unwrap();
        assert_ne!(
            entry_ctls & crate::vmx::controls::EntryCtls::IA32E_MODE_GUEST.bits() as u64,
            0
        );
        assert_eq!(
            vmcs.get(Guest32::CsAccessRights),
            Some(0xa09b),
            "L set, D clear"
        );
        assert_eq!(vmcs.get(Guest32::SsAccessRights), Some(0xc093));
        assert_eq!(vmcs.get(GuestNW::GdtrBase), Some(0x8000));
        assert_eq!(vmcs.get(Guest32::GdtrLimit), Some(0x1f));
        assert_eq!(vmcs.get(Guest16::CsSelector), Some(0x10));
        assert_eq!(vmcs.get(Guest16::DsSelector), Some(0x18));
    }

    #[test]
    fn host_tr_zero_is_refused_before_entry() {
        let caps = VmxCaps::probe(&SKYLAKE_HOST).unwrap();
        let ctl = caps.controls().unwrap();
        let mut vmcs = MockVmcs::default();
        let addrs = VmcsAddrs {
            io_bitmap_a: 0,
            io_bitmap_b: 0,
            msr_bitmap: 0,
            eptp: 0,
        };
        let h = HostState { tr: 0, ..host() };
        let e = setup_vmcs(
            &mut vmcs,
            &caps,
            &ctl,
            &h,
            &addrs,
            1,
            GuestEntry::Protected32 { rip: 0 },
        )
        .unwrap_err();
        assert_eq!(e, SetupError::HostTrZero);
        assert_eq!(
            format!("{e}"),
            "host TR selector is 0; the GDT needs a TSS before VM entry"
        );
    }

    #[test]
    fn stop_reason_text() {
        assert_eq!(
            format!(
                "{}",
                StopReason::Unhandled {
                    reason: 29,
                    qualification: 0x13,
                    rip: 0x1004
                }
            ),
            "unhandled exit reason 29 (MOV DR) qualification 0x13 rip 0x1004"
        );
        assert_eq!(
            format!(
                "{}",
                StopReason::EptViolation {
                    gpa: 0xfee0_0000,
                    access: "write",
                    rip: 0x10_0020
                }
            ),
            "EPT violation: write of guest-physical 0xfee00000 at rip 0x100020"
        );
        assert_eq!(
            format!("{}", StopReason::Requested { status: 0 }),
            "status=0"
        );
        assert_eq!(
            format!(
                "{}",
                StopReason::EntryRefused {
                    resume: true,
                    fail: VmFail::Valid(7),
                    rip: 0x10_0000
                }
            ),
            "VM entry refused: VMRESUME VMfailValid error 7 (VM entry with invalid control field(s)) rip 0x100000"
        );
        assert_eq!(
            format!(
                "{}",
                StopReason::EntryRefused {
                    resume: false,
                    fail: VmFail::Invalid,
                    rip: 0
                }
            ),
            "VM entry refused: VMLAUNCH VMfailInvalid rip 0x0"
        );
        assert_eq!(
            format!(
                "{}",
                StopReason::StringIo {
                    port: 0x3f8,
                    input: false,
                    rep: true,
                    rip: 0x2000
                }
            ),
            "string I/O not emulated: REP OUTS port 0x3f8 rip 0x2000"
        );
    }
}
