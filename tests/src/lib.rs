//! End-to-end tests: boot the image in emulators (tests/*.rs).
//!
//! Run them with `cargo xtask test` (which builds the image first and passes it in
//! `HV_ISO`), or `cargo xtask image && cargo test -p e2e-tests -- --test-threads=2`.

use std::path::PathBuf;
use std::time::Duration;

/// The ISO to boot: `$HV_ISO` (relative to the workspace root), else
/// `build/hypervisor.iso`. Panics with a one-line explanation when it does not exist.
pub fn iso() -> PathBuf {
    let iso = std::env::var_os(xtask::ISO_ENV)
        .map(|p| xtask::paths::root().join(p))
        .unwrap_or_else(xtask::paths::default_iso);
    assert!(
        iso.is_file(),
        "boot image {} does not exist: run `cargo xtask image` first (or set {})",
        iso.display(),
        xtask::ISO_ENV
    );
    iso
}

/// A timeout from the environment variable `var` (seconds), else `default_secs`.
pub fn timeout(var: &str, default_secs: u64) -> Duration {
    let secs = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    Duration::from_secs(secs)
}
