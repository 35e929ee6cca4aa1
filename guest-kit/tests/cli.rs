//! The `guest-kit` binary end to end.

use std::fs;
use std::process::{Command, Output};

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
    let out = guest_kit(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("`cr3=?`"));
}

#[test]
fn collect_writes_a_bundle_from_a_proc_tree() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    fs::create_dir_all(proc_root.join("7")).unwrap();
    fs::write(proc_root.join("7/stat"), "7 (sh) S 1 7 7 0 -1 4194304 0\n").unwrap();
    fs::write(
        proc_root.join("7/maps"),
        "00400000-00401000 r-xp 00000000 08:01 5 /bin/sh\n",
    )
    .unwrap();
    fs::write(
        proc_root.join("kallsyms"),
        "ffffffff81000000 T _text\nffffffff82000000 B _end\n",
    )
    .unwrap();
    let out_file = dir.path().join("out.bundle");
    let out = guest_kit(&[
        "collect",
        "--proc",
        proc_root.to_str().unwrap(),
        "--vm",
        "v1",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(&out_file).unwrap(),
        "gk-bundle 1\nvm v1\nproc 7 sh cr3=?\nmap 7 400000 401000 0 /bin/sh\n\
         kmap ffffffff81000000 ffffffff82000000 vmlinux\n\
         ksym ffffffff81000000 T _text\nksym ffffffff82000000 B _end\n"
    );
    assert_eq!(
        text(&out.stderr),
        "guest-kit: 1 processes, 1 mappings, 1 kernel maps, 2 kernel symbols (cr3 not collected: cr3=?)\n"
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
