//! The guest's console: a 16550A UART model at 0x3f8 (transmit only; nothing is ever
//! received). Bytes written to THR are collected into lines; each complete line is handed
//! out to be relayed as `[NAME] line`.
//!
//! There is no interrupt line, but the interrupt *identification* is modelled: a driver
//! that polls (Linux's 8250 without an IRQ runs its interrupt handler from a timer) finds
//! the "THR empty" condition in IIR when IER enables it, as on the chip. Transmission is
//! instantaneous, so THR is always empty again right after a write.

/// Base port of the modelled UART (COM1).
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports the UART decodes.
pub const PORTS: u16 = 8;
/// Longest line kept; longer ones are cut into pieces of this size.
pub const LINE_MAX: usize = 240;

/// Register offsets (DLAB = 0 unless noted).
mod reg {
    pub const DATA: u16 = 0; // RBR/THR, DLL with DLAB
    pub const IER: u16 = 1; // DLM with DLAB
    pub const IIR_FCR: u16 = 2;
    pub const LCR: u16 = 3;
    pub const MCR: u16 = 4;
    pub const LSR: u16 = 5;
    pub const MSR: u16 = 6;
    pub const SCR: u16 = 7;
}

const LCR_DLAB: u8 = 0x80;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;
const IIR_NO_INTERRUPT: u8 = 0x01;
/// IIR interrupt identification "transmitter holding register empty".
const IIR_THRE: u8 = 0x02;
/// IER bit enabling the THR-empty interrupt.
const IER_THRI: u8 = 0x02;
const IIR_FIFO_ENABLED: u8 = 0xc0;

/// The UART state.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    /// The THR-empty interrupt condition: set when THR empties (after every write) or
    /// when IER enables it, cleared by an IIR read that reports it (16550A data sheet,
    /// "interrupt reset control").
    thre_pending: bool,
    line: [u8; LINE_MAX],
    len: usize,
    /// Bytes the guest wrote to THR.
    pub bytes_out: u64,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Uart16550 {
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fifo: false,
            thre_pending: false,
            line: [0; LINE_MAX],
            len: 0,
            bytes_out: 0,
        }
    }
}

impl Uart16550 {
    /// Whether `port` belongs to the UART.
    pub fn decodes(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + PORTS).contains(&port)
    }

    /// A guest read of register `port - base`.
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            reg::DATA if dlab => self.dll,
            reg::DATA => 0,
            reg::IER if dlab => self.dlm,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let fifo = if self.fifo { IIR_FIFO_ENABLED } else { 0 };
                if self.ier & IER_THRI != 0 && self.thre_pending {
                    self.thre_pending = false;
                    IIR_THRE | fifo
                } else {
                    IIR_NO_INTERRUPT | fifo
                }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => LSR_THRE | LSR_TEMT,
            reg::MSR => {
                if self.mcr & MCR_LOOP != 0 {
                    // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                    let m = self.mcr;
                    (m & 0x1) << 5 | (m & 0x2) << 3 | (m & 0x4) << 4 | (m & 0x8) << 4
                } else {
                    0xb0 // CTS, DSR, DCD
                }
            }
            _ => self.scr,
        }
    }

    /// A guest write; returns a complete line when one ends (without its newline).
    pub fn write(&mut self, offset: u16, value: u8) -> Option<&[u8]> {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            reg::DATA if dlab => self.dll = value,
            reg::DATA => {
                self.thre_pending = true;
                return self.transmit(value);
            }
            reg::IER if dlab => self.dlm = value,
            reg::IER => {
                if value & IER_THRI != 0 && self.ier & IER_THRI == 0 {
                    self.thre_pending = true;
                }
                self.ier = value & 0x0f;
            }
            reg::IIR_FCR => self.fifo = value & 1 != 0,
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & 0x1f,
            reg::SCR => self.scr = value,
            _ => {}
        }
        None
    }

    fn transmit(&mut self, byte: u8) -> Option<&[u8]> {
        self.bytes_out += 1;
        match byte {
            b'\n' => {
                let n = core::mem::take(&mut self.len);
                Some(&self.line[..n])
            }
            b'\r' => None,
            _ => {
                self.line[self.len] = byte;
                self.len += 1;
                if self.len == LINE_MAX {
                    self.len = 0;
                    return Some(&self.line[..]);
                }
                None
            }
        }
    }

    /// The unfinished line, if any (when the guest stops).
    pub fn flush(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let n = core::mem::take(&mut self.len);
        Some(&self.line[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole() {
        let mut u = Uart16550::default();
        let mut lines = Vec::new();
        for b in b"hello\r\nworld\npart" {
            if let Some(l) = u.write(0, *b) {
                lines.push(String::from_utf8(l.to_vec()).unwrap());
            }
        }
        assert_eq!(lines, ["hello", "world"]);
        assert_eq!(u.flush(), Some(&b"part"[..]));
        assert_eq!(u.flush(), None);
        assert_eq!(u.bytes_out, 17);
    }

    #[test]
    fn registers_behave_like_a_16550a() {
        let mut u = Uart16550::default();
        assert_eq!(u.read(5), 0x60, "THR empty, transmitter empty");
        u.write(7, 0x5a);
        assert_eq!(u.read(7), 0x5a, "scratch register");
        u.write(3, 0x80);
        u.write(0, 0x0c);
        u.write(1, 0x00);
        assert_eq!(u.read(0), 0x0c, "divisor latch");
        u.write(3, 0x03);
        assert_eq!(u.write(0, b'x'), None);
        assert_eq!(u.bytes_out, 1);
        u.write(2, 0x07);
        assert_eq!(u.read(2), 0xc1, "FIFO enabled, no interrupt");
        u.write(4, 0x1f);
        assert_eq!(u.read(6), 0xf0, "loopback reflects MCR");
        assert!(Uart16550::decodes(0x3fd) && !Uart16550::decodes(0x2f8));
    }

    #[test]
    fn thr_empty_is_reported_once_per_write_when_enabled() {
        let mut u = Uart16550::default();
        u.write(2, 0x01);
        assert_eq!(u.read(2), 0xc1, "IER off: no interrupt");
        u.write(1, 0x02);
        assert_eq!(u.read(2), 0xc2, "enabling THRI with THR empty raises it");
        assert_eq!(u.read(2), 0xc1, "reading IIR cleared it");
        u.write(0, b'a');
        assert_eq!(u.read(2), 0xc2, "THR empty again after the write");
        assert_eq!(u.read(2), 0xc1);
        u.write(1, 0x00);
        u.write(0, b'b');
        assert_eq!(u.read(2), 0xc1, "masked");
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut u = Uart16550::default();
        for _ in 0..LINE_MAX - 1 {
            assert!(u.write(0, b'a').is_none());
        }
        assert_eq!(u.write(0, b'a').map(|l| l.len()), Some(LINE_MAX));
        u.write(0, b'b');
        assert_eq!(u.write(0, b'\n'), Some(&b"b"[..]));
    }
}
