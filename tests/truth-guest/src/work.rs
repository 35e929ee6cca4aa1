//! The work units, and why the shares are what they are.
//!
//! One *unit* is [`ITERS_PER_UNIT`] turns of a loop of [`INSNS_PER_ITER`] instructions
//! (three dependent `add`s, `dec`, `jnz`), written in `asm!` so the compiler cannot change
//! it. Each measured function is nothing but that loop run `units x ITERS_PER_UNIT` times,
//! plus a handful of instructions of prologue, so its instruction count is fixed by its
//! unit count. Per round the guest runs:
//!
//! | function      | where                 | units | share of busy instructions |
//! |---------------|-----------------------|-------|----------------------------|
//! | `alpha_heavy` | process 1 `alpha`, ring 3 | 6 | 60 % |
//! | `alpha_light` | process 1 `alpha`, ring 3 | 1 | 10 % |
//! | `beta_work`   | process 2 `beta`, ring 3  | 2 | 20 % |
//! | `kernel_work` | kernel, ring 0            | 1 | 10 % |
//!
//! Everything else in a round (two `int 0x80` round trips, two CR3 writes, copying two
//! 160-byte frames) is a few hundred instructions against 10 x 500 000: under 0.01 %.
//!
//! The functions are `#[unsafe(no_mangle)]` so the guest's symbol table names them plainly,
//! and `#[inline(never)]` so each keeps its own address range. On the host they are
//! ordinary functions: the tests run them and check the loop ran exactly as often as
//! claimed, and read the machine code back with `objdump`
//! (the guest ELF's too, through `run-qemu.sh`).

/// Loop turns in one unit.
pub const ITERS_PER_UNIT: u64 = 100_000;
/// Instructions in one loop turn (the `asm!` body of [`burn!`]).
pub const INSNS_PER_ITER: u64 = 5;
/// Instructions in one unit.
pub const INSNS_PER_UNIT: u64 = ITERS_PER_UNIT * INSNS_PER_ITER;

pub const ALPHA_HEAVY_UNITS: u64 = 6;
pub const ALPHA_LIGHT_UNITS: u64 = 1;
pub const BETA_WORK_UNITS: u64 = 2;
pub const KERNEL_WORK_UNITS: u64 = 1;

/// Each measured function and its units per round, in the order the truth line prints them.
pub const FUNCTIONS: [(&str, u64); 4] = [
    ("alpha_heavy", ALPHA_HEAVY_UNITS),
    ("alpha_light", ALPHA_LIGHT_UNITS),
    ("beta_work", BETA_WORK_UNITS),
    ("kernel_work", KERNEL_WORK_UNITS),
];

/// Units per round, all functions together.
pub const UNITS_PER_ROUND: u64 = {
    let mut sum = 0;
    let mut i = 0;
    while i < FUNCTIONS.len() {
        sum += FUNCTIONS[i].1;
        i += 1;
    }
    sum
};

/// A function's share of the busy instructions, in whole percent.
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

/// Seeds of the accumulators: they make the functions' code differ, so that no
/// identical-code folding merges two of them into one symbol.
pub const ALPHA_HEAVY_SEED: u64 = 1;
pub const ALPHA_LIGHT_SEED: u64 = 2;
pub const BETA_WORK_SEED: u64 = 3;
pub const KERNEL_WORK_SEED: u64 = 4;

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

/// Process `alpha`'s big function: 6 units.
#[inline(never)]
#[unsafe(no_mangle)]
#[cfg_attr(
    target_os = "none",
    unsafe(link_section = ".user_alpha.text.alpha_heavy")
)]
pub extern "C" fn alpha_heavy() -> u64 {
    const ITERS: u64 = ALPHA_HEAVY_UNITS * ITERS_PER_UNIT;
    burn!(ALPHA_HEAVY_SEED, ITERS)
}

/// Process `alpha`'s small function: 1 unit.
#[inline(never)]
#[unsafe(no_mangle)]
#[cfg_attr(
    target_os = "none",
    unsafe(link_section = ".user_alpha.text.alpha_light")
)]
pub extern "C" fn alpha_light() -> u64 {
    const ITERS: u64 = ALPHA_LIGHT_UNITS * ITERS_PER_UNIT;
    burn!(ALPHA_LIGHT_SEED, ITERS)
}

/// Process `beta`'s function: 2 units.
#[inline(never)]
#[unsafe(no_mangle)]
#[cfg_attr(target_os = "none", unsafe(link_section = ".user_beta.text.beta_work"))]
pub extern "C" fn beta_work() -> u64 {
    const ITERS: u64 = BETA_WORK_UNITS * ITERS_PER_UNIT;
    burn!(BETA_WORK_SEED, ITERS)
}

/// The kernel's own work, in ring 0 under the kernel's page tables: 1 unit.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn kernel_work() -> u64 {
    const ITERS: u64 = KERNEL_WORK_UNITS * ITERS_PER_UNIT;
    burn!(KERNEL_WORK_SEED, ITERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn shares_are_60_10_20_10() {
        let shares: Vec<(&str, u64)> = FUNCTIONS
            .iter()
            .map(|&(name, units)| (name, share_percent(units)))
            .collect();
        assert_eq!(
            shares,
            [
                ("alpha_heavy", 60),
                ("alpha_light", 10),
                ("beta_work", 20),
                ("kernel_work", 10)
            ]
        );
    }

    #[test]
    fn each_function_runs_its_loop_exactly_units_times_iters() {
        assert_eq!(alpha_heavy(), 1 + 600_000 * 600_002);
        assert_eq!(alpha_light(), checksum(ALPHA_LIGHT_SEED, ITERS_PER_UNIT));
        assert_eq!(beta_work(), checksum(BETA_WORK_SEED, 2 * ITERS_PER_UNIT));
        assert_eq!(kernel_work(), checksum(KERNEL_WORK_SEED, ITERS_PER_UNIT));
        // The accumulator distinguishes neighbouring turn counts.
        assert_ne!(checksum(0, ITERS_PER_UNIT), checksum(0, ITERS_PER_UNIT - 1));
    }

    /// Checks each function's machine code in `elf` with objdump: the loop body is the
    /// INSNS_PER_ITER instructions of `burn!`, and at most `max_outside` instructions lie
    /// outside it, so instructions per call = units x INSNS_PER_UNIT + max_outside.
    fn check_disassembly(elf: &std::path::Path, max_outside: u64) {
        for &(name, units) in &FUNCTIONS {
            let out = Command::new("objdump")
                .args(["-d", "--no-show-raw-insn", "-M", "intel"])
                .arg(format!("--disassemble={name}"))
                .arg(elf)
                .output()
                .expect("objdump (binutils) must be installed for this test");
            assert!(out.status.success(), "objdump failed on {}", elf.display());
            let text = String::from_utf8_lossy(&out.stdout);
            let insns: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("  ") && l.contains(":\t"))
                .map(|l| l.split_once(":\t").map_or("", |(_, i)| i.trim()))
                .collect();
            assert!(!insns.is_empty(), "no disassembly for {name}:\n{text}");
            let jnz = insns
                .iter()
                .position(|i| i.starts_with("jne") || i.starts_with("jnz"))
                .unwrap_or_else(|| panic!("{name}: no loop branch in {insns:?}"));
            let body = &insns[jnz + 1 - INSNS_PER_ITER as usize..=jnz];
            let mnemonics: Vec<&str> = body
                .iter()
                .map(|i| i.split_whitespace().next().unwrap_or(""))
                .collect();
            assert_eq!(
                mnemonics,
                ["add", "add", "add", "dec", "jne"],
                "{name}: loop body {body:?}"
            );
            let outside_loop = insns.len() as u64 - INSNS_PER_ITER;
            assert!(
                outside_loop <= max_outside,
                "{name}: {outside_loop} instructions outside the loop: {insns:?}"
            );
            // Overhead per call well under 0.01 % of the call's instructions.
            assert!(outside_loop * 10_000 < units * INSNS_PER_UNIT);
        }
    }

    /// This test binary's own copy of the functions (same `asm!` text as in the guest;
    /// unoptimised builds spill to the stack, hence the looser bound).
    #[test]
    fn host_machine_code_has_the_claimed_instruction_counts() {
        let max_outside = if cfg!(debug_assertions) { 40 } else { 8 };
        check_disassembly(&std::env::current_exe().expect("current_exe"), max_outside);
    }

    /// The built guest ELF, named by TRUTH_GUEST_ELF (run-qemu.sh sets it):
    /// `TRUTH_GUEST_ELF=... cargo test -p truth-guest -- --ignored`.
    #[test]
    #[ignore = "needs the guest ELF: run tests/truth-guest/run-qemu.sh"]
    fn guest_machine_code_has_the_claimed_instruction_counts() {
        let elf =
            std::env::var_os("TRUTH_GUEST_ELF").expect("set TRUTH_GUEST_ELF to the guest ELF");
        check_disassembly(std::path::Path::new(&elf), 8);
    }
}
