//! The legacy 8259A PIC pair: remapped away from the exception vectors and fully masked, so
//! that only the LAPIC delivers interrupts to the hypervisor.

use crate::arch::cpu::{inb, outb};
use crate::arch::interrupts::vectors;

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
const ICW1_INIT_ICW4: u8 = 0x11;
const ICW4_8086: u8 = 0x01;
/// A write to port 0x80 takes about 1 us: the classic delay between PIC commands.
pub const DELAY_PORT: u16 = 0x80;

/// Remaps IRQs 0-15 to [`vectors::PIC_BASE`].. and masks them all.
pub fn disable() {
    let io_wait = || {
        // SAFETY: port 0x80 is the POST diagnostic port; writes are ignored.
        unsafe { outb(DELAY_PORT, 0) }
    };
    // SAFETY: the standard 8259A initialisation sequence (ICW1-ICW4) followed by masking
    // every line (OCW1); it only affects legacy interrupt routing, which nothing uses.
    unsafe {
        outb(MASTER_CMD, ICW1_INIT_ICW4);
        io_wait();
        outb(SLAVE_CMD, ICW1_INIT_ICW4);
        io_wait();
        outb(MASTER_DATA, vectors::PIC_BASE);
        io_wait();
        outb(SLAVE_DATA, vectors::PIC_BASE + 8);
        io_wait();
        outb(MASTER_DATA, 4); // slave on IRQ2
        io_wait();
        outb(SLAVE_DATA, 2); // cascade identity
        io_wait();
        outb(MASTER_DATA, ICW4_8086);
        io_wait();
        outb(SLAVE_DATA, ICW4_8086);
        io_wait();
        outb(MASTER_DATA, 0xff);
        outb(SLAVE_DATA, 0xff);
        let _ = inb(MASTER_DATA);
    }
}
