//! A physical frame allocator over a sorted list of free ranges: contiguous allocations with
//! alignment (guest RAM, page tables, VMCS regions) and frees that merge back.

use loader::FixedVec;

/// Frame size.
pub const FRAME_SIZE: u64 = 4096;
/// Most disjoint free ranges tracked.
pub const MAX_RANGES: usize = 256;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Why a frame operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More disjoint ranges than [`MAX_RANGES`].
    TooManyRanges,
    /// A freed range overlaps free memory (double free).
    DoubleFree { start: u64, end: u64 },
    /// Address or size not frame-aligned.
    Unaligned { start: u64, len: u64 },
    /// The global allocator is not set up yet.
    NotInitialized,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooManyRanges => write!(f, "frames: more than {MAX_RANGES} free ranges"),
            Self::DoubleFree { start, end } => write!(
                f,
                "frames: freeing {start:#x}..{end:#x}, which is already free"
            ),
            Self::Unaligned { start, len } => {
                write!(f, "frames: {start:#x}+{len:#x} is not 4 KiB aligned")
            }
            Self::NotInitialized => write!(f, "frames: allocator used before memory::init"),
        }
    }
}

/// The allocator. Ranges are sorted, disjoint and non-adjacent (adjacent ones merge).
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameAllocator {
    free: FixedVec<PhysRange, MAX_RANGES>,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

impl FrameAllocator {
    /// An allocator with nothing free.
    pub fn new() -> Self {
        Self {
            free: FixedVec::new(),
        }
    }

    /// The free ranges.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.free
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(PhysRange::len).sum()
    }

    fn rebuild(&mut self, mut items: impl Iterator<Item = PhysRange>) -> Result<(), FrameError> {
        let mut out = FixedVec::new();
        for r in items.by_ref() {
            if r.is_empty() {
                continue;
            }
            out.push(r).map_err(|_| FrameError::TooManyRanges)?;
        }
        self.free = out;
        Ok(())
    }

    /// Makes `[start, end)` free, shrunk inward to whole frames; overlaps with free memory
    /// are merged (boot memory maps may overlap).
    pub fn add(&mut self, start: u64, end: u64) -> Result<(), FrameError> {
        let Some(start) = align_up(start, FRAME_SIZE) else {
            return Ok(());
        };
        let end = end & !(FRAME_SIZE - 1);
        if end <= start {
            return Ok(());
        }
        self.insert(PhysRange { start, end }, true)
    }

    fn insert(&mut self, new: PhysRange, merge_overlap: bool) -> Result<(), FrameError> {
        let mut merged = new;
        let mut result: FixedVec<PhysRange, MAX_RANGES> = FixedVec::new();
        let mut placed = false;
        for &r in self.free.iter() {
            if r.end < merged.start {
                result.push(r).map_err(|_| FrameError::TooManyRanges)?;
            } else if r.start > merged.end {
                if !placed {
                    result.push(merged).map_err(|_| FrameError::TooManyRanges)?;
                    placed = true;
                }
                result.push(r).map_err(|_| FrameError::TooManyRanges)?;
            } else {
                // Touching or overlapping.
                if !merge_overlap && r.start < merged.end && merged.start < r.end {
                    return Err(FrameError::DoubleFree {
                        start: new.start,
                        end: new.end,
                    });
                }
                merged = PhysRange {
                    start: merged.start.min(r.start),
                    end: merged.end.max(r.end),
                };
            }
        }
        if !placed {
            result.push(merged).map_err(|_| FrameError::TooManyRanges)?;
        }
        self.free = result;
        Ok(())
    }

    /// Removes `[start, end)`, grown outward to whole frames, from the free memory.
    pub fn reserve(&mut self, start: u64, end: u64) -> Result<(), FrameError> {
        let start = start & !(FRAME_SIZE - 1);
        let end = align_up(end, FRAME_SIZE).unwrap_or(!(FRAME_SIZE - 1));
        if end <= start {
            return Ok(());
        }
        let old = self.free;
        let pieces = old.iter().flat_map(|r| {
            let below = PhysRange {
                start: r.start,
                end: r.end.min(start),
            };
            let above = PhysRange {
                start: r.start.max(end),
                end: r.end,
            };
            [below, above]
        });
        self.rebuild(pieces)
    }

    /// Allocates `frames` contiguous frames aligned to `align` bytes (a power of two, at
    /// least [`FRAME_SIZE`]); first fit from the lowest address. Returns the start address.
    pub fn alloc(&mut self, frames: u64, align: u64) -> Option<u64> {
        let align = align.max(FRAME_SIZE);
        if !align.is_power_of_two() || frames == 0 {
            return None;
        }
        let len = frames.checked_mul(FRAME_SIZE)?;
        let start = self.free.iter().find_map(|r| {
            let start = align_up(r.start, align)?;
            (start.checked_add(len)? <= r.end).then_some(start)
        })?;
        self.reserve(start, start + len).ok()?;
        Some(start)
    }

    /// Like [`Self::alloc`] but only below `limit` (e.g. 4 GiB for 32-bit addresses).
    pub fn alloc_below(&mut self, frames: u64, align: u64, limit: u64) -> Option<u64> {
        let start = self.alloc(frames, align)?;
        if start + frames * FRAME_SIZE <= limit {
            return Some(start);
        }
        // First fit is lowest-first, so nothing fits below the limit: give it back.
        let _ = self.free(start, frames);
        None
    }

    /// Returns `frames` frames at `start` (must be frame-aligned and not already free).
    pub fn free(&mut self, start: u64, frames: u64) -> Result<(), FrameError> {
        let len = frames.saturating_mul(FRAME_SIZE);
        if !start.is_multiple_of(FRAME_SIZE) || len == 0 {
            return Err(FrameError::Unaligned { start, len });
        }
        let end = start
            .checked_add(len)
            .ok_or(FrameError::Unaligned { start, len })?;
        self.insert(PhysRange { start, end }, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(a: &FrameAllocator) -> Vec<(u64, u64)> {
        a.ranges().iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn add_aligns_inward_and_merges() {
        let mut a = FrameAllocator::new();
        a.add(0x1001, 0x5fff).unwrap();
        assert_eq!(ranges(&a), vec![(0x2000, 0x5000)]);
        a.add(0x5000, 0x8000).unwrap(); // adjacent
        a.add(0x3000, 0x4000).unwrap(); // overlapping
        a.add(0x10000, 0x20000).unwrap();
        assert_eq!(ranges(&a), vec![(0x2000, 0x8000), (0x10000, 0x20000)]);
        assert_eq!(a.free_bytes(), 0x6000 + 0x10000);
    }

    #[test]
    fn reserve_splits() {
        let mut a = FrameAllocator::new();
        a.add(0, 0x100000).unwrap();
        a.reserve(0x2800, 0x4001).unwrap();
        assert_eq!(ranges(&a), vec![(0, 0x2000), (0x5000, 0x100000)]);
        a.reserve(0, 0x100000).unwrap();
        assert!(a.ranges().is_empty());
    }

    #[test]
    fn alloc_aligned_and_free_back() {
        let mut a = FrameAllocator::new();
        a.add(0x1000, 0x800000).unwrap();
        assert_eq!(a.alloc(1, 4096), Some(0x1000));
        assert_eq!(a.alloc(512, 0x200000), Some(0x200000));
        assert_eq!(ranges(&a), vec![(0x2000, 0x200000), (0x400000, 0x800000)]);
        assert_eq!(a.alloc(0x1000, 4096), None); // 16 MiB does not fit
        assert_eq!(a.alloc(1, 3000), Some(0x2000)); // align rounds up to a frame
        assert_eq!(a.alloc(1, 0x3000), None); // not a power of two
        a.free(0x200000, 512).unwrap();
        a.free(0x1000, 2).unwrap();
        assert_eq!(ranges(&a), vec![(0x1000, 0x800000)]);
    }

    #[test]
    fn double_and_unaligned_free_are_errors() {
        let mut a = FrameAllocator::new();
        a.add(0x1000, 0x10000).unwrap();
        assert_eq!(
            a.free(0x2000, 1),
            Err(FrameError::DoubleFree {
                start: 0x2000,
                end: 0x3000
            })
        );
        assert_eq!(
            a.free(0x2001, 1),
            Err(FrameError::Unaligned {
                start: 0x2001,
                len: 0x1000
            })
        );
        assert_eq!(
            a.free(0x20000, 0),
            Err(FrameError::Unaligned {
                start: 0x20000,
                len: 0
            })
        );
        assert_eq!(a.free(0x10000, 1), Ok(())); // adjacent, merges
        assert_eq!(ranges(&a), vec![(0x1000, 0x11000)]);
    }

    #[test]
    fn alloc_below_limit() {
        let mut a = FrameAllocator::new();
        a.add(0x1_0000_0000, 0x1_0010_0000).unwrap();
        assert_eq!(a.alloc_below(1, 4096, 0x1_0000_0000), None);
        assert_eq!(a.free_bytes(), 0x100000);
        a.add(0x100000, 0x200000).unwrap();
        assert_eq!(a.alloc_below(1, 4096, 0x1_0000_0000), Some(0x100000));
    }

    #[test]
    fn too_many_ranges_is_an_error() {
        let mut a = FrameAllocator::new();
        for i in 0..MAX_RANGES as u64 {
            a.add(i * 0x2000, i * 0x2000 + 0x1000).unwrap();
        }
        assert_eq!(
            a.add(0x1000_0000, 0x1000_1000),
            Err(FrameError::TooManyRanges)
        );
    }
}
