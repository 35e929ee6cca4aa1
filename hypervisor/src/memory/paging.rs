//! The hypervisor's own page tables: the boot code identity-maps the first 4 GiB with 2 MiB
//! pages through PML4[0] -> one PDPT -> four PDs. This module extends that identity map to
//! all RAM (one more PD per GiB, up to the 512 GiB PML4[0] covers) and marks MMIO uncached.
//! Tables are found through CR3, so nothing here depends on the boot code's symbols.

use crate::arch::cpu;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const GIB: u64 = 1 << 30;
const TWO_MIB: u64 = 1 << 21;
/// PML4[0] covers this much.
pub const MAX_IDENTITY: u64 = 512 * GIB;

/// Why the identity map could not be extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingError {
    /// No frame for a page directory.
    OutOfFrames,
    /// The address lies beyond what PML4[0] maps.
    BeyondIdentityMap(u64),
}

impl core::fmt::Display for PagingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfFrames => write!(f, "paging: no free frame for a page directory"),
            Self::BeyondIdentityMap(a) => {
                write!(f, "paging: {a:#x} is beyond the 512 GiB identity map")
            }
        }
    }
}

fn table(phys: u64) -> *mut [u64; 512] {
    phys as *mut [u64; 512]
}

fn pdpt() -> *mut [u64; 512] {
    let pml4 = table(cpu::read_cr3() & ADDR_MASK);
    // SAFETY: CR3 holds the identity-mapped PML4 built by the boot code; entry 0 is present.
    table(unsafe { (*pml4)[0] } & ADDR_MASK)
}

/// One past the highest identity-mapped address (whole GiBs, counted from 0).
pub fn identity_limit() -> u64 {
    let pdpt = pdpt();
    // SAFETY: the PDPT is identity-mapped and only modified by this module, on one CPU.
    let entries = unsafe { &*pdpt };
    entries.iter().take_while(|e| *e & PRESENT != 0).count() as u64 * GIB
}

/// Extends the identity map to cover `[0, up_to)`, taking zeroed 4 KiB frames for new page
/// directories from `alloc_frame`. Returns the new limit.
pub fn extend_identity_map(
    up_to: u64,
    mut alloc_frame: impl FnMut() -> Option<u64>,
) -> Result<u64, PagingError> {
    if up_to > MAX_IDENTITY {
        return Err(PagingError::BeyondIdentityMap(up_to));
    }
    let pdpt = pdpt();
    let mut limit = identity_limit();
    while limit < up_to {
        let pd = alloc_frame().ok_or(PagingError::OutOfFrames)?;
        // SAFETY: `pd` is a fresh frame below the current limit (so identity-mapped) owned
        // by us; the PDPT slot is unused. Entries map 2 MiB pages of [limit, limit + 1 GiB).
        unsafe {
            let entries = &mut *table(pd);
            for (i, e) in entries.iter_mut().enumerate() {
                *e = (limit + i as u64 * TWO_MIB) | PRESENT | WRITABLE | HUGE;
            }
            (*pdpt)[(limit / GIB) as usize] = pd | PRESENT | WRITABLE;
        }
        limit += GIB;
    }
    Ok(limit)
}

/// Marks the 2 MiB page holding `addr` uncached (PCD|PWT): for MMIO such as the LAPIC.
pub fn map_uncached(addr: u64) -> Result<(), PagingError> {
    if addr >= identity_limit() {
        return Err(PagingError::BeyondIdentityMap(addr));
    }
    let pdpt = pdpt();
    // SAFETY: the address is identity-mapped (checked), so its PDPT entry is present and
    // points at an identity-mapped PD of 2 MiB entries; setting PCD|PWT only changes caching,
    // and INVLPG drops the stale TLB entry.
    unsafe {
        let pd = table((*pdpt)[(addr / GIB) as usize] & ADDR_MASK);
        (*pd)[((addr % GIB) / TWO_MIB) as usize] |= CACHE_DISABLE | WRITE_THROUGH;
        cpu::invlpg(addr);
    }
    Ok(())
}
