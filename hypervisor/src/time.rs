//! Time: the TSC and LAPIC-timer rates, MEASURED against the PIT (CPUID's nominal TSC rate is
//! wrong under Bochs, where the TSC advances once per instruction), and a periodic LAPIC
//! timer on [`vectors::TIMER`] whose handler counts ticks and calls an optional hook.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::interrupts::{self, InterruptFrame, vectors};
use crate::arch::{cpu, lapic, percpu, pit};

/// Length of one calibration window.
pub const CALIBRATION_MS: u64 = 10;
/// Windows measured; the median is kept.
pub const CALIBRATION_WINDOWS: usize = 5;
/// Plausible TSC rates: 1 MHz ..= 20 GHz.
pub const TSC_HZ_RANGE: (u64, u64) = (1_000_000, 20_000_000_000);
/// Plausible LAPIC timer input rates: 100 kHz ..= 10 GHz.
pub const LAPIC_HZ_RANGE: (u64, u64) = (100_000, 10_000_000_000);

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);
static TICK_HZ: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static TICK_HOOK: spin::RwLock<Option<TickHook>> = spin::RwLock::new(None);

/// A function the periodic tick calls with the interrupted state.
type TickHook = fn(&mut InterruptFrame);

/// The measured rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// LAPIC timer input ticks per second (divide-by-1).
    pub lapic_hz: u64,
}

/// Why calibration failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeError {
    /// PIT channel 2 never expired.
    NoPit,
    /// The TSC rate came out outside [`TSC_HZ_RANGE`].
    ImplausibleTsc(u64),
    /// The LAPIC timer rate came out outside [`LAPIC_HZ_RANGE`].
    ImplausibleLapic(u64),
    /// `start_periodic` before `calibrate`, or a rate of 0 / above the timer's rate.
    BadPeriodicRate(u32),
}

impl core::fmt::Display for TimeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NoPit => write!(f, "time: PIT channel 2 did not count down (no PIT?)"),
            Self::ImplausibleTsc(hz) => write!(f, "time: measured TSC rate {hz} Hz is implausible"),
            Self::ImplausibleLapic(hz) => {
                write!(f, "time: measured LAPIC timer rate {hz} Hz is implausible")
            }
            Self::BadPeriodicRate(hz) => {
                write!(f, "time: cannot run the periodic timer at {hz} Hz")
            }
        }
    }
}

/// Counter ticks per second, given `delta` counter ticks over `pit_ticks` PIT ticks.
pub fn rate_hz(delta: u64, pit_ticks: u64) -> u64 {
    if pit_ticks == 0 {
        return 0;
    }
    (u128::from(delta) * u128::from(pit::PIT_HZ) / u128::from(pit_ticks)) as u64
}

/// Converts `ticks` of a `hz` counter to nanoseconds (0 when `hz` is 0).
pub fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz)).min(u128::from(u64::MAX)) as u64
}

/// Converts nanoseconds to ticks of a `hz` counter.
pub fn ns_to_ticks(ns: u64, hz: u64) -> u64 {
    (u128::from(ns) * u128::from(hz) / 1_000_000_000).min(u128::from(u64::MAX)) as u64
}

/// Formats a rate as `MHz` with three decimals (`50.000`).
pub struct Mhz(pub u64);

impl core::fmt::Display for Mhz {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let khz = (self.0 + 500) / 1000;
        write!(f, "{}.{:03}", khz / 1000, khz % 1000)
    }
}

fn median(mut v: [u64; CALIBRATION_WINDOWS]) -> u64 {
    v.sort_unstable();
    v[CALIBRATION_WINDOWS / 2]
}

/// Measures the TSC and LAPIC timer rates against the PIT ([`CALIBRATION_WINDOWS`] windows
/// of [`CALIBRATION_MS`], median). Interrupts should be off. Needs `lapic::init`.
pub fn calibrate() -> Result<Calibration, TimeError> {
    let pit_ticks = pit::PIT_HZ * CALIBRATION_MS / 1000;
    let mut tsc = [0u64; CALIBRATION_WINDOWS];
    let mut apic = [0u64; CALIBRATION_WINDOWS];
    for i in 0..CALIBRATION_WINDOWS {
        let (mut t0, mut t1, mut l0, mut l1) = (0u64, 0u64, 0u32, 0u32);
        lapic::timer_free_run(u32::MAX, lapic::DIVIDE_BY_1);
        let ok = pit::time_window(
            pit_ticks as u16,
            200_000_000,
            || {
                l0 = lapic::timer_current();
                t0 = cpu::rdtsc();
            },
            || {
                t1 = cpu::rdtsc();
                l1 = lapic::timer_current();
            },
        );
        if !ok {
            return Err(TimeError::NoPit);
        }
        tsc[i] = rate_hz(t1.wrapping_sub(t0), pit_ticks);
        apic[i] = rate_hz(u64::from(l0.wrapping_sub(l1)), pit_ticks);
    }
    lapic::timer_stop();
    let c = Calibration {
        tsc_hz: median(tsc),
        lapic_hz: median(apic),
    };
    if !(TSC_HZ_RANGE.0..=TSC_HZ_RANGE.1).contains(&c.tsc_hz) {
        return Err(TimeError::ImplausibleTsc(c.tsc_hz));
    }
    if !(LAPIC_HZ_RANGE.0..=LAPIC_HZ_RANGE.1).contains(&c.lapic_hz) {
        return Err(TimeError::ImplausibleLapic(c.lapic_hz));
    }
    TSC_HZ.store(c.tsc_hz, Ordering::Relaxed);
    LAPIC_HZ.store(c.lapic_hz, Ordering::Relaxed);
    Ok(c)
}

/// The measured TSC rate (0 before [`calibrate`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The measured LAPIC timer input rate, divide-by-1 (0 before [`calibrate`]).
pub fn lapic_hz() -> u64 {
    LAPIC_HZ.load(Ordering::Relaxed)
}

/// TSC ticks to nanoseconds at the measured rate.
pub fn tsc_to_ns(ticks: u64) -> u64 {
    ticks_to_ns(ticks, tsc_hz())
}

/// Nanoseconds to TSC ticks at the measured rate.
pub fn ns_to_tsc(ns: u64) -> u64 {
    ns_to_ticks(ns, tsc_hz())
}

/// Busy-waits `us` microseconds on the TSC.
pub fn delay_us(us: u64) {
    let end = cpu::rdtsc().saturating_add(ns_to_tsc(us.saturating_mul(1000)));
    while cpu::rdtsc() < end {
        cpu::pause();
    }
}

fn tick(frame: &mut InterruptFrame) {
    TICKS.fetch_add(1, Ordering::Relaxed);
    percpu::current()
        .timer_ticks
        .fetch_add(1, Ordering::Relaxed);
    // A tick that finds the hook being replaced (another CPU in `set_tick_hook`) skips it.
    let hook = TICK_HOOK.try_read().and_then(|h| *h);
    if let Some(hook) = hook {
        hook(frame);
    }
}

/// Calls `hook` from every periodic tick (after counting it), with the interrupted state.
pub fn set_tick_hook(hook: Option<fn(&mut InterruptFrame)>) {
    // Interrupts off while holding the lock: this CPU's tick must not find it taken by us.
    cpu::without_interrupts(|| *TICK_HOOK.write() = hook);
}

/// Starts (or re-rates) the periodic LAPIC timer at `hz` on [`vectors::TIMER`]. Returns the
/// initial count used. Interrupts must be enabled for ticks to arrive.
pub fn start_periodic(hz: u32) -> Result<u32, TimeError> {
    start_periodic_shortened(hz, u32::MAX)
}

/// Like [`start_periodic`], with the period shortened by `1 / 2^shorten_shift` (none for a
/// shift of 32 or more), so that every interval of `1 / hz` seconds on the TSC holds at
/// least one tick despite calibration error and rounding. The sampling grid relies on it;
/// the surplus ticks find their slot already sampled and do nothing.
pub fn start_periodic_shortened(hz: u32, shorten_shift: u32) -> Result<u32, TimeError> {
    let count = periodic_count(lapic_hz(), hz, shorten_shift)?;
    // Already registered (re-rating) is fine: the handler is always `tick`.
    let _ = interrupts::set_handler(vectors::TIMER, tick);
    TICK_HZ.store(u64::from(hz), Ordering::Relaxed);
    lapic::timer_periodic(vectors::TIMER, count, lapic::DIVIDE_BY_1);
    Ok(count)
}

/// The LAPIC initial count for `hz` ticks a second at a `lapic_hz` timer input, shortened
/// by `1 / 2^shorten_shift` (see [`start_periodic_shortened`]).
pub fn periodic_count(lapic_hz: u64, hz: u32, shorten_shift: u32) -> Result<u32, TimeError> {
    if hz == 0 || lapic_hz == 0 || u64::from(hz) > lapic_hz {
        return Err(TimeError::BadPeriodicRate(hz));
    }
    let full = lapic_hz / u64::from(hz);
    let count = full - full.checked_shr(shorten_shift).unwrap_or(0);
    match u32::try_from(count) {
        Ok(c) if c > 0 => Ok(c),
        _ => Err(TimeError::BadPeriodicRate(hz)),
    }
}

/// Stops the periodic timer.
pub fn stop_periodic() {
    lapic::timer_stop();
    TICK_HZ.store(0, Ordering::Relaxed);
}

/// Periodic ticks taken since boot (all CPUs).
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// The periodic timer's rate (0 = stopped).
pub fn tick_hz() -> u64 {
    TICK_HZ.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_windows() {
        // 10 ms window (11931 PIT ticks) with 500_000 TSC ticks is ~50 MHz (exactly 500_000 * 1_193_182 / 11_931, rounded down).
        assert_eq!(rate_hz(500_000, 11_931), 50_003_436);
        assert_eq!(rate_hz(1, 0), 0);
        assert_eq!(Mhz(50_003_436).to_string(), "50.003");
        assert_eq!(Mhz(50_003_500).to_string(), "50.004");
        assert_eq!(Mhz(2_999_999_600).to_string(), "3000.000");
        assert_eq!(Mhz(999).to_string(), "0.001");
    }

    #[test]
    fn conversions() {
        assert_eq!(ticks_to_ns(50_000_000, 50_000_000), 1_000_000_000);
        assert_eq!(ticks_to_ns(3, 3_000_000_000), 1);
        assert_eq!(ticks_to_ns(5, 0), 0);
        assert_eq!(ns_to_ticks(1_000, 50_000_000), 50);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn periodic_counts() {
        assert_eq!(periodic_count(50_000_000, 1000, u32::MAX), Ok(50_000));
        // 1/256 shorter: 50_000 - 195.
        assert_eq!(periodic_count(50_000_000, 1000, 8), Ok(49_805));
        assert_eq!(periodic_count(50_000_000, 1000, 64), Ok(50_000));
        assert_eq!(
            periodic_count(50_000_000, 0, 8),
            Err(TimeError::BadPeriodicRate(0))
        );
        assert_eq!(
            periodic_count(0, 1000, 8),
            Err(TimeError::BadPeriodicRate(1000))
        );
        assert_eq!(
            periodic_count(1000, 2000, 8),
            Err(TimeError::BadPeriodicRate(2000))
        );
        // Too slow for the 32-bit count register.
        assert_eq!(
            periodic_count(10_000_000_000, 1, u32::MAX),
            Err(TimeError::BadPeriodicRate(1))
        );
        // A shift of 0 would leave nothing.
        assert_eq!(
            periodic_count(50_000_000, 1000, 0),
            Err(TimeError::BadPeriodicRate(1000))
        );
    }

    #[test]
    fn median_ignores_outliers() {
        assert_eq!(median([5, 1, 3, 2, 4]), 3);
        assert_eq!(median([7, 7, 100, 7, 1]), 7);
    }
}
