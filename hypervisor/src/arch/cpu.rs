//! CPU instruction wrappers: port I/O, MSRs, control registers, CPUID, TSC, HLT, RFLAGS.
//! Wrappers with side effects are `unsafe fn` with a `# Safety` section.

use core::arch::asm;

/// The one MSR type of the hypervisor (numbers and bit sets live in `crate::vmx::msr`).
pub use crate::vmx::msr::Msr;

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist on this CPU (else #GP) and reading it must have no side effect the
/// caller has not accounted for.
pub unsafe fn rdmsr(msr: Msr) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR touches only EAX/EDX.
    unsafe {
        asm!("rdmsr", in("ecx") msr.0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it; the write may change CPU behaviour
/// (paging, interrupts, ...) in ways the caller must have accounted for.
pub unsafe fn wrmsr(msr: Msr, value: u64) {
    // SAFETY: the caller guarantees the MSR exists and the value is valid and intended;
    // WRMSR reads only ECX/EDX:EAX.
    unsafe {
        asm!("wrmsr", in("ecx") msr.0, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The device behind `port` must tolerate the write.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller guarantees the device behind `port` tolerates the write; OUT
    // touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The read must have no side effect the caller has not accounted for.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller guarantees the read has no unaccounted side effect; IN touches
    // no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a doubleword to an I/O port.
///
/// # Safety
/// The device behind `port` must tolerate the write.
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller guarantees the device behind `port` tolerates the write; OUT
    // touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a doubleword from an I/O port.
///
/// # Safety
/// The read must have no side effect the caller has not accounted for.
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller guarantees the read has no unaccounted side effect; IN touches
    // no memory.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter into EDX:EAX (CR4.TSD is clear: we run at CPL 0).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The result of CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl Cpuid {
    /// `[eax, ebx, ecx, edx]`.
    pub fn to_array(self) -> [u32; 4] {
        [self.eax, self.ebx, self.ecx, self.edx]
    }
}

/// Executes CPUID for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    // CPUID is safe on x86_64 (always available, only writes four registers).
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

macro_rules! read_cr {
    ($name:ident, $reg:literal) => {
        #[doc = concat!("Reads ", $reg, ".")]
        pub fn $name() -> u64 {
            let value: u64;
            // SAFETY: reading a control register has no side effect at CPL 0.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) value, options(nomem, nostack, preserves_flags)) };
            value
        }
    };
}
read_cr!(read_cr0, "cr0");
read_cr!(read_cr2, "cr2");
read_cr!(read_cr3, "cr3");
read_cr!(read_cr4, "cr4");

/// Writes CR0.
///
/// # Safety
/// The new value must keep protected mode, paging and the current mappings valid.
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: the caller guarantees the value keeps protected mode, paging and the
    // current mappings valid.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep PAE/long mode on and must only set bits the CPU supports.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller guarantees the value keeps PAE/long mode on and sets only
    // supported bits.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes CR3 (switches the address space and flushes non-global TLB entries).
///
/// # Safety
/// `value` must point at a valid PML4 that maps all code and data in use.
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: the caller guarantees `value` is a PML4 mapping all code and data in use.
    unsafe { asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// CR0 bits (SDM 2.5).
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
    /// The bits LMSW may change (SDM Vol. 2A, LMSW): PE, MP, EM, TS.
    pub const LMSW_BITS: u64 = PE | MP | EM | TS;
}

/// CR4 bits (SDM 2.5).
pub mod cr4 {
    pub const PAE: u64 = 1 << 5;
    /// Five-level paging.
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const OSXSAVE: u64 = 1 << 18;
}

/// DR7 bits (SDM 18.2.4).
pub mod dr7 {
    /// The value after reset: only bit 10, which is reserved and reads as 1.
    pub const INIT: u64 = 1 << 10;
}

/// RFLAGS bits (SDM 2.3).
pub mod rflags {
    /// Bit 1 is reserved and always 1.
    pub const FIXED: u64 = 1 << 1;
    pub const IF: u64 = 1 << 9;
}

/// Puts CR0 in the state the hypervisor runs with: caches on (firmware may leave CD/NW
/// set), native FPU error reporting (NE, which VMX operation requires), write protection.
pub fn init_cr0() {
    let value = (read_cr0() | cr0::NE | cr0::WP) & !(cr0::CD | cr0::NW);
    // SAFETY: PE and PG stay set; NE/WP/CD/NW only change error reporting, write
    // protection of read-only pages (none are mapped read-only) and caching.
    unsafe { write_cr0(value) };
}

/// Invalidates the TLB entry for `addr`.
///
/// # Safety
/// None beyond CPL 0; kept `unsafe` because it is a paging side effect the caller must
/// pair with a page-table change.
pub unsafe fn invlpg(addr: u64) {
    // SAFETY: INVLPG only drops a TLB entry.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

/// Reads RFLAGS.
pub fn read_rflags() -> u64 {
    let value: u64;
    // SAFETY: PUSHF/POP only touch the stack slot they use.
    unsafe { asm!("pushfq", "pop {}", out(reg) value, options(nomem, preserves_flags)) };
    value
}

/// Whether maskable interrupts are enabled.
pub fn interrupts_enabled() -> bool {
    read_rflags() & rflags::IF != 0
}

/// Enables maskable interrupts (STI). Not `nomem`: memory accesses must not move across
/// the point where interrupt handlers may start to run.
///
/// # Safety
/// The IDT must be loaded and every vector that can arrive must have a working handler, and
/// no data the handlers touch may be in a half-updated state the caller relied on IF=0 for.
pub unsafe fn enable_interrupts() {
    // SAFETY: the caller guarantees the IDT and its handlers are in place.
    unsafe { asm!("sti", options(nostack)) };
}

/// Disables maskable interrupts (CLI). Not `nomem`: memory accesses must not move across
/// the start of the interrupt-free section.
///
/// # Safety
/// Until interrupts are enabled again, the caller must not wait for anything only an
/// interrupt brings (a HLT, or a spin on a tick-driven value), or the CPU hangs.
pub unsafe fn disable_interrupts() {
    // SAFETY: CLI only clears RFLAGS.IF; the caller guarantees it does not then wait for
    // an interrupt.
    unsafe { asm!("cli", options(nostack)) };
}

/// Runs `f` with maskable interrupts disabled, restoring the previous state after.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_enabled = interrupts_enabled();
    // SAFETY: the section is `f`, which runs to completion; interrupts come back (if they
    // were on) right after it, so nothing here waits for one.
    unsafe { disable_interrupts() };
    let r = f();
    if was_enabled {
        // SAFETY: interrupts were enabled on entry, so the IDT and handlers were in place.
        unsafe { enable_interrupts() };
    }
    r
}

/// Halts until the next interrupt (or forever if RFLAGS.IF is clear and no NMI comes).
/// Not `nomem`: an interrupt handler may change memory while the CPU halts.
pub fn hlt() {
    // SAFETY: HLT only waits for an interrupt; it changes no state the compiler models.
    unsafe { asm!("hlt", options(nostack, preserves_flags)) };
}

/// Stops this CPU for good: interrupts off, then HLT in a loop (an NMI wakes it only to
/// halt again).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: waiting forever is the point; nothing runs on this CPU afterwards.
        unsafe { disable_interrupts() };
        hlt();
    }
}

/// Enables interrupts and halts atomically (STI; HLT: STI's one-instruction shadow makes
/// the pair atomic, so a wakeup cannot be missed). Interrupts stay enabled after.
///
/// # Safety
/// As [`enable_interrupts`].
pub unsafe fn enable_interrupts_and_hlt() {
    // SAFETY: the caller guarantees the IDT and its handlers are in place.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Runs the host IDT's NMI handler in the current context (INT 2): passes on an NMI that a
/// VM exit consumed but that was not the sampler's.
///
/// # Safety
/// The host IDT must be loaded with a working NMI handler at vector 2, and the caller must
/// be in host context (VMX root operation, not inside an NMI handler).
pub unsafe fn reflect_nmi_to_host() {
    // SAFETY: the caller guarantees the NMI handler is installed and this is host context;
    // the handler runs exactly as an NMI arriving in host mode would.
    unsafe { asm!("int 2", options(nostack)) };
}

macro_rules! read_seg {
    ($name:ident, $reg:literal) => {
        #[doc = concat!("Reads the ", $reg, " segment selector.")]
        pub fn $name() -> u16 {
            let v: u16;
            // SAFETY: reading a segment selector has no side effects.
            unsafe { asm!(concat!("mov {0:x}, ", $reg), out(reg) v, options(nostack, nomem, preserves_flags)) };
            v
        }
    };
}
read_seg!(read_cs, "cs");
read_seg!(read_ss, "ss");
read_seg!(read_ds, "ds");
read_seg!(read_es, "es");
read_seg!(read_fs, "fs");
read_seg!(read_gs, "gs");

/// STR: the task register selector.
pub fn read_tr() -> u16 {
    let v: u16;
    // SAFETY: STR only reads the task register.
    unsafe { asm!("str {0:x}", out(reg) v, options(nostack, nomem, preserves_flags)) };
    v
}

/// A descriptor-table register (GDTR/IDTR): (base, limit).
fn read_dtr(idt: bool) -> (u64, u16) {
    let mut buf = [0u8; 10];
    // SAFETY: SGDT/SIDT store exactly 10 bytes into the local buffer.
    unsafe {
        if idt {
            asm!("sidt [{}]", in(reg) buf.as_mut_ptr(), options(nostack, preserves_flags));
        } else {
            asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack, preserves_flags));
        }
    }
    let limit = u16::from_le_bytes([buf[0], buf[1]]);
    let mut base = [0u8; 8];
    base.copy_from_slice(&buf[2..10]);
    (u64::from_le_bytes(base), limit)
}

/// GDTR: (base, limit).
pub fn read_gdtr() -> (u64, u16) {
    read_dtr(false)
}

/// IDTR: (base, limit).
pub fn read_idtr() -> (u64, u16) {
    read_dtr(true)
}

/// Spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// Whether CPUID reports a feature bit: `cpuid_has(1, Reg::Ecx, 5)` is VMX.
pub fn cpuid_has(leaf: u32, reg: CpuidReg, bit: u32) -> bool {
    let r = cpuid(leaf, 0);
    let v = match reg {
        CpuidReg::Eax => r.eax,
        CpuidReg::Ebx => r.ebx,
        CpuidReg::Ecx => r.ecx,
        CpuidReg::Edx => r.edx,
    };
    v & (1 << bit) != 0
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug)]
pub enum CpuidReg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// The CPU vendor string (e.g. `GenuineIntel`).
pub fn vendor() -> [u8; 12] {
    let r = cpuid(0, 0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    v
}
