//! VM-exit decoding (reads the VMCS) kept apart from handling (acts on the vCPU, the VMCS
//! and an [`ExitEnv`]), so every handler runs on the host with made-up exits.

use crate::vmx::controls::EntryCtls;
use crate::vmx::entry::reg;
use crate::vmx::exit::{
    CrAccessQualification, CrAccessType, EptViolationQualification, ExitReason, InterruptionInfo,
    InterruptionType, IoQualification, RawExitReason, vector,
};
use crate::vmx::msr::{Msr, efer};
use crate::vmx::vmcs::{
    Control32, ControlNW, Guest32, Guest64, GuestNW, ReadOnly32, ReadOnly64, ReadOnlyNW, Vmcs,
    access_rights,
};
use crate::vmx::{cr0, cr4, interruptibility, rflags};

use super::channel::{self, GuestView};
use super::cpuid::{self, GuestCpu};
use super::devices::acpi_pm::PmRequest;
use super::lapic::{ApicAction, ApicMode};
use super::mmio::{self, MmioError, MmioOp, PagingMode};
use super::msrs::{self, MsrAction};
use super::vcpu::{GuestTimer, PendingEvent, StopReason, Vcpu, Vm};

/// Paravirtual call numbers (docs/contracts.md, "Guests").
pub mod vmcall {
    pub const SET_TIMER: u64 = 0x01;
    pub const STOP: u64 = 0x02;
    pub const TSC_NOW: u64 = 0x03;
    /// Copies a guest buffer into the sample log ([`super::super::channel`]); the only call
    /// a user-mode caller may make, when its VM allows it. Returns 0 or a refusal code.
    pub const GUEST_DATA: u64 = 0x04;
    /// RAX for an unknown call or one made outside CPL 0.
    pub const ERROR: u64 = u64::MAX;
}

/// The low 32 bits of a register: EAX of RAX, the half of an MSR value RDMSR returns in EAX.
const LOW32: u64 = u32::MAX as u64;

/// One decoded VM exit: only the fields its reason needs are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmExit {
    pub raw: RawExitReason,
    pub qualification: u64,
    pub rip: u64,
    pub instruction_len: u64,
    /// Exit interruption information (exception/NMI and external-interrupt exits).
    pub interruption: InterruptionInfo,
    /// Guest-physical address (EPT exits).
    pub guest_physical: u64,
    /// Guest SS access rights (its DPL is the CPL), read for VMCALL.
    pub ss_access_rights: u64,
    /// An event whose delivery the exit interrupted (SDM 28.2.4), and its error code.
    pub idt_vectoring: InterruptionInfo,
    pub idt_vectoring_error: u32,
}

impl VmExit {
    /// Reads the exit from the current VMCS.
    pub fn decode(vmcs: &impl Vmcs) -> VmExit {
        let raw = RawExitReason(vmcs.read(ReadOnly32::ExitReason) as u32);
        let reason = raw.reason().ok();
        let mut exit = VmExit {
            raw,
            qualification: vmcs.read(ReadOnlyNW::ExitQualification),
            rip: vmcs.read(GuestNW::Rip),
            instruction_len: 0,
            interruption: InterruptionInfo(0),
            guest_physical: 0,
            ss_access_rights: 0,
            idt_vectoring: InterruptionInfo(vmcs.read(ReadOnly32::IdtVectoringInfo) as u32),
            idt_vectoring_error: 0,
        };
        match reason {
            Some(ExitReason::ExceptionOrNmi | ExitReason::ExternalInterrupt) => {
                exit.interruption =
                    InterruptionInfo(vmcs.read(ReadOnly32::ExitInterruptionInfo) as u32);
            }
            Some(ExitReason::EptViolation | ExitReason::EptMisconfiguration) => {
                exit.guest_physical = vmcs.read(ReadOnly64::GuestPhysicalAddress);
            }
            Some(ExitReason::Vmcall) => {
                exit.instruction_len = vmcs.read(ReadOnly32::ExitInstructionLength);
                exit.ss_access_rights = vmcs.read(Guest32::SsAccessRights);
            }
            Some(_) => exit.instruction_len = vmcs.read(ReadOnly32::ExitInstructionLength),
            None => {}
        }
        if exit.idt_vectoring.valid() {
            if exit.idt_vectoring.has_error_code() {
                exit.idt_vectoring_error = vmcs.read(ReadOnly32::IdtVectoringErrorCode) as u32;
            }
            if exit.idt_vectoring.is_software() {
                // For a software event being delivered, the field holds its instruction's
                // length (SDM 28.2.4).
                exit.instruction_len = vmcs.read(ReadOnly32::ExitInstructionLength);
            }
        }
        exit
    }

    /// The event to deliver again at the next entry when this exit interrupted one
    /// (SDM 28.2.4, 26.6: it is lost otherwise).
    pub fn reinjection(&self) -> Option<PendingEvent> {
        let v = self.idt_vectoring;
        v.valid().then(|| PendingEvent {
            info: InterruptionInfo(v.0 & InterruptionInfo::ENTRY_BITS),
            error_code: if v.has_error_code() {
                self.idt_vectoring_error
            } else {
                0
            },
            instruction_len: if v.is_software() {
                self.instruction_len as u32
            } else {
                0
            },
        })
    }
}

/// What handling an exit needs from outside the vCPU.
pub trait ExitEnv {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    fn host_rdmsr(&self, msr: Msr) -> u64;
    fn tsc(&self) -> u64;
    fn tsc_hz(&self) -> u64;
    /// A complete line the guest printed on its console.
    fn console_line(&mut self, vm: &str, line: &[u8]);
}

/// What the run loop must do after a handled exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Enter the guest again (it may have halted or stopped: see the vCPU/VM).
    Continue,
    /// An external interrupt was acknowledged on exit; the loop dispatches it (the sampling
    /// vector takes a sample) and sends the EOI.
    ExternalInterrupt(u8),
    /// An NMI arrived in guest mode.
    Nmi,
    /// A `GUEST_DATA` call was accepted: its bytes wait in the VM's channel
    /// ([`channel::GuestChannel::staged`]) for the loop to export them before the next
    /// entry; then it clears them.
    GuestData { kind: u16 },
}

/// Handles one exit of `vm.vcpus[index]`.
pub fn handle(
    exit: &VmExit,
    vm: &mut Vm,
    index: usize,
    vmcs: &mut impl Vmcs,
    env: &mut impl ExitEnv,
) -> Outcome {
    let vcpus_in_vm = vm.vcpus.len() as u32;
    let vcpu = &mut vm.vcpus[index];
    let unhandled = StopReason::Unhandled {
        reason: exit.raw.basic(),
        qualification: exit.qualification,
        rip: exit.rip,
    };
    if exit.raw.is_entry_failure() {
        vm.stopped = Some(StopReason::EntryFailed {
            reason: exit.raw.basic(),
            qualification: exit.qualification,
            rip: exit.rip,
        });
        return Outcome::Continue;
    }
    if let Some(event) = exit.reinjection() {
        vcpu.pending_event = Some(event);
    }
    let Ok(reason) = exit.raw.reason() else {
        vm.stopped = Some(unhandled);
        return Outcome::Continue;
    };
    match reason {
        ExitReason::ExternalInterrupt => {
            return Outcome::ExternalInterrupt(exit.interruption.vector());
        }
        ExitReason::ExceptionOrNmi if exit.interruption.kind() == InterruptionType::Nmi => {
            return Outcome::Nmi;
        }
        ExitReason::Cpuid => {
            let leaf = vcpu.regs.0[reg::RAX] as u32;
            let sub = vcpu.regs.0[reg::RCX] as u32;
            let cpu = GuestCpu {
                apic_id: u32::from(vcpu.index),
                vcpus: vcpus_in_vm,
                tsc_hz: env.tsc_hz(),
                rdtscp: vm.cpu.rdtscp,
                invpcid: vm.cpu.invpcid,
            };
            let [a, b, c, d] = cpuid::guest_cpuid(leaf, sub, &cpu, |l, s| env.host_cpuid(l, s));
            vcpu.regs.0[reg::RAX] = a as u64;
            vcpu.regs.0[reg::RBX] = b as u64;
            vcpu.regs.0[reg::RCX] = c as u64;
            vcpu.regs.0[reg::RDX] = d as u64;
            advance(vmcs, exit);
        }
        ExitReason::Rdmsr => {
            let msr = Msr(vcpu.regs.0[reg::RCX] as u32);
            let value = match msrs::on_read(msr) {
                MsrAction::Read(v) => Some(v),
                MsrAction::ReadHost => Some(env.host_rdmsr(msr)),
                MsrAction::Apic => apic_read(vcpu, msr, env.tsc()),
                MsrAction::IgnoreWrite | MsrAction::Fault => None,
            };
            match value {
                Some(v) => {
                    vcpu.regs.0[reg::RAX] = v & LOW32;
                    vcpu.regs.0[reg::RDX] = v >> 32;
                    advance(vmcs, exit);
                }
                None => inject_gp(vcpu, vmcs),
            }
        }
        ExitReason::Wrmsr => {
            let msr = Msr(vcpu.regs.0[reg::RCX] as u32);
            let value = (vcpu.regs.0[reg::RDX] << 32) | (vcpu.regs.0[reg::RAX] & LOW32);
            let ok = match msrs::on_write(msr) {
                MsrAction::IgnoreWrite => true,
                MsrAction::Apic => apic_write(vcpu, msr, value, env.tsc()),
                _ => false,
            };
            if ok {
                advance(vmcs, exit);
            } else {
                inject_gp(vcpu, vmcs);
            }
        }
        ExitReason::Hlt => {
            // An interrupt already waiting wakes the HLT at once, as on hardware (when the
            // guest can take it: IF set; the STI/MOV-SS shadow ends with the HLT itself).
            let can_wake = vmcs.read(GuestNW::Rflags) & rflags::IF != 0;
            vcpu.halted_interruptible = can_wake;
            vcpu.halted = !(can_wake && vcpu.interrupt_waiting());
            advance(vmcs, exit);
        }
        ExitReason::Vmcall if vcpu.regs.0[reg::RAX] == vmcall::GUEST_DATA => {
            let r = &vcpu.regs.0;
            let call = channel::Call {
                addr: r[reg::RBX],
                len: r[reg::RCX],
                kind: r[reg::RDX],
                cpl: access_rights::dpl(exit.ss_access_rights),
            };
            let view = GuestView {
                mem: &*vm.ram.bytes(),
                mode: PagingMode::from_regs(
                    vmcs.read(GuestNW::Cr0),
                    vmcs.read(GuestNW::Cr4),
                    vmcs.read(Guest64::Ia32Efer),
                ),
                cr3: vmcs.read(GuestNW::Cr3),
            };
            let result = vm.channel.call(call, &view, env.tsc(), env.tsc_hz());
            vcpu.regs.0[reg::RAX] = match result {
                Ok(()) => channel::ACCEPTED,
                Err(refusal) => refusal.code(),
            };
            advance(vmcs, exit);
            if let Some((kind, _)) = vm.channel.staged() {
                return Outcome::GuestData { kind };
            }
        }
        ExitReason::Vmcall => {
            let cpl = access_rights::dpl(exit.ss_access_rights);
            let rax = vcpu.regs.0[reg::RAX];
            let result = if cpl != 0 {
                vmcall::ERROR
            } else {
                match rax {
                    vmcall::SET_TIMER => {
                        let ns = vcpu.regs.0[reg::RBX];
                        let ticks = (ns as u128 * env.tsc_hz() as u128 / 1_000_000_000) as u64;
                        vcpu.timer = Some(GuestTimer {
                            deadline_tsc: env.tsc().saturating_add(ticks),
                            vector: vcpu.regs.0[reg::RCX] as u8,
                        });
                        0
                    }
                    vmcall::STOP => {
                        vm.stopped = Some(StopReason::Requested {
                            status: vcpu.regs.0[reg::RBX],
                        });
                        0
                    }
                    vmcall::TSC_NOW => env.tsc(),
                    _ => vmcall::ERROR,
                }
            };
            vcpu.regs.0[reg::RAX] = result;
            advance(vmcs, exit);
        }
        ExitReason::IoInstruction => {
            let io = IoQualification::decode(exit.qualification);
            if io.is_string {
                vm.stopped = Some(StopReason::StringIo {
                    port: io.port,
                    input: io.is_in,
                    rep: io.is_rep,
                    rip: exit.rip,
                });
                return Outcome::Continue;
            }
            let rax = &mut vcpu.regs.0[reg::RAX];
            if io.is_in {
                let v = vm.bus.read(io.port, io.size, env.tsc());
                set_low_bytes(rax, io.size, u64::from(v));
            } else {
                let name = vm.name;
                let request = vm
                    .bus
                    .write(io.port, *rax as u32, |line| env.console_line(name, line));
                match request {
                    PmRequest::None => {}
                    PmRequest::PowerOff => vm.stopped = Some(StopReason::PowerOff),
                    PmRequest::Reset => vm.stopped = Some(StopReason::Reset),
                    PmRequest::UnsupportedSleep(_) => {}
                }
            }
            advance(vmcs, exit);
        }
        ExitReason::CrAccess => match cr_access(exit, vcpu, vmcs) {
            CrOutcome::Done => advance(vmcs, exit),
            CrOutcome::Fault => inject_gp(vcpu, vmcs),
            CrOutcome::Stop(why) => vm.stopped = Some(why),
            CrOutcome::NotEmulated => vm.stopped = Some(unhandled),
        },
        ExitReason::EptViolation
            if XAPIC_PAGE.contains(&exit.guest_physical)
                && vcpu.lapic.mode() == ApicMode::XApic =>
        {
            match xapic_access(exit, vcpu, vm.ram.bytes(), vmcs, env.tsc()) {
                Ok(len) => advance(
                    vmcs,
                    &VmExit {
                        instruction_len: u64::from(len),
                        ..*exit
                    },
                ),
                Err(error) => {
                    vm.stopped = Some(StopReason::Mmio {
                        gpa: exit.guest_physical,
                        rip: exit.rip,
                        error,
                    })
                }
            }
        }
        ExitReason::EptViolation => {
            let q = EptViolationQualification::decode(exit.qualification);
            vm.stopped = Some(StopReason::EptViolation {
                gpa: exit.guest_physical,
                access: q.access_name(),
                rip: exit.rip,
            });
        }
        ExitReason::TripleFault => vm.stopped = Some(StopReason::TripleFault { rip: exit.rip }),
        // PAUSE exiting is off; a guest spinning in PAUSE loops still exits only if a CPU
        // forces it: let it go on.
        ExitReason::Pause => advance(vmcs, exit),
        ExitReason::PreemptionTimer | ExitReason::InterruptWindow => {}
        ExitReason::Invd | ExitReason::Wbinvd => advance(vmcs, exit),
        ExitReason::Mwait
        | ExitReason::Monitor
        | ExitReason::Vmclear
        | ExitReason::Vmlaunch
        | ExitReason::Vmptrld
        | ExitReason::Vmptrst
        | ExitReason::Vmread
        | ExitReason::Vmresume
        | ExitReason::Vmwrite
        | ExitReason::Vmxoff
        | ExitReason::Vmxon
        | ExitReason::Invept
        | ExitReason::Invvpid
        | ExitReason::Getsec => {
            vcpu.pending_event = Some(PendingEvent::new(
                InterruptionInfo::new(InterruptionType::HardwareException, vector::UD, false),
                0,
            ));
        }
        _ => vm.stopped = Some(unhandled),
    }
    Outcome::Continue
}

/// A trapped RDMSR of a local-APIC MSR (IA32_APIC_BASE, IA32_TSC_DEADLINE, x2APIC
/// registers); `None` raises #GP.
fn apic_read(vcpu: &mut Vcpu, msr: Msr, now: u64) -> Option<u64> {
    vcpu.lapic.read_msr(msr.0, now).ok()
}

/// A trapped WRMSR of a local-APIC MSR; false raises #GP. An IPI to self lands in the
/// vCPU's own IRR; IPIs to other vCPUs are not routed yet (one vCPU per VM).
fn apic_write(vcpu: &mut Vcpu, msr: Msr, value: u64, now: u64) -> bool {
    match vcpu.lapic.write_msr(msr.0, value, now) {
        Ok(ApicAction::SelfNmi) => {
            vcpu.pending_event = Some(PendingEvent::new(
                InterruptionInfo::new(InterruptionType::Nmi, vector::NMI, false),
                0,
            ));
            true
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

/// The xAPIC page (SDM 11.4.1: IA32_APIC_BASE's default base, 4 KiB). It is not mapped
/// in EPT, so every access exits.
const XAPIC_PAGE: core::ops::Range<u64> = 0xfee0_0000..0xfee0_1000;

/// A guest register by number (RSP lives in the VMCS).
fn gpr(vcpu: &Vcpu, vmcs: &impl Vmcs, n: u8) -> u64 {
    match usize::from(n) {
        reg::RSP => vmcs.read(GuestNW::Rsp),
        i => vcpu.regs.0.get(i).copied().unwrap_or(0),
    }
}

fn set_gpr(vcpu: &mut Vcpu, vmcs: &mut impl Vmcs, n: u8, value: u64) {
    match usize::from(n) {
        reg::RSP => {
            let _ = vmcs.write(GuestNW::Rsp, value);
        }
        i => {
            if let Some(r) = vcpu.regs.0.get_mut(i) {
                *r = value;
            }
        }
    }
}

/// Emulates the guest instruction that accessed the xAPIC page: fetch, decode, apply to
/// the local APIC model. Returns the instruction's length.
fn xapic_access(
    exit: &VmExit,
    vcpu: &mut Vcpu,
    ram: &[u8],
    vmcs: &mut impl Vmcs,
    now: u64,
) -> Result<u8, MmioError> {
    let mode = PagingMode::from_regs(
        vmcs.read(GuestNW::Cr0),
        vmcs.read(GuestNW::Cr4),
        vmcs.read(Guest64::Ia32Efer),
    );
    let long_mode = vmcs.read(Guest32::CsAccessRights) & access_rights::LONG_MODE != 0;
    let (bytes, n) = mmio::fetch(ram, mode, vmcs.read(GuestNW::Cr3), exit.rip)?;
    let insn = mmio::decode(&bytes[..n], long_mode)?;
    let offset = (exit.guest_physical - XAPIC_PAGE.start) as u32;
    let store = |vcpu: &mut Vcpu, value: u32| {
        if vcpu.lapic.write_mmio(offset, value, now) == ApicAction::SelfNmi {
            vcpu.pending_event = Some(PendingEvent::new(
                InterruptionInfo::new(InterruptionType::Nmi, vector::NMI, false),
                0,
            ));
        }
    };
    match insn.op {
        MmioOp::Load { reg } => {
            let v = vcpu.lapic.read_mmio(offset, now);
            set_gpr(vcpu, vmcs, reg, u64::from(v));
        }
        MmioOp::Store { reg } => {
            let v = gpr(vcpu, vmcs, reg) as u32;
            store(vcpu, v);
        }
        MmioOp::StoreImm { value } => store(vcpu, value),
        MmioOp::Exchange { reg } => {
            let new = gpr(vcpu, vmcs, reg) as u32;
            let old = vcpu.lapic.read_mmio(offset, now);
            store(vcpu, new);
            set_gpr(vcpu, vmcs, reg, u64::from(old));
        }
    }
    Ok(insn.len)
}

/// Writes `value`'s low `size` bytes into `reg`, keeping the rest (IN AL/AX/EAX; a 32-bit
/// IN zero-extends into RAX).
fn set_low_bytes(reg: &mut u64, size: u8, value: u64) {
    match size {
        1 => *reg = (*reg & !0xff) | (value & 0xff),
        2 => *reg = (*reg & !0xffff) | (value & 0xffff),
        _ => *reg = value & LOW32,
    }
}

/// Completes the exiting instruction for the guest: RIP moves past it, and an STI or MOV SS
/// shadow it was in ends (the shadow covers one instruction, the one just emulated; left
/// set, it would block the interrupt meant to wake a `sti; hlt`).
fn advance(vmcs: &mut impl Vmcs, exit: &VmExit) {
    // A failed VMWRITE of guest RIP cannot happen for a valid current VMCS; if it did, the
    // guest would re-execute the instruction and exit again, which the counters show.
    let _ = vmcs.write(GuestNW::Rip, exit.rip.wrapping_add(exit.instruction_len));
    let state = vmcs.read(Guest32::InterruptibilityState);
    if state & interruptibility::SHADOWS != 0 {
        let _ = vmcs.write(
            Guest32::InterruptibilityState,
            state & !interruptibility::SHADOWS,
        );
    }
}

/// #GP(0) at the next entry. In real mode (CR0.PE=0, unrestricted guest) no error code is
/// delivered, and VM entry refuses one (SDM 26.2.1.3).
fn inject_gp(vcpu: &mut Vcpu, vmcs: &impl Vmcs) {
    let protected = vmcs.read(GuestNW::Cr0) & cr0::PE != 0;
    vcpu.pending_event = Some(PendingEvent::new(
        InterruptionInfo::new(InterruptionType::HardwareException, vector::GP, protected),
        0,
    ));
}

/// What an emulated control-register access came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrOutcome {
    /// Done: the instruction completes.
    Done,
    /// The instruction raises #GP(0), as on hardware.
    Fault,
    /// The guest asked for something the hypervisor does not support.
    Stop(StopReason),
    /// An access this handler does not emulate.
    NotEmulated,
}

/// Legacy PAE paging (CR0.PG, CR4.PAE, not IA-32e mode): the PDPTEs live in VMCS fields,
/// which an emulated CR write would have to load from guest memory (SDM 26.3.1.6).
fn legacy_pae(cr0_value: u64, cr4_value: u64, efer_value: u64) -> bool {
    cr0_value & cr0::PG != 0 && cr4_value & cr4::PAE != 0 && efer_value & efer::LMA == 0
}

fn pae_unsupported(exit: &VmExit) -> CrOutcome {
    CrOutcome::Stop(StopReason::Unsupported {
        what: "32-bit PAE guest (PDPTE loading is not emulated)",
        rip: exit.rip,
    })
}

/// MOV to CR0/CR4, CLTS and LMSW against the guest/host masks; MOV to/from CR3 when the
/// CPU forces CR3 exiting.
fn cr_access(exit: &VmExit, vcpu: &mut Vcpu, vmcs: &mut impl Vmcs) -> CrOutcome {
    let q = CrAccessQualification::decode(exit.qualification);
    let gpr = q.gpr as usize;
    let value = if gpr == reg::RSP {
        vmcs.read(GuestNW::Rsp)
    } else {
        vcpu.regs.0[gpr]
    };
    match (q.access, q.cr) {
        (CrAccessType::MovToCr, 0) => set_cr0(exit, vcpu, vmcs, value),
        (CrAccessType::MovToCr, 4) => set_cr4(exit, vcpu, vmcs, value),
        (CrAccessType::MovToCr, 3) => {
            let pae = legacy_pae(
                vmcs.read(GuestNW::Cr0),
                vmcs.read(GuestNW::Cr4),
                vmcs.read(Guest64::Ia32Efer),
            );
            if pae {
                return pae_unsupported(exit);
            }
            let _ = vmcs.write(GuestNW::Cr3, value);
            CrOutcome::Done
        }
        (CrAccessType::MovFromCr, 3) => {
            let v = vmcs.read(GuestNW::Cr3);
            if gpr == reg::RSP {
                let _ = vmcs.write(GuestNW::Rsp, v);
            } else {
                vcpu.regs.0[gpr] = v;
            }
            CrOutcome::Done
        }
        (CrAccessType::Clts, 0) => set_cr0(exit, vcpu, vmcs, vcpu.cr0_shadow & !cr0::TS),
        (CrAccessType::Lmsw, 0) => {
            // LMSW changes PE, MP, EM, TS only, and cannot clear PE.
            let source = q.lmsw_source as u64 & cr0::LMSW_BITS;
            let v = (vcpu.cr0_shadow & !cr0::LMSW_BITS) | source | (vcpu.cr0_shadow & cr0::PE);
            set_cr0(exit, vcpu, vmcs, v)
        }
        _ => CrOutcome::NotEmulated,
    }
}

/// A guest write of CR0 (MOV, CLTS, LMSW). Bits the host owns keep their forced values;
/// the guest owns the rest. A paging change updates IA-32e mode as the CPU would: PG 0->1
/// with EFER.LME sets EFER.LMA and the "IA-32e mode guest" entry control, PG 1->0 clears
/// both (SDM 10.8.5; entry checks 26.3.1.1 want LMA = that control, and = LME when PG=1).
fn set_cr0(exit: &VmExit, vcpu: &mut Vcpu, vmcs: &mut impl Vmcs, value: u64) -> CrOutcome {
    let mask = vmcs.read(ControlNW::Cr0GuestHostMask);
    let old = vmcs.read(GuestNW::Cr0);
    let new = (value & !mask) | (old & mask);
    let guest_cr4 = vmcs.read(GuestNW::Cr4);
    let guest_efer = vmcs.read(Guest64::Ia32Efer);
    let (was_paging, paging) = (old & cr0::PG != 0, new & cr0::PG != 0);
    // SDM Vol. 2B MOV CR0: PG without PE, or NW without CD, is #GP.
    if paging && new & cr0::PE == 0 || new & cr0::NW != 0 && new & cr0::CD == 0 {
        return CrOutcome::Fault;
    }
    let mut new_efer = guest_efer;
    if !was_paging && paging {
        if guest_efer & efer::LME != 0 {
            if guest_cr4 & cr4::PAE == 0 {
                return CrOutcome::Fault;
            }
            new_efer |= efer::LMA;
        } else if guest_cr4 & cr4::PAE != 0 {
            return pae_unsupported(exit);
        }
    } else if was_paging && !paging && guest_efer & efer::LMA != 0 {
        // Leaving long mode is only allowed from compatibility mode.
        if vmcs.read(Guest32::CsAccessRights) & access_rights::LONG_MODE != 0 {
            return CrOutcome::Fault;
        }
        new_efer &= !efer::LMA;
    }
    vcpu.cr0_shadow = value;
    let _ = vmcs.write(ControlNW::Cr0ReadShadow, value);
    let _ = vmcs.write(GuestNW::Cr0, new);
    if new_efer != guest_efer {
        let _ = vmcs.write(Guest64::Ia32Efer, new_efer);
        let entry = vmcs.read(Control32::EntryControls);
        let ia32e = EntryCtls::IA32E_MODE_GUEST.bits() as u64;
        let entry = if new_efer & efer::LMA != 0 {
            entry | ia32e
        } else {
            entry & !ia32e
        };
        let _ = vmcs.write(Control32::EntryControls, entry);
    }
    CrOutcome::Done
}

/// A guest MOV to CR4: bits the CPU does not support, or whose feature guest CPUID hides,
/// raise #GP (as reserved bits do, SDM Vol. 2B MOV CR4), as does clearing PAE in IA-32e
/// mode.
fn set_cr4(exit: &VmExit, vcpu: &mut Vcpu, vmcs: &mut impl Vmcs, value: u64) -> CrOutcome {
    let guest_efer = vmcs.read(Guest64::Ia32Efer);
    if value & !vcpu.cr4_allowed != 0 || guest_efer & efer::LMA != 0 && value & cr4::PAE == 0 {
        return CrOutcome::Fault;
    }
    let mask = vmcs.read(ControlNW::Cr4GuestHostMask);
    let old = vmcs.read(GuestNW::Cr4);
    let new = (value & !mask) | (old & mask);
    // Under legacy PAE paging a CR4 change reloads the PDPTEs.
    if new != old && legacy_pae(vmcs.read(GuestNW::Cr0), new, guest_efer) {
        return pae_unsupported(exit);
    }
    vcpu.cr4_shadow = value;
    let _ = vmcs.write(ControlNW::Cr4ReadShadow, value);
    let _ = vmcs.write(GuestNW::Cr4, new);
    CrOutcome::Done
}

/// Whether the guest can take an external interrupt now: RFLAGS.IF set and no STI/MOV-SS
/// blocking (interruptibility state bits 0-1).
pub fn interrupt_window_open(vmcs: &impl Vmcs) -> bool {
    vmcs.read(GuestNW::Rflags) & rflags::IF != 0
        && vmcs.read(Guest32::InterruptibilityState) & interruptibility::SHADOWS == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::vmcs::VmcsField;
    use crate::vmx::vmcs::mock::MockVmcs;

    #[derive(Default)]
    struct Env {
        lines: Vec<String>,
        tsc: u64,
    }

    impl ExitEnv for Env {
        fn host_cpuid(&self, leaf: u32, _sub: u32) -> [u32; 4] {
            match leaf {
                0 => [0xd, 0, 0, 0],
                1 => [0x906ea, 0x0010_0800, 0x7ffa_fbbf, 0xbfeb_fbff],
                0xa => [0x0730_0404, 0, 0, 0x603],
                _ => [leaf, 0, 0, 0],
            }
        }
        fn host_rdmsr(&self, msr: Msr) -> u64 {
            0x1000 + msr.0 as u64
        }
        fn tsc(&self) -> u64 {
            self.tsc
        }
        fn tsc_hz(&self) -> u64 {
            50_000_000
        }
        fn console_line(&mut self, vm: &str, line: &[u8]) {
            self.lines
                .push(format!("[{vm}] {}", String::from_utf8_lossy(line)));
        }
    }

    fn vm() -> Vm {
        let mut vm = Vm::new(0, "t");
        vm.vcpus.push(Vcpu::new(0, 1, 0x9000));
        vm
    }

    fn exit(reason: u32, q: u64, len: u64) -> (VmExit, MockVmcs) {
        let vmcs = MockVmcs::with(&[
            (ReadOnly32::ExitReason.encoding(), reason as u64),
            (ReadOnlyNW::ExitQualification.encoding(), q),
            (GuestNW::Rip.encoding(), 0x10_0000),
            (ReadOnly32::ExitInstructionLength.encoding(), len),
            (Guest32::SsAccessRights.encoding(), 0xc093),
        ]);
        (VmExit::decode(&vmcs), vmcs)
    }

    #[test]
    fn cpuid_hides_vmx_and_sets_the_hypervisor_bit() {
        let (e, mut vmcs) = exit(10, 0, 2);
        let mut vm = vm();
        vm.vcpus[0].regs.0[reg::RAX] = 1;
        let mut env = Env::default();
        assert_eq!(
            handle(&e, &mut vm, 0, &mut vmcs, &mut env),
            Outcome::Continue
        );
        let r = &vm.vcpus[0].regs.0;
        assert_eq!(r[reg::RAX], 0x906ea);
        assert_eq!(r[reg::RCX] as u32 & cpuid::ecx1::VMX, 0);
        assert_eq!(
            r[reg::RCX] as u32 & cpuid::ecx1::HYPERVISOR,
            cpuid::ecx1::HYPERVISOR
        );
        assert_eq!(r[reg::RCX], 0xc3fa_2203);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0002));
        vm.vcpus[0].regs.0[reg::RAX] = cpuid::HV_BASE as u64;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        let r = &vm.vcpus[0].regs.0;
        assert_eq!(r[reg::RBX] as u32, u32::from_le_bytes(*b"HVpr"));
        assert_eq!(r[reg::RAX], 0x4000_0001);
        vm.vcpus[0].regs.0[reg::RAX] = 0xa;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].regs.0[reg::RAX], 0, "no PMU for guests");
    }

    #[test]
    fn uart_output_becomes_console_lines_and_other_ports_read_ones() {
        let mut vm = vm();
        let mut env = Env::default();
        for b in b"hi\n" {
            // OUT DX, AL to 0x3f8.
            let (e, mut vmcs) = exit(30, 0x03f8_0040, 1);
            vm.vcpus[0].regs.0[reg::RAX] = 0xdead_0000 | *b as u64;
            handle(&e, &mut vm, 0, &mut vmcs, &mut env);
            assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0001));
        }
        assert_eq!(env.lines, ["[t] hi"]);
        // IN AL, DX from LSR.
        let (e, mut vmcs) = exit(30, 0x03fd_0048, 1);
        vm.vcpus[0].regs.0[reg::RAX] = 0x1234_5678;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].regs.0[reg::RAX], 0x1234_5660);
        // IN AX, DX from 0x60: all ones, counted.
        let (e, mut vmcs) = exit(30, 0x0060_0049, 1);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].regs.0[reg::RAX], 0x1234_ffff);
        // OUT to 0x61: dropped, counted.
        let (e, mut vmcs) = exit(30, 0x0061_0040, 1);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.bus.unmodelled,
            super::super::devices::UnmodelledIo {
                reads: 1,
                writes: 1,
                last_port: 0x61
            }
        );
    }

    #[test]
    fn vmcalls() {
        let mut vm = vm();
        let mut env = Env {
            tsc: 1000,
            ..Default::default()
        };
        let (e, mut vmcs) = exit(18, 0, 3);
        vm.vcpus[0].regs.0[reg::RAX] = vmcall::TSC_NOW;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].regs.0[reg::RAX], 1000);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0003));
        vm.vcpus[0].regs.0[reg::RAX] = vmcall::SET_TIMER;
        vm.vcpus[0].regs.0[reg::RBX] = 2_000_000; // 2 ms at 50 MHz = 100000 ticks
        vm.vcpus[0].regs.0[reg::RCX] = 0x40;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].timer,
            Some(GuestTimer {
                deadline_tsc: 101_000,
                vector: 0x40
            })
        );
        assert_eq!(vm.vcpus[0].regs.0[reg::RAX], 0);
        vm.vcpus[0].regs.0[reg::RAX] = 0x77;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].regs.0[reg::RAX], vmcall::ERROR);
        vm.vcpus[0].regs.0[reg::RAX] = vmcall::STOP;
        vm.vcpus[0].regs.0[reg::RBX] = 7;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.stopped, Some(StopReason::Requested { status: 7 }));
        // From CPL 3 a VMCALL does nothing but fail.
        let mut vm2 = super::tests::vm();
        vmcs.fields
            .insert(Guest32::SsAccessRights.encoding(), 0xc0f3);
        let e3 = VmExit::decode(&vmcs);
        vm2.vcpus[0].regs.0[reg::RAX] = vmcall::STOP;
        handle(&e3, &mut vm2, 0, &mut vmcs, &mut env);
        assert_eq!(vm2.stopped, None);
        assert_eq!(vm2.vcpus[0].regs.0[reg::RAX], vmcall::ERROR);
    }

    #[test]
    fn hlt_halts_and_msrs_follow_the_policy() {
        let mut vm = vm();
        let mut env = Env::default();
        let (e, mut vmcs) = exit(12, 0, 1);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert!(vm.vcpus[0].halted);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0001));
        let (e, mut vmcs) = exit(31, 0, 2);
        vm.vcpus[0].regs.0[reg::RCX] = 0x3a;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            (vm.vcpus[0].regs.0[reg::RAX], vm.vcpus[0].regs.0[reg::RDX]),
            (1, 0)
        );
        vm.vcpus[0].regs.0[reg::RCX] = 0x480;
        let (e, mut vmcs) = exit(31, 0, 2);
        vmcs.fields.insert(GuestNW::Cr0.encoding(), 0x11);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent::new(InterruptionInfo(0x8000_0b0d), 0))
        );
        assert_eq!(
            vmcs.get(GuestNW::Rip),
            Some(0x10_0000),
            "a faulting RDMSR does not advance"
        );
    }

    /// RDMSR/WRMSR exits of MSR `msr` (value in EDX:EAX for writes).
    fn msr_exit(vm: &mut Vm, env: &mut Env, write: Option<u64>, msr: u32) -> MockVmcs {
        let (e, mut vmcs) = exit(if write.is_some() { 32 } else { 31 }, 0, 2);
        vmcs.fields.insert(GuestNW::Cr0.encoding(), 0x8000_0011);
        let r = &mut vm.vcpus[0].regs.0;
        r[reg::RCX] = u64::from(msr);
        if let Some(v) = write {
            r[reg::RAX] = v & LOW32;
            r[reg::RDX] = v >> 32;
        }
        handle(&e, vm, 0, &mut vmcs, env);
        vmcs
    }

    #[test]
    fn linux_local_apic_through_msrs_wakes_a_halted_vcpu() {
        let mut vm = vm();
        let mut env = Env {
            tsc: 1000,
            ..Default::default()
        };
        // IA32_APIC_BASE: enabled, x2APIC, BSP.
        msr_exit(&mut vm, &mut env, None, 0x1b);
        let r = &vm.vcpus[0].regs.0;
        assert_eq!((r[reg::RAX], r[reg::RDX]), (0xfee0_0d00, 0));
        // SVR enable, LVT timer in TSC-deadline mode on vector 0xec, deadline at 5000.
        msr_exit(&mut vm, &mut env, Some(0x1ff), 0x80f);
        msr_exit(&mut vm, &mut env, Some(0x4_00ec), 0x832);
        let vmcs = msr_exit(&mut vm, &mut env, Some(5000), 0x6e0);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0002), "accepted");
        assert_eq!(vm.vcpus[0].pending_event, None);
        assert_eq!(vm.vcpus[0].next_timer_tsc(), Some(5000));
        // HLT with IF set: halts, the deadline wakes it with 0xec deliverable.
        let (e, mut vmcs) = exit(12, 0, 1);
        vmcs.fields.insert(GuestNW::Rflags.encoding(), 0x202);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert!(vm.vcpus[0].halted);
        assert!(!vm.vcpus[0].can_never_wake());
        assert!(!vm.vcpus[0].fire_timer(4999));
        assert!(vm.vcpus[0].fire_timer(5000));
        assert!(!vm.vcpus[0].halted);
        assert_eq!(vm.vcpus[0].lapic.acknowledge(), Some(0xec));
        // EOI with a non-zero value is #GP in x2APIC mode; 0 is fine.
        msr_exit(&mut vm, &mut env, Some(1), 0x80b);
        assert!(vm.vcpus[0].pending_event.is_some(), "#GP");
        vm.vcpus[0].pending_event = None;
        let vmcs = msr_exit(&mut vm, &mut env, Some(0), 0x80b);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0002));
        assert_eq!(vm.vcpus[0].pending_event, None);
    }

    #[test]
    fn acpi_s5_powers_the_vm_off() {
        let mut vm = vm();
        let mut env = Env::default();
        // OUT DX, AL to 0x600 with SLP_TYP=5 | SLP_EN.
        let (e, mut vmcs) = exit(30, 0x0600_0040, 1);
        vm.vcpus[0].regs.0[reg::RAX] = 0x34;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.stopped, Some(StopReason::PowerOff));
        assert_eq!(vm.stopped.map(|r| r.status()), Some(0));
    }

    #[test]
    fn hlt_in_an_sti_shadow_ends_the_shadow_and_a_pending_vector_wakes_it() {
        let mut vm = vm();
        let mut env = Env::default();
        // `sti; hlt`: the exit reports blocking by STI, IF set.
        let (e, mut vmcs) = exit(12, 0, 1);
        vmcs.fields
            .insert(Guest32::InterruptibilityState.encoding(), 0x9);
        vmcs.fields.insert(GuestNW::Rflags.encoding(), 0x202);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert!(vm.vcpus[0].halted);
        assert_eq!(
            vmcs.get(Guest32::InterruptibilityState),
            Some(0x8),
            "STI shadow gone, other bits kept"
        );
        assert!(interrupt_window_open(&vmcs));
        // With a vector already pending the HLT does not halt.
        let mut vm = super::tests::vm();
        vm.vcpus[0].pending_vector = Some(0x30);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert!(!vm.vcpus[0].halted);
        // ... unless the guest cannot take it (IF clear): then it halts.
        vmcs.fields.insert(GuestNW::Rflags.encoding(), 0x2);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert!(vm.vcpus[0].halted);
        assert!(!interrupt_window_open(&vmcs));
    }

    #[test]
    fn fatal_exits_stop_the_vm_with_a_report() {
        let mut vm = vm();
        let mut env = Env::default();
        let (e, mut vmcs) = exit(29, 0x13, 3);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            format!("{}", vm.stopped.unwrap()),
            "unhandled exit reason 29 (MOV DR) qualification 0x13 rip 0x100000"
        );
        let mut vm = super::tests::vm();
        let (_, mut vmcs) = exit(48, 0x182, 0);
        vmcs.fields
            .insert(ReadOnly64::GuestPhysicalAddress.encoding(), 0xfee0_0030);
        let e = VmExit::decode(&vmcs);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            format!("{}", vm.stopped.unwrap()),
            "EPT violation: write of guest-physical 0xfee00030 at rip 0x100000"
        );
        let mut vm = super::tests::vm();
        let (e, mut vmcs) = exit(0x8000_0021, 0, 0);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            format!("{}", vm.stopped.unwrap()),
            "VM entry failed: exit reason 33 (VM-entry failure due to invalid guest state) qualification 0x0 rip 0x100000"
        );
        let mut vm = super::tests::vm();
        let (e, mut vmcs) = exit(35, 0, 0);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            format!("{}", vm.stopped.unwrap()),
            "unhandled exit reason 35 (unknown) qualification 0x0 rip 0x100000"
        );
    }

    #[test]
    fn interrupts_and_nmis_go_back_to_the_loop() {
        let mut vm = vm();
        let mut env = Env::default();
        let (_, mut vmcs) = exit(1, 0, 0);
        vmcs.fields
            .insert(ReadOnly32::ExitInterruptionInfo.encoding(), 0x8000_0021);
        let e = VmExit::decode(&vmcs);
        assert_eq!(
            handle(&e, &mut vm, 0, &mut vmcs, &mut env),
            Outcome::ExternalInterrupt(0x21)
        );
        let (_, mut vmcs) = exit(0, 0, 0);
        vmcs.fields
            .insert(ReadOnly32::ExitInterruptionInfo.encoding(), 0x8000_0202);
        let e = VmExit::decode(&vmcs);
        assert_eq!(handle(&e, &mut vm, 0, &mut vmcs, &mut env), Outcome::Nmi);
        assert_eq!(vm.stopped, None);
    }

    #[test]
    fn mov_to_cr0_keeps_forced_bits_and_updates_the_shadow() {
        let mut vm = vm();
        let mut env = Env::default();
        // MOV CR0, RAX.
        let (e, mut vmcs) = exit(28, 0x0000, 3);
        vmcs.fields
            .insert(ControlNW::Cr0GuestHostMask.encoding(), 0x20);
        vmcs.fields.insert(GuestNW::Cr0.encoding(), 0x31);
        vm.vcpus[0].regs.0[reg::RAX] = 0x8000_0011;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x8000_0031));
        assert_eq!(vmcs.get(ControlNW::Cr0ReadShadow), Some(0x8000_0011));
        assert_eq!(vm.stopped, None);
    }

    /// A CR-access exit for MOV CR<cr>, RAX with the VMCS as a guest in 32-bit protected
    /// mode, paging off, would have it.
    fn mov_to_cr(cr: u64, rax: u64, efer_value: u64, cr4_value: u64) -> (Vm, MockVmcs, Env) {
        let mut vm = vm();
        vm.vcpus[0].cr4_allowed = 0x3307ff;
        let (_, mut vmcs) = exit(28, cr, 3);
        for (f, v) in [
            (ControlNW::Cr0GuestHostMask.encoding(), 0x20),
            (ControlNW::Cr4GuestHostMask.encoding(), 0x2000),
            (GuestNW::Cr0.encoding(), 0x31),
            (GuestNW::Cr4.encoding(), 0x2000 | cr4_value),
            (Guest64::Ia32Efer.encoding(), efer_value),
            (Control32::EntryControls.encoding(), 0x11fb),
            (Guest32::CsAccessRights.encoding(), 0xc09b),
        ] {
            vmcs.fields.insert(f, v);
        }
        vm.vcpus[0].regs.0[reg::RAX] = rax;
        (vm, vmcs, Env::default())
    }

    fn run(vm: &mut Vm, vmcs: &mut MockVmcs, env: &mut Env) {
        let e = VmExit::decode(vmcs);
        handle(&e, vm, 0, vmcs, env);
    }

    #[test]
    fn paging_on_with_lme_enters_ia32e_mode_and_paging_off_leaves_it() {
        // CR4.PAE set, EFER.LME set: MOV CR0 with PG|NE|ET|PE.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(0, 0x8000_0031, efer::LME, cr4::PAE);
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(vm.stopped, None);
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x8000_0031));
        assert_eq!(vmcs.get(Guest64::Ia32Efer), Some(efer::LME | efer::LMA));
        assert_eq!(vmcs.get(Control32::EntryControls), Some(0x11fb | 0x200));
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0003));
        // PG off again (from compatibility mode: CS.L clear).
        vm.vcpus[0].regs.0[reg::RAX] = 0x31;
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x31));
        assert_eq!(vmcs.get(Guest64::Ia32Efer), Some(efer::LME));
        assert_eq!(vmcs.get(Control32::EntryControls), Some(0x11fb));
        assert_eq!(vm.vcpus[0].pending_event, None);
    }

    #[test]
    fn paging_changes_the_cpu_refuses_raise_gp() {
        // LME without PAE: #GP, nothing written, RIP stays.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(0, 0x8000_0031, efer::LME, 0);
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent::new(InterruptionInfo(0x8000_0b0d), 0))
        );
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x31));
        assert_eq!(vmcs.get(Guest64::Ia32Efer), Some(efer::LME));
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0000));
        // Leaving paging from 64-bit mode (CS.L set).
        let (mut vm, mut vmcs, mut env) = mov_to_cr(0, 0x31, efer::LME | efer::LMA, cr4::PAE);
        vmcs.fields.insert(GuestNW::Cr0.encoding(), 0x8000_0031);
        vmcs.fields
            .insert(Guest32::CsAccessRights.encoding(), 0xa09b);
        run(&mut vm, &mut vmcs, &mut env);
        assert!(vm.vcpus[0].pending_event.is_some());
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x8000_0031));
    }

    #[test]
    fn legacy_pae_paging_stops_the_vm_with_a_report() {
        let (mut vm, mut vmcs, mut env) = mov_to_cr(0, 0x8000_0031, 0, cr4::PAE);
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(
            format!("{}", vm.stopped.unwrap()),
            "not supported: 32-bit PAE guest (PDPTE loading is not emulated) rip 0x100000"
        );
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x31), "nothing written");
        // Non-PAE 32-bit paging is fine.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(0, 0x8000_0031, 0, 0);
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(vm.stopped, None);
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x8000_0031));
        assert_eq!(vmcs.get(Guest64::Ia32Efer), Some(0));
    }

    #[test]
    fn mov_to_cr4_faults_on_unsupported_bits() {
        // VMXE (hidden VMX): #GP; the shadow and GUEST_CR4 keep their values.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(4, 0x2020, 0, 0);
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent::new(InterruptionInfo(0x8000_0b0d), 0))
        );
        assert_eq!(vmcs.get(GuestNW::Cr4), Some(0x2000));
        assert_eq!(vmcs.get(ControlNW::Cr4ReadShadow), None);
        // OSXSAVE (XSAVE hidden) and a reserved bit (bit 31) fault too.
        for bad in [1 << 18, 1 << 31] {
            let (mut vm, mut vmcs, mut env) = mov_to_cr(4, 0x20 | bad, 0, 0);
            run(&mut vm, &mut vmcs, &mut env);
            assert!(vm.vcpus[0].pending_event.is_some(), "{bad:#x}");
        }
        // Clearing PAE in IA-32e mode faults.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(4, 0x80, efer::LME | efer::LMA, cr4::PAE);
        run(&mut vm, &mut vmcs, &mut env);
        assert!(vm.vcpus[0].pending_event.is_some());
        // PAE|PGE is fine: written under the mask, shadow updated, RIP advanced.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(4, 0xa0, 0, 0);
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].pending_event, None);
        assert_eq!(vmcs.get(GuestNW::Cr4), Some(0x20a0));
        assert_eq!(vmcs.get(ControlNW::Cr4ReadShadow), Some(0xa0));
        assert_eq!(vm.vcpus[0].cr4_shadow, 0xa0);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0003));
    }

    #[test]
    fn clts_and_lmsw_use_the_named_bits() {
        // CLTS (access type 2): TS cleared in the shadow.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(0x20, 0, 0, 0);
        vm.vcpus[0].cr0_shadow = 0x19;
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].cr0_shadow, 0x11);
        // LMSW 0x0e (type 3, source in bits 31:16) keeps PE set, sets MP|EM|TS.
        let (mut vm, mut vmcs, mut env) = mov_to_cr(0x000e_0030, 0, 0, 0);
        vm.vcpus[0].cr0_shadow = 0x11;
        run(&mut vm, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].cr0_shadow, 0x1f);
        assert_eq!(vmcs.get(GuestNW::Cr0), Some(0x3f));
    }

    #[test]
    fn gp_in_real_mode_has_no_error_code() {
        let mut vm = vm();
        let mut env = Env::default();
        let (e, mut vmcs) = exit(32, 0, 2);
        vmcs.fields.insert(GuestNW::Cr0.encoding(), 0x30);
        vm.vcpus[0].regs.0[reg::RCX] = 0x1234;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent::new(InterruptionInfo(0x8000_030d), 0))
        );
        // In protected mode the same WRMSR gets #GP(0) with the error code.
        vmcs.fields.insert(GuestNW::Cr0.encoding(), 0x31);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent::new(InterruptionInfo(0x8000_0b0d), 0))
        );
        // An allowed-to-trap write is dropped, RIP moves on.
        vm.vcpus[0].pending_event = None;
        vm.vcpus[0].regs.0[reg::RCX] = Msr::IA32_MTRR_DEF_TYPE.0 as u64;
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].pending_event, None);
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0002));
    }

    #[test]
    fn an_interrupted_delivery_is_reinjected() {
        // The SET_TIMER vector 0x30 was being delivered when a preemption-timer exit came:
        // IDT-vectoring information valid, external interrupt, vector 0x30.
        let mut vm = vm();
        let mut env = Env::default();
        let (_, mut vmcs) = exit(52, 0, 0);
        vmcs.fields
            .insert(ReadOnly32::IdtVectoringInfo.encoding(), 0x8000_0030);
        let e = VmExit::decode(&vmcs);
        assert_eq!(
            handle(&e, &mut vm, 0, &mut vmcs, &mut env),
            Outcome::Continue
        );
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent {
                info: InterruptionInfo(0x8000_0030),
                error_code: 0,
                instruction_len: 0
            })
        );
        // Same on an external-interrupt exit, which still goes back to the loop.
        let mut vm = super::tests::vm();
        let (_, mut vmcs) = exit(1, 0, 0);
        vmcs.fields
            .insert(ReadOnly32::ExitInterruptionInfo.encoding(), 0x8000_0020);
        vmcs.fields
            .insert(ReadOnly32::IdtVectoringInfo.encoding(), 0x8000_1030);
        let e = VmExit::decode(&vmcs);
        assert_eq!(
            handle(&e, &mut vm, 0, &mut vmcs, &mut env),
            Outcome::ExternalInterrupt(0x20)
        );
        assert_eq!(
            vm.vcpus[0].pending_event.map(|p| p.info),
            Some(InterruptionInfo(0x8000_0030)),
            "undefined bit 12 dropped"
        );
        // A #GP with its error code, and an INT 0x80 (software interrupt) with its length.
        let (_, mut vmcs) = exit(52, 0, 2);
        vmcs.fields
            .insert(ReadOnly32::IdtVectoringInfo.encoding(), 0x8000_0b0d);
        vmcs.fields
            .insert(ReadOnly32::IdtVectoringErrorCode.encoding(), 0x18);
        let e = VmExit::decode(&vmcs);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent {
                info: InterruptionInfo(0x8000_0b0d),
                error_code: 0x18,
                instruction_len: 0
            })
        );
        vmcs.fields
            .insert(ReadOnly32::IdtVectoringInfo.encoding(), 0x8000_0480);
        let e = VmExit::decode(&vmcs);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.vcpus[0].pending_event,
            Some(PendingEvent {
                info: InterruptionInfo(0x8000_0480),
                error_code: 0,
                instruction_len: 2
            })
        );
        // No valid vectoring information: nothing queued.
        let mut vm = super::tests::vm();
        let (e, mut vmcs) = exit(52, 0, 0);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(vm.vcpus[0].pending_event, None);
    }

    #[test]
    fn string_io_stops_the_vm_naming_the_port() {
        let mut vm = vm();
        let mut env = Env::default();
        // REP OUTSB to 0x3f8: size 1, string, REP, port in bits 31:16.
        let (e, mut vmcs) = exit(30, 0x03f8_0030, 2);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            format!("{}", vm.stopped.unwrap()),
            "string I/O not emulated: REP OUTS port 0x3f8 rip 0x100000"
        );
        assert_eq!(vmcs.get(GuestNW::Rip), Some(0x10_0000));
        assert!(env.lines.is_empty());
        let mut vm = super::tests::vm();
        // INSW from 0x1f0.
        let (e, mut vmcs) = exit(30, 0x01f0_0019, 2);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert_eq!(
            vm.stopped,
            Some(StopReason::StringIo {
                port: 0x1f0,
                input: true,
                rep: false,
                rip: 0x10_0000
            })
        );
    }

    #[test]
    fn hlt_records_whether_the_timer_may_wake_it() {
        let mut vm = vm();
        let mut env = Env::default();
        let (e, mut vmcs) = exit(12, 0, 1);
        vmcs.fields.insert(GuestNW::Rflags.encoding(), 0x2);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        let v = &mut vm.vcpus[0];
        assert!(v.halted && !v.halted_interruptible);
        v.timer = Some(GuestTimer {
            deadline_tsc: 5,
            vector: 0x30,
        });
        assert!(v.fire_timer(5));
        assert!(v.halted, "IF clear at the HLT: the timer vector waits");
        vmcs.fields.insert(GuestNW::Rflags.encoding(), 0x202);
        handle(&e, &mut vm, 0, &mut vmcs, &mut env);
        assert!(!vm.vcpus[0].halted, "IF set and a vector pending: no halt");
        assert!(vm.vcpus[0].halted_interruptible);
    }

    /// A 64-bit guest with 4 MiB of RAM, tables at 0x1000 mapping VA 0x40_0000 as a user
    /// 2 MiB page -> 0x20_0000 (filled with a pattern) and VA 0x60_0000 not at all, and a
    /// VMCALL exit of it at CPL `cpl` with RAX = `GUEST_DATA`.
    fn channel_guest(permission: channel::Channel, cpl: u64) -> (Vm, MockVmcs) {
        let mut vm = vm();
        let mut ram = vec![0u8; 4 << 20];
        let mut put = |addr: usize, v: u64| ram[addr..addr + 8].copy_from_slice(&v.to_le_bytes());
        put(0x1000, 0x2000 | 7);
        put(0x2000, 0x3000 | 7);
        put(0x3000 + 2 * 8, 0x20_0000 | 7 | 0x80);
        for (i, b) in ram[0x20_0000..0x40_0000].iter_mut().enumerate() {
            *b = (i % 251) as u8 ^ (i >> 12) as u8;
        }
        vm.ram = super::super::vcpu::GuestRam::Test(ram);
        vm.channel = channel::GuestChannel::new(permission);
        let (_, mut vmcs) = exit(18, 0, 3);
        for (f, v) in [
            (GuestNW::Cr0.encoding(), 0x8000_0031),
            (GuestNW::Cr4.encoding(), 0x2020),
            (Guest64::Ia32Efer.encoding(), efer::LME | efer::LMA),
            (GuestNW::Cr3.encoding(), 0x1000),
            (Guest32::SsAccessRights.encoding(), 0xc093 | (cpl << 5)),
        ] {
            vmcs.fields.insert(f, v);
        }
        vm.vcpus[0].regs.0[reg::RAX] = vmcall::GUEST_DATA;
        (vm, vmcs)
    }

    /// One GUEST_DATA call: its outcome and RAX afterwards.
    fn guest_data_call(
        vm: &mut Vm,
        vmcs: &mut MockVmcs,
        env: &mut Env,
        addr: u64,
        len: u64,
        kind: u64,
    ) -> (Outcome, u64) {
        let r = &mut vm.vcpus[0].regs.0;
        r[reg::RAX] = vmcall::GUEST_DATA;
        r[reg::RBX] = addr;
        r[reg::RCX] = len;
        r[reg::RDX] = kind;
        vmcs.fields.insert(GuestNW::Rip.encoding(), 0x10_0000);
        let e = VmExit::decode(vmcs);
        let outcome = handle(&e, vm, 0, vmcs, env);
        assert_eq!(
            vmcs.get(GuestNW::Rip),
            Some(0x10_0003),
            "the call completes"
        );
        (outcome, vm.vcpus[0].regs.0[reg::RAX])
    }

    #[test]
    fn guest_data_vmcall_stages_the_buffer_or_returns_a_code() {
        let mut env = Env::default();
        let (mut vm, mut vmcs) = channel_guest(channel::Channel::Kernel, 0);
        let (outcome, rax) = guest_data_call(&mut vm, &mut vmcs, &mut env, 0x40_0100, 3000, 1);
        assert_eq!((outcome, rax), (Outcome::GuestData { kind: 1 }, 0));
        let want = match &vm.ram {
            super::super::vcpu::GuestRam::Test(r) => r[0x20_0100..0x20_0100 + 3000].to_vec(),
            _ => unreachable!(),
        };
        assert_eq!(vm.channel.staged().map(|(_, b)| b.to_vec()), Some(want));
        vm.channel.clear_staged();
        for (addr, len, kind, code) in [
            (0x40_0000, 8, 7, 5),
            (0x40_0000, 0, 1, 3),
            (0x40_0000, 65537, 1, 3),
            (0x60_0000, 8, 1, 2),
            (0x3f_fffc, 8, 1, 2),
            (0x8000_0000_0000, 8, 1, 2),
        ] {
            let got = guest_data_call(&mut vm, &mut vmcs, &mut env, addr, len, kind);
            assert_eq!(
                got,
                (Outcome::Continue, code),
                "{addr:#x}+{len} kind {kind}"
            );
            assert_eq!(vm.channel.staged(), None);
        }
        // A user process of a kernel-only VM.
        vmcs.fields
            .insert(Guest32::SsAccessRights.encoding(), 0xc0f3);
        let got = guest_data_call(&mut vm, &mut vmcs, &mut env, 0x40_0000, 8, 1);
        assert_eq!(got, (Outcome::Continue, 1));
        assert_eq!(
            format!("{}", vm.channel.stats),
            "3000 bytes in 1 calls accepted; refused: not-allowed 1, bad-address 3, too-long 2, over-budget 0, bad-kind 1"
        );
        assert_eq!(vm.stopped, None);
    }

    #[test]
    fn a_user_channel_opens_guest_data_and_nothing_else_to_cpl_3() {
        let mut env = Env::default();
        let (mut vm, mut vmcs) = channel_guest(channel::Channel::User, 3);
        let got = guest_data_call(&mut vm, &mut vmcs, &mut env, 0x40_0000, 100, 1);
        assert_eq!(got, (Outcome::GuestData { kind: 1 }, 0));
        vm.channel.clear_staged();
        // STOP from CPL 3 still fails.
        vm.vcpus[0].regs.0[reg::RAX] = vmcall::STOP;
        let e = VmExit::decode(&vmcs);
        assert_eq!(
            handle(&e, &mut vm, 0, &mut vmcs, &mut env),
            Outcome::Continue
        );
        assert_eq!(vm.vcpus[0].regs.0[reg::RAX], vmcall::ERROR);
        assert_eq!(vm.stopped, None);
        // Off: refused at any CPL.
        let (mut vm, mut vmcs) = channel_guest(channel::Channel::Off, 0);
        let got = guest_data_call(&mut vm, &mut vmcs, &mut env, 0x40_0000, 100, 1);
        assert_eq!(got, (Outcome::Continue, 1));
    }

    #[test]
    fn accepted_guest_data_reaches_the_log_byte_exact_in_order() {
        let mut env = Env::default();
        let (mut vm, mut vmcs) = channel_guest(channel::Channel::User, 3);
        let ram = match &vm.ram {
            super::super::vcpu::GuestRam::Test(r) => r.clone(),
            _ => unreachable!(),
        };
        let mut log = Vec::new();
        let mut ex = super::super::export::Exporter::new(|b: &[u8]| log.extend_from_slice(b), 1);
        let mut want = Vec::new();
        let calls: [(u64, u64); 6] = [
            (0x40_0000, 3000),
            (0x41_0000, 1),
            (0x60_0000, 50), // unmapped: refused, not in the log
            (0x42_0123, 65536),
            (0x40_0000, 1024),
            (0x5f_ff00, 256),
        ];
        for (addr, len) in calls {
            let (outcome, rax) = guest_data_call(&mut vm, &mut vmcs, &mut env, addr, len, 1);
            if let Outcome::GuestData { kind } = outcome {
                assert_eq!(rax, 0);
                let (k, bytes) = vm.channel.staged().unwrap();
                assert_eq!(k, kind);
                ex.guest_data(vm.id, kind, bytes);
                vm.channel.clear_staged();
                let gpa = (addr - 0x40_0000 + 0x20_0000) as usize;
                want.extend_from_slice(&ram[gpa..gpa + len as usize]);
            } else {
                assert_eq!((addr, rax), (0x60_0000, 2));
            }
        }
        ex.end(0);
        let records = ex.guest_records;
        drop(ex);
        // 3000 = 3 records, 1 = 1, 65536 = 64, 1024 = 1, 256 = 1.
        assert_eq!(records, 70);
        let mut got = Vec::new();
        let mut seqs = Vec::new();
        let mut dec = vmlog::Decoder::from_slice(&log[..]);
        for item in dec.by_ref() {
            if let vmlog::Item::GuestData {
                vm,
                kind,
                seq,
                data,
            } = item.unwrap()
            {
                assert_eq!((vm, kind), (0, vmlog::GUEST_DATA_BUNDLE));
                assert!(!data.is_empty() && data.len() <= vmlog::MAX_GUEST_DATA_RECORD);
                seqs.push(seq);
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(dec.stats().corrupt_frames, 0);
        assert_eq!(dec.stats().gaps(), 0);
        assert_eq!(seqs, (0..70).collect::<Vec<u32>>());
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
        assert_eq!(vm.channel.stats.accepted_bytes, want.len() as u64);
        assert_eq!(vm.channel.stats.bad_address, 1);
    }
}
