//! Where things live: the workspace root, the cargo target dir and the build dir.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// `build/` under the root: images, run directories and collected output.
pub fn build_dir() -> PathBuf {
    root().join("build")
}

/// The default scenario's boot image.
pub fn default_iso() -> PathBuf {
    build_dir().join("hypervisor.iso")
}

/// The boot image of scenario `name` as `cargo xtask image --scenario NAME` writes it
/// (`truth` is the default image; the others go to `build/scenarios/NAME/`).
pub fn scenario_iso(name: &str) -> PathBuf {
    if matches!(name, "truth" | "default") {
        default_iso()
    } else {
        build_dir()
            .join("scenarios")
            .join(name)
            .join("hypervisor.iso")
    }
}

/// The Linux kernel files ([`crate::kernel`]): `$HV_KERNEL_DIR` if set (relative to the
/// root), else `build/kernel/`.
pub fn kernel_dir() -> PathBuf {
    match std::env::var_os(crate::KERNEL_DIR_ENV) {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => build_dir().join("kernel"),
    }
}

/// Initramfs images for Linux guests ([`crate::initramfs`]).
pub fn initramfs_dir() -> PathBuf {
    build_dir().join("initramfs")
}

/// The cargo target directory: `$CARGO_TARGET_DIR` if set (made absolute), else `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir().unwrap_or_else(|_| root()).join(dir)
            }
        }
        _ => root().join("target"),
    }
}

/// The hypervisor's custom target specification.
pub fn vmm_target_spec() -> PathBuf {
    root().join("x86_64-vmm.json")
}

/// The ground-truth guest crate's manifest (the crate may not exist yet).
pub fn truth_guest_manifest() -> PathBuf {
    root().join("tests").join("truth-guest").join("Cargo.toml")
}

/// The Linux guest workload crate's manifest (`tests/linux-workload`).
pub fn linux_workload_manifest() -> PathBuf {
    root()
        .join("tests")
        .join("linux-workload")
        .join("Cargo.toml")
}
