//! Emulation of the few guest instructions that touch emulated MMIO (the xAPIC page):
//! fetching the instruction through the guest's page tables and decoding the MOV/XCHG
//! forms compilers emit for a 32-bit volatile access. Everything else is refused, and the
//! caller stops the VM with a report rather than guess.
//!
//! Why decode at all: Linux keeps the local APIC in xAPIC mode unless it has interrupt
//! remapping or recognises the hypervisor (arch/x86/kernel/apic/apic.c,
//! `try_to_enable_x2apic`), and then reads and writes the APIC page at 0xFEE00000 with
//! plain MOVs (`native_apic_mem_read/write`). Where the CPU offers APIC virtualization it
//! could serve those without exits; this path works on every VT-x CPU.

use crate::arch::cpu::{cr0, cr4};
use crate::vmx::msr::efer;

/// The longest x86 instruction (SDM Vol. 2A 2.3.11).
pub const MAX_INSN: usize = 15;

const PAGE: u64 = 4096;
/// Physical-address bits of a paging-structure entry (bits 12..51).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
mod pte {
    pub const PRESENT: u64 = 1 << 0;
    /// User/supervisor: user-mode accesses allowed through this entry.
    pub const USER: u64 = 1 << 2;
    /// Page size: a 1 GiB (PDPTE) or 2 MiB (PDE) page.
    pub const PS: u64 = 1 << 7;
}

/// Guest memory the fetch reads (guest-physical addresses).
pub trait GuestMemory {
    /// Reads `buf.len()` bytes at `gpa`; false when any of them is outside guest RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Bytes of guest RAM: guest-physical `0..size()`.
    fn size(&self) -> u64;
}

impl GuestMemory for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(gpa) else {
            return false;
        };
        match start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// The guest's paging mode, from CR0, CR4 and EFER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingMode {
    pub paging: bool,
    pub long_mode: bool,
    /// CR4.LA57: five-level paging.
    pub five_level: bool,
}

impl PagingMode {
    pub fn from_regs(cr0_value: u64, cr4_value: u64, efer_value: u64) -> Self {
        PagingMode {
            paging: cr0_value & cr0::PG != 0,
            long_mode: efer_value & efer::LMA != 0,
            five_level: cr4_value & cr4::LA57 != 0,
        }
    }
}

/// Why an instruction could not be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// The instruction's bytes are not mapped, or not in guest RAM.
    Fetch { rip: u64 },
    /// Paging modes other than none and 4-level IA-32e paging are not walked.
    PagingMode,
    /// Not one of the decoded forms.
    Unsupported { opcode: u8 },
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            MmioError::Fetch { rip } => write!(f, "cannot fetch the instruction at {rip:#x}"),
            MmioError::PagingMode => f.write_str("guest paging mode not walked"),
            MmioError::Unsupported { opcode } => {
                write!(
                    f,
                    "MMIO by an instruction not emulated (opcode {opcode:#04x})"
                )
            }
        }
    }
}

/// Guest-virtual `va` -> guest-physical, with 4-level IA-32e paging from `cr3` (or the
/// identity when paging is off). Access rights are not checked: the CPU already did, or
/// the fetch would have faulted instead of reaching the MMIO access.
pub fn translate(
    mem: &(impl GuestMemory + ?Sized),
    mode: PagingMode,
    cr3: u64,
    va: u64,
) -> Option<u64> {
    if !mode.paging {
        return Some(va & 0xffff_ffff);
    }
    if !mode.long_mode || mode.five_level {
        return None;
    }
    let mut table = cr3 & ADDR_MASK;
    // Levels: PML4 (bits 39..47), PDPT (30..38), PD (21..29), PT (12..20).
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let index = (va >> shift) & 0x1ff;
        let mut raw = [0u8; 8];
        if !mem.read(table + index * 8, &mut raw) {
            return None;
        }
        let entry = u64::from_le_bytes(raw);
        if entry & pte::PRESENT == 0 {
            return None;
        }
        let large = (level == 1 || level == 2) && entry & pte::PS != 0;
        if large || level == 3 {
            let offset_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !offset_mask) | (va & offset_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

/// Who makes an access through the guest's page tables: user-mode accesses need the U/S
/// bit at every level (SDM Vol. 3A 4.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// CPL 0: any present mapping.
    Supervisor,
    /// CPL 1-3 (treated alike, as the strictest): every level user-accessible.
    User,
}

/// Why a guest-virtual range cannot be read (what the CPU would fault on, or memory that is
/// not the VM's RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// Empty, wrapping past the top of the address space, or not canonical (bits 63..47,
    /// or 63..56 with five-level paging, not all equal; above 4 GiB with paging off).
    NonCanonical,
    /// A paging-structure entry on the way is not present (or has a reserved PS bit).
    NotPresent,
    /// A user access through an entry whose U/S bit is clear.
    NotUser,
    /// A paging structure or the data lies outside the VM's RAM.
    OutsideRam,
    /// 32-bit or PAE paging outside IA-32e mode: not walked.
    PagingMode,
}

/// The first part of a guest-virtual range that one page maps: `len` bytes at `gpa`, all
/// inside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub gpa: u64,
    pub len: u64,
}

/// Highest linear address +1 with paging off (32-bit linear addresses).
const NO_PAGING_LIMIT: u64 = 1 << 32;

/// Whether `[va, va + len)` is a non-empty range of canonical addresses that does not wrap:
/// both ends canonical means the whole range is (the two canonical halves are apart).
pub fn check_range(mode: PagingMode, va: u64, len: u64) -> Result<(), WalkError> {
    if len == 0 {
        return Err(WalkError::NonCanonical);
    }
    let last = va.checked_add(len - 1).ok_or(WalkError::NonCanonical)?;
    if !mode.paging {
        return if last < NO_PAGING_LIMIT {
            Ok(())
        } else {
            Err(WalkError::NonCanonical)
        };
    }
    let bits = if mode.five_level { 57 } else { 48 };
    let canonical = |a: u64| {
        let top = (a as i64) >> (bits - 1);
        top == 0 || top == -1
    };
    if canonical(va) && canonical(last) {
        Ok(())
    } else {
        Err(WalkError::NonCanonical)
    }
}

/// Guest-virtual `[va, va + len)` -> the guest-physical piece of it that `va`'s page maps
/// (up to the end of that 4 KiB, 2 MiB or 1 GiB page, at most `len` bytes), walking the
/// guest's 4- or 5-level IA-32e tables from `cr3` with present bits checked at every level
/// and, for [`Privilege::User`], U/S bits too. The piece is inside guest RAM. With paging
/// off, the identity (below 4 GiB). Write and execute rights are not checked: this reads.
/// `len` is assumed checked by [`check_range`]; only `va` is checked here.
pub fn translate_piece(
    mem: &(impl GuestMemory + ?Sized),
    mode: PagingMode,
    cr3: u64,
    va: u64,
    len: u64,
    who: Privilege,
) -> Result<Piece, WalkError> {
    check_range(mode, va, 1)?;
    let (gpa, page_shift) = if !mode.paging {
        (va, 12)
    } else {
        if !mode.long_mode {
            return Err(WalkError::PagingMode);
        }
        walk(mem, mode, cr3, va, who)?
    };
    let page_left = (1u64 << page_shift) - (va & ((1u64 << page_shift) - 1));
    let n = page_left.min(len);
    match gpa.checked_add(n) {
        Some(end) if n > 0 && end <= mem.size() => Ok(Piece { gpa, len: n }),
        _ => Err(WalkError::OutsideRam),
    }
}

/// The IA-32e walk: `va`'s guest-physical address and the log2 of its page size.
fn walk(
    mem: &(impl GuestMemory + ?Sized),
    mode: PagingMode,
    cr3: u64,
    va: u64,
    who: Privilege,
) -> Result<(u64, u32), WalkError> {
    const FIVE: [u32; 5] = [48, 39, 30, 21, 12];
    let shifts: &[u32] = if mode.five_level { &FIVE } else { &FIVE[1..] };
    let mut table = cr3 & ADDR_MASK;
    for &shift in shifts {
        let index = (va >> shift) & 0x1ff;
        let mut raw = [0u8; 8];
        if !mem.read(table + index * 8, &mut raw) {
            return Err(WalkError::OutsideRam);
        }
        let entry = u64::from_le_bytes(raw);
        if entry & pte::PRESENT == 0 {
            return Err(WalkError::NotPresent);
        }
        if who == Privilege::User && entry & pte::USER == 0 {
            return Err(WalkError::NotUser);
        }
        let leaf = shift == 12 || entry & pte::PS != 0;
        if leaf {
            // PS is reserved in PML5Es and PML4Es: the CPU faults.
            if shift > 30 {
                return Err(WalkError::NotPresent);
            }
            let offset_mask = (1u64 << shift) - 1;
            return Ok((
                (entry & ADDR_MASK & !offset_mask) | (va & offset_mask),
                shift,
            ));
        }
        table = entry & ADDR_MASK;
    }
    Err(WalkError::NotPresent)
}

/// Up to [`MAX_INSN`] bytes at `rip`, fewer when the instruction ends the mapped range
/// (the decoder then fails cleanly if it needs more).
pub fn fetch(
    mem: &(impl GuestMemory + ?Sized),
    mode: PagingMode,
    cr3: u64,
    rip: u64,
) -> Result<([u8; MAX_INSN], usize), MmioError> {
    let mut bytes = [0u8; MAX_INSN];
    let mut got = 0;
    while got < MAX_INSN {
        let va = rip.wrapping_add(got as u64);
        let Some(pa) = translate(mem, mode, cr3, va) else {
            break;
        };
        let in_page = (PAGE - (va & (PAGE - 1))) as usize;
        let n = in_page.min(MAX_INSN - got);
        if !mem.read(pa, &mut bytes[got..got + n]) {
            break;
        }
        got += n;
    }
    if got == 0 {
        if mode.paging && (!mode.long_mode || mode.five_level) {
            return Err(MmioError::PagingMode);
        }
        return Err(MmioError::Fetch { rip });
    }
    Ok((bytes, got))
}

/// What the instruction does with the MMIO location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOp {
    /// `MOV r32, m32`: the register (number as in [`crate::vmx::entry::reg`]) receives the
    /// value, zero-extended to 64 bits.
    Load { reg: u8 },
    /// `MOV m32, r32`.
    Store { reg: u8 },
    /// `MOV m32, imm32`.
    StoreImm { value: u32 },
    /// `XCHG m32, r32`: the register's low 32 bits are stored, the old value loaded.
    Exchange { reg: u8 },
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub op: MmioOp,
    /// Its length in bytes (RIP moves by this much).
    pub len: u8,
}

/// Opcodes of the accepted forms (SDM Vol. 2B, MOV and XCHG).
mod opcode {
    pub const MOV_RM_R: u8 = 0x89;
    pub const MOV_R_RM: u8 = 0x8b;
    pub const XCHG_RM_R: u8 = 0x87;
    pub const MOV_RM_IMM: u8 = 0xc7;
    pub const REX_FIRST: u8 = 0x40;
    pub const REX_LAST: u8 = 0x4f;
    /// REX.W would make the access 64-bit: refused (the APIC registers are 32-bit).
    pub const REX_W: u8 = 0x8;
    pub const REX_R: u8 = 0x4;
}

/// Decodes a 32-bit MOV/XCHG with a memory operand. `long_mode`: 64-bit code (REX
/// prefixes and RIP-relative addressing exist).
pub fn decode(bytes: &[u8], long_mode: bool) -> Result<Decoded, MmioError> {
    let mut i = 0;
    let mut rex = 0u8;
    let at = |i: usize| bytes.get(i).copied();
    let first = at(0).ok_or(MmioError::Unsupported { opcode: 0 })?;
    if long_mode && (opcode::REX_FIRST..=opcode::REX_LAST).contains(&first) {
        rex = first;
        i += 1;
    }
    let op = at(i).ok_or(MmioError::Unsupported { opcode: first })?;
    i += 1;
    if rex & opcode::REX_W != 0 {
        return Err(MmioError::Unsupported { opcode: op });
    }
    let modrm = at(i).ok_or(MmioError::Unsupported { opcode: op })?;
    i += 1;
    let md = modrm >> 6;
    let reg = ((modrm >> 3) & 7) | if rex & opcode::REX_R != 0 { 8 } else { 0 };
    let rm = modrm & 7;
    if md == 3 {
        // A register operand: no memory access, so not what exited.
        return Err(MmioError::Unsupported { opcode: op });
    }
    // SIB, then displacement (SDM Vol. 2A 2.1.5, tables 2-2 and 2-3).
    let mut disp = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = at(i).ok_or(MmioError::Unsupported { opcode: op })?;
        i += 1;
        if md == 0 && sib & 7 == 5 {
            disp = 4;
        }
    } else if md == 0 && rm == 5 {
        // disp32 (RIP-relative in 64-bit mode).
        disp = 4;
    }
    i += disp;
    let decoded_op = match op {
        opcode::MOV_R_RM => MmioOp::Load { reg },
        opcode::MOV_RM_R => MmioOp::Store { reg },
        opcode::XCHG_RM_R => MmioOp::Exchange { reg },
        opcode::MOV_RM_IMM if (modrm >> 3) & 7 == 0 => {
            let imm = bytes
                .get(i..i + 4)
                .ok_or(MmioError::Unsupported { opcode: op })?;
            i += 4;
            MmioOp::StoreImm {
                value: u32::from_le_bytes([imm[0], imm[1], imm[2], imm[3]]),
            }
        }
        _ => return Err(MmioError::Unsupported { opcode: op }),
    };
    if i > bytes.len() || i > MAX_INSN {
        return Err(MmioError::Unsupported { opcode: op });
    }
    Ok(Decoded {
        op: decoded_op,
        len: i as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_apic_accessors_decode() {
        // native_apic_mem_read: mov eax, [rdi - 0xa03000]
        assert_eq!(
            decode(&[0x8b, 0x87, 0x00, 0xd0, 0x5f, 0xff, 0xc3], true),
            Ok(Decoded {
                op: MmioOp::Load { reg: 0 },
                len: 6
            })
        );
        // native_apic_mem_write: mov [rdi - 0xa03000], esi
        assert_eq!(
            decode(&[0x89, 0xb7, 0x00, 0xd0, 0x5f, 0xff], true),
            Ok(Decoded {
                op: MmioOp::Store { reg: 6 },
                len: 6
            })
        );
        // The X86_BUG_11AP alternative: xchg [rdi - 0xa03000], esi
        assert_eq!(
            decode(&[0x87, 0xb7, 0x00, 0xd0, 0x5f, 0xff], true).map(|d| d.op),
            Ok(MmioOp::Exchange { reg: 6 })
        );
    }

    #[test]
    fn rex_sib_disp8_rip_relative_and_immediates() {
        // mov r9d, [rax + rbx*4 + 0x10]: REX.R, SIB, disp8.
        assert_eq!(
            decode(&[0x44, 0x8b, 0x4c, 0x98, 0x10], true),
            Ok(Decoded {
                op: MmioOp::Load { reg: 9 },
                len: 5
            })
        );
        // mov [rip + 0x1234], ecx
        assert_eq!(
            decode(&[0x89, 0x0d, 0x34, 0x12, 0, 0], true).map(|d| d.len),
            Ok(6)
        );
        // mov dword [rax], 0x12345678
        assert_eq!(
            decode(&[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12], true),
            Ok(Decoded {
                op: MmioOp::StoreImm { value: 0x1234_5678 },
                len: 6
            })
        );
        // mov eax, [disp32] through SIB with no base.
        assert_eq!(
            decode(&[0x8b, 0x04, 0x25, 0xf0, 0x00, 0xe0, 0xfe], true).map(|d| d.len),
            Ok(7)
        );
        // In 32-bit code 0x48 is DEC, not REX: refused as an opcode.
        assert!(decode(&[0x48, 0x8b, 0x07], false).is_err());
    }

    #[test]
    fn other_forms_are_refused() {
        assert_eq!(
            decode(&[0x48, 0x8b, 0x07], true),
            Err(MmioError::Unsupported { opcode: 0x8b }),
            "64-bit access"
        );
        assert_eq!(
            decode(&[0x0f, 0xb7, 0x07], true),
            Err(MmioError::Unsupported { opcode: 0x0f })
        );
        assert!(decode(&[0x89, 0xc0], true).is_err(), "register operand");
        assert!(decode(&[0x8b, 0x87, 0x00], true).is_err(), "truncated");
        assert!(decode(&[], true).is_err());
    }

    /// A guest with 4-level tables at 0x1000 mapping 0xffffffff81000000 (a 2 MiB page at
    /// 0x200000) and 0x7000_0000_0000 (a 4 KiB page at 0x7000).
    fn guest() -> Vec<u8> {
        let mut m = vec![0u8; 0x8000];
        let mut put = |addr: u64, v: u64| {
            m[addr as usize..addr as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        let va: u64 = 0xffff_ffff_8100_0000;
        put(0x1000 + ((va >> 39) & 0x1ff) * 8, 0x2000 | 1);
        put(0x2000 + ((va >> 30) & 0x1ff) * 8, 0x3000 | 1);
        put(0x3000 + ((va >> 21) & 0x1ff) * 8, 0x20_0000 | 1 | pte::PS);
        let small: u64 = 0x7000_0000_0000;
        put(0x1000 + ((small >> 39) & 0x1ff) * 8, 0x4000 | 1);
        put(0x4000, 0x6000 | 1); // PDPT[0] -> PD at 0x6000
        put(0x6000, 0x5000 | 1); // PD[0] -> PT at 0x5000
        put(0x5000, 0x7000 | 1); // PT[0] -> the page at 0x7000
        m
    }

    const LONG: PagingMode = PagingMode {
        paging: true,
        long_mode: true,
        five_level: false,
    };

    #[test]
    fn walks_four_level_tables_with_large_pages() {
        let m = guest();
        assert_eq!(
            translate(&m[..], LONG, 0x1000, 0xffff_ffff_8100_0123),
            Some(0x20_0123)
        );
        assert_eq!(
            translate(&m[..], LONG, 0x1000, 0x7000_0000_0abc),
            Some(0x7abc)
        );
        assert_eq!(translate(&m[..], LONG, 0x1000, 0x1234), None, "not present");
        let off = PagingMode {
            paging: false,
            long_mode: false,
            five_level: false,
        };
        assert_eq!(translate(&m[..], off, 0, 0x1234), Some(0x1234));
    }

    #[test]
    fn fetch_reads_across_the_end_of_ram_and_fails_cleanly() {
        let mut m = guest();
        m[0x7ff0..0x7ff6].copy_from_slice(&[0x8b, 0x87, 0x00, 0xd0, 0x5f, 0xff]);
        let (bytes, n) = fetch(&m[..], LONG, 0x1000, 0x7000_0000_0ff0).unwrap();
        assert_eq!(n, 15);
        assert_eq!(decode(&bytes[..n], true).map(|d| d.len), Ok(6));
        assert_eq!(
            fetch(&m[..], LONG, 0x1000, 0x1000),
            Err(MmioError::Fetch { rip: 0x1000 })
        );
        let pae = PagingMode {
            long_mode: false,
            ..LONG
        };
        assert_eq!(
            fetch(&m[..], pae, 0x1000, 0x1000),
            Err(MmioError::PagingMode)
        );
    }
}
