//! CPU instruction wrappers: port I/O, MSRs, control registers, CPUID, TSC, HLT, RFLAGS.
//! Wrappers with side effects are `unsafe fn` with a `# Safety` section.

use core::arch::asm;

/// A model-specific register number (SDM vol. 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msr(pub u32);

impl Msr {
    /// IA32_APIC_BASE: LAPIC base address and enable bits (SDM 11.4.4).
    pub const IA32_APIC_BASE: Msr = Msr(0x1b);
    /// IA32_FEATURE_CONTROL: lock and VMX-enable bits (SDM 24.7).
    pub const IA32_FEATURE_CONTROL: Msr = Msr(0x3a);
    /// IA32_TSC_DEADLINE.
    pub const IA32_TSC_DEADLINE: Msr = Msr(0x6e0);
    /// IA32_PAT.
    pub const IA32_PAT: Msr = Msr(0x277);
    /// IA32_EFER: long mode and NX enables.
    pub const IA32_EFER: Msr = Msr(0xc000_0080);
    /// IA32_FS_BASE.
    pub const IA32_FS_BASE: Msr = Msr(0xc000_0100);
    /// IA32_GS_BASE.
    pub const IA32_GS_BASE: Msr = Msr(0xc000_0101);
}

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
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr.0, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The device behind `port` must tolerate the write.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: guaranteed by the caller.
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
    // SAFETY: guaranteed by the caller.
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
    // SAFETY: guaranteed by the caller.
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
    // SAFETY: guaranteed by the caller.
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
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep PAE/long mode on and must only set bits the CPU supports.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes CR3 (switches the address space and flushes non-global TLB entries).
///
/// # Safety
/// `value` must point at a valid PML4 that maps all code and data in use.
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// CR0 bits (SDM 2.5).
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
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

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// Whether maskable interrupts are enabled.
pub fn interrupts_enabled() -> bool {
    read_rflags() & RFLAGS_IF != 0
}

/// Enables maskable interrupts (STI).
///
/// # Safety
/// The IDT must be loaded and every vector that can arrive must have a working handler.
pub unsafe fn enable_interrupts() {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Disables maskable interrupts (CLI).
pub fn disable_interrupts() {
    // SAFETY: CLI only clears RFLAGS.IF; it cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Runs `f` with maskable interrupts disabled, restoring the previous state after.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_enabled = interrupts_enabled();
    disable_interrupts();
    let r = f();
    if was_enabled {
        // SAFETY: interrupts were enabled on entry, so handlers were already in place.
        unsafe { enable_interrupts() };
    }
    r
}

/// Halts until the next interrupt.
pub fn hlt() {
    // SAFETY: HLT only waits for an interrupt.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// Enables interrupts and halts atomically (STI; HLT), so a wakeup cannot be missed.
///
/// # Safety
/// As [`enable_interrupts`].
pub unsafe fn enable_interrupts_and_hlt() {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) };
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
