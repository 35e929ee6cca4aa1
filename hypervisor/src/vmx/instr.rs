//! The VMX instructions and the few privileged reads/writes the VMX setup needs, each
//! wrapped once. The VMX success/failure status (CF = VMfailInvalid, ZF = VMfailValid,
//! SDM 31.2) is captured inside the same `asm!` block that ran the instruction.
//!
//! Side-effecting wrappers are `unsafe fn`; pure reads of CPU state are safe.

use core::arch::asm;

use super::msr::Msr;
use super::vmcs::{ReadOnly32, VmFail, Vmcs, VmcsField};

/// Turns the flags a VMX instruction left into a result. `cf`/`zf` come from `setc`/`setz`
/// in the instruction's own asm block.
fn status(cf: u8, zf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        Err(VmFail::Valid(vm_instruction_error()))
    } else {
        Ok(())
    }
}

/// The VM-instruction error of the current VMCS (0 if there is none).
fn vm_instruction_error() -> u32 {
    CurrentVmcs
        .read_raw(ReadOnly32::VmInstructionError.encoding())
        .unwrap_or(0) as u32
}

/// VMXON with the region at host-physical `region`.
///
/// # Safety
/// CR4.VMXE must be set, CR0/CR4 must satisfy the fixed bits, and `region` must be a
/// 4 KiB-aligned, zeroed frame holding the revision identifier that stays reserved for
/// VMX until VMXOFF.
pub unsafe fn vmxon(region: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees the VMXON preconditions; the operand is a local.
    unsafe {
        asm!("vmxon [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &region,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    status(cf, zf)
}

/// VMXOFF: leaves VMX operation.
///
/// # Safety
/// In VMX root operation, outside SMX; no VMCS of this CPU is used afterwards (its
/// contents stay in memory, not in the CPU).
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("vmxoff", "setc {cf}", "setz {zf}",
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    status(cf, zf)
}

/// VMCLEAR: initialises the VMCS at `vmcs` and makes it inactive.
///
/// # Safety
/// In VMX root operation; `vmcs` is a VMCS region holding the revision identifier.
pub unsafe fn vmclear(vmcs: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX root operation and a valid VMCS region.
    unsafe {
        asm!("vmclear [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &vmcs,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    status(cf, zf)
}

/// VMPTRLD: makes the VMCS at `vmcs` current.
///
/// # Safety
/// In VMX root operation; `vmcs` is a cleared or previously used VMCS region.
pub unsafe fn vmptrld(vmcs: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX root operation and a valid VMCS region.
    unsafe {
        asm!("vmptrld [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &vmcs,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    status(cf, zf)
}

/// INVEPT type (SDM 31.3).
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum InveptType {
    SingleContext = 1,
    AllContext = 2,
}

/// INVEPT for the EPT hierarchy `eptp` (ignored for all-context).
///
/// # Safety
/// In VMX root operation with the type supported (IA32_VMX_EPT_VPID_CAP).
pub unsafe fn invept(kind: InveptType, eptp: u64) -> Result<(), VmFail> {
    let desc: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX root operation; the descriptor is a local.
    unsafe {
        asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) kind as u64,
             d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    status(cf, zf)
}

/// INVVPID type (SDM 31.3).
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum InvvpidType {
    IndividualAddress = 0,
    SingleContext = 1,
    AllContext = 2,
}

/// INVVPID for `vpid` (and `address` for the individual-address type).
///
/// # Safety
/// In VMX root operation with the type supported.
pub unsafe fn invvpid(kind: InvvpidType, vpid: u16, address: u64) -> Result<(), VmFail> {
    let desc: [u64; 2] = [vpid as u64, address];
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX root operation; the descriptor is a local.
    unsafe {
        asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) kind as u64,
             d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    status(cf, zf)
}

/// The current VMCS of this CPU, through VMREAD/VMWRITE.
pub struct CurrentVmcs;

impl Vmcs for CurrentVmcs {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmFail> {
        let value: u64;
        let (cf, zf): (u8, u8);
        // SAFETY: VMREAD only reads the current VMCS; outside VMX operation or without a
        // current VMCS it fails with a status (or #UD outside VMX, which the hypervisor
        // never reaches: CurrentVmcs is used only after VMXON succeeded).
        unsafe {
            asm!("vmread {v}, {e}", "setc {cf}", "setz {zf}", v = out(reg) value,
                 e = in(reg) encoding as u64, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack, nomem));
        }
        if cf != 0 {
            return Err(VmFail::Invalid);
        }
        if zf != 0 {
            // Do not recurse through vm_instruction_error for its own field.
            return Err(VmFail::Valid(0));
        }
        Ok(value)
    }

    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: VMWRITE changes only the current VMCS, which is inert until the next VM
        // entry validates it; CurrentVmcs is used only in VMX root operation.
        unsafe {
            asm!("vmwrite {e}, {v}", "setc {cf}", "setz {zf}", e = in(reg) encoding as u64,
                 v = in(reg) value, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack, nomem));
        }
        status(cf, zf)
    }
}

/// CPUID leaf/subleaf: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID has no side effects; RBX is reserved by LLVM, so it is saved in a
    // scratch register around the instruction.
    unsafe {
        asm!("mov {t:r}, rbx", "cpuid", "xchg {t:r}, rbx", t = out(reg) b,
             inout("eax") leaf => a, inout("ecx") subleaf => c, out("edx") d,
             options(nostack, nomem, preserves_flags));
    }
    [a, b, c, d]
}

/// RDMSR.
///
/// # Safety
/// `msr` must exist on this CPU (else #GP).
pub unsafe fn rdmsr(msr: Msr) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; reading has no side effects for the
    // MSRs this hypervisor reads.
    unsafe {
        asm!("rdmsr", in("ecx") msr.0, out("eax") lo, out("edx") hi, options(nostack, nomem, preserves_flags));
    }
    (hi as u64) << 32 | lo as u64
}

/// WRMSR.
///
/// # Safety
/// `msr` must exist and `value` be valid for it; the write's effect must be intended.
pub unsafe fn wrmsr(msr: Msr, value: u64) {
    // SAFETY: the caller guarantees the write is valid and intended.
    unsafe {
        asm!("wrmsr", in("ecx") msr.0, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags));
    }
}

/// RDTSC.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is never set here).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, nomem, preserves_flags));
    }
    (hi as u64) << 32 | lo as u64
}

macro_rules! read_cr {
    ($name:ident, $reg:literal) => {
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effects (CPL 0).
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nostack, nomem, preserves_flags)) };
            v
        }
    };
}
read_cr!(read_cr0, "cr0");
read_cr!(read_cr3, "cr3");
read_cr!(read_cr4, "cr4");

/// Writes CR0.
///
/// # Safety
/// The new value must keep the current execution environment valid.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep the current execution environment valid.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

macro_rules! read_seg {
    ($name:ident, $reg:literal) => {
        pub fn $name() -> u16 {
            let v: u16;
            // SAFETY: reading a segment selector has no side effects.
            unsafe { asm!(concat!("mov {0:x}, ", $reg), out(reg) v, options(nostack, nomem, preserves_flags)) };
            v
        }
    };
}
read_seg!(read_cs, "cs");
read_seg!(read_ss, "ss");
read_seg!(read_ds, "ds");
read_seg!(read_es, "es");
read_seg!(read_fs, "fs");
read_seg!(read_gs, "gs");

/// STR: the task register selector.
pub fn read_tr() -> u16 {
    let v: u16;
    // SAFETY: STR only reads the task register.
    unsafe { asm!("str {0:x}", out(reg) v, options(nostack, nomem, preserves_flags)) };
    v
}

/// A descriptor-table register (GDTR/IDTR): (base, limit).
fn read_dtr(idt: bool) -> (u64, u16) {
    let mut buf = [0u8; 10];
    // SAFETY: SGDT/SIDT store 10 bytes into the local buffer.
    unsafe {
        if idt {
            asm!("sidt [{}]", in(reg) buf.as_mut_ptr(), options(nostack, preserves_flags));
        } else {
            asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack, preserves_flags));
        }
    }
    let limit = u16::from_le_bytes([buf[0], buf[1]]);
    let mut base = [0u8; 8];
    base.copy_from_slice(&buf[2..10]);
    (u64::from_le_bytes(base), limit)
}

pub fn read_gdtr() -> (u64, u16) {
    read_dtr(false)
}

pub fn read_idtr() -> (u64, u16) {
    read_dtr(true)
}

/// The base address of the TSS that `selector` names in the GDT at `gdt_base` (a 16-byte
/// system descriptor in long mode).
pub fn tss_base(gdt_base: u64, selector: u16) -> u64 {
    let at = gdt_base + (selector & !7) as u64;
    // SAFETY: the GDT is mapped (the CPU uses it) and a loaded TR selector names a valid
    // 16-byte TSS descriptor inside it.
    let (lo, hi) = unsafe {
        (
            core::ptr::read_volatile(at as *const u64),
            core::ptr::read_volatile((at + 8) as *const u64),
        )
    };
    ((lo >> 16) & 0xff_ffff) | ((lo >> 56) & 0xff) << 24 | (hi & 0xffff_ffff) << 32
}

/// Sends the current NMI on to the host's NMI handler (an NMI that VM exit consumed but
/// was not the sampler's).
pub fn reflect_nmi_to_host() {
    // SAFETY: INT 2 runs the host IDT's NMI handler in the current context, which is what
    // the NMI would have done had it arrived in host mode.
    unsafe { asm!("int 2", options(nostack)) };
}

/// STI; HLT: waits for the next interrupt (STI's one-instruction shadow makes the pair
/// atomic, so an interrupt cannot slip in between and be missed). Interrupts stay enabled.
pub fn wait_for_interrupt() {
    // SAFETY: the host IDT handles every interrupt that can arrive; the hypervisor runs
    // with interrupts enabled outside its VM-entry path.
    unsafe { asm!("sti", "hlt", options(nostack, nomem)) };
}

/// STI. A VM exit clears RFLAGS.IF; the run loop re-enables interrupts right after it so
/// that the sampling timer reaches the host while it handles the exit.
pub fn enable_interrupts() {
    // SAFETY: the host IDT handles every interrupt that can arrive.
    unsafe { asm!("sti", options(nostack, nomem)) };
}

/// Reads RFLAGS.
pub fn read_rflags() -> u64 {
    let v: u64;
    // SAFETY: PUSHFQ/POP only touch the stack slot they use.
    unsafe { asm!("pushfq", "pop {}", out(reg) v, options(nomem, preserves_flags)) };
    v
}

/// CLI: the run loop takes its guest samples and enters the guest with interrupts off, so
/// that the sampling tick cannot slip between claiming a slot and recording its sample.
pub fn disable_interrupts() {
    // SAFETY: CLI only masks maskable interrupts; nothing relies on them being on here.
    unsafe { asm!("cli", options(nostack, nomem)) };
}
