//! The bare-metal VMM: VMX on the boot pCPU, one VMCS per vCPU, EPT over guest RAM from the
//! frame allocator, the run loop (round-robin over every vCPU of every VM on this pCPU,
//! VMX-preemption timer for time slices and guest timers), sampling and export.
//!
//! SMP: the APs (see [`super::smp`]) turn VMX on and idle, sampling into their own rings;
//! vCPUs go to pCPUs by [`super::assign`], and those of the boot pCPU run here.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

use loader::BootInfo;
use loader::cmdline::VmSpec;
use loader::elf::{EntryKind, SliceMemory};
use loader::linux::CpuEntry;
use loader::pvh::{HvmMemmapEntry, StartInfoParams, memmap_type, write_start_info};
use vmlog::{Header, SamplingSource, VcpuRef, VmInfo};

use crate::arch::interrupts::{InterruptFrame, vectors};
use crate::arch::{cpu, gdt, interrupts, lapic};
use crate::power::{self, status};
use crate::vmx::bitmap::IoBitmaps;
use crate::vmx::caps::{CapabilitySource, Controls, VmxCaps, VmxUnavailable};
use crate::vmx::controls::{EntryCtls, ExitCtls, Proc2Ctls, ProcCtls};
use crate::vmx::entry::{EnterError, GuestRegs, reg, vmexit_landing};
use crate::vmx::ept::{Ept, PAGE_SIZE, perm};
use crate::vmx::exit::{ExitReason, InterruptionInfo, InterruptionType};
use crate::vmx::hostmem::{HostFrames, IdentityTables};
use crate::vmx::hw::{self, CpuCaps, HwPmu};
use crate::vmx::instr::CurrentVmcs;
use crate::vmx::msr::Msr;
use crate::vmx::preemption;
use crate::vmx::root::{VmcsRegion, VmxOnError, VmxRoot};
use crate::vmx::vmcs::{Control32, Guest32, Vmcs};
use crate::{console, memory, println, time};

use super::channel::GuestChannel;
use super::devices::PortBus;
use super::exits::{ExitEnv, Outcome, VmExit, handle, interrupt_window_open};
use super::export::Exporter;
use super::msrs;
use super::pmu::{PmuHw, PmuSampler, PmuState};
use super::record::RecordBuffer;
use super::sampler::{DRAIN_AT, GuestId, PcpuState};
use super::smp::{PCPUS, quiesce_aps, start_aps};
use super::vcpu::{
    GuestEntry, GuestRam, HostState, StopReason, Vcpu, Vm, VmCpu, VmcsAddrs, setup_vmcs,
};

/// The boot pCPU's sampling state and ring.
static PCPU0: &PcpuState = &PCPUS[0];

/// A vCPU's time slice when others are runnable.
const SLICE_MS: u64 = 10;
/// Guest-physical page for the hvm_start_info when the image leaves it free.
const START_INFO_GPA: u64 = 0x1000;
/// The guests' CMOS clock reads this at VM start (2026-01-01 00:00:00 UTC): the hypervisor
/// keeps no wall clock of its own yet.
const GUEST_CLOCK_START_UNIX: u64 = 1_767_225_600;
/// Guest RAM alignment in bytes: 2 MiB. EPT maps guest RAM with 4 KiB pages only; the
/// alignment just keeps the door open for 2 MiB EPT pages.
const GUEST_RAM_ALIGN: u64 = 2 << 20;
/// The host tick runs 1/2^8 faster than the sampling grid, so that every slot holds a tick
/// whatever the calibration error (see `time::start_periodic_shortened`).
const TICK_SHORTEN_SHIFT: u32 = 8;

fn fatal_vmx(e: VmxUnavailable) -> ! {
    println!("{}", e.fatal_line());
    power::stop(status::VMX_UNAVAILABLE, "VMX unavailable")
}

fn fatal(what: impl fmt::Display) -> ! {
    println!("hv: fatal: {what}");
    power::stop(status::FAILURE, "VMM setup failed")
}

/// A zeroed frame owned by the caller (bitmaps).
fn alloc_frame() -> HostFrames {
    HostFrames::alloc_zeroed(1, PAGE_SIZE).unwrap_or_else(|| fatal("out of frames"))
}

fn print_caps(caps: &VmxCaps) {
    let raw = |m: Msr| CpuCaps.read_msr(m);
    println!(
        "hv: vmx caps basic={:#x} pin={:#x} proc={:#x} exit={:#x} entry={:#x} misc={:#x}",
        caps.basic,
        raw(Msr::IA32_VMX_PINBASED_CTLS),
        raw(Msr::IA32_VMX_PROCBASED_CTLS),
        raw(Msr::IA32_VMX_EXIT_CTLS),
        raw(Msr::IA32_VMX_ENTRY_CTLS),
        caps.misc
    );
    if caps.true_controls {
        println!(
            "hv: vmx caps true_pin={:#x} true_proc={:#x} true_exit={:#x} true_entry={:#x}",
            raw(Msr::IA32_VMX_TRUE_PINBASED_CTLS),
            raw(Msr::IA32_VMX_TRUE_PROCBASED_CTLS),
            raw(Msr::IA32_VMX_TRUE_EXIT_CTLS),
            raw(Msr::IA32_VMX_TRUE_ENTRY_CTLS)
        );
    }
    println!(
        "hv: vmx caps proc2={:#x} ept_vpid={:#x} cr0_fixed={:#x}/{:#x} cr4_fixed={:#x}/{:#x} feature_control={:#x}",
        raw(Msr::IA32_VMX_PROCBASED_CTLS2),
        caps.ept_vpid,
        caps.cr0_fixed0,
        caps.cr0_fixed1,
        caps.cr4_fixed0,
        caps.cr4_fixed1,
        raw(Msr::IA32_FEATURE_CONTROL)
    );
}

fn host_state() -> HostState {
    let segs = gdt::host_segments();
    let (gdtr_base, _) = cpu::read_gdtr();
    let (idtr_base, _) = cpu::read_idtr();
    let (fs_base, gs_base, efer, pat) = hw::host_msrs();
    HostState {
        cr0: cpu::read_cr0(),
        cr3: cpu::read_cr3(),
        cr4: cpu::read_cr4(),
        cs: cpu::read_cs(),
        ss: cpu::read_ss(),
        ds: cpu::read_ds(),
        es: cpu::read_es(),
        fs: cpu::read_fs(),
        gs: cpu::read_gs(),
        tr: cpu::read_tr(),
        fs_base,
        gs_base,
        tr_base: segs.tss_base,
        gdtr_base,
        idtr_base,
        efer,
        pat,
        rip: vmexit_landing as *const () as u64,
    }
}

/// Whether a VM boots as Linux: its module is a bzImage, or it has an initrd or a guest
/// command line (docs/contracts.md, "Guests"). Linux gets ACPI tables, the PC memory map
/// and the boot protocol of its image; other ELF guests get a bare hvm_start_info.
fn is_linux(spec: &VmSpec<'_>, module: &loader::multiboot2::Module<'_>, image: &[u8]) -> bool {
    spec.initrd.is_some()
        || !module.args().is_empty()
        || loader::linux::SetupHeader::parse(image).is_ok()
}

/// Loads a Linux kernel (PVH vmlinux or bzImage), its initrd, command line and ACPI tables.
fn load_linux_guest(
    spec: &VmSpec<'static>,
    boot: &BootInfo<'static>,
    cmdline: &str,
    image: &[u8],
    ram: &mut [u8],
) -> (GuestEntry, GuestRegs) {
    let name = spec.name;
    let initrd = spec.initrd.map(|m| {
        let module = boot.module(m).unwrap_or_else(|| {
            fatal(format_args!(
                "vm {name}: no boot module named `{m}` (its initrd)"
            ))
        });
        crate::boot::module_bytes(module)
    });
    let params = loader::linux::LinuxParams {
        kernel: image,
        initrd,
        cmdline,
        vcpus: 1,
    };
    let loaded = loader::linux::load_linux(&params, ram)
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: {e}")));
    println!(
        "hv: vm {name}: Linux {:?} kernel{}, initrd {} bytes, command line `{cmdline}`",
        loaded.kind,
        loaded
            .kernel_version
            .map(|v| alloc::format!(" {v}"))
            .unwrap_or_default(),
        initrd.map_or(0, |i| i.len())
    );
    let mut regs = GuestRegs::default();
    let entry = match loaded.entry {
        CpuEntry::Protected32 { rip, rbx } => {
            regs.0[reg::RBX] = rbx;
            GuestEntry::Protected32 { rip }
        }
        CpuEntry::Long64 {
            rip,
            rsi,
            cr3,
            gdt_base,
            gdt_limit,
        } => {
            regs.0[reg::RSI] = rsi;
            GuestEntry::Long64 {
                rip,
                cr3,
                gdt_base,
                gdt_limit,
            }
        }
    };
    (entry, regs)
}

/// Loads a bare ELF guest (the ground-truth guest) with an hvm_start_info holding only the
/// memory map.
fn load_pvh_guest(
    name: &str,
    image: &[u8],
    ram: &mut [u8],
    mem_bytes: u64,
) -> (GuestEntry, GuestRegs) {
    let loaded = loader::elf::load(image, &mut SliceMemory(&mut *ram))
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: {e}")));
    let si = if loaded.low >= START_INFO_GPA + PAGE_SIZE || loaded.high <= START_INFO_GPA {
        START_INFO_GPA
    } else {
        (loaded.high + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
    };
    let memmap = [HvmMemmapEntry {
        addr: 0,
        size: mem_bytes,
        kind: memmap_type::RAM,
        reserved: 0,
    }];
    let params = StartInfoParams {
        memmap: &memmap,
        modules: &[],
        cmdline: "",
        rsdp_paddr: 0,
    };
    let layout = ram
        .get_mut(si as usize..(si + PAGE_SIZE) as usize)
        .ok_or("guest RAM too small for the start info")
        .and_then(|buf| write_start_info(buf, si, &params).map_err(|_| "start info does not fit"))
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: {e}")));
    println!(
        "hv: vm {name}: ELF guest, entry {:#x} ({}), start info at {:#x}",
        loaded.entry,
        if loaded.entry_kind == EntryKind::Pvh {
            "PVH note"
        } else {
            "e_entry"
        },
        layout.start_info
    );
    let mut regs = GuestRegs::default();
    regs.0[reg::RBX] = layout.start_info;
    (GuestEntry::Protected32 { rip: loaded.entry }, regs)
}

/// Builds one VM: guest RAM, the guest image and its boot data, EPT, bitmaps, one VMCS.
fn build_vm(
    id: u16,
    spec: &VmSpec<'static>,
    boot: &BootInfo<'static>,
    root: &VmxRoot,
    ctl: &Controls,
) -> (Vm, VmcsRegion) {
    let caps = root.caps();
    let name = spec.name;
    let module = boot.module(spec.module).unwrap_or_else(|| {
        fatal(format_args!(
            "vm {name}: no boot module named `{}`",
            spec.module
        ))
    });
    let image = crate::boot::module_bytes(module);
    let mem_bytes = u64::from(spec.mem_mb) << 20;
    let frames = mem_bytes / PAGE_SIZE;
    let mut ram_frames = HostFrames::alloc_zeroed(frames, GUEST_RAM_ALIGN).unwrap_or_else(|| {
        fatal(format_args!(
            "vm {name}: no {} MiB of contiguous RAM for the guest",
            spec.mem_mb
        ))
    });
    let ram_base = ram_frames.pa();
    let ram = ram_frames.bytes();
    let linux = is_linux(spec, module, image);
    let (entry, first_regs) = if linux {
        load_linux_guest(spec, boot, module.args(), image, ram)
    } else {
        load_pvh_guest(name, image, ram, mem_bytes)
    };

    // EPT: guest-physical 0..mem -> the guest's frames; nothing of the hypervisor.
    let mut tables = IdentityTables {
        alloc: || memory::alloc_zeroed_frames(1, 1),
    };
    // Refused in EPT: the image (code, data, boot and IST stacks) and the heap. The other
    // frames the hypervisor owns (AP stacks, VMCS, bitmaps, EPT tables) come from the same
    // frame allocator as guest RAM, which hands each frame out once.
    let (image, heap) = (memory::image_range(), memory::heap_range());
    let hypervisor_ranges = [image.start..image.end, heap.start..heap.end];
    let mut ept = Ept::new(&mut tables, &hypervisor_ranges)
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: {e}")));
    for i in 0..frames {
        ept.map_4k(
            &mut tables,
            i * PAGE_SIZE,
            ram_base + i * PAGE_SIZE,
            perm::RWX,
        )
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: {e}")));
    }

    // Bitmaps: MSRs per msrs::msr_bitmap, every port traps but the POST delay port.
    let pat_switched =
        ctl.exit & ExitCtls::LOAD_PAT.bits() != 0 && ctl.entry & EntryCtls::LOAD_PAT.bits() != 0;
    let mut msr_bitmap = alloc_frame();
    msr_bitmap
        .bytes()
        .copy_from_slice(&msrs::msr_bitmap(pat_switched).0);
    let mut io = IoBitmaps::trap_all();
    io.pass(crate::arch::pic::DELAY_PORT);
    let (mut io_a, mut io_b) = (alloc_frame(), alloc_frame());
    io_a.bytes().copy_from_slice(&io.a);
    io_b.bytes().copy_from_slice(&io.b);

    let vpid = id + 1;
    let vmcs = root
        .new_vmcs()
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: {e}")));
    root.load(&vmcs)
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: VMPTRLD: {e}")));
    let addrs = VmcsAddrs {
        io_bitmap_a: io_a.pa(),
        io_bitmap_b: io_b.pa(),
        msr_bitmap: msr_bitmap.pa(),
        eptp: ept.eptp(),
    };
    setup_vmcs(
        &mut CurrentVmcs,
        caps,
        ctl,
        &host_state(),
        &addrs,
        vpid,
        entry,
    )
    .unwrap_or_else(|e| fatal(format_args!("vm {name}: {e}")));
    let mut vcpu = Vcpu::new(0, vpid, vmcs.pa());
    vcpu.cr4_allowed = caps.guest_cr4_allowed();
    vcpu.cr0_shadow = entry.cr0();
    vcpu.cr4_shadow = entry.cr4();
    vcpu.regs = first_regs;
    println!(
        "hv: vm {name}: {} MiB at host {ram_base:#x}, entry {:#x} ({}), vpid {vpid}, ept {} pages in {} tables",
        spec.mem_mb,
        entry.rip(),
        match entry {
            GuestEntry::Protected32 { .. } => "32-bit protected mode",
            GuestEntry::Long64 { .. } => "64-bit mode",
        },
        ept.mapped_pages(),
        ept.table_frames().len()
    );
    let mut vm = Vm::new(id, name);
    vm.bus = PortBus::new(GUEST_CLOCK_START_UNIX, cpu::rdtsc(), time::tsc_hz());
    vm.cpu = VmCpu {
        rdtscp: ctl.proc2 & Proc2Ctls::ENABLE_RDTSCP.bits() != 0,
        invpcid: ctl.proc2 & Proc2Ctls::ENABLE_INVPCID.bits() != 0,
    };
    vm.vcpus.push(vcpu);
    vm.ram = GuestRam::Host(ram_frames);
    vm.channel = GuestChannel::new(spec.channel);
    println!(
        "hv: vm {name}: guest-data channel {} (VMCALL 0x04)",
        spec.channel.name()
    );
    (vm, vmcs)
}

/// ExitEnv on the real CPU.
struct HwEnv {
    tsc_hz: u64,
}

impl ExitEnv for HwEnv {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpu::cpuid(leaf, subleaf).to_array()
    }
    fn host_rdmsr(&self, msr: Msr) -> u64 {
        hw::read_host_msr_for_guest(msr)
    }
    fn tsc(&self) -> u64 {
        cpu::rdtsc()
    }
    fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }
    fn console_line(&mut self, vm: &str, line: &[u8]) {
        println!("[{vm}] {}", Lossy(line));
    }
}

/// Bytes shown as UTF-8, invalid sequences as U+FFFD.
struct Lossy<'a>(&'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

/// Host-mode sampling point: the periodic tick, with the interrupted state. Samples the
/// hypervisor if the tick's slot has no sample yet (a tick that finds its slot sampled,
/// e.g. by a preemption-timer exit, does nothing).
fn host_tick(frame: &mut InterruptFrame) {
    let slot = crate::arch::percpu::current().index as usize;
    if let Some(p) = PCPUS.get(slot) {
        p.sample_host_if_due(frame.rip, cpu::rdtsc());
    }
}

fn com2_direct(bytes: &[u8]) {
    let _ = console::log_port_write(bytes);
}

/// Record mode's buffer (see [`super::record`]); `None` when no memory could be spared,
/// and the log then goes straight to COM2.
static RECORD: spin::Mutex<Option<RecordBuffer<'static>>> = spin::Mutex::new(None);

/// The exporter's writer: into the record buffer.
fn com2(bytes: &[u8]) {
    match RECORD.lock().as_mut() {
        Some(r) => r.push(bytes, com2_direct),
        None => com2_direct(bytes),
    }
}

/// Record buffer size: 16 MiB holds about 6 million samples at the 2.5 bytes a sample the
/// log takes (hours at 1 kHz); smaller when the machine cannot spare it.
const RECORD_BYTES: [u64; 3] = [16 << 20, 4 << 20, 1 << 20];
/// Bytes written out per idle-loop step: one UART FIFO, about 1.4 ms at 115200 baud.
const IDLE_FLUSH_CHUNK: usize = 16;
/// An idle-loop chunk is written only when the next guest timer is further away than this.
const IDLE_FLUSH_MARGIN_MS: u64 = 2;

fn start_record_mode() {
    for bytes in RECORD_BYTES {
        if let Some(frames) = HostFrames::alloc_zeroed(bytes / PAGE_SIZE, PAGE_SIZE) {
            let frames: &'static mut HostFrames =
                alloc::boxed::Box::leak(alloc::boxed::Box::new(frames));
            *RECORD.lock() = Some(RecordBuffer::new(frames.bytes()));
            println!(
                "hv: record mode: {} MiB log buffer; written out while every vCPU idles and at the stop",
                bytes >> 20
            );
            return;
        }
    }
    println!("hv: record mode off: no memory for a log buffer; the log goes straight to COM2");
}

/// How the slots got their samples, and the exits sampling caused.
#[derive(Default)]
struct SamplingStats {
    /// Preemption-timer exits: all, those that sampled, those that were only for sampling.
    preemption_exits: u64,
    preemption_samples: u64,
    preemption_sampling_only: u64,
    /// External-interrupt exits on the sampling vector: all, those that sampled.
    tick_exits: u64,
    tick_exit_samples: u64,
    /// Host samples taken by the run loop just before a VM entry.
    entry_samples: u64,
    /// Host samples taken by the idle loop (every vCPU halted).
    idle_samples: u64,
    /// Bytes of recorded log the idle loop wrote out.
    idle_flushed: u64,
}

struct Runner {
    root: VmxRoot,
    vms: Vec<Vm>,
    vmcs_regions: Vec<VmcsRegion>,
    ctl: Controls,
    preemption_shift: u32,
    tsc_hz: u64,
    slice_tsc: u64,
    run_until: Option<u64>,
    current_vmcs: u64,
    next: usize,
    /// TSC of the last sampling exit not yet followed by a VM entry.
    sample_exit_at: Option<u64>,
    other_interrupts: u64,
    /// Those interrupts by vector (the spurious vector included: it gets no EOI).
    other_by_vector: [u64; 256],
    nmis: u64,
    stats: SamplingStats,
    exporter: Exporter<fn(&[u8])>,
    /// pCPUs up (slots `0..pcpus`); the APs idle and sample.
    pcpus: usize,
}

/// The host RIP recorded for idle samples the run loop takes itself.
fn idle_rip() -> u64 {
    Runner::idle as fn(&mut Runner) as usize as u64
}

/// The host RIP recorded for samples the run loop takes before a VM entry.
fn entry_path_rip() -> u64 {
    Runner::run_vcpu as fn(&mut Runner, usize, usize) as usize as u64
}

impl Runner {
    /// (vm, vcpu) pairs in round-robin order.
    fn slots(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for (i, vm) in self.vms.iter().enumerate() {
            for j in 0..vm.vcpus.len() {
                v.push((i, j));
            }
        }
        v
    }

    fn run(mut self) -> ! {
        let slots = self.slots();
        loop {
            let now = cpu::rdtsc();
            if self.run_until.is_some_and(|t| now >= t) {
                for vm in self.vms.iter_mut().filter(|vm| vm.stopped.is_none()) {
                    vm.stopped = Some(StopReason::RunTimeOver);
                    report_stop(vm, None);
                }
                self.finish("run_ms elapsed");
            }
            // Guest timers that expired wake their vCPU and queue their vector.
            for vm in self.vms.iter_mut().filter(|vm| vm.stopped.is_none()) {
                for vcpu in vm.vcpus.iter_mut() {
                    vcpu.fire_timer(now);
                }
            }
            if self.vms.iter().all(|vm| vm.stopped.is_some()) {
                self.finish("all guests stopped");
            }
            let pick = (0..slots.len())
                .map(|k| slots[(self.next + k) % slots.len()])
                .find(|&(i, j)| self.vms[i].stopped.is_none() && !self.vms[i].vcpus[j].halted);
            match pick {
                Some((i, j)) => {
                    self.next =
                        (slots.iter().position(|&s| s == (i, j)).unwrap_or(0) + 1) % slots.len();
                    self.run_vcpu(i, j);
                    self.sample_exit_at = None;
                }
                None => {
                    // Everything halted: a VM whose vCPUs all wait without a timer can
                    // never run again.
                    for vm in self.vms.iter_mut().filter(|vm| vm.stopped.is_none()) {
                        if vm.vcpus.iter().all(|c| c.can_never_wake()) {
                            vm.stopped = Some(StopReason::HaltedForever);
                            report_stop(vm, None);
                        }
                    }
                    PCPU0.set_halted();
                    self.idle();
                }
            }
            self.drain_if_due();
        }
    }

    /// Drains every pCPU's ring when one of them is three-quarters full.
    fn drain_if_due(&mut self) {
        let rings = &PCPUS[..self.pcpus];
        if rings.iter().any(|p| p.ring.len() > DRAIN_AT) {
            for (k, p) in rings.iter().enumerate() {
                self.exporter.drain(k as u16, &p.ring);
            }
        }
    }

    /// Every vCPU is halted: waits for the first guest timer (or the end of the run),
    /// sampling each slot at its boundary as idle. The pCPU polls the TSC rather than
    /// halting, so that both the guest timer and the idle slot are served on time: an HLT
    /// would wake only at the next tick, up to a period late. (Costs a busy pCPU while
    /// every vCPU on it is halted; ticks that come first still sample.)
    fn idle(&mut self) {
        let next_timer = self
            .vms
            .iter()
            .filter(|vm| vm.stopped.is_none())
            .flat_map(|vm| vm.vcpus.iter())
            .filter_map(|c| c.next_timer_tsc())
            .min();
        interrupts::enable();
        loop {
            let now = cpu::rdtsc();
            let slot_due = PCPU0.grid.next_unclaimed_start().is_some_and(|t| now >= t);
            // The tick's host_tick pushes to the same ring: the sample is taken with
            // interrupts off, so that this pCPU's ring keeps a single producer at a time.
            if slot_due && cpu::without_interrupts(|| PCPU0.sample_host_if_due(idle_rip(), now)) {
                self.stats.idle_samples += 1;
            }
            // Nothing to wait for (a vCPU halted with IF clear and a vector pending): the
            // caller's loop comes back here.
            let wake = next_timer.into_iter().chain(self.run_until).min();
            if wake.is_none_or(|w| now >= w) {
                return;
            }
            // Time no guest wants: write out some of the recorded log, a chunk that ends
            // well before the next guest timer.
            let chunk_tsc = self.tsc_hz / 1000 * IDLE_FLUSH_MARGIN_MS;
            if wake.is_some_and(|w| w - now > chunk_tsc)
                && let Some(r) = RECORD.lock().as_mut()
            {
                let n = r.flush_some(IDLE_FLUSH_CHUNK, com2_direct);
                self.stats.idle_flushed += n as u64;
                if n > 0 {
                    continue;
                }
            }
            core::hint::spin_loop();
        }
    }

    /// Runs vCPU `j` of VM `i` until it halts, stops, or its slice ends.
    fn run_vcpu(&mut self, i: usize, j: usize) {
        let vmcs_pa = self.vms[i].vcpus[j].vmcs;
        let region = self
            .vmcs_regions
            .iter()
            .position(|r| r.pa() == vmcs_pa)
            .unwrap_or_else(|| fatal(format_args!("no VMCS region at {vmcs_pa:#x}")));
        if self.current_vmcs != vmcs_pa {
            if let Err(e) = self.root.load(&self.vmcs_regions[region]) {
                fatal(format_args!("VMPTRLD {vmcs_pa:#x}: {e}"));
            }
            self.current_vmcs = vmcs_pa;
        }
        let who = VcpuRef {
            vm: self.vms[i].id,
            vcpu: j as u16,
        };
        PCPU0.set_serving(Some(who));
        PCPU0.set_running();
        let slice_end = cpu::rdtsc() + self.slice_tsc;
        let mut env = HwEnv {
            tsc_hz: self.tsc_hz,
        };
        loop {
            // From here to the exit's sample, interrupts are off: the tick cannot come
            // between claiming a slot and recording its sample, and ring order is TSC order.
            // SAFETY: nothing until the re-enable below waits for an interrupt: sampling,
            // VM entry and the exit's decoding only poll.
            unsafe { cpu::disable_interrupts() };
            // A slot that began while the host ran gets its (host) sample here, so the
            // preemption timer below is always armed for a slot still to come.
            if PCPU0.sample_host_if_due(entry_path_rip(), cpu::rdtsc()) {
                self.stats.entry_samples += 1;
            }
            self.prepare_entry(i, j, slice_end);
            let vm = &mut self.vms[i];
            let vcpu = &mut vm.vcpus[j];
            let launched = vcpu.launched;
            if let Some(t) = self.sample_exit_at.take() {
                PCPU0.record_sample_latency(cpu::rdtsc().wrapping_sub(t));
            }
            let entered = self
                .root
                .enter(&self.vmcs_regions[region], &mut vcpu.regs, launched);
            let t_exit = cpu::rdtsc();
            if let Err(e) = entered {
                interrupts::enable();
                // Only VMfail is the guest's VMCS being refused; the other errors are the
                // hypervisor's own host state, which no VM can run with.
                let EnterError::Fail(fail) = e else {
                    fatal(format_args!("vm {}: VM entry: {e}", vm.name))
                };
                let rip = CurrentVmcs.read(crate::vmx::vmcs::GuestNW::Rip);
                vm.stopped = Some(StopReason::EntryRefused {
                    resume: launched,
                    fail,
                    rip,
                });
                report_stop(vm, Some(j));
                return;
            }
            vcpu.launched = true;
            let exit = VmExit::decode(&CurrentVmcs);
            let basic = exit.raw.basic();
            let reason = exit.raw.reason().ok();
            let preempted = reason == Some(ExitReason::PreemptionTimer);
            let tick = reason == Some(ExitReason::ExternalInterrupt)
                && exit.interruption.vector() == vectors::TIMER;
            // Guest-mode sampling point: the preemption timer armed for the slot boundary,
            // or the sampling tick itself (hardware delivers it whatever the guest's IF).
            let sampled = (preempted || tick)
                && PCPU0.sample_guest_if_due(
                    &CurrentVmcs,
                    GuestId {
                        vm: vm.id,
                        vcpu: j as u16,
                        vpid: vcpu.vpid,
                        last_exit: vcpu.last_exit,
                    },
                    t_exit,
                );
            if tick {
                // Acknowledged on exit: the LAPIC waits for its EOI.
                lapic::eoi();
            }
            interrupts::enable();
            PCPU0.set_handling(basic as u16);
            match handle(&exit, vm, j, &mut CurrentVmcs, &mut env) {
                Outcome::ExternalInterrupt(v) if v == vectors::TIMER => {}
                Outcome::ExternalInterrupt(v) => {
                    // arch::interrupts offers no way to run a host handler for a vector
                    // acknowledged on exit: count it and end it. A spurious interrupt sets
                    // no in-service bit, so it must not get an EOI (SDM 12.9).
                    self.other_interrupts += 1;
                    self.other_by_vector[usize::from(v)] += 1;
                    if v != vectors::SPURIOUS {
                        lapic::eoi();
                    }
                }
                Outcome::Nmi => {
                    self.nmis += 1;
                    // SAFETY: host context after a VM exit; interrupts::init installed the
                    // host NMI handler at vector 2 of the IDT this CPU has loaded.
                    unsafe { cpu::reflect_nmi_to_host() };
                }
                Outcome::GuestData { .. } => {
                    // Into the log before the guest runs again: the staging buffer holds
                    // one call.
                    if let Some((kind, bytes)) = vm.channel.staged() {
                        self.exporter.guest_data(vm.id, kind, bytes);
                    }
                    vm.channel.clear_staged();
                }
                Outcome::Continue => {}
            }
            let vcpu = &mut vm.vcpus[j];
            let timer_fired = vcpu.fire_timer(t_exit);
            // An exit only for sampling leaves the vCPU's "last exit" alone: samples report
            // the last exit the guest itself caused (or a slice end / timer deadline).
            let sampling_only = tick || (preempted && !timer_fired && t_exit < slice_end);
            if !sampling_only {
                vcpu.last_exit = Some(basic as u16);
            }
            if preempted {
                self.stats.preemption_exits += 1;
                self.stats.preemption_samples += u64::from(sampled);
                self.stats.preemption_sampling_only += u64::from(sampling_only);
            }
            if tick {
                self.stats.tick_exits += 1;
                self.stats.tick_exit_samples += u64::from(sampled);
            }
            if sampled && sampling_only {
                self.sample_exit_at = Some(t_exit);
            }
            vcpu.exits.record(basic, cpu::rdtsc().wrapping_sub(t_exit));
            PCPU0.set_running();
            if vm.stopped.is_some() {
                report_stop(vm, Some(j));
                return;
            }
            if vcpu.halted {
                return;
            }
            if cpu::rdtsc() >= slice_end {
                return;
            }
            self.drain_if_due();
        }
    }

    /// Event injection and the preemption timer for the next entry: it fires at the
    /// earliest of the slice end, the guest's timer and the start of the next sampling slot.
    fn prepare_entry(&mut self, i: usize, j: usize, slice_end: u64) {
        let vcpu = &mut self.vms[i].vcpus[j];
        let mut vmcs = CurrentVmcs;
        let mut want_window = false;
        if let Some(ev) = vcpu.pending_event {
            // An external interrupt (re-injected after an exit during its delivery) needs
            // the window open like any other (SDM 26.3.1.5).
            if ev.info.kind() != InterruptionType::External || interrupt_window_open(&vmcs) {
                let _ = vmcs.write(Control32::EntryInterruptionInfo, ev.info.0 as u64);
                let _ = vmcs.write(Control32::EntryExceptionErrorCode, ev.error_code as u64);
                let _ = vmcs.write(Control32::EntryInstructionLength, ev.instruction_len as u64);
                vcpu.pending_event = None;
            } else {
                want_window = true;
            }
        } else if let Some(v) = vcpu.pending_vector {
            if interrupt_window_open(&vmcs) {
                let info = InterruptionInfo::new(InterruptionType::External, v, false);
                let _ = vmcs.write(Control32::EntryInterruptionInfo, info.0 as u64);
                vcpu.pending_vector = None;
            } else {
                want_window = true;
            }
        } else if vcpu.lapic.deliverable().is_some() {
            // The local APIC's highest-priority request goes in when the guest can take it:
            // acknowledging moves it from IRR to ISR, as the CPU's INTA cycle would.
            if interrupt_window_open(&vmcs) {
                if let Some(v) = vcpu.lapic.acknowledge() {
                    let info = InterruptionInfo::new(InterruptionType::External, v, false);
                    let _ = vmcs.write(Control32::EntryInterruptionInfo, info.0 as u64);
                }
            } else {
                want_window = true;
            }
        }
        if want_window != vcpu.window_exiting {
            let proc = self.ctl.proc
                | if want_window {
                    ProcCtls::INTERRUPT_WINDOW_EXITING.bits()
                } else {
                    0
                };
            let _ = vmcs.write(Control32::ProcBasedControls, proc as u64);
            vcpu.window_exiting = want_window;
        }
        let mut deadline = slice_end;
        if let Some(t) = vcpu.next_timer_tsc() {
            deadline = deadline.min(t);
        }
        if let Some(t) = PCPU0.grid.next_unclaimed_start() {
            deadline = deadline.min(t);
        }
        let value = preemption::timer_value(cpu::rdtsc(), deadline, self.preemption_shift);
        let _ = vmcs.write(Guest32::PreemptionTimerValue, u64::from(value));
    }

    fn finish(mut self, reason: &'static str) -> ! {
        time::set_tick_hook(None);
        let end_tsc = cpu::rdtsc();
        let grid = PCPU0.grid.finish(end_tsc);
        let aps = self.pcpus - 1;
        if aps > 0 {
            let stopped = quiesce_aps();
            println!("hv: {stopped} of {aps} AP(s) quiesced (VMXOFF, timer off, halted)");
        }
        for vm in self.vms.iter_mut() {
            if let Some(line) = vm.bus.uart.flush() {
                println!("[{}] {}", vm.name, Lossy(line));
            }
            print_unmodelled_io(vm);
            println!("hv: vm {} channel: {}", vm.name, vm.channel.stats);
            for (k, vcpu) in vm.vcpus.iter().enumerate() {
                print_exits(vm.name, k, vcpu);
                let who = VcpuRef {
                    vm: vm.id,
                    vcpu: k as u16,
                };
                for (r, count, tsc) in vcpu.exits.seen() {
                    self.exporter.exit_stat(0, who, r as u16, count, tsc);
                }
            }
        }
        for (k, p) in PCPUS[..self.pcpus].iter().enumerate() {
            let g = if k == 0 { grid } else { p.grid.finish(end_tsc) };
            self.exporter.drain(k as u16, &p.ring);
            println!(
                "hv: pcpu {k}: {} guest, {} host samples, {} missed slots",
                p.guest_samples.load(core::sync::atomic::Ordering::Relaxed),
                p.host_samples.load(core::sync::atomic::Ordering::Relaxed),
                g.missed
            );
        }
        self.exporter.end(end_tsc);
        if let Some(r) = RECORD.lock().as_mut() {
            println!(
                "hv: record mode: {} bytes written out while idle, {} at the stop, largest backlog {} bytes, {} forced flushes (buffer full)",
                self.stats.idle_flushed,
                r.pending(),
                r.high_water,
                r.forced_flushes
            );
            r.flush_all(com2_direct);
        }
        let load =
            |a: &core::sync::atomic::AtomicU64| a.load(core::sync::atomic::Ordering::Relaxed);
        let host = load(&PCPU0.host_samples);
        let st = &self.stats;
        println!(
            "hv: samples: {} guest, {} host, {} missed slots, {} dropped (ring full); log: {} frames, {} samples on COM2",
            load(&PCPU0.guest_samples),
            host,
            grid.missed,
            self.exporter.dropped,
            self.exporter.frames,
            self.exporter.samples
        );
        println!(
            "hv: sampling grid: {} slots of {} tsc ticks; guest samples from {} preemption-timer exits and {} interrupt exits; host samples from {} ticks, {} entry paths and {} idle polls; {} sampling points found their slot taken",
            grid.sampled + grid.missed,
            PCPU0.grid.period(),
            st.preemption_samples,
            st.tick_exit_samples,
            host - st.entry_samples - st.idle_samples,
            st.entry_samples,
            st.idle_samples,
            grid.redundant
        );
        println!(
            "hv: sampling exits: {} preemption-timer exits ({} only for sampling), {} exits on the sampling vector",
            st.preemption_exits, st.preemption_sampling_only, st.tick_exits
        );
        match PCPU0.average_sample_latency() {
            Some(avg) => println!(
                "hv: sample exit->entry avg {avg} tsc ticks ({} sampling exits)",
                PCPU0
                    .sample_exits
                    .load(core::sync::atomic::Ordering::Relaxed)
            ),
            None => println!("hv: sample exit->entry avg n/a (no sampling exit)"),
        }
        if self.other_interrupts + self.nmis > 0 {
            let mut by_vector = alloc::string::String::new();
            for (v, n) in self
                .other_by_vector
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
            {
                let _ = fmt::Write::write_fmt(&mut by_vector, format_args!(" {v:#x}={n}"));
            }
            println!(
                "hv: other interrupts in guest mode: {} (by vector:{by_vector}), NMIs: {}",
                self.other_interrupts, self.nmis
            );
        }
        // VMXOFF on the boot pCPU too (the APs did theirs in quiesce_aps).
        if let Err(e) = self.root.off() {
            println!("hv: pcpu 0: VMXOFF failed: {e}");
        }
        power::stop(status::OK, reason)
    }
}

/// Prints why `vm` stopped; `current`: the vCPU whose VMCS is the current one (its guest
/// state is printed too when the stop was not asked for).
fn report_stop(vm: &Vm, current: Option<usize>) {
    let Some(r) = vm.stopped else { return };
    println!("hv: vm {} stopped: {r}", vm.name);
    let clean = matches!(
        r,
        StopReason::Requested { .. } | StopReason::PowerOff | StopReason::RunTimeOver
    );
    if !clean {
        // A stop the guest did not ask for: its state, for the report. The VMCS of the
        // vCPU that stopped is the current one.
        for (k, vcpu) in vm.vcpus.iter().enumerate() {
            print_guest_state(vm.name, k, vcpu, current == Some(k));
        }
    }
}

/// General-purpose registers of a stopped vCPU, and its control registers and RSP/RFLAGS
/// from the current VMCS.
fn print_guest_state(name: &str, k: usize, vcpu: &Vcpu, vmcs_current: bool) {
    use crate::vmx::vmcs::GuestNW;
    let r = &vcpu.regs.0;
    println!(
        "hv: vm {name} vcpu {k} regs: rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
        r[reg::RAX],
        r[reg::RBX],
        r[reg::RCX],
        r[reg::RDX],
        r[reg::RSI],
        r[reg::RDI],
        r[reg::RBP],
        r[reg::R8],
        r[reg::R9],
        r[reg::R10],
        r[reg::R11],
        r[reg::R12],
        r[reg::R13],
        r[reg::R14],
        r[reg::R15]
    );
    let v = CurrentVmcs;
    if vmcs_current {
        println!(
            "hv: vm {name} vcpu {k} state: rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} last exit {:?}",
            v.read(GuestNW::Rip),
            v.read(GuestNW::Rsp),
            v.read(GuestNW::Rflags),
            v.read(GuestNW::Cr0),
            v.read(GuestNW::Cr3),
            v.read(GuestNW::Cr4),
            v.read(crate::vmx::vmcs::Guest64::Ia32Efer),
            vcpu.last_exit
        );
    }
}

fn print_exits(name: &str, k: usize, vcpu: &Vcpu) {
    use crate::vmx::exit::ExitReason;
    let mut line = heapless_line();
    for (r, count, tsc) in vcpu.exits.seen() {
        let n = ExitReason::try_from(r).map(|e| e.name()).unwrap_or("?");
        let _ = fmt::Write::write_fmt(
            &mut line,
            format_args!(" {r}({n})={count}/{}t", tsc / count.max(1)),
        );
    }
    println!("hv: vm {name} vcpu {k} exits:{}", line);
}

fn print_unmodelled_io(vm: &Vm) {
    let io = vm.bus.unmodelled;
    if io.reads + io.writes > 0 {
        println!(
            "hv: vm {} unmodelled I/O: {} reads (all-ones), {} writes (dropped), last port {:#x}",
            vm.name, io.reads, io.writes, io.last_port
        );
    }
}

fn heapless_line() -> alloc::string::String {
    alloc::string::String::new()
}

/// The VMM entry point, called by kmain once the platform is up.
pub fn start(boot: &'static BootInfo<'static>) -> ! {
    let caps = VmxCaps::probe(&CpuCaps).unwrap_or_else(|e| fatal_vmx(e));
    print_caps(&caps);
    let ctl = caps.controls().unwrap_or_else(|e| fatal_vmx(e));
    let root = match VmxRoot::enable() {
        Ok(r) => r,
        Err(VmxOnError::Unavailable(e)) => fatal_vmx(e),
        Err(e) => fatal(e),
    };
    let caps = root.caps();
    println!(
        "hv: VMX on for pCPU 0 (VMCS revision {:#x}, {} controls, preemption timer TSC>>{})",
        caps.revision_id(),
        if caps.true_controls { "TRUE" } else { "plain" },
        caps.preemption_timer_rate()
    );
    println!("hv: pcpu 0 up (apic id {}), vmx on", lapic::id());
    let pcpus = start_aps(boot.config.sample_hz, TICK_SHORTEN_SHIFT);
    println!("hv: {pcpus} pCPU(s) with VMX on");
    // Without the all-context type only single-context INVEPT exists (checked by the
    // probe); the hierarchies are fresh then and nothing is cached.
    if let Some(Err(e)) = root.invept_all() {
        fatal(format_args!("INVEPT: {e}"));
    }

    let cfg = &boot.config;
    let mut vms = Vec::new();
    let mut vmcs_regions = Vec::new();
    for (id, spec) in cfg.vms.iter().enumerate() {
        let (vm, vmcs) = build_vm(id as u16, spec, boot, &root, &ctl);
        vms.push(vm);
        vmcs_regions.push(vmcs);
    }
    if vms.is_empty() {
        println!("hv: no vm= on the command line; nothing to run");
        quiesce_aps();
        power::stop(status::OK, "all guests stopped");
    }
    let counts: Vec<usize> = vms.iter().map(|vm| vm.vcpus.len()).collect();
    for (p, list) in super::assign::assign(&counts, pcpus).iter().enumerate() {
        for &(i, j) in list {
            if p == 0 {
                println!("hv: vm {} vcpu {j} -> pcpu 0", vms[i].name);
            } else {
                println!(
                    "hv: vm {} vcpu {j} -> pcpu {p} by placement, run on pcpu 0 (guests on APs are a later step)",
                    vms[i].name
                );
            }
        }
    }

    // Sampling source: the PMU if its counter really counts, else the LAPIC timer.
    let tsc_hz = time::tsc_hz();
    let period_tsc = tsc_hz / u64::from(cfg.sample_hz.max(1));
    let mut pmu = PmuSampler::default();
    match pmu.start(&mut HwPmu, period_tsc) {
        PmuState::Fallback(why) => println!("hv: sampling: {why}"),
        PmuState::Armed { .. } => {
            HwPmu.write_msr(Msr::IA32_PERFEVTSEL0, 0);
            println!(
                "hv: sampling: the PMU counts, but PMI-as-NMI delivery is not wired yet; sampling with the LAPIC timer"
            );
        }
        PmuState::Off => {}
    }
    start_record_mode();
    let mut exporter: Exporter<fn(&[u8])> = Exporter::new(com2 as fn(&[u8]), period_tsc);
    let infos: Vec<VmInfo<'static>> = vms
        .iter()
        .map(|vm| VmInfo {
            id: vm.id,
            name: vm.name,
            vcpus: vm.vcpus.len() as u16,
        })
        .collect();
    // The sampling tick first, then one grid of slots from start_tsc on every pCPU (every
    // sampling point claims its slot in it), then the log header: writing it to the slow
    // COM2 takes milliseconds, which the ticks now sample instead of missing.
    if let Err(e) = time::start_periodic_shortened(cfg.sample_hz, TICK_SHORTEN_SHIFT) {
        fatal(format_args!("sampling timer at {} Hz: {e}", cfg.sample_hz));
    }
    let start_tsc = cpu::rdtsc();
    for p in &PCPUS[..pcpus] {
        p.grid.start(start_tsc, period_tsc);
    }
    time::set_tick_hook(Some(host_tick));
    exporter.start(
        Header {
            format_major: vmlog::FORMAT_MAJOR,
            format_minor: vmlog::FORMAT_MINOR,
            hv_build_id: option_env!("HV_BUILD_ID").unwrap_or(env!("CARGO_PKG_VERSION")),
            tsc_hz,
            source: SamplingSource::LapicTimer,
            period_tsc,
            pcpus: pcpus as u16,
            vm_count: infos.len() as u16,
            start_tsc,
        },
        &infos,
    );
    println!(
        "hv: sampling at {} Hz: one slot of {} tsc ticks at a time, guest mode by the preemption timer, host mode by the tick on vector {:#x}; {} VM(s); run_ms={}",
        cfg.sample_hz,
        period_tsc,
        vectors::TIMER,
        vms.len(),
        cfg.run_ms
    );
    let preemption_shift = caps.preemption_timer_rate();
    let runner = Runner {
        root,
        vms,
        vmcs_regions,
        ctl,
        preemption_shift,
        tsc_hz,
        slice_tsc: tsc_hz / 1000 * SLICE_MS,
        // run_ms is capped by the command line; saturate anyway rather than wrap.
        run_until: (cfg.run_ms > 0)
            .then(|| start_tsc.saturating_add((tsc_hz / 1000).saturating_mul(cfg.run_ms))),
        current_vmcs: 0,
        next: 0,
        sample_exit_at: None,
        other_interrupts: 0,
        other_by_vector: [0; 256],
        nmis: 0,
        stats: SamplingStats::default(),
        exporter,
        pcpus,
    };
    runner.run()
}
