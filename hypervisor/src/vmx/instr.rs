//! The VMX instructions (VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMREAD, VMWRITE, INVEPT,
//! INVVPID; VMLAUNCH/VMRESUME are in [`super::entry`]), each wrapped once. The general
//! instructions (MSRs, control registers, CPUID, TSC, RFLAGS.IF, HLT) are wrapped once in
//! [`crate::arch::cpu`]. The VMX success/failure status (CF = VMfailInvalid, ZF = VMfailValid,
//! SDM 31.2) is captured inside the same `asm!` block that ran the instruction.
//!
//! Side-effecting wrappers are `unsafe fn`; pure reads of CPU state are safe.

use core::arch::asm;

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
    // SAFETY: the caller guarantees VMX root operation outside SMX and that no VMCS of
    // this CPU is used afterwards.
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
