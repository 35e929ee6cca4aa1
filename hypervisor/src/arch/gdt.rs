//! The hypervisor's GDT: a 64-bit code segment, a data segment and a TSS (SDM 8.7). The TSS
//! selector is what a VMCS needs as host TR (it must be non-zero), and the TSS carries the
//! interrupt stacks for #DF, NMI and #MC so that those run on a known-good stack.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, FS, GS, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

use crate::arch::percpu::MAX_CPUS;

/// IST slot (1-based in the IDT, 0-based here) for #DF.
pub const IST_DOUBLE_FAULT: u16 = 0;
/// IST slot for NMI.
pub const IST_NMI: u16 = 1;
/// IST slot for #MC.
pub const IST_MACHINE_CHECK: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

/// Three IST stacks per CPU.
static mut IST_STACKS: [[Stack; 3]; MAX_CPUS] =
    [const { [const { Stack([0; IST_STACK_SIZE]) }; 3] }; MAX_CPUS];

/// Selectors and bases a VMCS host-state area needs.
#[derive(Clone, Copy, Debug)]
pub struct HostSegments {
    /// 64-bit code segment (CS).
    pub code: u16,
    /// Data segment (SS, DS, ES).
    pub data: u16,
    /// The TSS (TR); never 0.
    pub tss: u16,
    /// Linear address of the GDT.
    pub gdt_base: u64,
    /// Linear address of the TSS.
    pub tss_base: u64,
}

struct Tables {
    gdt: GlobalDescriptorTable,
    segments: HostSegments,
}

/// One GDT and TSS per CPU (index = `crate::arch::percpu` slot); every GDT has the same
/// layout, so the selectors are the same on every CPU.
static TSS: [Once<TaskStateSegment>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static TABLES: [Once<Tables>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];

/// Builds and loads the boot CPU's GDT and TSS, reloads every segment register.
pub fn init() {
    init_cpu(0);
}

/// Builds and loads the GDT and TSS of CPU slot `cpu` (its own IST stacks), reloads every
/// segment register. Call once per CPU, on that CPU. Slots past [`MAX_CPUS`] are refused.
pub fn init_cpu(cpu: usize) -> bool {
    let (Some(tss_slot), Some(tables_slot)) = (TSS.get(cpu), TABLES.get(cpu)) else {
        return false;
    };
    let tss = tss_slot.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (i, slot) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK]
            .into_iter()
            .enumerate()
        {
            // SAFETY: only the address of the static is taken; nothing else refers to it.
            let base = unsafe { core::ptr::addr_of!(IST_STACKS[cpu][i]) } as u64;
            tss.interrupt_stack_table[slot as usize] = VirtAddr::new(base + IST_STACK_SIZE as u64);
        }
        tss
    });
    let tables = tables_slot.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        let segments = HostSegments {
            code: code.0,
            data: data.0,
            tss: tss_sel.0,
            gdt_base: 0, // read back with SGDT by `host_segments`
            tss_base: tss as *const TaskStateSegment as u64,
        };
        Tables { gdt, segments }
    });
    tables.gdt.load();
    let s = tables.segments;
    // SAFETY: the selectors index descriptors of the GDT just loaded: a 64-bit code segment,
    // a writable data segment and an available TSS (this CPU's own, never loaded by another
    // CPU, so it is not busy); 0 is valid for FS/GS in 64-bit mode.
    unsafe {
        CS::set_reg(SegmentSelector(s.code));
        SS::set_reg(SegmentSelector(s.data));
        DS::set_reg(SegmentSelector(s.data));
        ES::set_reg(SegmentSelector(s.data));
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        load_tss(SegmentSelector(s.tss));
    }
    true
}

/// The selectors and bases of the calling CPU's GDT and TSS (for the VMCS host-state area):
/// the GDT is found by its SGDT base among the loaded ones.
pub fn host_segments() -> HostSegments {
    let gdtr = x86_64::instructions::tables::sgdt();
    let base = gdtr.base.as_u64();
    let tables = TABLES
        .iter()
        .filter_map(Once::get)
        .find(|t| {
            let p = &t.gdt as *const GlobalDescriptorTable as u64;
            // The table sits inside the struct; SGDT gives its first entry's address.
            base >= p && base < p + core::mem::size_of::<GlobalDescriptorTable>() as u64
        })
        .or_else(|| TABLES[0].get())
        .expect("arch::gdt::init must run first");
    HostSegments {
        gdt_base: base,
        ..tables.segments
    }
}
