//! The generic VMM: VMs and vCPUs, exit decoding and handling, the guest console model,
//! the guest-data channel, sampling, the per-pCPU sample rings and the exporter. Hardware
//! access goes through `crate::vmx`; the run loop ([`run`]) exists only on bare metal.

pub mod assign;
pub mod channel;
pub mod cpuid;
pub mod devices;
pub mod exits;
pub mod export;
pub mod grid;
pub mod lapic;
pub mod mmio;
pub mod msrs;
pub mod pmu;
pub mod record;
pub mod ring;
#[cfg(target_os = "none")]
pub mod run;
pub mod sampler;
#[cfg(target_os = "none")]
pub mod smp;
pub mod vcpu;

#[cfg(target_os = "none")]
pub use run::start;
