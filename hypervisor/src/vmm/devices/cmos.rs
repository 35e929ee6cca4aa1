//! A read-only CMOS real-time clock at ports 0x70 (index) / 0x71 (data), enough for Linux
//! to read the wall-clock time at boot (`mc146818_get_time`) instead of timing out on a
//! missing chip and starting in 1970.
//!
//! The clock runs from a fixed start date plus the host TSC elapsed since the VM started,
//! in BCD and 24-hour mode; the update-in-progress bit is never set, so a reader never
//! waits. Writes to the time and control registers are ignored; the rest of the 128 bytes
//! of CMOS RAM keep what the guest writes.

/// The index port (bit 7 of the value is the NMI mask on PCs, ignored here).
pub const INDEX_PORT: u16 = 0x70;
/// The data port.
pub const DATA_PORT: u16 = 0x71;

const INDEX_MASK: u8 = 0x7f;
const RAM_BYTES: usize = 128;

/// MC146818 register numbers.
mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const STATUS_A: u8 = 0x0a;
    pub const STATUS_B: u8 = 0x0b;
    pub const STATUS_C: u8 = 0x0c;
    pub const STATUS_D: u8 = 0x0d;
    pub const CENTURY: u8 = 0x32;
}

/// Status A: 32.768 kHz time base, 1024 Hz rate, update-in-progress clear.
const STATUS_A_VALUE: u8 = 0x26;
/// Status B: 24-hour mode, BCD, no interrupts enabled.
const STATUS_B_VALUE: u8 = 0x02;
/// Status D: the battery is good (valid RAM and time).
const STATUS_D_VALUE: u8 = 0x80;

/// A calendar date and time of day, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// Seconds since 1970-01-01 00:00:00 UTC -> calendar (proleptic Gregorian), and the weekday
/// (1 = Sunday, as the MC146818 counts).
fn civil_from_unix(secs: u64) -> (DateTime, u8) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days since 1970-01-01 -> y/m/d (H. Hinnant's civil_from_days, in unsigned form with
    // the era shifted to 0000-03-01).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + u64::from(month <= 2)) as u16;
    // 1970-01-01 was a Thursday (5 in 1..=7 from Sunday).
    let weekday = ((days + 4) % 7 + 1) as u8;
    (
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        },
        weekday,
    )
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// The clock.
#[derive(Clone, Debug)]
pub struct CmosRtc {
    index: u8,
    ram: [u8; RAM_BYTES],
    /// Unix time at `start_tsc`.
    start_unix: u64,
    start_tsc: u64,
    tsc_hz: u64,
}

impl CmosRtc {
    /// A clock that reads `start_unix` at host TSC `start_tsc` and advances at `tsc_hz`.
    pub fn new(start_unix: u64, start_tsc: u64, tsc_hz: u64) -> Self {
        CmosRtc {
            index: 0,
            ram: [0; RAM_BYTES],
            start_unix,
            start_tsc,
            tsc_hz: tsc_hz.max(1),
        }
    }

    pub fn decodes(port: u16) -> bool {
        port == INDEX_PORT || port == DATA_PORT
    }

    /// The date and time at host TSC `now`.
    pub fn now(&self, now_tsc: u64) -> DateTime {
        civil_from_unix(self.unix_at(now_tsc)).0
    }

    fn unix_at(&self, now_tsc: u64) -> u64 {
        self.start_unix
            .saturating_add(now_tsc.saturating_sub(self.start_tsc) / self.tsc_hz)
    }

    pub fn read(&mut self, port: u16, now_tsc: u64) -> u8 {
        if port == INDEX_PORT {
            return self.index;
        }
        let (t, weekday) = civil_from_unix(self.unix_at(now_tsc));
        match self.index {
            reg::SECONDS => bcd(t.second),
            reg::MINUTES => bcd(t.minute),
            reg::HOURS => bcd(t.hour),
            reg::WEEKDAY => bcd(weekday),
            reg::DAY => bcd(t.day),
            reg::MONTH => bcd(t.month),
            reg::YEAR => bcd((t.year % 100) as u8),
            reg::CENTURY => bcd((t.year / 100) as u8),
            reg::STATUS_A => STATUS_A_VALUE,
            reg::STATUS_B => STATUS_B_VALUE,
            reg::STATUS_C => 0,
            reg::STATUS_D => STATUS_D_VALUE,
            i => self.ram.get(usize::from(i)).copied().unwrap_or(0xff),
        }
    }

    pub fn write(&mut self, port: u16, value: u8) {
        if port == INDEX_PORT {
            self.index = value & INDEX_MASK;
            return;
        }
        let clock = self.index <= reg::STATUS_D || self.index == reg::CENTURY;
        if !clock && let Some(b) = self.ram.get_mut(usize::from(self.index)) {
            *b = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rtc: &mut CmosRtc, r: u8, tsc: u64) -> u8 {
        rtc.write(INDEX_PORT, r | 0x80);
        rtc.read(DATA_PORT, tsc)
    }

    #[test]
    fn reads_bcd_time_and_advances_with_the_tsc() {
        // 2026-12-01 14:16:37 UTC, a Tuesday.
        let mut rtc = CmosRtc::new(1_796_134_597, 1000, 50_000_000);
        assert_eq!(
            rtc.now(1000),
            DateTime {
                year: 2026,
                month: 12,
                day: 1,
                hour: 14,
                minute: 16,
                second: 37
            }
        );
        assert_eq!(read(&mut rtc, reg::YEAR, 1000), 0x26);
        assert_eq!(read(&mut rtc, reg::CENTURY, 1000), 0x20);
        assert_eq!(read(&mut rtc, reg::MONTH, 1000), 0x12);
        assert_eq!(read(&mut rtc, reg::WEEKDAY, 1000), 3);
        assert_eq!(read(&mut rtc, reg::SECONDS, 1000), 0x37);
        // 25 s later at 50 MHz: 14:17:02.
        let later = 1000 + 25 * 50_000_000;
        assert_eq!(read(&mut rtc, reg::MINUTES, later), 0x17);
        assert_eq!(read(&mut rtc, reg::SECONDS, later), 0x02);
    }

    #[test]
    fn status_registers_never_show_an_update_in_progress() {
        let mut rtc = CmosRtc::new(0, 0, 1);
        assert_eq!(read(&mut rtc, reg::STATUS_A, 0) & 0x80, 0);
        assert_eq!(read(&mut rtc, reg::STATUS_B, 0), 0x02);
        assert_eq!(read(&mut rtc, reg::STATUS_D, 0), 0x80);
        assert_eq!(rtc.now(0).year, 1970);
    }

    #[test]
    fn ram_keeps_writes_but_the_clock_ignores_them() {
        let mut rtc = CmosRtc::new(0, 0, 1);
        rtc.write(INDEX_PORT, 0x40);
        rtc.write(DATA_PORT, 0xab);
        assert_eq!(read(&mut rtc, 0x40, 0), 0xab);
        rtc.write(INDEX_PORT, reg::SECONDS);
        rtc.write(DATA_PORT, 0x59);
        assert_eq!(read(&mut rtc, reg::SECONDS, 0), 0);
        assert_eq!(rtc.read(INDEX_PORT, 0), reg::SECONDS);
    }

    #[test]
    fn leap_day_and_century() {
        // 2000-02-29 12:00:00 UTC.
        let (t, _) = civil_from_unix(951_825_600);
        assert_eq!((t.year, t.month, t.day, t.hour), (2000, 2, 29, 12));
    }
}
