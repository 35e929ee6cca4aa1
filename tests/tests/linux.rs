//! Control run of the Linux guest without the hypervisor: QEMU TCG's `microvm` boots the
//! same `vmlinux` (PVH entry) and workload initramfs as the `linux` scenario. If this
//! fails, the guest image is broken; if it passes and the hypervisor's run does not, the
//! hypervisor is.
//!
//! The kernel comes from `$HV_KERNEL_DIR` (default `build/kernel`, `cargo xtask kernel`),
//! the initramfs from `$HV_LINUX_INITRD` (default `build/initramfs/workload-linux.cpio`,
//! `cargo xtask image --scenario linux`); `cargo xtask test` sets both.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::timeout;
use xtask::image::LINUX_CMDLINE;
use xtask::initramfs::Init;

/// QEMU's `microvm` as a plain PC stand-in (notes: shared/reference/linux-guest-notes.md):
/// hardware-reduced ACPI without PIT, PIC, RTC or PCI, an IO-APIC and COM1.
const MICROVM: &str = "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=on";

fn vmlinux() -> PathBuf {
    let path = xtask::paths::kernel_dir().join("vmlinux");
    assert!(
        path.is_file(),
        "kernel {} does not exist: run `cargo xtask kernel` (or set {} to a directory \
         holding vmlinux)",
        path.display(),
        xtask::KERNEL_DIR_ENV
    );
    path
}

fn initrd() -> PathBuf {
    let path = std::env::var_os(xtask::LINUX_INITRD_ENV)
        .map(|p| xtask::paths::root().join(p))
        .unwrap_or_else(|| {
            xtask::paths::initramfs_dir().join(Init::Workload { vm: "linux".into() }.file_name())
        });
    assert!(
        path.is_file(),
        "initramfs {} does not exist: run `cargo xtask image --scenario linux` (or set {}; \
         `cargo xtask test` sets it)",
        path.display(),
        xtask::LINUX_INITRD_ENV
    );
    path
}

/// The host's TSC rate in kHz, measured against the monotonic clock. Under TCG the
/// guest reads the host's TSC, and without PIT or CPUID 0x15 Linux can only learn its
/// rate from `tsc_early_khz=`.
fn host_tsc_khz() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (user mode may: CR4.TSD is clear on
    // Linux); no memory is touched.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, t1) = (tsc(), Instant::now());
    let khz = (c1 - c0) as f64 / (t1 - t0).as_secs_f64() / 1000.0;
    khz.round() as u64
}

/// The console's lines, carriage returns dropped.
fn lines(console: &str) -> Vec<&str> {
    console.lines().map(|l| l.trim_end_matches('\r')).collect()
}

#[test]
fn qemu_microvm_boots_the_linux_guest_and_powers_off() {
    let (kernel, initrd) = (vmlinux(), initrd());
    let limit = timeout("HV_E2E_QEMU_TIMEOUT", 120);
    let append = format!("{LINUX_CMDLINE} tsc_early_khz={}", host_tsc_khz());
    let dir = xtask::machine::new_run_dir("qemu-microvm", "linux_control").expect("run dir");
    let console_path = dir.join("console.txt");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", MICROVM, "-cpu", "max", "-m", "256"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(&append);
    std::fs::write(
        dir.join("command.txt"),
        format!("{}\n", xtask::cmd::display(&qemu)),
    )
    .expect("write command.txt");
    let out = File::create(&console_path).expect("create console.txt");
    let err = out.try_clone().expect("dup console.txt");
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("cannot start qemu-system-x86_64 (install qemu-system-x86: `cargo xtask deps`)");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for QEMU") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = start.elapsed();
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let lines = lines(&console);
    let describe = || {
        let tail: Vec<&str> = lines.iter().rev().take(30).rev().copied().collect();
        format!(
            "QEMU {} after {:.1} s\n  command: {}\n  console: {}\n  last console lines:\n    {}",
            match status {
                Some(s) => format!("exited ({s})"),
                None => "was killed at the timeout".into(),
            },
            wall.as_secs_f64(),
            dir.join("command.txt").display(),
            console_path.display(),
            tail.join("\n    ")
        )
    };

    let done = lines.iter().find(|l| l.starts_with("workload w1 done "));
    let rounds = done
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("rounds=")))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        lines.contains(&"init: start"),
        "no `init: start`: the kernel did not run /init\n{}",
        describe()
    );
    assert!(
        done.is_some_and(|l| l.ends_with(" alpha=50 beta=30 gamma=20"))
            && rounds.is_some_and(|n| n > 0),
        "no line `workload w1 done rounds=N alpha=50 beta=30 gamma=20` with N > 0 (got \
         {done:?})\n{}",
        describe()
    );
    let bundles = guest_kit::bundle::bundles_from_console(&lines.join("\n"));
    let text = bundles
        .get("")
        .unwrap_or_else(|| panic!("no `@gk ` bundle lines\n{}", describe()));
    let bundle = guest_kit::Bundle::parse(text)
        .unwrap_or_else(|e| panic!("the bundle does not parse: {e}\n{text}\n{}", describe()));
    assert_eq!(bundle.vm, "linux", "bundle's vm line\n{text}");
    assert!(
        bundle.procs.iter().any(|p| p.comm == "workload"),
        "the bundle has no `proc` line for the workload (collected after it ended?)\n{text}\n{}",
        describe()
    );
    assert!(
        lines.contains(&"init: done"),
        "no `init: done`\n{}",
        describe()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "QEMU did not power off by itself within {} s (`poweroff -f`)\n{}",
        limit.as_secs(),
        describe()
    );
    println!(
        "linux control run: {:.1} s wall, {} workload rounds, bundle with {} proc lines",
        wall.as_secs_f64(),
        rounds.unwrap_or(0),
        bundle.procs.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
