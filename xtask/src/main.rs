//! `cargo xtask`: build, boot and test the hypervisor.

use anyhow::Result;
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

#[derive(Subcommand)]
enum Cmd {
    /// Check (and as root install) the Debian packages and Rust toolchain pieces.
    ///
    /// Packages: bochs bochsbios vgabios grub-pc-bin grub-efi-amd64-bin grub-common
    /// xorriso mtools qemu-system-x86 ovmf busybox-static. Not root: prints the
    /// apt-get line to run and fails. The toolchain is what rust-toolchain.toml names.
    Deps,
    /// Build the hypervisor, the guest modules and build/hypervisor.iso.
    ///
    /// The ISO boots with GRUB from BIOS and (with grub-efi-amd64-bin) UEFI, and can be
    /// written to a USB stick with dd. The GRUB menu is in build/iso/boot/grub/grub.cfg.
    Image(BuildArgs),
    /// Build, boot in the best machine available, collect and analyse the samples.
    ///
    /// Uses QEMU/KVM when nested VMX is really available, otherwise Bochs. Writes
    /// build/run/console.txt, build/run/samples.vmlog and build/run/NAME.bundle, then runs
    /// `analyzer report` on them.
    Run {
        #[command(flatten)]
        build: BuildArgs,
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
    /// Ends with a line `N passed, N failed` counting the stages; exits non-zero if any
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
        Cmd::Image(b) => commands::image(&b.options()).map(|_| true),
        Cmd::Run {
            build,
            machine,
            timeout,
        } => commands::run(&build.options(), &machine, Duration::from_secs(timeout)).map(|()| true),
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
