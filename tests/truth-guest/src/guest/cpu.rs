//! GDT (ring 0 and ring 3 segments, a TSS), IDT, the interrupt entry stubs, and the switch
//! between the kernel and a ring-3 process.
//!
//! Switching: [`enter_user`] saves the kernel's callee-saved registers and stack pointer,
//! copies the process's saved [`UserFrame`] to the top of the trap stack (TSS.RSP0), pops
//! it and `iretq`s into ring 3. The process yields with `int 0x80`: the CPU switches to
//! RSP0 and pushes SS..RIP, the stub pushes the general registers, so the top of the trap
//! stack again holds a complete `UserFrame`; the stub copies it back to the process and
//! resumes the kernel as if `enter_user` had returned.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;

use super::console::kprintln;
use super::{arch, hv};

/// The vector processes yield with.
pub const YIELD_VECTOR: u8 = 0x80;

/// A process's registers as `int 0x80` leaves them on the trap stack (lowest address first).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UserFrame {
    /// r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax.
    pub gprs: [u64; 15],
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(size_of::<UserFrame>() == 160);

impl UserFrame {
    /// A fresh ring-3 context starting at `entry` on `stack_top`, interrupts off.
    pub fn new(entry: u64, stack_top: u64) -> UserFrame {
        let sel = selectors();
        UserFrame {
            rip: entry,
            cs: u64::from(sel.user_code.0),
            rflags: RFLAGS_RESERVED_1,
            rsp: stack_top,
            ss: u64::from(sel.user_data.0),
            ..UserFrame::default()
        }
    }
}

/// RFLAGS bit 1 is always 1; IF stays 0 in ring 3 (nothing may preempt the work).
const RFLAGS_RESERVED_1: u64 = 1 << 1;

/// Segment selectors of the runtime GDT.
#[derive(Debug, Clone, Copy)]
pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub user_data: SegmentSelector,
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();
static IDT: Once<InterruptDescriptorTable> = Once::new();

fn selectors() -> Selectors {
    match GDT.get() {
        Some((_, sel)) => *sel,
        None => panic!("cpu::init has not run"),
    }
}

unsafe extern "C" {
    /// Top of the stack interrupts from ring 3 land on (TSS.RSP0).
    static gk_trap_stack_top: u8;
    /// Addresses of the 32 exception stubs.
    static gk_exc_table: [u64; 32];
    fn gk_timer_entry();
    fn gk_spurious_entry();
    fn gk_yield_entry();
    fn gk_enter_user(frame: *mut UserFrame);
}

/// Loads the GDT, the TSS and the IDT.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.privilege_stack_table[0] = VirtAddr::from_ptr(&raw const gk_trap_stack_top);
        tss
    });
    let (gdt, sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let sel = Selectors {
            kernel_code: gdt.append(Descriptor::kernel_code_segment()),
            kernel_data: gdt.append(Descriptor::kernel_data_segment()),
            user_data: gdt.append(Descriptor::user_data_segment()),
            user_code: gdt.append(Descriptor::user_code_segment()),
            tss: gdt.append(Descriptor::tss_segment(tss)),
        };
        (gdt, sel)
    });
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, with matching descriptor types.
    unsafe {
        CS::set_reg(sel.kernel_code);
        DS::set_reg(sel.kernel_data);
        ES::set_reg(sel.kernel_data);
        SS::set_reg(sel.kernel_data);
        load_tss(sel.tss);
    }
    IDT.call_once(build_idt).load();
}

fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    let addr = |f: unsafe extern "C" fn()| VirtAddr::new(f as usize as u64);
    // SAFETY: gk_exc_table is an immutable table of 32 stub addresses in .rodata.
    let exc = unsafe { gk_exc_table }.map(VirtAddr::new);
    // SAFETY: every address is an asm stub that follows the interrupt-frame protocol of
    // its vector (error code or not) and ends in `iretq` or never returns.
    unsafe {
        for v in 32..=255u8 {
            idt[v].set_handler_addr(addr(gk_spurious_entry));
        }
        idt.divide_error.set_handler_addr(exc[0]);
        idt.debug.set_handler_addr(exc[1]);
        idt.non_maskable_interrupt.set_handler_addr(exc[2]);
        idt.breakpoint.set_handler_addr(exc[3]);
        idt.overflow.set_handler_addr(exc[4]);
        idt.bound_range_exceeded.set_handler_addr(exc[5]);
        idt.invalid_opcode.set_handler_addr(exc[6]);
        idt.device_not_available.set_handler_addr(exc[7]);
        idt.double_fault.set_handler_addr(exc[8]);
        idt.invalid_tss.set_handler_addr(exc[10]);
        idt.segment_not_present.set_handler_addr(exc[11]);
        idt.stack_segment_fault.set_handler_addr(exc[12]);
        idt.general_protection_fault.set_handler_addr(exc[13]);
        idt.page_fault.set_handler_addr(exc[14]);
        idt.x87_floating_point.set_handler_addr(exc[16]);
        idt.alignment_check.set_handler_addr(exc[17]);
        idt.machine_check.set_handler_addr(exc[18]);
        idt.simd_floating_point.set_handler_addr(exc[19]);
        idt.virtualization.set_handler_addr(exc[20]);
        idt.cp_protection_exception.set_handler_addr(exc[21]);
        idt.hv_injection_exception.set_handler_addr(exc[28]);
        idt.vmm_communication_exception.set_handler_addr(exc[29]);
        idt.security_exception.set_handler_addr(exc[30]);
        idt[hv::TIMER_VECTOR].set_handler_addr(addr(gk_timer_entry));
        idt[YIELD_VECTOR]
            .set_handler_addr(addr(gk_yield_entry))
            .set_privilege_level(x86_64::PrivilegeLevel::Ring3);
    }
    idt
}

/// Runs the process whose context is `frame` until it yields (`int 0x80`), under the page
/// tables currently loaded; `frame` is updated to resume it later.
pub fn enter_user(frame: &mut UserFrame) {
    // SAFETY: `frame` is a valid ring-3 context (built by `UserFrame::new` or saved by the
    // yield stub) whose code and stack the current CR3 maps user-accessible; the stub
    // preserves the kernel's callee-saved registers and returns here on the next yield.
    unsafe { gk_enter_user(frame) }
}

/// What an exception stub leaves on the stack (lowest address first).
#[repr(C)]
#[derive(Debug)]
struct ExceptionFrame {
    /// r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax.
    saved: [u64; 9],
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const INVALID_OPCODE: u64 = 6;
const PAGE_FAULT: u64 = 14;

/// Called by every exception stub. Returns only to resume after the VMCALL probe's #UD.
#[unsafe(no_mangle)]
extern "C" fn gk_exception(frame: &mut ExceptionFrame) {
    if frame.vector == INVALID_OPCODE
        && let Some(next) = hv::step_over_probe(frame.rip)
    {
        frame.rip = next;
        return;
    }
    let cr2 = if frame.vector == PAGE_FAULT {
        arch::read_cr2()
    } else {
        0
    };
    kprintln!(
        "truth-guest: fatal: exception {} error={:#x} rip={:#x} cs={:#x} rsp={:#x} cr2={:#x} cr3={:#x}",
        frame.vector,
        frame.error,
        frame.rip,
        frame.cs,
        frame.rsp,
        cr2,
        arch::read_cr3()
    );
    hv::stop(2)
}

core::arch::global_asm!(
    r#"
    .section .text.gk_stubs, "ax"

    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
gk_exc_\v:
    push 0
    push \v
    jmp gk_exc_common
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
gk_exc_\v:
    push \v
    jmp gk_exc_common
    .endr

gk_exc_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    cld
    mov rdi, rsp
    call gk_exception
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq

    .global gk_timer_entry
gk_timer_entry:
    mov byte ptr [rip + TIMER_FIRED], 1
    iretq

    .global gk_spurious_entry
gk_spurious_entry:
    iretq

    .global gk_yield_entry
gk_yield_entry:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rsi, rsp
    mov rdi, [rip + gk_current_frame]
    mov ecx, 20
    rep movsq
    mov rsp, [rip + gk_kernel_rsp]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

    .global gk_enter_user
gk_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + gk_kernel_rsp], rsp
    mov [rip + gk_current_frame], rdi
    lea rsp, [rip + gk_trap_stack_top]
    sub rsp, 160
    cld
    mov rsi, rdi
    mov rdi, rsp
    mov ecx, 20
    rep movsq
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    iretq

    .section .rodata.gk_exc_table, "a"
    .balign 8
    .global gk_exc_table
gk_exc_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad gk_exc_\v
    .endr

    .section .bss.gk_switch, "aw", @nobits
    .balign 16
gk_kernel_rsp:
    .skip 8
gk_current_frame:
    .skip 8
    .balign 16
    .skip 16384
    .global gk_trap_stack_top
gk_trap_stack_top:
"#
);
