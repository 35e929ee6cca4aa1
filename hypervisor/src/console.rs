//! The text console on COM1 (0x3f8, 115200 8N1) behind a spin lock taken with interrupts
//! off, plus COM2 (0x2f8) as a raw byte channel for the binary sample log.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::spec::registers::LSR;
use uart_16550::{Config, Uart16550};

use crate::arch::cpu;

/// COM1 I/O base: the text console.
pub const COM1: u16 = 0x3f8;
/// COM2 I/O base: the binary sample log.
pub const COM2: u16 = 0x2f8;

struct Port {
    uart: Option<Uart16550<PioBackend>>,
}

static CONSOLE: Mutex<Port> = Mutex::new(Port { uart: None });
static LOG_PORT: Mutex<Port> = Mutex::new(Port { uart: None });

fn open(base: u16) -> Option<Uart16550<PioBackend>> {
    // SAFETY: COM1/COM2 are the standard PC serial ports; only this module touches them.
    let mut uart = unsafe { Uart16550::new_port(base) }.ok()?;
    let config = Config {
        baud_rate: uart_16550::BaudRate::Baud115200,
        ..Config::DEFAULT
    };
    uart.init(config).ok()?;
    Some(uart)
}

/// Initialises COM1 and COM2. Returns whether each was found.
pub fn init() -> (bool, bool) {
    let com1 = open(COM1);
    let com2 = open(COM2);
    let found = (com1.is_some(), com2.is_some());
    cpu::without_interrupts(|| {
        CONSOLE.lock().uart = com1;
        LOG_PORT.lock().uart = com2;
    });
    found
}

impl Write for Port {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.uart.as_mut() {
            uart.send_bytes_exact(s.as_bytes());
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    cpu::without_interrupts(|| {
        let _ = CONSOLE.lock().write_fmt(args);
    });
}

/// Writes raw bytes to the sample-log port (COM2), polling LSR. Returns false when COM2 is
/// absent (the bytes are dropped).
pub fn log_port_write(bytes: &[u8]) -> bool {
    cpu::without_interrupts(|| match LOG_PORT.lock().uart.as_mut() {
        Some(uart) => {
            uart.send_bytes_exact(bytes);
            true
        }
        None => false,
    })
}

/// Waits until COM1 (and COM2) have shifted out every byte.
pub fn drain() {
    for port in [&CONSOLE, &LOG_PORT] {
        cpu::without_interrupts(|| {
            if let Some(uart) = port.lock().uart.as_mut() {
                while !uart.lsr().contains(LSR::TRANSMITTER_EMPTY) {
                    cpu::pause();
                }
            }
        });
    }
}

/// Releases the console lock whoever holds it.
///
/// # Safety
/// Only for paths that never return to the holder (fatal exception, panic): output may
/// interleave with the interrupted writer's.
pub unsafe fn force_unlock() {
    // SAFETY: guaranteed by the caller.
    unsafe { CONSOLE.force_unlock() };
}

/// Prints to the COM1 console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the COM1 console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
