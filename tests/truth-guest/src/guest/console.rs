//! The console: a 16550 at 0x3f8, used as the hypervisor emulates it (THR writes, LSR
//! reads; no initialisation writes).

use core::fmt;

use super::arch;

const COM1: u16 = 0x3f8;
const THR: u16 = COM1;
const LSR: u16 = COM1 + 5;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Give up waiting for THR-empty after this many polls (a missing UART must not hang us).
const MAX_POLLS: u32 = 100_000;

/// Writes to COM1; `write!(Console, ...)`.
pub struct Console;

impl Console {
    fn put(byte: u8) {
        for _ in 0..MAX_POLLS {
            // SAFETY: reading the UART's line status register has no memory effect.
            if unsafe { arch::inb(LSR) } & LSR_THR_EMPTY != 0 {
                break;
            }
        }
        // SAFETY: writing the UART's transmit register has no memory effect.
        unsafe { arch::outb(THR, byte) }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(Self::put);
        Ok(())
    }
}

/// `println!` for the guest.
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::guest::console::Console, $($arg)*);
    }};
}
pub(crate) use kprintln;
