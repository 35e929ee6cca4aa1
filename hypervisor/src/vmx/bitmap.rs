//! The MSR bitmap (SDM 25.6.9) and the I/O bitmaps (SDM 25.6.4): a set bit makes the
//! access exit, a clear bit lets it run in the guest.

use super::msr::Msr;

pub const BITMAP_BYTES: usize = 4096;

/// The 4 KiB MSR bitmap: read-low, read-high, write-low, write-high quarters.
#[derive(Clone)]
pub struct MsrBitmap(pub [u8; BITMAP_BYTES]);

const LOW: core::ops::RangeInclusive<u32> = 0..=0x1fff;
const HIGH: core::ops::RangeInclusive<u32> = 0xc000_0000..=0xc000_1fff;

impl Default for MsrBitmap {
    fn default() -> Self {
        MsrBitmap([0; BITMAP_BYTES])
    }
}

impl MsrBitmap {
    /// Bit offset of `msr` inside the read quarter pair, or `None` for MSRs the bitmap does
    /// not cover (those always exit).
    fn bit(msr: Msr) -> Option<usize> {
        if LOW.contains(&msr.0) {
            Some(msr.0 as usize)
        } else if HIGH.contains(&msr.0) {
            Some(1024 * 8 + (msr.0 - 0xc000_0000) as usize)
        } else {
            None
        }
    }

    pub fn trap_read(&mut self, msr: Msr) {
        if let Some(b) = Self::bit(msr) {
            self.0[b / 8] |= 1 << (b % 8);
        }
    }

    pub fn trap_write(&mut self, msr: Msr) {
        if let Some(b) = Self::bit(msr) {
            let b = b + 2048 * 8;
            self.0[b / 8] |= 1 << (b % 8);
        }
    }

    /// Makes every WRMSR the bitmap covers exit (those outside it always do).
    pub fn trap_all_writes(&mut self) {
        self.0[BITMAP_BYTES / 2..].fill(0xff);
    }

    /// Lets WRMSR of `msr` run in the guest (no effect for MSRs outside the bitmap).
    pub fn pass_write(&mut self, msr: Msr) {
        if let Some(b) = Self::bit(msr) {
            let b = b + 2048 * 8;
            self.0[b / 8] &= !(1 << (b % 8));
        }
    }

    pub fn traps_read(&self, msr: Msr) -> bool {
        Self::bit(msr).is_none_or(|b| self.0[b / 8] & (1 << (b % 8)) != 0)
    }

    pub fn traps_write(&self, msr: Msr) -> bool {
        Self::bit(msr).is_none_or(|b| {
            let b = b + 2048 * 8;
            self.0[b / 8] & (1 << (b % 8)) != 0
        })
    }
}

/// I/O bitmaps A (ports 0-0x7fff) and B (0x8000-0xffff), one bit a port.
#[derive(Clone)]
pub struct IoBitmaps {
    pub a: [u8; BITMAP_BYTES],
    pub b: [u8; BITMAP_BYTES],
}

impl IoBitmaps {
    /// Every port traps.
    pub fn trap_all() -> Self {
        IoBitmaps {
            a: [0xff; BITMAP_BYTES],
            b: [0xff; BITMAP_BYTES],
        }
    }

    fn slot(&mut self, port: u16) -> (&mut u8, u8) {
        let p = port as usize;
        let bit = 1 << (p % 8);
        if p < 0x8000 {
            (&mut self.a[p / 8], bit)
        } else {
            (&mut self.b[(p - 0x8000) / 8], bit)
        }
    }

    /// Lets the guest reach `port` directly.
    pub fn pass(&mut self, port: u16) {
        let (byte, bit) = self.slot(port);
        *byte &= !bit;
    }

    pub fn traps(&self, port: u16) -> bool {
        let p = port as usize;
        let byte = if p < 0x8000 {
            self.a[p / 8]
        } else {
            self.b[(p - 0x8000) / 8]
        };
        byte & (1 << (p % 8)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_bitmap_layout() {
        let mut bm = MsrBitmap::default();
        bm.trap_read(Msr::IA32_FEATURE_CONTROL);
        bm.trap_write(Msr::IA32_EFER);
        // 0x3a: read-low byte 7 bit 2.
        assert_eq!(bm.0[7], 1 << 2);
        // EFER 0xc0000080: write-high quarter at 3072, byte 0x80/8 = 16, bit 0.
        assert_eq!(bm.0[3072 + 16], 1);
        assert!(bm.traps_read(Msr::IA32_FEATURE_CONTROL));
        assert!(!bm.traps_write(Msr::IA32_FEATURE_CONTROL));
        assert!(!bm.traps_read(Msr::IA32_EFER));
        assert!(bm.traps_write(Msr::IA32_EFER));
        // Outside both ranges: always exits.
        assert!(bm.traps_read(Msr(0x4000_0000)));
        assert_eq!(bm.0.iter().map(|b| b.count_ones()).sum::<u32>(), 2);
    }

    #[test]
    fn io_bitmaps() {
        let mut io = IoBitmaps::trap_all();
        io.pass(0x80);
        io.pass(0x8900);
        assert!(!io.traps(0x80));
        assert!(io.traps(0x81));
        assert!(io.traps(0x3f8));
        assert!(!io.traps(0x8900));
        assert_eq!(io.a[0x10], 0xfe);
        assert_eq!(io.b[0x120], 0xfe);
    }
}
