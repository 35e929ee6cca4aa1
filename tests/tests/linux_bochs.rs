//! Debian's stock kernel under the hypervisor in Bochs (issue 7): the PVH vmlinux runs the
//! workload and powers itself off through ACPI S5, and the unified profile names the
//! workload's hot functions at their instruction shares and the kernel's functions; the
//! bzImage boots through the 64-bit boot protocol; a Linux guest that triple-faults stops
//! alone while another VM runs to its end. The guest's bundle reaches the host through the
//! hypercall channel (`guest-kit send`, into the sample log) byte for byte as through the
//! console.
//!
//! Images: `cargo xtask image --scenario linux|linux-bzimage|linux-triplefault` (which
//! `cargo xtask test` builds); kernel files from `cargo xtask kernel`.

use std::path::{Path, PathBuf};

use analyzer::report::{self, Level, Report, RowKind, Section};
use e2e_tests::timeout;
use xtask::initramfs::{Init, packed_elves};
use xtask::machine::{Bochs, Machine, RunOptions, RunResult};

/// Percentage points a hot function's share may differ from its instruction share.
const TOLERANCE: f64 = 3.0;
/// The workload's hot functions and their shares of its instructions, by construction
/// (tests/linux-workload).
const HOT: [(&str, f64); 3] = [("hot_alpha", 50.0), ("hot_beta", 30.0), ("hot_gamma", 20.0)];

fn scenario_iso(name: &str) -> PathBuf {
    let iso = xtask::paths::scenario_iso(name);
    assert!(
        iso.is_file(),
        "boot image {} does not exist: run `cargo xtask image --scenario {name}`",
        iso.display()
    );
    iso
}

fn boot(scenario: &str, label: &str) -> RunResult {
    let opts = RunOptions {
        label: label.into(),
        timeout: timeout("HV_E2E_LINUX_TIMEOUT", 420),
        ..RunOptions::default()
    };
    Bochs::default()
        .boot(&scenario_iso(scenario), &opts)
        .expect("Bochs could not be started")
}

fn assert_line(run: &RunResult, line: &str) {
    assert!(
        run.find_line(line).is_some(),
        "no console line starting `{line}`\n{}",
        run.describe()
    );
}

/// Writes the run's log and the guest's bundle next to the emulator files.
fn artefacts(run: &RunResult, vm: &str) -> (PathBuf, PathBuf) {
    let console = run.lines().join("\n");
    let bundle_text = guest_kit::bundle::bundles_from_console(&console)
        .remove(vm)
        .unwrap_or_else(|| panic!("no `[{vm}] @gk` bundle lines\n{}", run.describe()));
    let log = run.run_dir.join("samples.vmlog");
    let bundle = run.run_dir.join(format!("{vm}.bundle"));
    std::fs::write(&log, &run.log).expect("write samples.vmlog");
    std::fs::write(&bundle, bundle_text).expect("write the bundle");
    (log, bundle)
}

/// The bundle VM `vm` delivered through the hypercall channel: the data of its
/// `GuestData` records of kind 1 in `seq` order, which must run 0, 1, 2... without a gap.
fn channel_bundle(run: &RunResult, vm: &str) -> String {
    let mut id = None;
    let mut records = Vec::new();
    let mut errors = 0;
    for item in vmlog::Decoder::from_slice(&run.log) {
        match item {
            Ok(vmlog::Item::Vm(v)) if v.name == vm => id = Some(v.id),
            Ok(vmlog::Item::GuestData {
                vm,
                kind: vmlog::GUEST_DATA_BUNDLE,
                seq,
                data,
            }) => records.push((vm, seq, data)),
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    assert_eq!(errors, 0, "log decoding errors\n{}", run.describe());
    let id = id.unwrap_or_else(|| panic!("no VM `{vm}` in the log\n{}", run.describe()));
    let mut mine: Vec<(u32, Vec<u8>)> = records
        .into_iter()
        .filter(|(v, _, _)| *v == id)
        .map(|(_, seq, data)| (seq, data))
        .collect();
    mine.sort_by_key(|(seq, _)| *seq);
    let seqs: Vec<u32> = mine.iter().map(|(seq, _)| *seq).collect();
    assert!(
        !seqs.is_empty(),
        "no GuestData records of VM `{vm}` in the log\n{}",
        run.describe()
    );
    assert_eq!(
        seqs,
        (0..seqs.len() as u32).collect::<Vec<_>>(),
        "GuestData records of VM `{vm}` missing"
    );
    let bytes: Vec<u8> = mine.into_iter().flat_map(|(_, data)| data).collect();
    String::from_utf8(bytes).expect("the channel bundle is UTF-8")
}

fn hypervisor_elf(iso: &Path) -> PathBuf {
    iso.parent()
        .unwrap_or(Path::new("."))
        .join("iso/boot/hypervisor.elf")
}

fn analyse(log: &Path, bundle: &Path, iso: &Path) -> Report {
    let kernel = xtask::paths::kernel_dir();
    let initrd =
        xtask::paths::initramfs_dir().join(Init::Workload { vm: "linux".into() }.file_name());
    let release = xtask::kernel::KernelFiles::cached(&kernel).map(|k| k.release);
    let opts = report::Options {
        log: log.to_path_buf(),
        bundles: vec![bundle.to_path_buf()],
        elfs: packed_elves(&initrd),
        hv_elf: Some(hypervisor_elf(iso)),
        kernel_map: Some(kernel.join("System.map")),
        kernel_release: release,
        level: Level::Both,
        top: 0,
        ..report::Options::default()
    };
    report::build(&opts).unwrap_or_else(|e| panic!("analyzer failed: {}", e.0))
}

fn guest<'a>(r: &'a Report, vm: &str) -> &'a Section {
    r.guests
        .iter()
        .find(|s| s.vm.as_deref() == Some(vm) && s.vcpu.is_none())
        .unwrap_or_else(|| {
            panic!(
                "no guest-level section for VM {vm}:\n{}",
                report::to_text(r)
            )
        })
}

fn samples_of(s: &Section, function: &str) -> u64 {
    s.rows
        .iter()
        .filter(|r| r.function == function)
        .map(|r| r.samples)
        .sum()
}

#[test]
fn bochs_linux_pvh_runs_the_workload_and_profiles_it() {
    let run = boot("linux", "linux_pvh");
    assert_line(&run, "[linux] init: start");
    assert_line(&run, "[linux] workload w1 done");
    assert_line(&run, "hv: vm linux stopped: powered off (ACPI S5)");
    let stop = run.find_line("hv: stop status=");
    assert!(
        stop.as_deref()
            .is_some_and(|l| l.starts_with("hv: stop status=0 ")),
        "the hypervisor did not stop cleanly: {stop:?}\n{}",
        run.describe()
    );
    let (log, bundle) = artefacts(&run, "linux");
    let bundle_text = std::fs::read_to_string(&bundle).unwrap();
    assert!(
        !bundle_text.contains("cr3=?"),
        "a process without its CR3 in the bundle:\n{bundle_text}"
    );
    // The bundle also went through the hypercall channel (`guest-kit send`), without an
    // error, and the log holds it byte for byte as the console does.
    let lines = run.lines();
    let sent: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("[linux] guest-kit: sent "))
        .collect();
    for l in &sent {
        eprintln!("{l}");
    }
    assert!(
        sent.iter()
            .any(|l| l.contains(" through the hypercall channel in ")),
        "no `guest-kit: sent ... through the hypercall channel` line\n{}",
        run.describe()
    );
    let errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("guest-kit: error") || l.contains("guest-kit send failed"))
        .collect();
    assert!(
        errors.is_empty(),
        "guest-kit errors: {errors:?}\n{}",
        run.describe()
    );
    let from_log = channel_bundle(&run, "linux");
    assert_eq!(
        from_log.trim_end_matches('\n'),
        bundle_text.trim_end_matches('\n'),
        "the bundle in the log differs from the console's"
    );
    let iso = scenario_iso("linux");
    let r = analyse(&log, &bundle, &iso);
    let ctx = report::to_text(&r);
    let g = guest(&r, "linux");
    // The workload's hot functions, by name, at their shares of its instructions.
    let hot: Vec<u64> = HOT.iter().map(|(f, _)| samples_of(g, f)).collect();
    let total: u64 = hot.iter().sum();
    assert!(
        total >= 1000,
        "only {total} samples in the hot functions\n{ctx}"
    );
    for ((name, truth), n) in HOT.iter().zip(&hot) {
        let share = 100.0 * *n as f64 / total as f64;
        assert!(
            (share - truth).abs() <= TOLERANCE,
            "{name}: {share:.2} % of the hot samples, truth {truth} % (+-{TOLERANCE})\n{ctx}"
        );
        let row = g.rows.iter().find(|r| r.function == *name).unwrap();
        assert!(
            row.module.starts_with("workload("),
            "{name} attributed to the workload process, not {}\n{ctx}",
            row.module
        );
    }
    // Kernel functions by name, from System.map relocated by the guest's _text.
    let kernel_rows: Vec<&str> = g
        .rows
        .iter()
        .filter(|r| r.module == "vmlinux" && r.kind == RowKind::Function)
        .map(|r| r.function.as_str())
        .collect();
    assert!(
        kernel_rows.len() >= 50,
        "only {} named kernel functions\n{ctx}",
        kernel_rows.len()
    );
    assert!(
        g.shares.iter().any(|s| s.name == "OS" && s.samples > 0),
        "no kernel share\n{ctx}"
    );
    // At host level the VM is one line, and the hypervisor's own share is small.
    let vm_row = r
        .host
        .as_ref()
        .and_then(|h| h.rows.iter().find(|row| row.function == "[linux]"));
    assert!(
        vm_row.is_some_and(|row| row.percent > 80.0),
        "host level\n{ctx}"
    );
}

#[test]
fn bochs_linux_bzimage_boots_through_the_64_bit_protocol() {
    let run = boot("linux-bzimage", "linux_bzimage");
    assert_line(&run, "hv: vm linux: Linux BzImage kernel");
    assert_line(&run, "[linux] init: start");
    assert_line(&run, "[linux] workload w1 done");
    assert_line(&run, "hv: vm linux stopped: powered off (ACPI S5)");
    assert_line(&run, "hv: stop status=0 ");
}

#[test]
fn bochs_linux_triple_fault_stops_that_vm_alone() {
    let run = boot("linux-triplefault", "linux_triplefault");
    // Only the start of the line: the kernel's "reboot: Restarting system" can land in
    // the middle of it on the shared console.
    assert_line(&run, "[linux] init: provoking");
    assert_line(&run, "hv: vm linux stopped: triple fault at rip ");
    assert_line(&run, "hv: vm linux vcpu 0 regs: rax=");
    assert_line(&run, "hv: vm linux vcpu 0 state: rip=");
    // The other VM runs to its own end, and the hypervisor to its normal stop.
    assert_line(&run, "hv: vm truth stopped: status=0");
    assert_line(&run, "hv: stop status=0 ");
    // The log it exported is whole, ends with its End record, and the analyzer reads it.
    let (mut samples, mut errors, mut end) = (0usize, 0usize, false);
    for item in vmlog::Decoder::from_slice(&run.log) {
        match item {
            Ok(vmlog::Item::Samples { samples: s, .. }) => samples += s.len(),
            Ok(vmlog::Item::End(_)) => end = true,
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    assert_eq!(errors, 0, "damaged frames in the log\n{}", run.describe());
    assert!(end, "no End record\n{}", run.describe());
    assert!(samples > 1000, "{samples} samples\n{}", run.describe());
    let log = run.run_dir.join("samples.vmlog");
    std::fs::write(&log, &run.log).expect("write samples.vmlog");
    let text = analyzer::check::run(&log).unwrap_or_else(|e| panic!("analyzer check: {}", e.0));
    assert!(text.contains("samples"), "{text}");
}

/// The PID `init` printed for `key` in its line `init: pids a=N b=N c=N` or
/// `init: pid short=N`.
fn pid_of(run: &RunResult, key: &str) -> u32 {
    let lines = run.lines();
    lines
        .iter()
        .filter(|l| l.starts_with("[linux] init: pid"))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| {
            w.strip_prefix(&format!("{key}="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no PID for `{key}` on the console\n{}", run.describe()))
}

fn module_samples(s: &Section, module: &str) -> u64 {
    s.rows
        .iter()
        .filter(|r| r.module == module)
        .map(|r| r.samples)
        .sum()
}

/// Issue 8: two instances of one program and a different one, plus a short-lived process,
/// named `comm(pid)` from the CR3 maps `guest-kit watch` recorded over time.
#[test]
fn bochs_linux_processes_are_named_and_told_apart() {
    let run = boot("linux-procs", "linux_procs");
    assert_line(&run, "hv: vm linux stopped: powered off (ACPI S5)");
    let (a, b, c, short) = (
        pid_of(&run, "a"),
        pid_of(&run, "b"),
        pid_of(&run, "c"),
        pid_of(&run, "short"),
    );
    let (log, bundle) = artefacts(&run, "linux");
    let iso = scenario_iso("linux-procs");
    let kernel = xtask::paths::kernel_dir();
    let initrd = xtask::paths::initramfs_dir().join(Init::Procs { vm: "linux".into() }.file_name());
    let opts = report::Options {
        log,
        bundles: vec![bundle],
        elfs: packed_elves(&initrd),
        hv_elf: Some(hypervisor_elf(&iso)),
        kernel_map: Some(kernel.join("System.map")),
        kernel_release: xtask::kernel::KernelFiles::cached(&kernel).map(|k| k.release),
        level: Level::Guest,
        top: 0,
        ..report::Options::default()
    };
    let r = report::build(&opts).unwrap_or_else(|e| panic!("analyzer failed: {}", e.0));
    let ctx = report::to_text(&r);
    let g = guest(&r, "linux");
    let (na, nb) = (
        module_samples(g, &format!("workload({a})")),
        module_samples(g, &format!("workload({b})")),
    );
    let nc = module_samples(g, &format!("spinner({c})"));
    let ns = module_samples(g, &format!("workload({short})"));
    assert!(
        na > 500 && nb > 500 && nc > 500,
        "a={na} b={nb} c={nc}\n{ctx}"
    );
    let split = 100.0 * na as f64 / (na + nb) as f64;
    assert!(
        (split - 50.0).abs() <= TOLERANCE,
        "workload({a}) has {split:.2} % of the two identical processes' samples\n{ctx}"
    );
    assert!(
        ns > 0,
        "the short-lived process workload({short}) got no samples\n{ctx}"
    );
    // Their hot functions by name, each in its own process.
    for pid in [a, b, short] {
        let module = format!("workload({pid})");
        assert!(
            g.rows
                .iter()
                .any(|row| row.function == "hot_alpha" && row.module == module),
            "no hot_alpha row for {module}\n{ctx}"
        );
    }
}
