//! VM entry and the VM-exit landing point: the only code that switches between host and
//! guest general-purpose registers.

use core::arch::naked_asm;
use core::fmt;

use super::instr::CurrentVmcs;
use super::root::{VmcsRegion, VmxRoot};
use super::vmcs::{HostNW, ReadOnly32, VmFail, Vmcs};
use crate::arch::cpu;

/// The VMCS encoding of HOST_RSP, which `vmx_enter` writes with VMWRITE.
const HOST_RSP: u32 = HostNW::Rsp as u32;

/// Guest general-purpose registers, indexed by the hardware register number (0 = RAX ...
/// 15 = R15; the RSP slot is unused: guest RSP lives in the VMCS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestRegs(pub [u64; 16]);

/// Register numbers (SDM table 28-3 uses the same numbering for CR-access exits).
pub mod reg {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
    pub const R8: usize = 8;
    pub const R9: usize = 9;
    pub const R10: usize = 10;
    pub const R11: usize = 11;
    pub const R12: usize = 12;
    pub const R13: usize = 13;
    pub const R14: usize = 14;
    pub const R15: usize = 15;
}

const _: () = assert!(core::mem::size_of::<GuestRegs>() == 128);

/// Why [`VmxRoot::enter`] did not enter the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnterError {
    /// The VMCS passed is not the current one (load it with [`VmxRoot::load`] first).
    NotCurrent { vmcs: u64 },
    /// A host-state field does not describe this CPU, so the exit would not land safely.
    HostState(&'static str),
    /// VMLAUNCH/VMRESUME itself failed.
    Fail(VmFail),
}

impl fmt::Display for EnterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnterError::NotCurrent { vmcs } => write!(f, "VMCS {vmcs:#x} is not current"),
            EnterError::HostState(what) => write!(f, "host state: {what}"),
            EnterError::Fail(fail) => write!(f, "{fail}"),
        }
    }
}

impl VmxRoot {
    /// Enters the guest of `vmcs` (VMLAUNCH if `launched` is false, else VMRESUME) with the
    /// general-purpose registers `regs`, and returns when the guest exits (`Ok`, `regs`
    /// then hold the guest's values) or if the entry failed.
    ///
    /// Safe by construction: `self` proves VMX root operation; `vmcs` must be the region
    /// this CPU made current through [`VmxRoot::load`]; and the host-state fields the exit
    /// depends on (HOST_RIP = [`vmexit_landing`], HOST_CR3, HOST_GDTR/IDTR bases) are
    /// checked against this CPU before entering. HOST_RSP is written by the entry itself.
    pub fn enter(
        &mut self,
        vmcs: &VmcsRegion,
        regs: &mut GuestRegs,
        launched: bool,
    ) -> Result<(), EnterError> {
        if self.current_vmcs() != Some(vmcs.pa()) {
            return Err(EnterError::NotCurrent { vmcs: vmcs.pa() });
        }
        let current = CurrentVmcs;
        if current.read(HostNW::Rip) != vmexit_landing as *const () as u64 {
            return Err(EnterError::HostState(
                "HOST_RIP is not the VM-exit landing point",
            ));
        }
        if current.read(HostNW::Cr3) != cpu::read_cr3() {
            return Err(EnterError::HostState("HOST_CR3 is not this CPU's CR3"));
        }
        if current.read(HostNW::GdtrBase) != cpu::read_gdtr().0 {
            return Err(EnterError::HostState(
                "HOST_GDTR_BASE is not this CPU's GDT",
            ));
        }
        if current.read(HostNW::IdtrBase) != cpu::read_idtr().0 {
            return Err(EnterError::HostState(
                "HOST_IDTR_BASE is not this CPU's IDT",
            ));
        }
        // SAFETY: VMX root operation (`self`); `vmcs` is current (checked against what
        // `load` made current); HOST_RIP is vmexit_landing and the host CR3/GDT/IDT are
        // this CPU's (checked above), so the exit resumes here with the hypervisor's
        // address space and handlers; vmx_enter saves and restores every callee-saved
        // register and writes HOST_RSP itself.
        let status = unsafe { vmx_enter(regs, launched as u64) };
        match status {
            0 => Ok(()),
            1 => Err(EnterError::Fail(VmFail::Invalid)),
            _ => Err(EnterError::Fail(VmFail::Valid(
                current.read(ReadOnly32::VmInstructionError) as u32,
            ))),
        }
    }
}

/// The tail both ways out of `vmx_enter` share: pops the callee-saved registers it pushed
/// (in reverse) and returns to its caller.
macro_rules! pop_host_callee_saved_and_ret {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop rbx\npop rbp\nret"
    };
}

/// `vmx_enter(regs, resume) -> 0 exit | 1 VMfailInvalid | 2 VMfailValid`.
///
/// Pushes the callee-saved registers and `regs`, writes HOST_RSP, loads the guest
/// registers and enters. The exit lands in [`vmexit_landing`] with that same stack.
#[unsafe(naked)]
unsafe extern "C" fn vmx_enter(regs: *mut GuestRegs, resume: u64) -> u64 {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        "mov rax, {host_rsp}",
        "vmwrite rax, rsp",
        "jc 5f",
        "jz 6f",
        "test rsi, rsi", // flags: ZF=1 -> launch; MOVs below keep the flags
        "mov rax, [rdi + 0]",
        "mov rcx, [rdi + 8]",
        "mov rdx, [rdi + 16]",
        "mov rbx, [rdi + 24]",
        "mov rbp, [rdi + 40]",
        "mov rsi, [rdi + 48]",
        "mov r8, [rdi + 64]",
        "mov r9, [rdi + 72]",
        "mov r10, [rdi + 80]",
        "mov r11, [rdi + 88]",
        "mov r12, [rdi + 96]",
        "mov r13, [rdi + 104]",
        "mov r14, [rdi + 112]",
        "mov r15, [rdi + 120]",
        "mov rdi, [rdi + 56]",
        "jnz 2f",
        "vmlaunch",
        "jmp 3f",
        "2:",
        "vmresume",
        "3:",
        // Entry failed: CF = VMfailInvalid, ZF = VMfailValid. The guest values now in the
        // GPRs are dropped.
        "jc 5f",
        "6:",
        "mov eax, 2",
        "jmp 4f",
        "5:",
        "mov eax, 1",
        "4:",
        "pop rdi",
        pop_host_callee_saved_and_ret!(),
        host_rsp = const HOST_RSP,
    );
}

/// HOST_RIP: runs with the stack `vmx_enter` left (its saved `regs` pointer on top), saves
/// the guest registers and returns 0 from `vmx_enter`.
///
/// # Safety
/// Never called: only its address is used, as the VMCS HOST_RIP of a VMCS entered through
/// [`VmxRoot::enter`].
#[unsafe(naked)]
pub unsafe extern "C" fn vmexit_landing() -> ! {
    naked_asm!(
        "push rdi",
        "mov rdi, [rsp + 8]",
        "mov [rdi + 0], rax",
        "mov [rdi + 8], rcx",
        "mov [rdi + 16], rdx",
        "mov [rdi + 24], rbx",
        "mov [rdi + 40], rbp",
        "mov [rdi + 48], rsi",
        "mov [rdi + 64], r8",
        "mov [rdi + 72], r9",
        "mov [rdi + 80], r10",
        "mov [rdi + 88], r11",
        "mov [rdi + 96], r12",
        "mov [rdi + 104], r13",
        "mov [rdi + 112], r14",
        "mov [rdi + 120], r15",
        "pop rax",
        "mov [rdi + 56], rax",
        "pop rdi",
        "xor eax, eax",
        pop_host_callee_saved_and_ret!(),
    );
}
