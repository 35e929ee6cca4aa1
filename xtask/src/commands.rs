//! `cargo xtask run` and `cargo xtask test`.

use crate::image::{self, Image, ImageOptions, Scenario};
use crate::initramfs::Init;
use crate::machine::{self, RunOptions, RunResult};
use crate::{ISO_ENV, KERNEL_DIR_ENV, LINUX_INITRD_ENV, cmd, console, deps, kernel, paths};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The named scenario `name` ([`image::SCENARIOS`]) with `sample_hz` and `run_ms`
/// overridden when given.
pub fn scenario(name: &str, sample_hz: Option<u32>, run_ms: Option<u32>) -> Result<Scenario> {
    let mut scenario = Scenario::named(name)?;
    if let Some(hz) = sample_hz {
        scenario.sample_hz = hz;
    }
    if let Some(ms) = run_ms {
        scenario.run_ms = ms;
    }
    Ok(scenario)
}

/// Builds `scenario`'s image, saying where it went.
pub fn image(opts: &ImageOptions, scenario: &Scenario) -> Result<Image> {
    let mut scenario = scenario.clone();
    if opts.no_guests {
        scenario.vms.clear();
    } else if scenario.vms.is_empty() {
        println!(
            "image: no guest modules ({} does not exist yet)",
            paths::truth_guest_manifest().display()
        );
    }
    let img = image::build(&scenario, opts)?;
    for vm in &scenario.vms {
        if let (
            image::Guest::Linux {
                kernel: k,
                initrd,
                cmdline,
            },
            Some(files),
        ) = (&vm.guest, &img.kernel)
        {
            let src = k.source(files);
            println!(
                "image: VM {}: {} from {} ({} bytes), initramfs {} ({} bytes), `{cmdline}`",
                vm.name,
                files.describe(),
                src.display(),
                file_size(src).unwrap_or(0),
                initrd.display(),
                file_size(initrd).unwrap_or(0)
            );
        }
    }
    println!(
        "image: {} ({}, {} bytes; hypervisor {}; command line `{}`)",
        img.iso.display(),
        if image::uefi_supported() {
            "BIOS + UEFI"
        } else {
            "BIOS only"
        },
        file_size(&img.iso).unwrap_or(0),
        img.hypervisor_elf.display(),
        scenario.cmdline()
    );
    Ok(img)
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
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
pub fn run(
    opts: &ImageOptions,
    scenario: &Scenario,
    machine_name: &str,
    timeout: Duration,
) -> Result<()> {
    let img = image(opts, scenario)?;
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
    let manifest = out.join("manifest.txt");
    std::fs::write(&manifest, manifest_text(scenario, &img, &out, &bundles))
        .with_context(|| format!("cannot write {}", manifest.display()))?;
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
    for elf in &img.linux_elves {
        analyzer.arg("--elf").arg(elf);
    }
    if let Some(k) = &img.kernel {
        analyzer
            .arg("--kernel-map")
            .arg(&k.system_map)
            .args(["--kernel-release", &k.release]);
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

/// `build/run/manifest.txt`: what a run used and produced, as `key=value` lines.
fn manifest_text(
    scenario: &Scenario,
    img: &Image,
    out: &Path,
    bundles: &[(String, PathBuf)],
) -> String {
    let mut m = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| writeln!(m, "{k}={v}").unwrap();
    line("scenario", &scenario.name);
    line("cmdline", &scenario.cmdline());
    line("iso", &img.iso.display());
    line("hypervisor_elf", &img.hypervisor_elf.display());
    line("console", &out.join("console.txt").display());
    line("log", &out.join("samples.vmlog").display());
    for (vm, b) in bundles {
        line(&format!("bundle.{vm}"), &b.display());
    }
    for (vm, elf) in &img.guest_elves {
        line(&format!("elf.{vm}"), &elf.display());
    }
    for elf in &img.linux_elves {
        let name = elf.file_name().unwrap_or_default().to_string_lossy();
        line(&format!("elf.{name}"), &elf.display());
    }
    if let Some(k) = &img.kernel {
        line("kernel_release", &k.release);
        line("kernel_package", &k.package);
        line("vmlinux", &k.vmlinux.display());
        line("vmlinuz", &k.vmlinuz.display());
        line("system_map", &k.system_map.display());
    }
    m
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

/// The scenarios whose images the end-to-end tests boot besides the default one.
const LINUX_TEST_SCENARIOS: [&str; 4] =
    ["linux", "linux-bzimage", "linux-triplefault", "linux-procs"];

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
    // Unit tests of other crates read the kernel files: fetch them first (cached after
    // the first time) and name their directory in HV_KERNEL_DIR.
    let mut kernel_dir = None;
    stage(&mut stages, "kernel", || {
        kernel_dir = Some(kernel::ensure()?.dir);
        Ok(())
    });
    let kernel_env = kernel_dir.unwrap_or_else(paths::kernel_dir);
    stage(&mut stages, "unit tests (host)", || {
        cmd::run(cmd::cargo().env(KERNEL_DIR_ENV, &kernel_env).args([
            "test",
            "--workspace",
            "--exclude",
            "e2e-tests",
        ]))
    });
    let mut iso = None;
    stage(&mut stages, "image", || {
        iso = Some(image(opts, &Scenario::default_scenario())?.iso);
        Ok(())
    });
    // The Linux scenarios' images (each builds its initramfs); the end-to-end tests find
    // them at paths::scenario_iso.
    let mut initrd = None;
    stage(&mut stages, "images (Linux scenarios)", || {
        for name in LINUX_TEST_SCENARIOS {
            image(opts, &scenario(name, None, None)?)?;
        }
        let path = paths::initramfs_dir().join(Init::Workload { vm: "linux".into() }.file_name());
        initrd = Some(path);
        Ok(())
    });
    if e2e {
        match iso {
            Some(iso) => {
                stage(&mut stages, "end-to-end boots", || {
                    let mut c = cmd::cargo();
                    c.env(ISO_ENV, &iso).env(KERNEL_DIR_ENV, &kernel_env);
                    if let Some(initrd) = &initrd {
                        c.env(LINUX_INITRD_ENV, initrd);
                    }
                    // --no-fail-fast: every test binary runs even when one fails.
                    cmd::run(c.args([
                        "test",
                        "-p",
                        "e2e-tests",
                        "--no-fail-fast",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{LINUX_CMDLINE, LinuxKernel, VmSpec};
    use crate::kernel::KernelFiles;

    #[test]
    fn manifest_names_scenario_kernel_and_files() {
        let scenario = Scenario {
            name: "linux".into(),
            sample_hz: 1000,
            run_ms: 0,
            vms: vec![VmSpec::linux(
                "linux",
                LinuxKernel::Pvh,
                "/b/w.cpio".into(),
                LINUX_CMDLINE,
            )],
            extra_args: Vec::new(),
        };
        let img = Image {
            iso: "/b/hv.iso".into(),
            hypervisor_elf: "/t/hypervisor".into(),
            guest_elves: Vec::new(),
            grub_cfg: "/b/iso/boot/grub/grub.cfg".into(),
            kernel: Some(KernelFiles {
                dir: "/k".into(),
                vmlinux: "/k/vmlinux".into(),
                vmlinuz: "/k/vmlinuz".into(),
                config: "/k/config".into(),
                system_map: "/k/System.map".into(),
                version_file: "/k/version.txt".into(),
                release: "6.1.0-57-amd64".into(),
                package: "6.1.192-3".into(),
            }),
            linux_elves: vec!["/i/w.elves/workload".into()],
        };
        let m = manifest_text(
            &scenario,
            &img,
            Path::new("/r"),
            &[("linux".into(), "/r/linux.bundle".into())],
        );
        for line in [
            "scenario=linux\n",
            "log=/r/samples.vmlog\n",
            "console=/r/console.txt\n",
            "bundle.linux=/r/linux.bundle\n",
            "elf.workload=/i/w.elves/workload\n",
            "kernel_release=6.1.0-57-amd64\n",
            "kernel_package=6.1.192-3\n",
            "system_map=/k/System.map\n",
        ] {
            assert!(m.contains(line), "{line:?} missing in\n{m}");
        }
    }
}
