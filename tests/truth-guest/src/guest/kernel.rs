//! `kmain`: set up, run the busy rounds, idle, report, stop. And the two processes.

use core::cell::UnsafeCell;

use spin::Once;

use super::arch;
use super::console::{Console, kprintln};
use super::cpu::{self, UserFrame};
use super::hv;
use super::paging::{self, Which};
use crate::config::{BadOption, Config};
use crate::report::{self, ProcInfo, Range, Run};
use crate::work;

/// `hvm_start_info` magic (PVH boot ABI).
const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Offset of `cmdline_paddr` in `hvm_start_info`.
const HVM_CMDLINE_PADDR: u64 = 24;
/// The boot page tables identity-map this much; the start info must lie below.
const BOOT_MAPPED: u64 = 1 << 30;
const CMDLINE_MAX: usize = 512;

unsafe extern "C" {
    static __ktext_start: u8;
    static __ktext_end: u8;
    static __user_alpha_start: u8;
    static __user_alpha_end: u8;
    static __user_beta_start: u8;
    static __user_beta_end: u8;
}

fn range(start: *const u8, end: *const u8) -> Range {
    Range {
        start: start as u64,
        end: end as u64,
    }
}

/// Entered from `boot.rs` in long mode on the boot page tables.
#[unsafe(no_mangle)]
extern "C" fn kmain(start_info: u32) -> ! {
    let cmdline = read_cmdline(u64::from(start_info));
    let config = Config::parse(cmdline, |BadOption(word)| {
        kprintln!("truth-guest: ignoring bad option `{word}`");
    });
    cpu::init();
    let hypervisor = hv::detect();
    kprintln!(
        "truth-guest: hypervisor={} cpuid.hypervisor={} rounds={} idle_pct={} slice_us={} vm={}",
        u8::from(hypervisor),
        u8::from(arch::hypervisor_bit()),
        config.rounds,
        config.idle_pct,
        config.slice_us,
        config.vm()
    );

    let ktext = range(&raw const __ktext_start, &raw const __ktext_end);
    let alpha_user = range(&raw const __user_alpha_start, &raw const __user_alpha_end);
    let beta_user = range(&raw const __user_beta_start, &raw const __user_beta_end);
    // SAFETY: each space is built once, before any of them is loaded (we still run on the
    // boot tables).
    let (kernel_cr3, alpha_cr3, beta_cr3) = unsafe {
        (
            paging::build(Which::Kernel, None),
            paging::build(Which::Alpha, Some(alpha_user)),
            paging::build(Which::Beta, Some(beta_user)),
        )
    };
    // SAFETY: the kernel space identity-maps all memory this code touches (the image and
    // the page tables lie in the first 2 MiB, page 0 excepted).
    unsafe { arch::write_cr3(kernel_cr3) };
    let mut run = Run {
        rounds: config.rounds,
        tables_built: hv::host_tsc(),
        ..Run::default()
    };

    let mut alpha = UserFrame::new(alpha_main as *const () as u64, ALPHA_STACK.top());
    let mut beta = UserFrame::new(beta_main as *const () as u64, BETA_STACK.top());

    // Busy: per round alpha 7 units, beta 2 units, kernel 1 unit (see work.rs).
    run.busy_start = hv::host_tsc();
    let busy_from = arch::rdtsc();
    let mut checksum = 0u64;
    // TSC spent in each part (switches included), a cross-check of the unit counts: with
    // a TSC that counts instructions (QEMU -icount, Bochs) it splits 70/20/10.
    let mut part_tsc = [0u64; 3];
    let mut mark = busy_from;
    let mut lap = |part: usize| {
        let now = arch::rdtsc();
        part_tsc[part] += now - mark;
        mark = now;
    };
    for _ in 0..config.rounds {
        // SAFETY: every space maps the kernel identically to the kernel space.
        unsafe { arch::write_cr3(alpha_cr3) };
        cpu::enter_user(&mut alpha);
        lap(0);
        // SAFETY: as above.
        unsafe { arch::write_cr3(beta_cr3) };
        cpu::enter_user(&mut beta);
        lap(1);
        // SAFETY: as above.
        unsafe { arch::write_cr3(kernel_cr3) };
        checksum = checksum.wrapping_add(work::kernel_work());
        lap(2);
    }
    let idle_from = arch::rdtsc();
    run.busy_tsc = idle_from - busy_from;
    run.idle_start = hv::host_tsc();

    // Idle: HLT on one-shot timers until idle is idle_pct % of busy + idle.
    let pct = u64::from(config.idle_pct);
    let idle_target = run.busy_tsc * pct / (100 - pct);
    let slice_ns = u64::from(config.slice_us) * 1000;
    let mut idle_slices = 0u64;
    loop {
        let elapsed = arch::rdtsc() - idle_from;
        if elapsed >= idle_target {
            break;
        }
        hv::idle(slice_ns, idle_target - elapsed);
        idle_slices += 1;
    }
    run.idle_tsc = arch::rdtsc() - idle_from;
    run.idle_end = hv::host_tsc();

    // Each process yields with its last round's loop accumulators in RDI: check that every
    // loop ran exactly units x ITERS_PER_UNIT turns.
    let expect = |seed: u64, units: u64| work::checksum(seed, units * work::ITERS_PER_UNIT);
    let loops_ok = alpha.gprs[RDI]
        == expect(work::ALPHA_HEAVY_SEED, work::ALPHA_HEAVY_UNITS)
            .wrapping_add(expect(work::ALPHA_LIGHT_SEED, work::ALPHA_LIGHT_UNITS))
        && beta.gprs[RDI] == expect(work::BETA_WORK_SEED, work::BETA_WORK_UNITS)
        && checksum
            == expect(work::KERNEL_WORK_SEED, work::KERNEL_WORK_UNITS)
                .wrapping_mul(u64::from(config.rounds));
    kprintln!(
        "truth-guest: done: busy_tsc={} idle_tsc={} idle_slices={idle_slices} unit={} insns loops={} alpha_tsc={} beta_tsc={} kernel_tsc={}",
        run.busy_tsc,
        run.idle_tsc,
        work::INSNS_PER_UNIT,
        if loops_ok { "ok" } else { "WRONG" },
        part_tsc[0],
        part_tsc[1],
        part_tsc[2],
    );
    let procs = [
        ProcInfo {
            pid: 0,
            comm: "kernel",
            cr3: kernel_cr3,
            user: None,
        },
        ProcInfo {
            pid: 1,
            comm: "alpha",
            cr3: alpha_cr3,
            user: Some(alpha_user),
        },
        ProcInfo {
            pid: 2,
            comm: "beta",
            cr3: beta_cr3,
            user: Some(beta_user),
        },
    ];
    let _ = report::write_bundle(&mut Console, config.vm(), &procs, ktext, &run);
    let _ = report::write_truth(&mut Console, &run);
    hv::stop(0)
}

/// Index of RDI in `UserFrame::gprs` (the value a process yields with).
const RDI: usize = 9;

/// Copies the command line out of `hvm_start_info` ("" if there is none or it is bad).
fn read_cmdline(start_info: u64) -> &'static str {
    static CMDLINE: Once<([u8; CMDLINE_MAX], usize)> = Once::new();
    let (buf, len) = CMDLINE.call_once(|| {
        let mut buf = [0u8; CMDLINE_MAX];
        if start_info == 0 || start_info + 64 > BOOT_MAPPED {
            kprintln!("truth-guest: no hvm_start_info (EBX={start_info:#x})");
            return (buf, 0);
        }
        // SAFETY: below BOOT_MAPPED everything is identity-mapped by the boot tables, and
        // the loader put hvm_start_info (56 bytes) at this address.
        let (magic, cmdline) = unsafe {
            (
                core::ptr::read_unaligned(start_info as *const u32),
                core::ptr::read_unaligned((start_info + HVM_CMDLINE_PADDR) as *const u64),
            )
        };
        if magic != HVM_START_MAGIC {
            kprintln!("truth-guest: bad hvm_start_info magic {magic:#x} at {start_info:#x}");
            return (buf, 0);
        }
        if cmdline == 0 || cmdline + CMDLINE_MAX as u64 > BOOT_MAPPED {
            return (buf, 0);
        }
        let mut len = 0;
        while len < CMDLINE_MAX {
            // SAFETY: identity-mapped (checked above); the loader's string is NUL-terminated
            // and we stop at CMDLINE_MAX at the latest.
            let b = unsafe { core::ptr::read((cmdline + len as u64) as *const u8) };
            if b == 0 {
                break;
            }
            buf[len] = b;
            len += 1;
        }
        (buf, len)
    });
    let bytes = buf.get(..*len).unwrap_or(&[]);
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or(&[])).unwrap_or(""),
    }
}

/// A ring-3 stack in a process's user section.
#[repr(C, align(4096))]
struct UserStack(UnsafeCell<[u8; 8192]>);
// SAFETY: only the owning process touches it, through RSP, from ring 3.
unsafe impl Sync for UserStack {}

impl UserStack {
    fn top(&self) -> u64 {
        self.0.get() as u64 + size_of::<Self>() as u64
    }
}

#[unsafe(link_section = ".user_alpha.data.stack")]
static ALPHA_STACK: UserStack = UserStack(UnsafeCell::new([0; 8192]));
#[unsafe(link_section = ".user_beta.data.stack")]
static BETA_STACK: UserStack = UserStack(UnsafeCell::new([0; 8192]));

/// Process 1, `alpha`, ring 3: 6 + 1 units, then yield.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".user_alpha.text.alpha_main")]
extern "C" fn alpha_main() -> ! {
    loop {
        let sum = work::alpha_heavy().wrapping_add(work::alpha_light());
        // SAFETY: `int 0x80` is the yield gate (DPL 3); the kernel saves and restores
        // every register and resumes right after it.
        unsafe { core::arch::asm!("int 0x80", in("rdi") sum) };
    }
}

/// Process 2, `beta`, ring 3: 2 units, then yield.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".user_beta.text.beta_main")]
extern "C" fn beta_main() -> ! {
    loop {
        let sum = work::beta_work();
        // SAFETY: as in `alpha_main`.
        unsafe { core::arch::asm!("int 0x80", in("rdi") sum) };
    }
}
