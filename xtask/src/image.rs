//! `cargo xtask image`: the hypervisor, its guest modules and a bootable GRUB ISO.

use crate::initramfs::{self, Init};
use crate::kernel::{self, KernelFiles};
use crate::{cmd, paths};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The kernel command line of Linux guests, unless a scenario says otherwise:
///
/// - `console=ttyS0`: the console is the 16550 at 0x3f8 (relayed as `[NAME] line`);
/// - `quiet`: only warnings from the kernel, so the console shows the scenario's lines;
/// - `cryptomgr.notests`: no crypto self-tests at boot (seconds of emulated time);
/// - `mitigations=off`: no speculation workarounds (KPTI would switch CR3 on every
///   kernel entry, and the retpolines and buffer clears change what is profiled);
/// - `8250.nr_uarts=1`: probe one UART only (the others are not emulated);
/// - `panic=-1`: reboot at once on a panic instead of hanging, so the VM ends;
/// - `tsc=reliable`: no clocksource watchdog. With no HPET or ACPI PM timer its only
///   reference is jiffies, which fall behind whenever the hypervisor holds the pCPU (a
///   sampling exit, the console), and it would then declare the TSC unstable and move
///   the guest to jiffies. The TSC is the host's own, offset 0: it is the reliable clock.
pub const LINUX_CMDLINE: &str =
    "console=ttyS0 quiet cryptomgr.notests mitigations=off 8250.nr_uarts=1 panic=-1 tsc=reliable";

/// Guest RAM of Linux VMs, MiB.
pub const LINUX_MEM_MB: u32 = 256;

/// Which of Debian's kernel files a Linux guest boots ([`kernel::ensure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxKernel {
    /// `vmlinux`, the uncompressed ELF, entered through its PVH note.
    Pvh,
    /// `vmlinuz`, the bzImage as shipped (it decompresses itself).
    BzImage,
}

impl LinuxKernel {
    /// The GRUB module name: the first word of the module's command line.
    pub fn module(self) -> &'static str {
        match self {
            LinuxKernel::Pvh => "vmlinux",
            LinuxKernel::BzImage => "vmlinuz",
        }
    }

    /// The file name under `/boot` in the image.
    pub fn boot_file(self) -> &'static str {
        match self {
            LinuxKernel::Pvh => "vmlinux.elf",
            LinuxKernel::BzImage => "vmlinuz",
        }
    }

    /// The kernel file among `files`.
    pub fn source(self, files: &KernelFiles) -> &Path {
        match self {
            LinuxKernel::Pvh => &files.vmlinux,
            LinuxKernel::BzImage => &files.vmlinuz,
        }
    }
}

/// What a VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guest {
    /// The ground-truth guest crate at `tests/truth-guest`, built for `x86_64-unknown-none`.
    TruthGuest,
    /// A prebuilt ELF file.
    Elf(PathBuf),
    /// Debian's Linux kernel ([`kernel::ensure`]) with an initramfs and a command line.
    /// GRUB gets `module2 /boot/KERNEL MODULE CMDLINE` (the hypervisor takes the first
    /// word as the module's name, the rest as the guest's command line) and
    /// `module2 /boot/NAME-initrd.cpio NAME-initrd`; the VM gets `:initrd=NAME-initrd`.
    Linux {
        /// vmlinux (PVH) or vmlinuz (bzImage).
        kernel: LinuxKernel,
        /// The initramfs (e.g. from [`initramfs::build_initramfs`]).
        initrd: PathBuf,
        /// The kernel command line (e.g. [`LINUX_CMDLINE`]).
        cmdline: String,
    },
}

/// Who in a VM may use the hypercall channel (`GUEST_DATA`): `:channel=off|kernel|user`
/// on its `vm=` entry (the hypervisor's default is `kernel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Nobody.
    Off,
    /// The guest kernel only.
    Kernel,
    /// User processes too (`guest-kit send` in a Linux guest's /init).
    User,
}

impl Channel {
    /// The option's value.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Off => "off",
            Channel::Kernel => "kernel",
            Channel::User => "user",
        }
    }
}

/// One VM of a scenario:
/// `vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=M][:channel=WHO]` on the hypervisor
/// command line (`initrd=` for Linux guests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// VM name; its console lines come back as `[NAME] ...`.
    pub name: String,
    /// Module name given to GRUB's `module2` (also the file name under `/boot`; for
    /// Linux guests [`LinuxKernel::module`]).
    pub module: String,
    /// What the VM boots.
    pub guest: Guest,
    /// Number of vCPUs (hypervisor default when `None`).
    pub vcpus: Option<u32>,
    /// Guest memory in MiB (hypervisor default when `None`).
    pub mem_mb: Option<u32>,
    /// Who may use the hypercall channel (hypervisor default when `None`).
    pub channel: Option<Channel>,
}

impl VmSpec {
    /// The VM running the ground-truth guest, named `truth`.
    pub fn truth() -> Self {
        VmSpec {
            name: "truth".into(),
            module: "truth-guest".into(),
            guest: Guest::TruthGuest,
            vcpus: None,
            mem_mb: None,
            channel: None,
        }
    }

    /// A Linux VM with [`LINUX_MEM_MB`] of RAM whose user processes may use the
    /// hypercall channel (`:channel=user`: `guest-kit send` delivers the bundle from /init).
    pub fn linux(name: &str, kernel: LinuxKernel, initrd: PathBuf, cmdline: &str) -> Self {
        VmSpec {
            name: name.into(),
            module: kernel.module().into(),
            guest: Guest::Linux {
                kernel,
                initrd,
                cmdline: cmdline.into(),
            },
            vcpus: None,
            mem_mb: Some(LINUX_MEM_MB),
            channel: Some(Channel::User),
        }
    }

    /// The initrd's module name (`NAME-initrd`), for Linux guests.
    pub fn initrd_module(&self) -> Option<String> {
        matches!(self.guest, Guest::Linux { .. }).then(|| format!("{}-initrd", self.name))
    }
}

/// The named scenarios of `cargo xtask image/run --scenario NAME`, with a line each.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "linux",
        "Debian's kernel entered by PVH (vmlinux) with the workload initramfs, VM `linux`",
    ),
    (
        "linux-bzimage",
        "the same from the bzImage (vmlinuz), which decompresses itself",
    ),
    (
        "linux-procs",
        "Debian's kernel (PVH), VM `linux`: two instances of the workload, the spinner and a short-lived workload under `guest-kit watch`",
    ),
    (
        "linux-triplefault",
        "Linux restarting by triple fault (reboot=t) as VM `linux`, the ground-truth guest as VM `truth`",
    ),
    (
        "truth",
        "the ground-truth guest alone, VM `truth` (its image is build/hypervisor.iso)",
    ),
];

/// The scenario `cargo xtask image` and `run` build when none is named.
pub const DEFAULT_SCENARIO: &str = "linux";

/// What to boot: which guests and with which hypervisor command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// `truth` (and the older `default`) build into `build/`, so `build/hypervisor.iso`
    /// stays the ground-truth image that the end-to-end tests, `qemu/*.sh` and
    /// `cargo xtask boot` use by default; any other name builds into
    /// `build/scenarios/NAME/`.
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
    /// The ground-truth scenario: the ground-truth guest as VM `truth` when its crate
    /// exists.
    pub fn default_scenario() -> Self {
        let vms = if paths::truth_guest_manifest().is_file() {
            vec![VmSpec::truth()]
        } else {
            Vec::new()
        };
        Scenario {
            name: "truth".into(),
            sample_hz: 1000,
            // A safety net: the hypervisor stops as soon as every guest has stopped (the
            // ground-truth guest takes ~3 s of host time under Bochs).
            run_ms: 20000,
            vms,
            extra_args: Vec::new(),
        }
    }

    /// A scenario of [`SCENARIOS`] by name. Linux scenarios build their initramfs here
    /// ([`initramfs::build_initramfs`]: the guest programs for musl, then the archive).
    pub fn named(name: &str) -> Result<Self> {
        let linux = |name: &str, kernel, init: Init, cmdline: String| -> Result<Scenario> {
            Ok(Scenario {
                name: name.into(),
                sample_hz: 1000,
                // A safety net: the guest powers itself off, and the hypervisor stops
                // when every guest has stopped. Under Bochs the bzImage's own xz
                // decompressor alone takes about a minute of host time.
                run_ms: 300_000,
                vms: vec![VmSpec::linux(
                    "linux",
                    kernel,
                    initramfs::build_initramfs(&init)?,
                    &cmdline,
                )],
                extra_args: Vec::new(),
            })
        };
        let workload = || Init::Workload { vm: "linux".into() };
        match name {
            "linux" => linux(name, LinuxKernel::Pvh, workload(), LINUX_CMDLINE.into()),
            "linux-bzimage" => linux(name, LinuxKernel::BzImage, workload(), LINUX_CMDLINE.into()),
            "linux-procs" => linux(
                name,
                LinuxKernel::Pvh,
                Init::Procs { vm: "linux".into() },
                LINUX_CMDLINE.into(),
            ),
            "linux-triplefault" => {
                let mut s = linux(
                    name,
                    LinuxKernel::Pvh,
                    Init::TripleFault,
                    format!("{LINUX_CMDLINE} reboot=t"),
                )?;
                s.vms.push(VmSpec::truth());
                Ok(s)
            }
            "truth" => Ok(Scenario::default_scenario()),
            other => bail!(
                "unknown scenario {other:?}: use {}",
                SCENARIOS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Whether any VM is a Linux guest.
    pub fn has_linux(&self) -> bool {
        self.vms
            .iter()
            .any(|vm| matches!(vm.guest, Guest::Linux { .. }))
    }

    /// The directory this scenario's ISO tree and image go to.
    pub fn out_dir(&self) -> PathBuf {
        if matches!(self.name.as_str(), "truth" | "default") {
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
            if let Some(initrd) = vm.initrd_module() {
                write!(s, ":initrd={initrd}").unwrap();
            }
            if let Some(n) = vm.vcpus {
                write!(s, ":vcpus={n}").unwrap();
            }
            if let Some(m) = vm.mem_mb {
                write!(s, ":mem_mb={m}").unwrap();
            }
            if let Some(c) = vm.channel {
                write!(s, ":channel={}", c.name()).unwrap();
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
            // The command line goes unquoted on a GRUB `module2` line.
            if let Guest::Linux { cmdline, .. } = &vm.guest
                && let Some(c) = cmdline
                    .chars()
                    .find(|&c| !(c.is_ascii_alphanumeric() || " ._,=:/+-@".contains(c)))
            {
                bail!(
                    "VM {:?}: the kernel command line may not hold {c:?} (it goes unquoted into grub.cfg)",
                    vm.name
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
    /// `(VM name, guest ELF)` for every VM booting an ELF guest (not the Linux VMs:
    /// their kernel is in [`Image::kernel`], their programs in [`Image::linux_elves`]).
    pub guest_elves: Vec<(String, PathBuf)>,
    /// The GRUB configuration written.
    pub grub_cfg: PathBuf,
    /// The kernel files, when a VM is a Linux guest (`system_map` names its functions).
    pub kernel: Option<KernelFiles>,
    /// ELFs with symbols of the programs in the Linux guests' initramfs (`workload`,
    /// `guest-kit`: [`initramfs::packed_elves`]), for the analyzer's `--elf`.
    pub linux_elves: Vec<PathBuf>,
}

/// Runs `cargo build` (arguments in `args`) and returns the executables it produced,
/// as `(target name, path)`.
pub(crate) fn cargo_build_executables(args: &[&str]) -> Result<Vec<(String, PathBuf)>> {
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
        match &vm.guest {
            Guest::Linux {
                kernel, cmdline, ..
            } => {
                let initrd = vm.initrd_module().unwrap_or_default();
                writeln!(
                    cfg,
                    "    module2 /boot/{} {} {cmdline}",
                    kernel.boot_file(),
                    vm.module
                )
                .unwrap();
                writeln!(cfg, "    module2 /boot/{initrd}.cpio {initrd}").unwrap();
            }
            Guest::TruthGuest | Guest::Elf(_) => {
                writeln!(cfg, "    module2 /boot/{}.elf {}", vm.module, vm.module).unwrap()
            }
        }
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
            Guest::Linux { .. } => continue,
        };
        guest_elves.push((vm.name.clone(), elf));
    }
    let kernel = if scenario.has_linux() {
        Some(kernel::ensure()?)
    } else {
        None
    };
    let mut linux_elves: Vec<PathBuf> = Vec::new();
    for vm in &scenario.vms {
        if let Guest::Linux { initrd, .. } = &vm.guest {
            if !initrd.is_file() {
                bail!(
                    "VM {}: initramfs {} does not exist",
                    vm.name,
                    initrd.display()
                );
            }
            for elf in initramfs::packed_elves(initrd) {
                if !linux_elves.contains(&elf) {
                    linux_elves.push(elf);
                }
            }
        }
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
    for vm in &scenario.vms {
        match &vm.guest {
            Guest::Linux {
                kernel: k, initrd, ..
            } => {
                let files = kernel.as_ref().context("Linux VM without kernel files")?;
                let boot_kernel = tmp_root.join("boot").join(k.boot_file());
                if !boot_kernel.exists() {
                    copy(k.source(files), &boot_kernel)?;
                }
                let module = vm.initrd_module().unwrap_or_default();
                copy(initrd, &tmp_root.join(format!("boot/{module}.cpio")))?;
            }
            Guest::TruthGuest | Guest::Elf(_) => {
                let (_, elf) = guest_elves
                    .iter()
                    .find(|(name, _)| *name == vm.name)
                    .context("ELF guest not built")?;
                copy(elf, &tmp_root.join(format!("boot/{}.elf", vm.module)))?;
            }
        }
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
        kernel,
        linux_elves,
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
                    channel: None,
                },
                VmSpec {
                    name: "b".into(),
                    module: "other".into(),
                    guest: Guest::Elf("/x/other.elf".into()),
                    vcpus: None,
                    mem_mb: Some(128),
                    channel: Some(Channel::Off),
                },
            ],
            extra_args: vec!["debug=1".into()],
        }
    }

    #[test]
    fn cmdline_lists_every_vm_and_option() {
        assert_eq!(
            scenario().cmdline(),
            "sample_hz=500 run_ms=0 vm=a:truth-guest:vcpus=2 vm=b:other:mem_mb=128:channel=off debug=1"
        );
    }

    #[test]
    fn grub_cfg_has_multiboot2_and_one_module2_per_vm() {
        let cfg = grub_cfg(&scenario());
        assert!(cfg.contains("set timeout=0\n"));
        assert!(cfg.contains(
            "    multiboot2 /boot/hypervisor.elf sample_hz=500 run_ms=0 vm=a:truth-guest:vcpus=2 vm=b:other:mem_mb=128:channel=off debug=1\n"
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
        assert_eq!(Scenario::default_scenario().out_dir(), paths::build_dir());
        d.name = "linux".into();
        assert_eq!(d.out_dir(), paths::build_dir().join("scenarios/linux"));
    }

    fn linux_scenario(kernel: LinuxKernel) -> Scenario {
        Scenario {
            name: "linux".into(),
            sample_hz: 1000,
            run_ms: 120_000,
            vms: vec![
                VmSpec::linux("linux", kernel, "/b/w.cpio".into(), LINUX_CMDLINE),
                VmSpec::truth(),
            ],
            extra_args: Vec::new(),
        }
    }

    #[test]
    fn linux_vms_get_an_initrd_module_and_their_command_line() {
        let s = linux_scenario(LinuxKernel::Pvh);
        assert_eq!(
            s.cmdline(),
            "sample_hz=1000 run_ms=120000 vm=linux:vmlinux:initrd=linux-initrd:mem_mb=256:channel=user vm=truth:truth-guest"
        );
        let cfg = grub_cfg(&s);
        assert!(cfg.contains(
            "    module2 /boot/vmlinux.elf vmlinux console=ttyS0 quiet cryptomgr.notests mitigations=off 8250.nr_uarts=1 panic=-1 tsc=reliable\n\
             \x20   module2 /boot/linux-initrd.cpio linux-initrd\n\
             \x20   module2 /boot/truth-guest.elf truth-guest\n"
        ), "{cfg}");
        let cfg = grub_cfg(&linux_scenario(LinuxKernel::BzImage));
        assert!(
            cfg.contains("    module2 /boot/vmlinuz vmlinuz console=ttyS0 quiet "),
            "{cfg}"
        );
        assert!(s.has_linux() && !scenario().has_linux());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn kernel_command_lines_that_grub_would_parse_are_rejected() {
        let mut s = linux_scenario(LinuxKernel::Pvh);
        s.vms[0] = VmSpec::linux(
            "linux",
            LinuxKernel::Pvh,
            "/i".into(),
            "console=ttyS0; reboot",
        );
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "VM \"linux\": the kernel command line may not hold ';' (it goes unquoted into grub.cfg)"
        );
    }

    #[test]
    fn scenario_names() {
        let names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "linux",
                "linux-bzimage",
                "linux-procs",
                "linux-triplefault",
                "truth"
            ]
        );
        assert!(names.contains(&DEFAULT_SCENARIO));
        assert_eq!(
            Scenario::named("windows").unwrap_err().to_string(),
            "unknown scenario \"windows\": use linux, linux-bzimage, linux-procs, linux-triplefault, truth"
        );
        let t = Scenario::named("truth").unwrap();
        assert_eq!((t.name.as_str(), t.has_linux()), ("truth", false));
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
