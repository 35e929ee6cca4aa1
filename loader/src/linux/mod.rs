//! Placing an unmodified Linux kernel in guest memory: [`load_linux`].
//!
//! The kernel's format is found from its content:
//!
//! - an **ELF** `vmlinux` (`\x7fELF`) is booted through **PVH**: its PT_LOAD segments go to
//!   their `p_paddr`, the vCPU starts in 32-bit protected mode at the
//!   `XEN_ELFNOTE_PHYS32_ENTRY` note with EBX = an `hvm_start_info` ([`crate::pvh`]). An ELF
//!   without that note is refused. This skips the in-guest decompressor;
//! - a **bzImage** (`"HdrS"` at 0x202, boot protocol >= 2.12, `XLF_KERNEL_64`) is booted
//!   through the **64-bit boot protocol** (Documentation/arch/x86/boot.rst): its
//!   protected-mode part goes to `pref_address`, the vCPU starts in long mode at load address
//!   \+ 0x200 with RSI = the zero page (`boot_params`), identity page tables and a GDT.
//!
//! Both get the same machine: guest RAM from 0, the memory map of [`memory_map`], the ACPI
//! tables of [`crate::acpi`], the initrd at the top of RAM and the command line.
//!
//! # Guest-physical layout
//!
//! | range | contents |
//! | --- | --- |
//! | `0x0000..0x1000` | zeroed (real-mode IVT, BIOS data area: the EBDA pointer at 0x40e reads 0 = none); the whole first MiB is zeroed before anything is written |
//! | `0x6000..0x6020` | bzImage: the GDT: null, null, 64-bit code (selector 0x10), data (0x18) |
//! | `0x7000..0x8000` | bzImage: `boot_params` (the zero page). PVH: `hvm_start_info`, memory map, module list, then the command line (the [`crate::pvh`] writer packs them, within `0x7000..0x10000`) |
//! | `0x8000..0x10000` | bzImage: the command line, NUL-terminated (at most `cmdline_size` bytes) |
//! | `0x10000..0x20000` | bzImage: identity page tables: PML4 at 0x10000, PDPT at 0x11000, page directories from 0x12000 mapping all guest RAM with 2 MiB pages |
//! | `0x20000..0x9fc00` | free RAM |
//! | `0x9fc00..0xe0000` | reserved (EBDA, VGA and option-ROM hole) |
//! | `0xe0000..0x100000` | ACPI tables, RSDP first at 0xe0000 (typed ACPI in the memory map; also where a BIOS-style RSDP scan looks) |
//! | `0x100000..kernel` | free RAM |
//! | kernel | PVH: the ELF's `p_paddr` ranges (Debian's `vmlinux`: 16 MiB, ~60 MB). bzImage: `pref_address` (16 MiB) .. + `init_size` (in-place decompression room) |
//! | `..initrd` | free RAM |
//! | initrd | at the top of RAM, page-aligned (bzImage: and below `initrd_addr_max`) |
//!
//! Memory map, both as the PVH memmap and the `boot_params` E820 table ([`memory_map`]):
//! RAM `[0, 0x9fc00)`, reserved `[0x9fc00, 0xe0000)`, ACPI `[0xe0000, 0x100000)`, RAM
//! `[0x100000, end of RAM)`. Linux's `init_pvh_bootparams` adds only the ISA hole to it (and
//! BUG()s without a memmap).
//!
//! Everything is checked before the first byte is written: on error guest RAM is untouched.
//! Fields are serialised by offset, little-endian, with no pointer casts.

mod boot64;
pub mod bzimage;

use core::fmt;

use thiserror::Error;

use crate::acpi::{self, AcpiError};
use crate::elf::{self, EntryKind, GuestMemoryError, LoadError, SliceMemory};
use crate::pvh::{self, HvmMemmapEntry, PvhError, PvhModule, StartInfoParams, memmap_type};
pub use bzimage::SetupHeader;

/// 1 MiB: everything the loader writes itself lives below it, the kernel above.
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// The GDT of the 64-bit boot protocol.
pub const GDT_ADDR: u64 = 0x6000;
/// Its limit (4 descriptors).
pub const GDT_LIMIT: u16 = 4 * 8 - 1;
/// The zero page (`boot_params`) or the `hvm_start_info` (PVH).
pub const BOOT_INFO_ADDR: u64 = 0x7000;
/// The bzImage command line.
pub const CMDLINE_ADDR: u64 = 0x8000;
/// End of the command line area (bzImage) and of the PVH start-info area.
pub const CMDLINE_END: u64 = 0x1_0000;
/// The PML4 of the identity page tables (64-bit boot protocol).
pub const PAGE_TABLES_ADDR: u64 = 0x1_0000;
/// End of the page-table area.
pub const PAGE_TABLES_END: u64 = 0x2_0000;
/// Start of the reserved EBDA/VGA/ROM hole.
pub const EBDA_START: u64 = 0x9_fc00;
/// The ACPI tables (RSDP first).
pub const ACPI_ADDR: u64 = 0xe_0000;
/// Linux's x86 `COMMAND_LINE_SIZE`: the PVH command line can have at most one byte less.
pub const PVH_CMDLINE_MAX: usize = 2047;
/// Largest guest RAM: one block from 0 that must stay below the 32-bit MMIO hole (the local
/// APIC at 0xfee00000), as [`crate::cmdline::MAX_MEM_MB`].
pub const MAX_RAM: u64 = crate::cmdline::MAX_MEM_MB as u64 * 0x10_0000;
/// Entries of [`memory_map`].
pub const MEMORY_MAP_ENTRIES: usize = 4;

const PAGE: u64 = 0x1000;

/// What [`load_linux`] needs.
#[derive(Clone, Copy, Debug)]
pub struct LinuxParams<'a> {
    /// The kernel: an ELF `vmlinux` with the PVH note, or a bzImage (`vmlinuz`).
    pub kernel: &'a [u8],
    /// The initial RAM disk, if any (an empty one counts as none).
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// vCPUs, for the ACPI MADT: 1..=[`acpi::MAX_VCPUS`].
    pub vcpus: u32,
}

/// How the kernel was recognised, and so how it is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// ELF `vmlinux` with the PVH entry note: [`CpuEntry::Protected32`].
    Pvh,
    /// bzImage, 64-bit boot protocol: [`CpuEntry::Long64`].
    BzImage,
}

/// The vCPU state the kernel must be entered in (the boot vCPU; the others wait for
/// INIT-SIPI-SIPI). In both: interrupts disabled (RFLAGS.IF = 0), other GPRs 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuEntry {
    /// 32-bit protected mode, paging off, flat 4 GiB CS (selector 0x10) / DS,ES,SS (0x18),
    /// EBX = hvm_start_info (PVH).
    Protected32 { rip: u64, rbx: u64 },
    /// 64-bit mode (Linux 64-bit boot protocol): CR0.PE|PG, CR4.PAE, EFER.LME|LMA, identity
    /// page tables at `cr3` covering at least the kernel, boot_params, command line and
    /// initrd (they map all of guest RAM, 2 MiB pages), a GDT at `gdt_base`/`gdt_limit` in
    /// guest memory with a 64-bit code descriptor at selector 0x10 and a data descriptor at
    /// 0x18 (Documentation/arch/x86/boot.rst "64-bit boot protocol"), RSI = boot_params,
    /// RIP = 64-bit entry (load address + 0x200). CS = 0x10, DS/ES/SS = 0x18.
    Long64 {
        rip: u64,
        rsi: u64,
        cr3: u64,
        gdt_base: u64,
        gdt_limit: u16,
    },
}

/// A guest-physical range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegion {
    pub start: u64,
    pub size: u64,
}

impl GuestRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

impl fmt::Display for GuestRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end())
    }
}

/// Where everything went (guest-physical). Its `Display` is one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// Bytes of guest RAM.
    pub ram_size: u64,
    /// The kernel: PVH, lowest to highest loaded byte; bzImage, load address + `init_size`.
    pub kernel: GuestRegion,
    /// The initrd, if one was given.
    pub initrd: Option<GuestRegion>,
    /// `boot_params` (bzImage) or `hvm_start_info` (PVH).
    pub boot_info: u64,
    /// The command line with its NUL (PVH with an empty command line: none, size 0).
    pub cmdline: GuestRegion,
    /// The ACPI tables; the RSDP is at `acpi.start`.
    pub acpi: GuestRegion,
    /// The GDT (bzImage).
    pub gdt: Option<GuestRegion>,
    /// The identity page tables (bzImage); CR3 is their start.
    pub page_tables: Option<GuestRegion>,
    /// The memory map given to the guest.
    pub memory_map: [HvmMemmapEntry; MEMORY_MAP_ENTRIES],
}

impl fmt::Display for GuestLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ram {} MiB, kernel {}, boot info {:#x}, cmdline {}, acpi {}",
            self.ram_size >> 20,
            self.kernel,
            self.boot_info,
            self.cmdline,
            self.acpi
        )?;
        if let Some(initrd) = self.initrd {
            write!(f, ", initrd {initrd}")?;
        }
        if let Some(pt) = self.page_tables {
            write!(f, ", page tables {pt}")?;
        }
        Ok(())
    }
}

/// What [`load_linux`] did: how to start the vCPU, and what was placed where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxBoot<'a> {
    /// The boot vCPU's entry state.
    pub entry: CpuEntry,
    /// How the kernel was recognised.
    pub kind: KernelKind,
    /// The bzImage's `kernel_version` string (e.g. `6.1.0-57-amd64 (debian-kernel@...) #1
    /// SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (...)`; its first word is the release), when
    /// present and UTF-8. PVH: `None`.
    pub kernel_version: Option<&'a str>,
    /// Where everything went.
    pub layout: GuestLayout,
}

/// Why a kernel could not be placed. Guest RAM is untouched when one is returned.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum LinuxError {
    #[error(
        "linux: the {len}-byte kernel is neither an ELF vmlinux (\\x7fELF at 0) nor a bzImage (\"HdrS\" at 0x202)"
    )]
    UnknownFormat { len: usize },
    #[error("linux: {0}")]
    Elf(LoadError),
    #[error(
        "linux: the ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y, or boot its bzImage"
    )]
    NoPvhNote,
    #[error("linux: PVH entry {entry:#x} is not inside the loaded kernel {start:#x}..{end:#x}")]
    BadPvhEntry { entry: u64, start: u64, end: u64 },
    #[error("linux: bzImage of {len} bytes is too short for its setup header (needs {needed})")]
    SetupHeaderTruncated { len: usize, needed: usize },
    #[error(
        "linux: bzImage boot protocol {major}.{minor} is too old: the 64-bit boot protocol needs 2.12 or later",
        major = .0 >> 8, minor = .0 & 0xff
    )]
    OldBootProtocol(u16),
    #[error("linux: bzImage setup header ends at {0:#x}, before the 2.12 fields")]
    ShortSetupHeader(usize),
    #[error(
        "linux: bzImage xloadflags {0:#x} lack XLF_KERNEL_64: the kernel has no 64-bit entry point"
    )]
    Not64Bit(u16),
    #[error("linux: bzImage is {len} bytes, its header says {needed} (setup + syssize): truncated")]
    BzImageTruncated { len: usize, needed: u64 },
    #[error("linux: bzImage has an empty protected-mode part (syssize 0)")]
    EmptyKernel,
    #[error("linux: bzImage init_size {init_size:#x} is smaller than its {size:#x}-byte kernel")]
    InitSizeTooSmall { init_size: u64, size: u64 },
    #[error("linux: bzImage kernel_alignment {0:#x} is not a power of two")]
    BadAlignment(u32),
    #[error("linux: kernel at {start:#x} is below 1 MiB, where the boot structures live")]
    KernelInLowMemory { start: u64 },
    #[error(
        "linux: kernel needs guest RAM {start:#x}..{end:#x}, the guest has {ram:#x} bytes (try a larger mem_mb)"
    )]
    KernelDoesNotFit { start: u64, end: u64, ram: u64 },
    #[error("linux: command line is {len} bytes, this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("linux: command line contains a NUL byte")]
    NulInCmdline,
    #[error(
        "linux: initrd of {size:#x} bytes does not fit in guest RAM: {room:#x} bytes free between the kernel end {kernel_end:#x} and {top:#x}"
    )]
    InitrdTooBig {
        size: u64,
        room: u64,
        kernel_end: u64,
        top: u64,
    },
    #[error(
        "linux: guest RAM of {ram:#x} bytes is less than the {min:#x} the boot structures need"
    )]
    RamTooSmall { ram: u64, min: u64 },
    #[error("linux: guest RAM of {ram:#x} bytes exceeds the {max:#x} below the 32-bit MMIO hole")]
    RamTooLarge { ram: u64, max: u64 },
    #[error("linux: {0}")]
    Acpi(AcpiError),
    #[error("linux: {0}")]
    Pvh(PvhError),
    #[error("linux: {0}")]
    Memory(GuestMemoryError),
}

impl From<LoadError> for LinuxError {
    fn from(e: LoadError) -> Self {
        Self::Elf(e)
    }
}

impl From<AcpiError> for LinuxError {
    fn from(e: AcpiError) -> Self {
        Self::Acpi(e)
    }
}

impl From<PvhError> for LinuxError {
    fn from(e: PvhError) -> Self {
        Self::Pvh(e)
    }
}

impl From<GuestMemoryError> for LinuxError {
    fn from(e: GuestMemoryError) -> Self {
        Self::Memory(e)
    }
}

/// The guest's memory map for `ram_size` bytes of RAM from 0 (at least 1 MiB): RAM below the
/// EBDA, the reserved hole, the ACPI tables, RAM from 1 MiB to the end.
pub fn memory_map(ram_size: u64) -> [HvmMemmapEntry; MEMORY_MAP_ENTRIES] {
    let entry = |addr: u64, end: u64, kind: u32| HvmMemmapEntry {
        addr,
        size: end.saturating_sub(addr),
        kind,
        reserved: 0,
    };
    [
        entry(0, EBDA_START, memmap_type::RAM),
        entry(EBDA_START, ACPI_ADDR, memmap_type::RESERVED),
        entry(ACPI_ADDR, LOW_MEMORY_END, memmap_type::ACPI),
        entry(LOW_MEMORY_END, ram_size, memmap_type::RAM),
    ]
}

/// `ram[gpa..gpa + len]`, or the guest-memory error.
fn guest_slice(ram: &mut [u8], gpa: u64, len: u64) -> Result<&mut [u8], GuestMemoryError> {
    let size = ram.len() as u64;
    let err = GuestMemoryError { gpa, len, size };
    let end = gpa.checked_add(len).ok_or(err)?;
    if end > size {
        return Err(err);
    }
    ram.get_mut(gpa as usize..end as usize).ok_or(err)
}

/// Copies `data` to guest-physical `gpa`.
fn put(ram: &mut [u8], gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
    guest_slice(ram, gpa, data.len() as u64)?.copy_from_slice(data);
    Ok(())
}

fn align_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

/// Where the initrd goes: page-aligned, as high as possible below `top`, above `kernel_end`.
fn place_initrd(size: u64, kernel_end: u64, top: u64) -> Result<GuestRegion, LinuxError> {
    let err = LinuxError::InitrdTooBig {
        size,
        room: top.saturating_sub(kernel_end),
        kernel_end,
        top,
    };
    let start = align_down(top.checked_sub(size).ok_or(err)?, PAGE);
    if start < kernel_end {
        return Err(err);
    }
    Ok(GuestRegion { start, size })
}

fn check_cmdline(cmdline: &str, max: usize) -> Result<(), LinuxError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxError::NulInCmdline);
    }
    if cmdline.len() > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

/// Places the kernel `p.kernel` (ELF `vmlinux` with the PVH note, or bzImage), the initrd,
/// the command line, the boot information, the ACPI tables for `p.vcpus` vCPUs and (bzImage)
/// page tables and GDT into `ram`, the guest's RAM from guest-physical 0, following the
/// layout in the module documentation. Returns how to enter the kernel.
///
/// Every check comes before the first write: on error `ram` is untouched. The first MiB of
/// `ram` is zeroed; RAM outside the pieces placed is left as it was.
pub fn load_linux<'a>(p: &LinuxParams<'a>, ram: &mut [u8]) -> Result<LinuxBoot<'a>, LinuxError> {
    let ram_size = ram.len() as u64;
    if ram_size < LOW_MEMORY_END {
        return Err(LinuxError::RamTooSmall {
            ram: ram_size,
            min: LOW_MEMORY_END,
        });
    }
    if ram_size > MAX_RAM {
        return Err(LinuxError::RamTooLarge {
            ram: ram_size,
            max: MAX_RAM,
        });
    }
    if p.vcpus == 0 || p.vcpus > acpi::MAX_VCPUS {
        return Err(AcpiError::BadVcpuCount(p.vcpus).into());
    }
    if p.kernel.starts_with(b"\x7fELF") {
        load_pvh(p, ram)
    } else if p.kernel.get(0x202..0x206) == Some(b"HdrS") {
        load_bzimage(p, ram)
    } else {
        Err(LinuxError::UnknownFormat {
            len: p.kernel.len(),
        })
    }
}

/// The initrd, when one was given and is not empty.
fn initrd<'a>(p: &LinuxParams<'a>) -> Option<&'a [u8]> {
    p.initrd.filter(|i| !i.is_empty())
}

/// Zeroes the first MiB and writes the ACPI tables.
fn write_low_memory(ram: &mut [u8], vcpus: u32) -> Result<GuestRegion, LinuxError> {
    guest_slice(ram, 0, LOW_MEMORY_END)?.fill(0);
    let area = guest_slice(ram, ACPI_ADDR, LOW_MEMORY_END - ACPI_ADDR)?;
    let tables = acpi::write_tables(area, ACPI_ADDR, vcpus)?;
    Ok(GuestRegion {
        start: ACPI_ADDR,
        size: tables.size as u64,
    })
}

fn load_pvh<'a>(p: &LinuxParams<'a>, ram: &mut [u8]) -> Result<LinuxBoot<'a>, LinuxError> {
    let ram_size = ram.len() as u64;
    let elf = elf::parse(p.kernel)?;
    if elf.entry_kind != EntryKind::Pvh {
        return Err(LinuxError::NoPvhNote);
    }
    if elf.low < LOW_MEMORY_END {
        return Err(LinuxError::KernelInLowMemory { start: elf.low });
    }
    if elf.high > ram_size {
        return Err(LinuxError::KernelDoesNotFit {
            start: elf.low,
            end: elf.high,
            ram: ram_size,
        });
    }
    if elf.entry < elf.low || elf.entry >= elf.high {
        return Err(LinuxError::BadPvhEntry {
            entry: elf.entry,
            start: elf.low,
            end: elf.high,
        });
    }
    check_cmdline(p.cmdline, PVH_CMDLINE_MAX)?;
    let initrd_region = initrd(p)
        .map(|i| place_initrd(i.len() as u64, elf.high, ram_size))
        .transpose()?;

    // Checked; now write.
    let acpi_region = write_low_memory(ram, p.vcpus)?;
    elf::load(p.kernel, &mut SliceMemory(ram))?;
    if let (Some(bytes), Some(r)) = (initrd(p), initrd_region) {
        put(ram, r.start, bytes)?;
    }
    let map = memory_map(ram_size);
    let modules = initrd_region.map(|r| PvhModule {
        paddr: r.start,
        size: r.size,
        cmdline: "",
    });
    let info = pvh::write_start_info(
        guest_slice(ram, BOOT_INFO_ADDR, CMDLINE_END - BOOT_INFO_ADDR)?,
        BOOT_INFO_ADDR,
        &StartInfoParams {
            memmap: &map,
            modules: modules.as_slice(),
            cmdline: p.cmdline,
            rsdp_paddr: acpi_region.start,
        },
    )?;
    let cmdline = if p.cmdline.is_empty() {
        GuestRegion::default()
    } else {
        GuestRegion {
            start: info.cmdline,
            size: p.cmdline.len() as u64 + 1,
        }
    };
    Ok(LinuxBoot {
        entry: CpuEntry::Protected32 {
            rip: elf.entry,
            rbx: info.start_info,
        },
        kind: KernelKind::Pvh,
        kernel_version: None,
        layout: GuestLayout {
            ram_size,
            kernel: GuestRegion {
                start: elf.low,
                size: elf.high - elf.low,
            },
            initrd: initrd_region,
            boot_info: info.start_info,
            cmdline,
            acpi: acpi_region,
            gdt: None,
            page_tables: None,
            memory_map: map,
        },
    })
}

fn load_bzimage<'a>(p: &LinuxParams<'a>, ram: &mut [u8]) -> Result<LinuxBoot<'a>, LinuxError> {
    let ram_size = ram.len() as u64;
    let hdr = SetupHeader::parse(p.kernel)?;
    let payload = hdr.payload(p.kernel)?;
    let init_size = u64::from(hdr.init_size);
    let fits = |start: u64| {
        start >= LOW_MEMORY_END && start.checked_add(init_size).is_some_and(|e| e <= ram_size)
    };
    let load = if fits(hdr.pref_address) {
        hdr.pref_address
    } else if hdr.relocatable_kernel != 0 {
        let align = u64::from(hdr.kernel_alignment);
        if !align.is_power_of_two() {
            return Err(LinuxError::BadAlignment(hdr.kernel_alignment));
        }
        // 16 MiB is a multiple of any alignment up to 16 MiB; beyond, round up.
        let above = 16 * LOW_MEMORY_END;
        let start = above.div_ceil(align).saturating_mul(align);
        if !fits(start) {
            return Err(LinuxError::KernelDoesNotFit {
                start: hdr.pref_address,
                end: hdr.pref_address.saturating_add(init_size),
                ram: ram_size,
            });
        }
        start
    } else if hdr.pref_address < LOW_MEMORY_END {
        return Err(LinuxError::KernelInLowMemory {
            start: hdr.pref_address,
        });
    } else {
        return Err(LinuxError::KernelDoesNotFit {
            start: hdr.pref_address,
            end: hdr.pref_address.saturating_add(init_size),
            ram: ram_size,
        });
    };
    let kernel_end = load + init_size;
    let max_cmdline = (hdr.cmdline_size as usize).min((CMDLINE_END - CMDLINE_ADDR) as usize - 1);
    check_cmdline(p.cmdline, max_cmdline)?;
    let initrd_top = ram_size.min(u64::from(hdr.initrd_addr_max) + 1);
    let initrd_region = initrd(p)
        .map(|i| place_initrd(i.len() as u64, kernel_end, initrd_top))
        .transpose()?;

    // Checked; now write.
    let acpi_region = write_low_memory(ram, p.vcpus)?;
    put(ram, load, payload)?;
    if let (Some(bytes), Some(r)) = (initrd(p), initrd_region) {
        put(ram, r.start, bytes)?;
    }
    let cmdline = GuestRegion {
        start: CMDLINE_ADDR,
        size: p.cmdline.len() as u64 + 1,
    };
    // The first MiB is zero, so the NUL is already there.
    put(ram, CMDLINE_ADDR, p.cmdline.as_bytes())?;
    let map = memory_map(ram_size);
    let zero_page: &mut [u8; bzimage::BOOT_PARAMS_SIZE] =
        guest_slice(ram, BOOT_INFO_ADDR, bzimage::BOOT_PARAMS_SIZE as u64)?
            .try_into()
            .map_err(|_| GuestMemoryError {
                gpa: BOOT_INFO_ADDR,
                len: bzimage::BOOT_PARAMS_SIZE as u64,
                size: ram_size,
            })?;
    bzimage::write_boot_params(
        zero_page,
        p.kernel,
        &hdr,
        &bzimage::BootParams {
            cmdline: cmdline.start,
            initrd: initrd_region,
            memory_map: &map,
            rsdp: acpi_region.start,
        },
    );
    let gdt = boot64::write_gdt(ram)?;
    let page_tables = boot64::write_page_tables(ram)?;
    Ok(LinuxBoot {
        entry: CpuEntry::Long64 {
            rip: load + 0x200,
            rsi: BOOT_INFO_ADDR,
            cr3: page_tables.start,
            gdt_base: gdt.start,
            gdt_limit: GDT_LIMIT,
        },
        kind: KernelKind::BzImage,
        kernel_version: hdr.kernel_version(p.kernel),
        layout: GuestLayout {
            ram_size,
            kernel: GuestRegion {
                start: load,
                size: init_size,
            },
            initrd: initrd_region,
            boot_info: BOOT_INFO_ADDR,
            cmdline,
            acpi: acpi_region,
            gdt: Some(gdt),
            page_tables: Some(page_tables),
            memory_map: map,
        },
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_real;
