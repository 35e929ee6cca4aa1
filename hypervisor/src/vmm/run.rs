//! The bare-metal VMM: VMX on the boot pCPU, one VMCS per vCPU, EPT over guest RAM from the
//! frame allocator, the run loop (round-robin over every vCPU of every VM on this pCPU,
//! VMX-preemption timer for time slices and guest timers), sampling and export.
//!
//! SMP is a later step: everything runs on the boot pCPU.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

use loader::BootInfo;
use loader::cmdline::VmSpec;
use loader::elf::{EntryKind, SliceMemory};
use loader::pvh::{HvmMemmapEntry, StartInfoParams, memmap_type, write_start_info};
use vmlog::{Header, SamplingSource, VcpuRef, VmInfo};

use crate::arch::interrupts::{InterruptFrame, vectors};
use crate::arch::{gdt, lapic};
use crate::power::{self, status};
use crate::vmx::bitmap::IoBitmaps;
use crate::vmx::caps::{CapabilitySource, Controls, FeatureControlAction, VmxCaps, VmxUnavailable};
use crate::vmx::controls::{EntryCtls, ExitCtls, ProcCtls};
use crate::vmx::cr4;
use crate::vmx::entry::{GuestRegs, enter_guest, reg, vmexit_landing};
use crate::vmx::ept::{Ept, PAGE_SIZE, perm};
use crate::vmx::exit::{InterruptionInfo, InterruptionType};
use crate::vmx::hostmem::{self, IdentityTables};
use crate::vmx::instr::{self, CurrentVmcs, InveptType};
use crate::vmx::msr::Msr;
use crate::vmx::vmcs::{Control32, Guest32, Vmcs};
use crate::{console, memory, println, time};

use super::exits::{ExitEnv, Outcome, VmExit, handle, interrupt_window_open};
use super::export::Exporter;
use super::msrs;
use super::pmu::{PmuHw, PmuSampler, PmuState};
use super::sampler::{GuestId, PcpuState, RING_LEN};
use super::vcpu::{GuestEntry, HostState, StopReason, Vcpu, Vm, VmcsAddrs, setup_vmcs};

/// The boot pCPU's sampling state and ring.
static PCPU0: PcpuState = PcpuState::new();

/// A vCPU's time slice when others are runnable.
const SLICE_MS: u64 = 10;
/// Guest-physical page for the hvm_start_info when the image leaves it free.
const START_INFO_GPA: u64 = 0x1000;

struct CpuCaps;

impl CapabilitySource for CpuCaps {
    fn cpuid1_ecx(&self) -> u32 {
        instr::cpuid(1, 0)[2]
    }
    fn read_msr(&self, msr: Msr) -> u64 {
        // SAFETY: VmxCaps::probe reads only IA32_FEATURE_CONTROL and the VMX capability
        // MSRs, and only after CPUID reported VMX; the TRUE_* ones only when
        // IA32_VMX_BASIC bit 55 says they exist, PROCBASED_CTLS2 only when allowed.
        unsafe { instr::rdmsr(msr) }
    }
}

fn fatal_vmx(e: VmxUnavailable) -> ! {
    println!("{}", e.fatal_line());
    power::stop(status::VMX_UNAVAILABLE, "VMX unavailable")
}

fn fatal(what: impl fmt::Display) -> ! {
    println!("hv: fatal: {what}");
    power::stop(status::FAILURE, "VMM setup failed")
}

fn alloc_frame() -> u64 {
    memory::alloc_zeroed_frames(1, 1).unwrap_or_else(|| fatal("out of frames"))
}

/// A zeroed frame holding the VMCS revision identifier (VMXON region or VMCS).
fn vmx_region(caps: &VmxCaps) -> u64 {
    let pa = alloc_frame();
    // SAFETY: a frame just allocated, owned here, identity-mapped.
    let bytes = unsafe { hostmem::frame_bytes(pa) };
    bytes[..4].copy_from_slice(&caps.revision_id().to_le_bytes());
    pa
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
    let (gdtr_base, _) = instr::read_gdtr();
    let (idtr_base, _) = instr::read_idtr();
    // SAFETY: FS_BASE, GS_BASE, EFER and PAT exist on every CPU with VMX.
    let (fs_base, gs_base, efer, pat) = unsafe {
        (
            instr::rdmsr(Msr::IA32_FS_BASE),
            instr::rdmsr(Msr::IA32_GS_BASE),
            instr::rdmsr(Msr::IA32_EFER),
            instr::rdmsr(Msr::IA32_PAT),
        )
    };
    HostState {
        cr0: instr::read_cr0(),
        cr3: instr::read_cr3(),
        cr4: instr::read_cr4(),
        cs: instr::read_cs(),
        ss: instr::read_ss(),
        ds: instr::read_ds(),
        es: instr::read_es(),
        fs: instr::read_fs(),
        gs: instr::read_gs(),
        tr: instr::read_tr(),
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

/// Builds one VM: guest RAM, the guest image, hvm_start_info, EPT, bitmaps, one VMCS.
fn build_vm(
    id: u16,
    spec: &VmSpec<'static>,
    boot: &BootInfo<'static>,
    caps: &VmxCaps,
    ctl: &Controls,
) -> Vm {
    let name = spec.name;
    if spec.vcpus > 1 {
        println!(
            "hv: vm {name}: vcpus={} requested, running 1 (SMP guests are a later step)",
            spec.vcpus
        );
    }
    let module = boot.module(spec.module).unwrap_or_else(|| {
        fatal(format_args!(
            "vm {name}: no boot module named `{}`",
            spec.module
        ))
    });
    // SAFETY: GRUB placed the module there; the frame allocator never hands it out, and it
    // is only read.
    let image = unsafe { hostmem::phys_bytes(module.start, module.len() as usize) };
    let mem_bytes = u64::from(spec.mem_mb) << 20;
    let frames = mem_bytes / PAGE_SIZE;
    let ram_base = memory::alloc_zeroed_frames(frames, 512).unwrap_or_else(|| {
        fatal(format_args!(
            "vm {name}: no {} MiB of contiguous RAM for the guest",
            spec.mem_mb
        ))
    });
    // SAFETY: frames just allocated for this guest, owned by it from here on.
    let ram = unsafe { hostmem::phys_bytes(ram_base, mem_bytes as usize) };
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

    // EPT: guest-physical 0..mem -> the guest's frames; nothing of the hypervisor.
    let mut tables = IdentityTables {
        alloc: || memory::alloc_zeroed_frames(1, 1),
    };
    let image_range = memory::image_range();
    let mut ept = Ept::new(&mut tables, &[image_range.start..image_range.end])
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

    // Bitmaps: MSRs per msrs::msr_bitmap, every port traps but the POST delay port 0x80.
    let pat_switched =
        ctl.exit & ExitCtls::LOAD_PAT.bits() != 0 && ctl.entry & EntryCtls::LOAD_PAT.bits() != 0;
    let msr_bitmap = alloc_frame();
    // SAFETY: a frame just allocated, owned by this VM.
    unsafe { hostmem::frame_bytes(msr_bitmap) }.copy_from_slice(&msrs::msr_bitmap(pat_switched).0);
    let mut io = IoBitmaps::trap_all();
    io.pass(0x80);
    let (io_a, io_b) = (alloc_frame(), alloc_frame());
    // SAFETY: frames just allocated, owned by this VM.
    unsafe {
        hostmem::frame_bytes(io_a).copy_from_slice(&io.a);
        hostmem::frame_bytes(io_b).copy_from_slice(&io.b);
    }

    let vpid = id + 1;
    let vmcs = vmx_region(caps);
    // SAFETY: in VMX root operation; `vmcs` holds the revision identifier.
    unsafe { instr::vmclear(vmcs) }
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: VMCLEAR: {e}")));
    // SAFETY: as above; the VMCS was just cleared.
    unsafe { instr::vmptrld(vmcs) }
        .unwrap_or_else(|e| fatal(format_args!("vm {name}: VMPTRLD: {e}")));
    let addrs = VmcsAddrs {
        io_bitmap_a: io_a,
        io_bitmap_b: io_b,
        msr_bitmap,
        eptp: ept.eptp(),
    };
    let entry = GuestEntry {
        rip: loaded.entry,
        start_info: layout.start_info,
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
    let mut vcpu = Vcpu::new(0, vpid, vmcs);
    vcpu.regs = GuestRegs::default();
    vcpu.regs.0[reg::RBX] = layout.start_info;
    println!(
        "hv: vm {name}: {} MiB at host {ram_base:#x}, entry {:#x} ({}), start info at {:#x}, vpid {vpid}, ept {} pages in {} tables",
        spec.mem_mb,
        loaded.entry,
        if loaded.entry_kind == EntryKind::Pvh {
            "PVH note"
        } else {
            "e_entry"
        },
        layout.start_info,
        ept.mapped_pages(),
        ept.table_frames().len()
    );
    let mut vm = Vm::new(id, name);
    vm.vcpus.push(vcpu);
    vm
}

/// ExitEnv on the real CPU.
struct HwEnv {
    tsc_hz: u64,
}

impl ExitEnv for HwEnv {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        instr::cpuid(leaf, subleaf)
    }
    fn host_rdmsr(&self, msr: Msr) -> u64 {
        // SAFETY: the exit handlers ask only for msrs::on_read's ReadHost MSRs (PAT,
        // MTRRs the guest reads, MISC_ENABLE), which exist on every CPU with VMX.
        unsafe { instr::rdmsr(msr) }
    }
    fn tsc(&self) -> u64 {
        instr::rdtsc()
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

/// PMU MSRs on the real CPU.
struct HwPmu;

impl PmuHw for HwPmu {
    fn cpuid_0a_eax(&self) -> u32 {
        instr::cpuid(0xa, 0)[0]
    }
    fn read_msr(&mut self, msr: Msr) -> u64 {
        // SAFETY: only architectural perfmon MSRs, after CPUID.0xA reported them.
        unsafe { instr::rdmsr(msr) }
    }
    fn write_msr(&mut self, msr: Msr, value: u64) {
        // SAFETY: as above; the counter is ours (guests never reach the PMU MSRs).
        unsafe { instr::wrmsr(msr, value) }
    }
    fn busy_work(&mut self) {
        let mut x = 0u64;
        for i in 0..20_000u64 {
            x = core::hint::black_box(x.wrapping_add(i));
        }
    }
    fn route_pmi_to_nmi(&mut self) {}
}

/// Host-mode sample: called from the periodic tick handler with the interrupted state.
fn host_tick(frame: &mut InterruptFrame) {
    PCPU0.take_host_sample(frame.rip, instr::rdtsc());
}

fn com2(bytes: &[u8]) {
    let _ = console::log_port_write(bytes);
}

struct Runner {
    vms: Vec<Vm>,
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
    nmis: u64,
    exporter: Exporter<fn(&[u8])>,
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
            let now = instr::rdtsc();
            if self.run_until.is_some_and(|t| now >= t) {
                for vm in self.vms.iter_mut().filter(|vm| vm.stopped.is_none()) {
                    vm.stopped = Some(StopReason::RunTimeOver);
                    report_stop(vm);
                }
                self.finish("run_ms elapsed");
            }
            // Guest timers that expired wake their vCPU and queue their vector.
            for vm in self.vms.iter_mut().filter(|vm| vm.stopped.is_none()) {
                for vcpu in vm.vcpus.iter_mut() {
                    if let Some(t) = vcpu.timer.filter(|t| now >= t.deadline_tsc) {
                        vcpu.timer = None;
                        vcpu.pending_vector = Some(t.vector);
                        vcpu.halted = false;
                    }
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
                }
                None => {
                    // Everything halted: a VM whose vCPUs all wait without a timer can
                    // never run again.
                    for vm in self.vms.iter_mut().filter(|vm| vm.stopped.is_none()) {
                        if vm
                            .vcpus
                            .iter()
                            .all(|c| c.halted && c.timer.is_none() && c.pending_vector.is_none())
                        {
                            vm.stopped = Some(StopReason::HaltedForever);
                            report_stop(vm);
                        }
                    }
                    PCPU0.set_halted();
                    instr::wait_for_interrupt();
                }
            }
            if PCPU0.ring.len() > RING_LEN / 2 {
                self.exporter.drain(0, &PCPU0.ring);
            }
        }
    }

    /// Runs vCPU `j` of VM `i` until it halts, stops, or its slice ends with others waiting.
    fn run_vcpu(&mut self, i: usize, j: usize) {
        let vmcs_pa = self.vms[i].vcpus[j].vmcs;
        if self.current_vmcs != vmcs_pa {
            // SAFETY: in VMX root operation; the VMCS was set up by build_vm.
            if let Err(e) = unsafe { instr::vmptrld(vmcs_pa) } {
                fatal(format_args!("VMPTRLD {vmcs_pa:#x}: {e}"));
            }
            self.current_vmcs = vmcs_pa;
        }
        let who = VcpuRef {
            vm: self.vms[i].id,
            vcpu: j as u16,
        };
        PCPU0.set_serving(Some(who));
        let slice_end = instr::rdtsc() + self.slice_tsc;
        let mut env = HwEnv {
            tsc_hz: self.tsc_hz,
        };
        loop {
            self.prepare_entry(i, j, slice_end);
            let vm = &mut self.vms[i];
            let vcpu = &mut vm.vcpus[j];
            PCPU0.set_running();
            let launched = vcpu.launched;
            if let Some(t) = self.sample_exit_at.take() {
                PCPU0.record_sample_latency(instr::rdtsc().wrapping_sub(t));
            }
            // SAFETY: VMX root operation, this vCPU's VMCS is current and was filled by
            // setup_vmcs with HOST_RIP = vmexit_landing and this CPU's host state.
            let entered = unsafe { enter_guest(&mut vcpu.regs, launched) };
            let t_exit = instr::rdtsc();
            instr::enable_interrupts();
            if let Err(fail) = entered {
                let rip = CurrentVmcs.read(crate::vmx::vmcs::GuestNW::Rip);
                println!(
                    "hv: vm {}: {} failed: {fail}",
                    vm.name,
                    if launched { "VMRESUME" } else { "VMLAUNCH" }
                );
                vm.stopped = Some(StopReason::EntryFailed {
                    reason: 0,
                    qualification: 0,
                    rip,
                });
                report_stop(vm);
                return;
            }
            vcpu.launched = true;
            let exit = VmExit::decode(&CurrentVmcs);
            let basic = exit.raw.basic();
            PCPU0.set_handling(basic as u16);
            match handle(&exit, vm, j, &mut CurrentVmcs, &mut env) {
                Outcome::ExternalInterrupt(v) if v == vectors::TIMER => {
                    let vcpu = &vm.vcpus[j];
                    let id = GuestId {
                        vm: vm.id,
                        vcpu: j as u16,
                        vpid: vcpu.vpid,
                        last_exit: vcpu.last_exit,
                    };
                    PCPU0.take_guest_sample(&CurrentVmcs, id, t_exit);
                    lapic::eoi();
                    self.sample_exit_at = Some(t_exit);
                }
                Outcome::ExternalInterrupt(_) => {
                    self.other_interrupts += 1;
                    lapic::eoi();
                    vm.vcpus[j].last_exit = Some(basic as u16);
                }
                Outcome::Nmi => {
                    self.nmis += 1;
                    instr::reflect_nmi_to_host();
                    vm.vcpus[j].last_exit = Some(basic as u16);
                }
                Outcome::Continue => vm.vcpus[j].last_exit = Some(basic as u16),
            }
            let vcpu = &mut vm.vcpus[j];
            vcpu.exits
                .record(basic, instr::rdtsc().wrapping_sub(t_exit));
            if vm.stopped.is_some() {
                report_stop(vm);
                return;
            }
            if vcpu.halted {
                return;
            }
            if instr::rdtsc() >= slice_end {
                return;
            }
            if PCPU0.ring.len() > RING_LEN / 2 {
                self.exporter.drain(0, &PCPU0.ring);
            }
        }
    }

    /// Event injection and the preemption timer for the next entry.
    fn prepare_entry(&mut self, i: usize, j: usize, slice_end: u64) {
        let vcpu = &mut self.vms[i].vcpus[j];
        let mut vmcs = CurrentVmcs;
        let mut want_window = false;
        if let Some((info, code)) = vcpu.pending_exception.take() {
            let _ = vmcs.write(Control32::EntryInterruptionInfo, info.0 as u64);
            let _ = vmcs.write(Control32::EntryExceptionErrorCode, code as u64);
        } else if let Some(v) = vcpu.pending_vector {
            if interrupt_window_open(&vmcs) {
                let info = InterruptionInfo::new(InterruptionType::External, v, false);
                let _ = vmcs.write(Control32::EntryInterruptionInfo, info.0 as u64);
                vcpu.pending_vector = None;
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
        let now = instr::rdtsc();
        let deadline = vcpu
            .timer
            .map_or(slice_end, |t| t.deadline_tsc.min(slice_end));
        let ticks = deadline.saturating_sub(now) >> self.preemption_shift;
        let _ = vmcs.write(Guest32::PreemptionTimerValue, ticks.min(u32::MAX as u64));
    }

    fn finish(mut self, reason: &'static str) -> ! {
        time::set_tick_hook(None);
        for vm in self.vms.iter_mut() {
            if let Some(line) = vm.uart.flush() {
                println!("[{}] {}", vm.name, Lossy(line));
            }
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
        self.exporter.drain(0, &PCPU0.ring);
        self.exporter.end(instr::rdtsc());
        println!(
            "hv: samples: {} guest, {} host, {} dropped (ring full); log: {} frames, {} samples on COM2",
            PCPU0
                .guest_samples
                .load(core::sync::atomic::Ordering::Relaxed),
            PCPU0
                .host_samples
                .load(core::sync::atomic::Ordering::Relaxed),
            self.exporter.dropped,
            self.exporter.frames,
            self.exporter.samples
        );
        match PCPU0.average_sample_latency() {
            Some(avg) => println!("hv: sample exit->entry avg {avg} tsc ticks"),
            None => println!("hv: sample exit->entry avg n/a (no sampling exit)"),
        }
        if self.other_interrupts + self.nmis > 0 {
            println!(
                "hv: other interrupts in guest mode: {}, NMIs: {}",
                self.other_interrupts, self.nmis
            );
        }
        power::stop(status::OK, reason)
    }
}

fn report_stop(vm: &Vm) {
    if let Some(r) = vm.stopped {
        println!("hv: vm {} stopped: {r}", vm.name);
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
    let io = vcpu.io;
    if io.reads + io.writes + io.string_ops > 0 {
        println!(
            "hv: vm {name} vcpu {k} unmodelled I/O: {} reads (all-ones), {} writes (dropped), {} string ops, last port {:#x}",
            io.reads, io.writes, io.string_ops, io.last_port
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
    if let FeatureControlAction::WriteAndLock(v) = caps.feature_control {
        // SAFETY: IA32_FEATURE_CONTROL exists (VMX is present) and is unlocked.
        unsafe { instr::wrmsr(Msr::IA32_FEATURE_CONTROL, v) };
    }
    // SAFETY: the fixed bits only add what VMX operation requires (CR4.VMXE, CR0.NE/PE/PG
    // which long mode already has); the hypervisor keeps running unchanged.
    unsafe {
        instr::write_cr4(caps.fix_cr4(instr::read_cr4() | cr4::VMXE));
        instr::write_cr0(caps.fix_cr0(instr::read_cr0()));
    }
    let vmxon = vmx_region(&caps);
    // SAFETY: CR4.VMXE is set, CR0/CR4 satisfy the fixed bits, the region holds the
    // revision identifier and stays reserved.
    if let Err(e) = unsafe { instr::vmxon(vmxon) } {
        fatal(format_args!("VMXON failed: {e}"));
    }
    println!(
        "hv: VMX on for pCPU 0 (VMCS revision {:#x}, {} controls, preemption timer TSC>>{}); SMP is a later step",
        caps.revision_id(),
        if caps.true_controls { "TRUE" } else { "plain" },
        caps.preemption_timer_rate()
    );
    // SAFETY: VMX root operation; all-context INVEPT is supported (checked by probe) or
    // single-context is, in which case the hierarchies are fresh and nothing is cached.
    if caps.ept_vpid & crate::vmx::caps::ept_vpid_cap::INVEPT_ALL_CONTEXT != 0 {
        let _ = unsafe { instr::invept(InveptType::AllContext, 0) };
    }

    let cfg = &boot.config;
    let mut vms = Vec::new();
    for (id, spec) in cfg.vms.iter().enumerate() {
        vms.push(build_vm(id as u16, spec, boot, &caps, &ctl));
    }
    if vms.is_empty() {
        println!("hv: no vm= on the command line; nothing to run");
        power::stop(status::OK, "all guests stopped");
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
    let mut exporter: Exporter<fn(&[u8])> = Exporter::new(com2 as fn(&[u8]), period_tsc);
    let infos: Vec<VmInfo<'static>> = vms
        .iter()
        .map(|vm| VmInfo {
            id: vm.id,
            name: vm.name,
            vcpus: vm.vcpus.len() as u16,
        })
        .collect();
    let start_tsc = instr::rdtsc();
    exporter.start(
        Header {
            format_major: vmlog::FORMAT_MAJOR,
            format_minor: vmlog::FORMAT_MINOR,
            hv_build_id: option_env!("HV_BUILD_ID").unwrap_or(env!("CARGO_PKG_VERSION")),
            tsc_hz,
            source: SamplingSource::LapicTimer,
            period_tsc,
            pcpus: 1,
            vm_count: infos.len() as u16,
            start_tsc,
        },
        &infos,
    );
    time::set_tick_hook(Some(host_tick));
    if let Err(e) = time::start_periodic(cfg.sample_hz) {
        fatal(format_args!("sampling timer at {} Hz: {e}", cfg.sample_hz));
    }
    println!(
        "hv: sampling at {} Hz on vector {:#x} (period {} tsc ticks); {} VM(s); run_ms={}",
        cfg.sample_hz,
        vectors::TIMER,
        period_tsc,
        vms.len(),
        cfg.run_ms
    );
    let runner = Runner {
        vms,
        ctl,
        preemption_shift: caps.preemption_timer_rate(),
        tsc_hz,
        slice_tsc: tsc_hz / 1000 * SLICE_MS,
        run_until: (cfg.run_ms > 0).then(|| start_tsc + tsc_hz / 1000 * cfg.run_ms),
        current_vmcs: 0,
        next: 0,
        sample_exit_at: None,
        other_interrupts: 0,
        nmis: 0,
        exporter,
    };
    runner.run()
}
