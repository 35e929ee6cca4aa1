//! Multiboot2 boot information (Multiboot2 specification 1.0, section 3.6), parsed from a byte
//! slice. Every read is bounds-checked: truncated or hostile input gives a
//! [`Multiboot2Error`], never a panic. Multi-byte fields are little-endian (x86).

use crate::cmdline::{CmdlineError, HvConfig};
use crate::fixed::FixedVec;
use thiserror::Error;

/// What a Multiboot2 loader leaves in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// Most memory-map entries kept.
pub const MAX_MEMORY_REGIONS: usize = 128;
/// Most modules kept.
pub const MAX_MODULES: usize = 16;
/// Largest boot information accepted (GRUB's is a few KiB).
pub const MAX_INFO_SIZE: usize = 1 << 20;

/// Tag types (specification section 3.6.x).
pub mod tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const BOOTLOADER_NAME: u32 = 2;
    pub const MODULE: u32 = 3;
    pub const BASIC_MEMINFO: u32 = 4;
    pub const MEMORY_MAP: u32 = 6;
    pub const ACPI_OLD_RSDP: u32 = 14;
    pub const ACPI_NEW_RSDP: u32 = 15;
}

/// Memory-map entry types (specification 3.6.8; the E820 numbering).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (type 1).
    Available,
    /// Reserved (type 2, and any unknown type is treated as reserved by users).
    #[default]
    Reserved,
    /// ACPI tables, usable once read (type 3).
    AcpiReclaimable,
    /// ACPI non-volatile storage (type 4).
    AcpiNvs,
    /// Defective RAM (type 5).
    Defective,
    /// Any other type number.
    Other(u32),
}

impl MemoryKind {
    /// The kind for a Multiboot2/E820 type number.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Available,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Defective,
            other => Self::Other(other),
        }
    }

    /// The E820 type number (also the PVH memory-map type).
    pub fn to_raw(self) -> u32 {
        match self {
            Self::Available => 1,
            Self::Reserved => 2,
            Self::AcpiReclaimable => 3,
            Self::AcpiNvs => 4,
            Self::Defective => 5,
            Self::Other(n) => n,
        }
    }
}

/// One memory-map entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the range is.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// One past the last byte (saturating at `u64::MAX`).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// A boot module (`module2 FILE NAME ARGS...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Module<'a> {
    /// Physical address of the first byte.
    pub start: u64,
    /// Physical address one past the last byte.
    pub end: u64,
    /// The module's whole command line (`NAME ARGS...`).
    pub cmdline: &'a str,
}

impl<'a> Module<'a> {
    /// The module's name: the first word of its command line.
    pub fn name(&self) -> &'a str {
        self.cmdline.split_ascii_whitespace().next().unwrap_or("")
    }

    /// The rest of the module's command line after its name, trimmed (`""` when none). For
    /// a Linux kernel module (`module2 /boot/vmlinux linux console=ttyS0 quiet`) this is the
    /// guest's command line: `console=ttyS0 quiet`.
    pub fn args(&self) -> &'a str {
        let line = self.cmdline.trim_ascii_start();
        match line.find(|c: char| c.is_ascii_whitespace()) {
            Some(end) => line[end..].trim_ascii(),
            None => "",
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the module is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The ACPI RSDP as copied by the bootloader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp<'a> {
    /// True for the ACPI 2.0+ (XSDT) tag 15, false for the 1.0 tag 14.
    pub v2: bool,
    /// The RSDP bytes (20 for 1.0, 36 for 2.0+).
    pub bytes: &'a [u8],
}

/// Why boot information was refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum Multiboot2Error {
    #[error(
        "multiboot2: bad magic {0:#x} (expected 0x36d76289): not booted by a Multiboot2 loader"
    )]
    BadMagic(u32),
    #[error("multiboot2: info is {0} bytes, shorter than its 8-byte header")]
    TooShort(usize),
    #[error(
        "multiboot2: total_size {total} does not fit the {available} bytes given (or exceeds 1 MiB)"
    )]
    BadTotalSize { total: u32, available: usize },
    #[error(
        "multiboot2: tag type {tag} at offset {offset} has size {size}, past the end of the info"
    )]
    TagOverflow { tag: u32, offset: usize, size: u32 },
    #[error(
        "multiboot2: tag type {tag} at offset {offset} has size {size}, too small for its fields"
    )]
    TagTooSmall { tag: u32, offset: usize, size: u32 },
    #[error("multiboot2: no end tag")]
    MissingEndTag,
    #[error("multiboot2: string in tag type {0} is not NUL-terminated UTF-8")]
    BadString(u32),
    #[error("multiboot2: memory map entry_size {0} (expected at least 24, a multiple of 8)")]
    BadMemoryMapEntrySize(u32),
    #[error("multiboot2: more than {MAX_MEMORY_REGIONS} memory map entries")]
    TooManyMemoryRegions,
    #[error("multiboot2: more than {MAX_MODULES} modules")]
    TooManyModules,
    #[error("multiboot2: a module has start {start:#x} after end {end:#x}")]
    BadModuleRange { start: u64, end: u64 },
    #[error("multiboot2: no memory map tag")]
    NoMemoryMap,
}

/// Why the boot could not be understood: the Multiboot2 info or the command line.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum BootError<'a> {
    #[error("{0}")]
    Multiboot2(Multiboot2Error),
    #[error("{0}")]
    Cmdline(CmdlineError<'a>),
}

impl From<Multiboot2Error> for BootError<'_> {
    fn from(e: Multiboot2Error) -> Self {
        Self::Multiboot2(e)
    }
}

impl<'a> From<CmdlineError<'a>> for BootError<'a> {
    fn from(e: CmdlineError<'a>) -> Self {
        Self::Cmdline(e)
    }
}

/// Everything the hypervisor takes from its bootloader.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootInfo<'a> {
    /// The hypervisor's command line as given (GRUB puts the image path first).
    pub cmdline: &'a str,
    /// The bootloader's name (e.g. `GRUB 2.06-13+deb12u1`); empty when not given.
    pub bootloader: &'a str,
    /// The firmware memory map, in the order given.
    pub memory: FixedVec<MemoryRegion, MAX_MEMORY_REGIONS>,
    /// Boot modules, in the order given.
    pub modules: FixedVec<Module<'a>, MAX_MODULES>,
    /// The ACPI RSDP, the 2.0+ one preferred when both are present.
    pub rsdp: Option<Rsdp<'a>>,
    /// The parsed command line.
    pub config: HvConfig<'a>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// A NUL-terminated UTF-8 string filling (at most) `body`.
fn c_str(body: &[u8], tag: u32) -> Result<&str, Multiboot2Error> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(Multiboot2Error::BadString(tag))?;
    core::str::from_utf8(&body[..nul]).map_err(|_| Multiboot2Error::BadString(tag))
}

impl<'a> BootInfo<'a> {
    /// The `total_size` field of the info at the start of `header` (its first 8 bytes), so a
    /// caller that only has an address knows how many bytes to hand to [`Self::parse`].
    pub fn total_size(header: &[u8]) -> Result<usize, Multiboot2Error> {
        let total = u32_at(header, 0).ok_or(Multiboot2Error::TooShort(header.len()))?;
        if total < 8 || total as usize > MAX_INFO_SIZE {
            return Err(Multiboot2Error::BadTotalSize {
                total,
                available: MAX_INFO_SIZE,
            });
        }
        Ok(total as usize)
    }

    /// Checks the magic EAX held at entry.
    pub fn check_magic(magic: u32) -> Result<(), Multiboot2Error> {
        if magic == BOOTLOADER_MAGIC {
            Ok(())
        } else {
            Err(Multiboot2Error::BadMagic(magic))
        }
    }

    /// Parses the boot information in `info` (which may be longer than `total_size`) and the
    /// command line it carries.
    pub fn parse(info: &'a [u8]) -> Result<Self, BootError<'a>> {
        let mut boot = Self::parse_multiboot2(info)?;
        boot.config = HvConfig::parse(boot.cmdline)?;
        Ok(boot)
    }

    /// Parses the boot information only; `config` is left at its defaults.
    pub fn parse_multiboot2(info: &'a [u8]) -> Result<Self, Multiboot2Error> {
        if info.len() < 8 {
            return Err(Multiboot2Error::TooShort(info.len()));
        }
        let total = u32_at(info, 0).ok_or(Multiboot2Error::TooShort(info.len()))?;
        if total < 8 || total as usize > info.len() || total as usize > MAX_INFO_SIZE {
            return Err(Multiboot2Error::BadTotalSize {
                total,
                available: info.len(),
            });
        }
        let info = &info[..total as usize];
        let mut boot = BootInfo {
            cmdline: "",
            bootloader: "",
            memory: FixedVec::new(),
            modules: FixedVec::new(),
            rsdp: None,
            config: HvConfig::default(),
        };
        let mut saw_memory_map = false;
        let mut offset = 8usize;
        loop {
            // Tags start 8-byte aligned; `offset` stays <= total <= 1 MiB so nothing overflows.
            let (Some(ty), Some(size)) = (u32_at(info, offset), u32_at(info, offset + 4)) else {
                return Err(Multiboot2Error::MissingEndTag);
            };
            let end = offset + size as usize;
            if end > info.len() {
                return Err(Multiboot2Error::TagOverflow {
                    tag: ty,
                    offset,
                    size,
                });
            }
            if size < 8 {
                return Err(Multiboot2Error::TagTooSmall {
                    tag: ty,
                    offset,
                    size,
                });
            }
            let body = &info[offset + 8..end];
            let too_small = Multiboot2Error::TagTooSmall {
                tag: ty,
                offset,
                size,
            };
            match ty {
                tag::END => break,
                tag::CMDLINE => boot.cmdline = c_str(body, ty)?,
                tag::BOOTLOADER_NAME => boot.bootloader = c_str(body, ty)?,
                tag::MODULE => {
                    let (Some(start), Some(mod_end)) = (u32_at(body, 0), u32_at(body, 4)) else {
                        return Err(too_small);
                    };
                    let cmdline = c_str(&body[8..], ty)?;
                    if start > mod_end {
                        return Err(Multiboot2Error::BadModuleRange {
                            start: start.into(),
                            end: mod_end.into(),
                        });
                    }
                    let module = Module {
                        start: start.into(),
                        end: mod_end.into(),
                        cmdline,
                    };
                    boot.modules
                        .push(module)
                        .map_err(|_| Multiboot2Error::TooManyModules)?;
                }
                tag::MEMORY_MAP => {
                    let (Some(entry_size), Some(_version)) = (u32_at(body, 0), u32_at(body, 4))
                    else {
                        return Err(too_small);
                    };
                    if entry_size < 24 || entry_size % 8 != 0 {
                        return Err(Multiboot2Error::BadMemoryMapEntrySize(entry_size));
                    }
                    saw_memory_map = true;
                    for entry in body[8..].chunks_exact(entry_size as usize) {
                        // chunks_exact gives at least 24 bytes: these reads cannot fail.
                        let region = MemoryRegion {
                            start: u64_at(entry, 0).unwrap_or(0),
                            len: u64_at(entry, 8).unwrap_or(0),
                            kind: MemoryKind::from_raw(u32_at(entry, 16).unwrap_or(2)),
                        };
                        boot.memory
                            .push(region)
                            .map_err(|_| Multiboot2Error::TooManyMemoryRegions)?;
                    }
                }
                tag::ACPI_OLD_RSDP | tag::ACPI_NEW_RSDP => {
                    let v2 = ty == tag::ACPI_NEW_RSDP;
                    let need = if v2 { 36 } else { 20 };
                    let bytes = body.get(..need).ok_or(too_small)?;
                    if v2 || boot.rsdp.is_none() {
                        boot.rsdp = Some(Rsdp { v2, bytes });
                    }
                }
                _ => {}
            }
            // Next tag: size rounded up to 8.
            offset = (end + 7) & !7;
        }
        if !saw_memory_map {
            return Err(Multiboot2Error::NoMemoryMap);
        }
        Ok(boot)
    }

    /// The module named `name` (first word of its command line).
    pub fn module(&self, name: &str) -> Option<&Module<'a>> {
        self.modules.iter().find(|m| m.name() == name)
    }

    /// Total bytes of [`MemoryKind::Available`] RAM.
    pub fn available_bytes(&self) -> u64 {
        self.memory
            .iter()
            .filter(|r| r.kind == MemoryKind::Available)
            .fold(0u64, |acc, r| acc.saturating_add(r.len))
    }

    /// One past the highest byte of available RAM.
    pub fn highest_available(&self) -> u64 {
        self.memory
            .iter()
            .filter(|r| r.kind == MemoryKind::Available)
            .map(MemoryRegion::end)
            .max()
            .unwrap_or(0)
    }
}

/// Builds Multiboot2 boot information in tests (here and in other crates' tests).
#[cfg(any(test, feature = "std"))]
pub mod build {
    extern crate std;
    use std::vec::Vec;

    /// An info buffer being assembled; [`Builder::finish`] adds the end tag and total size.
    #[derive(Default)]
    pub struct Builder {
        bytes: Vec<u8>,
    }

    impl Builder {
        /// An info with just the 8-byte header.
        pub fn new() -> Self {
            Self { bytes: vec![0; 8] }
        }

        /// Appends a raw tag (type, body), padding to 8 bytes.
        pub fn tag(mut self, ty: u32, body: &[u8]) -> Self {
            let size = 8 + body.len() as u32;
            self.bytes.extend_from_slice(&ty.to_le_bytes());
            self.bytes.extend_from_slice(&size.to_le_bytes());
            self.bytes.extend_from_slice(body);
            while !self.bytes.len().is_multiple_of(8) {
                self.bytes.push(0);
            }
            self
        }

        /// A NUL-terminated string tag.
        pub fn string(self, ty: u32, s: &str) -> Self {
            let mut body = s.as_bytes().to_vec();
            body.push(0);
            self.tag(ty, &body)
        }

        /// A module tag.
        pub fn module(self, start: u32, end: u32, cmdline: &str) -> Self {
            let mut body = Vec::new();
            body.extend_from_slice(&start.to_le_bytes());
            body.extend_from_slice(&end.to_le_bytes());
            body.extend_from_slice(cmdline.as_bytes());
            body.push(0);
            self.tag(super::tag::MODULE, &body)
        }

        /// A memory-map tag with 24-byte entries `(start, len, type)`.
        pub fn memory_map(self, entries: &[(u64, u64, u32)]) -> Self {
            let mut body = Vec::new();
            body.extend_from_slice(&24u32.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            for &(start, len, ty) in entries {
                body.extend_from_slice(&start.to_le_bytes());
                body.extend_from_slice(&len.to_le_bytes());
                body.extend_from_slice(&ty.to_le_bytes());
                body.extend_from_slice(&0u32.to_le_bytes());
            }
            self.tag(super::tag::MEMORY_MAP, &body)
        }

        /// Adds the end tag and fills in total_size.
        pub fn finish(self) -> Vec<u8> {
            let mut b = self.tag(super::tag::END, &[]).bytes;
            let total = b.len() as u32;
            b[..4].copy_from_slice(&total.to_le_bytes());
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::Builder;
    use super::*;

    fn typical() -> Vec<u8> {
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.resize(20, 0xab);
        let mut rsdp2 = b"RSD PTR ".to_vec();
        rsdp2.resize(36, 0xcd);
        Builder::new()
            .string(
                tag::CMDLINE,
                "/boot/hypervisor.elf sample_hz=500 vm=gt:gt-mod",
            )
            .string(tag::BOOTLOADER_NAME, "GRUB 2.06")
            .tag(tag::BASIC_MEMINFO, &[0; 8])
            .memory_map(&[
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0x100000, 0x1fef0000, 1),
                (0x1fff0000, 0x10000, 3),
            ])
            .module(0x800000, 0x801234, "gt-mod extra args")
            .tag(tag::ACPI_OLD_RSDP, &rsdp)
            .tag(tag::ACPI_NEW_RSDP, &rsdp2)
            .tag(99, &[1, 2, 3])
            .finish()
    }

    #[test]
    fn parses_a_typical_info() {
        let bytes = typical();
        let boot = BootInfo::parse(&bytes).unwrap();
        assert_eq!(
            boot.cmdline,
            "/boot/hypervisor.elf sample_hz=500 vm=gt:gt-mod"
        );
        assert_eq!(boot.bootloader, "GRUB 2.06");
        assert_eq!(boot.memory.len(), 4);
        assert_eq!(
            boot.memory[2],
            MemoryRegion {
                start: 0x100000,
                len: 0x1fef0000,
                kind: MemoryKind::Available
            }
        );
        assert_eq!(boot.memory[3].kind, MemoryKind::AcpiReclaimable);
        assert_eq!(boot.available_bytes(), 0x9fc00 + 0x1fef0000);
        assert_eq!(boot.highest_available(), 0x1fff0000);
        assert_eq!(boot.modules.len(), 1);
        let m = boot.module("gt-mod").unwrap();
        assert_eq!((m.start, m.end, m.len()), (0x800000, 0x801234, 0x1234));
        assert_eq!(m.cmdline, "gt-mod extra args");
        assert_eq!(m.args(), "extra args");
        let rsdp = boot.rsdp.unwrap();
        assert!(rsdp.v2);
        assert_eq!(rsdp.bytes.len(), 36);
        assert_eq!(boot.config.sample_hz, 500);
        assert_eq!(boot.config.vms[0].module, "gt-mod");
    }

    #[test]
    fn module_name_and_args() {
        let m = |cmdline| Module {
            start: 0,
            end: 0,
            cmdline,
        };
        let k = m("  linux \tconsole=ttyS0  quiet tsc_early_khz=2000  ");
        assert_eq!(
            (k.name(), k.args()),
            ("linux", "console=ttyS0  quiet tsc_early_khz=2000")
        );
        assert_eq!((m("initrd").name(), m("initrd").args()), ("initrd", ""));
        assert_eq!(
            (m("initrd   ").name(), m("initrd   ").args()),
            ("initrd", "")
        );
        assert_eq!((m("").name(), m("").args()), ("", ""));
        assert_eq!((m(" \t").name(), m(" \t").args()), ("", ""));
        // Non-ASCII arguments are kept whole.
        assert_eq!(m("k café=1").args(), "café=1");
    }

    #[test]
    fn magic_is_checked() {
        assert_eq!(BootInfo::check_magic(0x36d76289), Ok(()));
        assert_eq!(
            BootInfo::check_magic(0x2badb002).unwrap_err().to_string(),
            "multiboot2: bad magic 0x2badb002 (expected 0x36d76289): not booted by a Multiboot2 loader"
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = typical();
        for cut in 0..bytes.len() {
            // With total_size left as is: the slice is too short for it.
            assert!(
                BootInfo::parse_multiboot2(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
            // With total_size rewritten to match the cut: tags run past the end.
            let mut short = bytes[..cut].to_vec();
            if cut >= 4 {
                short[..4].copy_from_slice(&(cut as u32).to_le_bytes());
            }
            assert!(
                BootInfo::parse_multiboot2(&short).is_err(),
                "rewritten cut {cut}"
            );
        }
    }

    #[test]
    fn hostile_fields_give_exact_errors() {
        assert_eq!(
            BootInfo::parse_multiboot2(&[0; 4]),
            Err(Multiboot2Error::TooShort(4))
        );
        let mut b = typical();
        b[..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::BadTotalSize {
                total: 0xffff_fff0,
                available: b.len()
            })
        );
        // A tag claiming to be huge.
        let mut b = Builder::new().string(tag::CMDLINE, "x").finish();
        b[12..16].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::TagOverflow {
                tag: 1,
                offset: 8,
                size: 0x7fff_ffff
            })
        );
        // A zero-size tag would loop forever if accepted.
        let mut b = Builder::new().string(tag::CMDLINE, "x").finish();
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::TagTooSmall {
                tag: 1,
                offset: 8,
                size: 0
            })
        );
        // Strings must be NUL-terminated UTF-8.
        let b = Builder::new().tag(tag::CMDLINE, b"abc").finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::BadString(1))
        );
        let b = Builder::new()
            .tag(tag::BOOTLOADER_NAME, &[0xff, 0xfe, 0])
            .finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::BadString(2))
        );
        // Memory map with a silly entry size.
        let b = Builder::new()
            .tag(tag::MEMORY_MAP, &[4, 0, 0, 0, 0, 0, 0, 0])
            .finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::BadMemoryMapEntrySize(4))
        );
        let b = Builder::new().tag(tag::MEMORY_MAP, &[0, 0, 0, 0]).finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::TagTooSmall {
                tag: 6,
                offset: 8,
                size: 12
            })
        );
        // Module with start > end, and a short module tag.
        let b = Builder::new()
            .memory_map(&[])
            .module(0x2000, 0x1000, "m")
            .finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::BadModuleRange {
                start: 0x2000,
                end: 0x1000
            })
        );
        let b = Builder::new().tag(tag::MODULE, &[0; 6]).finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::TagTooSmall {
                tag: 3,
                offset: 8,
                size: 14
            })
        );
        // Short RSDP copy.
        let b = Builder::new()
            .memory_map(&[])
            .tag(tag::ACPI_NEW_RSDP, &[0; 20])
            .finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::TagTooSmall {
                tag: 15,
                offset: 24,
                size: 28
            })
        );
        // No end tag: header only, with total_size 16 and a non-end tag.
        let mut b = Builder::new().tag(7, &[]).finish();
        b.truncate(16);
        b[..4].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::MissingEndTag)
        );
        // No memory map.
        let b = Builder::new().finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::NoMemoryMap)
        );
    }

    #[test]
    fn limits_are_errors() {
        let entries: Vec<(u64, u64, u32)> = (0..129).map(|i| (i * 4096, 4096, 1)).collect();
        let b = Builder::new().memory_map(&entries).finish();
        assert_eq!(
            BootInfo::parse_multiboot2(&b),
            Err(Multiboot2Error::TooManyMemoryRegions)
        );
        let mut builder = Builder::new().memory_map(&[]);
        for i in 0..17 {
            builder = builder.module(i, i + 1, "m");
        }
        assert_eq!(
            BootInfo::parse_multiboot2(&builder.finish()),
            Err(Multiboot2Error::TooManyModules)
        );
    }

    #[test]
    fn bad_cmdline_is_a_boot_error() {
        let b = Builder::new()
            .memory_map(&[])
            .string(tag::CMDLINE, "sample_hz=0")
            .finish();
        assert_eq!(
            BootInfo::parse(&b).unwrap_err().to_string(),
            "cmdline: sample_hz=0 is out of range 1..=100000"
        );
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // xorshift; deterministic.
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let base = typical();
        for _ in 0..5000 {
            let mut b = base.clone();
            for _ in 0..4 {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let _ = BootInfo::parse(&b);
        }
    }
}
