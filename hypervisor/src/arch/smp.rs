//! Starting the application processors (SDM 8.4.4): the CPU list from the MADT, a real-mode
//! trampoline copied to a reserved frame below 1 MiB and patched for that address, and
//! INIT-SIPI-SIPI. An AP goes real mode -> 32-bit protected mode -> long mode with the boot
//! CPU's page tables, then calls the Rust entry on its own stack with its CPU slot.

use core::sync::atomic::{AtomicU32, Ordering};

use spin::Once;

use crate::arch::cpu::Msr;
use crate::arch::madt::CpuList;
use crate::arch::{cpu, gdt, interrupts, lapic, percpu};

/// Where the data block of the trampoline starts, and its fields (offsets in the block).
/// The assembly below lays them out the same way (checked by a test of the blob).
pub mod layout {
    /// Temporary GDT: null, 32-bit code (0x08), data (0x10), 64-bit code (0x18).
    pub const GDT: usize = 0x00;
    /// GDTR: limit (u16) at 0x20, base (u32, patched: + trampoline base).
    pub const GDTR_LIMIT: usize = 0x20;
    pub const GDTR_BASE: usize = 0x22;
    /// Far pointer to the 32-bit code: offset (u32, patched), selector.
    pub const FAR32: usize = 0x28;
    /// Far pointer to the 64-bit code: offset (u32, patched), selector.
    pub const FAR64: usize = 0x30;
    pub const CR4: usize = 0x38;
    pub const CR3: usize = 0x3c;
    pub const EFER: usize = 0x40;
    pub const CR0: usize = 0x44;
    pub const STACK: usize = 0x48;
    pub const ENTRY: usize = 0x50;
    pub const ARG: usize = 0x58;
    /// Size of the data block.
    pub const LEN: usize = 0x60;
}

// The trampoline. Copied to a page P below 1 MiB and started by a SIPI with vector P >> 12:
// CS = P >> 4, IP = 0. Real-mode data accesses are DS(=CS)-relative; from 32-bit mode on,
// EBX holds the linear base P. The data block's pointer fields hold offsets from the start
// of the blob and are patched to linear addresses (`patch`).
core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global hv_ap_trampoline_start
    .global hv_ap_trampoline_data
    .global hv_ap_trampoline_end
hv_ap_trampoline_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    xorl %ebx, %ebx
    movw %ax, %bx
    shll $4, %ebx
    lgdtl (hv_ap_trampoline_data - hv_ap_trampoline_start + {gdtr_limit})
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(hv_ap_trampoline_data - hv_ap_trampoline_start + {far32})

    .code32
hv_ap_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl (hv_ap_trampoline_data - hv_ap_trampoline_start + {cr4})(%ebx), %eax
    movl %eax, %cr4
    movl (hv_ap_trampoline_data - hv_ap_trampoline_start + {cr3})(%ebx), %eax
    movl %eax, %cr3
    movl ${efer_msr}, %ecx
    movl (hv_ap_trampoline_data - hv_ap_trampoline_start + {efer})(%ebx), %eax
    xorl %edx, %edx
    wrmsr
    movl (hv_ap_trampoline_data - hv_ap_trampoline_start + {cr0})(%ebx), %eax
    movl %eax, %cr0
    ljmpl *(hv_ap_trampoline_data - hv_ap_trampoline_start + {far64})(%ebx)

    .code64
hv_ap_lm64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %ebx, %ebx
    movq (hv_ap_trampoline_data - hv_ap_trampoline_start + {stack})(%rbx), %rsp
    movq (hv_ap_trampoline_data - hv_ap_trampoline_start + {arg})(%rbx), %rdi
    movq (hv_ap_trampoline_data - hv_ap_trampoline_start + {entry})(%rbx), %rax
    xorl %ebp, %ebp
    callq *%rax
2:  cli
    hlt
    jmp 2b

    .balign 16
hv_ap_trampoline_data:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
    .short 31
    .long hv_ap_trampoline_data - hv_ap_trampoline_start
    .short 0
    .long hv_ap_pm32 - hv_ap_trampoline_start
    .short 0x08
    .short 0
    .long hv_ap_lm64 - hv_ap_trampoline_start
    .short 0x18
    .short 0
    .long 0, 0, 0, 0
    .quad 0, 0, 0
hv_ap_trampoline_end:
    .text
    "#,
    gdtr_limit = const layout::GDTR_LIMIT,
    far32 = const layout::FAR32,
    far64 = const layout::FAR64,
    cr4 = const layout::CR4,
    cr3 = const layout::CR3,
    efer = const layout::EFER,
    cr0 = const layout::CR0,
    stack = const layout::STACK,
    entry = const layout::ENTRY,
    arg = const layout::ARG,
    efer_msr = const Msr::IA32_EFER.0,
    options(att_syntax)
);

unsafe extern "C" {
    static hv_ap_trampoline_start: u8;
    static hv_ap_trampoline_data: u8;
    static hv_ap_trampoline_end: u8;
}

/// The trampoline as linked: its bytes and the offset of its data block.
pub fn trampoline_blob() -> (&'static [u8], usize) {
    let start = core::ptr::addr_of!(hv_ap_trampoline_start);
    let data = core::ptr::addr_of!(hv_ap_trampoline_data) as usize - start as usize;
    let len = core::ptr::addr_of!(hv_ap_trampoline_end) as usize - start as usize;
    // SAFETY: the three symbols delimit one read-only blob in .rodata.
    (unsafe { core::slice::from_raw_parts(start, len) }, data)
}

/// What an AP starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApParams {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// Top of the AP's stack (16-byte aligned).
    pub stack_top: u64,
    /// `extern "C" fn(arg: u64) -> !`.
    pub entry: u64,
    pub arg: u64,
}

/// Why the trampoline could not be set up or an AP did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpError {
    /// The trampoline frame is not a page below 1 MiB.
    BadBase(u64),
    /// The blob does not fit one page, or its data block is cut short.
    BadBlob,
    /// Page tables above 4 GiB cannot be loaded from 32-bit mode.
    Cr3Above4G(u64),
    /// No frame below 1 MiB was reserved for the trampoline.
    NoTrampolineFrame,
    /// No frames for the AP's stack.
    NoStack,
    /// The AP did not report in after INIT-SIPI-SIPI.
    NoResponse { apic_id: u32 },
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadBase(b) => write!(f, "smp: trampoline at {b:#x} is not a page below 1 MiB"),
            Self::BadBlob => f.write_str("smp: trampoline blob does not fit one page"),
            Self::Cr3Above4G(c) => write!(f, "smp: CR3 {c:#x} is above 4 GiB"),
            Self::NoTrampolineFrame => f.write_str("smp: no frame below 1 MiB for the trampoline"),
            Self::NoStack => f.write_str("smp: no frames for an AP stack"),
            Self::NoResponse { apic_id } => {
                write!(f, "smp: the CPU with APIC ID {apic_id} did not start")
            }
        }
    }
}

/// EFER.LMA is set by the CPU, not written.
const EFER_LMA: u64 = crate::vmx::msr::efer::LMA;
/// CR4 bits that cannot (PCIDE) or need not (VMXE: VMXON sets it) be set from 32-bit mode.
const CR4_PCIDE: u64 = 1 << 17;
const CR4_VMXE: u64 = 1 << 13;

fn put32(b: &mut [u8], at: usize, v: u32) -> Result<(), SmpError> {
    b.get_mut(at..at + 4)
        .ok_or(SmpError::BadBlob)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn put64(b: &mut [u8], at: usize, v: u64) -> Result<(), SmpError> {
    b.get_mut(at..at + 8)
        .ok_or(SmpError::BadBlob)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn get32(b: &[u8], at: usize) -> Result<u32, SmpError> {
    let s = b.get(at..at + 4).ok_or(SmpError::BadBlob)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Patches a copy of the trampoline (`page`, its data block at `data`) for the linear
/// address `base` and the AP's parameters: the GDTR base and the two far-jump offsets,
/// which the blob holds relative to its start, get `base` added; the control registers,
/// stack, entry and argument are written in. Returns the SIPI vector (`base >> 12`).
pub fn patch(page: &mut [u8], data: usize, base: u64, p: &ApParams) -> Result<u8, SmpError> {
    if base == 0 || !base.is_multiple_of(4096) || base >= 1 << 20 {
        return Err(SmpError::BadBase(base));
    }
    if page.len() > 4096 || data + layout::LEN > page.len() {
        return Err(SmpError::BadBlob);
    }
    if p.cr3 >> 32 != 0 {
        return Err(SmpError::Cr3Above4G(p.cr3));
    }
    let d = data;
    for field in [layout::GDTR_BASE, layout::FAR32, layout::FAR64] {
        let rel = get32(page, d + field)?;
        put32(page, d + field, base as u32 + rel)?;
    }
    put32(
        page,
        d + layout::CR4,
        (p.cr4 & !(CR4_PCIDE | CR4_VMXE)) as u32,
    )?;
    put32(page, d + layout::CR3, p.cr3 as u32)?;
    put32(page, d + layout::EFER, (p.efer & !EFER_LMA) as u32)?;
    put32(page, d + layout::CR0, p.cr0 as u32)?;
    put64(page, d + layout::STACK, p.stack_top)?;
    put64(page, d + layout::ENTRY, p.entry)?;
    put64(page, d + layout::ARG, p.arg)?;
    Ok((base >> 12) as u8)
}

static CPUS: Once<CpuList> = Once::new();

/// Records the machine's CPU list (from the MADT, or the boot CPU alone).
pub fn set_cpus(list: CpuList) -> &'static CpuList {
    CPUS.call_once(|| list)
}

/// The CPU list (the boot CPU alone if none was recorded).
pub fn cpus() -> CpuList {
    CPUS.get()
        .copied()
        .unwrap_or_else(|| CpuList::boot_only(lapic::id()))
}

/// APs that reached their Rust entry, by slot bit.
static ALIVE: AtomicU32 = AtomicU32::new(0);

/// Called by an AP's entry once it runs Rust code: the BSP may reuse the trampoline.
pub fn report_alive(slot: u32) {
    ALIVE.fetch_or(1 << slot, Ordering::Release);
}

/// Sets up the calling AP's own GDT/TSS, loads the shared IDT, enables its LAPIC and
/// claims its per-CPU slot (which must be `slot`). Returns false if something refused.
pub fn ap_platform_init(slot: u32) -> bool {
    cpu::init_cr0();
    if !gdt::init_cpu(slot as usize) {
        return false;
    }
    interrupts::load();
    if lapic::init().is_err() {
        return false;
    }
    percpu::register_this_cpu() == Some(slot)
}

/// Starts the CPU `apic_id` through the trampoline page at `base` (already copied and
/// patched, with `vector = base >> 12`): INIT, 10 ms, SIPI, 200 us, SIPI; then waits up to
/// `timeout_us` for the AP to call [`report_alive`] with `slot`.
#[cfg(target_os = "none")]
pub fn start_ap(apic_id: u32, vector: u8, slot: u32, timeout_us: u64) -> Result<(), SmpError> {
    use crate::time;
    lapic::send_init(apic_id);
    time::delay_us(10_000);
    for _ in 0..2 {
        lapic::send_startup(apic_id, vector);
        time::delay_us(200);
        if ALIVE.load(Ordering::Acquire) & (1 << slot) != 0 {
            return Ok(());
        }
    }
    let step = 100;
    let mut waited = 0;
    while waited < timeout_us {
        if ALIVE.load(Ordering::Acquire) & (1 << slot) != 0 {
            return Ok(());
        }
        time::delay_us(step);
        waited += step;
    }
    Err(SmpError::NoResponse { apic_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob laid out like the assembly: code bytes, then the data block at `data`.
    fn blob(data: usize) -> Vec<u8> {
        let mut b = vec![0x90u8; data + layout::LEN];
        b[data..].fill(0);
        put32(&mut b, data + layout::GDTR_BASE, data as u32).unwrap();
        put32(&mut b, data + layout::FAR32, 0x1a).unwrap();
        put32(&mut b, data + layout::FAR64, 0x4e).unwrap();
        b
    }

    fn params() -> ApParams {
        ApParams {
            cr0: 0x8001_0033,
            cr3: 0x20_1000,
            cr4: 0x2020 | CR4_VMXE,
            efer: 0xd00,
            stack_top: 0x1234_5000,
            entry: 0x20_abcd,
            arg: 3,
        }
    }

    #[test]
    fn patch_relocates_pointers_and_writes_parameters() {
        let mut b = blob(0x90);
        let v = patch(&mut b, 0x90, 0x8000, &params()).unwrap();
        assert_eq!(v, 0x08);
        let d = 0x90;
        assert_eq!(get32(&b, d + layout::GDTR_BASE).unwrap(), 0x8090);
        assert_eq!(get32(&b, d + layout::FAR32).unwrap(), 0x801a);
        assert_eq!(get32(&b, d + layout::FAR64).unwrap(), 0x804e);
        assert_eq!(get32(&b, d + layout::CR4).unwrap(), 0x20, "VMXE masked");
        assert_eq!(get32(&b, d + layout::CR3).unwrap(), 0x20_1000);
        assert_eq!(get32(&b, d + layout::EFER).unwrap(), 0x900, "LMA masked");
        assert_eq!(get32(&b, d + layout::CR0).unwrap(), 0x8001_0033);
        assert_eq!(
            &b[d + layout::STACK..d + layout::STACK + 8],
            &0x1234_5000u64.to_le_bytes()
        );
        assert_eq!(
            &b[d + layout::ENTRY..d + layout::ENTRY + 8],
            &0x20_abcdu64.to_le_bytes()
        );
        assert_eq!(
            &b[d + layout::ARG..d + layout::ARG + 8],
            &3u64.to_le_bytes()
        );
        assert!(b[..d].iter().all(|&x| x == 0x90), "code untouched");
    }

    #[test]
    fn the_linked_blob_has_the_layout_patch_expects() {
        let (b, d) = trampoline_blob();
        assert_eq!(b.len(), d + layout::LEN);
        assert!(b.len() <= 4096);
        let q = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        assert_eq!(q(d + layout::GDT + 8), 0x00cf_9a00_0000_ffff);
        assert_eq!(q(d + layout::GDT + 24), 0x00af_9a00_0000_ffff);
        assert_eq!(
            &b[d + layout::GDTR_LIMIT..d + layout::GDTR_LIMIT + 2],
            &31u16.to_le_bytes()
        );
        assert_eq!(get32(b, d + layout::GDTR_BASE).unwrap(), d as u32);
        assert_eq!(
            &b[d + layout::FAR32 + 4..d + layout::FAR32 + 6],
            &0x08u16.to_le_bytes()
        );
        assert_eq!(
            &b[d + layout::FAR64 + 4..d + layout::FAR64 + 6],
            &0x18u16.to_le_bytes()
        );
        let far32 = get32(b, d + layout::FAR32).unwrap() as usize;
        let far64 = get32(b, d + layout::FAR64).unwrap() as usize;
        assert!(0 < far32 && far32 < far64 && far64 < d);
        assert_eq!(b[0], 0xfa, "starts with CLI");
        let mut page = b.to_vec();
        assert_eq!(patch(&mut page, d, 0x7000, &params()), Ok(7));
        assert_eq!(
            get32(&page, d + layout::FAR64).unwrap() as usize,
            0x7000 + far64
        );
    }

    #[test]
    fn patch_refuses_what_a_sipi_cannot_reach() {
        let p = params();
        assert_eq!(
            patch(&mut blob(0x90), 0x90, 0x8800, &p),
            Err(SmpError::BadBase(0x8800))
        );
        assert_eq!(
            patch(&mut blob(0x90), 0x90, 0x10_0000, &p),
            Err(SmpError::BadBase(0x10_0000))
        );
        assert_eq!(
            patch(&mut blob(0x90), 0x90, 0, &p),
            Err(SmpError::BadBase(0))
        );
        assert_eq!(
            patch(&mut blob(0x90), 0x100, 0x9000, &p),
            Err(SmpError::BadBlob)
        );
        let high = ApParams {
            cr3: 0x1_0000_0000,
            ..p
        };
        assert_eq!(
            patch(&mut blob(0x90), 0x90, 0x9000, &high),
            Err(SmpError::Cr3Above4G(0x1_0000_0000))
        );
        assert_eq!(patch(&mut blob(0x90), 0x90, 0x9f000, &p), Ok(0x9f));
    }
}
