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

/// How a run's bundle reached the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleSource {
    /// `GuestData` records in the sample log (`guest-kit send`).
    Channel,
    /// `[NAME] @gk ...` lines on the console (`guest-kit console`).
    Console,
}

impl BundleSource {
    /// As the run's summary line and `manifest.txt` say it.
    pub fn name(self) -> &'static str {
        match self {
            BundleSource::Channel => "hypercall channel",
            BundleSource::Console => "console",
        }
    }
}

/// One bundle `collect` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunBundle {
    /// VM name.
    pub vm: String,
    /// `build/run/NAME.bundle`.
    pub path: PathBuf,
    /// Where its text came from.
    pub source: BundleSource,
}

/// The bundle text each VM delivered through the hypercall channel (the last complete
/// one, see `guest_kit::channel`), by VM name from the log's VM table, and one line per
/// problem (lost records, a delivery cut off).
pub fn channel_bundles(log: &[u8]) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    let mut names = std::collections::BTreeMap::new();
    let mut channel = guest_kit::channel::Reassembler::new();
    for item in vmlog::Decoder::from_slice(log) {
        match item {
            Ok(vmlog::Item::Vm(v)) => {
                names.insert(v.id, v.name);
            }
            Ok(vmlog::Item::GuestData {
                vm,
                kind,
                seq,
                data,
            }) => channel.push(vm, kind, seq, &data),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let mut bundles = std::collections::BTreeMap::new();
    let mut warnings = Vec::new();
    for (id, ch) in channel.finish() {
        let Some(name) = names.get(&id) else {
            warnings.push(format!(
                "VM {id} delivered data through the hypercall channel but is not in the log's VM table: ignored"
            ));
            continue;
        };
        for w in &ch.warnings {
            warnings.push(format!("hypercall channel of VM {name}: {w}"));
        }
        if let Some(d) = ch.bundle {
            bundles.insert(name.clone(), d.text);
        }
    }
    (bundles, warnings)
}

/// Writes the run's console, sample log and bundles to `out` and returns the bundles:
/// each VM's from the hypercall channel (in the log) when it delivered one, else from its
/// `@gk` console lines.
fn collect(run: &RunResult, out: &Path) -> Result<Vec<RunBundle>> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("console.txt"), console::clean(&run.console))?;
    std::fs::write(out.join("samples.vmlog"), &run.log)?;
    let (mut from_channel, warnings) = channel_bundles(&run.log);
    for w in warnings {
        println!("run: warning: {w}");
    }
    from_channel.retain(|vm, _| console::safe_name(vm));
    let from_console = console::extract_bundles(&run.console);
    let mut names: Vec<&String> = from_channel.keys().chain(from_console.keys()).collect();
    names.sort();
    names.dedup();
    let mut bundles = Vec::new();
    for vm in names {
        let (text, source) = match (from_channel.get(vm), from_console.get(vm)) {
            (Some(channel), console) => {
                if let Some(console) = console
                    && guest_kit::Bundle::parse(console).ok()
                        != guest_kit::Bundle::parse(channel).ok()
                {
                    println!(
                        "run: note: the console copy of VM {vm}'s bundle differs from the one it delivered through the hypercall channel; the channel's is used"
                    );
                }
                (channel, BundleSource::Channel)
            }
            (None, Some(console)) => {
                if let Err(e) = guest_kit::Bundle::parse(console) {
                    println!("run: warning: the bundle of VM {vm} does not parse: {e}");
                }
                (console, BundleSource::Console)
            }
            (None, None) => continue,
        };
        let path = out.join(format!("{vm}.bundle"));
        std::fs::write(&path, text)?;
        bundles.push(RunBundle {
            vm: vm.clone(),
            path,
            source,
        });
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
                .map(|b| format!("{} (through the {})", b.vm, b.source.name()))
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
    for b in &bundles {
        analyzer.arg("--bundle").arg(&b.path);
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
fn manifest_text(scenario: &Scenario, img: &Image, out: &Path, bundles: &[RunBundle]) -> String {
    let mut m = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| writeln!(m, "{k}={v}").unwrap();
    line("scenario", &scenario.name);
    line("cmdline", &scenario.cmdline());
    line("iso", &img.iso.display());
    line("hypervisor_elf", &img.hypervisor_elf.display());
    line("console", &out.join("console.txt").display());
    line("log", &out.join("samples.vmlog").display());
    for b in bundles {
        line(&format!("bundle.{}", b.vm), &b.path.display());
        let source = match b.source {
            BundleSource::Channel => "channel",
            BundleSource::Console => "console",
        };
        line(&format!("bundle_source.{}", b.vm), &source);
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
    fn channel_bundles_are_named_by_the_vm_table_and_gaps_reported() {
        let mut w = vmlog::LogWriter::new();
        let header = vmlog::Header {
            format_major: vmlog::FORMAT_MAJOR,
            format_minor: vmlog::FORMAT_MINOR,
            hv_build_id: "t",
            tsc_hz: 1_000_000,
            source: vmlog::SamplingSource::LapicTimer,
            period_tsc: 1000,
            pcpus: 1,
            vm_count: 2,
            start_tsc: 0,
        };
        let vms = [
            vmlog::VmInfo {
                id: 0,
                name: "linux",
                vcpus: 1,
            },
            vmlog::VmInfo {
                id: 1,
                name: "other",
                vcpus: 1,
            },
        ];
        w.header(&header, &vms).unwrap();
        let mut bundle = String::from("gk-bundle 1\nvm linux\n");
        while bundle.len() < 3000 {
            bundle.push_str("proc 7 sh cr3=0x8000\n");
        }
        w.guest_data(0, vmlog::GUEST_DATA_BUNDLE, bundle.as_bytes())
            .unwrap();
        // VM 1 lost its record 1 of 2; VM 9 is in no table.
        for seq in [0u32, 2] {
            let r = vmlog::Record::GuestData(vmlog::GuestData {
                vm: 1,
                kind: vmlog::GUEST_DATA_BUNDLE,
                seq,
                data: b"gk-bundle 1\nvm other\n",
            });
            w.record(vmlog::GLOBAL_STREAM, &r).unwrap();
        }
        w.guest_data(9, vmlog::GUEST_DATA_BUNDLE, b"gk-bundle 1\nvm x\n")
            .unwrap();
        let (bundles, warnings) = channel_bundles(&w.into_bytes());
        assert_eq!(bundles.len(), 2, "{bundles:?}");
        assert_eq!(bundles["linux"], bundle);
        // The second delivery of `other` is whole, the first lost its end.
        assert_eq!(bundles["other"], "gk-bundle 1\nvm other\n");
        assert_eq!(
            warnings,
            [
                "hypercall channel of VM other: bundle records seq 1..=1 are missing (lost frames): the bundle they belong to is not used",
                "VM 9 delivered data through the hypercall channel but is not in the log's VM table: ignored",
            ]
        );
        assert_eq!(channel_bundles(b"no log").0.len(), 0);
    }

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
            &[
                RunBundle {
                    vm: "linux".into(),
                    path: "/r/linux.bundle".into(),
                    source: BundleSource::Channel,
                },
                RunBundle {
                    vm: "truth".into(),
                    path: "/r/truth.bundle".into(),
                    source: BundleSource::Console,
                },
            ],
        );
        for line in [
            "scenario=linux\n",
            "log=/r/samples.vmlog\n",
            "console=/r/console.txt\n",
            "bundle.linux=/r/linux.bundle\n",
            "bundle_source.linux=channel\n",
            "bundle.truth=/r/truth.bundle\n",
            "bundle_source.truth=console\n",
            "elf.workload=/i/w.elves/workload\n",
            "kernel_release=6.1.0-57-amd64\n",
            "kernel_package=6.1.192-3\n",
            "system_map=/k/System.map\n",
        ] {
            assert!(m.contains(line), "{line:?} missing in\n{m}");
        }
    }
}
