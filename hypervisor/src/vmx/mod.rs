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

/// CR0 bits.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    pub const PAE: u64 = 1 << 5;
    pub const VMXE: u64 = 1 << 13;
}

/// Guest interruptibility-state bits (SDM 25.4.2, table 25-3).
pub mod interruptibility {
    pub const BLOCKING_BY_STI: u64 = 1 << 0;
    pub const BLOCKING_BY_MOV_SS: u64 = 1 << 1;
    /// The one-instruction shadows that expire once the next instruction completes.
    pub const SHADOWS: u64 = BLOCKING_BY_STI | BLOCKING_BY_MOV_SS;
}

/// RFLAGS bits.
pub mod rflags {
    pub const FIXED: u64 = 1 << 1;
    pub const IF: u64 = 1 << 9;
}
