//! Per-CPU state, indexed by LAPIC ID. Interrupt and NMI handlers use [`current`] to find
//! what the CPU was doing: the VMM publishes its running vCPU in [`PerCpu::context`]
//! before VM entry and clears it after exit.

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crate::arch::lapic;

/// Most CPUs supported.
pub const MAX_CPUS: usize = 8;

/// One CPU's state. Every field is atomic so handlers can read it without locks.
pub struct PerCpu {
    /// This slot's CPU index (0 = boot CPU).
    pub index: u32,
    /// The LAPIC ID that owns the slot, or `u32::MAX` while free.
    pub apic_id: AtomicU32,
    /// Opaque pointer to the VMM's current context on this CPU (null = in the hypervisor).
    pub context: AtomicPtr<()>,
    /// Periodic timer ticks taken on this CPU.
    pub timer_ticks: AtomicU64,
    /// NMIs taken on this CPU.
    pub nmis: AtomicU64,
}

impl PerCpu {
    const fn new(index: u32) -> Self {
        PerCpu {
            index,
            apic_id: AtomicU32::new(u32::MAX),
            context: AtomicPtr::new(core::ptr::null_mut()),
            timer_ticks: AtomicU64::new(0),
            nmis: AtomicU64::new(0),
        }
    }

    /// Publishes `ctx` as this CPU's current context.
    pub fn set_context(&self, ctx: *mut ()) {
        self.context.store(ctx, Ordering::Release);
    }

    /// The current context (null when none).
    pub fn context(&self) -> *mut () {
        self.context.load(Ordering::Acquire)
    }
}

static CPUS: [PerCpu; MAX_CPUS] = {
    let mut cpus = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        cpus[i] = PerCpu::new(i as u32);
        i += 1;
    }
    cpus
};

/// Claims a slot for the calling CPU (by its LAPIC ID). Returns its index, or None when all
/// slots are taken. Idempotent.
pub fn register_this_cpu() -> Option<u32> {
    let id = lapic::id();
    for cpu in &CPUS {
        match cpu
            .apic_id
            .compare_exchange(u32::MAX, id, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(cpu.index),
            Err(owner) if owner == id => return Some(cpu.index),
            Err(_) => {}
        }
    }
    None
}

/// The calling CPU's slot (slot 0 if it never registered).
pub fn current() -> &'static PerCpu {
    let id = lapic::id();
    CPUS.iter()
        .find(|c| c.apic_id.load(Ordering::Acquire) == id)
        .unwrap_or(&CPUS[0])
}

/// All slots.
pub fn all() -> &'static [PerCpu] {
    &CPUS
}
