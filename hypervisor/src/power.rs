//! Stopping the machine (docs/contracts.md, "Stop"): print the status line, drain the
//! UARTs, then try every power-off path this project's platforms offer.

use crate::arch::{cpu, platform};

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

/// Prints `hv: stop status=N reason=...`, waits for the serial ports to drain and powers
/// off (emulator power-off devices; there is no ACPI S5 path yet); halts forever if
/// nothing did.
pub fn stop(status: u8, reason: &str) -> ! {
    // SAFETY: nothing below waits for an interrupt: the console drains by polling and the
    // CPU then halts for good.
    unsafe { cpu::disable_interrupts() };
    crate::println!("hv: stop status={status} reason={reason}");
    crate::console::drain();
    platform::emulator_power_off(status);
    cpu::halt_forever()
}
