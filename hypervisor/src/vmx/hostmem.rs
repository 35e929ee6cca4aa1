//! Host-physical memory the VMX layer hands to the CPU or fills for a guest (VMXON/VMCS
//! regions, bitmaps, EPT tables, guest RAM), reached through the hypervisor's identity
//! map. Each function takes frames the caller owns exclusively.

use super::ept::TableMemory;

/// A 4 KiB frame as bytes.
///
/// # Safety
/// `pa` must be an identity-mapped frame owned by the caller and not otherwise borrowed
/// for the lifetime of the result.
pub unsafe fn frame_bytes<'a>(pa: u64) -> &'a mut [u8; 4096] {
    // SAFETY: the caller owns the identity-mapped frame `pa` (virtual == physical) and
    // lends it to no one else for 'a.
    unsafe { &mut *(pa as *mut [u8; 4096]) }
}

/// `len` bytes at host-physical `pa`.
///
/// # Safety
/// `[pa, pa + len)` must be identity-mapped memory owned by the caller, not otherwise
/// borrowed for the lifetime of the result.
pub unsafe fn phys_bytes<'a>(pa: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: the caller owns the identity-mapped range `[pa, pa + len)` and lends it to
    // no one else for 'a.
    unsafe { core::slice::from_raw_parts_mut(pa as *mut u8, len) }
}

/// EPT tables in frames from an allocator function (zeroed frames, identity-mapped).
pub struct IdentityTables<F: FnMut() -> Option<u64>> {
    pub alloc: F,
}

impl<F: FnMut() -> Option<u64>> TableMemory for IdentityTables<F> {
    fn alloc_table(&mut self) -> Option<u64> {
        (self.alloc)()
    }
    fn table(&mut self, pa: u64) -> &mut [u64; 512] {
        // SAFETY: `pa` is a zeroed, identity-mapped frame this allocator handed out for an
        // EPT table; only the EPT builder (which holds &mut self) accesses it.
        unsafe { &mut *(pa as *mut [u64; 512]) }
    }
}

/// Frames taken from the frame allocator and never given back: owning a `HostFrames` is
/// owning that memory, so its bytes are reachable without `unsafe` at the call site.
/// Dropping one leaks the frames (they stay reserved; nothing else can reach them).
#[derive(Debug)]
pub struct HostFrames {
    pa: u64,
    len: usize,
}

impl HostFrames {
    /// `frames` zeroed, contiguous frames aligned to `align` BYTES (at least 4 KiB).
    pub fn alloc_zeroed(frames: u64, align: u64) -> Option<HostFrames> {
        let len = usize::try_from(frames.checked_mul(super::ept::PAGE_SIZE)?).ok()?;
        let pa = crate::memory::alloc_zeroed_frames(frames, align)?;
        Some(HostFrames { pa, len })
    }

    /// Host-physical address of the first frame.
    pub fn pa(&self) -> u64 {
        self.pa
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frames' bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the frame allocator handed these frames out once, to this value, and they
        // are never freed; they are identity-mapped (virtual == physical). `&mut self`
        // makes this the only borrow.
        unsafe { phys_bytes(self.pa, self.len) }
    }
}
