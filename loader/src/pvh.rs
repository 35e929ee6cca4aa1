//! The PVH boot ABI (Xen `public/arch-x86/hvm/start_info.h`, version 1): the
//! `hvm_start_info` a PVH guest finds at EBX, its module list and memory map, and a writer
//! that lays them out, with the command lines, in a buffer at a chosen guest-physical
//! address. Fields are serialised one by one, little-endian: no pointer casts.

use thiserror::Error;

/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// The structure version written (1 adds the memory map).
pub const HVM_START_VERSION: u32 = 1;

/// Memory-map entry types (E820 numbering).
pub mod memmap_type {
    pub const RAM: u32 = 1;
    pub const RESERVED: u32 = 2;
    pub const ACPI: u32 = 3;
    pub const NVS: u32 = 4;
    pub const UNUSABLE: u32 = 5;
}

/// `struct hvm_start_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 56);

/// `struct hvm_modlist_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}
const _: () = assert!(core::mem::size_of::<HvmModlistEntry>() == 32);

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<HvmMemmapEntry>() == 24);

/// Little-endian field writer over a fixed slice (lengths are checked by the caller).
struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | (u64::from(le_u32(b, at + 4)) << 32)
}

impl HvmStartInfo {
    /// Size in guest memory.
    pub const SIZE: usize = 56;

    fn write(&self, o: &mut Out<'_>) {
        o.u32(self.magic);
        o.u32(self.version);
        o.u32(self.flags);
        o.u32(self.nr_modules);
        o.u64(self.modlist_paddr);
        o.u64(self.cmdline_paddr);
        o.u64(self.rsdp_paddr);
        o.u64(self.memmap_paddr);
        o.u32(self.memmap_entries);
        o.u32(self.reserved);
    }

    /// Reads one back from its guest-memory bytes (`None` when too short).
    pub fn read(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(Self {
            magic: le_u32(b, 0),
            version: le_u32(b, 4),
            flags: le_u32(b, 8),
            nr_modules: le_u32(b, 12),
            modlist_paddr: le_u64(b, 16),
            cmdline_paddr: le_u64(b, 24),
            rsdp_paddr: le_u64(b, 32),
            memmap_paddr: le_u64(b, 40),
            memmap_entries: le_u32(b, 48),
            reserved: le_u32(b, 52),
        })
    }
}

impl HvmModlistEntry {
    /// Size in guest memory.
    pub const SIZE: usize = 32;

    fn write(&self, o: &mut Out<'_>) {
        o.u64(self.paddr);
        o.u64(self.size);
        o.u64(self.cmdline_paddr);
        o.u64(self.reserved);
    }
}

impl HvmMemmapEntry {
    /// Size in guest memory.
    pub const SIZE: usize = 24;

    fn write(&self, o: &mut Out<'_>) {
        o.u64(self.addr);
        o.u64(self.size);
        o.u32(self.kind);
        o.u32(self.reserved);
    }

    /// Reads one back from its guest-memory bytes (`None` when too short).
    pub fn read(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(Self {
            addr: le_u64(b, 0),
            size: le_u64(b, 8),
            kind: le_u32(b, 16),
            reserved: le_u32(b, 20),
        })
    }
}

/// A module for the guest (e.g. an initrd) already placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvhModule<'a> {
    pub paddr: u64,
    pub size: u64,
    pub cmdline: &'a str,
}

/// What to describe to the guest.
#[derive(Clone, Copy, Debug)]
pub struct StartInfoParams<'a> {
    /// The guest's memory map.
    pub memmap: &'a [HvmMemmapEntry],
    /// Modules (first = initrd for Linux).
    pub modules: &'a [PvhModule<'a>],
    /// The kernel command line ("" = none).
    pub cmdline: &'a str,
    /// Guest-physical address of the ACPI RSDP, 0 = none.
    pub rsdp_paddr: u64,
}

/// Where [`write_start_info`] put things (guest-physical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfoLayout {
    /// The `hvm_start_info`: pass this in EBX.
    pub start_info: u64,
    pub memmap: u64,
    pub modlist: u64,
    pub cmdline: u64,
    /// Bytes of the buffer used.
    pub size: usize,
}

/// Why the start info could not be written.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PvhError {
    #[error("pvh: start info needs {needed} bytes, the buffer has {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("pvh: a command line contains a NUL byte")]
    NulInCmdline,
    #[error("pvh: buffer at {0:#x} would extend past 4 GiB (PVH entry is 32-bit)")]
    Above4G(u64),
}

fn align8(v: usize) -> usize {
    (v + 7) & !7
}

/// Writes `hvm_start_info`, then the memory map, the module list, the kernel command line
/// and the module command lines into `buf`, which the guest will see at `base` (8-byte
/// aligned expected). Returns the layout; the rest of `buf` is untouched.
pub fn write_start_info(
    buf: &mut [u8],
    base: u64,
    p: &StartInfoParams<'_>,
) -> Result<StartInfoLayout, PvhError> {
    let strings = core::iter::once(p.cmdline).chain(p.modules.iter().map(|m| m.cmdline));
    let mut strings_len = 0usize;
    for s in strings {
        if s.as_bytes().contains(&0) {
            return Err(PvhError::NulInCmdline);
        }
        strings_len += if s.is_empty() { 0 } else { s.len() + 1 };
    }
    let memmap_off = HvmStartInfo::SIZE;
    let modlist_off = align8(memmap_off + p.memmap.len() * HvmMemmapEntry::SIZE);
    let cmdline_off = modlist_off + p.modules.len() * HvmModlistEntry::SIZE;
    let needed = cmdline_off + strings_len;
    if needed > buf.len() {
        return Err(PvhError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    if base
        .checked_add(needed as u64)
        .is_none_or(|end| end > 1 << 32)
    {
        return Err(PvhError::Above4G(base));
    }
    let gpa = |off: usize| base + off as u64;

    // Strings first, remembering where each landed.
    let mut at = cmdline_off;
    let mut place = |buf: &mut [u8], s: &str| -> u64 {
        if s.is_empty() {
            return 0;
        }
        buf[at..at + s.len()].copy_from_slice(s.as_bytes());
        buf[at + s.len()] = 0;
        let addr = gpa(at);
        at += s.len() + 1;
        addr
    };
    let cmdline_paddr = place(buf, p.cmdline);
    let mut o = Out {
        buf,
        at: modlist_off,
    };
    for m in p.modules {
        let cmdline_paddr = place(o.buf, m.cmdline);
        HvmModlistEntry {
            paddr: m.paddr,
            size: m.size,
            cmdline_paddr,
            reserved: 0,
        }
        .write(&mut o);
    }
    o.at = memmap_off;
    for e in p.memmap {
        e.write(&mut o);
    }
    // Padding between the memory map and the module list.
    o.buf[o.at..modlist_off].fill(0);
    o.at = 0;
    HvmStartInfo {
        magic: HVM_START_MAGIC,
        version: HVM_START_VERSION,
        flags: 0,
        nr_modules: p.modules.len() as u32,
        modlist_paddr: if p.modules.is_empty() {
            0
        } else {
            gpa(modlist_off)
        },
        cmdline_paddr,
        rsdp_paddr: p.rsdp_paddr,
        memmap_paddr: if p.memmap.is_empty() {
            0
        } else {
            gpa(memmap_off)
        },
        memmap_entries: p.memmap.len() as u32,
        reserved: 0,
    }
    .write(&mut o);
    Ok(StartInfoLayout {
        start_info: base,
        memmap: gpa(memmap_off),
        modlist: gpa(modlist_off),
        cmdline: cmdline_paddr,
        size: needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: [HvmMemmapEntry; 3] = [
        HvmMemmapEntry {
            addr: 0,
            size: 0x9fc00,
            kind: memmap_type::RAM,
            reserved: 0,
        },
        HvmMemmapEntry {
            addr: 0x100000,
            size: 0x3f00000,
            kind: memmap_type::RAM,
            reserved: 0,
        },
        HvmMemmapEntry {
            addr: 0xfee00000,
            size: 0x1000,
            kind: memmap_type::RESERVED,
            reserved: 0,
        },
    ];

    #[test]
    fn layout_matches_the_abi() {
        let mut buf = vec![0xeeu8; 512];
        let mods = [PvhModule {
            paddr: 0x3000000,
            size: 0x1234,
            cmdline: "initrd",
        }];
        let p = StartInfoParams {
            memmap: &MAP,
            modules: &mods,
            cmdline: "console=ttyS0 quiet",
            rsdp_paddr: 0xe0000,
        };
        let l = write_start_info(&mut buf, 0x7000, &p).unwrap();
        // 56 + 3 * 24 = 128 -> module list at 128, 32 bytes -> strings at 160.
        assert_eq!(
            l,
            StartInfoLayout {
                start_info: 0x7000,
                memmap: 0x7038,
                modlist: 0x7080,
                cmdline: 0x70a0,
                size: 160 + 20 + 7
            }
        );
        // Raw offsets from start_info.h.
        assert_eq!(&buf[0..4], &0x336ec578u32.to_le_bytes());
        assert_eq!(&buf[4..8], &1u32.to_le_bytes());
        assert_eq!(&buf[12..16], &1u32.to_le_bytes()); // nr_modules
        assert_eq!(&buf[16..24], &0x7080u64.to_le_bytes()); // modlist_paddr
        assert_eq!(&buf[24..32], &0x70a0u64.to_le_bytes()); // cmdline_paddr
        assert_eq!(&buf[32..40], &0xe0000u64.to_le_bytes()); // rsdp_paddr
        assert_eq!(&buf[40..48], &0x7038u64.to_le_bytes()); // memmap_paddr
        assert_eq!(&buf[48..52], &3u32.to_le_bytes()); // memmap_entries
        assert_eq!(HvmMemmapEntry::read(&buf[56 + 24..]).unwrap(), MAP[1]);
        assert_eq!(&buf[128..136], &0x3000000u64.to_le_bytes());
        assert_eq!(&buf[136..144], &0x1234u64.to_le_bytes());
        assert_eq!(&buf[144..152], &(0x70a0u64 + 20).to_le_bytes()); // module cmdline after kernel's
        assert_eq!(&buf[160..180], b"console=ttyS0 quiet\0");
        assert_eq!(&buf[180..187], b"initrd\0");
        assert_eq!(buf[187], 0xee); // untouched beyond `size`
        let info = HvmStartInfo::read(&buf).unwrap();
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.flags, 0);
    }

    #[test]
    fn empty_parts_are_null() {
        let mut buf = vec![0u8; 64];
        let p = StartInfoParams {
            memmap: &[],
            modules: &[],
            cmdline: "",
            rsdp_paddr: 0,
        };
        let l = write_start_info(&mut buf, 0x1000, &p).unwrap();
        assert_eq!(l.size, 56);
        let info = HvmStartInfo::read(&buf).unwrap();
        assert_eq!(
            (
                info.cmdline_paddr,
                info.modlist_paddr,
                info.memmap_paddr,
                info.nr_modules
            ),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn errors() {
        let p = StartInfoParams {
            memmap: &MAP,
            modules: &[],
            cmdline: "x",
            rsdp_paddr: 0,
        };
        let mut small = vec![0u8; 100];
        assert_eq!(
            write_start_info(&mut small, 0, &p).unwrap_err().to_string(),
            "pvh: start info needs 130 bytes, the buffer has 100"
        );
        let mut buf = vec![0u8; 256];
        let bad = StartInfoParams {
            cmdline: "a\0b",
            ..p
        };
        assert_eq!(
            write_start_info(&mut buf, 0, &bad),
            Err(PvhError::NulInCmdline)
        );
        assert_eq!(
            write_start_info(&mut buf, 0xffff_ffc0, &p),
            Err(PvhError::Above4G(0xffff_ffc0))
        );
        // Ending exactly at 4 GiB is fine.
        assert!(write_start_info(&mut buf, (1 << 32) - 130, &p).is_ok());
    }
}
