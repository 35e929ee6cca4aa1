//! Three address spaces with fixed page-table roots (see link.ld):
//!
//! | space  | CR3      | user-accessible pages          |
//! |--------|----------|--------------------------------|
//! | kernel | 0x180000 | none                           |
//! | alpha  | 0x184000 | `.user_alpha` (code and stack) |
//! | beta   | 0x188000 | `.user_beta`  (code and stack) |
//!
//! Each identity-maps the first 1 GiB: the first 2 MiB with 4 KiB pages (so the user bit
//! can be given page by page; page 0 is left unmapped to catch null pointers), the rest
//! with 2 MiB pages, supervisor-only. The roots are 16 KiB apart so bit 12 is clear in
//! all of them: `normalize_cr3` (which clears it for KPTI) keeps them distinct.

use core::cell::UnsafeCell;

use x86_64::PhysAddr;
use x86_64::structures::paging::{PageTable, PageTableFlags as F};

use crate::report::Range;

/// One address space: the four tables of the walk for the first 1 GiB.
#[repr(C, align(16384))]
struct Space {
    pml4: PageTable,
    pdpt: PageTable,
    pd: PageTable,
    pt: PageTable,
}

/// Which space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Kernel = 0,
    Alpha = 1,
    Beta = 2,
}

struct Spaces(UnsafeCell<[Space; 3]>);
// SAFETY: the guest runs on one CPU; `build` (the only writer) runs once per space before
// that space is loaded into CR3, and nothing else reads the tables from Rust.
unsafe impl Sync for Spaces {}

const EMPTY: Space = Space {
    pml4: PageTable::new(),
    pdpt: PageTable::new(),
    pd: PageTable::new(),
    pt: PageTable::new(),
};

#[unsafe(link_section = ".pagetables")]
static SPACES: Spaces = Spaces(UnsafeCell::new([EMPTY, EMPTY, EMPTY]));

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;

fn phys<T>(table: &T) -> PhysAddr {
    // Identity mapping: the address of a static is its guest-physical address.
    PhysAddr::new(core::ptr::from_ref(table) as u64)
}

/// Builds space `which` with `user` (if any) user-accessible; returns its CR3.
///
/// # Safety
/// Must not be called for a space that is loaded in CR3 (or ever was: it is built once).
pub unsafe fn build(which: Which, user: Option<Range>) -> u64 {
    // SAFETY: single CPU, and per the caller nobody walks this space yet; the index is
    // in bounds (three variants).
    let space = unsafe { &mut (*SPACES.0.get())[which as usize] };
    let table = F::PRESENT | F::WRITABLE;
    let upper = if user.is_some() {
        table | F::USER_ACCESSIBLE
    } else {
        table
    };
    space.pml4.zero();
    space.pdpt.zero();
    space.pd.zero();
    space.pt.zero();
    space.pml4[0].set_addr(phys(&space.pdpt), upper);
    space.pdpt[0].set_addr(phys(&space.pd), upper);
    space.pd[0].set_addr(phys(&space.pt), upper);
    for (i, entry) in space.pd.iter_mut().enumerate().skip(1) {
        entry.set_addr(PhysAddr::new(i as u64 * HUGE), table | F::HUGE_PAGE);
    }
    for (i, entry) in space.pt.iter_mut().enumerate().skip(1) {
        let addr = i as u64 * PAGE;
        let is_user = user.is_some_and(|r| (r.start..r.end).contains(&addr));
        let flags = if is_user {
            table | F::USER_ACCESSIBLE
        } else {
            table
        };
        entry.set_addr(PhysAddr::new(addr), flags);
    }
    phys(&space.pml4).as_u64()
}
