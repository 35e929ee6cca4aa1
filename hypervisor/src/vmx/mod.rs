//! The VMX layer: Intel VT-x instructions, VMCS fields, exit reasons, capabilities, EPT and
//! the MSR/I-O bitmaps. Follows the Intel SDM, order no. 325462-084 (June 2024); section
//! numbers refer to Vol. 3C/3D of that revision.
//!
//! Everything here is data and pure logic that the host tests exercise, except
//! [`instr`] and [`entry`], the only files with `unsafe`: each privileged instruction is
//! wrapped there once.

pub mod bitmap;
pub mod caps;
pub mod controls;
pub mod entry;
pub mod ept;
pub mod exit;
pub mod hostmem;
pub mod instr;
pub mod msr;
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

/// RFLAGS bits.
pub mod rflags {
    pub const FIXED: u64 = 1 << 1;
    pub const IF: u64 = 1 << 9;
}
