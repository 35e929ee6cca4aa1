//! What the 64-bit boot protocol needs in guest memory besides `boot_params`: a GDT with
//! flat 64-bit code at selector 0x10 and data at 0x18, and identity page tables.

use super::{GDT_ADDR, GDT_LIMIT, GuestRegion, PAGE_TABLES_ADDR, PAGE_TABLES_END, guest_slice};
use crate::elf::GuestMemoryError;

/// The GDT: null, null, `__BOOT_CS` (0x10), `__BOOT_DS` (0x18); base 0, limit 4 GiB.
pub const GDT: [u64; 4] = [
    0,
    0,
    // 64-bit code: G=1, L=1, D=0, P=1, DPL 0, S=1, type 0xb (execute/read, accessed).
    0x00af_9b00_0000_ffff,
    // Data: G=1, D/B=1, P=1, DPL 0, S=1, type 0x3 (read/write, accessed).
    0x00cf_9300_0000_ffff,
];

/// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE: u64 = 1 << 7;
const TABLE: u64 = PRESENT | WRITABLE;
const HUGE_2M: u64 = PRESENT | WRITABLE | PAGE_SIZE;
const SIZE_2M: u64 = 0x20_0000;
const ENTRIES: u64 = 512;

pub(super) fn write_gdt(ram: &mut [u8]) -> Result<GuestRegion, GuestMemoryError> {
    let size = u64::from(GDT_LIMIT) + 1;
    let out = guest_slice(ram, GDT_ADDR, size)?;
    for (slot, d) in out.as_chunks_mut::<8>().0.iter_mut().zip(GDT) {
        *slot = d.to_le_bytes();
    }
    Ok(GuestRegion {
        start: GDT_ADDR,
        size,
    })
}

/// Identity-maps `[0, ram)` rounded up to 2 MiB: PML4 at [`PAGE_TABLES_ADDR`], one PDPT
/// after it, then one page directory per GiB. `ram` fits the area by the loader's
/// `MAX_RAM` check; beyond it this returns the guest-memory error.
pub(super) fn write_page_tables(ram: &mut [u8]) -> Result<GuestRegion, GuestMemoryError> {
    let huge_pages = (ram.len() as u64).div_ceil(SIZE_2M);
    let directories = huge_pages.div_ceil(ENTRIES).max(1);
    let pml4 = PAGE_TABLES_ADDR;
    let pdpt = pml4 + 0x1000;
    let pd0 = pdpt + 0x1000;
    let size = (2 + directories) * 0x1000;
    if pml4 + size > PAGE_TABLES_END {
        return Err(GuestMemoryError {
            gpa: pml4,
            len: size,
            size: PAGE_TABLES_END,
        });
    }
    let tables = guest_slice(ram, pml4, size)?;
    tables.fill(0);
    let (pml4_page, rest) = tables.split_at_mut(0x1000);
    let (pdpt_page, pds) = rest.split_at_mut(0x1000);
    pml4_page[..8].copy_from_slice(&(pdpt | TABLE).to_le_bytes());
    let pdpt_entries = pdpt_page.as_chunks_mut::<8>().0.iter_mut();
    for (i, slot) in pdpt_entries.take(directories as usize).enumerate() {
        *slot = ((pd0 + i as u64 * 0x1000) | TABLE).to_le_bytes();
    }
    let pd_entries = pds.as_chunks_mut::<8>().0.iter_mut();
    for (i, slot) in pd_entries.take(huge_pages as usize).enumerate() {
        *slot = ((i as u64 * SIZE_2M) | HUGE_2M).to_le_bytes();
    }
    Ok(GuestRegion { start: pml4, size })
}
