//! Bare-metal entry point: platform bring-up, then the VMM. On the host this binary only
//! explains how to build the image.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod kernel {
    use core::sync::atomic::{AtomicU64, Ordering};

    use hypervisor::arch::interrupts::{self, InterruptFrame, vectors};
    use hypervisor::arch::madt::{self, CpuList, MadtError};
    use hypervisor::arch::{cpu, gdt, lapic, percpu, pic, smp};
    use hypervisor::boot::{self, BootInfo, HvConfig, MemoryKind};
    use hypervisor::memory::{self, paging};
    use hypervisor::power::{self, status};
    use hypervisor::println;
    use hypervisor::time::{self, Mhz};

    core::arch::global_asm!(include_str!("boot/entry.s"), options(att_syntax, raw));

    /// Rate of the hypervisor's own periodic tick once boot is done.
    const TICK_HZ: u32 = 100;

    /// Bytes as `N KiB` / `N MiB`; honours width and alignment.
    struct Size(u64);
    impl core::fmt::Display for Size {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            use core::fmt::Write;
            let mut s = SmallStr {
                buf: [0; 24],
                len: 0,
            };
            if self.0 >= 16 << 20 || (self.0 >= 1 << 20 && self.0.is_multiple_of(1 << 20)) {
                write!(s, "{} MiB", self.0 >> 20)?;
            } else {
                write!(s, "{} KiB", self.0 >> 10)?;
            }
            f.pad(core::str::from_utf8(&s.buf[..s.len]).unwrap_or("?"))
        }
    }

    /// A short string on the stack, for padded formatting without the heap.
    struct SmallStr {
        buf: [u8; 24],
        len: usize,
    }
    impl core::fmt::Write for SmallStr {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            self.buf
                .get_mut(self.len..end)
                .ok_or(core::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    fn kind_name(kind: MemoryKind) -> &'static str {
        match kind {
            MemoryKind::Available => "available",
            MemoryKind::Reserved => "reserved",
            MemoryKind::AcpiReclaimable => "ACPI reclaimable",
            MemoryKind::AcpiNvs => "ACPI NVS",
            MemoryKind::Defective => "defective",
            MemoryKind::Other(_) => "other",
        }
    }

    fn fatal(status: u8, what: &dyn core::fmt::Display) -> ! {
        println!("hv: fatal: {what}");
        power::stop(status, "platform init failed")
    }

    static TEST_NMIS: AtomicU64 = AtomicU64::new(0);
    fn test_nmi(_: &mut InterruptFrame) {
        TEST_NMIS.fetch_add(1, Ordering::Relaxed);
    }

    fn print_memory(boot: &BootInfo<'_>) {
        println!(
            "hv: memory map: {} entries, {} available, highest available byte {:#x}",
            boot.memory.len(),
            Size(boot.available_bytes()),
            boot.highest_available().saturating_sub(1)
        );
        for r in boot.memory.iter() {
            println!(
                "hv:   {:#014x}-{:#014x} {:>9} {}",
                r.start,
                r.end(),
                Size(r.len),
                kind_name(r.kind)
            );
        }
        for m in boot.modules.iter() {
            println!(
                "hv: module {} at {:#x}-{:#x} ({} bytes), cmdline `{}`",
                m.name(),
                m.start,
                m.end,
                m.len(),
                m.cmdline
            );
        }
        if let Some(rsdp) = boot.rsdp {
            println!(
                "hv: ACPI RSDP {} ({} bytes)",
                if rsdp.v2 { "2.0+" } else { "1.0" },
                rsdp.bytes.len()
            );
        }
    }

    #[unsafe(no_mangle)]
    extern "C" fn kmain(magic: u32, info_addr: u32) -> ! {
        let boot_tsc = cpu::rdtsc();
        let (_com1, com2) = hypervisor::console::init();
        let mut info = match boot::load_multiboot2(magic, u64::from(info_addr)) {
            Ok(info) => info,
            Err(e) => {
                println!(
                    "hv: {} {} booting",
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION")
                );
                fatal(status::BAD_BOOT, &e)
            }
        };
        println!(
            "hv: {} {} booting (bootloader: {}, cmdline: {})",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            if info.bootloader.is_empty() {
                "unknown"
            } else {
                info.bootloader
            },
            info.cmdline
        );
        match HvConfig::parse(info.cmdline) {
            Ok(config) => info.config = config,
            Err(e) => fatal(status::BAD_BOOT, &e),
        }
        let boot = boot::publish(info);
        print_memory(boot);
        println!(
            "hv: COM2 sample-log port {}",
            if com2 {
                "present"
            } else {
                "absent (sample log disabled)"
            }
        );

        cpu::init_cr0();
        gdt::init();
        interrupts::init();
        let segs = gdt::host_segments();
        println!(
            "hv: gdt at {:#x} (cs={:#x} ds={:#x} tr={:#x}), idt at {:#x}",
            segs.gdt_base,
            segs.code,
            segs.data,
            segs.tss,
            interrupts::idt_base()
        );

        let mem = match memory::init(boot, &[boot::info_range()]) {
            Ok(m) => m,
            Err(e) => fatal(status::BAD_BOOT, &e),
        };
        let image = memory::image_range();
        println!(
            "hv: image {:#x}-{:#x}; frames {} free in {} ranges; heap {} at {:#x}; identity map 0-{:#x}",
            image.start,
            image.end,
            Size(mem.free_bytes),
            mem.free_ranges,
            Size(mem.heap_size),
            mem.heap_start,
            mem.identity_limit
        );

        if let Err(e) = paging::map_uncached(lapic::physical_base()) {
            fatal(status::FAILURE, &e);
        }
        pic::disable();
        if let Err(e) = lapic::init() {
            fatal(status::FAILURE, &e);
        }
        let cpu_index = percpu::register_this_cpu().unwrap_or(0);
        println!(
            "hv: lapic id {} version {:#x} at {:#x} (xAPIC), cpu {}{}",
            lapic::id(),
            lapic::version() & 0xff,
            lapic::physical_base(),
            cpu_index,
            if lapic::is_bsp() { " (BSP)" } else { "" }
        );

        let cpus = match boot.rsdp {
            // SAFETY: GRUB copied the firmware's RSDP into the boot information (reserved,
            // identity-mapped); its tables lie in the identity-mapped first 4 GiB.
            Some(r) => unsafe { madt::cpus_from_rsdp(r.bytes.as_ptr() as usize) },
            None => Err(MadtError::Tables("the bootloader passed no RSDP")),
        };
        let cpus = match cpus {
            Ok(list) => {
                println!(
                    "hv: acpi madt: {} cpu(s), apic ids {:?}{}",
                    list.len(),
                    list.apic_ids(),
                    if list.ignored > 0 {
                        " (more ignored)"
                    } else {
                        ""
                    }
                );
                list
            }
            Err(e) => {
                println!("hv: {e}; running on the boot CPU only");
                CpuList::boot_only(lapic::id())
            }
        };
        smp::set_cpus(cpus);

        let cal = match time::calibrate() {
            Ok(c) => c,
            Err(e) => fatal(status::FAILURE, &e),
        };
        println!("hv: tsc {} MHz (measured against PIT)", Mhz(cal.tsc_hz));
        println!(
            "hv: lapic timer {} MHz (measured against PIT, divide 1)",
            Mhz(cal.lapic_hz)
        );

        // Self-tests of the interrupt paths the VMM relies on.
        if let Err(e) = time::start_periodic(1000) {
            fatal(status::FAILURE, &e);
        }
        // The IDT is loaded (checked by `enable`), the PIC is masked and the LAPIC timer
        // vector has its handler.
        interrupts::enable();
        let t0 = time::ticks();
        time::delay_us(20_000);
        let ticks = time::ticks() - t0;
        println!(
            "hv: periodic timer 1000 Hz on vector {:#x}: {} ticks in 20 ms",
            vectors::TIMER,
            ticks
        );
        if ticks == 0 {
            fatal(
                status::FAILURE,
                &"the periodic LAPIC timer raised no interrupt in 20 ms",
            );
        } else if !(10..=30).contains(&ticks) {
            // Emulators on a loaded host can delay timer interrupts: report, go on.
            println!("hv: warning: expected about 20 timer ticks in 20 ms, got {ticks}");
        }
        let _ = interrupts::set_handler(vectors::NMI, test_nmi);
        lapic::send_self_nmi();
        time::delay_us(1000);
        interrupts::clear_handler(vectors::NMI);
        if TEST_NMIS.load(Ordering::Relaxed) != 1 {
            fatal(
                status::FAILURE,
                &"self-NMI through the LAPIC ICR was not delivered",
            );
        }
        println!("hv: self-NMI delivered");
        if let Err(e) = time::start_periodic(TICK_HZ) {
            fatal(status::FAILURE, &e);
        }
        println!(
            "hv: platform ready in {} ms (periodic tick {} Hz); starting the VMM",
            time::tsc_to_ns(cpu::rdtsc() - boot_tsc) / 1_000_000,
            TICK_HZ
        );
        hypervisor::vmm::start(boot)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        // SAFETY: the panic path only prints (polling the UART) and stops the machine;
        // nothing waits for an interrupt.
        unsafe { cpu::disable_interrupts() };
        // SAFETY: we never return to whoever held the console lock.
        unsafe { hypervisor::console::force_unlock() };
        println!("hv: panic: {info}");
        power::stop(status::PANIC, "panic")
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor runs on bare metal: build its boot image with `cargo xtask image`");
    std::process::exit(2);
}
