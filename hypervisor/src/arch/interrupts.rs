//! The IDT (SDM 6.14), one assembly stub per vector, and a dispatcher that hands every
//! interrupt to a registered Rust handler with the full register state.
//!
//! - Exceptions without a handler print their name, error code, RIP, CR2 (for #PF) and all
//!   registers, then stop the machine through [`crate::power::stop`].
//! - Vectors 32-255 with a handler get a LAPIC EOI after the handler returns (not for the
//!   spurious vector). An external vector without a handler is counted, EOIed and ignored.
//! - NMI (vector 2) runs on its own IST stack; the VMM registers its sampling hook with
//!   [`set_handler`]`(vectors::NMI, ...)`.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arch::{cpu, gdt, lapic};

/// Vector numbers used by the platform.
pub mod vectors {
    pub const DIVIDE_ERROR: u8 = 0;
    pub const DEBUG: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BREAKPOINT: u8 = 3;
    pub const INVALID_OPCODE: u8 = 6;
    pub const DOUBLE_FAULT: u8 = 8;
    pub const GENERAL_PROTECTION: u8 = 13;
    pub const PAGE_FAULT: u8 = 14;
    pub const MACHINE_CHECK: u8 = 18;
    /// First vector that is not an exception.
    pub const FIRST_EXTERNAL: u8 = 32;
    /// The periodic LAPIC timer (`crate::time`).
    pub const TIMER: u8 = 0x20;
    /// Reserved for the VMM's sampling interrupt (self-IPI or timer).
    pub const SAMPLING: u8 = 0x21;
    /// Legacy 8259 PIC IRQs 0-15 are remapped here (and masked).
    pub const PIC_BASE: u8 = 0xe0;
    /// LAPIC error interrupt.
    pub const LAPIC_ERROR: u8 = 0xfe;
    /// LAPIC spurious interrupt; never EOIed.
    pub const SPURIOUS: u8 = 0xff;
}

/// The registers saved on interrupt entry, lowest address first. The handler may change
/// them; they are restored by IRETQ.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InterruptFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector number (pushed by the stub).
    pub vector: u64,
    /// The error code the CPU pushed, or 0 (pushed by the stub) for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<InterruptFrame>() == 22 * 8);

/// An interrupt handler.
pub type Handler = fn(&mut InterruptFrame);

/// Why a handler could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptError {
    /// The vector already has a handler; clear it first.
    AlreadySet(u8),
}

impl core::fmt::Display for InterruptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::AlreadySet(v) => write!(f, "interrupt vector {v:#x} already has a handler"),
        }
    }
}

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);

/// Registers `handler` for `vector`.
pub fn set_handler(vector: u8, handler: Handler) -> Result<(), InterruptError> {
    HANDLERS[usize::from(vector)]
        .compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
        .map(|_| ())
        .map_err(|_| InterruptError::AlreadySet(vector))
}

/// Removes the handler of `vector`.
pub fn clear_handler(vector: u8) {
    HANDLERS[usize::from(vector)].store(0, Ordering::Release);
}

/// How many interrupts arrived on external vectors that had no handler.
pub fn unexpected_count() -> u64 {
    UNEXPECTED.load(Ordering::Relaxed)
}

fn handler(vector: usize) -> Option<Handler> {
    let raw = HANDLERS.get(vector)?.load(Ordering::Acquire);
    if raw == 0 {
        return None;
    }
    // SAFETY: non-zero values are only ever stored by `set_handler` from a `Handler`.
    Some(unsafe { core::mem::transmute::<usize, Handler>(raw) })
}

/// Vectors whose exception pushes an error code (SDM table 6-1).
const fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Exception names (SDM table 6-1).
pub fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range exceeded",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        9 => "coprocessor segment overrun",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating-point error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating-point",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        28 => "#HV hypervisor injection",
        29 => "#VC VMM communication",
        30 => "#SX security exception",
        15 | 22..=27 | 31 => "reserved exception",
        _ => "external interrupt",
    }
}

// One 16-byte stub per vector: push a zero error code where the CPU pushes none, push the
// vector, jump to the common path, which saves the general registers and calls the
// dispatcher with a pointer to the resulting `InterruptFrame`. Stack alignment: the CPU
// aligns RSP to 16 before pushing its 5 words; 2 + 15 more pushes leave RSP 16-aligned at
// the CALL, as the SysV ABI wants.
core::arch::global_asm!(
    r#"
    .section .text.isr, "ax"
    .balign 16
    .global hv_isr_stubs
hv_isr_stubs:
    .set hv_vec, 0
    .rept 256
    .balign 16
    .if (hv_vec == 8) || ((hv_vec >= 10) && (hv_vec <= 14)) || (hv_vec == 17) || (hv_vec == 21) || (hv_vec == 29) || (hv_vec == 30)
    .else
    pushq $0
    .endif
    pushq $hv_vec
    jmp hv_isr_common
    .set hv_vec, hv_vec + 1
    .endr

hv_isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call {dispatch}
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    .text
    "#,
    dispatch = sym interrupt_dispatch,
    options(att_syntax)
);

const STUB_SIZE: u64 = 16;

unsafe extern "C" {
    static hv_isr_stubs: u8;
}

extern "C" fn interrupt_dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector as usize;
    match handler(vector) {
        Some(h) => {
            h(frame);
            if vector >= usize::from(vectors::FIRST_EXTERNAL)
                && vector != usize::from(vectors::SPURIOUS)
            {
                lapic::eoi();
            }
        }
        None if vector < usize::from(vectors::FIRST_EXTERNAL) => fatal_exception(frame),
        None if vector == usize::from(vectors::SPURIOUS) => {}
        None => {
            UNEXPECTED.fetch_add(1, Ordering::Relaxed);
            lapic::eoi();
        }
    }
}

fn fatal_exception(f: &InterruptFrame) -> ! {
    // SAFETY: we are about to stop the machine; whoever held the console lock will never
    // release it if it was this CPU, interrupted.
    unsafe { crate::console::force_unlock() };
    let v = f.vector as u8;
    if has_error_code(v) {
        crate::println!(
            "hv: fatal: exception {} (vector {}) error={:#x} rip={:#x} cs={:#x} rflags={:#x}",
            exception_name(v),
            v,
            f.error_code,
            f.rip,
            f.cs,
            f.rflags
        );
    } else {
        crate::println!(
            "hv: fatal: exception {} (vector {}) rip={:#x} cs={:#x} rflags={:#x}",
            exception_name(v),
            v,
            f.rip,
            f.cs,
            f.rflags
        );
    }
    if v == vectors::PAGE_FAULT {
        crate::println!("hv:   cr2={:#018x} (faulting address)", cpu::read_cr2());
    }
    crate::println!(
        "hv:   cr0={:#x} cr3={:#x} cr4={:#x}",
        cpu::read_cr0(),
        cpu::read_cr3(),
        cpu::read_cr4()
    );
    crate::println!(
        "hv:   rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx
    );
    crate::println!(
        "hv:   rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}",
        f.rsi,
        f.rdi,
        f.rbp,
        f.rsp
    );
    crate::println!(
        "hv:   r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}",
        f.r8,
        f.r9,
        f.r10,
        f.r11
    );
    crate::println!(
        "hv:   r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}",
        f.r12,
        f.r13,
        f.r14,
        f.r15
    );
    crate::power::stop(crate::power::status::EXCEPTION, exception_name(v))
}

/// One IDT gate (SDM figure 6-8): a 64-bit interrupt gate, DPL 0.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(core::mem::size_of::<Gate>() == 16);

/// Present, DPL 0, type 0xE (64-bit interrupt gate: IF cleared on entry).
const GATE_INTERRUPT: u8 = 0x8e;

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn new(handler: u64, selector: u16, ist: u8) -> Self {
        Gate {
            offset_low: handler as u16,
            selector,
            ist,
            type_attr: GATE_INTERRUPT,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate::MISSING; 256]);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Fills and loads the IDT. Needs [`gdt::init`] first (for the code selector and ISTs).
pub fn init() {
    let code = gdt::host_segments().code;
    let stubs = core::ptr::addr_of!(hv_isr_stubs) as u64;
    // SAFETY: runs once, on the boot CPU, before interrupts are enabled; nothing else
    // references IDT yet. The IDT is static so the loaded base stays valid forever.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, gate) in idt.0.iter_mut().enumerate() {
            // IST numbers in the gate are 1-based.
            let ist = match v as u8 {
                vectors::DOUBLE_FAULT => gdt::IST_DOUBLE_FAULT as u8 + 1,
                vectors::NMI => gdt::IST_NMI as u8 + 1,
                vectors::MACHINE_CHECK => gdt::IST_MACHINE_CHECK as u8 + 1,
                _ => 0,
            };
            *gate = Gate::new(stubs + v as u64 * STUB_SIZE, code, ist);
        }
        let ptr = DescriptorPointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: idt as *const Idt as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }
}

/// Loads the IDT built by [`init`] on the calling CPU (application processors share the
/// boot CPU's IDT; their IST stacks come from their own TSS).
pub fn load() {
    let ptr = DescriptorPointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: `init` filled the static IDT before any AP is started; LIDT only reads the
    // pointer, and the table lives forever.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }
}

/// Enables maskable interrupts on this CPU, checking the precondition that makes it safe:
/// the loaded IDT is the one [`init`] filled (every vector has a stub; unregistered ones
/// report and stop). Panics if this CPU has not loaded it (a bring-up order bug).
pub fn enable() {
    let (base, _) = super::cpu::read_idtr();
    assert!(
        base == idt_base() && base != 0,
        "interrupts enabled before the IDT was loaded on this CPU"
    );
    // SAFETY: this CPU's IDTR points at the static IDT built by `init`, whose 256 gates
    // all lead to stubs with a handler or a report; so every vector that can arrive is
    // handled.
    unsafe { super::cpu::enable_interrupts() };
}

/// Linear address of the IDT (for the VMCS host-state area).
pub fn idt_base() -> u64 {
    core::ptr::addr_of!(IDT) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_vectors_match_the_sdm() {
        let with: Vec<u8> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, vec![8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }

    #[test]
    fn registration_refuses_a_second_handler() {
        fn a(_: &mut InterruptFrame) {}
        fn b(_: &mut InterruptFrame) {}
        assert_eq!(set_handler(0x80, a), Ok(()));
        assert_eq!(set_handler(0x80, b), Err(InterruptError::AlreadySet(0x80)));
        assert_eq!(
            handler(0x80).map(|h| h as *const () as usize),
            Some(a as *const () as usize)
        );
        clear_handler(0x80);
        assert_eq!(set_handler(0x80, b), Ok(()));
        assert_eq!(
            handler(0x80).map(|h| h as *const () as usize),
            Some(b as *const () as usize)
        );
        clear_handler(0x80);
    }

    #[test]
    fn names() {
        assert_eq!(exception_name(14), "#PF page fault");
        assert_eq!(exception_name(15), "reserved exception");
        assert_eq!(exception_name(0x20), "external interrupt");
    }
}
