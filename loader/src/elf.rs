//! Guest-image loader, shaped like rust-vmm's linux-loader but `no_std`:
//! [`load`]`(&[u8], &mut impl GuestMemory) -> Result<Loaded, LoadError>`.
//!
//! The image is an ELF64 x86-64 executable. Its PT_LOAD segments are copied to their
//! physical addresses (`p_paddr`) in guest memory, the rest of each segment (`p_memsz -
//! p_filesz`) zeroed. The entry point is the PVH `XEN_ELFNOTE_PHYS32_ENTRY` note when
//! present (32-bit protected-mode entry, paging off), else `e_entry`.

use object::LittleEndian as LE;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use thiserror::Error;

use crate::fixed::FixedVec;

/// ELF identification bytes: class and data-encoding offsets (ELF spec, e_ident).
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const EI_NIDENT: usize = 16;

/// The PVH entry note type (Xen public/elfnote.h).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Most PT_LOAD segments accepted.
pub const MAX_SEGMENTS: usize = 16;

/// Guest-physical memory as the loader sees it: RAM from address 0 to [`GuestMemory::size`].
pub trait GuestMemory {
    /// Bytes of guest RAM, from guest-physical 0.
    fn size(&self) -> u64;
    /// Copies `data` to guest-physical `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError>;
    /// Zeroes `len` bytes at guest-physical `gpa`.
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), GuestMemoryError>;
}

/// An access outside guest RAM.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("guest memory: {len:#x} bytes at {gpa:#x} are outside the {size:#x} bytes of guest RAM")]
pub struct GuestMemoryError {
    pub gpa: u64,
    pub len: u64,
    pub size: u64,
}

/// Guest RAM backed by one byte slice (the hypervisor's identity-mapped guest RAM, or a
/// `Vec` in tests).
pub struct SliceMemory<'a>(pub &'a mut [u8]);

impl SliceMemory<'_> {
    fn range(&self, gpa: u64, len: u64) -> Result<core::ops::Range<usize>, GuestMemoryError> {
        let size = self.0.len() as u64;
        let err = GuestMemoryError { gpa, len, size };
        let end = gpa.checked_add(len).ok_or(err)?;
        if end > size {
            return Err(err);
        }
        Ok(gpa as usize..end as usize)
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let r = self.range(gpa, data.len() as u64)?;
        self.0[r].copy_from_slice(data);
        Ok(())
    }
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), GuestMemoryError> {
        let r = self.range(gpa, len)?;
        self.0[r].fill(0);
        Ok(())
    }
}

/// One PT_LOAD segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`), for symbolisation.
    pub vaddr: u64,
    /// Offset of the bytes in the image.
    pub file_offset: u64,
    /// Bytes copied from the image.
    pub file_size: u64,
    /// Bytes occupied in memory (the rest is zeroed).
    pub mem_size: u64,
    /// `p_flags` (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
}

/// Where the entry point came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// The PVH note: enter in 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// `e_entry`.
    ElfHeader,
}

/// What [`load`] (or [`parse`]) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The entry point (guest-physical for PVH).
    pub entry: u64,
    /// Where `entry` came from.
    pub entry_kind: EntryKind,
    /// The PT_LOAD segments with a non-zero memory size, in file order.
    pub segments: FixedVec<Segment, MAX_SEGMENTS>,
    /// Lowest guest-physical address loaded.
    pub low: u64,
    /// One past the highest guest-physical address loaded.
    pub high: u64,
}

/// Why an image could not be loaded.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("elf: image is {0} bytes, too short for an ELF header")]
    TooShort(usize),
    #[error("elf: no ELF magic (\\x7fELF)")]
    NotElf,
    #[error("elf: class {0} is not ELFCLASS64 (2)")]
    NotElf64(u8),
    #[error("elf: data encoding {0} is not little-endian (1)")]
    NotLittleEndian(u8),
    #[error("elf: {0}")]
    Malformed(object::read::Error),
    #[error("elf: machine {0} is not x86-64 (62)")]
    NotX86_64(u16),
    #[error("elf: type {0} is not ET_EXEC (2)")]
    NotExecutable(u16),
    #[error("elf: segment {index}: file bytes {offset:#x}+{size:#x} run past the image end")]
    SegmentOutsideFile {
        index: usize,
        offset: u64,
        size: u64,
    },
    #[error("elf: segment {index}: p_filesz {file_size:#x} exceeds p_memsz {mem_size:#x}")]
    FileSizeExceedsMemSize {
        index: usize,
        file_size: u64,
        mem_size: u64,
    },
    #[error("elf: segment {index}: p_paddr {paddr:#x} + p_memsz {mem_size:#x} overflows")]
    AddressOverflow {
        index: usize,
        paddr: u64,
        mem_size: u64,
    },
    #[error("elf: more than {MAX_SEGMENTS} PT_LOAD segments")]
    TooManySegments,
    #[error("elf: no PT_LOAD segment")]
    NoLoadableSegments,
    #[error("elf: PVH entry note has a {0}-byte descriptor (expected 4 or 8)")]
    BadPvhNote(usize),
    #[error("elf: {0}")]
    Memory(GuestMemoryError),
}

impl From<object::read::Error> for LoadError {
    fn from(e: object::read::Error) -> Self {
        Self::Malformed(e)
    }
}

impl From<GuestMemoryError> for LoadError {
    fn from(e: GuestMemoryError) -> Self {
        Self::Memory(e)
    }
}

/// Checks `image` and describes what loading it would do, without touching guest memory.
pub fn parse(image: &[u8]) -> Result<Loaded, LoadError> {
    let ident = image
        .get(..EI_NIDENT)
        .ok_or(LoadError::TooShort(image.len()))?;
    if ident[..4] != elf::ELFMAG {
        return Err(LoadError::NotElf);
    }
    if ident[EI_CLASS] != elf::ELFCLASS64.0 {
        return Err(LoadError::NotElf64(ident[EI_CLASS]));
    }
    if ident[EI_DATA] != elf::ELFDATA2LSB.0 {
        return Err(LoadError::NotLittleEndian(ident[EI_DATA]));
    }
    let header = elf::FileHeader64::<LE>::parse(image)?;
    let machine = header.e_machine(LE);
    if machine != elf::EM_X86_64 {
        return Err(LoadError::NotX86_64(machine.0));
    }
    let ty = header.e_type(LE);
    if ty != elf::ET_EXEC {
        return Err(LoadError::NotExecutable(ty.0));
    }
    let mut loaded = Loaded {
        entry: header.e_entry(LE),
        entry_kind: EntryKind::ElfHeader,
        segments: FixedVec::new(),
        low: u64::MAX,
        high: 0,
    };
    for (index, ph) in header.program_headers(LE, image)?.iter().enumerate() {
        let ptype = ph.p_type(LE);
        if ptype == elf::PT_NOTE {
            if let Some(mut notes) = ph.notes(LE, image)? {
                while let Some(note) = notes.next()? {
                    if note.name() == b"Xen" && note.n_type(LE).0 == XEN_ELFNOTE_PHYS32_ENTRY {
                        let desc = note.desc();
                        let entry = match desc.len() {
                            4 => {
                                u64::from(u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]))
                            }
                            8 => u64::from_le_bytes(
                                desc.try_into().map_err(|_| LoadError::BadPvhNote(8))?,
                            ),
                            n => return Err(LoadError::BadPvhNote(n)),
                        };
                        loaded.entry = entry;
                        loaded.entry_kind = EntryKind::Pvh;
                    }
                }
            }
            continue;
        }
        if ptype != elf::PT_LOAD || ph.p_memsz(LE) == 0 {
            continue;
        }
        let seg = Segment {
            paddr: ph.p_paddr(LE),
            vaddr: ph.p_vaddr(LE),
            file_offset: ph.p_offset(LE),
            file_size: ph.p_filesz(LE),
            mem_size: ph.p_memsz(LE),
            flags: ph.p_flags(LE).0,
        };
        let in_file = seg
            .file_offset
            .checked_add(seg.file_size)
            .is_some_and(|end| end <= image.len() as u64);
        if !in_file {
            return Err(LoadError::SegmentOutsideFile {
                index,
                offset: seg.file_offset,
                size: seg.file_size,
            });
        }
        if seg.file_size > seg.mem_size {
            return Err(LoadError::FileSizeExceedsMemSize {
                index,
                file_size: seg.file_size,
                mem_size: seg.mem_size,
            });
        }
        let end = seg
            .paddr
            .checked_add(seg.mem_size)
            .ok_or(LoadError::AddressOverflow {
                index,
                paddr: seg.paddr,
                mem_size: seg.mem_size,
            })?;
        loaded.low = loaded.low.min(seg.paddr);
        loaded.high = loaded.high.max(end);
        loaded
            .segments
            .push(seg)
            .map_err(|_| LoadError::TooManySegments)?;
    }
    if loaded.segments.is_empty() {
        return Err(LoadError::NoLoadableSegments);
    }
    Ok(loaded)
}

/// Loads `image` into `mem`: copies every PT_LOAD segment to `p_paddr` and zeroes its tail.
/// Nothing is written unless every segment fits in guest RAM.
pub fn load(image: &[u8], mem: &mut impl GuestMemory) -> Result<Loaded, LoadError> {
    let loaded = parse(image)?;
    if loaded.high > mem.size() {
        let seg = loaded
            .segments
            .iter()
            .find(|s| s.paddr + s.mem_size > mem.size())
            .copied()
            .unwrap_or_default();
        return Err(LoadError::Memory(GuestMemoryError {
            gpa: seg.paddr,
            len: seg.mem_size,
            size: mem.size(),
        }));
    }
    for seg in loaded.segments.iter() {
        // `parse` checked the file range, so these indices are in bounds.
        let bytes = &image[seg.file_offset as usize..(seg.file_offset + seg.file_size) as usize];
        mem.write(seg.paddr, bytes)?;
        mem.zero(seg.paddr + seg.file_size, seg.mem_size - seg.file_size)?;
    }
    Ok(loaded)
}

/// Builds small ELF64 images for tests (here and in other crates' tests).
#[cfg(any(test, feature = "std"))]
pub mod build {
    extern crate std;
    use std::vec::Vec;

    /// A PT_LOAD segment to emit: (paddr, vaddr, file bytes, memsz, flags).
    pub struct Seg<'a> {
        pub paddr: u64,
        pub vaddr: u64,
        pub bytes: &'a [u8],
        pub mem_size: u64,
        pub flags: u32,
    }

    /// An ELF64 x86-64 ET_EXEC with `segs`, entry `entry`, and (if `pvh` is Some) a PT_NOTE
    /// holding a Xen PHYS32_ENTRY note with that descriptor.
    pub fn exec(entry: u64, segs: &[Seg<'_>], pvh: Option<&[u8]>) -> Vec<u8> {
        let phnum = segs.len() + usize::from(pvh.is_some());
        let mut note = Vec::new();
        if let Some(desc) = pvh {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz ("Xen\0")
            note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            note.extend_from_slice(&18u32.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(desc);
            while note.len() % 4 != 0 {
                note.push(0);
            }
        }
        let data_start = 64 + 56 * phnum;
        let mut data = Vec::new();
        let mut phdrs = Vec::new();
        let mut ph = |ptype: u32,
                      flags: u32,
                      off: u64,
                      vaddr: u64,
                      paddr: u64,
                      filesz: u64,
                      memsz: u64,
                      align: u64| {
            for v in [ptype, flags] {
                phdrs.extend_from_slice(&v.to_le_bytes());
            }
            for v in [off, vaddr, paddr, filesz, memsz, align] {
                phdrs.extend_from_slice(&v.to_le_bytes());
            }
        };
        for s in segs {
            let off = (data_start + data.len()) as u64;
            data.extend_from_slice(s.bytes);
            ph(
                1,
                s.flags,
                off,
                s.vaddr,
                s.paddr,
                s.bytes.len() as u64,
                s.mem_size,
                0x1000,
            );
        }
        if pvh.is_some() {
            while !(data_start + data.len()).is_multiple_of(4) {
                data.push(0);
            }
            let off = (data_start + data.len()) as u64;
            data.extend_from_slice(&note);
            ph(4, 4, off, 0, 0, note.len() as u64, note.len() as u64, 4);
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[2, 1, 1, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out.extend_from_slice(&(phnum as u16).to_le_bytes());
        out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(out.len(), 64);
        out.extend_from_slice(&phdrs);
        out.extend_from_slice(&data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{Seg, exec};
    use super::*;

    fn two_segments(pvh: Option<&[u8]>) -> Vec<u8> {
        exec(
            0xffff_ffff_8100_0000,
            &[
                Seg {
                    paddr: 0x10_0000,
                    vaddr: 0xffff_ffff_8100_0000,
                    bytes: b"CODE-BYTES",
                    mem_size: 10,
                    flags: 5,
                },
                Seg {
                    paddr: 0x20_0000,
                    vaddr: 0xffff_ffff_8110_0000,
                    bytes: b"data",
                    mem_size: 0x1000,
                    flags: 6,
                },
            ],
            pvh,
        )
    }

    #[test]
    fn loads_segments_and_zeroes_bss() {
        let image = two_segments(None);
        let mut ram = vec![0xaau8; 0x30_0000];
        let loaded = load(&image, &mut SliceMemory(&mut ram)).unwrap();
        assert_eq!(loaded.entry, 0xffff_ffff_8100_0000);
        assert_eq!(loaded.entry_kind, EntryKind::ElfHeader);
        assert_eq!((loaded.low, loaded.high), (0x10_0000, 0x20_1000));
        assert_eq!(loaded.segments.len(), 2);
        assert_eq!(loaded.segments[1].vaddr, 0xffff_ffff_8110_0000);
        assert_eq!(loaded.segments[1].flags, 6);
        assert_eq!(&ram[0x10_0000..0x10_000a], b"CODE-BYTES");
        assert_eq!(ram[0x10_000a], 0xaa); // untouched past memsz
        assert_eq!(&ram[0x20_0000..0x20_0004], b"data");
        assert!(ram[0x20_0004..0x20_1000].iter().all(|&b| b == 0));
        assert_eq!(ram[0x20_1000], 0xaa);
    }

    #[test]
    fn pvh_note_wins_over_e_entry() {
        let image = two_segments(Some(&0x0100_0120u32.to_le_bytes()));
        let l = parse(&image).unwrap();
        assert_eq!((l.entry, l.entry_kind), (0x0100_0120, EntryKind::Pvh));
        // Linux emits the note as a 64-bit value.
        let image = two_segments(Some(&0x0100_0120u64.to_le_bytes()));
        assert_eq!(parse(&image).unwrap().entry, 0x0100_0120);
        let image = two_segments(Some(&[1, 2]));
        assert_eq!(parse(&image), Err(LoadError::BadPvhNote(2)));
    }

    #[test]
    fn guest_ram_too_small_writes_nothing() {
        let image = two_segments(None);
        let mut ram = vec![0xaau8; 0x20_0800];
        let err = load(&image, &mut SliceMemory(&mut ram)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "elf: guest memory: 0x1000 bytes at 0x200000 are outside the 0x200800 bytes of guest RAM"
        );
        assert!(ram.iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn header_errors_are_exact() {
        assert_eq!(parse(b"\x7fELF"), Err(LoadError::TooShort(4)));
        assert_eq!(parse(&[0u8; 64]), Err(LoadError::NotElf));
        let mut img = two_segments(None);
        img[4] = 1;
        assert_eq!(
            parse(&img).unwrap_err().to_string(),
            "elf: class 1 is not ELFCLASS64 (2)"
        );
        let mut img = two_segments(None);
        img[5] = 2;
        assert_eq!(parse(&img), Err(LoadError::NotLittleEndian(2)));
        let mut img = two_segments(None);
        img[18] = 3; // EM_386
        assert_eq!(
            parse(&img).unwrap_err().to_string(),
            "elf: machine 3 is not x86-64 (62)"
        );
        let mut img = two_segments(None);
        img[16] = 3; // ET_DYN
        assert_eq!(
            parse(&img).unwrap_err().to_string(),
            "elf: type 3 is not ET_EXEC (2)"
        );
        // Program headers past the end of the file.
        let mut img = two_segments(None);
        img[56] = 9; // e_phnum = 9
        assert!(matches!(parse(&img), Err(LoadError::Malformed(_))));
    }

    #[test]
    fn segment_errors_are_exact() {
        let mut img = two_segments(None);
        // Segment 0's p_filesz (offset 64 + 32) made huge.
        img[96..104].copy_from_slice(&0xffff_ffffu64.to_le_bytes());
        assert_eq!(
            parse(&img),
            Err(LoadError::SegmentOutsideFile {
                index: 0,
                offset: 176,
                size: 0xffff_ffff
            })
        );
        let mut img = two_segments(None);
        img[96..104].copy_from_slice(&4u64.to_le_bytes()); // filesz 4 <= memsz 10: fine
        assert!(parse(&img).is_ok());
        img[104..112].copy_from_slice(&2u64.to_le_bytes()); // memsz 2 < filesz 4
        assert_eq!(
            parse(&img),
            Err(LoadError::FileSizeExceedsMemSize {
                index: 0,
                file_size: 4,
                mem_size: 2
            })
        );
        let mut img = two_segments(None);
        img[88..96].copy_from_slice(&u64::MAX.to_le_bytes()); // p_paddr
        assert_eq!(
            parse(&img),
            Err(LoadError::AddressOverflow {
                index: 0,
                paddr: u64::MAX,
                mem_size: 10
            })
        );
        assert_eq!(
            parse(&exec(0, &[], None)),
            Err(LoadError::NoLoadableSegments)
        );
        let many: Vec<Seg<'_>> = (0..17)
            .map(|i| Seg {
                paddr: i * 0x1000,
                vaddr: 0,
                bytes: b"x",
                mem_size: 1,
                flags: 4,
            })
            .collect();
        assert_eq!(
            parse(&exec(0, &many, None)),
            Err(LoadError::TooManySegments)
        );
    }

    #[test]
    fn real_toolchain_elf_is_checked_not_trusted() {
        // The test binary itself: a real x86-64 ELF64 from the Rust toolchain. It is a PIE
        // (ET_DYN), which a guest image must not be.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(parse(&me), Err(LoadError::NotExecutable(3)));
        // Patched to ET_EXEC, its real program headers parse: segments inside the file.
        let mut exe = me.clone();
        exe[16..18].copy_from_slice(&2u16.to_le_bytes());
        let l = parse(&exe).unwrap();
        assert!(!l.segments.is_empty());
        for s in l.segments.iter() {
            assert!(s.file_offset + s.file_size <= me.len() as u64);
            assert!(s.file_size <= s.mem_size);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let base = two_segments(Some(&0x1000u32.to_le_bytes()));
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            let mut img = base.clone();
            for _ in 0..3 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let i = (s as usize) % img.len();
                img[i] = (s >> 32) as u8;
            }
            let mut ram = vec![0u8; 0x30_0000];
            let _ = load(&img, &mut SliceMemory(&mut ram));
        }
    }
}
