//! Golden tests of `analyzer report` / `check` on synthetic logs with known shares.

use std::path::PathBuf;
use std::process::Command;

use analyzer::report::{self, Level, Options};
use analyzer::synth::{elf, guest, host};
use vmlog::{
    ExitReason, FORMAT_MAJOR, FORMAT_MINOR, GuestData, Header, LogWriter, Record, Sample,
    SamplingSource, VcpuState, VmInfo,
};

const HZ: u64 = 1_000_000;
const PERIOD: u64 = 1000;
const START: u64 = 1_000_000;
const KERNEL: u64 = 0xffff_ffff_8100_0000;
const PROG_MAP: u64 = 0x5555_0000_0000;
const HV_BASE: u64 = 0x20_0000;

fn dir(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn put(d: &std::path::Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn vm(id: u16, name: &str, vcpus: u16) -> VmInfo<'_> {
    VmInfo { id, name, vcpus }
}

fn slot(i: u64) -> u64 {
    START + i * PERIOD
}

/// A writer that has written the golden header for these VMs and pCPUs.
fn writer(vms: &[VmInfo<'_>], pcpus: &[Vec<Sample>]) -> LogWriter {
    let mut w = LogWriter::new();
    let h = Header {
        format_major: FORMAT_MAJOR,
        format_minor: FORMAT_MINOR,
        hv_build_id: "golden",
        tsc_hz: HZ,
        source: SamplingSource::LapicTimer,
        period_tsc: PERIOD,
        pcpus: pcpus.len() as u16,
        vm_count: vms.len() as u16,
        start_tsc: START,
    };
    w.header(&h, vms).unwrap();
    w
}

fn log(vms: &[VmInfo<'_>], pcpus: &[Vec<Sample>]) -> Vec<u8> {
    let mut w = writer(vms, pcpus);
    for (p, s) in pcpus.iter().enumerate() {
        w.samples(p as u16, PERIOD, s).unwrap();
    }
    let end = pcpus.iter().flatten().map(|s| s.tsc).max().unwrap_or(START);
    w.end(end, 0).unwrap();
    w.into_bytes()
}

/// The tables of the text report: what follows its `#` summary lines (which must
/// come first, as `report::summary_text` renders them).
fn tables(r: &report::Report) -> String {
    let text = report::to_text(r);
    let head = report::summary_text(&r.summary);
    text.strip_prefix(head.as_str())
        .unwrap_or_else(|| panic!("no summary lines first:\n{text}"))
        .to_string()
}

fn opts(log: PathBuf) -> Options {
    Options {
        log,
        top: 25,
        level: Level::Both,
        ..Default::default()
    }
}

/// Scenario A: one VM, one vCPU, one pCPU; 50 alpha, 20 beta, 10 kernel,
/// 10 halted in the hypervisor, 10 WRMSR exit handling.
fn scenario_a(d: &std::path::Path) -> Options {
    scenario_a_n(d, 100)
}

/// The bundle of scenario A's VM `web`.
const BUNDLE_A: &str = "gk-bundle 1\nvm web\nproc 100 prog cr3=0x1234000\n\
    map 100 555500000000 555500003000 0 /usr/bin/prog\n\
    kmap ffffffff81000000 ffffffff82000000 vmlinux\n\
    ksym ffffffff81000000 T do_syscall\nksym ffffffff81000100 T schedule\n";

fn scenario_a_n(d: &std::path::Path, n: u64) -> Options {
    let s = samples_a(n);
    let log = put(d, "a.vmlog", &log(&[vm(0, "web", 1)], &[s]));
    let mut o = opts(log);
    o.bundles.push(put(d, "web.bundle", BUNDLE_A.as_bytes()));
    symbols_a(d, o)
}

/// Scenario A's ELF files (the program and the hypervisor).
fn symbols_a(d: &std::path::Path, mut o: Options) -> Options {
    o.elfs.push(put(
        d,
        "prog",
        &elf(0, true, &[("alpha", 0, 0x100), ("beta", 0x100, 0x100)]),
    ));
    o.hv_elf = Some(put(
        d,
        "hypervisor.elf",
        &elf(
            HV_BASE,
            false,
            &[("hv_idle", 0, 0x80), ("handle_wrmsr", 0x80, 0x80)],
        ),
    ));
    o
}

/// Scenario A's samples.
fn samples_a(n: u64) -> Vec<Sample> {
    let mut s = Vec::new();
    for i in 0..n {
        let t = slot(i + 1);
        let cr3 = 0x0123_4000;
        let e = ExitReason::EXTERNAL_INTERRUPT;
        s.push(match i % 10 {
            0..=4 => guest(t, 0, 0, cr3, 3, PROG_MAP + 0x1010 + i % 64, e),
            5 | 6 => guest(t, 0, 0, cr3, 3, PROG_MAP + 0x1120, e),
            7 => guest(t, 0, 0, cr3, 0, KERNEL + 0x20, e),
            8 => host(t, HV_BASE + 0x1010, Some((0, 0)), VcpuState::Halted),
            _ => host(
                t,
                HV_BASE + 0x1090,
                Some((0, 0)),
                VcpuState::ExitHandling {
                    reason: ExitReason::WRMSR,
                },
            ),
        });
    }
    s
}

#[test]
fn host_and_guest_tables_of_a_known_split() {
    let d = dir("split");
    let r = report::build(&scenario_a(&d)).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    let text = report::to_text(&r);
    assert_eq!(
        text,
        "\
# Samples: 100 read, 100 expected (end record)
# Source: LAPIC timer, 1000.0 Hz per pCPU
# Time span: 0.099 s, pCPUs: 1
# Lost: 0 frames (0 sequence gaps), 0 samples dropped
# Warnings: 0
#
== Host level ==
Total samples:100   OS:USER:VM = 20.00%:0.00%:80.00%
 Samples  %Ratio  Function              Module
      80   80.00  [web]                 (VM0)
      10   10.00  handle_wrmsr          hypervisor
      10   10.00  hv_idle               hypervisor

== Guest level: web (VM0) ==
Total samples:100   OS:USER:IDLE:steal = 10.00%:70.00%:10.00%:10.00%
 Samples  %Ratio  Function              Module
      50   50.00  alpha                 prog(100)
      20   20.00  beta                  prog(100)
      10   10.00  [idle]                (halt_exit)
      10   10.00  [steal]               (outside)
      10   10.00  do_syscall            vmlinux
"
    );
}

#[test]
fn json_shape_is_stable() {
    let d = dir("json");
    let r = report::build(&scenario_a(&d)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&report::to_json(&r)).unwrap();
    assert_eq!(v["report_version"], 1);
    assert_eq!(v["log"]["samples"], 100);
    assert_eq!(v["log"]["period_tsc"], 1000);
    assert_eq!(v["log"]["hv_build_id"], "golden");
    assert_eq!(v["host"]["total"], 100);
    assert_eq!(
        v["host"]["shares"][2],
        serde_json::json!({"name": "VM", "samples": 80, "percent": 80.0})
    );
    assert_eq!(
        v["host"]["rows"][0],
        serde_json::json!({"samples": 80, "percent": 80.0, "function": "[web]", "module": "(VM0)", "kind": "vm"})
    );
    let g = &v["guests"][0];
    assert_eq!(g["level"], "guest");
    assert_eq!(g["vm"], "web");
    assert_eq!(g["vm_id"], 0);
    assert_eq!(g["vcpu"], serde_json::Value::Null);
    assert_eq!(
        g["rows"][0],
        serde_json::json!({"samples": 50, "percent": 50.0, "function": "alpha", "module": "prog(100)", "kind": "function"})
    );
    assert_eq!(g["rows"][2]["kind"], "idle");
    assert_eq!(g["rows"][3]["kind"], "steal");
    assert_eq!(g["rows_omitted"], 0);
    assert_eq!(v["warnings"], serde_json::json!([]));
}

#[test]
fn steal_on_sibling_vcpu_vs_outside() {
    let d = dir("steal");
    // Round robin on one pCPU: duo/vCPU0 x5, duo/vCPU1 x5, solo/vCPU0 x5, 20 rounds.
    let mut s = Vec::new();
    let mut i = 0;
    for _ in 0..20 {
        for (vm, vcpu) in [(0, 0), (0, 1), (1, 0)] {
            for _ in 0..5 {
                i += 1;
                s.push(guest(
                    slot(i),
                    vm,
                    vcpu,
                    0x8000,
                    0,
                    KERNEL + 0x10,
                    ExitReason::EXTERNAL_INTERRUPT,
                ));
            }
        }
    }
    let vms = [vm(0, "duo", 2), vm(1, "solo", 1)];
    let mut o = opts(put(&d, "s.vmlog", &log(&vms, &[s])));
    o.level = Level::Guest;
    o.vcpu = Some(0);
    let text = tables(&report::build(&o).unwrap());
    assert_eq!(
        text,
        "\
== Guest level: duo (VM0) ==
Total samples:580   OS:USER:IDLE:steal = 34.48%:0.00%:0.00%:65.52%
 Samples  %Ratio  Function              Module
     200   34.48  [unknown]             vmlinux
     190   32.76  [steal]               (outside)
      95   16.38  [steal]               (on vcpu0)
      95   16.38  [steal]               (on vcpu1)

== Guest level: duo (VM0) vCPU 0 ==
Total samples:290   OS:USER:IDLE:steal = 34.48%:0.00%:0.00%:65.52%
 Samples  %Ratio  Function              Module
     100   34.48  [unknown]             vmlinux
      95   32.76  [steal]               (on vcpu1)
      95   32.76  [steal]               (outside)

== Guest level: solo (VM1) ==
Total samples:290   OS:USER:IDLE:steal = 34.48%:0.00%:0.00%:65.52%
 Samples  %Ratio  Function              Module
     190   65.52  [steal]               (outside)
     100   34.48  [unknown]             vmlinux

== Guest level: solo (VM1) vCPU 0 ==
Total samples:290   OS:USER:IDLE:steal = 34.48%:0.00%:0.00%:65.52%
 Samples  %Ratio  Function              Module
     190   65.52  [steal]               (outside)
     100   34.48  [unknown]             vmlinux
"
    );
}

#[test]
fn blank_gaps_are_idle_after_hlt_and_steal_otherwise() {
    let d = dir("gaps");
    let cr3 = 0x4000;
    let mut s: Vec<Sample> = (1..=10)
        .map(|i| {
            guest(
                slot(i),
                0,
                0,
                cr3,
                3,
                0x40_1000,
                ExitReason::EXTERNAL_INTERRUPT,
            )
        })
        .collect();
    // Nothing sampled for slots 11-20; the vCPU comes back after a HLT exit: idle.
    s.push(guest(slot(21), 0, 0, cr3, 3, 0x40_1000, ExitReason::HLT));
    // Nothing for slots 22-26; back after an external interrupt: steal.
    s.push(guest(
        slot(27),
        0,
        0,
        cr3,
        3,
        0x40_1000,
        ExitReason::EXTERNAL_INTERRUPT,
    ));
    let mut o = opts(put(&d, "g.vmlog", &log(&[vm(0, "g", 1)], &[s])));
    o.level = Level::Guest;
    let text = tables(&report::build(&o).unwrap());
    assert_eq!(
        text,
        "\
== Guest level: g (VM0) ==
Total samples:27   OS:USER:IDLE:steal = 0.00%:44.44%:37.04%:18.52%
 Samples  %Ratio  Function              Module
      12   44.44  [unknown]             [unknown process cr3=0x4000]
      10   37.04  [idle]                (halt_exit)
       5   18.52  [steal]               (outside)
"
    );
}

/// `guest-kit watch` bundles: two processes of one program (`workload`, pids 7 and 9,
/// mapped at different bases) split 50/50 and are told apart by PID; pid 7's CR3 is
/// reused by `spinner` (pid 12) after pid 7 exited, and each gets its own samples by
/// time; samples of that key outside both intervals, and of a key no line names, are
/// `[unknown process cr3=...]`; every process's functions are named through its own
/// `map` lines.
/// VM `p`: pid 7 and pid 9 of `workload`, then `spinner` (pid 12) on pid 7's CR3 key,
/// and keys no `proc` line holds at their time (84 samples, guest level).
fn scenario_procs(d: &std::path::Path) -> Options {
    let d = d.to_path_buf();
    let ext = ExitReason::EXTERNAL_INTERRUPT;
    let (w7, w9, spin) = (0x5555_0000_0000u64, 0x5566_0000_0000u64, 0x40_0000u64);
    let mut s = Vec::new();
    for i in 1..=60u64 {
        // Odd slots pid 7 (half of them with PCID and KPTI bits: the same process),
        // even slots pid 9; hot_alpha and hot_beta in turn.
        let (cr3, base) = match i % 4 {
            1 => (0x10000, w7),
            3 => (0x10000 | 0x1000 | 0x5, w7),
            _ => (0x20000, w9),
        };
        let func = if matches!(i % 4, 1 | 2) {
            0x1010
        } else {
            0x1110
        };
        s.push(guest(slot(i), 0, 0, cr3, 3, base + func, ext));
    }
    // pid 7 is gone (its line ends at slot 61) and nobody holds its key: unknown.
    for i in 61..=64u64 {
        s.push(guest(slot(i), 0, 0, 0x10000, 3, w7 + 0x1010, ext));
    }
    // `spinner` (pid 12) got pid 7's key: 12 samples in spin_fast, 4 in spin_slow.
    for i in 65..=80u64 {
        let func = if i % 4 == 0 { 0x1110 } else { 0x1010 };
        s.push(guest(slot(i), 0, 0, 0x10000, 3, spin + func, ext));
    }
    // After spinner's line ended, and a key no line names.
    for (i, cr3) in [(81, 0x10000), (82, 0x10000), (83, 0x30000), (84, 0x30000)] {
        s.push(guest(slot(i), 0, 0, cr3, 3, spin + 0x1010, ext));
    }
    let bundle = format!(
        "gk-bundle 1\nvm p\nproc 0 [kernel] cr3=0x8000\n\
         proc 7 workload cr3=0x10000 from={} to={}\nproc 9 workload cr3=0x20000\n\
         proc 12 spinner cr3=0x10000 from={} to={}\n\
         map 7 {w7:x} {:x} 0 /bin/workload\nmap 9 {w9:x} {:x} 0 /bin/workload\n\
         map 12 {spin:x} {:x} 0 /bin/spinner\n",
        slot(0),
        slot(61),
        slot(65),
        slot(81),
        w7 + 0x3000,
        w9 + 0x3000,
        spin + 0x3000,
    );
    let mut o = opts(put(&d, "p.vmlog", &log(&[vm(0, "p", 1)], &[s])));
    o.level = Level::Guest;
    o.bundles.push(put(&d, "p.bundle", bundle.as_bytes()));
    let funcs = |a: &'static str, b: &'static str| [(a, 0, 0x100), (b, 0x100, 0x100)];
    o.elfs.push(put(
        &d,
        "workload",
        &elf(0, true, &funcs("hot_alpha", "hot_beta")),
    ));
    o.elfs.push(put(
        &d,
        "spinner",
        &elf(spin, false, &funcs("spin_fast", "spin_slow")),
    ));
    o
}

#[test]
fn cr3_reuse_and_two_processes_of_one_program() {
    let d = dir("procs");
    let mut o = scenario_procs(&d);
    let r = report::build(&o).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    assert_eq!(
        tables(&r),
        "\
== Guest level: p (VM0) ==
Total samples:84   OS:USER:IDLE:steal = 0.00%:100.00%:0.00%:0.00%
 Samples  %Ratio  Function              Module
      15   17.86  hot_alpha             workload(7)
      15   17.86  hot_alpha             workload(9)
      15   17.86  hot_beta              workload(7)
      15   17.86  hot_beta              workload(9)
      12   14.29  spin_fast             spinner(12)
       6    7.14  [unknown]             [unknown process cr3=0x10000]
       4    4.76  spin_slow             spinner(12)
       2    2.38  [unknown]             [unknown process cr3=0x30000]
"
    );
    // --pid keeps one process's rows, percentages of the whole vCPU.
    o.pid = vec![9];
    let r = report::build(&o).unwrap();
    let rows: Vec<(u64, f64, &str, &str)> = r.guests[0]
        .rows
        .iter()
        .map(|r| (r.samples, r.percent, r.function.as_str(), r.module.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            (15, 17.86, "hot_alpha", "workload(9)"),
            (15, 17.86, "hot_beta", "workload(9)")
        ]
    );
    // --comm keeps both instances of the program.
    o.pid.clear();
    o.comm = vec!["workload".into()];
    let r = report::build(&o).unwrap();
    assert_eq!(r.guests[0].rows.len(), 4);
    // --from/--to: only slots 65-80 (seconds after START at 1 MHz): the spinner.
    o.comm.clear();
    o.from = Some(0.0645);
    o.to = Some(0.0805);
    let r = report::build(&o).unwrap();
    assert_eq!(r.guests[0].total, 16);
    let rows: Vec<(u64, &str)> = r.guests[0]
        .rows
        .iter()
        .map(|r| (r.samples, r.module.as_str()))
        .collect();
    assert_eq!(rows, [(12, "spinner(12)"), (4, "spinner(12)")]);
}

fn analyzer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_analyzer"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_inputs_give_one_line_messages() {
    let d = dir("bad");
    let empty = put(&d, "empty.vmlog", b"");
    let (code, out, err) = analyzer(&["report", empty.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "analyzer: error: {}: the log is empty (0 bytes)\n",
            empty.display()
        )
    );

    let garbage = put(&d, "garbage.vmlog", b"this is not a log\0at all\0");
    let (code, _, err) = analyzer(&["report", garbage.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "analyzer: error: {}: no usable samples (25 bytes, 0 frames decoded, 2 corrupt frames skipped)\n",
            garbage.display()
        )
    );

    let mut newer = Vec::new();
    vmlog::push_raw_frame(&mut newer, &[2, 0, 0, 0, 1, 2, 3]);
    let newer = put(&d, "newer.vmlog", &newer);
    let (code, _, err) = analyzer(&["check", newer.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "analyzer: error: {}: log format 2.x is newer than this analyzer (1.x); update the analyzer\n",
            newer.display()
        )
    );

    let missing = d.join("missing.vmlog");
    let (code, _, err) = analyzer(&["report", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "analyzer: error: {}: cannot open the log: ",
            missing.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn damaged_log_and_missing_symbols_still_report() {
    let d = dir("damaged");
    let o = scenario_a_n(&d, 2000);
    let mut bytes = std::fs::read(&o.log).unwrap();
    // Flip a byte in the middle (a sample frame) and cut the end record off.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    bytes.truncate(bytes.len() - 3);
    let log = put(&d, "damaged.vmlog", &bytes);
    let (code, out, err) = analyzer(&[
        "report",
        log.to_str().unwrap(),
        "--elf",
        "/nonexistent/prog",
        "--hv-elf",
        o.bundles[0].to_str().unwrap(),
        "--level",
        "host",
    ]);
    assert_eq!(code, 0, "{err}");
    // The summary lines say what was lost: no end record, one sequence gap.
    assert!(
        out.starts_with(
            "\
# Samples: 1745 read, expected unknown (no end record: truncated log)
# Source: LAPIC timer, 1000.0 Hz per pCPU
# Time span: 1.999 s, pCPUs: 1
# Lost: 1 frames (1 sequence gaps), 0 samples dropped
# Warnings: 5
#
== Host level ==
Total samples:"
        ),
        "{out}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.contains(&"analyzer: warning: --elf /nonexistent/prog: cannot read: No such file or directory (os error 2)"), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("analyzer: warning: --hv-elf ")
                && l.ends_with("not a readable ELF file (Unknown file magic)")),
        "{err}"
    );
    // The flipped frame and the cut-off end record.
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("skipped 2 corrupt frame(s)")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(": pCPU 0: 1 sequence gap(s), ")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("no end record: the log is truncated")),
        "{err}"
    );
    let (code, out, _) = analyzer(&["check", log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains(" decoded, 2 corrupt skipped, 0 of unknown kind skipped\n"),
        "{out}"
    );
    assert!(
        out.contains("end record: missing (the log is truncated)"),
        "{out}"
    );
}

#[test]
fn wrong_hv_elf_is_flagged() {
    let d = dir("wronghv");
    let mut o = scenario_a(&d);
    o.hv_elf = Some(put(
        &d,
        "other.elf",
        &elf(0x90_0000, false, &[("elsewhere", 0, 0x10)]),
    ));
    o.level = Level::Host;
    let r = report::build(&o).unwrap();
    assert_eq!(
        r.warnings,
        [format!(
            "--hv-elf {}: 100% of hypervisor samples fall outside its functions; is it the build that wrote the log (build `golden`)?",
            d.join("other.elf").display()
        )]
    );
}

#[test]
fn check_summarises_a_clean_log() {
    let d = dir("check");
    let o = scenario_a(&d);
    let (code, out, err) = analyzer(&["check", o.log.to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (0, ""));
    let size = std::fs::metadata(&o.log).unwrap().len();
    assert_eq!(
        out,
        format!(
            "log: {} ({size} bytes)\n\
             format: {FORMAT_MAJOR}.{FORMAT_MINOR}, hypervisor build `golden`, TSC 1000000 Hz, LAPIC timer, period 1000 ticks (1000.0 Hz), 1 pCPUs\n\
             vm 0: web (1 vCPUs)\n\
             frames: 4 decoded, 0 corrupt skipped, 0 of unknown kind skipped\n\
             pCPU 0: 100 samples (20 host, 80 guest), 1 frames, 0 sequence gaps (0 frames missing), 0 dropped\n\
             time span: 0.099 s (TSC 1001000..1100000)\n\
             samples: 100, dropped: 0, sequence gaps: 0, bytes/sample: {:.2}\n\
             end record: present, 100 samples written = 100 read\n",
            o.log.display(),
            size as f64 / 100.0
        )
    );
}

#[test]
fn help_teaches() {
    let (code, out, _) = analyzer(&["report", "--help"]);
    assert_eq!(code, 0);
    for needle in [
        "--bundle <FILE>",
        "--hv-elf <PATH>",
        "(on vcpuN)",
        "[idle] (halt_exit)",
        "--format <FORMAT>",
        "--kernel-map <FILE>",
        "--kernel-release <RELEASE>",
        "<LOG|DIR>",
        "manifest.txt",
        "--pid 100,101",
        "--comm nginx,'[kernel]'",
        "--sort module",
        "--percent-limit 0.5",
        "--time 2.5,7",
        "build/run/samples.vmlog",
    ] {
        assert!(out.contains(needle), "--help lacks {needle}:\n{out}");
    }
    assert!(!out.contains("target/run"), "{out}");
    let (code, out, _) = analyzer(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("analyzer report build/run "), "{out}");
    assert!(!out.contains("target/run"), "{out}");
}

#[test]
fn kallsyms_file_comm_filter_and_top() {
    let d = dir("kallsyms");
    let mut o = scenario_a(&d);
    // The same bundle without its ksym lines: kernel names come from --kallsyms.
    let bundle = "gk-bundle 1\nvm web\nproc 100 prog cr3=0x1234000\n\
        map 100 555500000000 555500003000 0 /usr/bin/prog\n";
    o.bundles = vec![put(&d, "web.bundle", bundle.as_bytes())];
    o.kallsyms = Some(put(
        &d,
        "kallsyms",
        b"ffffffff81000000 T entry_syscall [kmod]\nnot a line\n",
    ));
    o.level = Level::Guest;
    o.top = 2;
    let r = report::build(&o).unwrap();
    assert_eq!(
        r.warnings,
        [format!(
            "--kallsyms {}: skipped 1 line(s) that are not `ADDR TYPE NAME`",
            d.join("kallsyms").display()
        )]
    );
    let g = &r.guests[0];
    assert_eq!(g.rows.len(), 2);
    assert_eq!(g.rows_omitted, 3);
    o.top = 0;
    let r = report::build(&o).unwrap();
    let k = r.guests[0]
        .rows
        .iter()
        .find(|r| r.function == "entry_syscall")
        .unwrap();
    assert_eq!((k.samples, k.module.as_str()), (10, "kmod"));
    // --comm keeps the process's user and kernel rows only.
    o.comm = vec!["prog".into()];
    let r = report::build(&o).unwrap();
    let rows: Vec<(&str, u64)> = r.guests[0]
        .rows
        .iter()
        .map(|r| (r.function.as_str(), r.samples))
        .collect();
    assert_eq!(rows, [("alpha", 50), ("beta", 20), ("entry_syscall", 10)]);
    assert_eq!(r.guests[0].total, 100);
    o.comm = vec!["nobody".into()];
    assert!(report::build(&o).unwrap().guests[0].rows.is_empty());
}

/// Runtime `_text` of the KASLR guest kernel of [`scenario_kaslr`] (System.map: 0xffffffff81000000).
const KASLR_TEXT: u64 = 0xffff_ffff_9a00_0000;
const K1: u64 = 0x0123_4000;
const K2: u64 = 0x0123_6000;
const KERNEL_KEY: u64 = 0x3a00_4000;

const SYSTEM_MAP: &str = "\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _text
ffffffff81000000 T _stext
ffffffff81000100 T do_syscall_64
ffffffff81000180 t syscall_exit_work
ffffffff81002000 T schedule
ffffffff81002400 W arch_cpu_idle
ffffffff81e01d32 T _etext
ffffffff82a1aa40 D init_task
";

/// One VM `deb` running Debian's kernel under KASLR: two processes of one program
/// (pids 100 and 200), their kernel time, kernel threads, a module. Raw CR3 values as a
/// KPTI + PCID guest loads them: user half (bit 12) with a user PCID and the no-flush
/// bit in user mode, the kernel half with a kernel PCID in kernel mode.
fn scenario_kaslr(d: &std::path::Path, bundle: &str, map_name: &str) -> Options {
    let e = ExitReason::EXTERNAL_INTERRUPT;
    let s: Vec<Sample> = (0..100u64)
        .map(|i| {
            let (cr3, cpl, rip) = match i {
                0..=29 => (K1 | 0x1000 | 0x801 | 1 << 63, 3, PROG_MAP + 0x1010),
                30..=39 => (K2 | 0x1000 | 0x802 | 1 << 63, 3, PROG_MAP + 0x1120),
                40..=69 => (K1 | 0x001, 0, KASLR_TEXT + 0x150),
                70..=89 => (KERNEL_KEY, 0, KASLR_TEXT + 0x2010),
                _ => (K1 | 0x001, 0, 0xffff_ffff_c0a0_1000),
            };
            guest(slot(i + 1), 0, 0, cr3, cpl, rip, e)
        })
        .collect();
    let mut o = opts(put(d, "k.vmlog", &log(&[vm(0, "deb", 1)], &[s])));
    o.level = Level::Guest;
    o.bundles.push(put(d, "deb.bundle", bundle.as_bytes()));
    o.elfs.push(put(
        d,
        "prog",
        &elf(0, true, &[("alpha", 0, 0x100), ("beta", 0x100, 0x100)]),
    ));
    o.kernel_map = Some(put(d, map_name, SYSTEM_MAP.as_bytes()));
    o
}

const KASLR_BUNDLE: &str = "gk-bundle 2\nvm deb\nkernel 6.1.0-57-amd64 text=0xffffffff9a000000\n\
    proc 0 [kernel] cr3=0x3a004000\nproc 100 prog cr3=0x1234000\nproc 200 prog cr3=0x1236000\n\
    map 100 555500000000 555500003000 0 /usr/bin/prog\nmap 200 555500000000 555500003000 0 /usr/bin/prog\n\
    kmap ffffffff9a000000 ffffffff9b000000 vmlinux\nkmap ffffffffc0a00000 ffffffffc0af3000 ext4\n";

#[test]
fn kernel_map_is_relocated_by_the_bundles_text_and_cr3s_are_masked() {
    let d = dir("kernel_map");
    let mut o = scenario_kaslr(&d, KASLR_BUNDLE, "System.map-6.1.0-57-amd64");
    let r = report::build(&o).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    assert_eq!(
        tables(&r),
        "\
== Guest level: deb (VM0) ==
Total samples:100   OS:USER:IDLE:steal = 60.00%:40.00%:0.00%:0.00%
 Samples  %Ratio  Function              Module
      30   30.00  alpha                 prog(100)
      30   30.00  do_syscall_64         vmlinux
      20   20.00  schedule              vmlinux
      10   10.00  [unknown]             ext4
      10   10.00  beta                  prog(200)
"
    );
    // Kernel samples under pid 100's CR3 (kernel half, kernel PCID) are pid 100's.
    o.pid = vec![100];
    let rows = |o: &Options| -> Vec<(String, u64)> {
        report::build(o).unwrap().guests[0]
            .rows
            .iter()
            .map(|r| (r.function.clone(), r.samples))
            .collect()
    };
    assert_eq!(
        rows(&o),
        [
            ("alpha".to_string(), 30),
            ("do_syscall_64".to_string(), 30),
            ("[unknown]".to_string(), 10)
        ]
    );
    // pid 200's raw CR3 has bit 12 set: K2|0x1000 must not be read as another root.
    o.pid = vec![200];
    assert_eq!(rows(&o), [("beta".to_string(), 10)]);
    // Kernel threads run on init_mm: the `proc 0 [kernel]` line.
    o.pid.clear();
    o.comm = vec!["[kernel]".into()];
    assert_eq!(rows(&o), [("schedule".to_string(), 20)]);
}

#[test]
fn kernel_map_problems_are_one_line_warnings() {
    let d = dir("kernel_map_warn");
    let map = d.join("System.map-6.1.0-57-amd64");
    let shown = map.display();
    let guest_rows = |o: &Options| -> (Vec<String>, Vec<(String, String, u64)>) {
        let r = report::build(o).unwrap();
        let rows = r.guests[0]
            .rows
            .iter()
            .map(|r| (r.function.clone(), r.module.clone(), r.samples))
            .collect();
        (r.warnings, rows)
    };
    let row = |f: &str, m: &str, n: u64| (f.to_string(), m.to_string(), n);

    // A version-1 bundle has no kernel line: a warning, and the map is used as linked
    // (so the KASLR kernel's functions stay unknown).
    let v1 = KASLR_BUNDLE
        .replace("gk-bundle 2", "gk-bundle 1")
        .replace("kernel 6.1.0-57-amd64 text=0xffffffff9a000000\n", "");
    let o = scenario_kaslr(&d, &v1, "System.map-6.1.0-57-amd64");
    let (warnings, rows) = guest_rows(&o);
    assert_eq!(
        warnings,
        [format!(
            "--kernel-map {shown}: the bundle of VM `deb` has no `kernel` line: System.map used as linked (right only without KASLR)"
        )]
    );
    assert!(rows.contains(&row("[unknown]", "vmlinux", 50)), "{rows:?}");

    // Another release than the map's (from --kernel-release here): warned, still used.
    let mut o = scenario_kaslr(&d, KASLR_BUNDLE, "System.map-6.1.0-57-amd64");
    o.kernel_release = Some("6.1.0-58-amd64".into());
    let (warnings, rows) = guest_rows(&o);
    assert_eq!(
        warnings,
        [format!(
            "--kernel-map {shown} is for kernel 6.1.0-58-amd64, but VM `deb` runs 6.1.0-57-amd64: its kernel functions may be misnamed"
        )]
    );
    assert!(
        rows.contains(&row("do_syscall_64", "vmlinux", 30)),
        "{rows:?}"
    );

    // text=? in the bundle: not relocated.
    let unknown = KASLR_BUNDLE.replace("text=0xffffffff9a000000", "text=?");
    let o = scenario_kaslr(&d, &unknown, "System.map-6.1.0-57-amd64");
    let (warnings, _) = guest_rows(&o);
    assert_eq!(
        warnings,
        [format!(
            "--kernel-map {shown}: the bundle of VM `deb` does not know its `_text` (text=?): System.map used as linked"
        )]
    );

    // A map without `_text`, and one that is Debian's stub.
    let mut o = scenario_kaslr(&d, KASLR_BUNDLE, "System.map");
    let no_text = put(
        &d,
        "System.map",
        SYSTEM_MAP
            .replace(" T _text\n", " T _text_moved\n")
            .as_bytes(),
    );
    o.kernel_map = Some(no_text.clone());
    let (warnings, rows) = guest_rows(&o);
    assert_eq!(
        warnings,
        [format!(
            "--kernel-map {}: no `_text` symbol: cannot relocate, addresses used as linked",
            no_text.display()
        )]
    );
    assert!(rows.contains(&row("[unknown]", "vmlinux", 50)), "{rows:?}");
    let stub = put(
        &d,
        "System.map",
        b"ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
    );
    o.kernel_map = Some(stub.clone());
    let (warnings, _) = guest_rows(&o);
    assert_eq!(
        warnings,
        [format!(
            "--kernel-map {}: no text symbols (Debian's image package ships a stub; the real System.map is in its -dbg package)",
            stub.display()
        )]
    );

    // Kernel-image ksym lines in the bundle win over the map (exact runtime addresses).
    let with_ksyms = format!("{KASLR_BUNDLE}ksym ffffffff9a000100 T entry_from_bundle\n");
    let o = scenario_kaslr(&d, &with_ksyms, "System.map-6.1.0-57-amd64");
    let (warnings, rows) = guest_rows(&o);
    assert_eq!(warnings, Vec::<String>::new());
    assert!(
        rows.contains(&row("entry_from_bundle", "vmlinux", 50)),
        "{rows:?}"
    );
}

#[test]
fn kernel_map_through_the_binary() {
    let d = dir("kernel_map_cli");
    let o = scenario_kaslr(&d, KASLR_BUNDLE, "System.map-6.1.0-57-amd64");
    let (code, out, err) = analyzer(&[
        "report",
        o.log.to_str().unwrap(),
        "--level",
        "guest",
        "--bundle",
        o.bundles[0].to_str().unwrap(),
        "--elf",
        o.elfs[0].to_str().unwrap(),
        "--kernel-map",
        o.kernel_map.as_ref().unwrap().to_str().unwrap(),
        "--kernel-release",
        "6.1.0-57-amd64",
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("      30   30.00  do_syscall_64         vmlinux\n"),
        "{out}"
    );
}

/// Writes the log as the hypervisor's exporter does: `ring` samples of pCPU 0,
/// then `ring` of pCPU 1, and so on, round after round (so the pCPUs' batches
/// interleave in the file only coarsely, each ring spanning the same time).
fn log_rings(vms: &[VmInfo<'_>], pcpus: &[Vec<Sample>], ring: usize) -> Vec<u8> {
    let mut w = writer(vms, pcpus);
    let longest = pcpus.iter().map(Vec::len).max().unwrap_or(0);
    for from in (0..longest).step_by(ring) {
        for (p, s) in pcpus.iter().enumerate() {
            let part = &s[from.min(s.len())..(from + ring).min(s.len())];
            if !part.is_empty() {
                w.samples(p as u16, PERIOD, part).unwrap();
            }
        }
    }
    let end = pcpus.iter().flatten().map(|s| s.tsc).max().unwrap_or(START);
    w.end(end, 0).unwrap();
    w.into_bytes()
}

fn idle_host(i: u64) -> Sample {
    host(slot(i), HV_BASE + 0x10, None, VcpuState::Running)
}

fn user(i: u64, vm: u16, vcpu: u16, exit: ExitReason) -> Sample {
    guest(slot(i), vm, vcpu, 0x4000, 3, 0x40_1000, exit)
}

/// One vCPU runs on pCPU 0 for slots 1-10, nothing of it is sampled in slots
/// 11-20 (pCPU 0 idles in the hypervisor), then it runs on pCPU 1 for slots
/// 21-40; its first sample there was entered after `exit`.
fn migrating(d: &std::path::Path, exit: ExitReason) -> Options {
    let ext = ExitReason::EXTERNAL_INTERRUPT;
    let p0: Vec<Sample> = (1..=40)
        .map(|i| {
            if i <= 10 {
                user(i, 0, 0, ext)
            } else {
                idle_host(i)
            }
        })
        .collect();
    let p1: Vec<Sample> = (1..=40)
        .map(|i| match i {
            ..=20 => idle_host(i),
            21 => user(i, 0, 0, exit),
            _ => user(i, 0, 0, ext),
        })
        .collect();
    let vms = [vm(0, "m", 1)];
    let mut o = opts(put(d, "m.vmlog", &log_rings(&vms, &[p0, p1], 25)));
    o.level = Level::Guest;
    o
}

#[test]
fn a_vcpu_migrating_between_pcpus_is_idle_after_hlt_else_steal() {
    let d = dir("migrate-idle");
    let r = report::build(&migrating(&d, ExitReason::HLT)).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    assert_eq!(r.log.out_of_order_samples, 0);
    // Without the merge, pCPU 0's slots 21-40 (after the vCPU had left) were
    // charged to it as well: 30 idle instead of 10.
    assert_eq!(
        tables(&r),
        "\
== Guest level: m (VM0) ==
Total samples:40   OS:USER:IDLE:steal = 0.00%:75.00%:25.00%:0.00%
 Samples  %Ratio  Function              Module
      30   75.00  [unknown]             [unknown process cr3=0x4000]
      10   25.00  [idle]                (halt_exit)
"
    );
    let d = dir("migrate-steal");
    let r = report::build(&migrating(&d, ExitReason::EXTERNAL_INTERRUPT)).unwrap();
    assert_eq!(
        tables(&r),
        "\
== Guest level: m (VM0) ==
Total samples:40   OS:USER:IDLE:steal = 0.00%:75.00%:0.00%:25.00%
 Samples  %Ratio  Function              Module
      30   75.00  [unknown]             [unknown process cr3=0x4000]
      10   25.00  [steal]               (outside)
"
    );
}

#[test]
fn steal_on_a_sibling_that_held_the_pcpu_before_the_vcpu_migrated() {
    let d = dir("migrate-sibling");
    let ext = ExitReason::EXTERNAL_INTERRUPT;
    // pCPU 0: vCPU 0 for slots 1-10, its sibling vCPU 1 for 11-20, then idle.
    // pCPU 1: idle for slots 1-20, then vCPU 0 (runnable all along) for 21-40.
    let p0: Vec<Sample> = (1..=40)
        .map(|i| match i {
            1..=10 => user(i, 0, 0, ext),
            11..=20 => user(i, 0, 1, ext),
            _ => idle_host(i),
        })
        .collect();
    let p1: Vec<Sample> = (1..=40)
        .map(|i| {
            if i <= 20 {
                idle_host(i)
            } else {
                user(i, 0, 0, ext)
            }
        })
        .collect();
    let vms = [vm(0, "duo", 2)];
    // pCPU 0's whole ring, then pCPU 1's.
    let log = put(&d, "duo.vmlog", &log_rings(&vms, &[p0, p1], 40));
    let mut o = opts(log.clone());
    o.level = Level::Guest;
    o.vcpu = Some(0);
    let r = report::build(&o).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    // vCPU 1's blank slots after its last sample are left out (it may have
    // stopped); vCPU 0's 10 blank slots are steal on vCPU 1, not 30.
    assert_eq!(
        tables(&r),
        "\
== Guest level: duo (VM0) ==
Total samples:50   OS:USER:IDLE:steal = 0.00%:80.00%:0.00%:20.00%
 Samples  %Ratio  Function              Module
      40   80.00  [unknown]             [unknown process cr3=0x4000]
      10   20.00  [steal]               (on vcpu1)

== Guest level: duo (VM0) vCPU 0 ==
Total samples:40   OS:USER:IDLE:steal = 0.00%:75.00%:0.00%:25.00%
 Samples  %Ratio  Function              Module
      30   75.00  [unknown]             [unknown process cr3=0x4000]
      10   25.00  [steal]               (on vcpu1)
"
    );
    let (code, out, err) = analyzer(&["check", log.to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("\ntime order: 2 pCPU streams merged by TSC (look-ahead 16384 samples per pCPU, at most 40 held), 0 samples out of order\n"),
        "{out}"
    );
}

#[test]
fn a_pcpu_lagging_beyond_the_look_ahead_is_merged_and_counted() {
    let d = dir("lag");
    let n = analyzer::merge::LOOKAHEAD_SAMPLES as u64 + 1000;
    let ext = ExitReason::EXTERNAL_INTERRUPT;
    let p0: Vec<Sample> = (1..=n).map(|i| user(i, 0, 0, ext)).collect();
    let p1: Vec<Sample> = (1..=n).map(idle_host).collect();
    let vms = [vm(0, "g", 1)];
    // pCPU 0's whole stream before pCPU 1's: more than the look-ahead holds.
    let log = put(&d, "lag.vmlog", &log_rings(&vms, &[p0, p1], n as usize));
    let mut o = opts(log.clone());
    o.level = Level::Host;
    let r = report::build(&o).unwrap();
    // Samples are 255 to a frame: pCPU 0 went ahead by 4 frames (1020
    // samples, to get back under the look-ahead), so pCPU 1's slots 1-1019
    // came after slot 1020 had been handed on. Nothing is lost.
    assert_eq!(r.log.out_of_order_samples, 1019);
    assert_eq!(r.host.as_ref().unwrap().total, 2 * n);
    assert_eq!(
        r.warnings,
        [format!(
            "{}: 1019 sample(s) out of host-time order (a pCPU's stream lagged more than 16384 samples behind the others, or its TSC went back): idle/steal near them is approximate",
            log.display()
        )]
    );
    // The look-ahead is exceeded by one frame before the oldest goes out.
    let (code, out, _) = analyzer(&["check", log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\ntime order: 2 pCPU streams merged by TSC (look-ahead 16384 samples per pCPU, at most 16575 held), 1019 samples out of order\n"),
        "{out}"
    );
}

/// Scenario A's bundle padded with comment lines to `len` bytes or more, so that it
/// takes several 1024-byte records (the comments parse to the same bundle).
fn padded_bundle_a(len: usize) -> String {
    let mut text = BUNDLE_A.to_string();
    let mut i = 0;
    while text.len() < len {
        text.push_str(&format!(
            "# padding line {i} of the bundle delivered through the hypercall channel\n"
        ));
        i += 1;
    }
    text
}

/// Scenario A's log with VM `web`'s bundle as `GuestData` records: `deliver` writes them
/// (the writer is past the first half of the samples).
fn channel_log(d: &std::path::Path, name: &str, deliver: impl FnOnce(&mut LogWriter)) -> PathBuf {
    let s = samples_a(100);
    let mut w = writer(&[vm(0, "web", 1)], std::slice::from_ref(&s));
    // As in a run: samples first, the bundle at the end of the measurement, in between.
    w.samples(0, PERIOD, &s[..60]).unwrap();
    deliver(&mut w);
    w.samples(0, PERIOD, &s[60..]).unwrap();
    let end = s.iter().map(|x| x.tsc).max().unwrap();
    w.end(end, 0).unwrap();
    put(d, name, &w.into_bytes())
}

#[test]
fn a_bundle_delivered_through_the_channel_is_used_as_if_given_with_bundle() {
    let d = dir("channel");
    let text = padded_bundle_a(2600);
    // Two calls (the second goes on with the numbering), the first split into records.
    let log = channel_log(&d, "channel.vmlog", |w| {
        w.guest_data(0, vmlog::GUEST_DATA_BUNDLE, &text.as_bytes()[..1500])
            .unwrap();
        w.guest_data(0, vmlog::GUEST_DATA_BUNDLE, &text.as_bytes()[1500..])
            .unwrap();
    });
    let records = vmlog::Decoder::from_slice(&std::fs::read(&log).unwrap())
        .filter(|i| matches!(i, Ok(vmlog::Item::GuestData { .. })))
        .count();
    assert_eq!(records, 4, "1024 + 476, then 1024 + the rest");
    // No --bundle: the channel's.
    let from_log = report::build(&symbols_a(&d, opts(log.clone()))).unwrap();
    assert_eq!(from_log.warnings, Vec::<String>::new());
    // The same bundle as a file: the same report.
    let mut with_file = symbols_a(&d, opts(log.clone()));
    with_file
        .bundles
        .push(put(&d, "web.bundle", text.as_bytes()));
    let from_file = report::build(&with_file).unwrap();
    assert_eq!(from_log, from_file);
    // And the tables are scenario A's (whose log has no channel data).
    let plain = report::build(&scenario_a(&dir("channel-plain"))).unwrap();
    assert_eq!(from_log.guests, plain.guests);
    assert_eq!(from_log.host, plain.host);
    assert!(report::to_text(&from_log).contains("alpha                 prog(100)"));
    // `analyzer check` shows what the channel held.
    let (code, out, _) = analyzer(&["check", log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "guest data of vm 0: 4 bundle records, {} bytes, 1 bundle(s) delivered, the last complete one: records 0..=3, {} bytes\n",
            text.len(),
            text.len()
        )),
        "{out}"
    );
    // The command line: no --bundle needed.
    let o = symbols_a(&d, opts(log));
    let (code, out, err) = analyzer(&[
        "report",
        o.log.to_str().unwrap(),
        "--elf",
        o.elfs[0].to_str().unwrap(),
        "--level",
        "guest",
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("      50   50.00  alpha                 prog(100)\n"),
        "{out}"
    );
}

#[test]
fn a_gap_in_the_channel_data_is_reported_and_the_bundle_not_used() {
    let d = dir("channel-gap");
    let text = padded_bundle_a(3000);
    let log = channel_log(&d, "gap.vmlog", |w| {
        for (seq, chunk) in text.as_bytes().chunks(1024).enumerate() {
            // Record 1 was lost.
            if seq == 1 {
                continue;
            }
            let r = Record::GuestData(GuestData {
                vm: 0,
                kind: vmlog::GUEST_DATA_BUNDLE,
                seq: seq as u32,
                data: chunk,
            });
            w.record(vmlog::GLOBAL_STREAM, &r).unwrap();
        }
    });
    let r = report::build(&symbols_a(&d, opts(log.clone()))).unwrap();
    assert_eq!(
        r.warnings,
        [
            "hypercall channel of VM `web`: bundle records seq 1..=1 are missing (lost frames): the bundle they belong to is not used",
            &format!(
                "hypercall channel of VM `web`: bundle 1 of 1 (records 0..=2, {} bytes) is not used: records of it are missing",
                text.len() - 1024
            ),
        ]
    );
    // No bundle: the process is unknown, its functions too.
    let g = &r.guests[0];
    assert!(
        g.rows
            .iter()
            .any(|row| row.module == "[unknown process cr3=0x1234000]"),
        "{}",
        report::to_text(&r)
    );
    assert!(!g.rows.iter().any(|row| row.function == "alpha"));
    // With --bundle the file is used, and the channel's problem is still said.
    let mut o = symbols_a(&d, opts(log));
    o.bundles.push(put(&d, "web.bundle", BUNDLE_A.as_bytes()));
    let r = report::build(&o).unwrap();
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert_eq!(r.guests[0].rows[0].function, "alpha");
}

#[test]
fn an_explicit_bundle_wins_over_the_channel_with_a_note_when_they_differ() {
    let d = dir("channel-differ");
    // The guest delivered an older bundle first, then a newer one: the last is used.
    let old = BUNDLE_A.replace("proc 100 prog", "proc 99 prog");
    let log = channel_log(&d, "differ.vmlog", |w| {
        w.guest_data(0, vmlog::GUEST_DATA_BUNDLE, old.as_bytes())
            .unwrap();
        w.guest_data(0, vmlog::GUEST_DATA_BUNDLE, BUNDLE_A.as_bytes())
            .unwrap();
    });
    let r = report::build(&symbols_a(&d, opts(log.clone()))).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    assert_eq!(r.guests[0].rows[0].module, "prog(100)");
    let mut o = symbols_a(&d, opts(log));
    let file = put(&d, "web.bundle", old.as_bytes());
    o.bundles.push(file.clone());
    let r = report::build(&o).unwrap();
    assert_eq!(
        r.warnings,
        [format!(
            "--bundle {} differs from the bundle VM `web` delivered through the hypercall channel: the --bundle is used",
            file.display()
        )]
    );
    assert_eq!(r.guests[0].rows[0].module, "prog(99)");
}

/// Scenario A's guest rows of VM `web` (the tail of the golden text).
const GUEST_ROWS_A: &str = "\
== Guest level: web (VM0) ==
Total samples:100   OS:USER:IDLE:steal = 10.00%:70.00%:10.00%:10.00%
 Samples  %Ratio  Function              Module
      50   50.00  alpha                 prog(100)
      20   20.00  beta                  prog(100)
      10   10.00  [idle]                (halt_exit)
      10   10.00  [steal]               (outside)
      10   10.00  do_syscall            vmlinux
";

/// Scenario A with `bundle` and, as `--elf`, `(directory, build id, functions)` files
/// all named `prog`.
fn scenario_a_build_ids(
    d: &std::path::Path,
    bundle: &str,
    elfs: &[(&str, &[u8], &[analyzer::synth::Func<'_>])],
) -> Options {
    let log = put(d, "a.vmlog", &log(&[vm(0, "web", 1)], &[samples_a(100)]));
    let mut o = opts(log);
    o.level = Level::Guest;
    o.bundles.push(put(d, "web.bundle", bundle.as_bytes()));
    for (sub, id, funcs) in elfs {
        std::fs::create_dir_all(d.join(sub)).unwrap();
        o.elfs.push(put(
            &d.join(sub),
            "prog",
            &analyzer::synth::elf_with_build_id(0, true, funcs, Some(id)),
        ));
    }
    o
}

/// [`BUNDLE_A`] in version 3, its program's map carrying `buildid=`, plus `extra` lines.
fn bundle_a_v3(build_id: &str, extra: &str) -> String {
    BUNDLE_A.replace("gk-bundle 1", "gk-bundle 3").replace(
        "/usr/bin/prog\n",
        &format!("/usr/bin/prog buildid={build_id}\n"),
    ) + extra
}

const RIGHT: &[analyzer::synth::Func<'_>] = &[("alpha", 0, 0x100), ("beta", 0x100, 0x100)];
const WRONG: &[analyzer::synth::Func<'_>] = &[("old_alpha", 0, 0x100), ("old_beta", 0x100, 0x100)];

#[test]
fn the_elf_with_the_guests_build_id_wins_over_a_namesake() {
    let d = dir("buildid-pick");
    // Both files are called `prog`; the wrong one is given last (a name match would
    // take it).
    let o = scenario_a_build_ids(
        &d,
        &bundle_a_v3("b0b0b0b0", ""),
        &[("right", &[0xb0; 4], RIGHT), ("wrong", &[0xa0; 4], WRONG)],
    );
    let r = report::build(&o).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    assert_eq!(tables(&r), GUEST_ROWS_A);
    // Without a build id in the bundle the file name decides as before: the last one.
    let o = scenario_a_build_ids(
        &d,
        BUNDLE_A,
        &[("right", &[0xb0; 4], RIGHT), ("wrong", &[0xa0; 4], WRONG)],
    );
    let r = report::build(&o).unwrap();
    assert!(
        report::to_text(&r).contains("old_alpha"),
        "{}",
        report::to_text(&r)
    );
}

#[test]
fn a_namesake_with_another_build_id_is_refused_with_one_warning() {
    let d = dir("buildid-refuse");
    let o = scenario_a_build_ids(
        &d,
        &bundle_a_v3("b0b0b0b0", ""),
        &[("wrong", &[0xa0; 4], WRONG)],
    );
    let r = report::build(&o).unwrap();
    assert_eq!(
        r.warnings,
        [format!(
            "--elf {}: build id a0a0a0a0 differs from the guest's /usr/bin/prog (build id b0b0b0b0): not used for it",
            d.join("wrong/prog").display()
        )]
    );
    let text = report::to_text(&r);
    assert!(
        text.contains("      70   70.00  [unknown]             prog(100)\n"),
        "{text}"
    );
    assert!(!text.contains("old_"), "{text}");
}

/// The program's symbols as the guest sends them (`guest-kit collect --symbols`).
const USYMS_A: &str = "useg /usr/bin/prog 0 1200 0\n\
    usym /usr/bin/prog 1000 100 alpha\nusym /usr/bin/prog 1100 0 beta\n";

#[test]
fn functions_are_named_from_the_bundles_usym_lines_without_an_elf() {
    let d = dir("usym");
    let o = scenario_a_build_ids(&d, &bundle_a_v3("b0b0b0b0", USYMS_A), &[]);
    let r = report::build(&o).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    assert_eq!(tables(&r), GUEST_ROWS_A);
    // Through the binary, and with a wrong `--elf` namesake: refused, usym lines used.
    let o = scenario_a_build_ids(
        &d,
        &bundle_a_v3("b0b0b0b0", USYMS_A),
        &[("wrong", &[0xa0; 4], WRONG)],
    );
    let (code, out, err) = analyzer(&[
        "report",
        o.log.to_str().unwrap(),
        "--level",
        "guest",
        "--bundle",
        o.bundles[0].to_str().unwrap(),
        "--elf",
        o.elfs[0].to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // The summary counts the warning printed on stderr.
    assert_eq!(
        out,
        format!(
            "\
# Samples: 100 read, 100 expected (end record)
# Source: LAPIC timer, 1000.0 Hz per pCPU
# Time span: 0.099 s, pCPUs: 1
# Lost: 0 frames (0 sequence gaps), 0 samples dropped
# Warnings: 1
#
{GUEST_ROWS_A}"
        )
    );
    assert_eq!(
        err,
        format!(
            "analyzer: warning: --elf {}: build id a0a0a0a0 differs from the guest's /usr/bin/prog (build id b0b0b0b0): not used for it\n",
            d.join("wrong/prog").display()
        )
    );
}

/// Guest-level table rows as (samples, function, module).
fn rows_of(s: &report::Section) -> Vec<(u64, &str, &str)> {
    s.rows
        .iter()
        .map(|r| (r.samples, r.function.as_str(), r.module.as_str()))
        .collect()
}

#[test]
fn a_run_directory_gives_the_same_report_as_the_explicit_paths() {
    let d = dir("rundir");
    let o = scenario_a(&d);
    let explicit = analyzer(&[
        "report",
        o.log.to_str().unwrap(),
        "--bundle",
        o.bundles[0].to_str().unwrap(),
        "--elf",
        o.elfs[0].to_str().unwrap(),
        "--hv-elf",
        o.hv_elf.as_ref().unwrap().to_str().unwrap(),
    ]);
    assert_eq!(explicit.0, 0, "{}", explicit.2);
    // As `cargo xtask run` writes it (absolute paths), with unknown keys, a relative
    // path, and an absolute path of another machine whose file is in the directory.
    let manifest = format!(
        "scenario=golden\ncmdline=hv vm=web\niso=/lab/build/boot.iso\n\
         hypervisor_elf=/lab/build/run/hypervisor.elf\nconsole={}\nlog={}\n\
         bundle.web=web.bundle\nbundle_source.web=channel\nelf.web={}\n",
        d.join("console.txt").display(),
        o.log.display(),
        o.elfs[0].display()
    );
    put(&d, "manifest.txt", manifest.as_bytes());
    let from_dir = analyzer(&["report", d.to_str().unwrap()]);
    assert_eq!(from_dir, explicit);
    assert!(from_dir.1.contains("alpha                 prog(100)"));
    assert!(from_dir.1.contains("handle_wrmsr          hypervisor"));
    // Explicit options still override the manifest: another hypervisor ELF.
    let other = put(
        &d,
        "other-hv.elf",
        &elf(
            HV_BASE,
            false,
            &[("other_idle", 0, 0x80), ("other_wrmsr", 0x80, 0x80)],
        ),
    );
    let (code, out, err) = analyzer(&[
        "report",
        d.to_str().unwrap(),
        "--hv-elf",
        other.to_str().unwrap(),
        "--level",
        "host",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("other_wrmsr"), "{out}");
    assert!(!out.contains("handle_wrmsr"), "{out}");
    // A --bundle for VM `web` replaces the manifest's bundle of `web`.
    let renamed = BUNDLE_A
        .replace("proc 100 ", "proc 555 ")
        .replace("map 100 ", "map 555 ");
    let b = put(&d, "other.bundle", renamed.as_bytes());
    let (code, out, err) = analyzer(&[
        "report",
        d.to_str().unwrap(),
        "--bundle",
        b.to_str().unwrap(),
        "--level",
        "guest",
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.contains("alpha                 prog(555)"), "{out}");
    // The same through the library: the manifest's relative paths resolved.
    let m = analyzer::rundir::Manifest::load(&d).unwrap();
    assert_eq!(m.log, o.log);
    assert_eq!(m.bundles["web"], d.join("web.bundle"));
    assert_eq!(m.hypervisor_elf, Some(d.join("hypervisor.elf")));
    assert_eq!(m.elfs, o.elfs);
    // A directory without a manifest: one line.
    let empty = dir("rundir-empty");
    let (code, out, err) = analyzer(&["report", empty.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "analyzer: error: {}: a directory without manifest.txt (`cargo xtask run` writes one); give the sample log instead, e.g. {}\n",
            empty.display(),
            empty.join("samples.vmlog").display()
        )
    );
}

#[test]
fn a_manifest_names_the_system_map_and_kernel_release() {
    let d = PathBuf::from("/run/x");
    let m = analyzer::rundir::Manifest::parse(
        &d,
        "log=samples.vmlog\nsystem_map=/nonexistent/boot/System.map-6.1\nkernel_release=6.1\n\
         elf.vmlinux=/nonexistent/vmlinux\nelf.truth=./truth.elf\nnot a line\n",
    );
    assert_eq!(m.log, d.join("samples.vmlog"));
    assert_eq!(
        m.system_map,
        Some(PathBuf::from("/nonexistent/boot/System.map-6.1"))
    );
    assert_eq!(m.kernel_release.as_deref(), Some("6.1"));
    assert_eq!(
        m.elfs,
        [PathBuf::from("/nonexistent/vmlinux"), d.join("./truth.elf")]
    );
    let mut o = Options::default();
    analyzer::cli::apply_manifest(&mut o, m.clone());
    assert_eq!(o.kernel_map, m.system_map);
    assert_eq!(o.kernel_release.as_deref(), Some("6.1"));
    // An explicit --kernel-map keeps its own release (from its file name).
    let mut o = Options {
        kernel_map: Some(PathBuf::from("System.map-6.2")),
        ..Options::default()
    };
    analyzer::cli::apply_manifest(&mut o, m);
    assert_eq!(o.kernel_map, Some(PathBuf::from("System.map-6.2")));
    assert_eq!(o.kernel_release, None);
}

#[test]
fn summary_lines_and_json_summary() {
    let d = dir("summary");
    let mut o = scenario_a(&d);
    o.from = Some(0.0505);
    let r = report::build(&o).unwrap();
    assert_eq!(
        report::summary_text(&r.summary),
        "\
# Samples: 100 read, 100 expected (end record); 50 in the time window
# Source: LAPIC timer, 1000.0 Hz per pCPU
# Time span: 0.099 s, pCPUs: 1
# Lost: 0 frames (0 sequence gaps), 0 samples dropped
# Warnings: 0
#
"
    );
    let v: serde_json::Value = serde_json::from_str(&report::to_json(&r)).unwrap();
    assert_eq!(
        v["summary"],
        serde_json::json!({
            "samples_read": 100, "samples_expected": 100, "samples_in_window": 50,
            "source": "LAPIC timer", "rate_hz": 1000.0, "time_span_s": 0.099,
            "pcpus": 1, "lost_frames": 0, "sequence_gaps": 0, "dropped_samples": 0,
            "warnings": 0
        })
    );
    // A log without its End record: nothing to compare with.
    let mut w2 = writer(&[vm(0, "web", 1)], &[vec![]]);
    w2.samples(0, PERIOD, &samples_a(100)).unwrap();
    let mut o2 = opts(put(&d, "short.vmlog", &w2.into_bytes()));
    o2.level = Level::Host;
    let r = report::build(&o2).unwrap();
    assert_eq!(r.summary.samples_expected, None);
    assert!(
        report::to_text(&r)
            .starts_with("# Samples: 100 read, expected unknown (no end record: truncated log)\n"),
        "{}",
        report::to_text(&r)
    );
    assert_eq!(r.summary.warnings, r.warnings.len());
    assert_eq!(r.summary.warnings, 1);
}

#[test]
fn long_function_names_are_cut_in_the_text_and_whole_in_json() {
    assert_eq!(report::fit("short", 60), "short");
    let long = format!("{}_tail", "x".repeat(70));
    let cut = report::fit(&long, 20);
    assert_eq!(cut, "xxxxxxxxxx…xxxx_tail");
    assert_eq!(cut.chars().count(), 20);
    let d = dir("longnames");
    let name =
        "core::ptr::drop_in_place<alloc::vec::Vec<alloc::string::String>>::h0123456789abcdef";
    let mut o = scenario_a(&d);
    o.elfs = vec![put(
        &d,
        "prog",
        &elf(0, true, &[(name, 0, 0x100), ("beta", 0x100, 0x100)]),
    )];
    o.level = Level::Guest;
    let r = report::build(&o).unwrap();
    assert_eq!(r.guests[0].rows[0].function, name);
    let v: serde_json::Value = serde_json::from_str(&report::to_json(&r)).unwrap();
    assert_eq!(v["guests"][0]["rows"][0]["function"], name);
    assert_eq!(
        tables(&r),
        "\
== Guest level: web (VM0) ==
Total samples:100   OS:USER:IDLE:steal = 10.00%:70.00%:10.00%:10.00%
 Samples  %Ratio  Function                                                      Module
      50   50.00  core::ptr::drop_in_place<alloc…::String>>::h0123456789abcdef  prog(100)
      20   20.00  beta                                                          prog(100)
      10   10.00  [idle]                                                        (halt_exit)
      10   10.00  [steal]                                                       (outside)
      10   10.00  do_syscall                                                    vmlinux
"
    );
}

#[test]
fn sort_percent_limit_pid_comm_lists_and_time_through_the_binary() {
    let d = dir("perfopts");
    let o = scenario_procs(&d);
    let base: Vec<String> = [
        "report".to_string(),
        o.log.display().to_string(),
        "--bundle".into(),
        o.bundles[0].display().to_string(),
        "--elf".into(),
        o.elfs[0].display().to_string(),
        "--elf".into(),
        o.elfs[1].display().to_string(),
        "--level".into(),
        "guest".into(),
        "--format".into(),
        "json".into(),
    ]
    .into();
    let run = |extra: &[&str]| -> report::Section {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let (code, out, err) = analyzer(&args);
        assert_eq!(code, 0, "{extra:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let g = &v["guests"][0];
        report::Section {
            level: "guest",
            vm: None,
            vm_id: None,
            vcpu: None,
            total: g["total"].as_u64().unwrap(),
            shares: vec![],
            rows: g["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| report::Row {
                    samples: r["samples"].as_u64().unwrap(),
                    percent: r["percent"].as_f64().unwrap(),
                    function: r["function"].as_str().unwrap().to_string(),
                    module: r["module"].as_str().unwrap().to_string(),
                    kind: report::RowKind::Function,
                })
                .collect(),
            rows_omitted: g["rows_omitted"].as_u64().unwrap() as usize,
            rows_below_limit: g["rows_below_limit"].as_u64().unwrap() as usize,
        }
    };
    // --pid with a list: pid 9 and pid 12, percentages of the whole vCPU.
    let s = run(&["--pid", "9,12"]);
    assert_eq!(
        rows_of(&s),
        [
            (15, "hot_alpha", "workload(9)"),
            (15, "hot_beta", "workload(9)"),
            (12, "spin_fast", "spinner(12)"),
            (4, "spin_slow", "spinner(12)"),
        ]
    );
    assert_eq!(s.total, 84);
    // Repeated --pid is the same list.
    assert_eq!(rows_of(&run(&["--pid", "9", "--pid", "12"])), rows_of(&s));
    // --comm with a list, and --comm with --pid: both must match.
    assert_eq!(run(&["--comm", "workload,spinner"]).rows.len(), 6);
    assert_eq!(
        rows_of(&run(&["--comm", "spinner,nobody", "--pid", "7,12"])),
        [
            (12, "spin_fast", "spinner(12)"),
            (4, "spin_slow", "spinner(12)")
        ]
    );
    // --percent-limit hides rows under P % (7.14 and 4.76 and 2.38 here).
    let s = run(&["--percent-limit", "10"]);
    assert_eq!(s.rows.len(), 5);
    assert_eq!(s.rows_below_limit, 3);
    assert!(s.rows.iter().all(|r| r.percent >= 10.0));
    // --sort name / module reorder the rows shown; --top still picks by samples.
    assert_eq!(
        rows_of(&run(&["--sort", "name", "--top", "3"])),
        [
            (15, "hot_alpha", "workload(7)"),
            (15, "hot_alpha", "workload(9)"),
            (15, "hot_beta", "workload(7)"),
        ]
    );
    assert_eq!(
        rows_of(&run(&["--sort", "module", "--percent-limit", "5"])),
        [
            (6, "[unknown]", "[unknown process cr3=0x10000]"),
            (12, "spin_fast", "spinner(12)"),
            (15, "hot_alpha", "workload(7)"),
            (15, "hot_beta", "workload(7)"),
            (15, "hot_alpha", "workload(9)"),
            (15, "hot_beta", "workload(9)"),
        ]
    );
    // --time START,END is --from START --to END; either side may be left out.
    let s = run(&["--time", "0.0645,0.0805"]);
    assert_eq!(s.total, 16);
    assert_eq!(
        rows_of(&s),
        rows_of(&run(&["--from", "0.0645", "--to", "0.0805"]))
    );
    assert_eq!(run(&["--time", ",0.0805"]).total, 80);
    assert_eq!(run(&["--time", "0.0645,"]).total, 20);
    // Bad values: clap's one-line complaint, exit status 2.
    let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--time", "3"]);
    let (code, _, err) = analyzer(&args);
    assert_eq!(code, 2);
    assert!(err.contains("expected START,END in seconds"), "{err}");
    args.truncate(base.len());
    args.extend_from_slice(&["--time", "1,2", "--from", "1"]);
    assert_eq!(analyzer(&args).0, 2);
    // The text view says how many rows the limit hid.
    args.truncate(base.len() - 2);
    args.extend_from_slice(&["--percent-limit", "10"]);
    let (_, out, _) = analyzer(&args);
    assert!(
        out.ends_with("(3 rows under --percent-limit not shown)\n"),
        "{out}"
    );
}

/// One VM `web` with two processes, `prog;x` (100) and `prog` (101), a kernel thread, an
/// unknown process, idle, steal and two hypervisor functions; `prog;x` has a `;`.
fn scenario_stacks(d: &std::path::Path) -> Options {
    let e = ExitReason::EXTERNAL_INTERRUPT;
    let (p100, p101, kthread, nobody) = (0x0123_4000, 0x0234_6000, 0x8000, 0x0999_0000);
    let mut s = Vec::new();
    for i in 0..100u64 {
        let t = slot(i + 1);
        s.push(match i % 10 {
            0..=3 => guest(t, 0, 0, p100, 3, PROG_MAP + 0x1010, e),
            4 => guest(t, 0, 0, p101, 3, PROG_MAP + 0x1120, e),
            5 => guest(t, 0, 0, p101, 0, KERNEL + 0x20, e),
            6 => guest(t, 0, 0, kthread, 0, KERNEL + 0x120, e),
            7 => guest(t, 0, 0, nobody, 3, PROG_MAP + 0x1010, e),
            8 => host(t, HV_BASE + 0x1010, Some((0, 0)), VcpuState::Halted),
            _ => host(
                t,
                HV_BASE + 0x1090,
                Some((0, 0)),
                VcpuState::ExitHandling {
                    reason: ExitReason::WRMSR,
                },
            ),
        });
    }
    let bundle = "gk-bundle 1\nvm web\nproc 0 [kernel] cr3=0x8000\n\
        proc 100 prog;x cr3=0x1234000\nproc 101 prog cr3=0x2346000\n\
        map 100 555500000000 555500003000 0 /usr/bin/prog\n\
        map 101 555500000000 555500003000 0 /usr/bin/prog\n\
        kmap ffffffff81000000 ffffffff82000000 vmlinux\n\
        ksym ffffffff81000000 T do_syscall\nksym ffffffff81000100 T schedule\n";
    let mut o = opts(put(d, "stacks.vmlog", &log(&[vm(0, "web", 1)], &[s])));
    o.bundles.push(put(d, "web.bundle", bundle.as_bytes()));
    o.elfs.push(put(
        d,
        "prog",
        &elf(0, true, &[("alpha", 0, 0x100), ("beta", 0x100, 0x100)]),
    ));
    o.hv_elf = symbols_a(d, Options::default()).hv_elf;
    o
}

const STACKS: &str = "\
hypervisor;handle_wrmsr 10
hypervisor;hv_idle 10
web;[idle] 10
web;[kernel];schedule 10
web;[steal] 10
web;[unknown process cr3=0x9990000];[unknown] 10
web;prog(101);beta 10
web;prog(101);do_syscall 10
web;prog:x(100);alpha 40
";

#[test]
fn collapsed_stacks_vm_process_function_and_hypervisor() {
    let d = dir("collapsed");
    let mut o = scenario_stacks(&d);
    // --top does not cut the stacks.
    o.top = 2;
    let r = report::build(&o).unwrap();
    assert_eq!(r.warnings, Vec::<String>::new());
    assert_eq!(report::to_collapsed(&r), STACKS);
    // The same through the binary, on stdout.
    let mut args: Vec<String> = vec!["report".into(), o.log.display().to_string()];
    for b in &o.bundles {
        args.extend(["--bundle".into(), b.display().to_string()]);
    }
    for e in &o.elfs {
        args.extend(["--elf".into(), e.display().to_string()]);
    }
    let hv = o.hv_elf.as_ref().unwrap().display().to_string();
    args.extend(["--hv-elf".into(), hv, "--format".into(), "collapsed".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = analyzer(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, STACKS);
    // --pid keeps that process's stacks (no idle/steal), hypervisor beside them.
    o.pid = vec![101];
    let r = report::build(&o).unwrap();
    assert_eq!(
        report::to_collapsed(&r),
        "hypervisor;handle_wrmsr 10\nhypervisor;hv_idle 10\n\
         web;prog(101);beta 10\nweb;prog(101);do_syscall 10\n"
    );
    // --level guest: no hypervisor stacks.
    o.pid.clear();
    o.level = Level::Guest;
    let r = report::build(&o).unwrap();
    let guest_only: String = STACKS
        .lines()
        .filter(|l| !l.starts_with("hypervisor;"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(report::to_collapsed(&r), guest_only);
}

#[test]
fn flame_graph_svg_is_well_formed_with_the_frames() {
    use quick_xml::events::Event;
    let d = dir("flamegraph");
    let o = scenario_stacks(&d);
    let svg_path = d.join("flame.svg");
    let log = o.log.display().to_string();
    let (b, e, hv) = (
        o.bundles[0].display().to_string(),
        o.elfs[0].display().to_string(),
        o.hv_elf.as_ref().unwrap().display().to_string(),
    );
    let svg = svg_path.display().to_string();
    let (code, out, err) = analyzer(&[
        "report",
        &log,
        "--bundle",
        &b,
        "--elf",
        &e,
        "--hv-elf",
        &hv,
        "--format",
        "flamegraph",
        "--output",
        &svg,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "the SVG goes to --output, not stdout");
    let text = std::fs::read_to_string(&svg_path).unwrap();
    // Well-formed: quick-xml reads it to the end, every start tag closed by its own end.
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut open: Vec<Vec<u8>> = Vec::new();
    let mut texts = String::new();
    let mut root = None;
    loop {
        match reader.read_event() {
            Err(e) => panic!("SVG not well-formed at {}: {e}", reader.buffer_position()),
            Ok(Event::Eof) => break,
            Ok(Event::Start(t)) => {
                root.get_or_insert_with(|| t.name().as_ref().to_vec());
                open.push(t.name().as_ref().to_vec());
            }
            Ok(Event::End(t)) => {
                assert_eq!(open.pop().as_deref(), Some(t.name().as_ref()), "unbalanced");
            }
            Ok(Event::Text(t)) => {
                texts.push_str(&t.decode().unwrap());
                texts.push('\n');
            }
            Ok(_) => {}
        }
    }
    assert!(open.is_empty(), "unclosed tags: {open:?}");
    assert_eq!(root.as_deref(), Some(&b"svg"[..]));
    for f in [
        "web",
        "prog:x(100)",
        "prog(101)",
        "alpha",
        "beta",
        "do_syscall",
        "[kernel]",
        "schedule",
        "[idle]",
        "[steal]",
        "hypervisor",
        "handle_wrmsr",
        "hv_idle",
    ] {
        assert!(
            texts.lines().any(|l| l.starts_with(&format!("{f} ("))),
            "no frame `{f}` in the SVG's titles"
        );
    }
    assert!(texts.contains("stacks.vmlog"), "the title names the log");
    // To stdout without --output.
    let (code, out, err) = analyzer(&[
        "report",
        &log,
        "--bundle",
        &b,
        "--elf",
        &e,
        "--hv-elf",
        &hv,
        "--format",
        "flamegraph",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("<?xml") && out.trim_end().ends_with("</svg>"));
}
