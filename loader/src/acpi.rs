//! The guest's ACPI tables: RSDP -> XSDT -> {FADT -> DSDT, MADT}, built with rust-vmm's
//! `acpi_tables` crate into a byte buffer that the guest will see at a chosen guest-physical
//! address ([`write_tables`]).
//!
//! The platform they describe is *hardware-reduced* ACPI (FADT flag `HW_REDUCED_ACPI`): no
//! PM1 blocks, no SCI, no 8259 PIC and no PIT for Linux to drive
//! (`acpi_generic_reduced_hw_init`). What it has:
//!
//! - three 8-bit I/O registers, emulated by the hypervisor's device model with the numbers
//!   exported here: sleep control ([`SLEEP_CONTROL_PORT`]), sleep status
//!   ([`SLEEP_STATUS_PORT`]) and reset ([`RESET_PORT`], [`RESET_VALUE`]). Linux powers off
//!   by writing `SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN` ([`S5_SLEEP_CONTROL`]) to the sleep
//!   control register, the `SLP_TYP` coming from the DSDT's `_S5_` package;
//! - a CMOS clock (the FADT's "CMOS RTC not present" flag is clear) and no VGA;
//! - one local APIC per vCPU and **no I/O APIC** (see [`MADT_FLAGS`]);
//! - COM1 at 0x3f8 without an interrupt line: Linux's 8250 driver polls it.

use acpi_tables::Aml;
use acpi_tables::aml::{Device, EISAName, IO, Name, Package, Path, ResourceTemplate, Scope};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, LocalInterruptController, MADT, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use alloc::vec::Vec;
use thiserror::Error;
use zerocopy::{Immutable, IntoBytes};

/// The sleep control register (FADT `SLEEP_CONTROL_REG`): 8-bit, System I/O.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The sleep status register (FADT `SLEEP_STATUS_REG`): 8-bit, System I/O.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The reset register (FADT `RESET_REG`): 8-bit, System I/O.
pub const RESET_PORT: u16 = 0x602;
/// The value the guest writes to [`RESET_PORT`] to reset (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 1;
/// Sleep control register: `SLP_EN`, "enter the sleep state in `SLP_TYP` now".
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control register: `SLP_TYP` occupies bits 2..=4.
pub const SLP_TYP_SHIFT: u8 = 2;
/// Sleep control register: the `SLP_TYP` field, in place.
pub const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
/// The `SLP_TYP` of S5 (soft off): the first value of the DSDT's `_S5_` package.
pub const SLP_TYP_S5: u8 = 5;
/// What Linux writes to [`SLEEP_CONTROL_PORT`] to power off: `0x34`.
pub const S5_SLEEP_CONTROL: u8 = (SLP_TYP_S5 << SLP_TYP_SHIFT) | SLP_EN;

/// Where the MADT says every local APIC is (xAPIC MMIO; in x2APIC mode it is not used).
pub const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// MADT flags: 0, so no `PCAT_COMPAT` (there is no 8259 pair to mask).
///
/// The MADT also lists **no I/O APIC**, on purpose. Linux then finds no `smp_found_config`
/// and `apic_intr_mode_select()` calls `disable_ioapic_support()` (arch/x86/kernel/apic/
/// apic.c), after which `enable_IR_x2apic()` returns early: Linux keeps the x2APIC mode the
/// hypervisor starts it in instead of falling back to xAPIC MMIO, which it does without
/// interrupt remapping on a hypervisor it does not recognise. The cost: no device can have
/// an interrupt line, hence the IRQ-less COM1 in the DSDT.
pub const MADT_FLAGS: u32 = 0;
/// Most vCPUs the MADT can describe (processor UID and APIC ID are single bytes in type-0
/// entries, and 0xff means "all processors").
pub const MAX_VCPUS: u32 = 254;

/// `OEM ID` of every table and of the RSDP.
pub const OEM_ID: [u8; 6] = *b"HVPROF";
/// `OEM Table ID` of every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"HVPROF  ";
/// `OEM Revision` of every table.
pub const OEM_REVISION: u32 = 1;
/// FADT `Hypervisor Vendor Identity` (ACPI 6.0+): "HVPROF" as 8 little-endian bytes.
pub const HYPERVISOR_VENDOR_ID: u64 = u64::from_le_bytes(*b"HVPROF\0\0");

/// FADT `IAPC_BOOT_ARCH`: only "VGA Not Present" (bit 2). "CMOS RTC Not Present" (bit 5)
/// is clear: the hypervisor emulates a CMOS clock at 0x70/0x71. No legacy devices, no 8042.
pub const IAPC_BOOT_ARCH: u16 = 1 << 2;
/// FADT flags: `HW_REDUCED_ACPI` (bit 20) and `RESET_REG_SUP` (bit 10).
pub const FADT_FLAGS: u32 = (1 << 20) | (1 << 10);

/// Table alignment inside the buffer (the RSDP must be 16-byte aligned).
const ALIGN: usize = 16;
/// Sizes fixed by the specification (ACPI 6.5, sections 5.2.5, 5.2.8, 5.2.9, 5.2.12).
const RSDP_LEN: usize = 36;
const HEADER_LEN: usize = 36;
const FADT_LEN: usize = 276;
const MADT_HEADER_LEN: usize = 44;
const MADT_LAPIC_LEN: usize = 8;
const MADT_LAPIC_NMI_LEN: usize = 6;

/// Where [`write_tables`] put each table (guest-physical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiLayout {
    /// The RSDP: give this to the guest (`hvm_start_info.rsdp_paddr`,
    /// `boot_params.acpi_rsdp_addr`).
    pub rsdp: u64,
    pub xsdt: u64,
    pub fadt: u64,
    pub madt: u64,
    pub dsdt: u64,
    /// Bytes of the buffer used, from its start.
    pub size: usize,
}

/// Why the tables could not be written.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("acpi: {0} vCPUs: the MADT describes 1..={MAX_VCPUS}")]
    BadVcpuCount(u32),
    #[error("acpi: the tables need {needed} bytes, the buffer has {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("acpi: base {0:#x} is not 16-byte aligned (the RSDP must be)")]
    Misaligned(u64),
}

fn align(v: usize) -> usize {
    v.div_ceil(ALIGN) * ALIGN
}

/// MADT entry type 4, "Local APIC NMI" (ACPI 6.5 section 5.2.12.7), which `acpi_tables`
/// does not have.
#[repr(C)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    /// ACPI processor UID, 0xff = all processors.
    processor_uid: u8,
    /// MPS INTI flags, little-endian: 0 = polarity and trigger conform to the bus.
    flags: [u8; 2],
    /// The LINTn pin the NMI is wired to.
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The DSDT's AML: `_S5_` and COM1.
///
/// ```text
/// Name (_S5_, Package () { 5, 5, 0, 0 })
/// Scope (\_SB_) {
///     Device (COM1) {
///         Name (_HID, EisaId ("PNP0501"))
///         Name (_UID, 0)
///         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3f8, 0x3f8, 1, 8) })
///     }
/// }
/// ```
///
/// `_CRS` has no `IRQ`/`Interrupt` descriptor: the hypervisor's UART raises no interrupt,
/// and Linux's 8250 driver polls a port without one.
pub fn dsdt_aml() -> Vec<u8> {
    let s5 = Name::new(
        Path::new("_S5_"),
        &Package::new(alloc::vec![&SLP_TYP_S5, &SLP_TYP_S5, &0u8, &0u8]),
    );
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
    let uid = Name::new(Path::new("_UID"), &0u8);
    let io = IO::new(0x3f8, 0x3f8, 1, 8);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(alloc::vec![&io]));
    let com1 = Device::new(Path::new("COM1"), alloc::vec![&hid, &uid, &crs]);
    let sb = Scope::new(Path::new("\\_SB_"), alloc::vec![&com1]);
    let mut aml = Vec::new();
    s5.to_aml_bytes(&mut aml);
    sb.to_aml_bytes(&mut aml);
    aml
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.reset_reg = io_register(RESET_PORT);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    b.hypervisor_vendor_identity = HYPERVISOR_VENDOR_ID.into();
    let mut out = Vec::with_capacity(FADT_LEN);
    b.finalize().to_aml_bytes(&mut out);
    out
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LOCAL_APIC_ADDRESS),
    );
    for id in 0..vcpus {
        // Processor UID = APIC ID = vCPU index.
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(LocalApicNmi {
        kind: 4,
        length: MADT_LAPIC_NMI_LEN as u8,
        processor_uid: 0xff,
        flags: [0, 0],
        lint: 1,
    });
    let mut out = Vec::new();
    madt.to_aml_bytes(&mut out);
    out
}

/// Bytes the XSDT sits past a 16-byte boundary so that its entries are 8-aligned.
const XSDT_ENTRY_SHIFT: usize = 4;

/// Offsets of XSDT, FADT, MADT, DSDT (the RSDP is at 0) and the total size.
fn offsets(vcpus: usize, aml_len: usize) -> ([usize; 4], usize) {
    // The XSDT's 64-bit entries start 36 bytes into it: placing it at 4 mod 8 makes them
    // 8-aligned. ACPI does not require it, but readers such as the `acpi` crate (6.1)
    // load them as aligned u64 values.
    let xsdt = align(RSDP_LEN) + XSDT_ENTRY_SHIFT;
    let fadt = align(xsdt + HEADER_LEN + 2 * 8);
    let madt = align(fadt + FADT_LEN);
    let dsdt = align(madt + MADT_HEADER_LEN + vcpus * MADT_LAPIC_LEN + MADT_LAPIC_NMI_LEN);
    ([xsdt, fadt, madt, dsdt], dsdt + HEADER_LEN + aml_len)
}

/// Builds the tables for `vcpus` vCPUs into `buf`, which the guest sees at guest-physical
/// `base` (16-byte aligned): the RSDP at `base`, then XSDT, FADT, MADT and DSDT, each
/// 16-byte aligned, gaps zeroed. Nothing is written on error; bytes of `buf` past
/// [`AcpiLayout::size`] are untouched.
pub fn write_tables(buf: &mut [u8], base: u64, vcpus: u32) -> Result<AcpiLayout, AcpiError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(AcpiError::BadVcpuCount(vcpus));
    }
    if !base.is_multiple_of(ALIGN as u64) {
        return Err(AcpiError::Misaligned(base));
    }
    let aml = dsdt_aml();
    let ([xsdt_off, fadt_off, madt_off, dsdt_off], size) = offsets(vcpus as usize, aml.len());
    if size > buf.len() {
        return Err(AcpiError::BufferTooSmall {
            needed: size,
            available: buf.len(),
        });
    }
    let gpa = |off: usize| base + off as u64;
    let layout = AcpiLayout {
        rsdp: base,
        xsdt: gpa(xsdt_off),
        fadt: gpa(fadt_off),
        madt: gpa(madt_off),
        dsdt: gpa(dsdt_off),
        size,
    };

    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        // Revision 2: AML integers are 64-bit.
        2,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(layout.fadt);
    xsdt.add_entry(layout.madt);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);

    let mut rsdp_bytes = Vec::with_capacity(RSDP_LEN);
    Rsdp::new(OEM_ID, layout.xsdt).to_aml_bytes(&mut rsdp_bytes);

    // `vcpus` <= MAX_VCPUS < 256 was checked above.
    let tables: [(usize, &[u8]); 5] = [
        (0, &rsdp_bytes),
        (xsdt_off, &xsdt_bytes),
        (fadt_off, &fadt(layout.dsdt)),
        (madt_off, &madt(vcpus as u8)),
        (dsdt_off, dsdt.as_slice()),
    ];
    let out = &mut buf[..size];
    out.fill(0);
    for (off, bytes) in tables {
        // The offsets above were computed from the same sizes; a mismatch would be a bug in
        // this module, reported rather than panicking.
        let dst = out
            .get_mut(off..off + bytes.len())
            .ok_or(AcpiError::BufferTooSmall {
                needed: off + bytes.len(),
                available: size,
            })?;
        dst.copy_from_slice(bytes);
    }
    Ok(layout)
}

#[cfg(test)]
pub(crate) mod tests;
