//! The VMX-preemption timer value for a TSC deadline (SDM 26.5.1).
//!
//! The timer counts down by one each time bit X of the TSC changes, X being the rate in
//! IA32_VMX_MISC bits 4:0, and the VM exits when it reaches 0 (a value of 0 exits before
//! the first guest instruction). Bit X first changes between 1 and 2^X ticks after entry,
//! so a value `v` expires after more than `(v - 1) * 2^X` and at most `v * 2^X` TSC ticks.

/// The timer value that expires no earlier than `deadline` for an entry at `now` (the
/// countdown starts at the entry, so later entries only make it later): `ceil(delta / 2^X)`,
/// plus one tick of the timer when `X > 0` to cover the phase of bit X. Capped at
/// `u32::MAX` (the field is 32 bits: a far deadline takes several exits to reach).
pub fn timer_value(now: u64, deadline: u64, rate_shift: u32) -> u32 {
    let delta = deadline.saturating_sub(now);
    if delta == 0 {
        return 0;
    }
    let shift = rate_shift.min(63);
    let unit = 1u64 << shift;
    let ticks = delta.div_ceil(unit) + u64::from(shift > 0);
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_zero_counts_tsc_ticks_exactly() {
        assert_eq!(timer_value(1000, 1000, 0), 0, "due now: exit at once");
        assert_eq!(timer_value(1000, 900, 0), 0, "overdue: exit at once");
        assert_eq!(timer_value(1000, 1001, 0), 1);
        assert_eq!(timer_value(0, 50_001, 0), 50_001);
    }

    #[test]
    fn rate_shift_rounds_up_and_adds_the_phase_tick() {
        // X = 5: one timer tick per 32 TSC ticks.
        assert_eq!(timer_value(0, 1, 5), 2);
        assert_eq!(timer_value(0, 32, 5), 2);
        assert_eq!(timer_value(0, 33, 5), 3);
        assert_eq!(timer_value(0, 64, 5), 3);
        assert_eq!(timer_value(100, 100 + 50_000, 5), 1564); // ceil(1562.5) + 1
        // Never early: the worst-case expiry (v - 1) * 2^X is at or past the deadline.
        for x in [1u32, 3, 5, 7] {
            for delta in [1u64, 2, 31, 32, 33, 1000, 123_457] {
                let v = u64::from(timer_value(0, delta, x));
                assert!((v - 1) << x >= delta, "x={x} delta={delta} v={v}");
                assert!(
                    (v - 2) << x < delta,
                    "x={x} delta={delta} v={v}: a tick too many"
                );
            }
        }
    }

    #[test]
    fn far_deadlines_are_capped_at_32_bits() {
        assert_eq!(timer_value(0, u64::from(u32::MAX), 0), u32::MAX);
        assert_eq!(timer_value(0, u64::from(u32::MAX) + 1, 0), u32::MAX);
        assert_eq!(timer_value(0, u64::MAX, 0), u32::MAX);
        assert_eq!(timer_value(0, u64::MAX, 7), u32::MAX);
        // 2^40 TSC ticks at X = 8 is 2^32 timer ticks + 1: capped.
        assert_eq!(timer_value(0, 1 << 40, 8), u32::MAX);
        // 2^39 at X = 8: 2^31 + 1 fits.
        assert_eq!(timer_value(0, 1 << 39, 8), (1 << 31) + 1);
        assert_eq!(timer_value(0, 10, 63), 2);
    }
}
