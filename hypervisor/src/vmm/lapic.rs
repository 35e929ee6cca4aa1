//! The local APIC of one vCPU (SDM Vol. 3A chapter 11, "Advanced Programmable Interrupt
//! Controller"), as pure state: the x2APIC MSRs (0x800-0x8ff), the xAPIC MMIO page (the
//! same registers at offset (msr - 0x800) << 4), IA32_APIC_BASE, IA32_TSC_DEADLINE, task
//! and processor priority, IRR/ISR/EOI, the error status register, IPIs and the timer in
//! its three modes. The caller passes the current TSC, injects what [`Lapic::acknowledge`]
//! returns, raises #GP for an [`ApicFault`] and routes what an [`ApicAction`] asks for;
//! nothing here touches hardware.
//!
//! The vCPU comes out of [`Lapic::new`] in x2APIC mode (the hypervisor plays the firmware
//! that enabled it). Not modelled: level-triggered interrupts (TMR reads 0, so an EOI is
//! never broadcast), EOI-broadcast suppression (version bit 24 clear), the LINT0/LINT1
//! pins, thermal, performance-counter and CMCI interrupts (their LVTs are plain storage),
//! the spurious-interrupt case (acknowledging is atomic here), lowest-priority IPIs (refused
//! with ESR "redirectable IPI", as the SDM allows) and relocating the xAPIC page.

use crate::vmx::msr::Msr;

/// The local-APIC timer's input clock, in TSC ticks per timer tick before the divider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerClock {
    tsc_per_tick: u64,
}

impl TimerClock {
    /// The timer counts at the TSC rate (the hypervisor reports the TSC rate as CPUID
    /// 0x15's crystal clock).
    pub const TSC: TimerClock = TimerClock { tsc_per_tick: 1 };

    /// `tsc_per_tick` TSC ticks make one timer tick before the divider (0 counts as 1).
    pub const fn new(tsc_per_tick: u64) -> Self {
        TimerClock {
            tsc_per_tick: if tsc_per_tick == 0 { 1 } else { tsc_per_tick },
        }
    }

    /// TSC ticks per timer tick before the divider (at least 1).
    pub const fn tsc_per_tick(self) -> u64 {
        self.tsc_per_tick
    }
}

/// A #GP(0) the caller injects: a WRMSR/RDMSR the local APIC refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicFault;

/// The local APIC's state as IA32_APIC_BASE selects it (SDM 11.12.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: globally disabled, as a CPU without a local APIC.
    Disabled,
    /// EN = 1, EXTD = 0: registers in the MMIO page.
    XApic,
    /// EN = 1, EXTD = 1: registers are MSRs 0x800-0x8ff.
    X2Apic,
}

/// The ICR's destination shorthand (SDM 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field says who.
    None,
    /// The sender only.
    SelfOnly,
    /// Every local APIC, the sender included.
    AllIncludingSelf,
    /// Every local APIC but the sender.
    AllExcludingSelf,
}

/// The ICR's delivery modes an [`ApicAction::Ipi`] can carry (SDM 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector, into the destinations' IRR.
    Fixed,
    Smi,
    Nmi,
    /// INIT (assert) or, with `level` false and level trigger, the INIT level de-assert.
    Init,
    /// Start-up IPI: the vector is the start page (vector << 12).
    StartUp,
}

/// The ICR's destination mode (SDM 11.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestMode {
    /// `dest` is an APIC ID.
    Physical,
    /// `dest` is matched against each destination's LDR (and DFR in xAPIC mode).
    Logical,
}

/// The ICR's trigger mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerMode {
    Edge,
    Level,
}

/// What the caller must do after a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicAction {
    /// Nothing: the write only changed this local APIC (a self-IPI or a fixed IPI to the
    /// vCPU's own physical ID is already in IRR).
    None,
    /// An NMI to self (ICR delivery mode NMI, to the own ID or with shorthand self): the
    /// caller injects an NMI.
    SelfNmi,
    /// An IPI the caller routes: to every vCPU whose [`Lapic::is_destination`] accepts
    /// `dest` (shorthand [`Shorthand::None`]), or per the shorthand. It may include this
    /// vCPU (broadcast, logical destination, all-including-self): the router then delivers
    /// to it like to any other. Fixed IPIs go in with [`Lapic::request`]; INIT and SIPI are
    /// passed on for SMP.
    Ipi {
        /// The destination field: 32 bits in x2APIC mode (0xffff_ffff broadcasts), 8 bits
        /// in xAPIC mode (0xff broadcasts).
        dest: u32,
        dest_mode: DestMode,
        shorthand: Shorthand,
        mode: DeliveryMode,
        vector: u8,
        /// The ICR level bit: assert (true) or de-assert.
        level: bool,
        trigger: TriggerMode,
    },
}

/// A local-APIC register by index: the xAPIC MMIO offset / 16, the x2APIC MSR - 0x800
/// (SDM table 11-6, "Local APIC Register Address Map Supported by x2APIC").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApicReg(pub u32);

impl ApicReg {
    pub const ID: ApicReg = ApicReg(0x02);
    pub const VERSION: ApicReg = ApicReg(0x03);
    pub const TPR: ApicReg = ApicReg(0x08);
    /// Arbitration priority (xAPIC only; reads 0 here).
    pub const APR: ApicReg = ApicReg(0x09);
    pub const PPR: ApicReg = ApicReg(0x0a);
    pub const EOI: ApicReg = ApicReg(0x0b);
    /// Remote read (xAPIC only; reads 0 here).
    pub const RRD: ApicReg = ApicReg(0x0c);
    pub const LDR: ApicReg = ApicReg(0x0d);
    /// Destination format (xAPIC only).
    pub const DFR: ApicReg = ApicReg(0x0e);
    pub const SVR: ApicReg = ApicReg(0x0f);
    /// The first of the 8 ISR registers (vectors 0-31, then 32-63, ...).
    pub const ISR0: ApicReg = ApicReg(0x10);
    /// The first of the 8 TMR registers.
    pub const TMR0: ApicReg = ApicReg(0x18);
    /// The first of the 8 IRR registers.
    pub const IRR0: ApicReg = ApicReg(0x20);
    pub const ESR: ApicReg = ApicReg(0x28);
    pub const LVT_CMCI: ApicReg = ApicReg(0x2f);
    /// ICR: 64 bits in x2APIC mode, the low half in xAPIC mode.
    pub const ICR: ApicReg = ApicReg(0x30);
    /// ICR bits 32-63 (xAPIC only).
    pub const ICR_HIGH: ApicReg = ApicReg(0x31);
    pub const LVT_TIMER: ApicReg = ApicReg(0x32);
    pub const LVT_THERMAL: ApicReg = ApicReg(0x33);
    pub const LVT_PERF: ApicReg = ApicReg(0x34);
    pub const LVT_LINT0: ApicReg = ApicReg(0x35);
    pub const LVT_LINT1: ApicReg = ApicReg(0x36);
    pub const LVT_ERROR: ApicReg = ApicReg(0x37);
    pub const TIMER_INITIAL: ApicReg = ApicReg(0x38);
    pub const TIMER_CURRENT: ApicReg = ApicReg(0x39);
    pub const TIMER_DIVIDE: ApicReg = ApicReg(0x3e);
    /// SELF IPI (x2APIC only).
    pub const SELF_IPI: ApicReg = ApicReg(0x3f);

    /// Its x2APIC MSR number.
    pub const fn msr(self) -> u32 {
        Msr::IA32_X2APIC_FIRST.0 + self.0
    }

    /// Its offset in the xAPIC page.
    pub const fn mmio_offset(self) -> u32 {
        self.0 << MMIO_REG_SHIFT
    }

    /// The register of an x2APIC MSR, if `msr` is in the x2APIC range.
    pub fn from_msr(msr: u32) -> Option<ApicReg> {
        (Msr::IA32_X2APIC_FIRST.0..=Msr::IA32_X2APIC_LAST.0)
            .contains(&msr)
            .then(|| ApicReg(msr - Msr::IA32_X2APIC_FIRST.0))
    }

    /// Which of the 8 registers of the bank starting at `first` (ISR, TMR, IRR) this is.
    fn bank_word(self, first: ApicReg) -> Option<usize> {
        let i = self.0.checked_sub(first.0)?;
        (i < VECTOR_WORDS as u32).then_some(i as usize)
    }
}

/// Register index = MMIO offset >> 4.
const MMIO_REG_SHIFT: u32 = 4;
/// Bytes of an MMIO register slot below which the 32-bit register sits.
const MMIO_SLOT_MASK: u32 = (1 << MMIO_REG_SHIFT) - 1;
/// The xAPIC page's size.
const MMIO_PAGE_SIZE: u32 = 0x1000;
/// The low 32 bits of a 64-bit register.
const LOW32: u64 = u32::MAX as u64;

/// IA32_APIC_BASE bits (SDM 11.4.4, 11.12.1).
pub mod apic_base {
    /// This processor is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode.
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable.
    pub const EN: u64 = 1 << 11;
    /// The page base (bits 12 to MAXPHYADDR - 1; 52 at most).
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// The architectural base, the only one accepted.
    pub const DEFAULT_ADDRESS: u64 = 0xfee0_0000;
    /// Bits a write may set; any other is reserved.
    pub const WRITABLE: u64 = BSP | EXTD | EN | ADDRESS_MASK;
}

/// The version register (SDM 11.4.8): an integrated APIC, 6 LVT entries, no EOI-broadcast
/// suppression.
pub mod version {
    pub const VERSION: u32 = 0x14;
    /// Entries in the LVT minus one (timer, thermal, perf, LINT0, LINT1, error).
    pub const MAX_LVT_ENTRY: u32 = 5;
    pub const MAX_LVT_SHIFT: u32 = 16;
    pub const VALUE: u32 = VERSION | (MAX_LVT_ENTRY << MAX_LVT_SHIFT);
}

/// Spurious-interrupt vector register bits (SDM 11.9).
pub mod svr {
    pub const VECTOR: u32 = 0xff;
    /// APIC software enable.
    pub const ENABLE: u32 = 1 << 8;
    /// Focus processor checking disabled (stored, no effect).
    pub const FOCUS_DISABLE: u32 = 1 << 9;
    /// Bits a write may set; bit 12 (EOI-broadcast suppression) is not offered.
    pub const WRITABLE: u32 = VECTOR | ENABLE | FOCUS_DISABLE;
    /// Value at reset (SDM 11.4.7.1).
    pub const RESET: u32 = 0xff;
}

/// Error status register bits (SDM 11.5.3).
pub mod esr {
    /// A lowest-priority IPI this APIC does not send.
    pub const REDIRECTABLE_IPI: u32 = 1 << 4;
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// An xAPIC MMIO access to a reserved register.
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// Local vector table entry bits (SDM figure 11-8).
pub mod lvt {
    pub const VECTOR: u32 = 0xff;
    pub const DELIVERY_MODE: u32 = 0b111 << 8;
    /// Read-only: always idle here.
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    pub const PIN_POLARITY: u32 = 1 << 13;
    /// Read-only: always 0 here.
    pub const REMOTE_IRR: u32 = 1 << 14;
    pub const TRIGGER_LEVEL: u32 = 1 << 15;
    pub const MASKED: u32 = 1 << 16;
    /// Timer mode, bits 18:17 (SDM 11.5.4).
    pub const TIMER_MODE: u32 = 0b11 << 17;
    pub const TIMER_ONE_SHOT: u32 = 0b00 << 17;
    pub const TIMER_PERIODIC: u32 = 0b01 << 17;
    pub const TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
    pub const TIMER_RESERVED: u32 = 0b11 << 17;
    /// Delivery modes (bits 10:8) of LINT0/LINT1 and the CMCI/thermal/perf entries.
    pub const DELIVERY_FIXED: u32 = 0b000 << 8;
    pub const DELIVERY_NMI: u32 = 0b100 << 8;
    pub const DELIVERY_EXTINT: u32 = 0b111 << 8;
}

/// Interrupt command register bits (SDM 11.6.1, 11.12.9).
pub mod icr {
    pub const VECTOR: u64 = 0xff;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const DELIVERY_MODE: u64 = 0b111 << DELIVERY_MODE_SHIFT;
    pub const FIXED: u64 = 0b000 << DELIVERY_MODE_SHIFT;
    pub const LOWEST_PRIORITY: u64 = 0b001 << DELIVERY_MODE_SHIFT;
    pub const SMI: u64 = 0b010 << DELIVERY_MODE_SHIFT;
    pub const NMI: u64 = 0b100 << DELIVERY_MODE_SHIFT;
    pub const INIT: u64 = 0b101 << DELIVERY_MODE_SHIFT;
    pub const STARTUP: u64 = 0b110 << DELIVERY_MODE_SHIFT;
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Delivery status: reads idle; reserved but ignored in x2APIC mode.
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const LEVEL_ASSERT: u64 = 1 << 14;
    pub const TRIGGER_LEVEL: u64 = 1 << 15;
    pub const SHORTHAND_SHIFT: u32 = 18;
    pub const SHORTHAND: u64 = 0b11 << SHORTHAND_SHIFT;
    pub const SHORTHAND_NONE: u64 = 0b00 << SHORTHAND_SHIFT;
    pub const SHORTHAND_SELF: u64 = 0b01 << SHORTHAND_SHIFT;
    pub const SHORTHAND_ALL_INCLUDING_SELF: u64 = 0b10 << SHORTHAND_SHIFT;
    pub const SHORTHAND_ALL_EXCLUDING_SELF: u64 = 0b11 << SHORTHAND_SHIFT;
    /// The low-half bits software sets.
    pub const LOW_WRITABLE: u64 =
        VECTOR | DELIVERY_MODE | DEST_LOGICAL | LEVEL_ASSERT | TRIGGER_LEVEL | SHORTHAND;
    /// x2APIC destination: bits 63:32.
    pub const X2APIC_DEST_SHIFT: u32 = 32;
    pub const X2APIC_DEST: u64 = 0xffff_ffff << X2APIC_DEST_SHIFT;
    /// xAPIC destination: bits 63:56 (ICR high bits 31:24).
    pub const XAPIC_DEST_SHIFT: u32 = 56;
    pub const XAPIC_DEST: u64 = 0xff << XAPIC_DEST_SHIFT;
}

/// Physical destination reaching every APIC in x2APIC mode (SDM 11.12.10).
pub const X2APIC_BROADCAST: u32 = u32::MAX;
/// Physical or logical destination reaching every APIC in xAPIC mode (SDM 11.6.2).
pub const XAPIC_BROADCAST: u32 = 0xff;

/// Vectors 0-15 are illegal for interrupts (SDM 11.5.2).
const FIRST_LEGAL_VECTOR: u8 = 16;
/// A vector's priority class is its high nibble (SDM 11.8.3).
const PRIORITY_CLASS_SHIFT: u32 = 4;
const PRIORITY_CLASS_MASK: u32 = 0xf0;
/// TPR bits 7:0; bits 31:8 are reserved.
const TPR_WRITABLE: u64 = 0xff;
/// xAPIC ID register: the 8-bit ID in bits 31:24.
const XAPIC_ID_SHIFT: u32 = 24;
const XAPIC_ID_MASK: u32 = 0xff;
/// xAPIC LDR: the logical ID in bits 31:24.
const XAPIC_LDR_WRITABLE: u64 = 0xff00_0000;
const XAPIC_LDR_SHIFT: u32 = 24;
/// DFR: the model in bits 31:28, bits 27:0 read as ones (SDM 11.6.2.2).
const DFR_MODEL_SHIFT: u32 = 28;
const DFR_MODEL: u32 = 0xf << DFR_MODEL_SHIFT;
const DFR_ONES: u32 = !DFR_MODEL;
const DFR_FLAT: u32 = 0xf;
const DFR_CLUSTER: u32 = 0x0;
/// xAPIC cluster model: cluster in bits 7:4 of the 8-bit address, members in bits 3:0.
const XAPIC_CLUSTER_SHIFT: u32 = 4;
const XAPIC_CLUSTER_MEMBERS: u32 = 0xf;
/// x2APIC logical ID: cluster (x2APIC ID >> 4) in bits 31:16, one bit (ID & 0xf) of 15:0
/// (SDM 11.12.10.2).
const X2APIC_CLUSTER_SHIFT: u32 = 16;
const X2APIC_CLUSTER_ID_SHIFT: u32 = 4;
const X2APIC_CLUSTER_MEMBERS: u32 = 0xffff;
const X2APIC_MEMBER_MASK: u32 = 0xf;
/// Divide configuration: bits 0, 1 and 3 (SDM figure 11-10).
const DIVIDE_WRITABLE: u64 = 0b1011;
const DIVIDE_LOW_BITS: u32 = 0b0011;
const DIVIDE_HIGH_BIT: u32 = 0b1000;
/// The 3-bit code meaning divide by 1 (the others divide by 2 << code).
const DIVIDE_CODE_BY_1: u32 = 0b111;
/// Timer initial count: 32 bits.
const COUNT_WRITABLE: u64 = u32::MAX as u64;
/// SELF IPI: the vector, bits 7:0.
const SELF_IPI_WRITABLE: u64 = 0xff;

/// 256 vectors as eight 32-bit registers (IRR, ISR).
const VECTOR_WORDS: usize = 8;
const VECTOR_WORD_BITS: u32 = 32;
const VECTOR_WORD_SHIFT: u32 = 5;

/// One bit per vector, laid out as the ISR/IRR registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorSet([u32; VECTOR_WORDS]);

impl VectorSet {
    fn word_and_bit(vector: u8) -> (usize, u32) {
        (
            usize::from(vector >> VECTOR_WORD_SHIFT),
            1 << (u32::from(vector) % VECTOR_WORD_BITS),
        )
    }

    fn set(&mut self, vector: u8) {
        let (w, bit) = Self::word_and_bit(vector);
        if let Some(word) = self.0.get_mut(w) {
            *word |= bit;
        }
    }

    fn clear(&mut self, vector: u8) {
        let (w, bit) = Self::word_and_bit(vector);
        if let Some(word) = self.0.get_mut(w) {
            *word &= !bit;
        }
    }

    fn word(&self, index: usize) -> u32 {
        self.0.get(index).copied().unwrap_or(0)
    }

    fn highest(&self) -> Option<u8> {
        self.0
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)
            .and_then(|(i, w)| {
                u8::try_from(
                    i as u32 * VECTOR_WORD_BITS + (VECTOR_WORD_BITS - 1) - w.leading_zeros(),
                )
                .ok()
            })
    }
}

/// The LVT entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lvt {
    Cmci,
    Timer,
    Thermal,
    Perf,
    Lint0,
    Lint1,
    Error,
}

impl Lvt {
    fn of(reg: ApicReg) -> Option<Lvt> {
        Some(match reg {
            ApicReg::LVT_CMCI => Lvt::Cmci,
            ApicReg::LVT_TIMER => Lvt::Timer,
            ApicReg::LVT_THERMAL => Lvt::Thermal,
            ApicReg::LVT_PERF => Lvt::Perf,
            ApicReg::LVT_LINT0 => Lvt::Lint0,
            ApicReg::LVT_LINT1 => Lvt::Lint1,
            ApicReg::LVT_ERROR => Lvt::Error,
            _ => return None,
        })
    }

    /// Bits software sets (SDM figure 11-8).
    fn writable(self) -> u32 {
        match self {
            Lvt::Cmci | Lvt::Thermal | Lvt::Perf => lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED,
            Lvt::Timer => lvt::VECTOR | lvt::MASKED | lvt::TIMER_MODE,
            Lvt::Lint0 | Lvt::Lint1 => {
                lvt::VECTOR
                    | lvt::DELIVERY_MODE
                    | lvt::PIN_POLARITY
                    | lvt::TRIGGER_LEVEL
                    | lvt::MASKED
            }
            Lvt::Error => lvt::VECTOR | lvt::MASKED,
        }
    }

    /// Read-only status bits: a write may carry them (they are not reserved) but they stay 0.
    fn read_only(self) -> u32 {
        match self {
            Lvt::Lint0 | Lvt::Lint1 => lvt::DELIVERY_STATUS | lvt::REMOTE_IRR,
            _ => lvt::DELIVERY_STATUS,
        }
    }
}

/// The LVT registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lvts {
    cmci: u32,
    timer: u32,
    thermal: u32,
    perf: u32,
    lint0: u32,
    lint1: u32,
    error: u32,
}

impl Lvts {
    /// Reset: everything 0 but the mask bits (SDM 11.4.7.1).
    const RESET: Lvts = Lvts {
        cmci: lvt::MASKED,
        timer: lvt::MASKED,
        thermal: lvt::MASKED,
        perf: lvt::MASKED,
        lint0: lvt::MASKED,
        lint1: lvt::MASKED,
        error: lvt::MASKED,
    };

    fn get(&self, which: Lvt) -> u32 {
        match which {
            Lvt::Cmci => self.cmci,
            Lvt::Timer => self.timer,
            Lvt::Thermal => self.thermal,
            Lvt::Perf => self.perf,
            Lvt::Lint0 => self.lint0,
            Lvt::Lint1 => self.lint1,
            Lvt::Error => self.error,
        }
    }

    fn get_mut(&mut self, which: Lvt) -> &mut u32 {
        match which {
            Lvt::Cmci => &mut self.cmci,
            Lvt::Timer => &mut self.timer,
            Lvt::Thermal => &mut self.thermal,
            Lvt::Perf => &mut self.perf,
            Lvt::Lint0 => &mut self.lint0,
            Lvt::Lint1 => &mut self.lint1,
            Lvt::Error => &mut self.error,
        }
    }

    fn mask_all(&mut self) {
        for entry in [
            &mut self.cmci,
            &mut self.timer,
            &mut self.thermal,
            &mut self.perf,
            &mut self.lint0,
            &mut self.lint1,
            &mut self.error,
        ] {
            *entry |= lvt::MASKED;
        }
    }
}

/// The timer's mode, from LVT timer bits 18:17.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl TimerMode {
    fn of(lvt_timer: u32) -> TimerMode {
        match lvt_timer & lvt::TIMER_MODE {
            lvt::TIMER_PERIODIC => TimerMode::Periodic,
            lvt::TIMER_TSC_DEADLINE => TimerMode::TscDeadline,
            // The reserved 11b is never stored (refused or turned into one-shot).
            _ => TimerMode::OneShot,
        }
    }
}

/// What a register read finds.
enum Read {
    Value(u64),
    /// A write-only register (EOI, SELF IPI): #GP in x2APIC mode, 0 over MMIO.
    WriteOnly,
    /// No such register in this mode: #GP in x2APIC mode, ESR "illegal register" over MMIO.
    Absent,
}

/// Why a register write was refused.
enum Refused {
    /// #GP in x2APIC mode, ignored over MMIO.
    ReadOnly,
    /// #GP in x2APIC mode, ESR "illegal register" over MMIO.
    Absent,
    /// Reserved bits set: #GP in x2APIC mode (SDM 11.12.1.3); over MMIO they are dropped
    /// instead, so this never comes from an MMIO write.
    Reserved,
}

/// `value` restricted to `writable`; in x2APIC mode (`strict`) a bit outside `writable`
/// and `ignored` is a reserved bit and refuses the write (SDM 11.12.1.3).
fn accept(value: u64, strict: bool, writable: u64, ignored: u64) -> Result<u64, Refused> {
    if strict && value & !(writable | ignored) != 0 {
        return Err(Refused::Reserved);
    }
    Ok(value & writable)
}

/// A vector's (or TPR/PPR value's) priority class.
fn class(v: u32) -> u32 {
    (v & PRIORITY_CLASS_MASK) >> PRIORITY_CLASS_SHIFT
}

/// The timer divisor a divide configuration selects (SDM figure 11-10).
fn divisor(config: u32) -> u64 {
    let code = (config & DIVIDE_LOW_BITS) | ((config & DIVIDE_HIGH_BIT) >> 1);
    if code == DIVIDE_CODE_BY_1 {
        1
    } else {
        2 << code
    }
}

/// `now + counts * len` in TSC ticks, saturating at the end of time.
fn tsc_after(now: u64, counts: u64, len: u64) -> u64 {
    let t = u128::from(now) + u128::from(counts) * u128::from(len);
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// One vCPU's local APIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapic {
    id: u32,
    clock: TimerClock,
    mode: ApicMode,
    tpr: u32,
    svr: u32,
    /// LDR as written in xAPIC mode (x2APIC mode derives it from the ID).
    ldr: u32,
    /// DFR bits 31:28.
    dfr: u32,
    isr: VectorSet,
    irr: VectorSet,
    /// ESR as software reads it: the errors latched by the last ESR write.
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    /// ICR, 64 bits (xAPIC: the low register, then the high one in bits 63:32).
    icr: u64,
    lvts: Lvts,
    initial_count: u32,
    divide_config: u32,
    /// One-shot/periodic: the TSC at which the current count reaches 0, while counting.
    count_expiry: Option<u64>,
    /// IA32_TSC_DEADLINE: 0 when disarmed.
    tsc_deadline: u64,
}

impl Lapic {
    /// A local APIC with x2APIC ID `apic_id` in x2APIC mode, every register at its reset
    /// value (SDM 11.4.7.1), its timer fed by `tsc_to_timer`.
    pub fn new(apic_id: u32, tsc_to_timer: TimerClock) -> Self {
        Lapic::at_reset(apic_id, tsc_to_timer, ApicMode::X2Apic)
    }

    fn at_reset(id: u32, clock: TimerClock, mode: ApicMode) -> Self {
        Lapic {
            id,
            clock,
            mode,
            tpr: 0,
            svr: svr::RESET,
            ldr: 0,
            dfr: DFR_MODEL,
            isr: VectorSet::default(),
            irr: VectorSet::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvts: Lvts::RESET,
            initial_count: 0,
            divide_config: 0,
            count_expiry: None,
            tsc_deadline: 0,
        }
    }

    /// An INIT (signal or IPI): every register back to its reset value but the APIC ID;
    /// the mode IA32_APIC_BASE selects is kept (SDM 11.4.7.3, 11.12.5.1).
    pub fn init(&mut self) {
        *self = Lapic::at_reset(self.id, self.clock, self.mode);
    }

    /// The x2APIC ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The mode IA32_APIC_BASE selects.
    pub fn mode(&self) -> ApicMode {
        self.mode
    }

    /// IA32_APIC_BASE as the guest sees it: 0xFEE00000, EN and EXTD per the mode, BSP for
    /// APIC ID 0.
    pub fn apic_base(&self) -> u64 {
        let enable = match self.mode {
            ApicMode::Disabled => 0,
            ApicMode::XApic => apic_base::EN,
            ApicMode::X2Apic => apic_base::EN | apic_base::EXTD,
        };
        let bsp = if self.id == 0 { apic_base::BSP } else { 0 };
        apic_base::DEFAULT_ADDRESS | enable | bsp
    }

    /// A WRMSR to IA32_APIC_BASE. Faults: reserved bits (SDM 11.4.4), a base other than
    /// 0xFEE00000 (relocating the page is not modelled), EN=0 with EXTD=1, x2APIC ->
    /// xAPIC and disabled -> x2APIC (SDM 11.12.5.1). The BSP bit is the hardware's: a write
    /// cannot change it. Disabling resets every register but the ID (SDM 11.4.3: "may
    /// return to the state after reset"; 11.12.5.1: x2APIC state is not preserved);
    /// xAPIC -> x2APIC keeps the registers, the ID and LDR becoming the x2APIC ones.
    pub fn write_apic_base(&mut self, value: u64) -> Result<(), ApicFault> {
        if value & !apic_base::WRITABLE != 0
            || value & apic_base::ADDRESS_MASK != apic_base::DEFAULT_ADDRESS
        {
            return Err(ApicFault);
        }
        let new = match (value & apic_base::EN != 0, value & apic_base::EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            // SDM 11.12.5.1: the invalid state; trying to enter it is #GP.
            (false, true) => return Err(ApicFault),
        };
        match (self.mode, new) {
            (old, new) if old == new => {}
            // SDM 11.12.5.1: x2APIC mode is left only through the disabled state, which
            // leads only to xAPIC mode.
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(ApicFault);
            }
            (_, ApicMode::Disabled) => *self = Lapic::at_reset(self.id, self.clock, new),
            _ => self.mode = new,
        }
        Ok(())
    }

    /// A trapped RDMSR of an x2APIC register (0x800-0x8ff); IA32_APIC_BASE and
    /// IA32_TSC_DEADLINE are answered too. #GP outside x2APIC mode (SDM 11.12.2), for the
    /// write-only EOI and SELF IPI and for reserved addresses (SDM table 11-6). Timers due
    /// by `now_tsc` fire first.
    pub fn read_msr(&mut self, msr: u32, now_tsc: u64) -> Result<u64, ApicFault> {
        if msr == Msr::IA32_APIC_BASE.0 {
            return Ok(self.apic_base());
        }
        self.tick(now_tsc);
        if msr == Msr::IA32_TSC_DEADLINE.0 {
            return Ok(self.tsc_deadline());
        }
        let reg = ApicReg::from_msr(msr).ok_or(ApicFault)?;
        if self.mode != ApicMode::X2Apic {
            return Err(ApicFault);
        }
        match self.read_reg(reg, now_tsc, true) {
            Read::Value(v) => Ok(v),
            Read::WriteOnly | Read::Absent => Err(ApicFault),
        }
    }

    /// A trapped WRMSR of an x2APIC register (0x800-0x8ff); IA32_APIC_BASE and
    /// IA32_TSC_DEADLINE are taken too. #GP outside x2APIC mode, for read-only and reserved
    /// registers, for reserved bits (bits 63:32 of every register but the ICR; SDM
    /// 11.12.1.3) and for a non-zero EOI or ESR write (SDM table 11-6). Timers due by
    /// `now_tsc` fire first.
    pub fn write_msr(
        &mut self,
        msr: u32,
        value: u64,
        now_tsc: u64,
    ) -> Result<ApicAction, ApicFault> {
        if msr == Msr::IA32_APIC_BASE.0 {
            return self.write_apic_base(value).map(|()| ApicAction::None);
        }
        if msr == Msr::IA32_TSC_DEADLINE.0 {
            self.write_tsc_deadline(value, now_tsc);
            return Ok(ApicAction::None);
        }
        let reg = ApicReg::from_msr(msr).ok_or(ApicFault)?;
        if self.mode != ApicMode::X2Apic {
            return Err(ApicFault);
        }
        self.tick(now_tsc);
        self.write_reg(reg, value, now_tsc, true)
            .map_err(|_| ApicFault)
    }

    /// A 32-bit read at `offset` in the xAPIC page. Only in xAPIC mode: otherwise it reads 0
    /// (SDM 11.12.2: in x2APIC mode the page behaves as a globally disabled APIC's). Bytes 4-15
    /// of a register's slot read 0; a reserved register reads 0 and sets ESR "illegal
    /// register address" (SDM 11.5.3); EOI reads 0.
    pub fn read_mmio(&mut self, offset: u32, now_tsc: u64) -> u32 {
        let Some(reg) = self.mmio_reg(offset) else {
            return 0;
        };
        self.tick(now_tsc);
        match self.read_reg(reg, now_tsc, false) {
            Read::Value(v) => (v & LOW32) as u32,
            Read::WriteOnly => 0,
            Read::Absent => {
                self.signal_error(esr::ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// A 32-bit write at `offset` in the xAPIC page (only in xAPIC mode; dropped
    /// otherwise). Reserved bits are dropped, read-only registers ignore it, a reserved
    /// register sets ESR "illegal register address". A write to ICR low (0x300) sends the
    /// IPI, to the destination in ICR high (0x310) bits 31:24.
    pub fn write_mmio(&mut self, offset: u32, value: u32, now_tsc: u64) -> ApicAction {
        let Some(reg) = self.mmio_reg(offset) else {
            return ApicAction::None;
        };
        self.tick(now_tsc);
        match self.write_reg(reg, u64::from(value), now_tsc, false) {
            Ok(action) => action,
            Err(Refused::Absent) => {
                self.signal_error(esr::ILLEGAL_REGISTER);
                ApicAction::None
            }
            Err(Refused::ReadOnly | Refused::Reserved) => ApicAction::None,
        }
    }

    /// IA32_TSC_DEADLINE as of the last [`Self::tick`] or access: the armed deadline, 0 when
    /// disarmed, fired, or the timer is not in TSC-deadline mode (SDM 11.5.4.1).
    pub fn tsc_deadline(&self) -> u64 {
        self.tsc_deadline
    }

    /// A WRMSR to IA32_TSC_DEADLINE: arms the timer at `value` in TSC-deadline mode, 0
    /// disarms; ignored in the other modes (SDM 11.5.4.1). A deadline at or before `now_tsc`
    /// fires at once (the SDM's "immediately"), i.e. before the next [`Self::tick`] returns.
    pub fn write_tsc_deadline(&mut self, value: u64, now_tsc: u64) {
        self.tick(now_tsc);
        if self.mode == ApicMode::Disabled || self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        self.tsc_deadline = value;
        self.tick(now_tsc);
    }

    /// Fires the timer if its time has come: one-shot (then stopped), periodic (re-armed a
    /// whole number of periods after the previous expiry, so it never drifts; periods
    /// missed since are one interrupt, as IRR holds one per vector) or TSC deadline (then
    /// disarmed, IA32_TSC_DEADLINE reading 0). The LVT timer vector goes in IRR unless the
    /// entry is masked. Call before every VM entry and when a halted vCPU's deadline
    /// passes; register accesses call it too.
    pub fn tick(&mut self, now_tsc: u64) {
        if self.mode == ApicMode::Disabled {
            return;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => {
                if self.tsc_deadline != 0 && now_tsc >= self.tsc_deadline {
                    self.tsc_deadline = 0;
                    self.fire_timer();
                }
            }
            mode @ (TimerMode::OneShot | TimerMode::Periodic) => {
                let Some(expiry) = self.count_expiry else {
                    return;
                };
                if now_tsc < expiry {
                    return;
                }
                self.fire_timer();
                self.count_expiry = if mode == TimerMode::Periodic {
                    let period = u128::from(self.initial_count) * u128::from(self.count_len());
                    (period != 0).then(|| {
                        let periods = u128::from(now_tsc - expiry) / period + 1;
                        u64::try_from(u128::from(expiry) + periods * period).unwrap_or(u64::MAX)
                    })
                } else {
                    None
                };
            }
        }
    }

    /// The TSC at which the timer fires next, if it is armed and its LVT entry unmasked
    /// (a masked expiry has no effect the guest can see before its next APIC access, which
    /// catches up). The run loop arms the VMX-preemption timer for it and wakes a halted
    /// vCPU then.
    pub fn next_timer_tsc(&self) -> Option<u64> {
        if self.mode == ApicMode::Disabled || self.lvts.timer & lvt::MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.tsc_deadline != 0).then_some(self.tsc_deadline),
            TimerMode::OneShot | TimerMode::Periodic => self.count_expiry,
        }
    }

    /// An interrupt for this vCPU from a device, another vCPU or a local source: sets its
    /// IRR bit. Vectors 0-15 set ESR "received illegal vector" instead (SDM 11.5.2). Dropped
    /// while the APIC is disabled, globally or by software (SDM 11.4.7.2: IRR keeps what it
    /// holds but accepts nothing new).
    pub fn request(&mut self, vector: u8) {
        if !self.enabled() {
            return;
        }
        if vector < FIRST_LEGAL_VECTOR {
            self.signal_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        self.irr.set(vector);
    }

    /// The vector the CPU would take now: the highest IRR vector, if its priority class is
    /// above PPR's (SDM 11.8.3.1); none while the APIC is disabled.
    pub fn deliverable(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let vector = self.irr.highest()?;
        (class(u32::from(vector)) > class(self.ppr())).then_some(vector)
    }

    /// The CPU takes [`Self::deliverable`]'s vector (the caller injected it): its IRR bit
    /// moves to ISR, which raises PPR (SDM 11.8.4). Returns the vector.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.deliverable()?;
        self.irr.clear(vector);
        self.isr.set(vector);
        Some(vector)
    }

    /// Whether an interrupt is pending that would wake a HLT.
    pub fn wants_wakeup(&self) -> bool {
        self.deliverable().is_some()
    }

    /// Whether an IPI with destination `dest` in `dest_mode` (no shorthand) reaches this
    /// APIC, read in its own mode (every APIC of a VM is in the same one): the physical ID
    /// or broadcast; a logical x2APIC cluster and member bit (SDM 11.12.10.1); the xAPIC
    /// flat or cluster model of the DFR (SDM 11.6.2.2). A globally disabled APIC takes
    /// nothing.
    pub fn is_destination(&self, dest: u32, dest_mode: DestMode) -> bool {
        match (self.mode, dest_mode) {
            (ApicMode::Disabled, _) => false,
            (ApicMode::X2Apic, DestMode::Physical) => dest == X2APIC_BROADCAST || dest == self.id,
            (ApicMode::X2Apic, DestMode::Logical) => {
                let ldr = self.x2apic_ldr();
                dest == X2APIC_BROADCAST
                    || (dest >> X2APIC_CLUSTER_SHIFT == ldr >> X2APIC_CLUSTER_SHIFT
                        && dest & ldr & X2APIC_CLUSTER_MEMBERS != 0)
            }
            (ApicMode::XApic, DestMode::Physical) => {
                let d = dest & XAPIC_BROADCAST;
                d == XAPIC_BROADCAST || d == self.id & XAPIC_ID_MASK
            }
            (ApicMode::XApic, DestMode::Logical) => {
                let d = dest & XAPIC_BROADCAST;
                let logical = self.ldr >> XAPIC_LDR_SHIFT;
                d == XAPIC_BROADCAST
                    || match self.dfr >> DFR_MODEL_SHIFT {
                        DFR_FLAT => logical & d != 0,
                        DFR_CLUSTER => {
                            logical >> XAPIC_CLUSTER_SHIFT == d >> XAPIC_CLUSTER_SHIFT
                                && logical & d & XAPIC_CLUSTER_MEMBERS != 0
                        }
                        _ => false,
                    }
            }
        }
    }

    /// Enabled globally (IA32_APIC_BASE) and by software (SVR).
    fn enabled(&self) -> bool {
        self.mode != ApicMode::Disabled && self.svr & svr::ENABLE != 0
    }

    /// PPR (SDM 11.8.3.1): TPR if its class is at least the highest in-service vector's,
    /// else that vector's class.
    fn ppr(&self) -> u32 {
        let isrv = self.isr.highest().map_or(0, u32::from);
        if class(self.tpr) >= class(isrv) {
            self.tpr
        } else {
            isrv & PRIORITY_CLASS_MASK
        }
    }

    /// The x2APIC logical ID (SDM 11.12.10.2).
    fn x2apic_ldr(&self) -> u32 {
        ((self.id >> X2APIC_CLUSTER_ID_SHIFT) << X2APIC_CLUSTER_SHIFT)
            | (1 << (self.id & X2APIC_MEMBER_MASK))
    }

    fn timer_mode(&self) -> TimerMode {
        TimerMode::of(self.lvts.timer)
    }

    /// TSC ticks per count of the timer at the current divider.
    fn count_len(&self) -> u64 {
        self.clock
            .tsc_per_tick()
            .saturating_mul(divisor(self.divide_config))
    }

    /// The current count (SDM 11.5.4): counts down from the initial count one per
    /// [`Self::count_len`] TSC ticks; 0 when stopped and in TSC-deadline mode.
    fn current_count(&self, now: u64) -> u32 {
        if self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let Some(expiry) = self.count_expiry else {
            return 0;
        };
        let remaining = u128::from(expiry.saturating_sub(now));
        let len = u128::from(self.count_len());
        let count = remaining.div_ceil(len).min(u128::from(self.initial_count));
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    fn fire_timer(&mut self) {
        let entry = self.lvts.timer;
        if entry & lvt::MASKED == 0 {
            self.request((entry & lvt::VECTOR) as u8);
        }
    }

    /// Records an error in ESR (seen at the next ESR write) and raises the LVT error
    /// interrupt when unmasked (SDM 11.5.3).
    fn signal_error(&mut self, bit: u32) {
        self.esr_pending |= bit;
        let entry = self.lvts.error;
        if entry & lvt::MASKED == 0 && self.enabled() {
            let vector = (entry & lvt::VECTOR) as u8;
            if vector < FIRST_LEGAL_VECTOR {
                self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
            } else {
                self.irr.set(vector);
            }
        }
    }

    /// EOI: the highest in-service vector is done (SDM 11.8.5).
    fn eoi(&mut self) {
        if let Some(vector) = self.isr.highest() {
            self.isr.clear(vector);
        }
    }

    /// The register behind an xAPIC-page offset, or None when the access goes nowhere (not
    /// in xAPIC mode, outside the page, or past a register's first 4 bytes).
    fn mmio_reg(&self, offset: u32) -> Option<ApicReg> {
        (self.mode == ApicMode::XApic && offset < MMIO_PAGE_SIZE && offset & MMIO_SLOT_MASK == 0)
            .then_some(ApicReg(offset >> MMIO_REG_SHIFT))
    }

    fn read_reg(&self, reg: ApicReg, now: u64, x2: bool) -> Read {
        let value = match reg {
            ApicReg::ID if x2 => self.id,
            ApicReg::ID => (self.id & XAPIC_ID_MASK) << XAPIC_ID_SHIFT,
            ApicReg::VERSION => version::VALUE,
            ApicReg::TPR => self.tpr,
            ApicReg::APR | ApicReg::RRD if !x2 => 0,
            ApicReg::PPR => self.ppr(),
            ApicReg::EOI => return Read::WriteOnly,
            ApicReg::LDR if x2 => self.x2apic_ldr(),
            ApicReg::LDR => self.ldr,
            ApicReg::DFR if !x2 => self.dfr | DFR_ONES,
            ApicReg::SVR => self.svr,
            ApicReg::ESR => self.esr,
            ApicReg::ICR if x2 => return Read::Value(self.icr),
            ApicReg::ICR => (self.icr & LOW32) as u32,
            ApicReg::ICR_HIGH if !x2 => (self.icr >> 32) as u32,
            ApicReg::TIMER_INITIAL => self.initial_count,
            ApicReg::TIMER_CURRENT => self.current_count(now),
            ApicReg::TIMER_DIVIDE => self.divide_config,
            ApicReg::SELF_IPI if x2 => return Read::WriteOnly,
            other => {
                if let Some(i) = other.bank_word(ApicReg::ISR0) {
                    self.isr.word(i)
                } else if other.bank_word(ApicReg::TMR0).is_some() {
                    // Only edge-triggered interrupts are accepted: TMR stays clear.
                    0
                } else if let Some(i) = other.bank_word(ApicReg::IRR0) {
                    self.irr.word(i)
                } else if let Some(entry) = Lvt::of(other) {
                    self.lvts.get(entry)
                } else {
                    return Read::Absent;
                }
            }
        };
        Read::Value(u64::from(value))
    }

    fn write_reg(
        &mut self,
        reg: ApicReg,
        value: u64,
        now: u64,
        x2: bool,
    ) -> Result<ApicAction, Refused> {
        match reg {
            ApicReg::TPR => self.tpr = accept(value, x2, TPR_WRITABLE, 0)? as u32,
            ApicReg::EOI => {
                // x2APIC: a non-zero value is #GP (SDM table 11-6); xAPIC: any value.
                accept(value, x2, 0, 0)?;
                self.eoi();
            }
            ApicReg::LDR if !x2 => self.ldr = (value & XAPIC_LDR_WRITABLE) as u32,
            ApicReg::DFR if !x2 => self.dfr = (value as u32) & DFR_MODEL,
            ApicReg::SVR => {
                self.svr = accept(value, x2, u64::from(svr::WRITABLE), 0)? as u32;
                if self.svr & svr::ENABLE == 0 {
                    // SDM 11.4.7.2: software disable masks every LVT entry.
                    self.lvts.mask_all();
                }
            }
            ApicReg::ESR => {
                // SDM 11.5.3: a write latches the errors seen since the previous one;
                // x2APIC: only 0 may be written (table 11-6).
                accept(value, x2, 0, 0)?;
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            ApicReg::ICR if x2 => {
                // SDM 11.12.9: 64 bits, the destination in 63:32, delivery status gone
                // (ignored, as Intel parts do, rather than refused).
                self.icr = accept(
                    value,
                    true,
                    icr::LOW_WRITABLE | icr::X2APIC_DEST,
                    icr::DELIVERY_STATUS,
                )?;
                return Ok(self.send_ipi());
            }
            ApicReg::ICR => {
                self.icr = (self.icr & !LOW32) | (value & icr::LOW_WRITABLE);
                return Ok(self.send_ipi());
            }
            ApicReg::ICR_HIGH if !x2 => {
                self.icr = (self.icr & LOW32) | ((value << 32) & icr::XAPIC_DEST);
            }
            ApicReg::TIMER_INITIAL => {
                let count = accept(value, x2, COUNT_WRITABLE, 0)? as u32;
                self.write_initial_count(count, now);
            }
            ApicReg::TIMER_DIVIDE => {
                let config = accept(value, x2, DIVIDE_WRITABLE, 0)? as u32;
                self.write_divide(config, now);
            }
            ApicReg::SELF_IPI if x2 => {
                let vector = accept(value, true, SELF_IPI_WRITABLE, 0)? as u8;
                self.send_fixed_to_self(vector);
            }
            ApicReg::ID
            | ApicReg::VERSION
            | ApicReg::PPR
            | ApicReg::LDR
            | ApicReg::TIMER_CURRENT => return Err(Refused::ReadOnly),
            ApicReg::APR | ApicReg::RRD if !x2 => return Err(Refused::ReadOnly),
            other => {
                if [ApicReg::ISR0, ApicReg::TMR0, ApicReg::IRR0]
                    .into_iter()
                    .any(|bank| other.bank_word(bank).is_some())
                {
                    return Err(Refused::ReadOnly);
                }
                let entry = Lvt::of(other).ok_or(Refused::Absent)?;
                self.write_lvt(entry, value, x2)?;
            }
        }
        Ok(ApicAction::None)
    }

    fn write_lvt(&mut self, entry: Lvt, value: u64, x2: bool) -> Result<(), Refused> {
        let mut v = accept(
            value,
            x2,
            u64::from(entry.writable()),
            u64::from(entry.read_only()),
        )? as u32;
        if entry == Lvt::Timer && v & lvt::TIMER_MODE == lvt::TIMER_RESERVED {
            // SDM 11.5.4: mode 11b is reserved: #GP in x2APIC mode, one-shot over MMIO.
            if x2 {
                return Err(Refused::Reserved);
            }
            v &= !lvt::TIMER_MODE;
        }
        if self.svr & svr::ENABLE == 0 {
            // SDM 11.4.7.2: while software-disabled the mask bits cannot be cleared.
            v |= lvt::MASKED;
        }
        if entry == Lvt::Timer {
            let was_deadline = self.timer_mode() == TimerMode::TscDeadline;
            let is_deadline = TimerMode::of(v) == TimerMode::TscDeadline;
            if was_deadline != is_deadline {
                // SDM 11.5.4.1: switching to or from TSC-deadline mode disarms the timer.
                self.count_expiry = None;
                self.initial_count = 0;
                self.tsc_deadline = 0;
            }
        }
        *self.lvts.get_mut(entry) = v;
        Ok(())
    }

    /// SDM 11.5.4: a write starts the count (0 stops it); ignored in TSC-deadline mode
    /// (11.5.4.1).
    fn write_initial_count(&mut self, count: u32, now: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = count;
        self.count_expiry =
            (count != 0).then(|| tsc_after(now, u64::from(count), self.count_len()));
    }

    /// A new divider applies from now: the current count goes on at the new rate.
    fn write_divide(&mut self, config: u32, now: u64) {
        let remaining = self.current_count(now);
        self.divide_config = config;
        if self.count_expiry.is_some() {
            self.count_expiry = Some(tsc_after(now, u64::from(remaining), self.count_len()));
        }
    }

    /// A fixed interrupt to self (SELF IPI, ICR): vectors 0-15 are not sent, ESR "send
    /// illegal vector" instead (SDM 11.5.3).
    fn send_fixed_to_self(&mut self, vector: u8) {
        if vector < FIRST_LEGAL_VECTOR {
            self.signal_error(esr::SEND_ILLEGAL_VECTOR);
        } else {
            self.request(vector);
        }
    }

    /// Sends the IPI the ICR describes (SDM 11.6.1).
    fn send_ipi(&mut self) -> ApicAction {
        let value = self.icr;
        let x2 = self.mode == ApicMode::X2Apic;
        let vector = (value & icr::VECTOR) as u8;
        let mode = match value & icr::DELIVERY_MODE {
            icr::FIXED => DeliveryMode::Fixed,
            icr::SMI => DeliveryMode::Smi,
            icr::NMI => DeliveryMode::Nmi,
            icr::INIT => DeliveryMode::Init,
            icr::STARTUP => DeliveryMode::StartUp,
            icr::LOWEST_PRIORITY => {
                // SDM 11.5.3: an APIC that does not send lowest-priority IPIs logs it.
                self.signal_error(esr::REDIRECTABLE_IPI);
                return ApicAction::None;
            }
            // Reserved delivery modes send nothing.
            _ => return ApicAction::None,
        };
        if mode == DeliveryMode::Fixed && vector < FIRST_LEGAL_VECTOR {
            // SDM 11.5.3: "send illegal vector", and the IPI does not go out.
            self.signal_error(esr::SEND_ILLEGAL_VECTOR);
            return ApicAction::None;
        }
        let dest_mode = if value & icr::DEST_LOGICAL != 0 {
            DestMode::Logical
        } else {
            DestMode::Physical
        };
        let shorthand = match value & icr::SHORTHAND {
            icr::SHORTHAND_NONE => Shorthand::None,
            icr::SHORTHAND_SELF => Shorthand::SelfOnly,
            icr::SHORTHAND_ALL_INCLUDING_SELF => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        let dest = if x2 {
            (value >> icr::X2APIC_DEST_SHIFT) as u32
        } else {
            ((value & icr::XAPIC_DEST) >> icr::XAPIC_DEST_SHIFT) as u32
        };
        let own_physical = if x2 {
            dest == self.id && dest != X2APIC_BROADCAST
        } else {
            dest == self.id & XAPIC_ID_MASK && dest != XAPIC_BROADCAST
        };
        let to_self = match shorthand {
            Shorthand::SelfOnly => true,
            Shorthand::None => dest_mode == DestMode::Physical && own_physical,
            Shorthand::AllIncludingSelf | Shorthand::AllExcludingSelf => false,
        };
        match (to_self, mode) {
            (true, DeliveryMode::Fixed) => {
                self.request(vector);
                ApicAction::None
            }
            (true, DeliveryMode::Nmi) => ApicAction::SelfNmi,
            // SDM table 11-3: the self shorthand is valid with fixed delivery only (NMI is
            // let through above as a courtesy).
            (true, _) if shorthand == Shorthand::SelfOnly => ApicAction::None,
            _ => ApicAction::Ipi {
                dest,
                dest_mode,
                shorthand,
                mode,
                vector,
                level: value & icr::LEVEL_ASSERT != 0,
                trigger: if value & icr::TRIGGER_LEVEL != 0 {
                    TriggerMode::Level
                } else {
                    TriggerMode::Edge
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENABLED: u64 = (svr::ENABLE | svr::RESET) as u64;

    fn msr(reg: ApicReg) -> u32 {
        reg.msr()
    }

    /// An x2APIC-mode APIC with the TSC as timer clock, software-enabled.
    fn x2apic(id: u32) -> Lapic {
        let mut a = Lapic::new(id, TimerClock::TSC);
        a.write_msr(msr(ApicReg::SVR), ENABLED, 0).unwrap();
        a
    }

    /// An xAPIC-mode APIC reached the way Linux gets there (x2APIC -> disabled -> xAPIC).
    fn xapic(id: u32) -> Lapic {
        let mut a = Lapic::new(id, TimerClock::TSC);
        a.write_apic_base(apic_base::DEFAULT_ADDRESS).unwrap();
        a.write_apic_base(apic_base::DEFAULT_ADDRESS | apic_base::EN)
            .unwrap();
        assert_eq!(a.mode(), ApicMode::XApic);
        a
    }

    fn rd(a: &mut Lapic, reg: ApicReg) -> u64 {
        a.read_msr(msr(reg), 0).unwrap()
    }

    fn wr(a: &mut Lapic, reg: ApicReg, value: u64) -> ApicAction {
        a.write_msr(msr(reg), value, 0).unwrap()
    }

    fn irr_has(a: &mut Lapic, vector: u8) -> bool {
        let word = rd(a, ApicReg(ApicReg::IRR0.0 + u32::from(vector >> 5)));
        word & (1 << (vector & 31)) != 0
    }

    /// The errors ESR reports after a write latches them.
    fn esr(a: &mut Lapic) -> u64 {
        wr(a, ApicReg::ESR, 0);
        rd(a, ApicReg::ESR)
    }

    #[test]
    fn reset_state_is_the_power_up_state_in_x2apic_mode() {
        let mut a = Lapic::new(0x23, TimerClock::TSC);
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.apic_base(), 0xfee0_0c00, "EN | EXTD, not the BSP");
        assert_eq!(Lapic::new(0, TimerClock::TSC).apic_base(), 0xfee0_0d00);
        assert_eq!(rd(&mut a, ApicReg::ID), 0x23);
        assert_eq!(rd(&mut a, ApicReg::VERSION), 0x0005_0014);
        assert_eq!(rd(&mut a, ApicReg::LDR), 0x0002_0008, "cluster 2, member 3");
        assert_eq!(rd(&mut a, ApicReg::SVR), 0xff);
        for reg in [
            ApicReg::TPR,
            ApicReg::PPR,
            ApicReg::ESR,
            ApicReg::ICR,
            ApicReg::TIMER_INITIAL,
            ApicReg::TIMER_CURRENT,
            ApicReg::TIMER_DIVIDE,
        ] {
            assert_eq!(rd(&mut a, reg), 0, "{reg:?}");
        }
        for i in 0..8 {
            for bank in [ApicReg::ISR0, ApicReg::TMR0, ApicReg::IRR0] {
                assert_eq!(rd(&mut a, ApicReg(bank.0 + i)), 0);
            }
        }
        for reg in [
            ApicReg::LVT_CMCI,
            ApicReg::LVT_TIMER,
            ApicReg::LVT_THERMAL,
            ApicReg::LVT_PERF,
            ApicReg::LVT_LINT0,
            ApicReg::LVT_LINT1,
            ApicReg::LVT_ERROR,
        ] {
            assert_eq!(rd(&mut a, reg), 0x1_0000, "{reg:?} masked");
        }
        assert_eq!(a.tsc_deadline(), 0);
        assert_eq!((a.deliverable(), a.next_timer_tsc()), (None, None));
        a.request(0x80);
        assert_eq!(a.deliverable(), None, "software-disabled at reset");

        // INIT: registers back to reset, the ID and the mode kept.
        let mut b = x2apic(5);
        wr(&mut b, ApicReg::TPR, 0x20);
        b.request(0x40);
        b.init();
        assert_eq!(b, Lapic::new(5, TimerClock::TSC));
    }

    #[test]
    fn tpr_masks_lower_priority_classes() {
        let mut a = x2apic(0);
        a.request(0x31);
        wr(&mut a, ApicReg::TPR, 0x40);
        assert_eq!(rd(&mut a, ApicReg::PPR), 0x40);
        assert_eq!(a.deliverable(), None);
        assert!(!a.wants_wakeup());
        wr(&mut a, ApicReg::TPR, 0x3f);
        assert_eq!(a.deliverable(), None, "same class as the TPR: blocked");
        wr(&mut a, ApicReg::TPR, 0x20);
        assert_eq!(a.deliverable(), Some(0x31));
        assert!(a.wants_wakeup());
        assert_eq!(rd(&mut a, ApicReg::TPR), 0x20);
        // A higher request wins over the lower one.
        a.request(0xa1);
        assert_eq!(a.deliverable(), Some(0xa1));
        assert!(irr_has(&mut a, 0x31) && irr_has(&mut a, 0xa1));
    }

    #[test]
    fn irr_isr_eoi_nest_by_priority_class() {
        let mut a = x2apic(0);
        a.request(0x40);
        assert_eq!(a.acknowledge(), Some(0x40));
        assert_eq!(rd(&mut a, ApicReg(ApicReg::ISR0.0 + 2)), 1, "ISR bit 64");
        assert!(!irr_has(&mut a, 0x40));
        assert_eq!(rd(&mut a, ApicReg::PPR), 0x40);
        // Same class as the one in service: waits.
        a.request(0x45);
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.acknowledge(), None);
        // A higher class preempts.
        a.request(0x61);
        assert_eq!(a.acknowledge(), Some(0x61));
        assert_eq!(rd(&mut a, ApicReg::PPR), 0x60);
        assert_eq!(a.deliverable(), None);
        // EOI retires the highest in service only.
        wr(&mut a, ApicReg::EOI, 0);
        assert_eq!(rd(&mut a, ApicReg(ApicReg::ISR0.0 + 3)), 0);
        assert_eq!(rd(&mut a, ApicReg(ApicReg::ISR0.0 + 2)), 1);
        assert_eq!(rd(&mut a, ApicReg::PPR), 0x40);
        assert_eq!(a.deliverable(), None, "0x45 still below 0x40 in service");
        wr(&mut a, ApicReg::EOI, 0);
        assert_eq!(rd(&mut a, ApicReg::PPR), 0);
        assert_eq!(a.acknowledge(), Some(0x45));
        wr(&mut a, ApicReg::EOI, 0);
        // TPR above the in-service class sets PPR.
        a.request(0x50);
        a.acknowledge();
        wr(&mut a, ApicReg::TPR, 0x72);
        assert_eq!(rd(&mut a, ApicReg::PPR), 0x72);
        wr(&mut a, ApicReg::EOI, 0);
        wr(&mut a, ApicReg::EOI, 0);
        assert_eq!(rd(&mut a, ApicReg::ISR0), 0, "EOI with nothing in service");
    }

    #[test]
    fn software_disable_blocks_delivery_and_masks_the_lvt() {
        let mut a = x2apic(0);
        wr(&mut a, ApicReg::LVT_TIMER, 0x40);
        wr(&mut a, ApicReg::LVT_LINT0, 0x700);
        a.request(0x50);
        assert_eq!(a.deliverable(), Some(0x50));
        wr(&mut a, ApicReg::SVR, 0xff);
        assert_eq!(a.deliverable(), None);
        assert!(!a.wants_wakeup());
        assert_eq!(a.acknowledge(), None);
        assert_eq!(rd(&mut a, ApicReg::LVT_TIMER), 0x1_0040);
        assert_eq!(rd(&mut a, ApicReg::LVT_LINT0), 0x1_0700);
        wr(&mut a, ApicReg::LVT_ERROR, 0xfe);
        assert_eq!(
            rd(&mut a, ApicReg::LVT_ERROR),
            0x1_00fe,
            "mask cannot clear"
        );
        a.request(0x60);
        assert!(!irr_has(&mut a, 0x60), "dropped while disabled");
        assert!(irr_has(&mut a, 0x50), "held while disabled");
        wr(&mut a, ApicReg::SVR, ENABLED);
        assert_eq!(a.deliverable(), Some(0x50));
        assert_eq!(
            rd(&mut a, ApicReg::LVT_TIMER),
            0x1_0040,
            "re-enable keeps masks"
        );
    }

    #[test]
    fn self_ipis_land_in_irr() {
        let mut a = x2apic(5);
        assert_eq!(wr(&mut a, ApicReg::SELF_IPI, 0x55), ApicAction::None);
        assert!(irr_has(&mut a, 0x55));
        assert_eq!(
            wr(&mut a, ApicReg::ICR, icr::SHORTHAND_SELF | 0x56),
            ApicAction::None
        );
        assert!(irr_has(&mut a, 0x56));
        assert_eq!(wr(&mut a, ApicReg::ICR, (5 << 32) | 0x57), ApicAction::None);
        assert!(irr_has(&mut a, 0x57));
        assert_eq!(
            rd(&mut a, ApicReg::ICR),
            (5 << 32) | 0x57,
            "idle, as written"
        );
        assert_eq!(a.deliverable(), Some(0x57));
        // Illegal vectors are not sent.
        wr(&mut a, ApicReg::SELF_IPI, 0x05);
        assert_eq!(rd(&mut a, ApicReg::IRR0), 0);
        assert_eq!(esr(&mut a), u64::from(esr::SEND_ILLEGAL_VECTOR));
        wr(&mut a, ApicReg::ICR, icr::SHORTHAND_SELF | 0x0e);
        assert_eq!(esr(&mut a), u64::from(esr::SEND_ILLEGAL_VECTOR));
        assert_eq!(rd(&mut a, ApicReg::IRR0), 0);
        assert_eq!(esr(&mut a), 0, "latched errors clear at the next write");
        // A device sending an illegal vector.
        a.request(3);
        assert_eq!(esr(&mut a), u64::from(esr::RECEIVE_ILLEGAL_VECTOR));
        // SELF IPI with reserved bits.
        assert_eq!(
            a.write_msr(msr(ApicReg::SELF_IPI), 0x155, 0),
            Err(ApicFault)
        );
    }

    #[test]
    fn ipis_to_other_vcpus_come_back_decoded() {
        let mut a = x2apic(1);
        // INIT assert, level-triggered, physical destination 7.
        let init = (7 << 32) | icr::INIT | icr::LEVEL_ASSERT | icr::TRIGGER_LEVEL;
        assert_eq!(
            wr(&mut a, ApicReg::ICR, init),
            ApicAction::Ipi {
                dest: 7,
                dest_mode: DestMode::Physical,
                shorthand: Shorthand::None,
                mode: DeliveryMode::Init,
                vector: 0,
                level: true,
                trigger: TriggerMode::Level,
            }
        );
        assert_eq!(
            wr(&mut a, ApicReg::ICR, (7 << 32) | icr::STARTUP | 0x9a),
            ApicAction::Ipi {
                dest: 7,
                dest_mode: DestMode::Physical,
                shorthand: Shorthand::None,
                mode: DeliveryMode::StartUp,
                vector: 0x9a,
                level: false,
                trigger: TriggerMode::Edge,
            }
        );
        assert_eq!(
            wr(
                &mut a,
                ApicReg::ICR,
                icr::SHORTHAND_ALL_EXCLUDING_SELF | 0xfd
            ),
            ApicAction::Ipi {
                dest: 0,
                dest_mode: DestMode::Physical,
                shorthand: Shorthand::AllExcludingSelf,
                mode: DeliveryMode::Fixed,
                vector: 0xfd,
                level: false,
                trigger: TriggerMode::Edge,
            }
        );
        let to_cluster = (0x0001_0004u64 << 32) | icr::DEST_LOGICAL | icr::LEVEL_ASSERT | 0xfb;
        let action = wr(&mut a, ApicReg::ICR, to_cluster);
        let ApicAction::Ipi {
            dest,
            dest_mode,
            mode,
            ..
        } = action
        else {
            panic!("{action:?}");
        };
        assert_eq!(
            (dest, dest_mode, mode),
            (0x0001_0004, DestMode::Logical, DeliveryMode::Fixed)
        );
        assert_eq!(rd(&mut a, ApicReg::IRR0), 0, "nothing for self");
        // The router asks each vCPU's APIC: x2APIC ID 0x12 is cluster 1, member bit 2.
        let b = x2apic(0x12);
        assert!(b.is_destination(dest, dest_mode));
        assert!(!x2apic(0x13).is_destination(dest, dest_mode));
        assert!(!x2apic(0x02).is_destination(dest, dest_mode));
        assert!(b.is_destination(0x12, DestMode::Physical));
        assert!(b.is_destination(X2APIC_BROADCAST, DestMode::Physical));
        assert!(!b.is_destination(0x13, DestMode::Physical));
        // Lowest priority is not sent; the ICR's reserved bits fault.
        assert_eq!(
            wr(
                &mut a,
                ApicReg::ICR,
                (7 << 32) | icr::LOWEST_PRIORITY | 0x40
            ),
            ApicAction::None
        );
        assert_eq!(esr(&mut a), u64::from(esr::REDIRECTABLE_IPI));
        assert_eq!(a.write_msr(msr(ApicReg::ICR), 1 << 13, 0), Err(ApicFault));
        assert_eq!(a.write_msr(msr(ApicReg::ICR), 1 << 16, 0), Err(ApicFault));
        assert_eq!(a.write_msr(msr(ApicReg::ICR), 1 << 20, 0), Err(ApicFault));
    }

    #[test]
    fn nmi_to_self_is_for_the_caller_to_inject() {
        let mut a = x2apic(3);
        assert_eq!(
            wr(&mut a, ApicReg::ICR, (3 << 32) | icr::NMI),
            ApicAction::SelfNmi
        );
        assert_eq!(
            wr(&mut a, ApicReg::ICR, icr::SHORTHAND_SELF | icr::NMI),
            ApicAction::SelfNmi
        );
        assert_eq!(rd(&mut a, ApicReg::IRR0), 0, "an NMI is no IRR vector");
        assert!(matches!(
            wr(&mut a, ApicReg::ICR, (4 << 32) | icr::NMI),
            ApicAction::Ipi {
                dest: 4,
                mode: DeliveryMode::Nmi,
                ..
            }
        ));
        assert!(matches!(
            wr(
                &mut a,
                ApicReg::ICR,
                (u64::from(X2APIC_BROADCAST) << 32) | icr::NMI
            ),
            ApicAction::Ipi {
                dest: X2APIC_BROADCAST,
                ..
            }
        ));
    }

    #[test]
    fn tsc_deadline_timer() {
        let mut a = x2apic(0);
        // Not in TSC-deadline mode: the MSR ignores writes and reads 0.
        a.write_tsc_deadline(5_000, 1_000);
        assert_eq!((a.tsc_deadline(), a.next_timer_tsc()), (0, None));
        wr(
            &mut a,
            ApicReg::LVT_TIMER,
            u64::from(lvt::TIMER_TSC_DEADLINE) | 0xec,
        );
        a.write_tsc_deadline(10_000, 1_000);
        assert_eq!(a.tsc_deadline(), 10_000);
        assert_eq!(a.next_timer_tsc(), Some(10_000));
        assert_eq!(a.read_msr(Msr::IA32_TSC_DEADLINE.0, 2_000), Ok(10_000));
        // Current count reads 0 and the initial count ignores writes in this mode.
        wr(&mut a, ApicReg::TIMER_INITIAL, 50);
        assert_eq!(rd(&mut a, ApicReg::TIMER_INITIAL), 0);
        assert_eq!(rd(&mut a, ApicReg::TIMER_CURRENT), 0);
        a.tick(9_999);
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.tsc_deadline(), 10_000);
        a.tick(10_000);
        assert_eq!(a.deliverable(), Some(0xec));
        assert_eq!(a.tsc_deadline(), 0, "reads 0 once fired");
        assert_eq!(a.read_msr(Msr::IA32_TSC_DEADLINE.0, 10_001), Ok(0));
        assert_eq!(a.next_timer_tsc(), None);
        a.acknowledge();
        wr(&mut a, ApicReg::EOI, 0);
        a.tick(20_000);
        assert_eq!(a.deliverable(), None, "one interrupt per write");
        // Rewriting moves the deadline; 0 disarms.
        a.write_tsc_deadline(30_000, 20_000);
        a.write_tsc_deadline(25_000, 20_000);
        assert_eq!(a.next_timer_tsc(), Some(25_000));
        a.tick(25_000);
        assert_eq!(a.acknowledge(), Some(0xec));
        wr(&mut a, ApicReg::EOI, 0);
        a.write_tsc_deadline(40_000, 30_000);
        a.write_tsc_deadline(0, 30_000);
        assert_eq!(a.next_timer_tsc(), None);
        a.tick(50_000);
        assert_eq!(a.deliverable(), None);
        // A deadline in the past fires right away.
        a.write_tsc_deadline(100, 60_000);
        assert_eq!(a.deliverable(), Some(0xec), "fired by the write itself");
        a.tick(60_000);
        assert_eq!(a.deliverable(), Some(0xec));
        assert_eq!(a.tsc_deadline(), 0);
        a.acknowledge();
        wr(&mut a, ApicReg::EOI, 0);
        // Masked: the timer expires and disarms, but sets no IRR bit.
        wr(
            &mut a,
            ApicReg::LVT_TIMER,
            u64::from(lvt::TIMER_TSC_DEADLINE | lvt::MASKED) | 0xec,
        );
        a.write_tsc_deadline(70_000, 60_000);
        assert_eq!(a.next_timer_tsc(), None, "nothing to wake for");
        a.tick(70_000);
        assert_eq!(a.tsc_deadline(), 0);
        assert!(!irr_has(&mut a, 0xec));
        // Leaving TSC-deadline mode disarms.
        wr(
            &mut a,
            ApicReg::LVT_TIMER,
            u64::from(lvt::TIMER_TSC_DEADLINE) | 0xec,
        );
        a.write_tsc_deadline(90_000, 80_000);
        wr(&mut a, ApicReg::LVT_TIMER, 0xec);
        assert_eq!((a.tsc_deadline(), a.next_timer_tsc()), (0, None));
        wr(
            &mut a,
            ApicReg::LVT_TIMER,
            u64::from(lvt::TIMER_TSC_DEADLINE) | 0xec,
        );
        a.tick(100_000);
        assert_eq!(a.deliverable(), None);
    }

    #[test]
    fn one_shot_timer_counts_down_at_tsc_over_divide() {
        let mut a = x2apic(0);
        wr(&mut a, ApicReg::LVT_TIMER, 0x30);
        wr(&mut a, ApicReg::TIMER_DIVIDE, DIVIDE_WRITABLE); // divide by 1
        a.write_msr(msr(ApicReg::TIMER_INITIAL), 1_000, 5_000)
            .unwrap();
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 5_000), Ok(1_000));
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 5_400), Ok(600));
        assert_eq!(a.next_timer_tsc(), Some(6_000));
        a.tick(5_999);
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 5_999), Ok(1));
        a.tick(6_000);
        assert_eq!(a.acknowledge(), Some(0x30));
        wr(&mut a, ApicReg::EOI, 0);
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 6_001), Ok(0));
        assert_eq!(a.next_timer_tsc(), None);
        a.tick(100_000);
        assert_eq!(a.deliverable(), None, "one-shot");
        assert_eq!(rd(&mut a, ApicReg::TIMER_INITIAL), 1_000);

        // Divide by 16 (0011b): one count per 16 TSC ticks.
        wr(&mut a, ApicReg::TIMER_DIVIDE, 0b0011);
        a.write_msr(msr(ApicReg::TIMER_INITIAL), 100, 10_000)
            .unwrap();
        assert_eq!(a.next_timer_tsc(), Some(11_600));
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 10_015), Ok(100));
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 10_016), Ok(99));
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 11_599), Ok(1));
        a.tick(11_599);
        assert_eq!(a.deliverable(), None);
        a.tick(11_600);
        assert_eq!(a.deliverable(), Some(0x30));
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), 11_600), Ok(0));

        // Initial count 0 stops a running count; a slower timer clock stretches it.
        let mut b = Lapic::new(0, TimerClock::new(3));
        b.write_msr(msr(ApicReg::SVR), ENABLED, 0).unwrap();
        b.write_msr(msr(ApicReg::LVT_TIMER), 0x31, 0).unwrap();
        b.write_msr(msr(ApicReg::TIMER_INITIAL), 10, 0).unwrap();
        assert_eq!(b.next_timer_tsc(), Some(60), "3 TSC ticks x divide 2 x 10");
        b.write_msr(msr(ApicReg::TIMER_INITIAL), 0, 30).unwrap();
        assert_eq!(b.next_timer_tsc(), None);
        b.tick(1_000);
        assert_eq!(b.deliverable(), None);
        assert_eq!(b.read_msr(msr(ApicReg::TIMER_CURRENT), 1_000), Ok(0));
    }

    #[test]
    fn periodic_timer_rearms_from_the_previous_expiry() {
        let mut a = x2apic(0);
        wr(
            &mut a,
            ApicReg::LVT_TIMER,
            u64::from(lvt::TIMER_PERIODIC) | 0x41,
        );
        wr(&mut a, ApicReg::TIMER_DIVIDE, 0b0011); // 16
        let t0 = 1_003;
        a.write_msr(msr(ApicReg::TIMER_INITIAL), 10, t0).unwrap(); // period 160
        assert_eq!(a.next_timer_tsc(), Some(t0 + 160));
        // Served late: the next expiry stays on the grid.
        a.tick(t0 + 165);
        assert_eq!(a.acknowledge(), Some(0x41));
        wr(&mut a, ApicReg::EOI, 0);
        assert_eq!(a.next_timer_tsc(), Some(t0 + 320));
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), t0 + 165), Ok(10));
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), t0 + 176), Ok(9));
        for period in 2..=6 {
            a.tick(t0 + period * 160 - 1);
            assert_eq!(a.deliverable(), None, "period {period}");
            a.tick(t0 + period * 160 + 7);
            assert_eq!(a.acknowledge(), Some(0x41), "period {period}");
            wr(&mut a, ApicReg::EOI, 0);
            assert_eq!(a.next_timer_tsc(), Some(t0 + (period + 1) * 160));
        }
        // Several periods missed: one interrupt, and still on the grid.
        a.tick(t0 + 10 * 160 + 3);
        assert_eq!(a.acknowledge(), Some(0x41));
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.next_timer_tsc(), Some(t0 + 11 * 160));
        // Divide 1 mid-period: the 6 counts left run 16 times faster, then whole periods
        // of 10 TSC ticks.
        wr(&mut a, ApicReg::EOI, 0);
        let now = t0 + 10 * 160 + 64;
        assert_eq!(a.read_msr(msr(ApicReg::TIMER_CURRENT), now), Ok(6));
        a.write_msr(msr(ApicReg::TIMER_DIVIDE), DIVIDE_WRITABLE, now)
            .unwrap();
        assert_eq!(a.next_timer_tsc(), Some(now + 6));
        a.tick(now + 6);
        assert_eq!(a.acknowledge(), Some(0x41));
        assert_eq!(a.next_timer_tsc(), Some(now + 16));
    }

    #[test]
    fn huge_counts_and_clocks_saturate() {
        let mut a = Lapic::new(0, TimerClock::new(u64::MAX));
        a.write_msr(msr(ApicReg::SVR), ENABLED, 0).unwrap();
        a.write_msr(
            msr(ApicReg::LVT_TIMER),
            u64::from(lvt::TIMER_PERIODIC) | 0x40,
            0,
        )
        .unwrap();
        a.write_msr(msr(ApicReg::TIMER_DIVIDE), 0b1010, 0).unwrap(); // 128
        a.write_msr(
            msr(ApicReg::TIMER_INITIAL),
            u64::from(u32::MAX),
            u64::MAX - 1,
        )
        .unwrap();
        assert_eq!(a.next_timer_tsc(), Some(u64::MAX));
        assert_eq!(
            a.read_msr(msr(ApicReg::TIMER_CURRENT), u64::MAX - 1),
            Ok(1),
            "one tick of this clock is longer than what is left of time"
        );
        a.tick(u64::MAX);
        assert_eq!(a.deliverable(), Some(0x40));
        a.tick(u64::MAX);
    }

    #[test]
    fn x2apic_faults() {
        let mut a = x2apic(0);
        for reg in [
            ApicReg::ID,
            ApicReg::VERSION,
            ApicReg::PPR,
            ApicReg::LDR,
            ApicReg::ISR0,
            ApicReg(ApicReg::ISR0.0 + 7),
            ApicReg::TMR0,
            ApicReg::IRR0,
            ApicReg(ApicReg::IRR0.0 + 7),
            ApicReg::TIMER_CURRENT,
        ] {
            assert_eq!(
                a.write_msr(reg.msr(), 0, 0),
                Err(ApicFault),
                "write {reg:?}"
            );
            assert!(a.read_msr(reg.msr(), 0).is_ok(), "read {reg:?}");
        }
        for reg in [ApicReg::EOI, ApicReg::SELF_IPI] {
            assert_eq!(a.read_msr(reg.msr(), 0), Err(ApicFault), "read {reg:?}");
        }
        assert_eq!(a.write_msr(msr(ApicReg::EOI), 1, 0), Err(ApicFault));
        assert_eq!(a.write_msr(msr(ApicReg::ESR), 1, 0), Err(ApicFault));
        // Addresses with no x2APIC register, xAPIC-only ones included.
        for n in [
            0x800, 0x801, 0x804, 0x809, 0x80c, 0x80e, 0x829, 0x831, 0x83a, 0x840, 0x8ff,
        ] {
            assert_eq!(a.read_msr(n, 0), Err(ApicFault), "read {n:#x}");
            assert_eq!(a.write_msr(n, 0, 0), Err(ApicFault), "write {n:#x}");
        }
        assert_eq!(a.read_msr(0x900, 0), Err(ApicFault), "not an APIC MSR");
        // Reserved bits.
        for (reg, value) in [
            (ApicReg::TPR, 0x100),
            (ApicReg::TPR, 1 << 32),
            (ApicReg::SVR, 1 << 12),
            (ApicReg::LVT_TIMER, u64::from(lvt::TIMER_RESERVED)),
            (ApicReg::LVT_TIMER, 0x400),
            (ApicReg::LVT_ERROR, 0x400),
            (ApicReg::LVT_LINT0, 1 << 17),
            (ApicReg::TIMER_DIVIDE, 0b0100),
            (ApicReg::TIMER_INITIAL, 1 << 32),
        ] {
            assert_eq!(
                a.write_msr(reg.msr(), value, 0),
                Err(ApicFault),
                "{reg:?} {value:#x}"
            );
        }
        assert_eq!(
            rd(&mut a, ApicReg::TPR),
            0,
            "a refused write changes nothing"
        );
        // Read-only status bits are accepted and read back clear.
        wr(
            &mut a,
            ApicReg::LVT_LINT1,
            u64::from(lvt::DELIVERY_NMI | lvt::DELIVERY_STATUS | lvt::REMOTE_IRR),
        );
        assert_eq!(rd(&mut a, ApicReg::LVT_LINT1), u64::from(lvt::DELIVERY_NMI));
        // Outside x2APIC mode the MSRs do not exist.
        let mut x = xapic(0);
        assert_eq!(x.read_msr(msr(ApicReg::TPR), 0), Err(ApicFault));
        assert_eq!(x.write_msr(msr(ApicReg::EOI), 0, 0), Err(ApicFault));
        a.write_apic_base(apic_base::DEFAULT_ADDRESS).unwrap();
        assert_eq!(a.read_msr(msr(ApicReg::ID), 0), Err(ApicFault));
    }

    #[test]
    fn apic_base_transitions() {
        let base = apic_base::DEFAULT_ADDRESS;
        let (en, extd, bsp) = (apic_base::EN, apic_base::EXTD, apic_base::BSP);
        let mut a = x2apic(0);
        wr(&mut a, ApicReg::TPR, 0x30);
        assert_eq!(
            a.write_apic_base(base | en | bsp),
            Err(ApicFault),
            "x2APIC -> xAPIC"
        );
        assert_eq!(
            a.write_apic_base(base | extd),
            Err(ApicFault),
            "EN=0, EXTD=1"
        );
        assert_eq!(
            a.write_apic_base(base | en | extd | 1),
            Err(ApicFault),
            "reserved"
        );
        assert_eq!(
            a.write_apic_base(base | en | extd | 1 << 9),
            Err(ApicFault),
            "reserved"
        );
        assert_eq!(
            a.write_apic_base(en | extd | 0xfec0_0000),
            Err(ApicFault),
            "moved"
        );
        assert_eq!(
            a.write_apic_base(en | extd | 1 << 52 | base),
            Err(ApicFault)
        );
        // Same mode again, with or without the BSP bit: nothing changes.
        a.write_apic_base(base | en | extd).unwrap();
        assert_eq!(a.apic_base(), base | en | extd | bsp);
        assert_eq!(rd(&mut a, ApicReg::TPR), 0x30);
        // Disable: the state is gone, the MSRs with it.
        a.request(0x80);
        a.write_apic_base(base | bsp).unwrap();
        assert_eq!(a.mode(), ApicMode::Disabled);
        assert_eq!(a.apic_base(), base | bsp);
        assert_eq!(a.deliverable(), None);
        a.request(0x90);
        assert_eq!(
            a.write_apic_base(base | en | extd),
            Err(ApicFault),
            "disabled -> x2APIC"
        );
        // Disabled -> xAPIC -> x2APIC, which keeps what xAPIC mode set up.
        a.write_apic_base(base | en).unwrap();
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(
            a.read_mmio(ApicReg::SVR.mmio_offset(), 0),
            0xff,
            "reset state"
        );
        assert_eq!(a.read_mmio(ApicReg::TPR.mmio_offset(), 0), 0);
        a.write_mmio(ApicReg::SVR.mmio_offset(), 0x1ff, 0);
        a.write_mmio(ApicReg::TPR.mmio_offset(), 0x20, 0);
        assert_eq!(
            a.read_mmio(ApicReg::IRR0.mmio_offset() + 0x40, 0),
            0,
            "0x80, 0x90 lost"
        );
        a.write_apic_base(base | en | extd).unwrap();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(rd(&mut a, ApicReg::TPR), 0x20);
        assert_eq!(rd(&mut a, ApicReg::SVR), 0x1ff);
        assert_eq!(rd(&mut a, ApicReg::LDR), 1, "x2APIC logical ID of ID 0");
        // The IA32_APIC_BASE MSR through read_msr/write_msr too.
        assert_eq!(
            a.read_msr(Msr::IA32_APIC_BASE.0, 0),
            Ok(base | en | extd | bsp)
        );
        assert_eq!(
            a.write_msr(Msr::IA32_APIC_BASE.0, base | en, 0),
            Err(ApicFault)
        );
        assert_eq!(x2apic(1).apic_base(), base | en | extd, "an AP");
    }

    #[test]
    fn mmio_offsets_map_to_the_same_registers() {
        let mut a = xapic(3);
        let off = ApicReg::mmio_offset;
        assert_eq!(a.read_mmio(0x20, 0), 3 << 24, "ID in bits 31:24");
        a.write_mmio(0x20, 7 << 24, 0);
        assert_eq!(a.read_mmio(0x20, 0), 3 << 24, "the ID is read-only here");
        assert_eq!(a.read_mmio(0x30, 0), 0x0005_0014);
        a.write_mmio(0xf0, 0x1ff, 0);
        a.write_mmio(0x80, 0x1_0020, 0);
        assert_eq!(a.read_mmio(0x80, 0), 0x20, "reserved bits dropped");
        assert_eq!(a.read_mmio(0xa0, 0), 0x20, "PPR");
        // LDR and DFR (xAPIC only), flat model.
        a.write_mmio(0xe0, 0xffff_ffff, 0);
        a.write_mmio(0xd0, 0x0400_0000, 0);
        assert_eq!(a.read_mmio(0xd0, 0), 0x0400_0000);
        assert_eq!(a.read_mmio(0xe0, 0), 0xffff_ffff);
        assert!(a.is_destination(0x06, DestMode::Logical));
        assert!(!a.is_destination(0x03, DestMode::Logical));
        assert!(a.is_destination(3, DestMode::Physical));
        assert!(a.is_destination(XAPIC_BROADCAST, DestMode::Physical));
        // Cluster model: cluster 0, member bit 2.
        a.write_mmio(0xe0, 0x0fff_ffff, 0);
        assert_eq!(a.read_mmio(0xe0, 0), 0x0fff_ffff);
        assert!(a.is_destination(0x04, DestMode::Logical));
        assert!(!a.is_destination(0x14, DestMode::Logical));
        // ICR: high holds the destination, a write to low sends.
        assert_eq!(a.write_mmio(0x310, 0x0500_0000 | 0xff, 0), ApicAction::None);
        assert_eq!(a.read_mmio(0x310, 0), 0x0500_0000);
        assert_eq!(
            a.write_mmio(0x300, 0x4044, 0),
            ApicAction::Ipi {
                dest: 5,
                dest_mode: DestMode::Physical,
                shorthand: Shorthand::None,
                mode: DeliveryMode::Fixed,
                vector: 0x44,
                level: true,
                trigger: TriggerMode::Edge,
            }
        );
        assert_eq!(a.read_mmio(0x300, 0), 0x4044, "delivery status idle");
        a.write_mmio(0x310, 3 << 24, 0);
        assert_eq!(a.write_mmio(0x300, 0x45, 0), ApicAction::None, "to own ID");
        assert_eq!(a.read_mmio(off(ApicReg(ApicReg::IRR0.0 + 2)), 0), 1 << 5);
        assert_eq!(a.deliverable(), Some(0x45));
        assert_eq!(a.acknowledge(), Some(0x45));
        assert_eq!(a.read_mmio(off(ApicReg(ApicReg::ISR0.0 + 2)), 0), 1 << 5);
        a.write_mmio(0xb0, 0x1234, 0);
        assert_eq!(
            a.read_mmio(off(ApicReg(ApicReg::ISR0.0 + 2)), 0),
            0,
            "EOI, any value"
        );
        // Timer through MMIO.
        a.write_mmio(0x320, 0x2_0033, 0);
        a.write_mmio(0x3e0, 0xb, 0);
        a.write_mmio(0x380, 100, 1_000);
        assert_eq!(a.read_mmio(0x390, 1_040), 60);
        assert_eq!(a.read_mmio(0x380, 1_040), 100);
        assert_eq!(a.next_timer_tsc(), Some(1_100));
        a.write_mmio(0x320, 0x6_0033, 1_050);
        assert_eq!(
            a.read_mmio(0x320, 0),
            0x33,
            "reserved mode 11b becomes one-shot"
        );
        // Write-only, absent and padding offsets read 0; absent ones log an error.
        assert_eq!(a.read_mmio(0xb0, 0), 0);
        assert_eq!(
            a.read_mmio(0x3f0, 0),
            0,
            "SELF IPI exists in x2APIC mode only"
        );
        assert_eq!(a.read_mmio(0x24, 0), 0);
        a.write_mmio(0x280, 0, 0);
        assert_eq!(a.read_mmio(0x280, 0), esr::ILLEGAL_REGISTER);
        a.write_mmio(0x280, 0, 0);
        assert_eq!(a.read_mmio(0x280, 0), 0);
        // In x2APIC mode the page is dead.
        let mut b = x2apic(0);
        wr(&mut b, ApicReg::TPR, 0x50);
        assert_eq!(b.read_mmio(0x80, 0), 0);
        b.write_mmio(0x80, 0x10, 0);
        assert_eq!(rd(&mut b, ApicReg::TPR), 0x50);
    }

    #[test]
    fn errors_latch_and_raise_the_error_lvt() {
        let mut a = x2apic(0);
        wr(&mut a, ApicReg::LVT_ERROR, 0xfe);
        a.request(1);
        assert_eq!(a.deliverable(), Some(0xfe));
        assert_eq!(rd(&mut a, ApicReg::ESR), 0, "not latched before a write");
        assert_eq!(esr(&mut a), u64::from(esr::RECEIVE_ILLEGAL_VECTOR));
        wr(&mut a, ApicReg::LVT_ERROR, 0x1_00fe);
        a.acknowledge();
        a.request(2);
        assert_eq!(a.deliverable(), None, "masked: logged only");
        assert_eq!(esr(&mut a), u64::from(esr::RECEIVE_ILLEGAL_VECTOR));
    }

    /// Accesses Linux 6.1 makes at boot in x2APIC mode (apic.c, x2apic_phys.c), in order.
    #[test]
    fn linux_6_1_boot_in_x2apic_mode() {
        let mut a = Lapic::new(0, TimerClock::TSC);
        let mut now = 1_000_000;
        // check_x2apic(): IA32_APIC_BASE says x2APIC enabled.
        let base = a.read_msr(Msr::IA32_APIC_BASE.0, now).unwrap();
        assert_eq!(
            base & (apic_base::EN | apic_base::EXTD),
            apic_base::EN | apic_base::EXTD
        );
        assert_eq!(a.read_msr(0x802, now), Ok(0));
        // lapic_get_maxlvt().
        let lvr = a.read_msr(0x803, now).unwrap();
        assert_eq!((lvr & 0xff, (lvr >> 16) & 0xff), (0x14, 5));
        // clear_local_APIC(): mask every LVT (thermal, perf present: maxlvt >= 5).
        for n in [0x837, 0x832, 0x835, 0x836, 0x834, 0x833] {
            let v = a.read_msr(n, now).unwrap();
            a.write_msr(n, v | 0x1_0000, now).unwrap();
        }
        for n in [0x832, 0x835, 0x836, 0x837, 0x834, 0x833] {
            a.write_msr(n, 0x1_0000, now).unwrap();
        }
        a.write_msr(0x828, 0, now).unwrap();
        a.read_msr(0x828, now).unwrap();
        // setup_local_APIC(): soft-disable, TPR 0, pending-interrupt sweep, enable.
        let spiv = a.read_msr(0x80f, now).unwrap();
        a.write_msr(0x80f, spiv & !0x100, now).unwrap();
        a.write_msr(0x808, 0, now).unwrap();
        for n in (0x810..=0x817).chain(0x820..=0x827) {
            assert_eq!(a.read_msr(n, now), Ok(0));
        }
        let spiv = a.read_msr(0x80f, now).unwrap();
        a.write_msr(0x80f, (spiv & !0xff) | 0x100 | 0xff, now)
            .unwrap();
        assert_eq!(a.read_msr(0x80f, now), Ok(0x1ff));
        a.write_msr(0x835, 0x700, now).unwrap(); // LINT0 ExtINT
        a.write_msr(0x836, 0x400, now).unwrap(); // LINT1 NMI
        // lapic_setup_esr().
        a.write_msr(0x828, 0, now).unwrap();
        a.write_msr(0x837, 0xfe, now).unwrap();
        a.write_msr(0x828, 0, now).unwrap();
        assert_eq!(a.read_msr(0x828, now), Ok(0));
        // lapic_next_deadline() after __setup_APIC_LVTT() in TSC-deadline mode.
        a.write_msr(0x832, 0x4_00ec, now).unwrap();
        a.write_msr(Msr::IA32_TSC_DEADLINE.0, now + 4_000_000, now)
            .unwrap();
        assert_eq!(a.next_timer_tsc(), Some(now + 4_000_000));
        now += 3_999_999;
        a.tick(now);
        assert_eq!(a.deliverable(), None);
        now += 1;
        a.tick(now);
        assert_eq!(a.deliverable(), Some(0xec));
        assert_eq!(a.read_msr(Msr::IA32_TSC_DEADLINE.0, now), Ok(0));
        // The interrupt is taken; the handler's ack is an EOI write of 0.
        assert_eq!(a.acknowledge(), Some(0xec));
        assert_eq!(a.read_msr(0x80a, now), Ok(0xe0));
        assert_eq!(
            a.read_msr(0x817, now),
            Ok(1 << 12),
            "vector 0xec in service"
        );
        // An irq_work self-IPI (0xf6) raised in the handler preempts it: a higher class.
        a.write_msr(0x83f, 0xf6, now).unwrap();
        assert_eq!(a.deliverable(), Some(0xf6));
        a.write_msr(0x80b, 0, now).unwrap();
        assert_eq!(a.read_msr(0x817, now), Ok(0), "0xec retired");
        assert_eq!(a.acknowledge(), Some(0xf6));
        a.write_msr(0x80b, 0, now).unwrap();
        assert_eq!(a.read_msr(0x80a, now), Ok(0));
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.next_timer_tsc(), None);
    }
}
