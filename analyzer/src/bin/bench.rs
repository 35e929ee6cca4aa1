//! Analyzer benchmark: generates a realistic log of N samples (default 10 M:
//! 2 pCPUs, 1 kHz, 50 MHz TSC, 3 processes) with a bundle and ELF files, then
//! runs `report` on it in a child process and prints throughput, CPU time and
//! peak RSS. With `--perf`, also times `perf report --stdio` on a perf.data
//! recorded here with `perf record -e cpu-clock`, per sample.
//!
//! `cargo run --release -p analyzer --bin analyzer-bench -- [--samples N] [--perf]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use analyzer::report::{self, Level, Options};
use analyzer::synth::elf;
use vmlog::synth::{self, HV_BASE, KERNEL_BASE};

fn proc_status(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of this process (from /proc/self/stat, USER_HZ = 100).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields after the command: state is 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn write_inputs(dir: &Path, samples: usize) -> Options {
    std::fs::create_dir_all(dir).expect("bench dir");
    let t = Instant::now();
    let log = synth::realistic_log(2, samples / 2, 1);
    let log_path = dir.join("bench.vmlog");
    std::fs::write(&log_path, &log).expect("write log");
    println!(
        "bench: generated {samples} samples, {} bytes ({:.2} bytes/sample) in {:.2} s",
        log.len(),
        log.len() as f64 / samples as f64,
        t.elapsed().as_secs_f64()
    );
    let mut bundle = String::from("gk-bundle 1\nvm guest0\n");
    for p in 0..3u64 {
        bundle += &format!("proc {} worker cr3={:#x}\n", 100 + p, synth::user_cr3(p));
        let start = synth::user_base(p) - 0x1000;
        bundle += &format!(
            "map {} {start:x} {:x} 0 /usr/bin/worker\n",
            100 + p,
            start + 0x10000
        );
    }
    for f in 0..6u64 {
        bundle += &format!("ksym {:x} T kfunc_{f}\n", KERNEL_BASE + f * 0x1000);
    }
    let names: Vec<String> = (0..4).map(|f| format!("ufunc_{f}")).collect();
    let ufuncs: Vec<(&str, u64, u64)> = names
        .iter()
        .enumerate()
        .map(|(f, n)| (n.as_str(), f as u64 * 0x400, 0x200))
        .collect();
    let hnames: Vec<String> = (0..4).map(|f| format!("hv_func_{f}")).collect();
    let hfuncs: Vec<(&str, u64, u64)> = hnames
        .iter()
        .enumerate()
        .map(|(f, n)| (n.as_str(), f as u64 * 0x800, 0x400))
        .collect();
    let put = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write input");
        p
    };
    Options {
        log: log_path,
        bundles: vec![put("guest0.bundle", bundle.as_bytes())],
        elfs: vec![put("worker", &elf(0, true, &ufuncs))],
        hv_elf: Some(put(
            "hypervisor.elf",
            &elf(HV_BASE - 0x1000, false, &hfuncs),
        )),
        top: 25,
        level: Level::Both,
        ..Default::default()
    }
}

fn analyze(opts: &Options) {
    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let r = match report::build(opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: analyzer failed: {e}");
            std::process::exit(1);
        }
    };
    let text = report::to_text(&r);
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let n = r.log.samples;
    println!("{}", text.lines().take(14).collect::<Vec<_>>().join("\n"));
    println!(
        "bench: analyzer report: {n} samples in {wall:.2} s wall, {cpu:.2} s CPU = {:.1} M samples/s; peak RSS {} MiB",
        n as f64 / wall / 1e6,
        proc_status("VmHWM:").unwrap_or(0) / 1024
    );
}

fn perf_compare(dir: &Path) {
    let data = dir.join("perf.data");
    let rec = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-c", "50000", "-o"])
        .arg(&data)
        .args([
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 4000000 ]; do i=$((i+1)); done",
        ])
        .output();
    match rec {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "bench: perf record cannot record here, comparison skipped: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return;
        }
        Err(e) => {
            println!("bench: perf not available, comparison skipped: {e}");
            return;
        }
    }
    let t = Instant::now();
    let rep = Command::new("perf")
        .args(["report", "--stdio", "-i"])
        .arg(&data)
        .output();
    let wall = t.elapsed().as_secs_f64();
    let samples = Command::new("perf")
        .args(["report", "--stdio", "-i"])
        .arg(&data)
        .args(["--sort", "comm", "-q", "--show-nr-samples"])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .unwrap_or(0);
    match rep {
        Ok(o) if o.status.success() && samples > 0 => println!(
            "bench: perf report --stdio: {samples} samples in {wall:.2} s wall = {:.2} M samples/s",
            samples as f64 / wall / 1e6
        ),
        _ => println!("bench: perf report failed, comparison skipped"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dir = PathBuf::from(get("--dir").unwrap_or_else(|| {
        std::env::temp_dir()
            .join("analyzer-bench")
            .display()
            .to_string()
    }));
    if let Some(child) = get("--analyze-child") {
        let samples: usize = child.parse().unwrap_or(0);
        let _ = samples;
        let mut o = Options {
            log: dir.join("bench.vmlog"),
            bundles: vec![dir.join("guest0.bundle")],
            elfs: vec![dir.join("worker")],
            hv_elf: Some(dir.join("hypervisor.elf")),
            top: 25,
            ..Default::default()
        };
        o.level = Level::Both;
        analyze(&o);
        return;
    }
    let samples: usize = get("--samples")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let _opts = write_inputs(&dir, samples);
    // Analyse in a fresh process so its peak RSS is the analyzer's alone.
    let status = Command::new(std::env::current_exe().expect("own path"))
        .arg("--dir")
        .arg(&dir)
        .args(["--analyze-child", &samples.to_string()])
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("bench: analysis failed");
        std::process::exit(1);
    }
    if args.iter().any(|a| a == "--perf") {
        perf_compare(&dir);
    }
}
