//! Stopping the machine (docs/contracts.md, "Stop"): print the status line, drain the
//! UARTs, then try every power-off path this project's platforms offer.

use crate::arch::cpu;

/// Exit statuses. QEMU's isa-debug-exit turns status N into process exit `(N << 1) | 1`.
pub mod status {
    /// Every guest stopped, or `run_ms` elapsed.
    pub const OK: u8 = 0;
    /// A guest or the VMM failed.
    pub const FAILURE: u8 = 1;
    /// Boot information or command line unusable.
    pub const BAD_BOOT: u8 = 2;
    /// No usable VT-x (contract: status 3).
    pub const VMX_UNAVAILABLE: u8 = 3;
    /// A Rust panic in the hypervisor.
    pub const PANIC: u8 = 4;
    /// An unhandled CPU exception in the hypervisor.
    pub const EXCEPTION: u8 = 5;
}

/// QEMU isa-debug-exit (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
const QEMU_DEBUG_EXIT: u16 = 0xf4;
/// Bochs: writing the bytes of "Shutdown" here powers the emulator off.
const BOCHS_SHUTDOWN: u16 = 0x8900;

/// Prints `hv: stop status=N reason=...`, waits for the serial ports to drain and powers
/// off; halts forever if nothing did.
pub fn stop(status: u8, reason: &str) -> ! {
    cpu::disable_interrupts();
    crate::println!("hv: stop status={status} reason={reason}");
    crate::console::drain();
    // SAFETY: both ports are emulator power-off devices (or unused on real hardware); the
    // machine is being shut down, so nothing depends on what happens after.
    unsafe {
        cpu::outl(QEMU_DEBUG_EXIT, u32::from(status));
        for b in b"Shutdown" {
            cpu::outb(BOCHS_SHUTDOWN, *b);
        }
    }
    loop {
        cpu::disable_interrupts();
        cpu::hlt();
    }
}
