//! The BTF reader against the real Debian kernel's BTF (the `.BTF` section of its
//! decompressed `vmlinux`, the same data as that kernel's `/sys/kernel/btf/vmlinux`).

//!
//! The kernel files come from `cargo xtask kernel`: `$HV_KERNEL_DIR` (relative to the
//! workspace unless absolute), else `build/kernel/`; as a fallback its download
//! directory `dl/` (`vmlinux`, `usr/lib/debug/boot/System.map-*`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use guest_kit::kernel::btf::{FieldType, KernelTypes};
use guest_kit::kernel::kcore::{KernelMemory, MemoryError};
use guest_kit::kernel::tasks::{
    self, KernelSymbols, Layout, PF_KTHREAD, START_KERNEL_MAP, TaskOffsets,
};
use object::{Object, ObjectSection, ObjectSegment};

fn kernel_dirs() -> Vec<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let dir = match std::env::var_os("HV_KERNEL_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("build/kernel"),
    };
    let mut dirs = vec![
        dir.clone(),
        dir.join("dl"),
        workspace.join("build/kernel/dl"),
    ];
    dirs.dedup();
    dirs
}

/// The first existing file among `names` in the kernel directories.
fn kernel_file(names: &[&str], is_real: impl Fn(&Path) -> bool) -> PathBuf {
    let candidates: Vec<PathBuf> = kernel_dirs()
        .iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file() && is_real(p))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "real kernel files missing: run `cargo xtask kernel` (looked for {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn vmlinux_bytes() -> Vec<u8> {
    let path = kernel_file(&["vmlinux"], |_| true);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn btf_section(vmlinux: &[u8]) -> Vec<u8> {
    let file = object::File::parse(vmlinux).unwrap();
    let section = file
        .section_by_name(".BTF")
        .expect("vmlinux has no .BTF section");
    section.data().unwrap().to_vec()
}

/// `NAME -> ADDR` of the real System.map (the image package's stub has no `init_task`).
fn system_map() -> HashMap<String, u64> {
    let mut names = vec!["System.map".to_string()];
    for dir in kernel_dirs() {
        if let Ok(entries) = std::fs::read_dir(dir.join("usr/lib/debug/boot")) {
            for e in entries.flatten() {
                names.push(format!(
                    "usr/lib/debug/boot/{}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let real = |p: &Path| std::fs::read_to_string(p).is_ok_and(|t| t.contains(" init_task\n"));
    let path = kernel_file(&names, real);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            Some((f.next()?.to_string(), addr))
        })
        .collect()
}

/// The kernel image's initial memory: `vmlinux`'s loadable segments at their link-time
/// addresses (statically initialised data such as `init_task` and `init_mm`).
struct ImageMemory {
    data: Vec<u8>,
    segments: Vec<(u64, u64, u64)>, // vaddr, file offset, size
}

impl ImageMemory {
    fn new(data: Vec<u8>) -> Self {
        let file = object::File::parse(&*data).unwrap();
        let segments = file
            .segments()
            .filter(|s| s.address() >= START_KERNEL_MAP)
            .map(|s| {
                let (off, size) = s.file_range();
                (s.address(), off, size)
            })
            .collect();
        ImageMemory { data, segments }
    }
}

impl KernelMemory for ImageMemory {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let unmapped = MemoryError::Unmapped {
            addr: vaddr,
            len: buf.len(),
        };
        let (v, off, size) = *self
            .segments
            .iter()
            .find(|(v, _, size)| vaddr >= *v && vaddr - v + buf.len() as u64 <= *size)
            .ok_or(unmapped)?;
        let at = (off + vaddr - v) as usize;
        buf.copy_from_slice(&self.data[at..at + buf.len()]);
        let _ = size;
        Ok(())
    }
}

fn offsets(vmlinux: &[u8]) -> TaskOffsets {
    KernelTypes::parse(&btf_section(vmlinux))
        .unwrap()
        .task_offsets()
        .unwrap()
}

#[test]
fn real_kernel_btf_gives_plausible_consistent_offsets() {
    let btf = btf_section(&vmlinux_bytes());
    let types = KernelTypes::parse(&btf).unwrap();
    let o = types.task_offsets().unwrap();
    let task_size = types.struct_size("task_struct").unwrap();
    let mm_size = types.struct_size("mm_struct").unwrap();
    // A 6.1 task_struct is several KiB, an mm_struct about 1 KiB.
    assert!(
        (2048..=16384).contains(&task_size),
        "task_struct {task_size}"
    );
    assert!((512..=4096).contains(&mm_size), "mm_struct {mm_size}");

    let comm = types.field("task_struct", "comm").unwrap();
    assert_eq!(
        comm.ty,
        FieldType::Array {
            elem_size: 1,
            count: 16
        }
    );
    assert_eq!((o.comm, o.comm_len), (comm.offset, 16));
    let tasks = types.field("task_struct", "tasks").unwrap();
    assert_eq!(
        tasks.ty,
        FieldType::Struct {
            name: Some("list_head".into()),
            size: 16
        }
    );
    // tgid follows pid (both pid_t), mm is followed by active_mm, as in every 6.x kernel.
    assert_eq!(o.tgid, o.pid + 4);
    assert_eq!(o.active_mm, o.mm + 8);
    for (name, off, size) in [
        ("tasks", o.tasks, 16),
        ("pid", o.pid, 4),
        ("tgid", o.tgid, 4),
        ("comm", o.comm, 16),
        ("flags", o.flags, 4),
        ("mm", o.mm, 8),
        ("active_mm", o.active_mm, 8),
    ] {
        assert!(
            off + size <= task_size,
            "{name} at {off} beyond {task_size}"
        );
        assert_eq!(off % size.min(8), 0, "{name} at {off} misaligned");
    }
    // pgd lives in mm_struct's anonymous struct: found, inside, pointer-aligned.
    assert!(
        o.mm_pgd + 8 <= mm_size && o.mm_pgd.is_multiple_of(8),
        "pgd at {}",
        o.mm_pgd
    );
    // flags comes early (right after the stack pointer and usage count).
    assert!(o.flags < 64, "flags at {}", o.flags);
    eprintln!("{o:?} task_struct {task_size} mm_struct {mm_size}");
}

/// The offsets read the statically initialised `init_task` and `init_mm` of the same
/// kernel right: `swapper` (INIT_TASK_COMM), a kernel thread without mm on `init_mm`,
/// its `tasks` list empty (pointing at itself), `init_mm.pgd = swapper_pg_dir` (which
/// x86_64 names `init_top_pgt`).
#[test]
fn real_kernel_init_task_reads_back_through_the_offsets() {
    let data = vmlinux_bytes();
    let o = offsets(&data);
    let map = system_map();
    let mem = ImageMemory::new(data);
    let sym = |n: &str| {
        *map.get(n)
            .unwrap_or_else(|| panic!("System.map has no {n}"))
    };
    let syms = KernelSymbols {
        init_task: sym("init_task"),
        init_mm: Some(sym("init_mm")),
        page_offset_base: Some(sym("page_offset_base")),
        phys_base: Some(sym("phys_base")),
    };
    let walked = tasks::walk_tasks(&mem, syms.init_task, &o, tasks::MAX_TASKS).unwrap();
    assert_eq!(walked.len(), 1, "{walked:?}");
    let t = &walked[0];
    assert_eq!((t.pid, t.tgid, t.comm.as_str()), (0, 0, "swapper"));
    assert_eq!((t.mm, t.active_mm), (0, sym("init_mm")));
    assert_eq!(t.flags & PF_KTHREAD, PF_KTHREAD, "flags {:#x}", t.flags);
    assert_eq!(
        mem.read_u64(sym("init_mm") + o.mm_pgd).unwrap(),
        sym("init_top_pgt")
    );
    // The whole CR3 map of a kernel that has not started anything: only the kernel key,
    // __pa_symbol(init_top_pgt) with the link-time phys_base (0) and direct map base.
    let layout = Layout::read(&mem, &syms).unwrap();
    assert_eq!(layout.phys_base, 0);
    let cr3 = tasks::cr3_map(&mem, &syms, &o, &layout, tasks::MAX_TASKS).unwrap();
    assert_eq!(cr3.kernel, sym("init_top_pgt") - START_KERNEL_MAP);
    assert_eq!((cr3.tasks, cr3.kernel_threads, cr3.user.len()), (1, 1, 0));
}

/// The one-pass scanner `guest-kit watch` uses gives exactly the offsets of the
/// `btfparse` reader on the real kernel's BTF, in a fraction of its time.
#[test]
fn real_kernel_btf_scan_agrees_with_btfparse() {
    let btf = btf_section(&vmlinux_bytes());
    let t0 = std::time::Instant::now();
    let full = KernelTypes::parse(&btf).unwrap().task_offsets().unwrap();
    let t1 = std::time::Instant::now();
    let scan = guest_kit::kernel::btf_scan::BtfScan::new(&btf).unwrap();
    let offsets = scan.task_offsets().unwrap();
    let t2 = std::time::Instant::now();
    assert_eq!(offsets, full);
    assert!(scan.type_count() > 50_000, "{} types", scan.type_count());
    eprintln!(
        "btfparse {:.1} ms, btf_scan {:.1} ms ({} bytes of BTF, {} types)",
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        btf.len(),
        scan.type_count()
    );
}

/// The kallsyms scanner and the symbol picker against the real kernel's System.map, which
/// has `/proc/kallsyms`' format (at link-time addresses; a guest's kallsyms differs only by
/// the KASLR offset).
#[test]
fn real_system_map_read_as_kallsyms_names_the_walks_symbols() {
    let path = kernel_file(&["System.map"], |p| {
        std::fs::metadata(p).is_ok_and(|m| m.len() > 1_000_000)
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let wanted = [
        "_text",
        "init_task",
        "init_mm",
        "page_offset_base",
        "phys_base",
    ];
    let found = guest_kit::watch::scan_kallsyms(&text, &wanted);
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    for w in wanted {
        assert!(names.contains(&w), "{w} not found in {}", path.display());
    }
    let syms = KernelSymbols::from_kallsyms(&found).unwrap();
    // All in the kernel image's mapping; the variables in its data, past _text.
    let text_addr = found.iter().find(|s| s.name == "_text").unwrap().addr;
    assert_eq!(text_addr, START_KERNEL_MAP + 0x100_0000);
    assert!(syms.init_task > text_addr);
    assert!(syms.init_mm.is_some_and(|a| a > text_addr));
    assert!(syms.page_offset_base.is_some_and(|a| a > text_addr));
    assert!(syms.phys_base.is_some_and(|a| a > text_addr));
}
