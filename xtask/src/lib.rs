//! Build, boot and test tasks for the hypervisor workspace (`cargo xtask --help`).
//!
//! The library half is what the end-to-end tests (`tests/`, crate `e2e-tests`) reuse:
//! [`image`] builds boot images for a [`image::Scenario`], [`machine`] boots them in
//! Bochs or QEMU and returns a [`machine::RunResult`], [`console`] reads the console,
//! [`kernel`] fetches Debian's kernel and [`initramfs`] packs the Linux guests' initramfs.

pub mod cmd;
pub mod commands;
pub mod console;
pub mod deps;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod machine;
pub mod paths;

/// Environment variable naming the ISO the end-to-end tests boot.
pub const ISO_ENV: &str = "HV_ISO";

/// Environment variable naming the directory of the Linux kernel files (`vmlinux`,
/// `vmlinuz`, `config`, `System.map`, `version.txt`); default `build/kernel`. Relative
/// paths are taken from the workspace root.
pub const KERNEL_DIR_ENV: &str = "HV_KERNEL_DIR";

/// Environment variable naming the initramfs of the main Linux scenario (`cargo xtask
/// test` sets it for the end-to-end tests).
pub const LINUX_INITRD_ENV: &str = "HV_LINUX_INITRD";
