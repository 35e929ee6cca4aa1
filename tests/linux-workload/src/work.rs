//! The hot functions, and why their shares are what they are.
//!
//! One *unit* is [`ITERS_PER_UNIT`] turns of a loop of [`INSNS_PER_ITER`] instructions
//! (three dependent `add`s, `dec`, `jnz`) written in `asm!`, so the compiler cannot change
//! it: the technique of `tests/truth-guest/src/work.rs`. Each hot function is that loop
//! run `units x ITERS_PER_UNIT` times plus a few instructions of prologue, so its
//! instruction count is fixed by its unit count. Per round the workload runs:
//!
//! | function    | units | share of the round's instructions |
//! |-------------|-------|-----------------------------------|
//! | `hot_alpha` | 5     | 50 %                              |
//! | `hot_beta`  | 3     | 30 %                              |
//! | `hot_gamma` | 2     | 20 %                              |
//!
//! The rest of a round (three calls, one clock read) is a few hundred instructions
//! against 10 x 500 000.
//!
//! The `spinner` binary runs rounds of [`spin_left`] (3 units, 75 %) and [`spin_right`]
//! (1 unit, 25 %) the same way: a second program with its own function names. The functions are `#[unsafe(no_mangle)]` so the ELF's symbol
//! table names them plainly, and `#[inline(never)]` so each keeps its own address range.

/// Loop turns in one unit.
pub const ITERS_PER_UNIT: u64 = 100_000;
/// Instructions in one loop turn (the `asm!` body of [`burn!`]).
pub const INSNS_PER_ITER: u64 = 5;
/// Instructions in one unit.
pub const INSNS_PER_UNIT: u64 = ITERS_PER_UNIT * INSNS_PER_ITER;

/// Each hot function's short name (as the done line prints it) and its units per round.
pub const FUNCTIONS: [(&str, u64); 3] = [("alpha", 5), ("beta", 3), ("gamma", 2)];

/// Units per round, all functions together.
pub const UNITS_PER_ROUND: u64 = FUNCTIONS[0].1 + FUNCTIONS[1].1 + FUNCTIONS[2].1;

/// A function's share of a round's instructions, in whole percent.
pub const fn share_percent(units: u64) -> u64 {
    units * 100 / UNITS_PER_ROUND
}

// The shares must be whole percentages that add up to 100.
const _: () = {
    let mut sum = 0;
    let mut i = 0;
    while i < FUNCTIONS.len() {
        assert!((FUNCTIONS[i].1 * 100).is_multiple_of(UNITS_PER_ROUND));
        sum += share_percent(FUNCTIONS[i].1);
        i += 1;
    }
    assert!(sum == 100);
    assert!(ITERS_PER_UNIT > 0);
};

/// What the loop leaves in its accumulator after `iters` turns from `seed`: turn `n`
/// (counting down from `iters` to 1) adds `n + 1 + n`.
pub const fn checksum(seed: u64, iters: u64) -> u64 {
    seed + iters * (iters + 2)
}

/// Seeds: they make the functions' code differ, so that no identical-code folding
/// merges two of them into one symbol.
const ALPHA_SEED: u64 = 1;
const BETA_SEED: u64 = 2;
const GAMMA_SEED: u64 = 3;

/// Runs the unit loop `$iters` times (must be > 0) from `$seed`; yields the accumulator.
macro_rules! burn {
    ($seed:expr, $iters:expr) => {{
        let mut acc: u64 = $seed;
        let mut n: u64 = $iters;
        // SAFETY: register-only arithmetic: touches no memory and no stack, and `n > 0`
        // (a const assert) so the loop ends.
        unsafe {
            core::arch::asm!(
                "2:",
                "add {acc}, {n}",
                "add {acc}, 1",
                "add {acc}, {n}",
                "dec {n}",
                "jnz 2b",
                acc = inout(reg) acc,
                n = inout(reg) n,
                options(nomem, nostack),
            );
        }
        let _ = n;
        acc
    }};
}

/// 50 % of a round: 5 units.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn hot_alpha() -> u64 {
    const ITERS: u64 = FUNCTIONS[0].1 * ITERS_PER_UNIT;
    burn!(ALPHA_SEED, ITERS)
}

/// 30 % of a round: 3 units.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn hot_beta() -> u64 {
    const ITERS: u64 = FUNCTIONS[1].1 * ITERS_PER_UNIT;
    burn!(BETA_SEED, ITERS)
}

/// 20 % of a round: 2 units.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn hot_gamma() -> u64 {
    const ITERS: u64 = FUNCTIONS[2].1 * ITERS_PER_UNIT;
    burn!(GAMMA_SEED, ITERS)
}

/// The spinner's hot functions (its short name, units per round): `spin_left` 75 %,
/// `spin_right` 25 % of each round's instructions, by the same construction.
pub const SPINNER_FUNCTIONS: [(&str, u64); 2] = [("left", 3), ("right", 1)];

/// Units per spinner round.
pub const SPINNER_UNITS_PER_ROUND: u64 = SPINNER_FUNCTIONS[0].1 + SPINNER_FUNCTIONS[1].1;

const _: () = {
    assert!((SPINNER_FUNCTIONS[0].1 * 100).is_multiple_of(SPINNER_UNITS_PER_ROUND));
    assert!((SPINNER_FUNCTIONS[1].1 * 100).is_multiple_of(SPINNER_UNITS_PER_ROUND));
};

const LEFT_SEED: u64 = 4;
const RIGHT_SEED: u64 = 5;

/// 75 % of a spinner round: 3 units.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn spin_left() -> u64 {
    const ITERS: u64 = SPINNER_FUNCTIONS[0].1 * ITERS_PER_UNIT;
    burn!(LEFT_SEED, ITERS)
}

/// 25 % of a spinner round: 1 unit.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn spin_right() -> u64 {
    const ITERS: u64 = SPINNER_FUNCTIONS[1].1 * ITERS_PER_UNIT;
    burn!(RIGHT_SEED, ITERS)
}

/// One spinner round: each spinner function once.
#[inline(never)]
pub fn spin_round() -> u64 {
    spin_left().wrapping_add(spin_right())
}

/// One round: every hot function once. Returns the sum of their accumulators.
#[inline(never)]
pub fn round() -> u64 {
    hot_alpha()
        .wrapping_add(hot_beta())
        .wrapping_add(hot_gamma())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The symbol of each entry of [`FUNCTIONS`], then of [`SPINNER_FUNCTIONS`].
    const SYMBOLS: [&str; 5] = [
        "hot_alpha",
        "hot_beta",
        "hot_gamma",
        "spin_left",
        "spin_right",
    ];

    #[test]
    fn spinner_shares_are_75_25_and_its_loops_run_exactly() {
        let shares: Vec<u64> = SPINNER_FUNCTIONS
            .iter()
            .map(|&(_, u)| u * 100 / SPINNER_UNITS_PER_ROUND)
            .collect();
        assert_eq!(shares, [75, 25]);
        assert_eq!(spin_left(), checksum(LEFT_SEED, 3 * ITERS_PER_UNIT));
        assert_eq!(spin_right(), checksum(RIGHT_SEED, ITERS_PER_UNIT));
    }

    #[test]
    fn shares_are_50_30_20() {
        let shares: Vec<(&str, u64)> = FUNCTIONS
            .iter()
            .map(|&(name, units)| (name, share_percent(units)))
            .collect();
        assert_eq!(shares, [("alpha", 50), ("beta", 30), ("gamma", 20)]);
    }

    #[test]
    fn each_function_runs_its_loop_exactly_units_times_iters() {
        assert_eq!(hot_alpha(), 1 + 500_000 * 500_002);
        assert_eq!(hot_beta(), checksum(BETA_SEED, 3 * ITERS_PER_UNIT));
        assert_eq!(hot_gamma(), checksum(GAMMA_SEED, 2 * ITERS_PER_UNIT));
        // The accumulator tells neighbouring turn counts apart.
        assert_ne!(checksum(0, ITERS_PER_UNIT), checksum(0, ITERS_PER_UNIT - 1));
    }

    /// Reads each hot function's machine code in this test binary back with objdump:
    /// the loop body is the INSNS_PER_ITER instructions of `burn!`, and at most
    /// `max_outside` instructions lie outside it, so the instructions of a call are
    /// units x INSNS_PER_UNIT, give or take under 0.01 %.
    #[test]
    fn machine_code_has_the_claimed_instruction_counts() {
        // Unoptimised builds spill to the stack, hence the looser bound.
        let max_outside = if cfg!(debug_assertions) { 40 } else { 8 };
        let exe = std::env::current_exe().expect("current_exe");
        for (&(name, units), symbol) in FUNCTIONS.iter().chain(&SPINNER_FUNCTIONS).zip(SYMBOLS) {
            let out = Command::new("objdump")
                .args(["-d", "--no-show-raw-insn", "-M", "intel"])
                .arg(format!("--disassemble={symbol}"))
                .arg(&exe)
                .output()
                .expect("objdump (binutils) must be installed for this test");
            assert!(out.status.success(), "objdump failed on {}", exe.display());
            let text = String::from_utf8_lossy(&out.stdout);
            let insns: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("  ") && l.contains(":\t"))
                .map(|l| l.split_once(":\t").map_or("", |(_, i)| i.trim()))
                .collect();
            assert!(!insns.is_empty(), "no disassembly for {symbol}:\n{text}");
            let jnz = insns
                .iter()
                .position(|i| i.starts_with("jne") || i.starts_with("jnz"))
                .unwrap_or_else(|| panic!("{symbol}: no loop branch in {insns:?}"));
            let body = &insns[jnz + 1 - INSNS_PER_ITER as usize..=jnz];
            let mnemonics: Vec<&str> = body
                .iter()
                .map(|i| i.split_whitespace().next().unwrap_or(""))
                .collect();
            assert_eq!(
                mnemonics,
                ["add", "add", "add", "dec", "jne"],
                "{symbol}: loop body {body:?}"
            );
            let outside_loop = insns.len() as u64 - INSNS_PER_ITER;
            assert!(
                outside_loop <= max_outside,
                "{name}: {outside_loop} instructions outside the loop: {insns:?}"
            );
            assert!(outside_loop * 10_000 < units * INSNS_PER_UNIT);
        }
    }
}
