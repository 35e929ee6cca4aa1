//! `cargo xtask deps`: the Debian packages and Rust toolchain pieces the project needs.

use crate::cmd;
use anyhow::{Result, bail};
use std::process::Command;

/// Debian packages used to build and boot the image.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bochs",
    "bochsbios",
    "vgabios",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub-common",
    "xorriso",
    "mtools",
    "qemu-system-x86",
    "ovmf",
    "busybox-static",
    "xz-utils",
];

/// Whether `dpkg-query` reports `package` as installed.
fn installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).ends_with("install ok installed"))
}

/// Packages of [`DEBIAN_PACKAGES`] that are not installed, or `None` off Debian.
pub fn missing_packages() -> Option<Vec<&'static str>> {
    if !cmd::on_path("dpkg-query") {
        return None;
    }
    Some(
        DEBIAN_PACKAGES
            .iter()
            .copied()
            .filter(|p| !installed(p).unwrap_or(false))
            .collect(),
    )
}

/// The effective user id, read from `/proc/self/status`.
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The exact command that installs `packages`.
pub fn apt_line(packages: &[&str]) -> String {
    format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// Makes sure every needed package and toolchain piece is there; installs what it can.
pub fn ensure(verbose: bool) -> Result<()> {
    match missing_packages() {
        None => eprintln!(
            "xtask: warning: dpkg-query not found (not Debian?): cannot check for {}",
            DEBIAN_PACKAGES.join(" ")
        ),
        Some(missing) if missing.is_empty() => {
            if verbose {
                println!(
                    "deps: Debian packages present: {}",
                    DEBIAN_PACKAGES.join(" ")
                );
            }
        }
        Some(missing) => {
            if euid() != Some(0) {
                bail!(
                    "missing Debian packages: {}; install them as root with:\n  {}",
                    missing.join(" "),
                    apt_line(&missing)
                );
            }
            eprintln!("deps: installing {}", missing.join(" "));
            cmd::run(Command::new("apt-get").arg("update"))?;
            cmd::run(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&missing),
            )?;
        }
    }
    // With no argument rustup installs exactly what rust-toolchain.toml names
    // (channel, components, targets); it is quick when everything is present.
    if cmd::on_path("rustup") {
        let out = cmd::output(
            Command::new("rustup")
                .args(["toolchain", "install"])
                .current_dir(crate::paths::root()),
        )?;
        if verbose {
            print!("deps: {}", String::from_utf8_lossy(&out.stderr));
        }
    } else {
        eprintln!("xtask: warning: rustup not found: cannot check the pinned toolchain");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_line_is_noninteractive_and_lists_packages() {
        assert_eq!(
            apt_line(&["bochs", "xorriso"]),
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends bochs xorriso"
        );
    }

    #[test]
    fn euid_is_read() {
        // Whatever the user, /proc/self/status names one.
        assert!(euid().is_some());
    }
}
