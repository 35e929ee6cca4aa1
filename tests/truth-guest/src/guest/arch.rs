//! Every privileged or side-effecting instruction the guest uses, wrapped once.

use x86_64::PhysAddr;
use x86_64::instructions::port::Port;
use x86_64::registers::control::{Cr2, Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;

/// VMCALL function numbers (docs/contracts.md, "Paravirtual calls").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Hypercall {
    /// RBX = delay in ns, RCX = vector: a one-shot timer interrupt.
    SetTimer = 0x01,
    /// RBX = exit status: the VM stops.
    Stop = 0x02,
    /// Returns the host TSC in RAX.
    TscNow = 0x03,
}

/// CPUID leaf 1, ECX bit 31: "running under a hypervisor".
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;

/// The `VMCALL` encoding (0f 01 c1), for the #UD probe to step over.
pub const VMCALL_BYTES: [u8; 3] = [0x0f, 0x01, 0xc1];

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the TSC; CR4.TSD is clear (ring 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID.1:ECX[31], the hypervisor-present bit.
pub fn hypervisor_bit() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & CPUID_1_ECX_HYPERVISOR != 0
}

/// Issues `VMCALL` with `RAX = call`, `RBX = rbx`, `RCX = rcx`; returns `RAX`.
///
/// # Safety
/// Must run where VMCALL is either handled by the hypervisor or its #UD is caught (the
/// probe in `hv`); `Stop` ends the VM, `SetTimer` needs an IDT entry for `rcx`.
pub unsafe fn vmcall(call: Hypercall, rbx: u64, rcx: u64) -> u64 {
    let mut rax = call as u64;
    // SAFETY: the caller guarantees VMCALL is handled (or #UD caught, which resumes after
    // the 3-byte instruction with RAX unchanged). RBX is reserved by LLVM, so it is
    // swapped in and out around the call.
    unsafe {
        core::arch::asm!(
            "xchg {b}, rbx",
            "vmcall",
            "xchg {b}, rbx",
            b = inout(reg) rbx => _,
            inout("rax") rax,
            inout("rcx") rcx => _,
        );
    }
    rax
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must be one whose write has no effect on memory safety (UART THR, the
/// power-off ports).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: per the caller.
    unsafe { Port::new(port).write(value) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The port must be one whose read has no side effect on memory safety (UART LSR).
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: per the caller.
    unsafe { Port::new(port).read() }
}

/// Switches page tables.
///
/// # Safety
/// `root` must be a 4 KiB-aligned PML4 that maps the running code, its stack and every
/// static the kernel touches, identically to the current tables.
pub unsafe fn write_cr3(root: u64) {
    let frame = PhysFrame::containing_address(PhysAddr::new(root));
    // SAFETY: per the caller.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) }
}

/// The current page-table root.
pub fn read_cr3() -> u64 {
    Cr3::read().0.start_address().as_u64()
}

/// The last page-fault address.
pub fn read_cr2() -> u64 {
    Cr2::read_raw()
}

/// `sti; hlt; cli`: sleeps until an interrupt has been handled.
pub fn halt_until_interrupt() {
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
}

/// Stops the CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
