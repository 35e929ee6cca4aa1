//! Power-off devices of the emulators this project runs on.

use super::cpu;

/// QEMU isa-debug-exit (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
const QEMU_DEBUG_EXIT: u16 = 0xf4;
/// Bochs: writing the bytes of "Shutdown" here powers the emulator off.
const BOCHS_SHUTDOWN: u16 = 0x8900;

/// Asks the emulator to power off: QEMU's isa-debug-exit with `status` (QEMU then exits
/// with `(status << 1) | 1`), then Bochs's shutdown port. Returns if neither device exists
/// (real hardware, or an emulator without them).
pub fn emulator_power_off(status: u8) {
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit and port 0x8900 Bochs's shutdown port;
    // nothing else on the platforms this hypervisor supports decodes them, so the writes
    // either stop the machine or are ignored. Callers are stopping the machine anyway.
    unsafe {
        cpu::outl(QEMU_DEBUG_EXIT, u32::from(status));
        for b in b"Shutdown" {
            cpu::outb(BOCHS_SHUTDOWN, *b);
        }
    }
}
