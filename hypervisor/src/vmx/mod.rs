//! The VMX layer: Intel VT-x instructions, VMCS fields, exit reasons, capabilities, EPT and
//! the MSR/I-O bitmaps. Follows the Intel SDM, order no. 325462-084 (June 2024); section
//! numbers refer to Vol. 3C/3D of that revision.
//!
//! Everything here is data and pure logic that the host tests exercise, except the files
//! with `unsafe`: [`instr`] and [`entry`] wrap each privileged instruction once;
//! [`hostmem`] reaches host-physical memory the caller owns; [`hw`] and [`root`] build
//! safe interfaces on them (MSR access limited to MSRs known to exist, VMX root operation
//! and VMCS regions as values) so that the run loop needs almost no `unsafe`.

pub mod bitmap;
pub mod caps;
pub mod controls;
pub mod entry;
pub mod ept;
pub mod exit;
pub mod hostmem;
pub mod hw;
pub mod instr;
pub mod msr;
pub mod preemption;
pub mod root;
pub mod vmcs;

/// CR0, CR4 and RFLAGS bits: one definition, in the arch layer.
pub use crate::arch::cpu::{cr0, cr4, dr7, rflags};

/// Guest interruptibility-state bits (SDM 25.4.2, table 25-3).
pub mod interruptibility {
    pub const BLOCKING_BY_STI: u64 = 1 << 0;
    pub const BLOCKING_BY_MOV_SS: u64 = 1 << 1;
    /// The one-instruction shadows that expire once the next instruction completes.
    pub const SHADOWS: u64 = BLOCKING_BY_STI | BLOCKING_BY_MOV_SS;
}
