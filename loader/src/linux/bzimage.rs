//! The bzImage's setup header and the zero page (`struct boot_params`), by offset
//! (Documentation/arch/x86/boot.rst, arch/x86/include/uapi/asm/bootparam.h).

use super::{GuestRegion, LinuxError};
use crate::pvh::HvmMemmapEntry;

/// Size of `struct boot_params`, the zero page.
pub const BOOT_PARAMS_SIZE: usize = 4096;
/// `boot_flag` at 0x1fe.
pub const BOOT_FLAG: u16 = 0xaa55;
/// Oldest boot protocol accepted: 2.12 added `XLF_KERNEL_64` (the 64-bit entry point).
pub const MIN_PROTOCOL: u16 = 0x020c;
/// `xloadflags`: the kernel has the 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags`: the kernel, boot_params, command line and initrd may be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `loadflags`: the protected-mode part is loaded at 0x100000 or higher.
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags`: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `type_of_loader`: a boot loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `heap_end_ptr`: the conventional end of the real-mode heap (0x10000 - 0x200). The 64-bit
/// entry runs no real-mode code, but the field is set as boot.rst asks of every loader.
pub const HEAP_END_PTR: u16 = 0xfe00;
/// Protocol that added `acpi_rsdp_addr` (boot_params 0x070).
const RSDP_PROTOCOL: u16 = 0x020e;

/// Offsets in the image and in `boot_params` (the header sits at 0x1f1 in both).
mod off {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const KERNEL_VERSION: usize = 0x20e;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// End of the fields of protocol 2.12 (`handover_offset` ends here).
    pub const END_2_12: usize = 0x268;
    /// Where `struct setup_header` must end in `boot_params` (`_pad7` up to 0x290).
    pub const HEADER_LIMIT: usize = 0x290;
    pub const E820_TABLE: usize = 0x2d0;
}

/// Most E820 entries `boot_params` holds.
pub const E820_MAX: usize = 128;

/// The setup-header fields the loader uses, read from a bzImage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Setup sectors (0 means 4), after the boot sector.
    pub setup_sects: u8,
    /// Size of the protected-mode part in 16-byte units.
    pub syssize: u32,
    /// Must be 0xaa55 (not enforced).
    pub boot_flag: u16,
    /// Boot protocol, major << 8 | minor.
    pub version: u16,
    /// Offset - 0x200 of the NUL-terminated version string (0 = none).
    pub kernel_version_offset: u16,
    pub loadflags: u8,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: u8,
    pub xloadflags: u16,
    /// Longest command line, without its NUL.
    pub cmdline_size: u32,
    /// Where the kernel prefers to be loaded.
    pub pref_address: u64,
    /// Bytes the kernel needs from its load address to boot (in-place decompression).
    pub init_size: u32,
    /// One past the header's last byte in the image: 0x202 + the byte at 0x201.
    pub header_end: usize,
}

fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([u8_at(b, at), u8_at(b, at + 1)])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from(u16_at(b, at)) | (u32::from(u16_at(b, at + 2)) << 16)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

fn set(b: &mut [u8; BOOT_PARAMS_SIZE], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

impl SetupHeader {
    /// Reads and checks the header of `image`: `"HdrS"` at 0x202, protocol >= 2.12,
    /// `XLF_KERNEL_64`, a header reaching the 2.12 fields.
    pub fn parse(image: &[u8]) -> Result<Self, LinuxError> {
        if image.get(off::HEADER..off::HEADER + 4) != Some(b"HdrS") {
            return Err(LinuxError::UnknownFormat { len: image.len() });
        }
        if image.len() < off::VERSION + 2 {
            return Err(LinuxError::SetupHeaderTruncated {
                len: image.len(),
                needed: off::VERSION + 2,
            });
        }
        let version = u16_at(image, off::VERSION);
        if version < MIN_PROTOCOL {
            return Err(LinuxError::OldBootProtocol(version));
        }
        let header_end = off::HEADER + usize::from(u8_at(image, off::JUMP + 1));
        if header_end < off::END_2_12 {
            return Err(LinuxError::ShortSetupHeader(header_end));
        }
        if image.len() < header_end {
            return Err(LinuxError::SetupHeaderTruncated {
                len: image.len(),
                needed: header_end,
            });
        }
        let hdr = Self {
            setup_sects: u8_at(image, off::SETUP_SECTS),
            syssize: u32_at(image, off::SYSSIZE),
            boot_flag: u16_at(image, off::BOOT_FLAG),
            version,
            kernel_version_offset: u16_at(image, off::KERNEL_VERSION),
            loadflags: u8_at(image, off::LOADFLAGS),
            initrd_addr_max: u32_at(image, off::INITRD_ADDR_MAX),
            kernel_alignment: u32_at(image, off::KERNEL_ALIGNMENT),
            relocatable_kernel: u8_at(image, off::RELOCATABLE_KERNEL),
            xloadflags: u16_at(image, off::XLOADFLAGS),
            cmdline_size: u32_at(image, off::CMDLINE_SIZE),
            pref_address: u64_at(image, off::PREF_ADDRESS),
            init_size: u32_at(image, off::INIT_SIZE),
            header_end,
        };
        if hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LinuxError::Not64Bit(hdr.xloadflags));
        }
        Ok(hdr)
    }

    /// Offset of the protected-mode part in the image: after the boot sector and
    /// `setup_sects` sectors (0 meaning 4).
    pub fn setup_size(&self) -> usize {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            usize::from(self.setup_sects)
        };
        (sects + 1) * 512
    }

    /// The protected-mode part of `image`: `syssize * 16` bytes after the setup code,
    /// checked against the image and `init_size`.
    pub fn payload<'a>(&self, image: &'a [u8]) -> Result<&'a [u8], LinuxError> {
        let start = self.setup_size();
        let size = u64::from(self.syssize) * 16;
        if size == 0 {
            return Err(LinuxError::EmptyKernel);
        }
        let needed = start as u64 + size;
        if needed > image.len() as u64 {
            return Err(LinuxError::BzImageTruncated {
                len: image.len(),
                needed,
            });
        }
        if size > u64::from(self.init_size) {
            return Err(LinuxError::InitSizeTooSmall {
                init_size: self.init_size.into(),
                size,
            });
        }
        image
            .get(start..needed as usize)
            .ok_or(LinuxError::BzImageTruncated {
                len: image.len(),
                needed,
            })
    }

    /// The kernel version string (at `kernel_version` + 0x200), up to its NUL, when present,
    /// terminated within 256 bytes and UTF-8.
    pub fn kernel_version<'a>(&self, image: &'a [u8]) -> Option<&'a str> {
        if self.kernel_version_offset == 0 {
            return None;
        }
        let start = usize::from(self.kernel_version_offset) + 0x200;
        let tail = image.get(start..)?;
        let tail = &tail[..tail.len().min(256)];
        let nul = tail.iter().position(|&b| b == 0)?;
        core::str::from_utf8(&tail[..nul]).ok()
    }
}

/// What [`write_boot_params`] describes besides the header.
pub(super) struct BootParams<'a> {
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline: u64,
    pub initrd: Option<GuestRegion>,
    pub memory_map: &'a [HvmMemmapEntry],
    /// Guest-physical address of the RSDP (written for protocol >= 2.14).
    pub rsdp: u64,
}

/// Fills the zero page: the image's setup header (0x1f1 up to 0x202 + the byte at 0x201),
/// then `type_of_loader`, `CAN_USE_HEAP` with `heap_end_ptr`, the command line pointer, the
/// ramdisk, the E820 table and `acpi_rsdp_addr`. Everything else is zero.
pub(super) fn write_boot_params(
    zp: &mut [u8; BOOT_PARAMS_SIZE],
    image: &[u8],
    hdr: &SetupHeader,
    p: &BootParams<'_>,
) {
    zp.fill(0);
    // `parse` checked header_end <= image.len(); a header reaching past boot_params' room
    // for it is cut there.
    let end = hdr.header_end.min(off::HEADER_LIMIT);
    if let Some(src) = image.get(off::SETUP_SECTS..end) {
        zp[off::SETUP_SECTS..end].copy_from_slice(src);
    }
    zp[off::TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    zp[off::LOADFLAGS] |= CAN_USE_HEAP;
    set(zp, off::HEAP_END_PTR, &HEAP_END_PTR.to_le_bytes());
    set(zp, off::CMD_LINE_PTR, &(p.cmdline as u32).to_le_bytes());
    set(
        zp,
        off::EXT_CMD_LINE_PTR,
        &((p.cmdline >> 32) as u32).to_le_bytes(),
    );
    if let Some(r) = p.initrd {
        set(zp, off::RAMDISK_IMAGE, &(r.start as u32).to_le_bytes());
        set(zp, off::RAMDISK_SIZE, &(r.size as u32).to_le_bytes());
        set(
            zp,
            off::EXT_RAMDISK_IMAGE,
            &((r.start >> 32) as u32).to_le_bytes(),
        );
        set(
            zp,
            off::EXT_RAMDISK_SIZE,
            &((r.size >> 32) as u32).to_le_bytes(),
        );
    }
    let entries = &p.memory_map[..p.memory_map.len().min(E820_MAX)];
    zp[off::E820_ENTRIES] = entries.len() as u8;
    for (i, e) in entries.iter().enumerate() {
        let at = off::E820_TABLE + i * 20;
        set(zp, at, &e.addr.to_le_bytes());
        set(zp, at + 8, &e.size.to_le_bytes());
        set(zp, at + 16, &e.kind.to_le_bytes());
    }
    if hdr.version >= RSDP_PROTOCOL {
        set(zp, off::ACPI_RSDP_ADDR, &p.rsdp.to_le_bytes());
    }
}

/// Reads back the zero-page fields the loader writes (tests and diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootParamsView {
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub heap_end_ptr: u16,
    pub cmd_line_ptr: u64,
    pub ramdisk_image: u64,
    pub ramdisk_size: u64,
    pub e820_entries: u8,
    pub acpi_rsdp_addr: u64,
    pub version: u16,
    pub cmdline_size: u32,
}

impl BootParamsView {
    /// Reads `zp` (a zero page, at least [`BOOT_PARAMS_SIZE`] bytes).
    pub fn read(zp: &[u8]) -> Self {
        Self {
            type_of_loader: u8_at(zp, off::TYPE_OF_LOADER),
            loadflags: u8_at(zp, off::LOADFLAGS),
            heap_end_ptr: u16_at(zp, off::HEAP_END_PTR),
            cmd_line_ptr: u64::from(u32_at(zp, off::CMD_LINE_PTR))
                | (u64::from(u32_at(zp, off::EXT_CMD_LINE_PTR)) << 32),
            ramdisk_image: u64::from(u32_at(zp, off::RAMDISK_IMAGE))
                | (u64::from(u32_at(zp, off::EXT_RAMDISK_IMAGE)) << 32),
            ramdisk_size: u64::from(u32_at(zp, off::RAMDISK_SIZE))
                | (u64::from(u32_at(zp, off::EXT_RAMDISK_SIZE)) << 32),
            e820_entries: u8_at(zp, off::E820_ENTRIES),
            acpi_rsdp_addr: u64_at(zp, off::ACPI_RSDP_ADDR),
            version: u16_at(zp, off::VERSION),
            cmdline_size: u32_at(zp, off::CMDLINE_SIZE),
        }
    }

    /// E820 entry `i` of zero page `zp` as (addr, size, type).
    pub fn e820(zp: &[u8], i: usize) -> (u64, u64, u32) {
        let at = off::E820_TABLE + i * 20;
        (u64_at(zp, at), u64_at(zp, at + 8), u32_at(zp, at + 16))
    }
}
