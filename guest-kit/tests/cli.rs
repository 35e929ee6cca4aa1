//! The `guest-kit` binary end to end.

use std::fs;
use std::process::{Command, Output};

use guest_kit::kernel::synth::{self, FakeKernel, FakeTask};

fn guest_kit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guest-kit"))
        .args(args)
        .output()
        .expect("run guest-kit")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let out = guest_kit(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "guest-kit: unknown command `frobnicate` (see `guest-kit --help`)\n"
    );
    let out = guest_kit(&["collect", "--out"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "guest-kit: `--out` needs a value (see `guest-kit --help`)\n"
    );
    let out = guest_kit(&["collect", "--kallsyms", "--kallsyms"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "guest-kit: `--kallsyms` given twice (see `guest-kit --help`)\n"
    );
    let out = guest_kit(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(
        help.contains("`cr3=?`") && help.contains("--kallsyms"),
        "{help}"
    );
}

/// A /proc tree with one shell (pid 7) over the synthetic kernel of
/// `guest_kit::kernel::synth` (sh's page tables at physical 0x80000).
fn proc_tree(dir: &std::path::Path) -> std::path::PathBuf {
    let proc_root = dir.join("proc");
    fs::create_dir_all(proc_root.join("7")).unwrap();
    fs::create_dir_all(proc_root.join("sys/kernel")).unwrap();
    fs::write(proc_root.join("7/stat"), "7 (sh) S 1 7 7 0 -1 4194304 0\n").unwrap();
    fs::write(
        proc_root.join("7/maps"),
        "00400000-00401000 r-xp 00000000 08:01 5 /bin/sh\n",
    )
    .unwrap();
    fs::write(proc_root.join("sys/kernel/osrelease"), "6.1.0-57-amd64\n").unwrap();
    fs::write(proc_root.join("kallsyms"), FakeKernel::kallsyms()).unwrap();
    let mut k = FakeKernel::new();
    let mm = k.add_mm(0x8_0000);
    k.add_task(&FakeTask {
        pid: 7,
        comm: "sh",
        kthread: false,
        mm,
        active_mm: mm,
    });
    fs::write(proc_root.join("kcore"), k.kcore()).unwrap();
    fs::write(dir.join("vmlinux.btf"), synth::btf()).unwrap();
    proc_root
}

#[test]
fn collect_writes_a_bundle_with_cr3_and_kernel_line() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = proc_tree(dir.path());
    let out_file = dir.path().join("out.bundle");
    let btf = dir.path().join("vmlinux.btf");
    let out = guest_kit(&[
        "collect",
        "--proc",
        proc_root.to_str().unwrap(),
        "--btf",
        btf.to_str().unwrap(),
        "--vm",
        "v1",
        "--out",
        out_file.to_str().unwrap(),
        // The guest's /bin/sh is not this machine's.
        "--root",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(&out_file).unwrap(),
        "gk-bundle 2\nvm v1\nkernel 6.1.0-57-amd64 text=0xffffffff9a000000\n\
         proc 0 [kernel] cr3=0x3a004000\nproc 7 sh cr3=0x80000\n\
         map 7 400000 401000 0 /bin/sh\n\
         kmap ffffffff9a000000 ffffffff9a010000 vmlinux\n"
    );
    assert_eq!(
        text(&out.stderr),
        "guest-kit: 2 proc lines (2 with cr3), 1 mappings, 1 kernel maps, 0 kernel symbols, \
         kernel 6.1.0-57-amd64 text=0xffffffff9a000000\n"
    );

    // --kallsyms adds the ksym lines; without BTF the CR3s are unknown, with a warning.
    let out = guest_kit(&[
        "collect",
        "--proc",
        proc_root.to_str().unwrap(),
        "--btf",
        dir.path().join("missing").to_str().unwrap(),
        "--vm",
        "v1",
        "--kallsyms",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bundle = text(&out.stdout);
    assert!(bundle.contains("\nproc 7 sh cr3=?\n"), "{bundle}");
    assert!(
        bundle.contains("\nksym ffffffff9a000000 T _text\n"),
        "{bundle}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "guest-kit: warning: cr3 not collected, every proc line says cr3=?: cannot read "
        ),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("guest-kit: 1 proc lines (0 with cr3), 1 mappings, 1 kernel maps, 9 kernel symbols, kernel 6.1.0-57-amd64 text=0xffffffff9a000000\n"),
        "{stderr}"
    );
}

#[test]
fn extract_writes_one_bundle_per_vm_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.txt");
    fs::write(
        &console,
        "hv: start\n[t1] @gk gk-bundle 1\n[t1] @gk vm t1\n[t1] @gk proc 1 alpha cr3=0x184000\n\
         [t1] truth busy_tsc=3 idle_tsc=1 a=60 b=40\n[t2] @gk gk-bundle 1\n[t2] @gk proc 1 x\n",
    )
    .unwrap();
    let out = guest_kit(&[
        "extract",
        console.to_str().unwrap(),
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "guest-kit: error: t2: line 2: proc has no `cr3=` (write `cr3=?` when it is unknown)\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("t1.bundle")).unwrap(),
        "gk-bundle 1\nvm t1\nproc 1 alpha cr3=0x184000\n"
    );
    assert!(!dir.path().join("t2.bundle").exists());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("t1: truth: idle 25.00 % of the run"),
        "{stdout}"
    );
}

#[test]
fn console_prefixes_every_line_and_watch_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b");
    fs::write(&file, "gk-bundle 1\nvm v\n").unwrap();
    let out = guest_kit(&["console", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "@gk gk-bundle 1\n@gk vm v\n");
    let err = text(&out.stderr);
    assert!(
        err.starts_with("guest-kit: sent 25 bytes in 2 lines through the console in ")
            && (err.ends_with(" ms (host TSC)\n") || err.ends_with(" ms (wall clock)\n")),
        "{err}"
    );
    let out = guest_kit(&["watch", "--vm", "v"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "guest-kit: `watch` needs --out FILE (see `guest-kit --help`)\n"
    );
    let out = guest_kit(&["watch", "--out", "x", "--seconds", "1", "--until-file", "y"]);
    assert_eq!(out.status.code(), Some(2));
    let out = guest_kit(&["watch", "--out", "x", "--interval-ms", "0"]);
    assert_eq!(out.status.code(), Some(2));
    // Without a kcore (this is no guest), watch fails with one line.
    let missing = dir.path().join("proc");
    let out = guest_kit(&[
        "watch",
        "--out",
        "x",
        "--seconds",
        "0",
        "--proc",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn send_checks_the_bundle_and_the_hypervisor_before_any_hypercall() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b");
    fs::write(&file, "gk-bundle 1\nvm v").unwrap();
    // This is no guest of the profiling hypervisor: refused before any VMCALL (which
    // would be SIGILL here), with one line.
    let out = guest_kit(&["send", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "guest-kit: error: not under the profiling hypervisor (CPUID 0x40000000 says `"
        ) && err.lines().count() == 1,
        "{err}"
    );
    fs::write(&file, "not a bundle\n").unwrap();
    let out = guest_kit(&["send", "--kind", "bundle", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a guest bundle: line 1:"),
        "{}",
        text(&out.stderr)
    );
    let out = guest_kit(&["send", "--kind", "x", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = guest_kit(&["send"]);
    assert_eq!(out.status.code(), Some(2));
}
