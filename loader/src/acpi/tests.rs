//! The tables parsed back with the `acpi` crate (the one the hypervisor uses to read the
//! host's), and the DSDT's AML checked byte by byte and decoded.

use super::*;
use ::acpi::address::{AddressSpace as Space, GenericAddress};
use ::acpi::rsdp::Rsdp as ParsedRsdp;
use ::acpi::sdt::fadt::Fadt;
use ::acpi::sdt::madt::{Madt, MadtEntry};
use ::acpi::{AcpiTable, AcpiTables, Handler, PciAddress, PhysicalMapping};
use core::ptr::NonNull;
use std::string::String;
use std::vec;

/// Guest RAM as the `acpi` crate's "physical memory": physical address = index.
#[derive(Clone, Copy)]
pub(crate) struct GuestRam {
    base: NonNull<u8>,
    len: usize,
}

impl GuestRam {
    /// Mappings made through it must not outlive `ram`: the checks below keep the borrow for
    /// as long as they use any.
    pub(crate) fn new(ram: &[u8]) -> Self {
        Self {
            base: NonNull::from(ram).cast(),
            len: ram.len(),
        }
    }
}

impl Handler for GuestRam {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        assert!(
            phys.checked_add(size).is_some_and(|end| end <= self.len),
            "acpi mapped {size:#x} bytes at {phys:#x}, outside the {:#x} bytes of guest RAM",
            self.len
        );
        // SAFETY: `phys..phys + size` is inside the RAM slice (checked above), which outlives
        // every mapping (see `GuestRam::new`); the `acpi` crate only reads through it.
        let start = unsafe { self.base.add(phys) };
        PhysicalMapping {
            physical_start: phys,
            virtual_start: start.cast(),
            region_length: size,
            mapped_length: size,
            handler: *self,
        }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
    fn read_u8(&self, _: usize) -> u8 {
        unreachable!("table parsing does no register access")
    }
    fn read_u16(&self, _: usize) -> u16 {
        unreachable!()
    }
    fn read_u32(&self, _: usize) -> u32 {
        unreachable!()
    }
    fn read_u64(&self, _: usize) -> u64 {
        unreachable!()
    }
    fn write_u8(&self, _: usize, _: u8) {
        unreachable!()
    }
    fn write_u16(&self, _: usize, _: u16) {
        unreachable!()
    }
    fn write_u32(&self, _: usize, _: u32) {
        unreachable!()
    }
    fn write_u64(&self, _: usize, _: u64) {
        unreachable!()
    }
    fn read_io_u8(&self, _: u16) -> u8 {
        unreachable!()
    }
    fn read_io_u16(&self, _: u16) -> u16 {
        unreachable!()
    }
    fn read_io_u32(&self, _: u16) -> u32 {
        unreachable!()
    }
    fn write_io_u8(&self, _: u16, _: u8) {
        unreachable!()
    }
    fn write_io_u16(&self, _: u16, _: u16) {
        unreachable!()
    }
    fn write_io_u32(&self, _: u16, _: u32) {
        unreachable!()
    }
    fn read_pci_u8(&self, _: PciAddress, _: u16) -> u8 {
        unreachable!()
    }
    fn read_pci_u16(&self, _: PciAddress, _: u16) -> u16 {
        unreachable!()
    }
    fn read_pci_u32(&self, _: PciAddress, _: u16) -> u32 {
        unreachable!()
    }
    fn write_pci_u8(&self, _: PciAddress, _: u16, _: u8) {
        unreachable!()
    }
    fn write_pci_u16(&self, _: PciAddress, _: u16, _: u16) {
        unreachable!()
    }
    fn write_pci_u32(&self, _: PciAddress, _: u16, _: u32) {
        unreachable!()
    }
    fn nanos_since_boot(&self) -> u64 {
        unreachable!()
    }
    fn stall(&self, _: u64) {
        unreachable!()
    }
    fn sleep(&self, _: u64) {
        unreachable!()
    }
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The DSDT's AML, opcode by opcode (ACPI 6.5 chapter 20; what `iasl` makes of the ASL in
/// [`dsdt_aml`]'s documentation).
#[rustfmt::skip]
pub(crate) const EXPECTED_AML: [u8; 63] = [
    0x08,                         // NameOp
    b'_', b'S', b'5', b'_',       //   NameSeg "_S5_"
    0x12,                         //   PackageOp
    0x08,                         //     PkgLength: 8 bytes, itself included
    0x04,                         //     NumElements: 4
    0x0a, 0x05,                   //     BytePrefix 5: SLP_TYPa = S5
    0x0a, 0x05,                   //     BytePrefix 5: SLP_TYPb
    0x00,                         //     ZeroOp (reserved)
    0x00,                         //     ZeroOp (reserved)
    0x10,                         // ScopeOp
    0x30,                         //   PkgLength: 48
    b'\\', b'_', b'S', b'B', b'_', //  NameString "\_SB_" (RootChar + NameSeg)
    0x5b, 0x82,                   //   DeviceOp (ExtOpPrefix 0x5b, 0x82)
    0x28,                         //     PkgLength: 40
    b'C', b'O', b'M', b'1',       //     NameSeg "COM1"
    0x08,                         //     NameOp
    b'_', b'H', b'I', b'D',       //       "_HID"
    0x0c, 0x41, 0xd0, 0x05, 0x01, //       DWordPrefix 0x0105d041 = EisaId("PNP0501")
    0x08,                         //     NameOp
    b'_', b'U', b'I', b'D',       //       "_UID"
    0x00,                         //       ZeroOp
    0x08,                         //     NameOp
    b'_', b'C', b'R', b'S',       //       "_CRS"
    0x11,                         //       BufferOp
    0x0d,                         //         PkgLength: 13
    0x0a, 0x0a,                   //         BufferSize: BytePrefix 10
    0x47,                         //         I/O port descriptor (small item 0x08, length 7)
    0x01,                         //           Decode16
    0xf8, 0x03,                   //           range minimum 0x3f8
    0xf8, 0x03,                   //           range maximum 0x3f8
    0x01,                         //           alignment 1
    0x08,                         //           length 8
    0x79, 0x00,                   //         End tag, checksum 0 (= "valid")
];

/// A small AML decoder for the subset above (enough to show the structure is what the bytes
/// claim: every PkgLength closes exactly where its object ends).
fn decode(aml: &[u8]) -> String {
    fn pkg_len(b: &[u8], at: &mut usize) -> usize {
        let lead = b[*at];
        let follow = usize::from(lead >> 6);
        let mut len = if follow == 0 {
            usize::from(lead & 0x3f)
        } else {
            usize::from(lead & 0x0f)
        };
        for i in 0..follow {
            len |= usize::from(b[*at + 1 + i]) << (4 + 8 * i);
        }
        let start = *at;
        *at += 1 + follow;
        start + len // end of the object
    }
    fn name(b: &[u8], at: &mut usize) -> String {
        let mut s = String::new();
        if b[*at] == b'\\' {
            s.push('\\');
            *at += 1;
        }
        s.push_str(core::str::from_utf8(&b[*at..*at + 4]).unwrap());
        *at += 4;
        s
    }
    fn term(b: &[u8], at: &mut usize) -> String {
        let op = b[*at];
        *at += 1;
        match op {
            0x00 => "0".into(),
            0x01 => "1".into(),
            0x0a => {
                *at += 1;
                format!("{}", b[*at - 1])
            }
            0x0c => {
                *at += 4;
                format!("{:#x}", le32(b, *at - 4))
            }
            0x08 => {
                let n = name(b, at);
                format!("Name({n}, {})", term(b, at))
            }
            0x12 => {
                let end = pkg_len(b, at);
                let count = b[*at];
                *at += 1;
                let items: Vec<String> = (0..count).map(|_| term(b, at)).collect();
                assert_eq!(*at, end, "package length");
                format!("Package{{{}}}", items.join(", "))
            }
            0x11 => {
                let end = pkg_len(b, at);
                let size: usize = term(b, at).parse().unwrap();
                assert_eq!(*at + size, end, "buffer length");
                let bytes = &b[*at..end];
                *at = end;
                format!("Buffer{bytes:02x?}")
            }
            0x10 | 0x5b => {
                let kind = if op == 0x10 {
                    "Scope"
                } else {
                    assert_eq!(b[*at], 0x82, "only DeviceOp is expected after ExtOpPrefix");
                    *at += 1;
                    "Device"
                };
                let end = pkg_len(b, at);
                let n = name(b, at);
                let mut inner = Vec::new();
                while *at < end {
                    inner.push(term(b, at));
                }
                assert_eq!(*at, end, "{kind} length");
                format!("{kind}({n}) {{{}}}", inner.join("; "))
            }
            other => panic!("unexpected AML opcode {other:#x} at {}", *at - 1),
        }
    }
    let mut at = 0;
    let mut out = Vec::new();
    while at < aml.len() {
        out.push(term(aml, &mut at));
    }
    out.join("\n")
}

/// Everything a guest reads from the tables, found from the RSDP at `rsdp` in `ram` (the
/// guest's RAM from guest-physical 0), checked. Also used by the Linux loader's tests.
pub(crate) fn check_tables(ram: &[u8], rsdp: u64, vcpus: u32) {
    let h = GuestRam::new(ram);
    let at = rsdp as usize;

    // RSDP: revision 2, both checksums, the XSDT address.
    assert_eq!(&ram[at..at + 8], b"RSD PTR ");
    assert_eq!(sum(&ram[at..at + 20]), 0, "RSDP checksum");
    assert_eq!(sum(&ram[at..at + 36]), 0, "RSDP extended checksum");
    // SAFETY: `at` is inside `ram` (the handler checks) and holds an RSDP.
    let parsed = unsafe { h.map_physical_region::<ParsedRsdp>(at, 36) };
    parsed.validate().unwrap();
    assert_eq!(parsed.revision(), 2);
    assert_eq!(parsed.oem_id().unwrap(), "HVPROF");
    // SAFETY: as above.
    let tables = unsafe { AcpiTables::from_rsdp(h, at) }.unwrap();
    assert_eq!(tables.rsdp_revision, 2);

    // XSDT: checksum, FADT and MADT listed.
    let xsdt = parsed.xsdt_address() as usize;
    assert_eq!(&ram[xsdt..xsdt + 4], b"XSDT");
    assert_eq!(sum(&ram[xsdt..xsdt + le32(ram, xsdt + 4) as usize]), 0);
    let listed: Vec<&str> = tables
        .table_headers()
        .map(|(_, hdr)| match &hdr.signature.as_str() {
            &"FACP" => "FACP",
            &"APIC" => "APIC",
            other => panic!("unexpected table {other}"),
        })
        .collect();
    assert_eq!(listed, ["FACP", "APIC"]);

    // FADT: revision 6, HW-reduced, reset register, sleep registers, X_DSDT, boot flags.
    let fadt = tables.find_table::<Fadt>().expect("FADT");
    fadt.validate().unwrap();
    assert_eq!(fadt.header.revision(), 6);
    let flags = { fadt.flags };
    assert!(flags.system_is_hw_reduced_acpi());
    assert!(flags.supports_system_reset_via_fadt());
    let arch = { fadt.iapc_boot_arch };
    assert!(arch.dont_probe_vga());
    assert!(
        !arch.use_time_and_alarm_namespace_for_rtc(),
        "CMOS RTC must be present"
    );
    assert!(!arch.legacy_devices_are_accessible() && !arch.motherboard_implements_8042());
    let io = |address| GenericAddress {
        address_space: Space::SystemIo,
        bit_width: 8,
        bit_offset: 0,
        access_size: 1,
        address,
    };
    assert_eq!(fadt.sleep_control_register().unwrap(), Some(io(0x600)));
    assert_eq!(fadt.sleep_status_register().unwrap(), Some(io(0x601)));
    assert_eq!(fadt.reset_register().unwrap(), io(0x602));
    assert_eq!({ fadt.reset_value }, 1);
    assert_eq!({ fadt.dsdt_address }, 0, "only X_DSDT is set");
    let fadt_at = fadt.physical_start;
    assert_eq!(&ram[fadt_at + 268..fadt_at + 276], b"HVPROF\0\0");
    assert_eq!(le32(ram, fadt_at + 4), 276);

    // DSDT: found through the FADT, checksum, exactly our AML.
    let dsdt = tables.dsdt().unwrap();
    assert_eq!(fadt.dsdt_address().unwrap(), dsdt.phys_address);
    let d = &ram[dsdt.phys_address..dsdt.phys_address + dsdt.length as usize];
    assert_eq!(&d[..4], b"DSDT");
    assert_eq!(sum(d), 0, "DSDT checksum");
    assert_eq!(dsdt.revision, 2);
    assert_eq!(&d[36..], EXPECTED_AML);

    // MADT: LAPIC address, no PCAT_COMPAT, one enabled LAPIC per vCPU, LINT1 NMI, no IO-APIC.
    let mapping = tables.find_table::<Madt>().expect("MADT");
    let madt = mapping.get();
    madt.validate().unwrap();
    assert_eq!({ madt.local_apic_address }, 0xfee0_0000);
    assert!(!madt.supports_8259());
    let (mut lapics, mut nmis) = (Vec::new(), Vec::new());
    for e in madt.entries() {
        match e {
            MadtEntry::LocalApic(l) => lapics.push((l.processor_id, l.apic_id, { l.flags })),
            MadtEntry::LocalApicNmi(n) => nmis.push((n.processor_id, { n.flags }, n.nmi_line)),
            other => panic!("unexpected MADT entry {other:?}"),
        }
    }
    let expected: Vec<(u8, u8, u32)> = (0..vcpus as u8).map(|i| (i, i, 1)).collect();
    assert_eq!(lapics, expected);
    assert_eq!(nmis, [(0xff, 0, 1)]);
}

/// 1 MiB of guest RAM plus the 36 bytes past 0xfffff a BIOS-area RSDP scan maps.
fn low_ram() -> Vec<u8> {
    vec![0u8; 0x10_1000]
}

#[test]
fn tables_parse_back_for_one_to_many_vcpus() {
    for vcpus in [1, 2, 8, MAX_VCPUS] {
        let mut ram = low_ram();
        let l = write_tables(&mut ram[0xe_0000..0x10_0000], 0xe_0000, vcpus).unwrap();
        assert_eq!(l.rsdp, 0xe_0000);
        assert_eq!(
            [l.xsdt, l.fadt, l.madt],
            [0xe_0034, 0xe_0070, 0xe_0190],
            "in order; FADT and MADT 16-byte aligned, the XSDT's entries 8-byte aligned"
        );
        assert_eq!((l.xsdt + 36) % 8, 0);
        let madt_end = l.madt + 44 + 8 * u64::from(vcpus) + 6;
        assert_eq!(l.dsdt, madt_end.div_ceil(16) * 16);
        assert_eq!(l.size as u64, l.dsdt - 0xe_0000 + 36 + 63);
        check_tables(&ram, l.rsdp, vcpus);
        assert!(ram[0xe_0000 + l.size..].iter().all(|&b| b == 0));
    }
}

#[test]
fn rsdp_is_found_by_a_bios_area_scan() {
    let mut ram = low_ram();
    write_tables(&mut ram[0xe_0000..0x10_0000], 0xe_0000, 1).unwrap();
    // SAFETY: the scan reads 0x40e and 0x80000..0x100024, all inside `ram`.
    let found = unsafe { ParsedRsdp::search_for_on_bios(GuestRam::new(&ram)) }.unwrap();
    assert_eq!(found.physical_start, 0xe_0000);
}

#[test]
fn dsdt_aml_is_exactly_s5_and_com1() {
    let aml = dsdt_aml();
    assert_eq!(aml, EXPECTED_AML);
    assert_eq!(
        decode(&aml),
        "Name(_S5_, Package{5, 5, 0, 0})\n\
         Scope(\\_SB_) {Device(COM1) {Name(_HID, 0x105d041); Name(_UID, 0); \
         Name(_CRS, Buffer[47, 01, f8, 03, f8, 03, 01, 08, 79, 00])}}"
    );
    // EisaId("PNP0501"): three 5-bit letters and four hex digits, stored byte-swapped.
    let eisa = (16 << 26) | (14 << 21) | (16 << 16) | 0x0501u32;
    assert_eq!(eisa.swap_bytes(), 0x0105_d041);
}

#[test]
fn power_management_numbers() {
    assert_eq!(S5_SLEEP_CONTROL, 0x34, "what Linux writes to power off");
    assert_eq!(S5_SLEEP_CONTROL & SLP_TYP_MASK, SLP_TYP_S5 << SLP_TYP_SHIFT);
    assert_eq!(S5_SLEEP_CONTROL & SLP_EN, 0x20);
    assert_eq!(FADT_FLAGS, 0x0010_0400);
    assert_eq!(
        [SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT],
        [0x600, 0x601, 0x602]
    );
}

#[test]
fn errors_and_untouched_buffers() {
    let mut buf = vec![0xeeu8; 0x1000];
    assert_eq!(
        write_tables(&mut buf, 0xe_0000, 0),
        Err(AcpiError::BadVcpuCount(0))
    );
    assert_eq!(
        write_tables(&mut buf, 0xe_0000, 255)
            .unwrap_err()
            .to_string(),
        "acpi: 255 vCPUs: the MADT describes 1..=254"
    );
    assert_eq!(
        write_tables(&mut buf, 0xe_0008, 1),
        Err(AcpiError::Misaligned(0xe_0008))
    );
    assert_eq!(
        write_tables(&mut buf[..0x100], 0xe_0000, 1)
            .unwrap_err()
            .to_string(),
        "acpi: the tables need 563 bytes, the buffer has 256"
    );
    assert!(buf.iter().all(|&b| b == 0xee));
    let l = write_tables(&mut buf, 0xe_0000, 1).unwrap();
    assert_eq!(l.size, 563);
    assert!(buf[l.size..].iter().all(|&b| b == 0xee));
}
