//! The hypervisor heap: `linked_list_allocator` over frames taken at boot. Not for use from
//! interrupt or NMI handlers (the lock is not interrupt-safe).

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `[start, start + size)` to the allocator.
///
/// # Safety
/// The range must be identity-mapped, writable, unused by anything else forever, and this
/// must be called once.
pub unsafe fn init(start: u64, size: usize) {
    // SAFETY: the caller hands over, once, an identity-mapped writable range nothing else
    // uses (memory::init passes frames just taken from the frame allocator).
    unsafe { HEAP.lock().init(start as *mut u8, size) };
}

/// Bytes currently free in the heap.
pub fn free_bytes() -> usize {
    HEAP.lock().free()
}
