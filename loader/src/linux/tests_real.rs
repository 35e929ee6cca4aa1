//! `load_linux` on the real Debian kernel files (`cargo xtask kernel` puts them in
//! `build/kernel/`, or `$HV_KERNEL_DIR`): the bzImage `vmlinuz` and the decompressed ELF
//! `vmlinux` with its PVH note. Missing files fail these tests; they are not skipped.

use super::bzimage::{BootParamsView, CAN_USE_HEAP, LOADED_HIGH, XLF_KERNEL_64};
use super::tests::{
    MIB, c_string, check_gdt, expected_map, fake_initrd, map_tuples, read_start_info, translate,
};
use super::*;
use crate::elf::EntryKind;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;
use std::vec;
use std::vec::Vec;

const RAM: u64 = 256 * MIB;
const CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 quiet tsc_early_khz=2000";

fn kernel_dir() -> PathBuf {
    match std::env::var_os("HV_KERNEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/kernel"),
    }
}

fn read_kernel(name: &str) -> Vec<u8> {
    let path = kernel_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "real kernel files missing: run `cargo xtask kernel` ({}: {e})",
            path.display()
        )
    })
}

/// The decompressed ELF kernel (~66 MB), read once.
fn vmlinux() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| read_kernel("vmlinux"))
}

/// The bzImage, read once.
fn vmlinuz() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| read_kernel("vmlinuz"))
}

fn params<'a>(kernel: &'a [u8], initrd: Option<&'a [u8]>, cmdline: &'a str) -> LinuxParams<'a> {
    LinuxParams {
        kernel,
        initrd,
        cmdline,
        vcpus: 2,
    }
}

/// `load_linux` into a RAM of `size` bytes filled with 0xaa: the error, RAM untouched.
fn refused(p: &LinuxParams<'_>, size: u64) -> LinuxError {
    let mut ram = vec![0xaau8; size as usize];
    let err = load_linux(p, &mut ram).unwrap_err();
    let page = [0xaau8; 4096];
    assert!(
        ram.chunks(4096).all(|c| c == &page[..c.len()]),
        "RAM written before `{err}`"
    );
    err
}

/// Enough RAM for either kernel (the bzImage needs 16 MiB + init_size, ~80 MiB), little
/// room above.
const SMALL_RAM: u64 = 96 * MIB;

#[test]
fn real_vmlinux_has_the_pvh_note() {
    let l = elf::parse(vmlinux()).unwrap();
    assert_eq!(l.entry_kind, EntryKind::Pvh);
    // Debian 6.1: 0x1000850; any PVH entry sits in the kernel's first MiB of text.
    assert!(
        (0x100_0000..0x110_0000).contains(&l.entry),
        "PVH entry {:#x}",
        l.entry
    );
    assert_eq!(l.low, 16 * MIB);
    assert!(
        (40 * MIB..120 * MIB).contains(&l.high),
        "ends at {:#x}",
        l.high
    );
}

#[test]
fn real_vmlinuz_setup_header() {
    let k = vmlinuz();
    let h = SetupHeader::parse(k).unwrap();
    assert!(h.version >= 0x020c, "protocol {:#x}", h.version);
    assert_ne!(h.xloadflags & XLF_KERNEL_64, 0);
    assert_eq!(h.boot_flag, 0xaa55);
    assert_ne!(h.loadflags & LOADED_HIGH, 0);
    assert_ne!(h.relocatable_kernel, 0);
    assert!(h.kernel_alignment.is_power_of_two());
    assert!(h.pref_address >= MIB);
    assert!(h.pref_address.is_multiple_of(u64::from(h.kernel_alignment)));
    let payload = h.payload(k).unwrap();
    assert!(
        u64::from(h.init_size) > payload.len() as u64,
        "init_size {:#x} leaves room to decompress the {:#x}-byte payload",
        h.init_size,
        payload.len()
    );
    assert!(h.cmdline_size >= 255);
    let v = h.kernel_version(k).unwrap();
    assert!(v.starts_with("6."), "kernel_version {v:?}");
}

#[test]
fn real_vmlinux_loads_through_pvh() {
    let kernel = vmlinux();
    let initrd = fake_initrd(MIB as usize);
    let mut ram = vec![0u8; RAM as usize];
    let t = Instant::now();
    let boot = load_linux(&params(kernel, Some(&initrd), CMDLINE), &mut ram).unwrap();
    let took = t.elapsed();
    std::eprintln!("PVH {}: load_linux took {took:?}", boot.layout);
    assert_eq!(boot.kind, KernelKind::Pvh);
    let elf = elf::parse(kernel).unwrap();
    assert_eq!(
        boot.entry,
        CpuEntry::Protected32 {
            rip: elf.entry,
            rbx: BOOT_INFO_ADDR
        }
    );
    let l = boot.layout;

    // Every PT_LOAD segment at its p_paddr, its tail zeroed.
    for s in elf.segments.iter() {
        let (at, n) = (s.paddr as usize, s.file_size as usize);
        let src = &kernel[s.file_offset as usize..s.file_offset as usize + n];
        assert!(ram[at..at + n] == *src, "segment at {at:#x}");
        assert!(
            ram[at + n..at + s.mem_size as usize]
                .iter()
                .all(|&b| b == 0),
            "bss at {at:#x}"
        );
    }

    // hvm_start_info, read back from RAM.
    let (info, map, module) = read_start_info(&ram, BOOT_INFO_ADDR);
    assert_eq!((info.magic, info.version), (0x336e_c578, 1));
    assert_eq!(map_tuples(&map), expected_map(RAM));
    let r = l.initrd.unwrap();
    assert_eq!(r.start, RAM - MIB);
    assert_eq!(module, Some((RAM - MIB, MIB, 0)));
    assert!(ram[r.start as usize..r.end() as usize] == initrd[..]);
    assert!(r.start >= l.kernel.end());
    assert_eq!(c_string(&ram, info.cmdline_paddr), CMDLINE);
    assert_eq!(info.rsdp_paddr, ACPI_ADDR);
    crate::acpi::tests::check_tables(&ram, info.rsdp_paddr, 2);
    assert!(
        took.as_secs_f64() < 5.0,
        "loading took {took:?}: a per-byte loop crept in?"
    );
}

#[test]
fn real_vmlinuz_loads_through_the_64_bit_boot_protocol() {
    let kernel = vmlinuz();
    let hdr = SetupHeader::parse(kernel).unwrap();
    let initrd = fake_initrd(MIB as usize);
    let mut ram = vec![0u8; RAM as usize];
    let boot = load_linux(&params(kernel, Some(&initrd), CMDLINE), &mut ram).unwrap();
    std::eprintln!("bzImage {}", boot.layout);
    assert_eq!(boot.kind, KernelKind::BzImage);
    assert!(boot.kernel_version.unwrap().starts_with("6."));
    let CpuEntry::Long64 {
        rip,
        rsi,
        cr3,
        gdt_base,
        gdt_limit,
    } = boot.entry
    else {
        panic!("{:?}", boot.entry)
    };
    let l = boot.layout;
    assert_eq!(l.kernel.start, hdr.pref_address);
    assert_eq!(l.kernel.size, u64::from(hdr.init_size));
    assert_eq!(rip, hdr.pref_address + 0x200);
    assert_eq!(rsi, BOOT_INFO_ADDR);

    // The protected-mode part at the load address.
    let payload = hdr.payload(kernel).unwrap();
    let at = l.kernel.start as usize;
    assert!(ram[at..at + payload.len()] == *payload);
    assert_eq!(
        payload.as_ptr() as usize - kernel.as_ptr() as usize,
        hdr.setup_size()
    );

    // boot_params, read back from RAM.
    let zp = &ram[rsi as usize..rsi as usize + 4096];
    let v = BootParamsView::read(zp);
    assert_eq!(v.type_of_loader, 0xff);
    assert_eq!(
        v.loadflags & (CAN_USE_HEAP | LOADED_HIGH),
        CAN_USE_HEAP | LOADED_HIGH
    );
    assert_eq!(v.heap_end_ptr, 0xfe00);
    assert_eq!(v.version, hdr.version);
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(
        &zp[0x258..0x264],
        &kernel[0x258..0x264],
        "pref_address, init_size"
    );
    assert_eq!(v.cmd_line_ptr, CMDLINE_ADDR);
    assert_eq!(c_string(&ram, v.cmd_line_ptr), CMDLINE);
    let r = l.initrd.unwrap();
    assert_eq!((v.ramdisk_image, v.ramdisk_size), (r.start, MIB));
    assert_eq!(r.start, RAM - MIB);
    assert!(ram[r.start as usize..r.end() as usize] == initrd[..]);
    assert_eq!(usize::from(v.e820_entries), 4);
    let e820: Vec<_> = (0..4).map(|i| BootParamsView::e820(zp, i)).collect();
    assert_eq!(e820, expected_map(RAM));
    assert_eq!(v.acpi_rsdp_addr, ACPI_ADDR);
    crate::acpi::tests::check_tables(&ram, v.acpi_rsdp_addr, 2);

    // Identity mapping of everything the kernel touches at entry, and all of RAM.
    for gpa in [
        rip,
        l.kernel.start,
        l.kernel.end() - 1,
        rsi,
        rsi + 4095,
        CMDLINE_ADDR,
        r.start,
        r.end() - 1,
        gdt_base,
        ACPI_ADDR,
        RAM - 1,
    ] {
        assert_eq!(translate(&ram, cr3, gpa), Some(gpa), "{gpa:#x}");
    }
    assert_eq!(translate(&ram, cr3, RAM), None);
    check_gdt(&ram, gdt_base, gdt_limit);
}

#[test]
fn real_kernels_refused_with_specific_errors() {
    let z = vmlinuz();
    let x = vmlinux();
    // Truncated bzImage: in the payload, and in the header.
    let half = &z[..z.len() / 2];
    assert!(matches!(
        refused(&params(half, None, ""), SMALL_RAM),
        LinuxError::BzImageTruncated { len, .. } if len == z.len() / 2
    ));
    assert_eq!(
        refused(&params(&z[..0x240], None, ""), SMALL_RAM),
        LinuxError::SetupHeaderTruncated {
            len: 0x240,
            needed: SetupHeader::parse(z).unwrap().header_end
        }
    );
    // Command line one byte too long for either.
    let long = "x".repeat(2048);
    for k in [z, x] {
        assert_eq!(
            refused(&params(k, None, &long), SMALL_RAM),
            LinuxError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        );
    }
    // An initrd larger than the RAM left above the kernel.
    let big = vec![0u8; 24 * MIB as usize];
    for k in [z, x] {
        assert!(matches!(
            refused(&params(k, Some(&big), ""), SMALL_RAM),
            LinuxError::InitrdTooBig { size, top, .. } if size == 24 * MIB && top == SMALL_RAM
        ));
    }
    // 64 MiB is too small for either kernel (the default mem_mb).
    for k in [z, x] {
        let err = refused(&params(k, None, ""), 64 * MIB);
        assert!(
            matches!(err, LinuxError::KernelDoesNotFit { start, end, ram }
                if start == 16 * MIB && end > 64 * MIB && ram == 64 * MIB),
            "{err}"
        );
    }
    // The ELF without its PVH note (its type 18 changed to 19).
    let mut patched = x.to_vec();
    let u64_at = |at: usize| u64::from_le_bytes(x[at..at + 8].try_into().unwrap());
    let (phoff, phnum) = (u64_at(0x20) as usize, usize::from(x[0x38]));
    let notes = (0..phnum)
        .map(|i| phoff + i * 56)
        .find(|&ph| x[ph] == 4) // PT_NOTE
        .map(|ph| u64_at(ph + 8) as usize..(u64_at(ph + 8) + u64_at(ph + 32)) as usize)
        .expect("a PT_NOTE segment");
    let needle: &[u8] = &[4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
    let at = notes.start
        + x[notes]
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the PVH note (namesz 4, descsz 8, type 18, \"Xen\")");
    patched[at + 8] = 19;
    assert_eq!(
        refused(&params(&patched, None, ""), RAM),
        LinuxError::NoPvhNote
    );
}
