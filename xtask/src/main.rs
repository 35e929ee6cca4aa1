//! `cargo xtask`: build, boot and test the hypervisor.

use anyhow::Result;
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use xtask::commands;
use xtask::image::{ImageOptions, Profile};

/// Build, boot and test the micro-hypervisor.
///
/// Every command first checks the Debian packages and the pinned Rust toolchain
/// (`cargo xtask deps`).
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about,
    long_about
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct BuildArgs {
    /// Build in release mode with debug info (the default: emulators are slow).
    #[arg(long, conflicts_with = "debug")]
    release: bool,
    /// Build the dev profile instead of release.
    #[arg(long)]
    debug: bool,
    /// Put this ELF in the image instead of building the `hypervisor` crate
    /// (for testing the harness with another multiboot2 kernel).
    #[arg(long, value_name = "ELF")]
    hypervisor_elf: Option<PathBuf>,
    /// Boot the hypervisor alone: no guest modules, no `vm=` on its command line.
    #[arg(long)]
    no_guests: bool,
}

impl BuildArgs {
    fn options(&self) -> ImageOptions {
        ImageOptions {
            profile: if self.debug {
                Profile::Debug
            } else {
                Profile::Release
            },
            hypervisor_elf: self.hypervisor_elf.clone(),
            no_guests: self.no_guests,
        }
    }
}

/// The scenario list of `--scenario`, with a line each in `--help`.
fn scenarios() -> PossibleValuesParser {
    PossibleValuesParser::new(
        xtask::image::SCENARIOS
            .iter()
            .map(|(name, about)| PossibleValue::new(*name).help(*about)),
    )
}

#[derive(Args, Clone)]
struct ScenarioArgs {
    /// What to boot (each scenario builds build/scenarios/NAME/hypervisor.iso; `truth`
    /// builds build/hypervisor.iso).
    #[arg(long, value_name = "NAME", default_value = xtask::image::DEFAULT_SCENARIO,
          value_parser = scenarios())]
    scenario: String,
    /// Samples per second (`sample_hz=` of the hypervisor; default 1000).
    #[arg(long, value_name = "N")]
    sample_hz: Option<u32>,
    /// Stop after this much host time (`run_ms=`; 0 = when every guest has stopped;
    /// default 120000 for Linux scenarios, which power themselves off, 20000 for truth).
    #[arg(long, value_name = "N")]
    run_ms: Option<u32>,
}

impl ScenarioArgs {
    fn scenario(&self) -> Result<xtask::image::Scenario> {
        commands::scenario(&self.scenario, self.sample_hz, self.run_ms)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Check (and as root install) the Debian packages and Rust toolchain pieces.
    ///
    /// Packages: bochs bochsbios vgabios grub-pc-bin grub-efi-amd64-bin grub-common
    /// xorriso mtools qemu-system-x86 ovmf busybox-static xz-utils. Not root: prints the
    /// apt-get line to run and fails. The toolchain is what rust-toolchain.toml names.
    Deps,
    /// Fetch Debian's current kernel into build/kernel/ (once; `--refresh` fetches again).
    ///
    /// `apt-get download linux-image-amd64`, then the versioned image it depends on and
    /// the System.map of its -dbg package. Writes vmlinuz (as shipped), vmlinux (its xz
    /// payload, checked for the PVH entry note), config, System.map and version.txt
    /// (`release=...`, `package=...`). $HV_KERNEL_DIR overrides the directory.
    Kernel {
        /// Fetch again even when every file is there.
        #[arg(long)]
        refresh: bool,
    },
    /// Build the hypervisor, a scenario's guest modules and its ISO.
    ///
    /// The ISO boots with GRUB from BIOS and (with grub-efi-amd64-bin) UEFI, and can be
    /// written to a USB stick with dd. The ISO is build/scenarios/NAME/hypervisor.iso
    /// and the GRUB menu build/scenarios/NAME/iso/boot/grub/grub.cfg (for `truth`:
    /// build/hypervisor.iso and build/iso/). Linux scenarios fetch the kernel first
    /// (`cargo xtask kernel`) and pack their initramfs into build/initramfs/.
    Image {
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Build, boot in the best machine available, collect and analyse the samples.
    ///
    /// Uses QEMU/KVM when nested VMX is really available, otherwise Bochs. Writes
    /// build/run/console.txt, build/run/samples.vmlog, build/run/NAME.bundle and
    /// build/run/manifest.txt, then runs `analyzer report` on them (for Linux guests
    /// with the workload and guest-kit ELFs and the kernel's System.map).
    Run {
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// Machine: auto (QEMU/KVM with nested VMX, else Bochs), bochs, qemu-tcg,
        /// qemu-kvm; qemu-tcg-uefi and qemu-kvm-uefi boot through OVMF.
        #[arg(long, default_value = "auto")]
        machine: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Every test: fmt, clippy (host and vmm target), unit tests, image, end-to-end boots.
    ///
    /// Fetches the kernel first (`cargo xtask kernel`, cached) and passes its directory
    /// to the tests in HV_KERNEL_DIR; the image is the `truth` scenario's (HV_ISO), and
    /// the `linux` scenario's initramfs goes to the end-to-end tests in HV_LINUX_INITRD
    /// (the QEMU microvm control boot of tests/tests/linux.rs). Ends with a line `N passed, N failed` counting the stages; exits non-zero if any
    /// stage failed.
    Test {
        #[command(flatten)]
        build: BuildArgs,
        /// Skip the end-to-end boots.
        #[arg(long)]
        no_e2e: bool,
    },
    /// Boot an existing ISO once and print its console (a debugging aid).
    Boot {
        /// The ISO (default build/hypervisor.iso).
        #[arg(long)]
        iso: Option<PathBuf>,
        /// Machine: auto, bochs, qemu-tcg, qemu-kvm, qemu-tcg-uefi or qemu-kvm-uefi.
        #[arg(long, default_value = "bochs")]
        machine: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Keep the run directory even when the run stopped cleanly.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<bool> {
    let verbose = matches!(cli.command, Cmd::Deps);
    commands::deps(verbose)?;
    match cli.command {
        Cmd::Deps => Ok(true),
        Cmd::Kernel { refresh } => xtask::kernel::fetch(refresh).map(|_| true),
        Cmd::Image { build, scenario } => {
            commands::image(&build.options(), &scenario.scenario()?).map(|_| true)
        }
        Cmd::Run {
            build,
            scenario,
            machine,
            timeout,
        } => commands::run(
            &build.options(),
            &scenario.scenario()?,
            &machine,
            Duration::from_secs(timeout),
        )
        .map(|()| true),
        Cmd::Test { build, no_e2e } => commands::test(&build.options(), !no_e2e),
        Cmd::Boot {
            iso,
            machine,
            timeout,
            keep,
        } => commands::boot(
            &iso.unwrap_or_else(xtask::paths::default_iso),
            &machine,
            Duration::from_secs(timeout),
            keep,
        ),
    }
}
