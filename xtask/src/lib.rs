//! Build, boot and test tasks for the hypervisor workspace (`cargo xtask --help`).
//!
//! The library half is what the end-to-end tests (`tests/`, crate `e2e-tests`) reuse:
//! [`image`] builds boot images for a [`image::Scenario`], [`machine`] boots them in
//! Bochs or QEMU and returns a [`machine::RunResult`], [`console`] reads the console.

pub mod cmd;
pub mod commands;
pub mod console;
pub mod deps;
pub mod image;
pub mod machine;
pub mod paths;

/// Environment variable naming the ISO the end-to-end tests boot.
pub const ISO_ENV: &str = "HV_ISO";
