//! Physical memory: the frame allocator filled from the boot memory map (minus the low
//! 1 MiB, the hypervisor image, the boot modules and the boot information), the identity
//! map of all RAM, and the heap. Physical address == virtual address everywhere.

pub mod frames;
#[cfg(target_os = "none")]
pub mod heap;
pub mod paging;

use core::sync::atomic::{AtomicU64, Ordering};
use loader::{BootInfo, MemoryKind};

use spin::Mutex;

use crate::arch::cpu;
pub use frames::{FRAME_SIZE, FrameAllocator, FrameError, PhysRange};

/// Heap size taken at boot.
pub const HEAP_SIZE: u64 = 8 << 20;
/// Memory below this is left alone (BIOS data, EBDA, option ROMs, the trampoline area).
pub const LOW_MEMORY: u64 = 1 << 20;

/// The frame below 1 MiB reserved for the AP start-up trampoline (0 = none).
static TRAMPOLINE_FRAME: AtomicU64 = AtomicU64::new(0);

/// The frame below 1 MiB that [`init`] reserved for the AP start-up code, if any.
pub fn trampoline_frame() -> Option<u64> {
    match TRAMPOLINE_FRAME.load(Ordering::Relaxed) {
        0 => None,
        pa => Some(pa),
    }
}

/// Where [`init`] put the heap (0 = not yet).
static HEAP_START: AtomicU64 = AtomicU64::new(0);

/// The heap's frames `[start, start + HEAP_SIZE)` (empty before [`init`]).
pub fn heap_range() -> PhysRange {
    match HEAP_START.load(Ordering::Relaxed) {
        0 => PhysRange::default(),
        start => PhysRange {
            start,
            end: start + HEAP_SIZE,
        },
    }
}

/// The allocator; `None` until [`init`].
static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

/// What `init` did, for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct MemoryReport {
    /// Free bytes in the frame allocator after the heap was taken.
    pub free_bytes: u64,
    /// Number of free ranges.
    pub free_ranges: usize,
    /// Heap start (physical = virtual).
    pub heap_start: u64,
    /// Heap size.
    pub heap_size: u64,
    /// One past the highest identity-mapped address.
    pub identity_limit: u64,
}

/// Why memory could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    Frames(FrameError),
    Paging(paging::PagingError),
    /// Not enough contiguous RAM for the heap.
    NoHeap,
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Frames(e) => e.fmt(f),
            Self::Paging(e) => e.fmt(f),
            Self::NoHeap => write!(
                f,
                "memory: no {} MiB of contiguous RAM for the heap",
                HEAP_SIZE >> 20
            ),
        }
    }
}

impl From<FrameError> for MemoryError {
    fn from(e: FrameError) -> Self {
        Self::Frames(e)
    }
}

impl From<paging::PagingError> for MemoryError {
    fn from(e: paging::PagingError) -> Self {
        Self::Paging(e)
    }
}

/// The hypervisor image `[start, end)` as linked (see linker.ld).
pub fn image_range() -> PhysRange {
    #[cfg(target_os = "none")]
    {
        unsafe extern "C" {
            static __image_start: u8;
            static __image_end: u8;
        }
        PhysRange {
            start: core::ptr::addr_of!(__image_start) as u64,
            end: core::ptr::addr_of!(__image_end) as u64,
        }
    }
    #[cfg(not(target_os = "none"))]
    PhysRange::default()
}

/// Builds the free-frame list from `boot` (excluding `also_reserved`, e.g. the boot
/// information itself), extends the identity map to all RAM, and (on the bare-metal target)
/// sets up the heap.
pub fn init(boot: &BootInfo<'_>, also_reserved: &[PhysRange]) -> Result<MemoryReport, MemoryError> {
    let mut fa = FrameAllocator::new();
    for r in boot
        .memory
        .iter()
        .filter(|r| r.kind == MemoryKind::Available)
    {
        fa.add(r.start, r.end())?;
    }
    // Reserved ranges win over available ones where a map lists both.
    for r in boot
        .memory
        .iter()
        .filter(|r| r.kind != MemoryKind::Available)
    {
        fa.reserve(r.start, r.end())?;
    }
    let image = image_range();
    fa.reserve(image.start, image.end)?;
    for m in boot.modules.iter() {
        fa.reserve(m.start, m.end)?;
    }
    for r in also_reserved {
        fa.reserve(r.start, r.end)?;
    }
    // One frame below 1 MiB for the application processors' real-mode start-up code (a
    // SIPI vector names a page below 1 MiB), taken from what the memory map calls
    // available, above the real-mode IVT and BIOS data area; the rest of low memory is
    // left alone.
    fa.reserve(0, FRAME_SIZE)?;
    let trampoline = fa.alloc_below(1, FRAME_SIZE, LOW_MEMORY);
    TRAMPOLINE_FRAME.store(trampoline.unwrap_or(0), Ordering::Relaxed);
    fa.reserve(0, LOW_MEMORY)?;
    // Page directories for RAM above 4 GiB must themselves be reachable: take them below
    // the current identity limit.
    let limit_now = paging::identity_limit();
    let identity_limit = paging::extend_identity_map(boot.highest_available(), || {
        let pd = fa.alloc_below(1, FRAME_SIZE, limit_now)?;
        zero(pd, FRAME_SIZE);
        Some(pd)
    })?;
    #[cfg(target_os = "none")]
    if let Some(last) = boot.highest_available().checked_sub(8) {
        // SAFETY: `last` is inside available RAM, now identity-mapped; reading RAM has no
        // side effect. A broken mapping shows up here as a #PF dump, not later.
        let _ = unsafe { core::ptr::read_volatile(last as *const u64) };
    }
    let heap_start = fa
        .alloc(HEAP_SIZE / FRAME_SIZE, 2 << 20)
        .ok_or(MemoryError::NoHeap)?;
    HEAP_START.store(heap_start, Ordering::Relaxed);
    #[cfg(target_os = "none")]
    // SAFETY: the range was just taken from the frame allocator (so nothing else is ever
    // given it), lies in identity-mapped RAM, and `init` runs once, on the boot CPU.
    unsafe {
        heap::init(heap_start, HEAP_SIZE as usize)
    };
    let report = MemoryReport {
        free_bytes: fa.free_bytes(),
        free_ranges: fa.ranges().len(),
        heap_start,
        heap_size: HEAP_SIZE,
        identity_limit,
    };
    cpu::without_interrupts(|| *FRAMES.lock() = Some(fa));
    Ok(report)
}

fn zero(phys: u64, len: u64) {
    // SAFETY: both callers pass frames the frame allocator just handed them (so nothing
    // else references them), inside the identity map.
    unsafe { core::ptr::write_bytes(phys as *mut u8, 0, len as usize) };
}

/// Allocates `frames` contiguous frames aligned to `align` bytes. Not from NMI context.
pub fn alloc_frames(frames: u64, align: u64) -> Option<u64> {
    cpu::without_interrupts(|| FRAMES.lock().as_mut()?.alloc(frames, align))
}

/// Allocates zeroed contiguous frames.
pub fn alloc_zeroed_frames(frames: u64, align: u64) -> Option<u64> {
    let pa = alloc_frames(frames, align)?;
    zero(pa, frames * FRAME_SIZE);
    Some(pa)
}

/// Returns frames from [`alloc_frames`].
pub fn free_frames(start: u64, frames: u64) -> Result<(), FrameError> {
    cpu::without_interrupts(|| match FRAMES.lock().as_mut() {
        Some(fa) => fa.free(start, frames),
        None => Err(FrameError::NotInitialized),
    })
}

/// Free bytes left in the frame allocator.
pub fn free_bytes() -> u64 {
    cpu::without_interrupts(|| FRAMES.lock().as_ref().map_or(0, FrameAllocator::free_bytes))
}

/// The pointer for a physical address (identity map).
pub fn phys_to_ptr<T>(phys: u64) -> *mut T {
    phys as *mut T
}
