//! `load_linux` on made-up kernels: every field by offset, every refusal, no panics. The
//! real Debian kernel files are in `tests_real`. Helpers here read guest state back the way
//! the CPU and Linux will (page walk, GDT descriptors, memory map) and are shared with it.

use super::bzimage::{BootParamsView, CAN_USE_HEAP};
use super::*;
use crate::elf::build::{Seg, exec};
use crate::pvh::{HvmMemmapEntry, HvmStartInfo};
use std::vec;
use std::vec::Vec;

pub(super) const MIB: u64 = 0x10_0000;

/// Guest-physical address `va` translated through the 4-level tables at `cr3` in `ram`, as
/// the MMU would (4 KiB, 2 MiB and 1 GiB pages), or `None` when not present.
pub(super) fn translate(ram: &[u8], cr3: u64, va: u64) -> Option<u64> {
    let entry = |table: u64, index: u64| {
        let at = (table & 0x000f_ffff_ffff_f000) as usize + index as usize * 8;
        u64::from_le_bytes(ram[at..at + 8].try_into().unwrap())
    };
    let mut table = cr3;
    for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
        let e = entry(table, (va >> shift) & 0x1ff);
        if e & 1 == 0 {
            return None;
        }
        assert_ne!(e & 2, 0, "level {level} entry for {va:#x} is not writable");
        if level == 1 || (level < 4 && e & 0x80 != 0) {
            let mask = (1u64 << shift) - 1;
            return Some((e & 0x000f_ffff_ffff_f000 & !mask) | (va & mask));
        }
        table = e;
    }
    unreachable!()
}

/// Checks the GDT holds flat 64-bit code at 0x10 and flat data at 0x18, as
/// boot.rst's 64-bit boot protocol asks.
pub(super) fn check_gdt(ram: &[u8], base: u64, limit: u16) {
    assert!(
        limit >= 0x1f,
        "GDT limit {limit:#x} does not cover selector 0x18"
    );
    let desc = |sel: u64| {
        let at = (base + sel) as usize;
        u64::from_le_bytes(ram[at..at + 8].try_into().unwrap())
    };
    let bit = |d: u64, n: u32| d >> n & 1 == 1;
    for sel in [0x10, 0x18] {
        let d = desc(sel);
        let limit = (d & 0xffff) | ((d >> 32) & 0xf_0000);
        let base = ((d >> 16) & 0xff_ffff) | ((d >> 32) & 0xff00_0000);
        assert_eq!((base, limit), (0, 0xf_ffff), "selector {sel:#x} is flat");
        assert!(bit(d, 55), "selector {sel:#x}: 4 KiB granularity");
        assert!(bit(d, 47), "selector {sel:#x}: present");
        assert!(bit(d, 44), "selector {sel:#x}: code/data, not system");
        assert_eq!(d >> 45 & 3, 0, "selector {sel:#x}: DPL 0");
    }
    let code = desc(0x10);
    assert!(bit(code, 43) && bit(code, 41), "0x10: execute/read code");
    assert!(bit(code, 53) && !bit(code, 54), "0x10: L=1, D=0 (64-bit)");
    let data = desc(0x18);
    assert!(!bit(data, 43) && bit(data, 41), "0x18: read/write data");
}

/// The memory map the loader promises, for `ram` bytes.
pub(super) fn expected_map(ram: u64) -> [(u64, u64, u32); 4] {
    [
        (0, 0x9_fc00, 1),
        (0x9_fc00, 0x4_0400, 2),
        (0xe_0000, 0x2_0000, 3),
        (MIB, ram - MIB, 1),
    ]
}

pub(super) fn map_tuples(m: &[HvmMemmapEntry]) -> Vec<(u64, u64, u32)> {
    m.iter().map(|e| (e.addr, e.size, e.kind)).collect()
}

/// The PVH start info at `at` and its memory map and first module, read back from `ram`.
pub(super) fn read_start_info(
    ram: &[u8],
    at: u64,
) -> (HvmStartInfo, Vec<HvmMemmapEntry>, Option<(u64, u64, u64)>) {
    let info = HvmStartInfo::read(&ram[at as usize..]).unwrap();
    let map = (0..info.memmap_entries as usize)
        .map(|i| HvmMemmapEntry::read(&ram[info.memmap_paddr as usize + i * 24..]).unwrap())
        .collect();
    let module = (info.nr_modules > 0).then(|| {
        let m = info.modlist_paddr as usize;
        let q = |o: usize| u64::from_le_bytes(ram[m + o..m + o + 8].try_into().unwrap());
        (q(0), q(8), q(16))
    });
    (info, map, module)
}

/// The NUL-terminated string at `at`.
pub(super) fn c_string(ram: &[u8], at: u64) -> &str {
    let tail = &ram[at as usize..];
    let nul = tail.iter().position(|&b| b == 0).unwrap();
    core::str::from_utf8(&tail[..nul]).unwrap()
}

/// An initrd whose bytes show where they came from.
pub(super) fn fake_initrd(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// A made-up bzImage: one setup sector (setup_sects = 1, so the kernel starts at 0x400),
/// protocol 2.15, `XLF_KERNEL_64`, relocatable, prefers 16 MiB, `init_size` 4 MiB,
/// `cmdline_size` 2047, a version string, and `payload` as the protected-mode part.
pub(super) struct FakeBz {
    pub bytes: Vec<u8>,
}

impl FakeBz {
    pub const PAYLOAD_AT: usize = 0x400;

    pub fn new(payload: &[u8]) -> Self {
        assert!(payload.len().is_multiple_of(16));
        let mut b = vec![0u8; Self::PAYLOAD_AT];
        b[0x1f1] = 1; // setup_sects
        b[0x1f4..0x1f8].copy_from_slice(&(payload.len() as u32 / 16).to_le_bytes());
        b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        b[0x200] = 0xeb; // jmp short
        b[0x201] = 0x6a; // header ends at 0x26c
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes()); // version at 0x300
        b[0x211] = 1; // LOADED_HIGH
        b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        b[0x234] = 1; // relocatable_kernel
        b[0x235] = 21; // min_alignment
        b[0x236..0x238].copy_from_slice(&0x7fu16.to_le_bytes()); // xloadflags
        b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        b[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
        b[0x300..0x300 + 25].copy_from_slice(b"6.1.0-test (made up) #1\0\0");
        b.extend_from_slice(payload);
        Self { bytes: b }
    }

    pub fn set(mut self, at: usize, v: &[u8]) -> Self {
        self.bytes[at..at + v.len()].copy_from_slice(v);
        self
    }
}

fn payload() -> Vec<u8> {
    (0..0x2000u32).map(|i| (i * 7 % 256) as u8).collect()
}

fn params<'a>(kernel: &'a [u8], initrd: Option<&'a [u8]>, cmdline: &'a str) -> LinuxParams<'a> {
    LinuxParams {
        kernel,
        initrd,
        cmdline,
        vcpus: 1,
    }
}

/// Runs `load_linux` on a RAM filled with 0xaa and checks the error and that RAM was not
/// touched.
fn refused(p: &LinuxParams<'_>, ram_size: u64) -> LinuxError {
    let mut ram = vec![0xaau8; ram_size as usize];
    let err = load_linux(p, &mut ram).unwrap_err();
    assert!(
        ram == vec![0xaau8; ram_size as usize],
        "RAM was written before `{err}`"
    );
    err
}

#[test]
fn bzimage_is_placed_for_the_64_bit_boot_protocol() {
    let payload = payload();
    let bz = FakeBz::new(&payload).bytes;
    let initrd = fake_initrd(0x1_2345);
    let mut ram = vec![0xaau8; 64 * MIB as usize + 0x1000]; // not a 2 MiB multiple
    let ram_size = ram.len() as u64;
    let boot = load_linux(&params(&bz, Some(&initrd), "console=ttyS0 quiet"), &mut ram).unwrap();
    assert_eq!(boot.kind, KernelKind::BzImage);
    assert_eq!(boot.kernel_version, Some("6.1.0-test (made up) #1"));
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
    assert_eq!(
        (rip, rsi, cr3, gdt_base, gdt_limit),
        (0x100_0200, 0x7000, 0x1_0000, 0x6000, 31)
    );
    let l = boot.layout;
    assert_eq!(
        l.kernel,
        GuestRegion {
            start: 16 * MIB,
            size: 4 * MIB
        }
    );
    // The initrd: page-aligned, ending within a page of the top of RAM.
    let r = l.initrd.unwrap();
    assert_eq!(r.start, (ram_size - 0x1_2345) & !0xfff);
    assert_eq!(&ram[r.start as usize..r.end() as usize], &initrd[..]);
    // The kernel, byte for byte; the rest of init_size untouched.
    assert_eq!(&ram[0x100_0000..0x100_2000], &payload[..]);
    assert_eq!(ram[0x100_2000], 0xaa);
    // The first MiB is zeroed around what the loader put there.
    assert!(ram[0x2_0000..0x9_fc00].iter().all(|&b| b == 0));
    assert_eq!(ram[0x40e], 0, "no EBDA");
    assert_eq!(ram[MIB as usize], 0xaa, "above 1 MiB is left alone");

    // boot_params, by offset.
    let zp = &ram[0x7000..0x8000];
    let v = BootParamsView::read(zp);
    assert_eq!(v.type_of_loader, 0xff);
    assert_eq!(v.loadflags, CAN_USE_HEAP | 1);
    assert_eq!(v.heap_end_ptr, 0xfe00);
    assert_eq!(v.cmd_line_ptr, 0x8000);
    assert_eq!((v.ramdisk_image, v.ramdisk_size), (r.start, 0x1_2345));
    assert_eq!(v.acpi_rsdp_addr, 0xe_0000);
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(&zp[0x1f1..0x210], &bz[0x1f1..0x210], "header copied");
    assert_eq!(&zp[0x22c..0x26c], &bz[0x22c..0x26c], "header copied");
    assert!(zp[0x26c..0x2d0].iter().all(|&b| b == 0), "after the header");
    assert!(
        zp[..0x70].iter().all(|&b| b == 0),
        "screen_info and the rest"
    );
    assert_eq!(zp[0x1ef], 0, "sentinel clear");
    assert_eq!(usize::from(v.e820_entries), 4);
    let e820: Vec<_> = (0..4).map(|i| BootParamsView::e820(zp, i)).collect();
    assert_eq!(e820, expected_map(ram_size));
    assert_eq!(map_tuples(&l.memory_map), expected_map(ram_size));
    assert_eq!(c_string(&ram, 0x8000), "console=ttyS0 quiet");
    assert_eq!(
        l.cmdline,
        GuestRegion {
            start: 0x8000,
            size: 20
        }
    );

    // Page tables: identity over all RAM (rounded up to 2 MiB), nothing beyond.
    for gpa in [
        0,
        0x7000,
        0x8000,
        0xe_0000,
        rip,
        16 * MIB + 4 * MIB - 1,
        r.start,
        ram_size - 1,
        ram_size.next_multiple_of(2 * MIB) - 1,
    ] {
        assert_eq!(translate(&ram, cr3, gpa), Some(gpa), "{gpa:#x}");
    }
    assert_eq!(
        translate(&ram, cr3, ram_size.next_multiple_of(2 * MIB)),
        None
    );
    assert_eq!(translate(&ram, cr3, 1 << 39), None);
    assert_eq!(
        l.page_tables,
        Some(GuestRegion {
            start: 0x1_0000,
            size: 0x3000
        })
    );
    check_gdt(&ram, gdt_base, gdt_limit);
    crate::acpi::tests::check_tables(&ram, l.acpi.start, 1);
    assert_eq!(
        l.to_string(),
        "ram 64 MiB, kernel 0x1000000..0x1400000, boot info 0x7000, cmdline 0x8000..0x8014, \
         acpi 0xe0000..0xe0233, initrd 0x3fee000..0x4000345, page tables 0x10000..0x13000"
    );
}

#[test]
fn bzimage_placement_and_limits() {
    let payload = payload();
    // pref_address beyond RAM, relocatable: at the first kernel_alignment boundary >= 16 MiB.
    let bz = FakeBz::new(&payload)
        .set(0x258, &(0x800_0000u64).to_le_bytes())
        .set(0x230, &(0x400_0000u32).to_le_bytes())
        .bytes;
    let mut ram = vec![0u8; 96 * MIB as usize];
    let boot = load_linux(&params(&bz, None, ""), &mut ram).unwrap();
    assert_eq!(boot.layout.kernel.start, 64 * MIB);
    assert_eq!(&ram[0x400_0000..0x400_2000], &payload[..]);
    assert_eq!(boot.layout.initrd, None);
    assert_eq!(c_string(&ram, 0x8000), "");
    assert_eq!(BootParamsView::read(&ram[0x7000..]).ramdisk_size, 0);
    // Not relocatable: refused.
    let fixed = FakeBz::new(&payload)
        .set(0x258, &(0x800_0000u64).to_le_bytes())
        .set(0x234, &[0])
        .bytes;
    assert_eq!(
        refused(&params(&fixed, None, ""), 96 * MIB).to_string(),
        "linux: kernel needs guest RAM 0x8000000..0x8400000, the guest has 0x6000000 bytes (try a larger mem_mb)"
    );
    // A silly alignment is only looked at when it is needed.
    let odd = FakeBz::new(&payload).set(0x230, &3u32.to_le_bytes()).bytes;
    assert!(load_linux(&params(&odd, None, ""), &mut ram).is_ok());
    let odd = FakeBz::new(&payload)
        .set(0x230, &3u32.to_le_bytes())
        .set(0x258, &(0x800_0000u64).to_le_bytes())
        .bytes;
    assert_eq!(
        refused(&params(&odd, None, ""), 96 * MIB),
        LinuxError::BadAlignment(3)
    );
    // initrd_addr_max keeps the initrd low.
    let low = FakeBz::new(&payload)
        .set(0x22c, &(0x2ff_ffffu32).to_le_bytes())
        .bytes;
    let initrd = fake_initrd(0x3000);
    let boot = load_linux(&params(&low, Some(&initrd), ""), &mut ram).unwrap();
    assert_eq!(boot.layout.initrd.unwrap().start, 0x300_0000 - 0x3000);
    // Protocol 2.13: no acpi_rsdp_addr (the guest finds the RSDP by scanning 0xe0000).
    let old = FakeBz::new(&payload)
        .set(0x206, &0x020du16.to_le_bytes())
        .bytes;
    ram.fill(0xaa);
    load_linux(&params(&old, None, ""), &mut ram).unwrap();
    assert_eq!(BootParamsView::read(&ram[0x7000..]).acpi_rsdp_addr, 0);
    // An empty initrd is no initrd.
    let boot = load_linux(&params(&bz, Some(&[]), ""), &mut ram).unwrap();
    assert_eq!(boot.layout.initrd, None);
}

#[test]
fn bzimage_refusals_are_specific() {
    let payload = payload();
    let bz = FakeBz::new(&payload).bytes;
    let ram = 32 * MIB;
    let e = |k: &[u8]| refused(&params(k, None, ""), ram);
    let with = |at: usize, v: &[u8]| FakeBz::new(&payload).set(at, v).bytes;

    assert_eq!(
        e(&bz[..bz.len() - 16]).to_string(),
        "linux: bzImage is 9200 bytes, its header says 9216 (setup + syssize): truncated"
    );
    assert_eq!(
        e(&bz[..0x220]),
        LinuxError::SetupHeaderTruncated {
            len: 0x220,
            needed: 0x26c
        }
    );
    assert_eq!(
        e(&bz[..0x207]),
        LinuxError::SetupHeaderTruncated {
            len: 0x207,
            needed: 0x208
        }
    );
    assert_eq!(
        e(&with(0x206, &0x020bu16.to_le_bytes())).to_string(),
        "linux: bzImage boot protocol 2.11 is too old: the 64-bit boot protocol needs 2.12 or later"
    );
    assert_eq!(
        e(&with(0x236, &0x7eu16.to_le_bytes())).to_string(),
        "linux: bzImage xloadflags 0x7e lack XLF_KERNEL_64: the kernel has no 64-bit entry point"
    );
    assert_eq!(
        e(&with(0x201, &[0x50])),
        LinuxError::ShortSetupHeader(0x252)
    );
    assert_eq!(e(&with(0x1f4, &[0; 4])), LinuxError::EmptyKernel);
    assert_eq!(
        e(&with(0x260, &0x1000u32.to_le_bytes())),
        LinuxError::InitSizeTooSmall {
            init_size: 0x1000,
            size: 0x2000
        }
    );
    assert_eq!(
        e(&with(0x1f4, &u32::MAX.to_le_bytes())),
        LinuxError::BzImageTruncated {
            len: bz.len(),
            needed: 0x400 + u64::from(u32::MAX) * 16
        }
    );
    // Below 1 MiB and not relocatable: refused; relocatable: moved to 16 MiB.
    let low = FakeBz::new(&payload)
        .set(0x258, &0x8_0000u64.to_le_bytes())
        .set(0x234, &[0])
        .bytes;
    assert_eq!(
        e(&low).to_string(),
        "linux: kernel at 0x80000 is below 1 MiB, where the boot structures live"
    );
    let mut mem = vec![0u8; ram as usize];
    let moved = with(0x258, &0x8_0000u64.to_le_bytes());
    let boot = load_linux(&params(&moved, None, ""), &mut mem).unwrap();
    assert_eq!(boot.layout.kernel.start, 16 * MIB);
    // Neither ELF nor bzImage.
    assert_eq!(
        e(b"MZ not a kernel").to_string(),
        "linux: the 15-byte kernel is neither an ELF vmlinux (\\x7fELF at 0) nor a bzImage (\"HdrS\" at 0x202)"
    );
    assert_eq!(e(&[]), LinuxError::UnknownFormat { len: 0 });
    assert_eq!(e(&bz[..0x205]), LinuxError::UnknownFormat { len: 0x205 });
}

#[test]
fn command_line_limits() {
    let payload = payload();
    let bz = FakeBz::new(&payload).set(0x238, &16u32.to_le_bytes()).bytes;
    let ram = 32 * MIB;
    let sixteen = "0123456789abcdef";
    let mut mem = vec![0u8; ram as usize];
    load_linux(&params(&bz, None, sixteen), &mut mem).unwrap();
    assert_eq!(c_string(&mem, 0x8000), sixteen);
    assert_eq!(
        refused(&params(&bz, None, "0123456789abcdefg"), ram).to_string(),
        "linux: command line is 17 bytes, this kernel accepts at most 16"
    );
    assert_eq!(
        refused(&params(&bz, None, "a\0b"), ram),
        LinuxError::NulInCmdline
    );
    // cmdline_size larger than the command-line area: the area is the limit.
    let big = FakeBz::new(&payload)
        .set(0x238, &0x10_0000u32.to_le_bytes())
        .bytes;
    let long = "x".repeat(0x8000);
    assert_eq!(
        refused(&params(&big, None, &long), ram),
        LinuxError::CmdlineTooLong {
            len: 0x8000,
            max: 0x7fff
        }
    );
    load_linux(&params(&big, None, &long[1..]), &mut mem).unwrap();
    assert_eq!(c_string(&mem, 0x8000).len(), 0x7fff);
    assert_eq!(
        mem[0x1_0000..0x1_0008],
        0x1_1003u64.to_le_bytes(),
        "page tables follow"
    );
}

#[test]
fn ram_and_vcpu_limits() {
    let payload = payload();
    let bz = FakeBz::new(&payload).bytes;
    assert_eq!(
        refused(&params(&bz, None, ""), MIB - 1).to_string(),
        "linux: guest RAM of 0xfffff bytes is less than the 0x100000 the boot structures need"
    );
    // The kernel needs 16 MiB + init_size (4 MiB).
    assert_eq!(
        refused(&params(&bz, None, ""), 20 * MIB - 1),
        LinuxError::KernelDoesNotFit {
            start: 16 * MIB,
            end: 20 * MIB,
            ram: 20 * MIB - 1
        }
    );
    let mut ram = vec![0u8; 20 * MIB as usize];
    load_linux(&params(&bz, None, ""), &mut ram).unwrap();
    // Nothing left for an initrd.
    let one = [1u8];
    assert_eq!(
        refused(&params(&bz, Some(&one), ""), 20 * MIB).to_string(),
        "linux: initrd of 0x1 bytes does not fit in guest RAM: 0x0 bytes free between the kernel end 0x1400000 and 0x1400000"
    );
    let initrd = fake_initrd(MIB as usize + 1);
    assert_eq!(
        refused(&params(&bz, Some(&initrd), ""), 21 * MIB),
        LinuxError::InitrdTooBig {
            size: MIB + 1,
            room: MIB,
            kernel_end: 20 * MIB,
            top: 21 * MIB
        }
    );
    let mut ram = vec![0u8; 21 * MIB as usize];
    let boot = load_linux(&params(&bz, Some(&initrd[1..]), ""), &mut ram).unwrap();
    assert_eq!(boot.layout.initrd.unwrap().start, 20 * MIB);
    for vcpus in [0, 255] {
        let p = LinuxParams {
            vcpus,
            ..params(&bz, None, "")
        };
        assert_eq!(
            refused(&p, 32 * MIB),
            LinuxError::Acpi(AcpiError::BadVcpuCount(vcpus))
        );
    }
    let p = LinuxParams {
        vcpus: 4,
        ..params(&bz, None, "")
    };
    let mut ram = vec![0u8; 32 * MIB as usize];
    let boot = load_linux(&p, &mut ram).unwrap();
    crate::acpi::tests::check_tables(&ram, boot.layout.acpi.start, 4);
    assert_eq!(MAX_RAM, 3 << 30);
}

/// A PVH kernel: code at 16 MiB, data + bss at 17 MiB, entry note at 16 MiB + 0x850.
fn fake_vmlinux(note: Option<&[u8]>, code_at: u64) -> Vec<u8> {
    exec(
        0xffff_ffff_8100_0000,
        &[
            Seg {
                paddr: code_at,
                vaddr: 0xffff_ffff_8100_0000,
                bytes: &[0x90; 0x1000],
                mem_size: 0x1000,
                flags: 5,
            },
            Seg {
                paddr: 17 * MIB,
                vaddr: 0xffff_ffff_8110_0000,
                bytes: b"data",
                mem_size: 0x2000,
                flags: 6,
            },
        ],
        note,
    )
}

const PVH_ENTRY: u64 = 0x100_0850;

#[test]
fn pvh_kernel_gets_start_info_memmap_initrd_and_acpi() {
    let k = fake_vmlinux(Some(&PVH_ENTRY.to_le_bytes()), 16 * MIB);
    let initrd = fake_initrd(0x5001);
    let mut ram = vec![0xaau8; 32 * MIB as usize];
    let p = LinuxParams {
        vcpus: 2,
        ..params(&k, Some(&initrd), "console=ttyS0 8250.nr_uarts=1")
    };
    let boot = load_linux(&p, &mut ram).unwrap();
    assert_eq!(boot.kind, KernelKind::Pvh);
    assert_eq!(boot.kernel_version, None);
    assert_eq!(
        boot.entry,
        CpuEntry::Protected32 {
            rip: PVH_ENTRY,
            rbx: 0x7000
        }
    );
    let l = boot.layout;
    assert_eq!(
        l.kernel,
        GuestRegion {
            start: 16 * MIB,
            size: MIB + 0x2000
        }
    );
    assert_eq!((l.gdt, l.page_tables), (None, None));
    let r = l.initrd.unwrap();
    assert_eq!(r.start, (32 * MIB - 0x5001) & !0xfff);
    assert_eq!(&ram[r.start as usize..r.end() as usize], &initrd[..]);
    assert_eq!(&ram[0x100_0000..0x100_1000], &[0x90; 0x1000]);
    assert_eq!(&ram[0x110_0000..0x110_0004], b"data");
    assert!(ram[0x110_0004..0x110_2000].iter().all(|&b| b == 0), "bss");

    let (info, map, module) = read_start_info(&ram, 0x7000);
    assert_eq!((info.magic, info.version, info.flags), (0x336e_c578, 1, 0));
    assert_eq!(info.rsdp_paddr, 0xe_0000);
    assert_eq!(map_tuples(&map), expected_map(32 * MIB));
    assert_eq!(map, l.memory_map);
    assert_eq!(module, Some((r.start, 0x5001, 0)));
    assert_eq!(
        c_string(&ram, info.cmdline_paddr),
        "console=ttyS0 8250.nr_uarts=1"
    );
    assert_eq!(
        l.cmdline,
        GuestRegion {
            start: info.cmdline_paddr,
            size: 30
        }
    );
    assert!(l.cmdline.end() <= 0x8000);
    crate::acpi::tests::check_tables(&ram, info.rsdp_paddr, 2);

    // No initrd, no command line: no module, no string.
    let boot = load_linux(&params(&k, None, ""), &mut ram).unwrap();
    let (info, _, module) = read_start_info(&ram, 0x7000);
    assert_eq!((info.nr_modules, info.cmdline_paddr, module), (0, 0, None));
    assert_eq!(boot.layout.cmdline, GuestRegion::default());
}

#[test]
fn pvh_refusals_are_specific() {
    let ram = 32 * MIB;
    let good = fake_vmlinux(Some(&PVH_ENTRY.to_le_bytes()), 16 * MIB);
    let e = |k: &[u8], cmdline: &str| refused(&params(k, None, cmdline), ram);
    assert_eq!(
        e(&fake_vmlinux(None, 16 * MIB), "").to_string(),
        "linux: the ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y, or boot its bzImage"
    );
    assert_eq!(
        e(
            &fake_vmlinux(Some(&0x8_0000u64.to_le_bytes()), 0x8_0000),
            ""
        ),
        LinuxError::KernelInLowMemory { start: 0x8_0000 }
    );
    assert_eq!(
        e(&fake_vmlinux(Some(&0x50u32.to_le_bytes()), 16 * MIB), ""),
        LinuxError::BadPvhEntry {
            entry: 0x50,
            start: 16 * MIB,
            end: 17 * MIB + 0x2000
        }
    );
    assert_eq!(
        refused(&params(&good, None, ""), 17 * MIB),
        LinuxError::KernelDoesNotFit {
            start: 16 * MIB,
            end: 17 * MIB + 0x2000,
            ram: 17 * MIB
        }
    );
    assert_eq!(
        e(&good, &"x".repeat(2048)),
        LinuxError::CmdlineTooLong {
            len: 2048,
            max: 2047
        }
    );
    assert_eq!(e(&good, "a\0"), LinuxError::NulInCmdline);
    let mut short = good.clone();
    short.truncate(100);
    assert!(matches!(e(&short, ""), LinuxError::Elf(_)));
    let mut dyn_elf = good.clone();
    dyn_elf[16] = 3;
    assert_eq!(
        e(&dyn_elf, "").to_string(),
        "linux: elf: type 3 is not ET_EXEC (2)"
    );
    let initrd = fake_initrd(15 * MIB as usize);
    assert!(matches!(
        refused(&params(&good, Some(&initrd), ""), ram),
        LinuxError::InitrdTooBig { .. }
    ));
    let mut mem = vec![0u8; ram as usize];
    load_linux(&params(&good, None, &"x".repeat(2047)), &mut mem).unwrap();
}

#[test]
fn page_tables_cover_ram_sizes() {
    let payload = payload();
    let bz = FakeBz::new(&payload).bytes;
    for mib in [21u64, 22, 1024, 1025] {
        let mut ram = vec![0u8; (mib * MIB) as usize];
        let boot = load_linux(&params(&bz, None, ""), &mut ram).unwrap();
        let CpuEntry::Long64 { cr3, .. } = boot.entry else {
            panic!()
        };
        let end = (mib * MIB).next_multiple_of(2 * MIB);
        for gpa in (0..end).step_by(2 * MIB as usize) {
            assert_eq!(translate(&ram, cr3, gpa + 0x1234), Some(gpa + 0x1234));
        }
        assert_eq!(translate(&ram, cr3, end), None, "{mib} MiB");
        let dirs = end.div_ceil(1 << 30);
        assert_eq!(boot.layout.page_tables.unwrap().size, (2 + dirs) * 0x1000);
    }
}

#[test]
fn garbage_never_panics() {
    let payload = payload();
    let bz = FakeBz::new(&payload).bytes;
    let elf = fake_vmlinux(Some(&PVH_ENTRY.to_le_bytes()), 16 * MIB);
    let mut ram = vec![0u8; 24 * MIB as usize];
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for base in [&bz, &elf] {
        for round in 0..3000 {
            let mut k = base.clone();
            // Mostly the header (where the decisions are), sometimes anywhere.
            let span = if round % 4 == 0 { k.len() } else { 0x300 };
            for _ in 0..3 {
                let i = (next() as usize) % span;
                k[i] = next() as u8;
            }
            let cut = if round % 7 == 0 {
                (next() as usize) % k.len()
            } else {
                k.len()
            };
            let _ = load_linux(
                &params(&k[..cut], Some(b"initrd"), "console=ttyS0"),
                &mut ram,
            );
        }
    }
}
