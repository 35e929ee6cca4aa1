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
