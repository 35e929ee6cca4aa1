//! `cargo xtask image`: the hypervisor, its guest modules and a bootable GRUB ISO.

use crate::{cmd, paths};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where a guest module's ELF comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guest {
    /// The ground-truth guest crate at `tests/truth-guest`, built for `x86_64-unknown-none`.
    TruthGuest,
    /// A prebuilt ELF file.
    Elf(PathBuf),
}

/// One VM of a scenario: `vm=NAME:MODULE[:vcpus=N][:mem_mb=M]` on the hypervisor command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// VM name; its console lines come back as `[NAME] ...`.
    pub name: String,
    /// Module name given to GRUB's `module2` (also the file name under `/boot`).
    pub module: String,
    /// The guest ELF.
    pub guest: Guest,
    /// Number of vCPUs (hypervisor default when `None`).
    pub vcpus: Option<u32>,
    /// Guest memory in MiB (hypervisor default when `None`).
    pub mem_mb: Option<u32>,
}

/// What to boot: which guests and with which hypervisor command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// `default` builds into `build/`; any other name into `build/scenarios/NAME/`.
    pub name: String,
    /// `sample_hz=` on the command line.
    pub sample_hz: u32,
    /// `run_ms=` on the command line (0 = until every guest has stopped).
    pub run_ms: u32,
    /// The VMs, in order.
    pub vms: Vec<VmSpec>,
    /// Further `key=value` words appended to the command line.
    pub extra_args: Vec<String>,
}

impl Scenario {
    /// The main scenario: the ground-truth guest as VM `truth` when its crate exists.
    pub fn default_scenario() -> Self {
        let vms = if paths::truth_guest_manifest().is_file() {
            vec![VmSpec {
                name: "truth".into(),
                module: "truth-guest".into(),
                guest: Guest::TruthGuest,
                vcpus: None,
                mem_mb: None,
            }]
        } else {
            Vec::new()
        };
        Scenario {
            name: "default".into(),
            sample_hz: 1000,
            // A safety net: the hypervisor stops as soon as every guest has stopped (the
            // ground-truth guest takes ~3 s of host time under Bochs).
            run_ms: 20000,
            vms,
            extra_args: Vec::new(),
        }
    }

    /// The directory this scenario's ISO tree and image go to.
    pub fn out_dir(&self) -> PathBuf {
        if self.name == "default" {
            paths::build_dir()
        } else {
            paths::build_dir().join("scenarios").join(&self.name)
        }
    }

    /// The hypervisor command line (without the kernel path).
    pub fn cmdline(&self) -> String {
        let mut s = format!("sample_hz={} run_ms={}", self.sample_hz, self.run_ms);
        for vm in &self.vms {
            write!(s, " vm={}:{}", vm.name, vm.module).unwrap();
            if let Some(n) = vm.vcpus {
                write!(s, ":vcpus={n}").unwrap();
            }
            if let Some(m) = vm.mem_mb {
                write!(s, ":mem_mb={m}").unwrap();
            }
        }
        for extra in &self.extra_args {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }

    /// Checks names so they are safe as file names and command-line words.
    pub fn validate(&self) -> Result<()> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !s.starts_with('.')
        };
        if !ok(&self.name) {
            bail!(
                "bad scenario name {:?}: use letters, digits, - _ .",
                self.name
            );
        }
        for vm in &self.vms {
            if !ok(&vm.name) || !ok(&vm.module) {
                bail!(
                    "bad VM {:?} / module {:?}: use letters, digits, - _ .",
                    vm.name,
                    vm.module
                );
            }
        }
        Ok(())
    }
}

/// Build profile for the hypervisor and guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `--release` (with debug info, per the workspace profile): the default.
    Release,
    /// The dev profile.
    Debug,
}

/// Options of one image build.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Build profile.
    pub profile: Profile,
    /// Use this ELF as the hypervisor instead of building the `hypervisor` crate.
    pub hypervisor_elf: Option<PathBuf>,
    /// Leave the scenario's VMs out (the hypervisor boots alone).
    pub no_guests: bool,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            profile: Profile::Release,
            hypervisor_elf: None,
            no_guests: false,
        }
    }
}

/// A built image and the ELFs in it (the analyzer wants the ELFs).
#[derive(Clone, Debug)]
pub struct Image {
    /// The bootable ISO (BIOS, and UEFI when grub-efi-amd64-bin is installed).
    pub iso: PathBuf,
    /// The hypervisor ELF as built (with symbols).
    pub hypervisor_elf: PathBuf,
    /// `(VM name, guest ELF)` for every VM of the scenario.
    pub guest_elves: Vec<(String, PathBuf)>,
    /// The GRUB configuration written.
    pub grub_cfg: PathBuf,
}

/// Runs `cargo build` (arguments in `args`) and returns the executables it produced,
/// as `(target name, path)`.
fn cargo_build_executables(args: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cmd::cargo();
    cmd.arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let shown = cmd::display(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            exes.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(exes)
}

fn profile_args(profile: Profile) -> &'static [&'static str] {
    match profile {
        Profile::Release => &["--release"],
        Profile::Debug => &[],
    }
}

/// Builds the hypervisor for `x86_64-vmm.json` and returns its ELF.
pub fn build_hypervisor(profile: Profile) -> Result<PathBuf> {
    let spec = paths::vmm_target_spec();
    let spec = spec.to_str().context("target spec path is not UTF-8")?;
    let mut args = vec![
        "-p",
        "hypervisor",
        "--bin",
        "hypervisor",
        "--target",
        spec,
        "-Z",
        "build-std=core,alloc",
        "-Z",
        "json-target-spec",
    ];
    args.extend_from_slice(profile_args(profile));
    let exes = cargo_build_executables(&args)?;
    exes.into_iter()
        .find(|(name, _)| name == "hypervisor")
        .map(|(_, p)| p)
        .context("cargo built no `hypervisor` executable")
}

/// Builds the ground-truth guest (`tests/truth-guest`) and returns its ELF.
pub fn build_truth_guest(profile: Profile) -> Result<PathBuf> {
    let manifest = paths::truth_guest_manifest();
    if !manifest.is_file() {
        bail!(
            "the ground-truth guest crate is missing: {} does not exist",
            manifest.display()
        );
    }
    let manifest = manifest.to_str().context("manifest path is not UTF-8")?;
    let mut args = vec![
        "--manifest-path",
        manifest,
        "--target",
        "x86_64-unknown-none",
    ];
    args.extend_from_slice(profile_args(profile));
    let exes = cargo_build_executables(&args)?;
    match exes.len() {
        0 => bail!("building {manifest} produced no executable"),
        1 => Ok(exes.into_iter().next().unwrap().1),
        _ => exes
            .iter()
            .find(|(name, _)| name == "truth-guest" || name == "truth_guest")
            .map(|(_, p)| p.clone())
            .with_context(|| {
                format!(
                    "{manifest} builds several executables ({}); expected one named truth-guest",
                    exes.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
    }
}

/// The GRUB configuration for `scenario` (hypervisor at `/boot/hypervisor.elf`).
pub fn grub_cfg(scenario: &Scenario) -> String {
    let mut cfg = String::from(
        "# Written by `cargo xtask image`; regenerated on every build.\n\
         set timeout=0\n\
         set default=0\n\
         serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         \n",
    );
    writeln!(cfg, "menuentry \"hypervisor ({})\" {{", scenario.name).unwrap();
    writeln!(
        cfg,
        "    multiboot2 /boot/hypervisor.elf {}",
        scenario.cmdline()
    )
    .unwrap();
    for vm in &scenario.vms {
        writeln!(cfg, "    module2 /boot/{}.elf {}", vm.module, vm.module).unwrap();
    }
    cfg.push_str("    boot\n}\n");
    cfg
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Builds everything `scenario` needs and writes its ISO.
pub fn build(scenario: &Scenario, opts: &ImageOptions) -> Result<Image> {
    let mut scenario = scenario.clone();
    if opts.no_guests {
        scenario.vms.clear();
    }
    let scenario = &scenario;
    scenario.validate()?;
    if !cmd::on_path("grub-mkrescue") {
        bail!("grub-mkrescue not found: run `cargo xtask deps`");
    }
    let hypervisor_elf = match &opts.hypervisor_elf {
        Some(p) => {
            if !p.is_file() {
                bail!("hypervisor ELF {} does not exist", p.display());
            }
            p.clone()
        }
        None => build_hypervisor(opts.profile)?,
    };
    let mut truth: Option<PathBuf> = None;
    let mut guest_elves = Vec::new();
    for vm in &scenario.vms {
        let elf = match &vm.guest {
            Guest::Elf(p) => p.clone(),
            Guest::TruthGuest => match &truth {
                Some(p) => p.clone(),
                None => {
                    let p = build_truth_guest(opts.profile)?;
                    truth = Some(p.clone());
                    p
                }
            },
        };
        guest_elves.push((vm.name.clone(), elf));
    }

    // Build the tree and the ISO under temporary names and rename them into place, so a
    // run that is booting the previous image (emulators keep the file open) or a build
    // running at the same time never sees a half-written one.
    let out = scenario.out_dir();
    let tag = format!("tmp-{}", std::process::id());
    let tmp_root = out.join(format!("iso.{tag}"));
    if tmp_root.exists() {
        std::fs::remove_dir_all(&tmp_root)
            .with_context(|| format!("cannot clear {}", tmp_root.display()))?;
    }
    let grub_dir = tmp_root.join("boot").join("grub");
    std::fs::create_dir_all(&grub_dir)
        .with_context(|| format!("cannot create {}", grub_dir.display()))?;
    copy(&hypervisor_elf, &tmp_root.join("boot/hypervisor.elf"))?;
    for (vm, (_, elf)) in scenario.vms.iter().zip(&guest_elves) {
        copy(elf, &tmp_root.join(format!("boot/{}.elf", vm.module)))?;
    }
    std::fs::write(grub_dir.join("grub.cfg"), grub_cfg(scenario))
        .with_context(|| format!("cannot write {}", grub_dir.join("grub.cfg").display()))?;

    // grub-mkrescue makes a hybrid image: El Torito for BIOS and, when the
    // x86_64-efi platform is installed, an EFI system partition; the result
    // also carries an MBR so it can be written to a USB stick with dd.
    let tmp_iso = out.join(format!("hypervisor.iso.{tag}"));
    let made = cmd::output(
        Command::new("grub-mkrescue")
            .arg("-o")
            .arg(&tmp_iso)
            .arg(&tmp_root),
    );
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp_iso);
        let _ = std::fs::remove_dir_all(&tmp_root);
        return Err(e);
    }
    let iso = out.join("hypervisor.iso");
    std::fs::rename(&tmp_iso, &iso)
        .with_context(|| format!("cannot move {} into place", tmp_iso.display()))?;
    let iso_root = out.join("iso");
    if iso_root.exists() {
        std::fs::remove_dir_all(&iso_root)
            .with_context(|| format!("cannot clear {}", iso_root.display()))?;
    }
    std::fs::rename(&tmp_root, &iso_root)
        .with_context(|| format!("cannot move {} into place", tmp_root.display()))?;
    let grub_cfg_path = iso_root.join("boot/grub/grub.cfg");
    Ok(Image {
        iso,
        hypervisor_elf,
        guest_elves,
        grub_cfg: grub_cfg_path,
    })
}

/// Whether the installed GRUB can make UEFI-bootable images.
pub fn uefi_supported() -> bool {
    Path::new("/usr/lib/grub/x86_64-efi").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario {
            name: "two".into(),
            sample_hz: 500,
            run_ms: 0,
            vms: vec![
                VmSpec {
                    name: "a".into(),
                    module: "truth-guest".into(),
                    guest: Guest::TruthGuest,
                    vcpus: Some(2),
                    mem_mb: None,
                },
                VmSpec {
                    name: "b".into(),
                    module: "other".into(),
                    guest: Guest::Elf("/x/other.elf".into()),
                    vcpus: None,
                    mem_mb: Some(128),
                },
            ],
            extra_args: vec!["debug=1".into()],
        }
    }

    #[test]
    fn cmdline_lists_every_vm_and_option() {
        assert_eq!(
            scenario().cmdline(),
            "sample_hz=500 run_ms=0 vm=a:truth-guest:vcpus=2 vm=b:other:mem_mb=128 debug=1"
        );
    }

    #[test]
    fn grub_cfg_has_multiboot2_and_one_module2_per_vm() {
        let cfg = grub_cfg(&scenario());
        assert!(cfg.contains("set timeout=0\n"));
        assert!(cfg.contains(
            "    multiboot2 /boot/hypervisor.elf sample_hz=500 run_ms=0 vm=a:truth-guest:vcpus=2 vm=b:other:mem_mb=128 debug=1\n"
        ));
        assert!(cfg.contains("    module2 /boot/truth-guest.elf truth-guest\n"));
        assert!(cfg.contains("    module2 /boot/other.elf other\n"));
        assert!(cfg.contains("terminal_output serial console\n"));
    }

    #[test]
    fn scenario_dirs() {
        assert_eq!(
            scenario().out_dir(),
            paths::build_dir().join("scenarios/two")
        );
        let mut d = scenario();
        d.name = "default".into();
        assert_eq!(d.out_dir(), paths::build_dir());
    }

    #[test]
    fn names_that_escape_the_directory_are_rejected() {
        let mut s = scenario();
        s.vms[0].module = "../evil".into();
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "bad VM \"a\" / module \"../evil\": use letters, digits, - _ ."
        );
        s = scenario();
        s.name = "a b".into();
        assert!(s.validate().is_err());
        assert!(scenario().validate().is_ok());
    }
}
