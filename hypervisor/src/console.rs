//! The text console on COM1 (0x3f8, 115200 8N1) plus COM2 (0x2f8) as a raw byte channel for
//! the binary sample log.
//!
//! Each port sits behind an [`OwnerLock`]: a spin lock that records which CPU holds it and
//! is held with interrupts *enabled* (whatever state the caller had). A line at 115200 baud
//! takes milliseconds; with interrupts off for that long the sampling tick would miss grid
//! slots, so the tick (which never prints) runs between bytes instead. Lines of different
//! CPUs still never interleave. An exception or panic on the CPU that holds the lock (an
//! interrupt handler cannot print otherwise) finds itself the owner and writes directly,
//! byte by byte through port I/O, so the fatal paths never deadlock; a fatal path on another
//! CPU uses [`force_unlock`].

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, Ordering};

use uart_16550::backend::PioBackend;
use uart_16550::spec::registers::LSR;
use uart_16550::{Config, Uart16550};

use crate::arch::{cpu, lapic};

/// COM1 I/O base: the text console.
pub const COM1: u16 = 0x3f8;
/// COM2 I/O base: the binary sample log.
pub const COM2: u16 = 0x2f8;

/// Line status register offset and its "transmit holding register empty" bit.
const LSR_OFFSET: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Lock word value when no CPU holds it (owners are stored as LAPIC ID + 1).
const FREE: u32 = 0;

/// A spin lock that knows its owner CPU (see the module doc).
pub struct OwnerLock<T> {
    owner: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is only reached through `with`, which hands it out to the one CPU that
// holds `owner` (a re-entrant call on the owner CPU gets no access to `value`).
unsafe impl<T: Send> Sync for OwnerLock<T> {}

/// What [`OwnerLock::with`] found.
pub enum Access<'a, T> {
    /// The lock was taken: exclusive access.
    Locked(&'a mut T),
    /// This CPU already holds the lock (an exception or interrupt on top of the holder):
    /// no access to the value; the caller falls back to something stateless.
    Reentrant,
}

impl<T> OwnerLock<T> {
    pub const fn new(value: T) -> Self {
        OwnerLock {
            owner: AtomicU32::new(FREE),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` holding the lock, spinning (interrupts unchanged) while another CPU holds
    /// it. `me` identifies the calling CPU.
    pub fn with<R>(&self, me: u32, f: impl FnOnce(Access<'_, T>) -> R) -> R {
        let tag = me.wrapping_add(1).max(1);
        loop {
            match self
                .owner
                .compare_exchange_weak(FREE, tag, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(owner) if owner == tag => return f(Access::Reentrant),
                Err(_) => core::hint::spin_loop(),
            }
        }
        // SAFETY: the CAS above made this CPU the owner; until the release below no other
        // CPU gets past it, and this CPU's re-entrant calls take the `Reentrant` branch.
        let r = f(Access::Locked(unsafe { &mut *self.value.get() }));
        self.owner.store(FREE, Ordering::Release);
        r
    }

    /// Whether some CPU holds the lock.
    pub fn is_locked(&self) -> bool {
        self.owner.load(Ordering::Relaxed) != FREE
    }

    /// Releases the lock whoever holds it.
    ///
    /// # Safety
    /// The holder must never touch the value again (it will not return: fatal paths).
    pub unsafe fn force_unlock(&self) {
        self.owner.store(FREE, Ordering::Release);
    }
}

struct Port {
    base: u16,
    uart: Option<Uart16550<PioBackend>>,
}

static CONSOLE: OwnerLock<Port> = OwnerLock::new(Port {
    base: COM1,
    uart: None,
});
static LOG_PORT: OwnerLock<Port> = OwnerLock::new(Port {
    base: COM2,
    uart: None,
});

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

/// The calling CPU as the locks know it (LAPIC ID; 0 before the LAPIC is set up, when only
/// the boot CPU runs).
fn me() -> u32 {
    lapic::id()
}

/// Initialises COM1 and COM2. Returns whether each was found.
pub fn init() -> (bool, bool) {
    let com1 = open(COM1);
    let com2 = open(COM2);
    let found = (com1.is_some(), com2.is_some());
    for (lock, uart) in [(&CONSOLE, com1), (&LOG_PORT, com2)] {
        lock.with(me(), |a| {
            if let Access::Locked(p) = a {
                p.uart = uart;
            }
        });
    }
    found
}

/// Writes `bytes` to the UART at `base` by polling its LSR: the stateless path for a
/// re-entrant print (an exception on top of a print).
fn raw_write(base: u16, bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: `base` is COM1 (0x3f8) or COM2 (0x2f8), owned by this module (no other
        // code touches those ports); reading LSR and writing THR affect only that UART.
        unsafe {
            while cpu::inb(base + LSR_OFFSET) & LSR_THR_EMPTY == 0 {
                cpu::pause();
            }
            cpu::outb(base, b);
        }
    }
}

impl Write for Port {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.uart.as_mut() {
            uart.send_bytes_exact(s.as_bytes());
        }
        Ok(())
    }
}

/// A writer for the re-entrant path.
struct RawPort(u16);

impl Write for RawPort {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        raw_write(self.0, s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    CONSOLE.with(me(), |a| match a {
        Access::Locked(port) => {
            let _ = port.write_fmt(args);
        }
        Access::Reentrant => {
            let _ = RawPort(COM1).write_fmt(args);
        }
    });
}

/// Writes raw bytes to the sample-log port (COM2), polling LSR, interrupts left as they
/// are. Returns false when COM2 is absent (the bytes are dropped).
pub fn log_port_write(bytes: &[u8]) -> bool {
    LOG_PORT.with(me(), |a| match a {
        Access::Locked(port) => match port.uart.as_mut() {
            Some(uart) => {
                uart.send_bytes_exact(bytes);
                true
            }
            None => false,
        },
        Access::Reentrant => false,
    })
}

/// Waits until COM1 (and COM2) have shifted out every byte.
pub fn drain() {
    for lock in [&CONSOLE, &LOG_PORT] {
        lock.with(me(), |a| {
            let base = match a {
                Access::Locked(p) if p.uart.is_none() => return,
                Access::Locked(p) => p.base,
                Access::Reentrant => return,
            };
            // SAFETY: `base` is COM1 (0x3f8) or COM2 (0x2f8), owned by this module, whose
            // lock this CPU holds; reading the LSR only clears its error bits.
            while unsafe { cpu::inb(base + LSR_OFFSET) } & LSR::TRANSMITTER_EMPTY.bits() == 0 {
                cpu::pause();
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
    // SAFETY: the caller never returns to the holder (see # Safety), so the holder never
    // touches the COM1 `Port` again; the new owner gets it alone.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_lock_is_exclusive_and_reentrant_on_its_owner() {
        let lock = OwnerLock::new(5u32);
        let seen = lock.with(1, |a| match a {
            Access::Locked(v) => {
                *v += 1;
                assert!(lock.is_locked());
                // The same CPU again (an exception inside the print): no deadlock, no access.
                let inner = lock.with(1, |b| matches!(b, Access::Reentrant));
                assert!(inner);
                *v
            }
            Access::Reentrant => 0,
        });
        assert_eq!(seen, 6);
        assert!(!lock.is_locked());
        // A force-unlocked lock can be taken by another CPU.
        lock.with(2, |a| {
            assert!(matches!(a, Access::Locked(_)));
            // SAFETY: test: nothing touches the value after this.
            unsafe { lock.force_unlock() };
        });
        assert!(!lock.is_locked());
    }

    #[test]
    fn owner_lock_serialises_threads() {
        use std::sync::Arc;
        let lock = Arc::new(OwnerLock::new(0u64));
        let threads: Vec<_> = (0..4u32)
            .map(|cpu| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        lock.with(cpu, |a| {
                            if let Access::Locked(v) = a {
                                // A non-atomic read-modify-write: lost updates would show.
                                let x = *v;
                                std::hint::black_box(());
                                *v = x + 1;
                            }
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            lock.with(9, |a| if let Access::Locked(v) = a { *v } else { 0 }),
            40_000
        );
    }
}
