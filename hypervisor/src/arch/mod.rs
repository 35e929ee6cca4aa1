//! The thin hardware layer: every privileged instruction the platform code uses is wrapped
//! once, here (VMX instructions live in `crate::vmx`). Intel SDM references are to the
//! combined volumes, revision 084 (June 2024).

pub mod cpu;
pub mod gdt;
pub mod interrupts;
pub mod lapic;
pub mod madt;
#[cfg(target_os = "none")]
pub mod mem;
pub mod percpu;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod smp;
