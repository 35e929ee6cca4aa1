//! The 8254 PIT, used only as a known-rate reference (1.193182 MHz) to measure the TSC and
//! the LAPIC timer. Channel 2 runs one-shot (mode 0) gated through port 0x61; its OUT pin,
//! readable as port 0x61 bit 5, goes high when the count reaches zero.

use crate::arch::cpu::{inb, outb};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

const CHANNEL2_DATA: u16 = 0x42;
const COMMAND: u16 = 0x43;
const PORT_B: u16 = 0x61;
/// Port B bit 0: channel 2 gate.
const PORT_B_GATE2: u8 = 1 << 0;
/// Port B bit 1: speaker data enable (kept off).
const PORT_B_SPEAKER: u8 = 1 << 1;
/// Port B bit 5: channel 2 OUT.
const PORT_B_OUT2: u8 = 1 << 5;
/// Command: channel 2, access lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
const CMD_CH2_MODE0: u8 = 0b1011_0000;

/// Counts `ticks` PIT ticks on channel 2; calls `start` right after the count begins and
/// `end` as soon as it expires. Returns false if OUT2 never rose (no PIT): the loop gives up
/// after `spin_limit` polls.
pub fn time_window(
    ticks: u16,
    spin_limit: u64,
    mut start: impl FnMut(),
    mut end: impl FnMut(),
) -> bool {
    // SAFETY: programming channel 2 and its gate only affects the PC speaker timer, which
    // nothing else uses; the speaker stays disabled.
    unsafe {
        let b = inb(PORT_B) & !(PORT_B_SPEAKER | PORT_B_GATE2);
        outb(PORT_B, b);
        outb(COMMAND, CMD_CH2_MODE0);
        outb(CHANNEL2_DATA, ticks as u8);
        outb(CHANNEL2_DATA, (ticks >> 8) as u8);
        outb(PORT_B, b | PORT_B_GATE2);
    }
    start();
    let mut spins = 0u64;
    // SAFETY: reading port B has no side effect.
    while unsafe { inb(PORT_B) } & PORT_B_OUT2 == 0 {
        spins += 1;
        if spins > spin_limit {
            return false;
        }
    }
    end();
    true
}
