//! The paravirtual layer: VMCALL when the hypervisor is there, a fallback when not.
//!
//! Detection probes `VMCALL TSC_NOW` with a #UD handler armed: under a VMX hypervisor
//! VMCALL always exits to it; on bare hardware or QEMU TCG it raises #UD, which the
//! handler steps over. (CPUID.1:ECX[31] is reported too, but QEMU TCG sets it without
//! offering VMCALL, so it cannot decide alone.)

use core::sync::atomic::{AtomicBool, Ordering};

use super::arch::{self, Hypercall};

/// The vector `SET_TIMER` asks for; `cpu` points it at a handler setting [`TIMER_FIRED`].
pub const TIMER_VECTOR: u8 = 0x30;

static PRESENT: AtomicBool = AtomicBool::new(false);
static PROBING: AtomicBool = AtomicBool::new(false);
static PROBE_FAULTED: AtomicBool = AtomicBool::new(false);
/// Set by the timer interrupt handler (an asm stub).
#[unsafe(no_mangle)]
pub static TIMER_FIRED: AtomicBool = AtomicBool::new(false);

/// Probes for the hypervisor (needs the IDT loaded); returns whether it answered.
pub fn detect() -> bool {
    PROBING.store(true, Ordering::SeqCst);
    // SAFETY: #UD is caught while PROBING is set (see `step_over_probe`); TSC_NOW has no
    // side effect.
    let _ = unsafe { arch::vmcall(Hypercall::TscNow, 0, 0) };
    PROBING.store(false, Ordering::SeqCst);
    let present = !PROBE_FAULTED.load(Ordering::SeqCst);
    PRESENT.store(present, Ordering::SeqCst);
    present
}

/// Called by the #UD handler: if this is the probe's VMCALL, returns the RIP to resume at.
pub fn step_over_probe(rip: u64) -> Option<u64> {
    if !PROBING.load(Ordering::SeqCst) {
        return None;
    }
    // SAFETY: RIP is where the CPU just fetched an instruction from, so at least the
    // faulting instruction's bytes are mapped and readable.
    let bytes = unsafe { core::ptr::read_unaligned(rip as *const [u8; 3]) };
    if bytes != arch::VMCALL_BYTES {
        return None;
    }
    PROBE_FAULTED.store(true, Ordering::SeqCst);
    Some(rip + arch::VMCALL_BYTES.len() as u64)
}

pub fn present() -> bool {
    PRESENT.load(Ordering::SeqCst)
}

/// The host TSC (VMCALL TSC_NOW), or RDTSC without a hypervisor.
pub fn host_tsc() -> u64 {
    if present() {
        // SAFETY: the hypervisor answered the probe; TSC_NOW has no side effect.
        unsafe { arch::vmcall(Hypercall::TscNow, 0, 0) }
    } else {
        arch::rdtsc()
    }
}

/// Waits about `ns` nanoseconds, halted on a one-shot hypervisor timer; without a
/// hypervisor, spins on RDTSC for `fallback_ticks` instead (no LAPIC or PIT here).
pub fn idle(ns: u64, fallback_ticks: u64) {
    if !present() {
        let start = arch::rdtsc();
        while arch::rdtsc().wrapping_sub(start) < fallback_ticks {
            core::hint::spin_loop();
        }
        return;
    }
    TIMER_FIRED.store(false, Ordering::SeqCst);
    // SAFETY: the hypervisor is present and TIMER_VECTOR has an IDT handler.
    unsafe { arch::vmcall(Hypercall::SetTimer, ns, u64::from(TIMER_VECTOR)) };
    while !TIMER_FIRED.load(Ordering::SeqCst) {
        arch::halt_until_interrupt();
    }
}

/// Ends the run: VMCALL STOP, else QEMU isa-debug-exit (0xf4), Bochs (0x8900 "Shutdown"),
/// else halts forever.
pub fn stop(status: u8) -> ! {
    if present() {
        // SAFETY: the hypervisor is present; STOP ends the VM, which is the intent.
        unsafe { arch::vmcall(Hypercall::Stop, u64::from(status), 0) };
    }
    // SAFETY: power-off ports; whatever they do ends the machine, which is the intent.
    unsafe {
        arch::outb(0xf4, status);
        for b in b"Shutdown" {
            arch::outb(0x8900, *b);
        }
    }
    arch::halt_forever()
}
