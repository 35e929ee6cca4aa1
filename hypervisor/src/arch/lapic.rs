//! The local APIC in xAPIC mode (SDM chapter 11): MMIO registers at the base in
//! IA32_APIC_BASE, identity-mapped uncached by `crate::memory::paging`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::cpu::{self, Msr};
use crate::arch::interrupts::vectors;

/// Register offsets (SDM table 11-1).
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xb0;
    pub const SVR: u32 = 0xf0;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// IA32_APIC_BASE bits (SDM 11.4.4).
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// LVT: masked.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode: periodic (bits 18:17 = 01).
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// LVT delivery mode NMI (bits 10:8 = 100).
const LVT_DELIVERY_NMI: u32 = 0b100 << 8;
/// Timer divide configuration value for divide-by-1 (SDM figure 11-10).
pub const DIVIDE_BY_1: u32 = 0b1011;

/// ICR bits (SDM figure 11-12).
const ICR_DELIVERY_FIXED: u32 = 0b000 << 8;
const ICR_DELIVERY_NMI: u32 = 0b100 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_SEND_PENDING: u32 = 1 << 12;
const ICR_SHORTHAND_SELF: u32 = 0b01 << 18;
const ICR_DELIVERY_INIT: u32 = 0b101 << 8;
const ICR_DELIVERY_STARTUP: u32 = 0b110 << 8;

static BASE: AtomicU64 = AtomicU64::new(0);

/// Why the LAPIC cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicError {
    /// CPUID.1:EDX.APIC is clear.
    NoApic,
    /// The firmware left the LAPIC in x2APIC mode; this driver speaks xAPIC MMIO only.
    X2ApicEnabled,
}

impl core::fmt::Display for LapicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoApic => write!(f, "lapic: CPUID reports no local APIC"),
            Self::X2ApicEnabled => write!(
                f,
                "lapic: firmware enabled x2APIC mode; xAPIC MMIO is required"
            ),
        }
    }
}

/// The physical base of the LAPIC registers (as read from IA32_APIC_BASE), without enabling.
pub fn physical_base() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (checked by the caller path:
    // `init` checks CPUID first; reading it has no side effect).
    unsafe { cpu::rdmsr(Msr::IA32_APIC_BASE) & APIC_BASE_ADDR_MASK }
}

fn read(offset: u32) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return 0;
    }
    // SAFETY: `init` stored the identity-mapped, uncached base of the LAPIC MMIO page;
    // every offset used is a 16-byte aligned register inside that 4 KiB page.
    unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const u32) }
}

fn write(offset: u32, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((base + u64::from(offset)) as *mut u32, value) }
}

/// Enables the LAPIC in xAPIC mode: spurious vector [`vectors::SPURIOUS`], TPR 0, LINT0
/// masked (the 8259 is not used), LINT1 as NMI, errors on [`vectors::LAPIC_ERROR`], timer
/// masked. `base` must already be mapped uncached.
pub fn init() -> Result<(), LapicError> {
    if !cpu::cpuid_has(1, cpu::CpuidReg::Edx, 9) {
        return Err(LapicError::NoApic);
    }
    // SAFETY: the CPU has an APIC (checked above), so IA32_APIC_BASE exists.
    let msr = unsafe { cpu::rdmsr(Msr::IA32_APIC_BASE) };
    if msr & APIC_BASE_X2APIC != 0 {
        return Err(LapicError::X2ApicEnabled);
    }
    if msr & APIC_BASE_ENABLE == 0 {
        // SAFETY: setting the global enable bit keeps the base address; xAPIC mode.
        unsafe { cpu::wrmsr(Msr::IA32_APIC_BASE, msr | APIC_BASE_ENABLE) };
    }
    BASE.store(msr & APIC_BASE_ADDR_MASK, Ordering::Relaxed);
    write(reg::TPR, 0);
    write(reg::LVT_TIMER, LVT_MASKED | u32::from(vectors::TIMER));
    write(reg::LVT_LINT0, LVT_MASKED);
    write(reg::LVT_LINT1, LVT_DELIVERY_NMI);
    write(reg::LVT_ERROR, u32::from(vectors::LAPIC_ERROR));
    write(reg::ESR, 0);
    write(reg::SVR, SVR_ENABLE | u32::from(vectors::SPURIOUS));
    eoi();
    Ok(())
}

/// Whether this CPU is the bootstrap processor.
pub fn is_bsp() -> bool {
    // SAFETY: as in `physical_base`.
    unsafe { cpu::rdmsr(Msr::IA32_APIC_BASE) & APIC_BASE_BSP != 0 }
}

/// This CPU's APIC ID (0 before `init`).
pub fn id() -> u32 {
    read(reg::ID) >> 24
}

/// The version register (version in bits 7:0, max LVT entry in 23:16).
pub fn version() -> u32 {
    read(reg::VERSION)
}

/// Signals end of interrupt.
pub fn eoi() {
    write(reg::EOI, 0);
}

fn wait_icr_idle() {
    while read(reg::ICR_LOW) & ICR_SEND_PENDING != 0 {
        cpu::pause();
    }
}

/// Sends a fixed interrupt on `vector` to this CPU (self shorthand).
pub fn send_self_ipi(vector: u8) {
    wait_icr_idle();
    write(reg::ICR_HIGH, 0);
    write(
        reg::ICR_LOW,
        ICR_SHORTHAND_SELF | ICR_LEVEL_ASSERT | ICR_DELIVERY_FIXED | u32::from(vector),
    );
}

/// Sends an NMI to this CPU. The self shorthand is not valid for NMI delivery (SDM table
/// 11-3), so the destination is this CPU's own APIC ID, physical mode.
pub fn send_self_nmi() {
    let me = id();
    wait_icr_idle();
    write(reg::ICR_HIGH, me << 24);
    write(reg::ICR_LOW, ICR_LEVEL_ASSERT | ICR_DELIVERY_NMI);
}

/// Sends INIT to the CPU with APIC ID `apic_id` (SDM 8.4.4.1: the first step of
/// INIT-SIPI-SIPI).
pub fn send_init(apic_id: u32) {
    wait_icr_idle();
    write(reg::ICR_HIGH, apic_id << 24);
    write(reg::ICR_LOW, ICR_LEVEL_ASSERT | ICR_DELIVERY_INIT);
    wait_icr_idle();
}

/// Sends a start-up IPI: the CPU with APIC ID `apic_id` starts in real mode at
/// `page << 12` (CS = `page << 8`, IP = 0).
pub fn send_startup(apic_id: u32, page: u8) {
    wait_icr_idle();
    write(reg::ICR_HIGH, apic_id << 24);
    write(
        reg::ICR_LOW,
        ICR_LEVEL_ASSERT | ICR_DELIVERY_STARTUP | u32::from(page),
    );
    wait_icr_idle();
}

/// Starts the timer in periodic mode: every `initial_count` ticks (after `divide`) it raises
/// `vector`.
pub fn timer_periodic(vector: u8, initial_count: u32, divide: u32) {
    write(reg::TIMER_DIVIDE, divide);
    write(reg::LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(vector));
    write(reg::TIMER_INITIAL, initial_count);
}

/// Starts the timer one-shot and masked, counting down from `initial_count`: used to
/// measure its rate through [`timer_current`].
pub fn timer_free_run(initial_count: u32, divide: u32) {
    write(reg::TIMER_DIVIDE, divide);
    write(reg::LVT_TIMER, LVT_MASKED | u32::from(vectors::TIMER));
    write(reg::TIMER_INITIAL, initial_count);
}

/// Stops the timer.
pub fn timer_stop() {
    write(reg::TIMER_INITIAL, 0);
    write(reg::LVT_TIMER, LVT_MASKED | u32::from(vectors::TIMER));
}

/// The timer's current count.
pub fn timer_current() -> u32 {
    read(reg::TIMER_CURRENT)
}
