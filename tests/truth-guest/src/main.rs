//! The ground-truth guest: a tiny 64-bit kernel whose profile is known before it runs.
//!
//! It is entered PVH-style (32-bit protected mode, paging off, `EBX` = `hvm_start_info`),
//! sets up its GDT/TSS/IDT and 4-level page tables, enters long mode and then, for
//! `gk.rounds` rounds, runs process `alpha` (ring 3, CR3 0x184000: `alpha_heavy` 6 units,
//! `alpha_light` 1 unit), process `beta` (ring 3, CR3 0x188000: `beta_work` 2 units) and
//! `kernel_work` (ring 0, CR3 0x180000: 1 unit). A unit is 500 000 instructions, so the
//! busy instructions split 60/10/20/10 % ([`work`] explains the arithmetic). Then it idles
//! in HLT (one-shot VMCALL timers) until idle is `gk.idle_pct` % of the run, prints its
//! guest bundle (`@gk ...`) and a `truth ...` line, and stops with VMCALL STOP.
//!
//! Without a hypervisor (VMCALL raises #UD) it busy-waits instead of halting and powers
//! off through QEMU's isa-debug-exit / Bochs' 0x8900 port, so it can be booted directly
//! with `qemu-system-x86_64 -kernel`. See README.md.
//!
//! On the host this is a no-op binary; `cargo test -p truth-guest` checks the work units,
//! the command-line parser and the printed bundle.
#![cfg_attr(target_os = "none", no_std, no_main)]

// On the host only the tests use these.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod config;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod report;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod work;

#[cfg(target_os = "none")]
mod guest;

#[cfg(not(target_os = "none"))]
fn main() {
    println!("truth-guest is a bare-metal guest; build it with");
    println!("  cargo build -p truth-guest --target x86_64-unknown-none --release");
    for (name, units) in work::FUNCTIONS {
        println!(
            "  {name:<12} {units} units = {:>2} % of busy instructions",
            work::share_percent(units)
        );
    }
}
