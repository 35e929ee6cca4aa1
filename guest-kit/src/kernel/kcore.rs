//! `/proc/kcore`: the running kernel's memory as an ELF core file.
//!
//! Each `PT_LOAD` program header maps a range of kernel virtual addresses (`p_vaddr`,
//! `p_filesz` bytes) to a file offset (`p_offset`). Linux also fills `p_paddr` with the
//! physical address of the direct map (`KCORE_RAM`) and of the kernel image
//! (`KCORE_TEXT`), and with `-1` elsewhere (fs/proc/kcore.c); [`Kcore::phys_of`] gives it.
//!
//! Only the ELF header and the program headers are read up front; memory is read with
//! positioned reads (`pread`) as needed: `/proc/kcore` claims a size of 128 TiB.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The most program headers accepted (the kernel writes one per memory range).
pub const MAX_SEGMENTS: usize = 100_000;

const ET_CORE: u16 = 4;
const PT_LOAD: u32 = 1;
/// `e_phnum` value meaning "the count is in section header 0's `sh_info`".
const PN_XNUM: u16 = 0xffff;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;

/// Positioned reads of a whole buffer (a file, or bytes in memory for tests).
pub trait ReadAt {
    /// Fills `buf` from byte `offset` on, or fails (a short read is an error).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// Reads kernel virtual memory.
pub trait KernelMemory {
    /// Fills `buf` with the bytes at kernel virtual address `vaddr`.
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// The physical address behind `vaddr`, when the memory source knows it (kcore does
    /// for the direct map and the kernel image). Used to cross-check, never required.
    fn phys_of(&self, _vaddr: u64) -> Option<u64> {
        None
    }

    /// A little-endian `u64` at `vaddr`.
    fn read_u64(&self, vaddr: u64) -> Result<u64, MemoryError> {
        let mut b = [0; 8];
        self.read(vaddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A little-endian `u32` at `vaddr`.
    fn read_u32(&self, vaddr: u64) -> Result<u32, MemoryError> {
        let mut b = [0; 4];
        self.read(vaddr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// Why kernel memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{len} bytes at {addr:#x} are not (all) in a PT_LOAD segment")]
    Unmapped { addr: u64, len: usize },
    #[error("cannot read {len} bytes at {addr:#x}: {source}")]
    Io {
        addr: u64,
        len: usize,
        source: io::Error,
    },
}

/// Why a file is not a usable core.
#[derive(Debug, thiserror::Error)]
pub enum KcoreError {
    #[error("cannot open it: {0}")]
    Open(#[source] io::Error),
    #[error("cannot read the ELF headers: {0}")]
    Io(#[source] io::Error),
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64Le,
    #[error("ELF type {0} is not a core file (4)")]
    NotCore(u16),
    #[error("program header size {0} is below 56")]
    BadPhentsize(u16),
    #[error("{0} program headers (at most {MAX_SEGMENTS})")]
    TooManySegments(u64),
    #[error("PT_LOAD segment at {vaddr:#x} of {size:#x} bytes wraps around")]
    SegmentWraps { vaddr: u64, size: u64 },
}

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First kernel virtual address.
    pub vaddr: u64,
    /// Bytes present in the file (`p_filesz`).
    pub size: u64,
    /// File offset of `vaddr`.
    pub offset: u64,
    /// Physical address of `vaddr` (`p_paddr`), unless the kernel wrote -1.
    pub paddr: Option<u64>,
}

impl Segment {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.vaddr && addr - self.vaddr < self.size
    }
}

/// An ELF core file opened for reading kernel memory.
#[derive(Debug)]
pub struct Kcore<R> {
    source: R,
    segments: Vec<Segment>,
}

impl Kcore<File> {
    /// Opens `/proc/kcore` (or another ELF core file). Errors do not name the path.
    pub fn open(path: &Path) -> Result<Self, KcoreError> {
        let file = File::open(path).map_err(KcoreError::Open)?;
        Kcore::parse(file)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl<R: ReadAt> Kcore<R> {
    /// Reads the ELF header and the program headers of `source`.
    pub fn parse(source: R) -> Result<Self, KcoreError> {
        let mut eh = [0u8; EHDR_SIZE];
        source.read_exact_at(&mut eh, 0).map_err(KcoreError::Io)?;
        if eh[..4] != *b"\x7fELF" {
            return Err(KcoreError::NotElf);
        }
        // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
        if eh[4] != 2 || eh[5] != 1 {
            return Err(KcoreError::NotElf64Le);
        }
        let e_type = u16_at(&eh, 0x10);
        if e_type != ET_CORE {
            return Err(KcoreError::NotCore(e_type));
        }
        let phoff = u64_at(&eh, 0x20);
        let shoff = u64_at(&eh, 0x28);
        let phentsize = u16_at(&eh, 0x36);
        let mut phnum = u64::from(u16_at(&eh, 0x38));
        if phentsize < PHDR_SIZE as u16 {
            return Err(KcoreError::BadPhentsize(phentsize));
        }
        if phnum == u64::from(PN_XNUM) {
            let mut sh = [0u8; SHDR_SIZE];
            source
                .read_exact_at(&mut sh, shoff)
                .map_err(KcoreError::Io)?;
            phnum = u64::from(u32_at(&sh, 0x2c));
        }
        if phnum > MAX_SEGMENTS as u64 {
            return Err(KcoreError::TooManySegments(phnum));
        }
        let entsize = usize::from(phentsize);
        let mut table = vec![0u8; phnum as usize * entsize];
        source
            .read_exact_at(&mut table, phoff)
            .map_err(KcoreError::Io)?;
        let mut segments = Vec::new();
        for ph in table.chunks_exact(entsize) {
            if u32_at(ph, 0) != PT_LOAD {
                continue;
            }
            let (offset, vaddr, paddr, size) = (
                u64_at(ph, 8),
                u64_at(ph, 16),
                u64_at(ph, 24),
                u64_at(ph, 32),
            );
            if size == 0 {
                continue;
            }
            if vaddr.checked_add(size - 1).is_none() || offset.checked_add(size).is_none() {
                return Err(KcoreError::SegmentWraps { vaddr, size });
            }
            segments.push(Segment {
                vaddr,
                size,
                offset,
                paddr: (paddr != u64::MAX).then_some(paddr),
            });
        }
        Ok(Kcore { source, segments })
    }

    /// The `PT_LOAD` segments, in file order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    fn segment_of(&self, addr: u64) -> Option<&Segment> {
        // Few segments (tens): a scan also copes with overlapping ones.
        self.segments.iter().find(|s| s.contains(addr))
    }
}

impl<R: ReadAt> KernelMemory for Kcore<R> {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let unmapped = MemoryError::Unmapped {
            addr: vaddr,
            len: buf.len(),
        };
        let mut done = 0;
        // Each step consumes at least one byte, so this ends after buf.len() steps at most.
        while done < buf.len() {
            let Some(addr) = vaddr.checked_add(done as u64) else {
                return Err(unmapped);
            };
            let Some(seg) = self.segment_of(addr) else {
                return Err(unmapped);
            };
            let in_seg = seg.size - (addr - seg.vaddr);
            let n = (buf.len() - done).min(usize::try_from(in_seg).unwrap_or(usize::MAX));
            self.source
                .read_exact_at(&mut buf[done..done + n], seg.offset + (addr - seg.vaddr))
                .map_err(|source| MemoryError::Io {
                    addr,
                    len: n,
                    source,
                })?;
            done += n;
        }
        Ok(())
    }

    fn phys_of(&self, vaddr: u64) -> Option<u64> {
        let seg = self.segment_of(vaddr)?;
        seg.paddr?.checked_add(vaddr - seg.vaddr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::elf::{FileHeader, ProgramHeader, Writer};

    /// An ELF core written by the `object` crate (not by our own synthetic writer), with a
    /// PT_NOTE first as in /proc/kcore, then PT_LOAD segments `(vaddr, paddr, bytes)`.
    fn core(loads: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = Writer::new(object::Endianness::Little, true, &mut buf);
        w.reserve_file_header();
        w.reserve_program_headers(loads.len() as u32 + 1);
        let offsets: Vec<usize> = loads.iter().map(|l| w.reserve(l.2.len(), 8)).collect();
        w.write_file_header(&FileHeader {
            os_abi: 0,
            abi_version: 0,
            e_type: object::elf::ET_CORE,
            e_machine: object::elf::EM_X86_64,
            e_entry: 0,
            e_flags: 0,
        })
        .unwrap();
        w.write_align_program_headers();
        w.write_program_header(&ProgramHeader {
            p_type: object::elf::PT_NOTE,
            p_flags: 0,
            p_offset: 0,
            p_vaddr: 0,
            p_paddr: 0,
            p_filesz: 0,
            p_memsz: 0,
            p_align: 0,
        });
        for ((vaddr, paddr, bytes), off) in loads.iter().zip(&offsets) {
            w.write_program_header(&ProgramHeader {
                p_type: object::elf::PT_LOAD,
                p_flags: object::elf::PF_R | object::elf::PF_W | object::elf::PF_X,
                p_offset: *off as u64,
                p_vaddr: *vaddr,
                p_paddr: *paddr,
                p_filesz: bytes.len() as u64,
                p_memsz: bytes.len() as u64,
                p_align: 0x1000,
            });
        }
        for ((_, _, bytes), off) in loads.iter().zip(&offsets) {
            w.pad_until(*off);
            w.write(bytes);
        }
        buf
    }

    const TEXT: u64 = 0xffff_ffff_9a00_0000;
    const DIRECT: u64 = 0xffff_9a3c_0000_0000;

    fn sample() -> Vec<u8> {
        let text: Vec<u8> = (0..0x100u32).map(|i| i as u8).collect();
        let ram_a: Vec<u8> = vec![0xaa; 0x80];
        let ram_b: Vec<u8> = vec![0xbb; 0x80];
        core(&[
            (TEXT, 0x3a00_0000, text),
            // Two virtually adjacent segments: a read may cross from one to the other.
            (DIRECT + 0x1000, 0x1000, ram_a),
            (DIRECT + 0x1080, 0x1080, ram_b),
            // vmalloc-like: no physical address.
            (0xffff_c900_0000_0000, u64::MAX, vec![0x11; 0x10]),
        ])
    }

    #[test]
    fn reads_segments_as_the_kernel_maps_them() {
        let k = Kcore::parse(sample()).unwrap();
        assert_eq!(k.segments().len(), 4);
        assert_eq!(k.read_u64(TEXT).unwrap(), 0x0706_0504_0302_0100);
        assert_eq!(k.read_u32(TEXT + 0xfc).unwrap(), 0xfffe_fdfc);
        let mut across = [0u8; 4];
        k.read(DIRECT + 0x107e, &mut across).unwrap();
        assert_eq!(across, [0xaa, 0xaa, 0xbb, 0xbb]);
        assert_eq!(k.phys_of(TEXT + 0x10), Some(0x3a00_0010));
        assert_eq!(k.phys_of(DIRECT + 0x1090), Some(0x1090));
        assert_eq!(k.phys_of(0xffff_c900_0000_0004), None);
        assert_eq!(k.phys_of(DIRECT), None);
    }

    #[test]
    fn reads_outside_segments_fail_with_the_address() {
        let k = Kcore::parse(sample()).unwrap();
        let e = k.read_u64(TEXT + 0xfc).unwrap_err().to_string();
        assert_eq!(
            e,
            "8 bytes at 0xffffffff9a0000fc are not (all) in a PT_LOAD segment"
        );
        assert!(k.read_u64(0).is_err());
        assert!(k.read_u64(u64::MAX - 3).is_err());
        let mut empty = [0u8; 0];
        k.read(0x1234, &mut empty).unwrap();
    }

    #[test]
    fn non_cores_are_rejected() {
        let err = |b: Vec<u8>| Kcore::parse(b).unwrap_err().to_string();
        assert_eq!(
            err(b"hello".to_vec()),
            "cannot read the ELF headers: unexpected end of file"
        );
        assert_eq!(err(vec![0; 64]), "not an ELF file");
        let mut exec = sample();
        exec[0x10] = 2; // ET_EXEC
        assert_eq!(err(exec), "ELF type 2 is not a core file (4)");
        let mut be = sample();
        be[5] = 2;
        assert_eq!(err(be), "not a 64-bit little-endian ELF file");
        let mut short = sample();
        short.truncate(64 + 56);
        assert!(err(short).starts_with("cannot read the ELF headers"));
    }

    #[test]
    fn extended_program_header_count_is_followed() {
        // e_phnum = PN_XNUM: the count lives in section header 0's sh_info.
        let mut b = sample();
        let shoff = b.len() as u64;
        let mut sh = [0u8; 64];
        sh[0x2c..0x30].copy_from_slice(&5u32.to_le_bytes());
        b.extend_from_slice(&sh);
        b[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&PN_XNUM.to_le_bytes());
        let k = Kcore::parse(b).unwrap();
        assert_eq!(k.segments().len(), 4);
    }
}
