//! The kernel's process list, read from kernel memory: CR3 key of every process.
//!
//! `init_task.tasks` heads a circular list of every thread-group leader
//! (`for_each_process`). For each one this reads `pid`, `tgid`, `comm`, `flags`, `mm` and
//! `active_mm`; a user process's key is `__pa(mm->pgd)`, which equals [`cr3_key`] of
//! every CR3 value the process runs with (KPTI user/kernel halves and PCIDs included).
//! Kernel threads (`PF_KTHREAD`, `mm == NULL`) run on whatever page tables were loaded:
//! `init_mm`'s (`swapper_pg_dir`) when nothing else was, so they are counted under the
//! key of `init_mm.pgd`.
//!
//! The list is read without the kernel's locks, so it may change under the walk: every
//! pointer is checked (kernel half, aligned, `next->prev` back to where it came from),
//! a node seen twice is a cycle, and the walk stops after a bounded number of tasks.
//! Such an error is worth one retry ([`WalkError::is_transient`]).
//!
//! [`cr3_key`]: crate::bundle::cr3_key

use std::collections::{BTreeMap, HashSet};

use super::kcore::{KernelMemory, MemoryError};
use crate::bundle::KSym;

/// Default bound on the walk: far more tasks than `pid_max` allows by default (4M is the
/// hard limit, 32768 or 4194304 the usual settings; few systems run near a million).
pub const MAX_TASKS: usize = 1_000_000;

/// `task_struct->flags` bit of kernel threads (include/linux/sched.h).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// `__START_KERNEL_map`: where x86_64 maps the kernel image (`__pa_symbol` is relative to it).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// The direct-map base without KASLR memory randomisation (4-level paging).
pub const DEFAULT_PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;

/// Lowest kernel-half address with 5-level paging (LA57, which Debian's kernel uses when
/// the CPU has it); with 4-level paging kernel pointers start at 0xffff_8000_0000_0000.
const KERNEL_HALF: u64 = 0xff00_0000_0000_0000;

/// The kernel image mapping is at most this big (`KERNEL_IMAGE_SIZE` with KASLR).
const KERNEL_IMAGE_SIZE: u64 = 1 << 30;

/// Physical addresses have at most 52 bits.
const MAX_PHYS: u64 = 1 << 52;

/// Byte offsets (and the comm length) of the fields the walk reads, as BTF gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.tasks` (a `struct list_head`).
    pub tasks: u64,
    /// `task_struct.pid` (`pid_t`).
    pub pid: u64,
    /// `task_struct.tgid` (`pid_t`).
    pub tgid: u64,
    /// `task_struct.comm` (`char[TASK_COMM_LEN]`).
    pub comm: u64,
    /// Length of `comm` (16).
    pub comm_len: u64,
    /// `task_struct.flags` (`unsigned int`).
    pub flags: u64,
    /// `task_struct.mm` (`struct mm_struct *`).
    pub mm: u64,
    /// `task_struct.active_mm` (`struct mm_struct *`).
    pub active_mm: u64,
    /// `mm_struct.pgd` (`pgd_t *`), inside an anonymous struct in 6.x.
    pub mm_pgd: u64,
}

/// Kernel symbols the walk needs, from `/proc/kallsyms` (as root: real addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSymbols {
    /// `init_task`: the head of the process list (pid 0).
    pub init_task: u64,
    /// `init_mm`: the kernel's own address space.
    pub init_mm: Option<u64>,
    /// The variable `page_offset_base` (only with `CONFIG_RANDOMIZE_MEMORY`).
    pub page_offset_base: Option<u64>,
    /// The variable `phys_base`: `__pa_symbol(x) = x - __START_KERNEL_map + phys_base`.
    pub phys_base: Option<u64>,
}

impl KernelSymbols {
    /// Picks the symbols out of parsed kallsyms lines (kernel image only, not modules).
    pub fn from_kallsyms(syms: &[KSym]) -> Result<Self, WalkError> {
        let find = |name: &str| {
            syms.iter()
                .find(|s| s.module.is_none() && s.name == name)
                .map(|s| s.addr)
        };
        let init_task = match find("init_task") {
            None => return Err(WalkError::MissingSymbol("init_task")),
            Some(0) => return Err(WalkError::ZeroAddresses),
            Some(a) => a,
        };
        Ok(KernelSymbols {
            init_task,
            init_mm: find("init_mm"),
            page_offset_base: find("page_offset_base"),
            phys_base: find("phys_base"),
        })
    }
}

/// Virtual -> physical for the two places page-table roots live: the direct map
/// (`__pa`) and the kernel image (`__pa_symbol`, for `swapper_pg_dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Start of the direct map of all physical memory (`PAGE_OFFSET`).
    pub page_offset_base: u64,
    /// Physical address of `__START_KERNEL_map` (wrapping: it may be "negative").
    pub phys_base: u64,
}

impl Layout {
    /// Reads `page_offset_base` and `phys_base` from kernel memory; without the symbols,
    /// the fixed values of a kernel built without memory randomisation / relocation.
    pub fn read(mem: &impl KernelMemory, syms: &KernelSymbols) -> Result<Self, WalkError> {
        let var = |addr: Option<u64>, what: &'static str, default: u64| match addr {
            None => Ok(default),
            Some(a) => mem.read_u64(a).map_err(|source| WalkError::Read {
                what,
                addr: a,
                source,
            }),
        };
        Ok(Layout {
            page_offset_base: var(
                syms.page_offset_base,
                "page_offset_base",
                DEFAULT_PAGE_OFFSET,
            )?,
            phys_base: var(syms.phys_base, "phys_base", 0)?,
        })
    }

    /// The physical address of a direct-map or kernel-image address.
    pub fn pa(&self, vaddr: u64) -> Option<u64> {
        if vaddr >= START_KERNEL_MAP {
            let off = vaddr - START_KERNEL_MAP;
            (off < KERNEL_IMAGE_SIZE).then(|| off.wrapping_add(self.phys_base))
        } else {
            let off = vaddr.checked_sub(self.page_offset_base)?;
            (off < MAX_PHYS).then_some(off)
        }
    }
}

/// One task of the list, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Address of the `task_struct`.
    pub addr: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub flags: u32,
    /// `mm`, 0 for kernel threads.
    pub mm: u64,
    /// `active_mm`: the address space in use while running (0 when not running, for a
    /// kernel thread).
    pub active_mm: u64,
}

impl Task {
    /// A kernel thread (`PF_KTHREAD`).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Why the walk failed.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("no `{0}` in kallsyms")]
    MissingSymbol(&'static str),
    #[error("kallsyms shows address 0 for init_task (not root, or kernel.kptr_restrict=2)")]
    ZeroAddresses,
    #[error("cannot read {what} at {addr:#x}: {source}")]
    Read {
        what: &'static str,
        addr: u64,
        source: MemoryError,
    },
    #[error(
        "tasks list: link {value:#x} after task {after:#x} (pid {after_pid}, #{count}) is not a kernel pointer"
    )]
    BadPointer {
        value: u64,
        after: u64,
        after_pid: u32,
        count: usize,
    },
    #[error(
        "tasks list: node {node:#x} comes back after {count} tasks without reaching init_task (a cycle)"
    )]
    Cycle { node: u64, count: usize },
    #[error(
        "tasks list: node {node:#x} links back to {back:#x}, not to {expected:#x} (list changed or corrupted)"
    )]
    BrokenLink { node: u64, back: u64, expected: u64 },
    #[error("tasks list: more than {limit} tasks without reaching init_task again")]
    TooManyTasks { limit: usize },
    #[error("task {addr:#x}: pid {pid} or tgid {tgid} is negative")]
    BadPid { addr: u64, pid: i32, tgid: i32 },
    #[error("init_mm.pgd {pgd:#x} is neither in the direct map nor in the kernel image")]
    KernelPgd { pgd: u64 },
}

impl WalkError {
    /// True for errors a concurrent change of the list can cause: worth a second walk.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            WalkError::Read { .. }
                | WalkError::BadPointer { .. }
                | WalkError::Cycle { .. }
                | WalkError::BrokenLink { .. }
                | WalkError::BadPid { .. }
        )
    }
}

fn read_task(mem: &impl KernelMemory, addr: u64, o: &TaskOffsets) -> Result<Task, WalkError> {
    let at = |off: u64| addr.wrapping_add(off);
    let read = |what, off: u64, buf: &mut [u8]| {
        mem.read(at(off), buf).map_err(|source| WalkError::Read {
            what,
            addr: at(off),
            source,
        })
    };
    let mut b4 = [0; 4];
    let mut b8 = [0; 8];
    let mut i32_field = |what, off| -> Result<i32, WalkError> {
        read(what, off, &mut b4)?;
        Ok(i32::from_le_bytes(b4))
    };
    let pid = i32_field("task_struct.pid", o.pid)?;
    let tgid = i32_field("task_struct.tgid", o.tgid)?;
    let flags = i32_field("task_struct.flags", o.flags)? as u32;
    let mut u64_field = |what, off| -> Result<u64, WalkError> {
        read(what, off, &mut b8)?;
        Ok(u64::from_le_bytes(b8))
    };
    let mm = u64_field("task_struct.mm", o.mm)?;
    let active_mm = u64_field("task_struct.active_mm", o.active_mm)?;
    let mut comm = vec![0; o.comm_len as usize];
    read("task_struct.comm", o.comm, &mut comm)?;
    let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    let (Ok(pid_u), Ok(tgid_u)) = (u32::try_from(pid), u32::try_from(tgid)) else {
        return Err(WalkError::BadPid { addr, pid, tgid });
    };
    Ok(Task {
        addr,
        pid: pid_u,
        tgid: tgid_u,
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        flags,
        mm,
        active_mm,
    })
}

fn kernel_pointer(p: u64) -> bool {
    p >= KERNEL_HALF && p.is_multiple_of(8)
}

/// Walks the circular `tasks` list from `init_task` (which comes first in the result)
/// until it is back at `init_task`, reading at most `limit` tasks.
pub fn walk_tasks(
    mem: &impl KernelMemory,
    init_task: u64,
    o: &TaskOffsets,
    limit: usize,
) -> Result<Vec<Task>, WalkError> {
    let head = init_task.wrapping_add(o.tasks);
    let next_of = |node: u64| {
        mem.read_u64(node).map_err(|source| WalkError::Read {
            what: "tasks.next",
            addr: node,
            source,
        })
    };
    let mut tasks = vec![read_task(mem, init_task, o)?];
    let mut seen = HashSet::new();
    let mut prev = head;
    let mut node = next_of(head)?;
    while node != head {
        if tasks.len() >= limit {
            return Err(WalkError::TooManyTasks { limit });
        }
        let last = &tasks[tasks.len() - 1];
        if !kernel_pointer(node) {
            return Err(WalkError::BadPointer {
                value: node,
                after: last.addr,
                after_pid: last.pid,
                count: tasks.len(),
            });
        }
        if !seen.insert(node) {
            return Err(WalkError::Cycle {
                node,
                count: tasks.len(),
            });
        }
        let back = mem.read_u64(node + 8).map_err(|source| WalkError::Read {
            what: "tasks.prev",
            addr: node + 8,
            source,
        })?;
        if back != prev {
            return Err(WalkError::BrokenLink {
                node,
                back,
                expected: prev,
            });
        }
        tasks.push(read_task(mem, node - o.tasks, o)?);
        prev = node;
        node = next_of(node)?;
    }
    Ok(tasks)
}

/// A user process of the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProcess {
    pub comm: String,
    /// `__pa(mm->pgd)`: the CR3 key.
    pub cr3: u64,
}

/// What the walk found: CR3 keys by thread-group id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cr3Map {
    /// User processes by tgid.
    pub user: BTreeMap<u32, UserProcess>,
    /// `__pa(init_mm.pgd)`: the key kernel threads (and idle) run under.
    pub kernel: u64,
    /// Kernel threads seen (counted under `kernel`).
    pub kernel_threads: usize,
    /// Tgids of user tasks without an mm: past `exit_mm()` (exiting, zombies). They run
    /// no user code any more and have no key.
    pub without_mm: Vec<u32>,
    /// Tasks seen in all.
    pub tasks: usize,
    /// One line each: processes left out, shared address spaces, disagreements.
    pub notes: Vec<String>,
}

/// Walks the list and turns each process's `mm->pgd` into its CR3 key.
pub fn cr3_map(
    mem: &impl KernelMemory,
    syms: &KernelSymbols,
    o: &TaskOffsets,
    layout: &Layout,
    limit: usize,
) -> Result<Cr3Map, WalkError> {
    let tasks = walk_tasks(mem, syms.init_task, o, limit)?;
    let pgd_of = |mm: u64, what| {
        mem.read_u64(mm.wrapping_add(o.mm_pgd))
            .map_err(|source| WalkError::Read {
                what,
                addr: mm.wrapping_add(o.mm_pgd),
                source,
            })
    };
    // init_mm, or else init_task's active_mm (the idle task of CPU 0 before any user
    // process ran; later possibly a borrowed user mm, hence the symbol comes first).
    let kernel_mm = syms.init_mm.unwrap_or(tasks[0].active_mm);
    let kernel_pgd = pgd_of(kernel_mm, "init_mm.pgd")?;
    let kernel = layout
        .pa(kernel_pgd)
        .ok_or(WalkError::KernelPgd { pgd: kernel_pgd })?;
    let mut map = Cr3Map {
        kernel,
        tasks: tasks.len(),
        ..Cr3Map::default()
    };
    // kcore knows the physical address of the kernel image and the direct map: check
    // the translation once for each (the kernel's key, the first process's key).
    let check_phys = |vaddr: u64, pa: u64, notes: &mut Vec<String>| {
        if let Some(k) = mem.phys_of(vaddr)
            && k != pa
        {
            notes.push(format!(
                "kcore places {vaddr:#x} at physical {k:#x}, the kernel's layout at {pa:#x}: keys may be wrong"
            ));
        }
    };
    check_phys(kernel_pgd, kernel, &mut map.notes);
    let mut user_checked = false;
    let mut bad = Vec::new();
    let mut owner: BTreeMap<u64, u32> = BTreeMap::new();
    for t in &tasks {
        if t.is_kernel_thread() {
            map.kernel_threads += 1;
            continue;
        }
        if t.mm == 0 {
            map.without_mm.push(t.tgid);
            continue;
        }
        let pgd = match pgd_of(t.mm, "mm_struct.pgd") {
            Ok(p) => p,
            Err(e) => {
                bad.push(format!("pid {} ({e})", t.tgid));
                continue;
            }
        };
        let Some(cr3) = layout.pa(pgd).filter(|_| pgd.is_multiple_of(4096)) else {
            bad.push(format!(
                "pid {} (pgd {pgd:#x} is no page in the direct map)",
                t.tgid
            ));
            continue;
        };
        if !user_checked {
            check_phys(pgd, cr3, &mut map.notes);
            user_checked = true;
        }
        if let Some(&first) = owner.get(&cr3) {
            map.notes.push(format!(
                "pids {first} and {} share one address space (CLONE_VM): one key for both",
                t.tgid
            ));
        } else {
            owner.insert(cr3, t.tgid);
        }
        map.user.insert(
            t.tgid,
            UserProcess {
                comm: t.comm.clone(),
                cr3,
            },
        );
    }
    if let Some(first) = bad.first() {
        map.notes.push(format!(
            "{} process(es) without a readable page-table root, first: {first}",
            bad.len()
        ));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::kcore::Kcore;
    use crate::kernel::synth::{self, FakeKernel, FakeTask, OFFSETS};

    fn symbols() -> KernelSymbols {
        KernelSymbols {
            init_task: synth::INIT_TASK,
            init_mm: Some(synth::INIT_MM),
            page_offset_base: Some(synth::PAGE_OFFSET_BASE_VAR),
            phys_base: Some(synth::PHYS_BASE_VAR),
        }
    }

    /// init_task -> init (pid 1) -> kthreadd (kernel thread running on init's mm, as a
    /// lazy-TLB kernel thread does) -> sh (pid 42) -> back to init_task.
    fn kernel() -> (FakeKernel, u64, u64) {
        let mut k = FakeKernel::new();
        let init_mm = k.add_mm(0x8_0000);
        let sh_mm = k.add_mm(0x8_2000);
        k.add_task(&FakeTask {
            pid: 1,
            comm: "init",
            kthread: false,
            mm: init_mm,
            active_mm: init_mm,
        });
        k.add_task(&FakeTask {
            pid: 2,
            comm: "kthreadd",
            kthread: true,
            mm: 0,
            active_mm: init_mm,
        });
        k.add_task(&FakeTask {
            pid: 42,
            comm: "sh",
            kthread: false,
            mm: sh_mm,
            active_mm: sh_mm,
        });
        (k, init_mm, sh_mm)
    }

    fn walk(k: &FakeKernel) -> Result<Cr3Map, WalkError> {
        let mem = Kcore::parse(k.kcore()).unwrap();
        let layout = Layout::read(&mem, &symbols())?;
        cr3_map(&mem, &symbols(), &OFFSETS, &layout, MAX_TASKS)
    }

    #[test]
    fn walk_reads_every_task_in_list_order() {
        let (k, init_mm, _) = kernel();
        let mem = Kcore::parse(k.kcore()).unwrap();
        let tasks = walk_tasks(&mem, synth::INIT_TASK, &OFFSETS, MAX_TASKS).unwrap();
        let seen: Vec<(u32, &str, bool, u64, u64)> = tasks
            .iter()
            .map(|t| {
                (
                    t.pid,
                    t.comm.as_str(),
                    t.is_kernel_thread(),
                    t.mm,
                    t.active_mm,
                )
            })
            .collect();
        let sh_mm = tasks[3].mm;
        assert_eq!(
            seen,
            [
                (0, "swapper/0", true, 0, synth::INIT_MM),
                (1, "init", false, init_mm, init_mm),
                (2, "kthreadd", true, 0, init_mm),
                (42, "sh", false, sh_mm, sh_mm),
            ]
        );
        assert_eq!(tasks[1].addr, k.tasks[0]);
    }

    #[test]
    fn keys_are_physical_pgds_and_kernel_threads_share_init_mm() {
        let (k, _, _) = kernel();
        let map = walk(&k).unwrap();
        let user: Vec<(u32, &str, u64)> = map
            .user
            .iter()
            .map(|(pid, p)| (*pid, p.comm.as_str(), p.cr3))
            .collect();
        assert_eq!(user, [(1, "init", 0x8_0000), (42, "sh", 0x8_2000)]);
        // __pa_symbol(swapper_pg_dir) = vaddr - __START_KERNEL_map + phys_base.
        assert_eq!(map.kernel, 0x3a00_4000);
        assert_eq!(map.kernel, synth::pa_symbol(synth::SWAPPER_PG_DIR));
        assert_eq!(map.kernel_threads, 2);
        assert_eq!(map.tasks, 4);
        assert_eq!(map.notes, Vec::<String>::new());
    }

    #[test]
    fn layout_translates_both_mappings_and_nothing_else() {
        let l = Layout {
            page_offset_base: synth::PAGE_OFFSET_BASE,
            phys_base: synth::PHYS_BASE,
        };
        assert_eq!(l.pa(synth::PAGE_OFFSET_BASE + 0x8_2000), Some(0x8_2000));
        assert_eq!(l.pa(synth::TEXT), Some(0x3a00_0000));
        assert_eq!(l.pa(synth::PAGE_OFFSET_BASE - 1), None);
        assert_eq!(l.pa(0x7fff_0000_0000), None);
        // A "negative" phys_base (kernel loaded below its link address) wraps.
        let low = Layout {
            phys_base: 0u64.wrapping_sub(0x1000_0000),
            ..l
        };
        assert_eq!(low.pa(synth::TEXT), Some(0x0a00_0000));
        // Without the variables: the fixed layout of a non-randomised kernel.
        let mem = Kcore::parse(FakeKernel::new().kcore()).unwrap();
        let fixed = KernelSymbols {
            page_offset_base: None,
            phys_base: None,
            ..symbols()
        };
        assert_eq!(
            Layout::read(&mem, &fixed).unwrap(),
            Layout {
                page_offset_base: DEFAULT_PAGE_OFFSET,
                phys_base: 0
            }
        );
    }

    #[test]
    fn a_layout_that_disagrees_with_kcore_is_noted() {
        let (mut k, _, _) = kernel();
        // A wrong phys_base and a wrong direct-map base: kcore's p_paddr disagree.
        k.core
            .write_u64(synth::PHYS_BASE_VAR, synth::PHYS_BASE + 0x20_0000);
        k.core.write_u64(
            synth::PAGE_OFFSET_BASE_VAR,
            synth::PAGE_OFFSET_BASE - 0x1000,
        );
        let map = walk(&k).unwrap();
        assert_eq!(
            map.notes,
            [
                format!(
                    "kcore places {:#x} at physical 0x3a004000, the kernel's layout at 0x3a204000: keys may be wrong",
                    synth::SWAPPER_PG_DIR
                ),
                format!(
                    "kcore places {:#x} at physical 0x80000, the kernel's layout at 0x81000: keys may be wrong",
                    synth::PAGE_OFFSET_BASE + 0x8_0000
                ),
            ]
        );
    }

    #[test]
    fn a_cycle_that_misses_init_task_is_an_error_not_a_hang() {
        let (mut k, _, _) = kernel();
        // sh -> kthreadd instead of sh -> init_task (the node seen twice is reported
        // before its stale prev link is looked at).
        let (kthreadd, sh) = (k.tasks[1] + OFFSETS.tasks, k.tasks[2] + OFFSETS.tasks);
        k.core.write_u64(sh, kthreadd);
        let mem = Kcore::parse(k.kcore()).unwrap();
        let err = walk_tasks(&mem, synth::INIT_TASK, &OFFSETS, MAX_TASKS).unwrap_err();
        assert!(
            matches!(err, WalkError::Cycle { node, count: 4 } if node == kthreadd),
            "{err}"
        );
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            format!(
                "tasks list: node {kthreadd:#x} comes back after 4 tasks without reaching init_task (a cycle)"
            )
        );
    }

    #[test]
    fn bad_pointers_and_broken_links_are_errors() {
        // A poisoned next pointer (list_del's LIST_POISON1).
        let (mut k, _, _) = kernel();
        let init = k.tasks[0];
        k.core
            .write_u64(init + OFFSETS.tasks, 0xdead_0000_0000_0100);
        let err = walk(&k).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "tasks list: link 0xdead000000000100 after task {init:#x} (pid 1, #2) is not a kernel pointer"
            )
        );
        // A kernel pointer to memory kcore does not have.
        let (mut k, _, _) = kernel();
        k.core
            .write_u64(k.tasks[0] + OFFSETS.tasks, 0xffff_c900_0000_0000);
        let err = walk(&k).unwrap_err();
        assert!(
            matches!(
                err,
                WalkError::Read {
                    what: "tasks.prev",
                    ..
                }
            ),
            "{err}"
        );
        // A node whose prev does not point back.
        let (mut k, _, _) = kernel();
        let kthreadd = k.tasks[1] + OFFSETS.tasks;
        k.core.write_u64(kthreadd + 8, kthreadd);
        let err = walk(&k).unwrap_err();
        assert!(matches!(err, WalkError::BrokenLink { .. }), "{err}");
    }

    #[test]
    fn the_walk_is_bounded() {
        let (k, _, _) = kernel();
        let mem = Kcore::parse(k.kcore()).unwrap();
        let err = walk_tasks(&mem, synth::INIT_TASK, &OFFSETS, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tasks list: more than 3 tasks without reaching init_task again"
        );
        assert!(walk_tasks(&mem, synth::INIT_TASK, &OFFSETS, 4).is_ok());
    }

    #[test]
    fn odd_processes_become_notes_not_failures() {
        let (mut k, init_mm, _) = kernel();
        // A process past exit_mm(), one sharing init's mm (vfork), one with a pgd
        // outside the direct map.
        k.add_task(&FakeTask {
            pid: 50,
            comm: "dying",
            kthread: false,
            mm: 0,
            active_mm: 0,
        });
        k.add_task(&FakeTask {
            pid: 51,
            comm: "vforked",
            kthread: false,
            mm: init_mm,
            active_mm: init_mm,
        });
        let bad_mm = k.add_mm(0);
        k.core.write_u64(bad_mm + OFFSETS.mm_pgd, 0x1234);
        k.add_task(&FakeTask {
            pid: 52,
            comm: "odd",
            kthread: false,
            mm: bad_mm,
            active_mm: bad_mm,
        });
        let map = walk(&k).unwrap();
        assert_eq!(map.user.keys().copied().collect::<Vec<_>>(), [1, 42, 51]);
        assert_eq!(map.user[&51].cr3, 0x8_0000);
        assert_eq!(map.without_mm, [50]);
        assert_eq!(
            map.notes,
            [
                "pids 1 and 51 share one address space (CLONE_VM): one key for both",
                "1 process(es) without a readable page-table root, first: pid 52 (pgd 0x1234 is no page in the direct map)",
            ]
        );
    }

    #[test]
    fn kallsyms_names_the_symbols_or_says_what_is_missing() {
        let syms: Vec<KSym> = FakeKernel::kallsyms()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                KSym {
                    addr: u64::from_str_radix(f[0], 16).unwrap(),
                    kind: f[1].chars().next().unwrap(),
                    name: f[2].to_string(),
                    module: None,
                }
            })
            .collect();
        assert_eq!(KernelSymbols::from_kallsyms(&syms).unwrap(), symbols());
        let zero: Vec<KSym> = syms
            .iter()
            .map(|s| KSym {
                addr: 0,
                ..s.clone()
            })
            .collect();
        assert_eq!(
            KernelSymbols::from_kallsyms(&zero).unwrap_err().to_string(),
            "kallsyms shows address 0 for init_task (not root, or kernel.kptr_restrict=2)"
        );
        assert_eq!(
            KernelSymbols::from_kallsyms(&[]).unwrap_err().to_string(),
            "no `init_task` in kallsyms"
        );
    }
}
