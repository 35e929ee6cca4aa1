//! What the bootloader handed over. The 32-bit Multiboot2 entry code is `entry.s` in this
//! directory (assembled into the binary by `main.rs`); it enters `kmain(magic, info)` in
//! long mode with the first 4 GiB identity-mapped. This module turns the Multiboot2 info
//! into the typed [`BootInfo`] that the rest of the hypervisor (the VMM included) reads.

use loader::multiboot2::Multiboot2Error;
use spin::Once;

use crate::memory::PhysRange;
pub use loader::{BootInfo, HvConfig, MemoryKind, MemoryRegion, Module, VmSpec};

static BOOT: Once<BootInfo<'static>> = Once::new();
static INFO_RANGE: Once<PhysRange> = Once::new();

/// Checks the entry magic and parses the Multiboot2 info at `info_addr` (not the command
/// line: see [`publish`]).
pub fn load_multiboot2(magic: u32, info_addr: u64) -> Result<BootInfo<'static>, Multiboot2Error> {
    BootInfo::check_magic(magic)?;
    if info_addr == 0 {
        return Err(Multiboot2Error::TooShort(0));
    }
    // SAFETY: a Multiboot2 loader passed `info_addr` (magic checked): it points at the info,
    // inside the identity-mapped first 4 GiB, whose first 8 bytes are its header.
    let header = unsafe { core::slice::from_raw_parts(info_addr as *const u8, 8) };
    let total = BootInfo::total_size(header)?;
    // SAFETY: the info spans `total` bytes (its own header says so, capped at 1 MiB); the
    // frame allocator reserves that range (see `info_range`), so it stays valid and unchanged.
    let bytes: &'static [u8] =
        unsafe { core::slice::from_raw_parts(info_addr as *const u8, total) };
    INFO_RANGE.call_once(|| PhysRange {
        start: info_addr,
        end: info_addr + total as u64,
    });
    BootInfo::parse_multiboot2(bytes)
}

/// Stores the boot information (with its parsed command line) for the rest of the run.
pub fn publish(info: BootInfo<'static>) -> &'static BootInfo<'static> {
    BOOT.call_once(|| info)
}

/// The published boot information.
pub fn get() -> Option<&'static BootInfo<'static>> {
    BOOT.get()
}

/// Where the Multiboot2 info itself lies (kept out of the frame allocator).
pub fn info_range() -> PhysRange {
    INFO_RANGE.get().copied().unwrap_or_default()
}

/// A module's bytes (modules stay where GRUB put them; the frame allocator never hands out
/// their frames).
pub fn module_bytes(module: &Module<'_>) -> &'static [u8] {
    if module.start == 0 || module.end <= module.start {
        return &[];
    }
    // SAFETY: the range comes from the Multiboot2 module tag (start <= end checked by the
    // parser), lies in identity-mapped RAM and is reserved in the frame allocator.
    unsafe { core::slice::from_raw_parts(module.start as *const u8, module.len() as usize) }
}
