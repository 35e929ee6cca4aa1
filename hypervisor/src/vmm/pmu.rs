//! PMU sampling driver as a state machine over a [`PmuHw`]: program a counter, check that
//! it really advances before trusting it (Bochs and QEMU TCG advertise architectural
//! perfmon but their counters read 0), arm it to overflow every `period` events with the
//! overflow delivered as an NMI, and re-arm on each overflow. When the counter cannot be
//! trusted the caller falls back to the LAPIC timer and logs [`Fallback`]'s text.

use core::fmt;

use crate::vmx::msr::Msr;

/// The hardware a PMU driver touches; a model in tests.
pub trait PmuHw {
    /// CPUID.0xA:EAX: version (7:0), counters (15:8), counter width (23:16).
    fn cpuid_0a_eax(&self) -> u32;
    fn read_msr(&mut self, msr: Msr) -> u64;
    fn write_msr(&mut self, msr: Msr, value: u64);
    /// Runs some instructions so an enabled counter has something to count.
    fn busy_work(&mut self);
    /// Points the LAPIC performance-counter LVT at NMI delivery, unmasked (the LVT masks
    /// itself on every PMI, so this also re-arms it).
    fn route_pmi_to_nmi(&mut self);
}

/// IA32_PERFEVTSELx bits (SDM 20.2.1).
pub mod evtsel {
    pub const USR: u64 = 1 << 16;
    pub const OS: u64 = 1 << 17;
    pub const INT: u64 = 1 << 20;
    pub const EN: u64 = 1 << 22;
    /// Architectural event UnHalted Core Cycles: event 0x3c, umask 0.
    pub const UNHALTED_CORE_CYCLES: u64 = 0x3c;
}

/// Why the PMU is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    NoArchitecturalPerfmon,
    /// The counter read `value` after it was enabled over some work.
    CounterDoesNotAdvance {
        value: u64,
    },
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::NoArchitecturalPerfmon => f.write_str(
                "CPUID offers no architectural performance counters; sampling with the LAPIC timer",
            ),
            Fallback::CounterDoesNotAdvance { value } => write!(
                f,
                "performance counter 0 did not advance (read {value:#x} after enabling it); sampling with the LAPIC timer"
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmuState {
    Off,
    Armed { period: u64 },
    Fallback(Fallback),
}

/// The driver.
#[derive(Clone, Copy, Debug)]
pub struct PmuSampler {
    pub state: PmuState,
    width: u32,
    pub overflows: u64,
}

impl Default for PmuSampler {
    fn default() -> Self {
        PmuSampler {
            state: PmuState::Off,
            width: 0,
            overflows: 0,
        }
    }
}

impl PmuSampler {
    fn evtsel(interrupt: bool) -> u64 {
        evtsel::UNHALTED_CORE_CYCLES
            | evtsel::USR
            | evtsel::OS
            | evtsel::EN
            | if interrupt { evtsel::INT } else { 0 }
    }

    /// The counter value that overflows after `period` events.
    fn preload(&self, period: u64) -> u64 {
        let mask = if self.width >= 64 {
            u64::MAX
        } else {
            (1u64 << self.width) - 1
        };
        period.wrapping_neg() & mask
    }

    /// Probes and, if the counter works, arms it. Returns the state reached.
    pub fn start(&mut self, hw: &mut impl PmuHw, period: u64) -> PmuState {
        let eax = hw.cpuid_0a_eax();
        let (version, counters) = (eax & 0xff, (eax >> 8) & 0xff);
        self.width = (eax >> 16) & 0xff;
        if version == 0 || counters == 0 || self.width == 0 {
            self.state = PmuState::Fallback(Fallback::NoArchitecturalPerfmon);
            return self.state;
        }
        hw.write_msr(Msr::IA32_PERFEVTSEL0, 0);
        hw.write_msr(Msr::IA32_PMC0, 0);
        hw.write_msr(Msr::IA32_PERFEVTSEL0, Self::evtsel(false));
        if version >= 2 {
            hw.write_msr(Msr::IA32_PERF_GLOBAL_CTRL, 1);
        }
        hw.busy_work();
        let value = hw.read_msr(Msr::IA32_PMC0);
        hw.write_msr(Msr::IA32_PERFEVTSEL0, 0);
        if value == 0 {
            if version >= 2 {
                hw.write_msr(Msr::IA32_PERF_GLOBAL_CTRL, 0);
            }
            self.state = PmuState::Fallback(Fallback::CounterDoesNotAdvance { value });
            return self.state;
        }
        hw.route_pmi_to_nmi();
        hw.write_msr(Msr::IA32_PMC0, self.preload(period));
        hw.write_msr(Msr::IA32_PERFEVTSEL0, Self::evtsel(true));
        self.state = PmuState::Armed { period };
        self.state
    }

    /// An NMI arrived: if counter 0 overflowed it is ours; clear the overflow, re-arm and
    /// return true. Otherwise the NMI belongs to someone else.
    pub fn on_nmi(&mut self, hw: &mut impl PmuHw) -> bool {
        let PmuState::Armed { period } = self.state else {
            return false;
        };
        let status = hw.read_msr(Msr::IA32_PERF_GLOBAL_STATUS);
        if status & 1 == 0 {
            return false;
        }
        self.overflows += 1;
        hw.write_msr(Msr::IA32_PMC0, self.preload(period));
        hw.write_msr(Msr::IA32_PERF_GLOBAL_OVF_CTRL, 1);
        hw.route_pmi_to_nmi();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PMU model: counter 0 counts `busy_work` as 10_000 events while enabled, sets its
    /// overflow bit and raises a PMI when it wraps at `width` bits. `dead` reads 0 always.
    struct Model {
        width: u32,
        dead: bool,
        pmc0: u64,
        evtsel0: u64,
        global_ctrl: u64,
        status: u64,
        pmi_routed: u32,
        pmis: u32,
    }

    impl Model {
        fn new(dead: bool) -> Self {
            Model {
                width: 48,
                dead,
                pmc0: 0,
                evtsel0: 0,
                global_ctrl: 0,
                status: 0,
                pmi_routed: 0,
                pmis: 0,
            }
        }
        fn count(&mut self, n: u64) {
            if self.dead || self.evtsel0 & evtsel::EN == 0 || self.global_ctrl & 1 == 0 {
                return;
            }
            let mask = (1u64 << self.width) - 1;
            let next = self.pmc0 + n;
            if next > mask {
                self.status |= 1;
                if self.evtsel0 & evtsel::INT != 0 {
                    self.pmis += 1;
                }
            }
            self.pmc0 = next & mask;
        }
    }

    impl PmuHw for Model {
        fn cpuid_0a_eax(&self) -> u32 {
            4 | 4 << 8 | self.width << 16
        }
        fn read_msr(&mut self, msr: Msr) -> u64 {
            match msr {
                _ if self.dead => 0,
                Msr::IA32_PMC0 => self.pmc0,
                Msr::IA32_PERF_GLOBAL_STATUS => self.status,
                _ => 0,
            }
        }
        fn write_msr(&mut self, msr: Msr, value: u64) {
            if self.dead {
                return;
            }
            match msr {
                Msr::IA32_PMC0 => self.pmc0 = value & ((1 << self.width) - 1),
                Msr::IA32_PERFEVTSEL0 => self.evtsel0 = value,
                Msr::IA32_PERF_GLOBAL_CTRL => self.global_ctrl = value,
                Msr::IA32_PERF_GLOBAL_OVF_CTRL => self.status &= !value,
                _ => {}
            }
        }
        fn busy_work(&mut self) {
            self.count(10_000);
        }
        fn route_pmi_to_nmi(&mut self) {
            self.pmi_routed += 1;
        }
    }

    #[test]
    fn working_pmu_is_armed_and_rearmed_on_overflow() {
        let mut hw = Model::new(false);
        let mut pmu = PmuSampler::default();
        assert_eq!(
            pmu.start(&mut hw, 1_000_000),
            PmuState::Armed { period: 1_000_000 }
        );
        assert_eq!(hw.pmc0, (1 << 48) - 1_000_000);
        assert_eq!(
            hw.evtsel0,
            0x3c | evtsel::USR | evtsel::OS | evtsel::EN | evtsel::INT
        );
        hw.count(999_999);
        assert_eq!(hw.pmis, 0);
        assert!(!pmu.on_nmi(&mut hw), "no overflow yet: not our NMI");
        hw.count(1);
        assert_eq!(hw.pmis, 1);
        assert!(pmu.on_nmi(&mut hw));
        assert_eq!(hw.status, 0);
        assert_eq!(hw.pmc0, (1 << 48) - 1_000_000);
        assert_eq!(hw.pmi_routed, 2);
        assert_eq!(pmu.overflows, 1);
    }

    #[test]
    fn pmu_that_reads_zero_falls_back_to_the_timer() {
        let mut hw = Model::new(true);
        let mut pmu = PmuSampler::default();
        let state = pmu.start(&mut hw, 1_000_000);
        assert_eq!(
            state,
            PmuState::Fallback(Fallback::CounterDoesNotAdvance { value: 0 })
        );
        assert_eq!(hw.pmi_routed, 0);
        assert!(!pmu.on_nmi(&mut hw));
        let PmuState::Fallback(why) = state else {
            unreachable!()
        };
        assert_eq!(
            format!("{why}"),
            "performance counter 0 did not advance (read 0x0 after enabling it); sampling with the LAPIC timer"
        );
    }

    #[test]
    fn no_perfmon_leaf_falls_back() {
        struct NoPmu;
        impl PmuHw for NoPmu {
            fn cpuid_0a_eax(&self) -> u32 {
                0
            }
            fn read_msr(&mut self, _: Msr) -> u64 {
                panic!("must not touch PMU MSRs")
            }
            fn write_msr(&mut self, _: Msr, _: u64) {
                panic!("must not touch PMU MSRs")
            }
            fn busy_work(&mut self) {}
            fn route_pmi_to_nmi(&mut self) {}
        }
        let mut pmu = PmuSampler::default();
        assert_eq!(
            pmu.start(&mut NoPmu, 10),
            PmuState::Fallback(Fallback::NoArchitecturalPerfmon)
        );
    }
}
