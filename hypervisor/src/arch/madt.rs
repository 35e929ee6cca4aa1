//! The CPUs of the machine, from the ACPI MADT (ACPI 6.5 section 5.2.12) read with the
//! `acpi` crate. Physical addresses are identity-mapped, so the crate's "mappings" are the
//! physical addresses themselves. Only tables are read: no AML runs, so the handler's
//! register and port accessors are never called by the crate for what we use.

use core::ptr::NonNull;

use acpi::sdt::Signature;
use acpi::sdt::madt::{Madt, MadtEntry};
use acpi::{AcpiTables, Handler, PciAddress, PhysicalMapping};

use crate::arch::percpu::MAX_CPUS;

/// MADT Local APIC flags (ACPI 6.5 table 5.23): enabled, online capable.
const LAPIC_ENABLED: u32 = 1 << 0;
const LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;
/// MADT entry header: type and length bytes.
const ENTRY_HEADER_LEN: usize = 2;
/// Bytes of the MADT before its entries (SDT header, LAPIC address, flags).
const MADT_FIXED_LEN: usize = 44;

/// The usable CPUs, boot CPU included, in MADT order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuList {
    apic_ids: [u32; MAX_CPUS],
    len: usize,
    /// Enabled CPUs the MADT listed beyond [`MAX_CPUS`] (not used).
    pub ignored: usize,
}

impl CpuList {
    /// Only the boot CPU (no MADT).
    pub fn boot_only(apic_id: u32) -> Self {
        let mut l = CpuList {
            apic_ids: [0; MAX_CPUS],
            len: 0,
            ignored: 0,
        };
        l.push(apic_id);
        l
    }

    fn push(&mut self, id: u32) {
        if self.apic_ids[..self.len].contains(&id) {
            return;
        }
        match self.apic_ids.get_mut(self.len) {
            Some(slot) => {
                *slot = id;
                self.len += 1;
            }
            None => self.ignored += 1,
        }
    }

    /// The LAPIC IDs.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why the MADT could not give a CPU list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadtError {
    /// The RSDP or root table is unusable.
    Tables(&'static str),
    /// No table with signature `APIC`.
    NoMadt,
    /// The MADT's checksum or signature is wrong.
    BadMadt,
    /// An entry's length is below its header or runs past the table.
    BadEntry { offset: usize, length: u8 },
    /// The MADT lists no enabled processor.
    NoCpus,
}

impl core::fmt::Display for MadtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Tables(why) => write!(f, "acpi: {why}"),
            Self::NoMadt => f.write_str("acpi: no MADT"),
            Self::BadMadt => f.write_str("acpi: the MADT has a bad checksum"),
            Self::BadEntry { offset, length } => write!(
                f,
                "acpi: MADT entry at offset {offset} has length {length}, outside the table"
            ),
            Self::NoCpus => f.write_str("acpi: the MADT lists no enabled processor"),
        }
    }
}

/// Identity "mapping" of physical memory for the `acpi` crate.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityAcpi;

impl Handler for IdentityAcpi {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        PhysicalMapping {
            physical_start: physical_address,
            // A null address never comes from a valid table; dangling keeps the type happy
            // and the crate only dereferences what the caller vouched for.
            virtual_start: NonNull::new(physical_address as *mut T).unwrap_or(NonNull::dangling()),
            region_length: size,
            mapped_length: size,
            handler: *self,
        }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
    fn read_u8(&self, _: usize) -> u8 {
        0
    }
    fn read_u16(&self, _: usize) -> u16 {
        0
    }
    fn read_u32(&self, _: usize) -> u32 {
        0
    }
    fn read_u64(&self, _: usize) -> u64 {
        0
    }
    fn write_u8(&self, _: usize, _: u8) {}
    fn write_u16(&self, _: usize, _: u16) {}
    fn write_u32(&self, _: usize, _: u32) {}
    fn write_u64(&self, _: usize, _: u64) {}
    fn read_io_u8(&self, _: u16) -> u8 {
        0
    }
    fn read_io_u16(&self, _: u16) -> u16 {
        0
    }
    fn read_io_u32(&self, _: u16) -> u32 {
        0
    }
    fn write_io_u8(&self, _: u16, _: u8) {}
    fn write_io_u16(&self, _: u16, _: u16) {}
    fn write_io_u32(&self, _: u16, _: u32) {}
    fn read_pci_u8(&self, _: PciAddress, _: u16) -> u8 {
        0
    }
    fn read_pci_u16(&self, _: PciAddress, _: u16) -> u16 {
        0
    }
    fn read_pci_u32(&self, _: PciAddress, _: u16) -> u32 {
        0
    }
    fn write_pci_u8(&self, _: PciAddress, _: u16, _: u8) {}
    fn write_pci_u16(&self, _: PciAddress, _: u16, _: u16) {}
    fn write_pci_u32(&self, _: PciAddress, _: u16, _: u32) {}
    fn nanos_since_boot(&self) -> u64 {
        0
    }
    fn stall(&self, _: u64) {}
    fn sleep(&self, _: u64) {}
}

/// Reads the CPU list from the ACPI tables whose RSDP is at `rsdp_addr`.
///
/// # Safety
/// `rsdp_addr` must be the address of a valid RSDP whose root table and tables lie in
/// identity-mapped memory that stays unchanged.
pub unsafe fn cpus_from_rsdp(rsdp_addr: usize) -> Result<CpuList, MadtError> {
    // SAFETY: the caller guarantees `rsdp_addr` is a valid RSDP whose tables lie in
    // identity-mapped memory that stays unchanged; IdentityAcpi maps physical == virtual.
    let tables = unsafe { AcpiTables::from_rsdp(IdentityAcpi, rsdp_addr) }
        .map_err(|_| MadtError::Tables("the RSDP is invalid"))?;
    cpus_from_tables(&tables)
}

/// The CPU list from the MADT of `tables`: enabled (or online-capable) Local APIC and Local
/// x2APIC entries, duplicates removed, at most [`MAX_CPUS`].
pub fn cpus_from_tables<H: Handler>(tables: &AcpiTables<H>) -> Result<CpuList, MadtError> {
    let madt = tables.find_table::<Madt>().ok_or(MadtError::NoMadt)?;
    // SAFETY: the mapping covers the table's whole length (find_table maps `length` bytes).
    unsafe { madt.get().header.validate(Signature::MADT) }.map_err(|_| MadtError::BadMadt)?;
    let len = madt.get().header.length as usize;
    // The crate's entry iterator trusts entry lengths (a zero length would never end):
    // check them first.
    // SAFETY: the mapping covers `len` bytes from the table's start (see above).
    let bytes =
        unsafe { core::slice::from_raw_parts(madt.virtual_start.as_ptr() as *const u8, len) };
    check_entries(bytes)?;
    let mut cpus = CpuList {
        apic_ids: [0; MAX_CPUS],
        len: 0,
        ignored: 0,
    };
    for entry in madt.get().entries() {
        let (id, flags) = match entry {
            MadtEntry::LocalApic(e) => (u32::from(e.apic_id), e.flags),
            MadtEntry::LocalX2Apic(e) => (e.x2apic_id, e.flags),
            _ => continue,
        };
        if flags & (LAPIC_ENABLED | LAPIC_ONLINE_CAPABLE) != 0 {
            cpus.push(id);
        }
    }
    if cpus.is_empty() {
        return Err(MadtError::NoCpus);
    }
    Ok(cpus)
}

/// Checks that every MADT entry has a length of at least its header and ends inside the
/// table.
pub fn check_entries(table: &[u8]) -> Result<(), MadtError> {
    let mut off = MADT_FIXED_LEN;
    while off < table.len() {
        let length = table.get(off + 1).copied().unwrap_or(0);
        if usize::from(length) < ENTRY_HEADER_LEN || off + usize::from(length) > table.len() {
            return Err(MadtError::BadEntry {
                offset: off,
                length,
            });
        }
        off += usize::from(length);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic ACPI 2.0 set: RSDP -> XSDT -> MADT, in one host buffer whose addresses
    /// are real host pointers (the identity handler dereferences them).
    struct Tables {
        buf: Box<Aligned>,
    }

    #[repr(C, align(8))]
    struct Aligned([u8; 4096]);

    impl core::ops::Deref for Aligned {
        type Target = [u8; 4096];
        fn deref(&self) -> &Self::Target {
            &self.0
        }
    }

    impl core::ops::DerefMut for Aligned {
        fn deref_mut(&mut self) -> &mut Self::Target {
            &mut self.0
        }
    }

    fn checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let sum = b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        b[at] = 0u8.wrapping_sub(sum);
    }

    fn sdt_header(sig: &[u8; 4], len: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(sig);
        h.extend_from_slice(&len.to_le_bytes());
        h.push(1); // revision
        h.push(0); // checksum
        h.extend_from_slice(b"HVTEST"); // OEM ID
        h.extend_from_slice(b"HVTABLES"); // OEM table ID
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(b"HVTS");
        h.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(h.len(), 36);
        h
    }

    /// `entries`: raw MADT entries.
    fn build(entries: &[u8], fix_checksum: bool) -> Tables {
        let mut t = Tables {
            buf: Box::new(Aligned([0; 4096])),
        };
        let base = t.buf.as_ptr() as u64;
        // acpi 6.1.1 reads XSDT entries as `*const u64` (its `table_entries`), so they must be
        // 8-byte aligned here or the debug build's alignment check panics; firmware puts
        // them at offset 36, so on hardware the crate relies on x86 tolerating the
        // unaligned load (noted for an upstream report).
        let (rsdp_off, xsdt_off, madt_off) = (0usize, 68usize, 256usize);
        // MADT
        let mlen = MADT_FIXED_LEN + entries.len();
        let mut madt = sdt_header(b"APIC", mlen as u32);
        madt.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        madt.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        madt.extend_from_slice(entries);
        if fix_checksum {
            checksum(&mut madt, 9);
        }
        t.buf[madt_off..madt_off + mlen].copy_from_slice(&madt);
        // XSDT with one entry
        let mut xsdt = sdt_header(b"XSDT", 44);
        xsdt.extend_from_slice(&(base + madt_off as u64).to_le_bytes());
        checksum(&mut xsdt, 9);
        t.buf[xsdt_off..xsdt_off + 44].copy_from_slice(&xsdt);
        // RSDP 2.0
        let mut rsdp = Vec::new();
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0);
        rsdp.extend_from_slice(b"HVTEST");
        rsdp.push(2);
        rsdp.extend_from_slice(&0u32.to_le_bytes());
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&(base + xsdt_off as u64).to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
        let mut first = rsdp[..20].to_vec();
        checksum(&mut first, 8);
        rsdp[8] = first[8];
        checksum(&mut rsdp, 32);
        t.buf[rsdp_off..rsdp_off + 36].copy_from_slice(&rsdp);
        t
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn cpus(t: &Tables) -> Result<CpuList, MadtError> {
        // SAFETY: the buffer holds a valid RSDP and tables and outlives the call.
        unsafe { cpus_from_rsdp(t.buf.as_ptr() as usize) }
    }

    #[test]
    fn enabled_local_apics_and_x2apics_in_order() {
        let mut e = lapic(0, 0, 1);
        e.extend(lapic(1, 2, 1));
        e.extend(lapic(2, 4, 0)); // disabled, not online capable
        e.extend(lapic(3, 6, 2)); // online capable
        e.extend(lapic(4, 2, 1)); // duplicate ID
        // I/O APIC entry, skipped
        e.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        // Local x2APIC, ID 300, enabled
        let mut x = vec![9, 16, 0, 0];
        x.extend_from_slice(&300u32.to_le_bytes());
        x.extend_from_slice(&1u32.to_le_bytes());
        x.extend_from_slice(&7u32.to_le_bytes());
        e.extend(x);
        let t = build(&e, true);
        let l = cpus(&t).unwrap();
        assert_eq!(l.apic_ids(), &[0, 2, 6, 300]);
        assert_eq!(l.ignored, 0);
    }

    #[test]
    fn more_than_max_cpus_are_counted_not_kept() {
        let e: Vec<u8> = (0..MAX_CPUS as u8 + 3)
            .flat_map(|i| lapic(i, i, 1))
            .collect();
        let l = cpus(&build(&e, true)).unwrap();
        assert_eq!(l.len(), MAX_CPUS);
        assert_eq!(l.ignored, 3);
        assert_eq!(l.apic_ids()[MAX_CPUS - 1], MAX_CPUS as u32 - 1);
    }

    #[test]
    fn bad_tables_are_errors() {
        assert_eq!(cpus(&build(&lapic(0, 0, 0), true)), Err(MadtError::NoCpus));
        assert_eq!(
            cpus(&build(&lapic(0, 0, 1), false)),
            Err(MadtError::BadMadt)
        );
        // A zero-length entry would loop forever in the crate's iterator.
        let mut e = lapic(0, 0, 1);
        e.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            cpus(&build(&e, true)),
            Err(MadtError::BadEntry {
                offset: 52,
                length: 0
            })
        );
        let mut e = lapic(0, 0, 1);
        e.extend_from_slice(&[0, 8, 1, 1]); // runs past the end
        assert_eq!(
            cpus(&build(&e, true)),
            Err(MadtError::BadEntry {
                offset: 52,
                length: 8
            })
        );
        let mut t = build(&lapic(0, 0, 1), true);
        t.buf[0] = b'X';
        assert_eq!(cpus(&t), Err(MadtError::Tables("the RSDP is invalid")));
        assert_eq!(
            CpuList::boot_only(3).apic_ids(),
            &[3],
            "the fallback is the boot CPU alone"
        );
    }

    #[test]
    fn no_madt_is_an_error() {
        let mut t = build(&lapic(0, 0, 1), true);
        t.buf[256..260].copy_from_slice(b"FACP");
        assert_eq!(cpus(&t), Err(MadtError::NoMadt));
    }
}
