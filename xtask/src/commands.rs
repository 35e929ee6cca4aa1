//! `cargo xtask run` and `cargo xtask test`.

use crate::image::{self, Image, ImageOptions, Scenario};
use crate::machine::{self, RunOptions, RunResult};
use crate::{ISO_ENV, cmd, console, deps, paths};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Builds the default scenario's image, saying where it went.
pub fn image(opts: &ImageOptions) -> Result<Image> {
    let mut scenario = Scenario::default_scenario();
    if opts.no_guests {
        scenario.vms.clear();
    } else if scenario.vms.is_empty() {
        println!(
            "image: no guest modules ({} does not exist yet)",
            paths::truth_guest_manifest().display()
        );
    }
    let img = image::build(&scenario, opts)?;
    println!(
        "image: {} ({}; hypervisor {}; command line `{}`)",
        img.iso.display(),
        if image::uefi_supported() {
            "BIOS + UEFI"
        } else {
            "BIOS only"
        },
        img.hypervisor_elf.display(),
        scenario.cmdline()
    );
    Ok(img)
}

/// Writes the run's console, sample log and bundles to `out` and returns the bundle paths.
fn collect(run: &RunResult, out: &Path) -> Result<Vec<(String, PathBuf)>> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("console.txt"), console::clean(&run.console))?;
    std::fs::write(out.join("samples.vmlog"), &run.log)?;
    let mut bundles = Vec::new();
    for (vm, text) in console::extract_bundles(&run.console) {
        let path = out.join(format!("{vm}.bundle"));
        if let Err(e) = guest_kit::Bundle::parse(&text) {
            println!("run: warning: the bundle of VM {vm} does not parse: {e}");
        }
        std::fs::write(&path, text)?;
        bundles.push((vm, path));
    }
    Ok(bundles)
}

/// `cargo xtask run`: build, boot in the best machine, collect, analyse.
pub fn run(opts: &ImageOptions, machine_name: &str, timeout: Duration) -> Result<()> {
    let img = image(opts)?;
    let machine = machine::machine_by_name(machine_name)?;
    if machine_name == "auto" {
        match machine::nested_kvm() {
            Ok(()) => println!("run: nested KVM available: booting in QEMU/KVM"),
            Err(why) => {
                println!("run: no nested KVM ({why}): booting in Bochs (emulated VMX, no PMU)")
            }
        }
    }
    let run_opts = RunOptions {
        label: "xtask-run".into(),
        timeout,
        ..RunOptions::default()
    };
    let run = machine.boot(&img.iso, &run_opts)?;
    let out = paths::build_dir().join("run");
    let bundles = collect(&run, &out)?;
    let lines = run.lines();
    println!(
        "run: {} {} after {:.1} s; console {} lines, sample log {} bytes, bundles: {}",
        run.machine,
        run.exit,
        run.wall.as_secs_f64(),
        lines.len(),
        run.log.len(),
        if bundles.is_empty() {
            "none".to_string()
        } else {
            bundles
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!(
        "run: output in {} (emulator files in {})",
        out.display(),
        run.run_dir.display()
    );
    let stop = run.find_line("hv: stop status=");
    let relay = || {
        println!("---- console ----");
        for l in &lines {
            println!("{l}");
        }
        println!("---- end of console ----");
    };
    if run.log.is_empty() {
        relay();
        println!("run: the sample log (COM2) is empty: the analyzer was NOT run.");
        match &stop {
            Some(l) => println!("run: the hypervisor stopped: {l}"),
            None => println!("run: the hypervisor never printed `hv: stop status=`."),
        }
        bail!("no samples were collected");
    }
    let mut analyzer = cmd::cargo();
    analyzer
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "analyzer",
            "--bin",
            "analyzer",
            "--",
            "report",
        ])
        .arg(out.join("samples.vmlog"));
    for (_, b) in &bundles {
        analyzer.arg("--bundle").arg(b);
    }
    for (_, elf) in &img.guest_elves {
        analyzer.arg("--elf").arg(elf);
    }
    analyzer.arg("--hv-elf").arg(&img.hypervisor_elf);
    println!("run: {}", cmd::display(&analyzer));
    if let Err(e) = cmd::run(&mut analyzer) {
        relay();
        println!(
            "run: the boot ran and logged {} bytes, but the analyzer failed: {e:#}",
            run.log.len()
        );
        bail!("analyzer failed");
    }
    if stop
        .as_deref()
        .is_none_or(|l| !l.starts_with("hv: stop status=0 "))
    {
        println!(
            "run: warning: the hypervisor did not stop cleanly: {}",
            stop.as_deref().unwrap_or("no stop line")
        );
    }
    Ok(())
}

/// One stage of `cargo xtask test`.
struct Stage {
    name: &'static str,
    ok: bool,
    time: Duration,
    note: String,
}

fn stage(stages: &mut Vec<Stage>, name: &'static str, f: impl FnOnce() -> Result<()>) -> bool {
    println!("\n==== test stage: {name} ====");
    let start = Instant::now();
    let result = f();
    let time = start.elapsed();
    let ok = result.is_ok();
    let note = match result {
        Ok(()) => String::new(),
        Err(e) => format!("{e:#}"),
    };
    if !ok {
        println!("==== {name}: FAILED: {note}");
    }
    stages.push(Stage {
        name,
        ok,
        time,
        note,
    });
    ok
}

fn vmm_build_std_args() -> Vec<String> {
    vec![
        "--target".into(),
        paths::vmm_target_spec().display().to_string(),
        "-Z".into(),
        "build-std=core,alloc".into(),
        "-Z".into(),
        "json-target-spec".into(),
    ]
}

/// `cargo xtask test`: lint, unit tests, image, end-to-end boots. Returns whether all passed.
pub fn test(opts: &ImageOptions, e2e: bool) -> Result<bool> {
    let mut stages = Vec::new();
    stage(&mut stages, "fmt", || {
        cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))
    });
    stage(&mut stages, "clippy (host)", || {
        cmd::run(cmd::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    stage(&mut stages, "clippy (hypervisor, x86_64-vmm)", || {
        cmd::run(
            cmd::cargo()
                .args(["clippy", "-p", "hypervisor"])
                .args(vmm_build_std_args())
                .args(["--", "-D", "warnings"]),
        )
    });
    stage(&mut stages, "unit tests (host)", || {
        cmd::run(cmd::cargo().args(["test", "--workspace", "--exclude", "e2e-tests"]))
    });
    let mut iso = None;
    stage(&mut stages, "image", || {
        iso = Some(image(opts)?.iso);
        Ok(())
    });
    if e2e {
        match iso {
            Some(iso) => {
                stage(&mut stages, "end-to-end boots", || {
                    cmd::run(cmd::cargo().env(ISO_ENV, &iso).args([
                        "test",
                        "-p",
                        "e2e-tests",
                        "--",
                        "--test-threads=2",
                    ]))
                });
            }
            None => stages.push(Stage {
                name: "end-to-end boots",
                ok: false,
                time: Duration::ZERO,
                note: "not run: no image".into(),
            }),
        }
    }
    println!("\n==== cargo xtask test: stages ====");
    for s in &stages {
        println!(
            "{:<6} {:>7.1} s  {}{}",
            if s.ok { "ok" } else { "FAILED" },
            s.time.as_secs_f64(),
            s.name,
            if s.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", s.note.lines().next().unwrap_or(""))
            }
        );
    }
    let passed = stages.iter().filter(|s| s.ok).count();
    let failed = stages.len() - passed;
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// `cargo xtask boot`: boot an ISO once in a named machine and show the console.
pub fn boot(iso: &Path, machine_name: &str, timeout: Duration, keep: bool) -> Result<bool> {
    let machine = machine::machine_by_name(machine_name)?;
    let run = machine.boot(
        iso,
        &RunOptions {
            label: "boot".into(),
            timeout,
            ..RunOptions::default()
        },
    )?;
    for l in run.lines() {
        println!("{l}");
    }
    println!(
        "boot: {} {} after {:.2} s; hypervisor output after {}; sample log {} bytes",
        run.machine,
        run.exit,
        run.wall.as_secs_f64(),
        run.first_hv_output
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into()),
        run.log.len()
    );
    let stopped = run.find_line("hv: stop status=").is_some();
    if keep || !stopped {
        println!("boot: run directory kept: {}", run.run_dir.display());
    } else {
        run.discard();
    }
    Ok(stopped)
}

/// Checks the tools every command needs (see [`deps::ensure`]).
pub fn deps(verbose: bool) -> Result<()> {
    deps::ensure(verbose)
}
