//! The hypervisor: everything that is not the bare-metal entry point lives here so that the
//! hardware-independent parts build and run their unit tests on the host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod boot;
pub mod console;
pub mod memory;
pub mod power;
pub mod time;

pub mod vmm;
pub mod vmx;
