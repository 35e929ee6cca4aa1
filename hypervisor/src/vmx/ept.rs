//! Extended page tables (SDM 29.3): a 4-level builder that maps guest-physical pages to
//! host frames with write-back memory type, refusing every EPT paging structure and the
//! host ranges the caller lists as reserved (the run loop lists the hypervisor's image,
//! which holds the boot and IST stacks, and its heap). Other hypervisor frames (AP
//! stacks, VMCS and bitmap frames) are kept out by the frame allocator, which hands each
//! frame out once, not by this check.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

pub const PAGE_SIZE: u64 = 4096;
const ENTRIES: usize = 512;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// EPT entry permission bits (SDM table 29-1..29-6).
pub mod perm {
    pub const READ: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const EXECUTE: u64 = 1 << 2;
    pub const RWX: u64 = READ | WRITE | EXECUTE;
}

/// EPT memory types (SDM 29.3.7, 12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum MemoryType {
    Uncacheable = 0,
    WriteBack = 6,
}

/// EPTP bits 5:3 hold the page-walk length minus 1 (SDM 25.6.11); 3 = the 4-level walk
/// of SDM 29.3.2 (PML4, PDPT, PD, PT).
pub const EPTP_WALK_LENGTH_4: u64 = (4 - 1) << 3;

/// Leaf entry memory-type field (bits 5:3).
const MEMORY_TYPE_SHIFT: u32 = 3;

/// Where EPT paging structures live. On bare metal: frames from the frame allocator,
/// reached through the direct map; in tests: a map of boxed tables.
pub trait TableMemory {
    /// A zeroed 4 KiB frame; its host-physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// The table in the frame at `pa` (one previously returned by `alloc_table`).
    fn table(&mut self, pa: u64) -> &mut [u64; ENTRIES];
}

/// Why a mapping was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    Misaligned {
        gpa: u64,
        hpa: u64,
    },
    AlreadyMapped {
        gpa: u64,
    },
    /// The host frame belongs to the hypervisor.
    HypervisorFrame {
        gpa: u64,
        hpa: u64,
    },
    OutOfFrames,
    TooManyReservedRanges,
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EptError::Misaligned { gpa, hpa } => {
                write!(f, "EPT mapping {gpa:#x} -> {hpa:#x} is not 4 KiB aligned")
            }
            EptError::AlreadyMapped { gpa } => {
                write!(f, "guest-physical {gpa:#x} is already mapped")
            }
            EptError::HypervisorFrame { gpa, hpa } => {
                write!(
                    f,
                    "refusing to map hypervisor frame {hpa:#x} at guest-physical {gpa:#x}"
                )
            }
            EptError::OutOfFrames => f.write_str("out of frames for EPT paging structures"),
            EptError::TooManyReservedRanges => f.write_str("too many reserved host ranges"),
        }
    }
}

/// A 4-level EPT hierarchy.
pub struct Ept {
    pml4: u64,
    /// Every paging-structure frame, so that none is ever mapped into a guest.
    tables: Vec<u64>,
    /// Host-physical ranges that belong to the hypervisor.
    reserved: Vec<Range<u64>>,
    mapped_pages: u64,
}

impl Ept {
    /// An empty hierarchy; `reserved` lists the hypervisor's own host-physical ranges.
    pub fn new(mem: &mut impl TableMemory, reserved: &[Range<u64>]) -> Result<Ept, EptError> {
        let pml4 = mem.alloc_table().ok_or(EptError::OutOfFrames)?;
        Ok(Ept {
            pml4,
            tables: alloc::vec![pml4],
            reserved: reserved.to_vec(),
            mapped_pages: 0,
        })
    }

    /// Adds a host-physical range the hypervisor owns (e.g. a frame allocated later).
    pub fn reserve(&mut self, range: Range<u64>) {
        self.reserved.push(range);
    }

    /// The EPT pointer (SDM 25.6.11): WB paging-structure memory type, 4-level walk.
    pub fn eptp(&self) -> u64 {
        self.pml4 | EPTP_WALK_LENGTH_4 | MemoryType::WriteBack as u64
    }

    pub fn mapped_pages(&self) -> u64 {
        self.mapped_pages
    }

    fn is_hypervisor_frame(&self, hpa: u64) -> bool {
        self.tables.contains(&hpa) || self.reserved.iter().any(|r| r.contains(&hpa))
    }

    /// Maps one 4 KiB page, write-back.
    pub fn map_4k(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        perms: u64,
    ) -> Result<(), EptError> {
        if !gpa.is_multiple_of(PAGE_SIZE) || !hpa.is_multiple_of(PAGE_SIZE) {
            return Err(EptError::Misaligned { gpa, hpa });
        }
        if self.is_hypervisor_frame(hpa) {
            return Err(EptError::HypervisorFrame { gpa, hpa });
        }
        let mut table = self.pml4;
        for level in (1..4).rev() {
            let index = ((gpa >> (12 + 9 * level)) & 0x1ff) as usize;
            let entry = mem.table(table)[index];
            table = if entry & perm::RWX == 0 {
                let next = mem.alloc_table().ok_or(EptError::OutOfFrames)?;
                if self.reserved.iter().any(|r| r.contains(&next)) {
                    return Err(EptError::HypervisorFrame { gpa, hpa: next });
                }
                self.tables.push(next);
                mem.table(table)[index] = next | perm::RWX;
                next
            } else {
                entry & ADDR_MASK
            };
        }
        let index = ((gpa >> 12) & 0x1ff) as usize;
        let pt = mem.table(table);
        if pt[index] & perm::RWX != 0 {
            return Err(EptError::AlreadyMapped { gpa });
        }
        pt[index] = hpa | (perms & perm::RWX) | (MemoryType::WriteBack as u64) << MEMORY_TYPE_SHIFT;
        self.mapped_pages += 1;
        Ok(())
    }

    /// The host frame and leaf entry for `gpa`, if mapped.
    pub fn translate(&self, mem: &mut impl TableMemory, gpa: u64) -> Option<(u64, u64)> {
        let mut table = self.pml4;
        for level in (0..4).rev() {
            let index = ((gpa >> (12 + 9 * level)) & 0x1ff) as usize;
            let entry = mem.table(table)[index];
            if entry & perm::RWX == 0 {
                return None;
            }
            if level == 0 {
                return Some(((entry & ADDR_MASK) | (gpa & 0xfff), entry));
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// Every paging-structure frame.
    pub fn table_frames(&self) -> &[u64] {
        &self.tables
    }

    /// Every leaf as (gpa, entry), in guest-physical order.
    pub fn leaves(&self, mem: &mut impl TableMemory) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        walk(mem, self.pml4, 3, 0, &mut out);
        out
    }
}

fn walk(mem: &mut impl TableMemory, table: u64, level: u32, base: u64, out: &mut Vec<(u64, u64)>) {
    let entries = *mem.table(table);
    for (i, e) in entries.iter().enumerate() {
        if e & perm::RWX == 0 {
            continue;
        }
        let gpa = base | (i as u64) << (12 + 9 * level);
        if level == 0 {
            out.push((gpa, *e));
        } else {
            walk(mem, e & ADDR_MASK, level - 1, gpa, out);
        }
    }
}

/// The memory type a leaf entry gives its page.
pub fn leaf_memory_type(entry: u64) -> u64 {
    (entry >> MEMORY_TYPE_SHIFT) & 7
}

#[cfg(test)]
pub mod mock {
    use super::*;
    use std::collections::BTreeMap;

    /// Tables in a map; frames handed out from `next` upward.
    pub struct MockTables {
        pub next: u64,
        pub limit: u64,
        pub tables: BTreeMap<u64, Box<[u64; ENTRIES]>>,
    }

    impl MockTables {
        pub fn new(first: u64, count: u64) -> Self {
            MockTables {
                next: first,
                limit: first + count * PAGE_SIZE,
                tables: BTreeMap::new(),
            }
        }
    }

    impl TableMemory for MockTables {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.next >= self.limit {
                return None;
            }
            let pa = self.next;
            self.next += PAGE_SIZE;
            self.tables.insert(pa, Box::new([0; ENTRIES]));
            Some(pa)
        }
        fn table(&mut self, pa: u64) -> &mut [u64; ENTRIES] {
            self.tables.get_mut(&pa).expect("not a table frame")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mock::MockTables;
    use super::*;

    const HV: Range<u64> = 0x20_0000..0x40_0000;

    #[test]
    fn maps_guest_ram_write_back_and_never_the_hypervisor() {
        // Tables come from 0x100_0000; guest RAM frames from 0x200_0000 (8 MiB of guest).
        let mut mem = MockTables::new(0x100_0000, 64);
        let mut ept = Ept::new(&mut mem, &[HV]).unwrap();
        for i in 0..2048u64 {
            ept.map_4k(
                &mut mem,
                i * PAGE_SIZE,
                0x200_0000 + i * PAGE_SIZE,
                perm::RWX,
            )
            .unwrap();
        }
        assert_eq!(ept.mapped_pages(), 2048);
        // PML4 + 1 PDPT + 1 PD + 4 PTs.
        assert_eq!(ept.table_frames().len(), 7);
        assert_eq!(ept.eptp(), 0x100_0000 | 0x18 | 6);
        let leaves = ept.leaves(&mut mem);
        assert_eq!(leaves.len(), 2048);
        assert_eq!(leaves[5], (0x5000, 0x200_5000 | 0x7 | 6 << 3));
        for (gpa, e) in &leaves {
            assert_eq!(leaf_memory_type(*e), 6, "gpa {gpa:#x}");
            let hpa = e & ADDR_MASK;
            assert!(!HV.contains(&hpa));
            assert!(!ept.table_frames().contains(&hpa));
        }
        assert_eq!(ept.translate(&mut mem, 0x80_0123), None);
        assert_eq!(
            ept.translate(&mut mem, 0x1234).map(|t| t.0),
            Some(0x200_1234)
        );
    }

    #[test]
    fn refuses_hypervisor_and_table_frames_and_double_maps() {
        let mut mem = MockTables::new(0x100_0000, 8);
        let mut ept = Ept::new(&mut mem, &[HV]).unwrap();
        assert_eq!(
            ept.map_4k(&mut mem, 0, 0x30_0000, perm::RWX),
            Err(EptError::HypervisorFrame {
                gpa: 0,
                hpa: 0x30_0000
            })
        );
        ept.map_4k(&mut mem, 0, 0x500_0000, perm::RWX).unwrap();
        // The PML4 itself.
        assert_eq!(
            ept.map_4k(&mut mem, 0x1000, 0x100_0000, perm::RWX),
            Err(EptError::HypervisorFrame {
                gpa: 0x1000,
                hpa: 0x100_0000
            })
        );
        assert_eq!(
            ept.map_4k(&mut mem, 0, 0x500_1000, perm::RWX),
            Err(EptError::AlreadyMapped { gpa: 0 })
        );
        assert_eq!(
            ept.map_4k(&mut mem, 0x10, 0x500_1000, perm::RWX),
            Err(EptError::Misaligned {
                gpa: 0x10,
                hpa: 0x500_1000
            })
        );
        assert_eq!(
            format!(
                "{}",
                EptError::HypervisorFrame {
                    gpa: 0x1000,
                    hpa: 0x100_0000
                }
            ),
            "refusing to map hypervisor frame 0x1000000 at guest-physical 0x1000"
        );
    }

    #[test]
    fn running_out_of_table_frames_is_an_error() {
        let mut mem = MockTables::new(0x100_0000, 2);
        let mut ept = Ept::new(&mut mem, &[]).unwrap();
        assert_eq!(
            ept.map_4k(&mut mem, 0, 0x500_0000, perm::RWX),
            Err(EptError::OutOfFrames)
        );
    }
}
