//! The application processors under the VMM: started after VMX is on for the boot pCPU,
//! each AP turns VMX on with its own VMXON region, runs its LAPIC tick at the sampling rate
//! and idles, its tick taking host-mode samples into its own ring (the AP is the only
//! producer of that ring; the boot pCPU's exporter is its consumer). At the end the boot
//! pCPU quiesces them: VMXOFF, timer off, halt.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::smp::{self, ApParams};
use crate::arch::{cpu, lapic};
use crate::vmx::hostmem;
use crate::vmx::hw;
use crate::vmx::root::VmxRoot;
use crate::{memory, println, time};

use super::sampler::{MAX_PCPUS, PcpuState};

/// Per-pCPU sampling state and rings, by pCPU slot (0 = boot pCPU).
pub static PCPUS: [PcpuState; MAX_PCPUS] = [const { PcpuState::new() }; MAX_PCPUS];

/// AP stack size.
const AP_STACK_FRAMES: u64 = 16;
/// How long an AP may take to reach Rust code after its SIPIs, and then to report VMX.
const AP_START_TIMEOUT_US: u64 = 500_000;
const AP_REPORT_TIMEOUT_US: u64 = 2_000_000;
const AP_STOP_TIMEOUT_US: u64 = 1_000_000;

const STATE_NONE: u32 = 0;
const STATE_UP: u32 = 1;
const STATE_FAILED: u32 = 2;

static AP_STATE: [AtomicU32; MAX_PCPUS] = [const { AtomicU32::new(STATE_NONE) }; MAX_PCPUS];
static QUIESCE: AtomicU32 = AtomicU32::new(0);
static STOPPED: AtomicU32 = AtomicU32::new(0);
static STARTED: AtomicU32 = AtomicU32::new(0);
/// The sampling rate and tick shortening the APs run their LAPIC timer with.
static TICK_HZ: AtomicU32 = AtomicU32::new(0);
static TICK_SHIFT: AtomicU32 = AtomicU32::new(0);

/// Starts every AP the MADT listed (the boot pCPU has VMX on already). Returns how many
/// pCPUs are up with VMX on, the boot pCPU included; their slots are `0..n`.
pub fn start_aps(sample_hz: u32, tick_shift: u32) -> usize {
    TICK_HZ.store(sample_hz, Ordering::Relaxed);
    TICK_SHIFT.store(tick_shift, Ordering::Relaxed);
    let cpus = smp::cpus();
    if cpus.len() <= 1 {
        return 1;
    }
    let Some(tramp) = memory::trampoline_frame() else {
        println!(
            "hv: smp: {}; running on the boot pCPU only",
            smp::SmpError::NoTrampolineFrame
        );
        return 1;
    };
    let (blob, data) = smp::trampoline_blob();
    let me = lapic::id();
    let (_, _, efer, _) = hw::host_msrs();
    let mut up = 1usize;
    for &apic_id in cpus.apic_ids().iter().filter(|&&id| id != me) {
        let slot = up as u32;
        if up >= MAX_PCPUS {
            break;
        }
        let Some(stack) = memory::alloc_zeroed_frames(AP_STACK_FRAMES, 4096) else {
            println!("hv: {}", smp::SmpError::NoStack);
            break;
        };
        let params = ApParams {
            cr0: cpu::read_cr0(),
            cr3: cpu::read_cr3(),
            cr4: cpu::read_cr4(),
            efer,
            stack_top: stack + AP_STACK_FRAMES * 4096,
            entry: ap_entry as extern "C" fn(u64) -> ! as usize as u64,
            arg: u64::from(slot),
        };
        // SAFETY: `tramp` is the frame below 1 MiB that memory::init reserved for this and
        // nothing else uses; the previous AP has left it (it reported alive).
        let page = unsafe { hostmem::phys_bytes(tramp, blob.len()) };
        page.copy_from_slice(blob);
        let vector = match smp::patch(page, data, tramp, &params) {
            Ok(v) => v,
            Err(e) => {
                println!("hv: {e}; running on {up} pCPU(s)");
                break;
            }
        };
        if let Err(e) = smp::start_ap(apic_id, vector, slot, AP_START_TIMEOUT_US) {
            println!("hv: {e}");
            continue;
        }
        STARTED.fetch_add(1, Ordering::Relaxed);
        // Wait for its one line (VMX on or why not), so the boot log stays in order.
        let deadline = cpu::rdtsc() + time::ns_to_tsc(AP_REPORT_TIMEOUT_US * 1000);
        let state = loop {
            let s = AP_STATE[slot as usize].load(Ordering::Acquire);
            if s != STATE_NONE || cpu::rdtsc() > deadline {
                break s;
            }
            cpu::pause();
        };
        if state != STATE_UP {
            println!("hv: pcpu {slot} (apic id {apic_id}) did not turn VMX on; no more APs");
            break;
        }
        up += 1;
    }
    up
}

fn halt_forever() -> ! {
    cpu::halt_forever()
}

/// An AP's Rust entry (called by the trampoline on the AP's own stack).
extern "C" fn ap_entry(slot: u64) -> ! {
    let slot = slot as u32;
    if !smp::ap_platform_init(slot) {
        smp::report_alive(slot);
        println!("hv: pcpu {slot}: platform setup failed");
        AP_STATE[slot as usize].store(STATE_FAILED, Ordering::Release);
        halt_forever();
    }
    smp::report_alive(slot);
    let apic_id = lapic::id();
    let root = match VmxRoot::enable() {
        Ok(r) => r,
        Err(e) => {
            println!("hv: pcpu {slot} (apic id {apic_id}): {e}");
            AP_STATE[slot as usize].store(STATE_FAILED, Ordering::Release);
            halt_forever();
        }
    };
    let hz = TICK_HZ.load(Ordering::Relaxed);
    if let Err(e) = time::start_periodic_shortened(hz, TICK_SHIFT.load(Ordering::Relaxed)) {
        println!("hv: pcpu {slot}: {e}");
    }
    let pcpu = &PCPUS[slot as usize];
    pcpu.set_serving(None);
    pcpu.set_halted();
    println!("hv: pcpu {slot} up (apic id {apic_id}), vmx on");
    AP_STATE[slot as usize].store(STATE_UP, Ordering::Release);
    // Idle: every tick wakes the HLT and (once the grid runs) samples this pCPU.
    while QUIESCE.load(Ordering::Acquire) == 0 {
        // SAFETY: this CPU's IDT, TSS and LAPIC are set up and the tick has its handler.
        unsafe { cpu::enable_interrupts_and_hlt() };
    }
    // SAFETY: nothing below waits for an interrupt: the timer is stopped, VMX turned off and
    // the CPU halts for good.
    unsafe { cpu::disable_interrupts() };
    lapic::timer_stop();
    let off = root.off();
    if let Err(e) = off {
        println!("hv: pcpu {slot}: VMXOFF failed: {e}");
    }
    STOPPED.fetch_add(1, Ordering::Release);
    halt_forever()
}

/// Asks every started AP to leave VMX operation and halt; waits for them. Returns how many
/// stopped.
pub fn quiesce_aps() -> u32 {
    let started = STARTED.load(Ordering::Relaxed);
    if started == 0 {
        return 0;
    }
    QUIESCE.store(1, Ordering::Release);
    let deadline = cpu::rdtsc() + time::ns_to_tsc(AP_STOP_TIMEOUT_US * 1000);
    while STOPPED.load(Ordering::Acquire) < started && cpu::rdtsc() < deadline {
        cpu::pause();
    }
    STOPPED.load(Ordering::Acquire)
}
