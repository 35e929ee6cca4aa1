//! The devices a VM sees on its I/O ports, and the port bus that routes an IN or OUT to
//! them: the console UART (COM1), the ACPI power-management registers and a CMOS clock.
//! Every other port reads all-ones and ignores writes, as an empty ISA bus does; those
//! accesses are counted.
//!
//! The UART has no interrupt line: the guest's ACPI tables describe COM1 without an IRQ,
//! so Linux's 8250 driver polls it from a timer. That costs a few exits per poll but needs
//! no I/O APIC model, and without an I/O APIC Linux keeps the x2APIC mode the vCPU starts
//! in (see `loader::acpi`).

pub mod acpi_pm;
pub mod cmos;
pub mod uart;

use acpi_pm::{AcpiPm, PmRequest};
use cmos::CmosRtc;
use uart::{COM1_BASE, Uart16550};

/// Open-bus bits above a byte-wide device register: a 16/32-bit IN of one reads them as ones.
const OPEN_BUS_ABOVE_BYTE: u32 = !(u8::MAX as u32);

/// I/O the hypervisor does not model: reads see all-ones, writes are dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmodelledIo {
    pub reads: u64,
    pub writes: u64,
    pub last_port: u16,
}

/// One VM's port devices.
#[derive(Clone, Debug)]
pub struct PortBus {
    pub uart: Uart16550,
    pub pm: AcpiPm,
    pub rtc: CmosRtc,
    pub unmodelled: UnmodelledIo,
}

impl PortBus {
    /// The devices of a VM started at host TSC `start_tsc`; the clock reads `start_unix`
    /// then.
    pub fn new(start_unix: u64, start_tsc: u64, tsc_hz: u64) -> Self {
        PortBus {
            uart: Uart16550::default(),
            pm: AcpiPm::default(),
            rtc: CmosRtc::new(start_unix, start_tsc, tsc_hz),
            unmodelled: UnmodelledIo::default(),
        }
    }

    /// An IN of `size` bytes (1, 2 or 4) from `port`: the value, open-bus bits included.
    pub fn read(&mut self, port: u16, size: u8, now_tsc: u64) -> u32 {
        let byte = if Uart16550::decodes(port) {
            self.uart.read(port - COM1_BASE)
        } else if AcpiPm::decodes(port) {
            self.pm.read(port)
        } else if CmosRtc::decodes(port) {
            self.rtc.read(port, now_tsc)
        } else {
            self.unmodelled.reads += 1;
            self.unmodelled.last_port = port;
            return all_ones(size);
        };
        (u32::from(byte) | OPEN_BUS_ABOVE_BYTE) & all_ones(size)
    }

    /// An OUT of `value` to `port` (devices are byte-wide: the low byte counts). A complete
    /// console line goes to `console`; a power request is returned.
    pub fn write(&mut self, port: u16, value: u32, console: impl FnOnce(&[u8])) -> PmRequest {
        let byte = value as u8;
        if Uart16550::decodes(port) {
            if let Some(line) = self.uart.write(port - COM1_BASE, byte) {
                console(line);
            }
        } else if AcpiPm::decodes(port) {
            return self.pm.write(port, byte);
        } else if CmosRtc::decodes(port) {
            self.rtc.write(port, byte);
        } else {
            self.unmodelled.writes += 1;
            self.unmodelled.last_port = port;
        }
        PmRequest::None
    }
}

fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loader::acpi::{SLEEP_CONTROL_PORT, SLP_EN};

    fn bus() -> PortBus {
        PortBus::new(0, 0, 1000)
    }

    #[test]
    fn unmodelled_ports_read_all_ones_and_are_counted() {
        let mut b = bus();
        assert_eq!(b.read(0xcfc, 4, 0), u32::MAX);
        assert_eq!(b.read(0x64, 1, 0), 0xff);
        assert_eq!(b.read(0x1f0, 2, 0), 0xffff);
        assert_eq!(
            b.write(0x80 + 1, 0x12, |_| panic!("no console")),
            PmRequest::None
        );
        assert_eq!(
            b.unmodelled,
            UnmodelledIo {
                reads: 3,
                writes: 1,
                last_port: 0x81
            }
        );
    }

    #[test]
    fn uart_lines_and_wide_reads() {
        let mut b = bus();
        let mut got = Vec::new();
        for &c in b"ok\n" {
            b.write(COM1_BASE, u32::from(c), |l| got.extend_from_slice(l));
        }
        assert_eq!(got, b"ok");
        assert_eq!(b.read(COM1_BASE + 5, 1, 0), 0x60);
        assert_eq!(
            b.read(COM1_BASE + 5, 2, 0),
            0xff60,
            "open bus above the byte"
        );
    }

    #[test]
    fn poweroff_goes_through_the_bus() {
        let mut b = bus();
        assert_eq!(
            b.write(SLEEP_CONTROL_PORT, (5 << 2) | u32::from(SLP_EN), |_| {}),
            PmRequest::PowerOff
        );
    }

    #[test]
    fn the_clock_answers_on_0x70() {
        let mut b = bus();
        b.write(cmos::INDEX_PORT, 0x0d, |_| {});
        assert_eq!(b.read(cmos::DATA_PORT, 1, 0), 0x80);
    }
}
