//! Boot-time parsing for the hypervisor, kept free of hardware access so that all of it runs
//! as host unit tests:
//!
//! - [`multiboot2`]: the Multiboot2 boot information GRUB hands over, parsed from a byte slice
//!   into a typed [`BootInfo`] (bounds-checked; hostile input gives an error, never a panic);
//! - [`cmdline`]: the hypervisor command line (`sample_hz=`, `run_ms=`, `vm=`) as [`HvConfig`];
//! - [`elf`]: a guest-image loader shaped like rust-vmm's linux-loader, for `no_std`;
//! - [`pvh`]: the PVH boot ABI structures (`hvm_start_info`, memory map, module list) and a
//!   writer that lays them out in a guest-physical buffer;
//! - [`acpi`]: the guest's ACPI tables (RSDP, XSDT, FADT, MADT, DSDT), and the port numbers
//!   of the power-management registers they describe;
//! - [`linux`]: [`load_linux`] places an unmodified Linux kernel (PVH `vmlinux` or bzImage),
//!   its initrd, command line, boot information, ACPI tables and page tables in guest RAM.
//!
//! `no_std` with `alloc` (the ACPI table builder allocates; everything else does not).
#![cfg_attr(not(any(test, feature = "std")), no_std)]

extern crate alloc;

pub mod acpi;
pub mod cmdline;
pub mod elf;
pub mod fixed;
pub mod linux;
pub mod multiboot2;
pub mod pvh;

pub use cmdline::{CmdlineError, HvConfig, VmSpec};
pub use fixed::FixedVec;
pub use linux::{
    CpuEntry, GuestLayout, KernelKind, LinuxBoot, LinuxError, LinuxParams, load_linux,
};
pub use multiboot2::{BootInfo, MemoryKind, MemoryRegion, Module, Multiboot2Error, Rsdp};
