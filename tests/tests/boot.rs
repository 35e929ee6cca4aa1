//! Boot the image in emulators and check what the console says.

use e2e_tests::{iso, timeout};
use xtask::machine::{Accel, Bochs, Exit, Machine, Qemu, RunOptions};

/// QEMU TCG offers no VMX: the hypervisor must say so and exit with status 3,
/// which isa-debug-exit turns into QEMU's exit status (3 << 1) | 1 = 7.
#[test]
fn tcg_no_vtx() {
    expect_no_vtx(Qemu::new(Accel::Tcg), "tcg_no_vtx", 1);
}

/// With two CPUs the error must still come out once, cleanly: the APs are started only
/// after VMX is on for the boot CPU.
#[test]
fn tcg_smp_no_vtx() {
    expect_no_vtx(Qemu::new(Accel::Tcg), "tcg_smp_no_vtx", 2);
}

/// The same through UEFI firmware (OVMF): the ISO's EFI boot path and GRUB's
/// multiboot2 loader for EFI.
#[test]
fn tcg_uefi_no_vtx() {
    expect_no_vtx(
        Qemu {
            accel: Accel::Tcg,
            uefi: true,
        },
        "tcg_uefi_no_vtx",
        1,
    );
}

fn expect_no_vtx(qemu: Qemu, label: &str, cpus: u32) {
    let opts = RunOptions {
        label: label.into(),
        cpus,
        timeout: timeout("HV_E2E_QEMU_TIMEOUT", 60),
        ..RunOptions::default()
    };
    let run = qemu.boot(&iso(), &opts).expect("QEMU could not be started");
    let fatal = run.find_line("hv: fatal: VMX unavailable:");
    let fatal_lines = run
        .lines()
        .iter()
        .filter(|l| l.starts_with("hv: fatal:"))
        .count();
    let explained = fatal
        .as_deref()
        .is_some_and(|l| !l["hv: fatal: VMX unavailable:".len()..].trim().is_empty());
    assert!(
        explained && fatal_lines == 1 && run.exit == Exit::Code(7),
        "expected a line `hv: fatal: VMX unavailable: <what is missing>` and QEMU exit \
         status 7 (debug-exit value 3), once; got line {fatal:?} ({fatal_lines} fatal lines), {}\n{}",
        run.exit,
        run.describe()
    );
    run.discard();
}

/// Bochs emulates VMX: the hypervisor must start (banner `hv: ...`) and stop
/// (`hv: stop status=N ...`).
#[test]
fn bochs_boots() {
    let opts = RunOptions {
        label: "bochs_boots".into(),
        timeout: timeout("HV_E2E_BOCHS_TIMEOUT", 120),
        ..RunOptions::default()
    };
    let run = Bochs::default()
        .boot(&iso(), &opts)
        .expect("Bochs could not be started");
    let lines = run.lines();
    let banner = lines.iter().find(|l| l.starts_with("hv: "));
    let stop = run.find_line("hv: stop status=");
    assert!(
        banner.is_some() && stop.is_some(),
        "expected a banner line `hv: ...` and a line `hv: stop status=...`; got banner \
         {banner:?}, stop {stop:?}\n{}",
        run.describe()
    );
    run.discard();
}
