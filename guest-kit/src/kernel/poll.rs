//! The cheap repeated walk of `guest-kit watch`: the user processes of the task list
//! and their CR3 keys, with as few reads of `/proc/kcore` as possible.
//!
//! Each read of `/proc/kcore` is a system call that costs thousands of instructions in
//! the kernel (lock, bounds, a bounce buffer), so a walk of the whole list reads, per
//! task, one span holding `tasks.next`, `tasks.prev` and `mm` (they are 96 bytes apart
//! in 6.1), and nothing more when `mm` is 0 (kernel threads, exiting tasks). For a task
//! with an `mm` it reads one span holding `pid`, `tgid` and `comm` (576 bytes in 6.1:
//! `comm` every time, since `exec` renames the task only after switching to the new
//! mm); only a task not seen in the previous walk with the same address, `mm` and
//! `pid` costs two more reads (`flags`, `mm->pgd`). Slab allocators hand freed `task_struct`s and `mm_struct`s out again
//! last-in first-out, so the `pid` is part of the key: a new process in the memory of an
//! old one is read afresh.
//!
//! Every link is checked as in [`super::tasks::walk_tasks`] (kernel half, aligned,
//! `next->prev` back to where it came from, no node twice, a bounded count), and each
//! process read is stamped with the TSC, the host's own under the hypervisor.

use std::collections::{HashMap, HashSet};

use super::kcore::KernelMemory;
use super::tasks::{KernelSymbols, Layout, PF_KTHREAD, TaskOffsets, WalkError};

/// A user process as one walk saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Thread-group id (the process's PID).
    pub tgid: u32,
    /// `comm` of the group leader.
    pub comm: String,
    /// `__pa(mm->pgd)`: the CR3 key.
    pub cr3: u64,
    /// The TSC when its fields were read.
    pub tsc: u64,
}

/// Counters of one walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Tasks on the list (init_task included).
    pub tasks: usize,
    /// Reads of kernel memory.
    pub reads: usize,
}

#[derive(Debug, Clone)]
struct Known {
    /// The CR3 key; `None`: a kernel thread borrowing a user mm (`kthread_use_mm`),
    /// skipped.
    user: Option<u64>,
}

/// Walks the task list again and again.
#[derive(Debug)]
pub struct Poller {
    offsets: TaskOffsets,
    layout: Layout,
    init_task: u64,
    /// Bytes of `task_struct` read for every task: `[span_start, span_start + len)`.
    span_start: u64,
    span_len: usize,
    /// Bytes read for every task with an mm (`pid`, `tgid`, `comm`), likewise.
    ids_start: u64,
    ids_len: usize,
    /// Processes of the previous walk by (task, mm, pid).
    known: HashMap<(u64, u64, u32), Known>,
    seen: HashSet<u64>,
    limit: usize,
}

/// The most bytes read in one go for a task; a layout that spreads `tasks` and `mm`
/// further apart is read field by field.
const MAX_SPAN: u64 = 1024;

impl Poller {
    /// A poller for a kernel with these offsets, symbols and layout.
    pub fn new(offsets: TaskOffsets, syms: &KernelSymbols, layout: Layout, limit: usize) -> Self {
        let start = offsets.tasks.min(offsets.mm);
        let end = (offsets.tasks + 16).max(offsets.mm + 8);
        let (span_start, span_len) = if end - start <= MAX_SPAN {
            (start, (end - start) as usize)
        } else {
            (0, 0)
        };
        let start = offsets.pid.min(offsets.tgid).min(offsets.comm);
        let end = (offsets.pid + 4)
            .max(offsets.tgid + 4)
            .max(offsets.comm + offsets.comm_len);
        let (ids_start, ids_len) = if end - start <= MAX_SPAN {
            (start, (end - start) as usize)
        } else {
            (0, 0)
        };
        Poller {
            offsets,
            layout,
            init_task: syms.init_task,
            span_start,
            span_len,
            ids_start,
            ids_len,
            known: HashMap::new(),
            seen: HashSet::new(),
            limit,
        }
    }

    /// `tasks.next`, `tasks.prev` and `mm` of the task at `addr`.
    fn links(
        &self,
        mem: &impl KernelMemory,
        addr: u64,
        buf: &mut Vec<u8>,
        stats: &mut WalkStats,
    ) -> Result<(u64, u64, u64), WalkError> {
        let o = &self.offsets;
        let read_err = |what, at| {
            move |source| WalkError::Read {
                what,
                addr: at,
                source,
            }
        };
        if self.span_len > 0 {
            let at = addr.wrapping_add(self.span_start);
            buf.resize(self.span_len, 0);
            stats.reads += 1;
            mem.read(at, buf)
                .map_err(read_err("task_struct.tasks", at))?;
            let word = |off: u64| {
                let i = (off - self.span_start) as usize;
                let mut w = [0; 8];
                w.copy_from_slice(&buf[i..i + 8]);
                u64::from_le_bytes(w)
            };
            Ok((word(o.tasks), word(o.tasks + 8), word(o.mm)))
        } else {
            let mut u = |what, off: u64| {
                let at = addr.wrapping_add(off);
                stats.reads += 1;
                mem.read_u64(at).map_err(read_err(what, at))
            };
            Ok((
                u("tasks.next", o.tasks)?,
                u("tasks.prev", o.tasks + 8)?,
                u("task_struct.mm", o.mm)?,
            ))
        }
    }

    /// `pid`, `tgid` and `comm` of the task at `addr`: read in every walk, since `exec`
    /// sets `comm` only after it switched to the new mm.
    fn ids(
        &self,
        mem: &impl KernelMemory,
        addr: u64,
        buf: &mut Vec<u8>,
        stats: &mut WalkStats,
    ) -> Result<(i32, i32, String), WalkError> {
        let o = &self.offsets;
        let mut read = |what, off: u64, len: usize, buf: &mut Vec<u8>| {
            let at = addr.wrapping_add(off);
            buf.resize(len, 0);
            stats.reads += 1;
            mem.read(at, buf).map_err(|source| WalkError::Read {
                what,
                addr: at,
                source,
            })
        };
        let int = |b: &[u8], i: usize| i32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let text = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let comm_len = o.comm_len as usize;
        if self.ids_len > 0 {
            read("task_struct.pid", self.ids_start, self.ids_len, buf)?;
            let at = |off: u64| (off - self.ids_start) as usize;
            let comm = at(o.comm);
            Ok((
                int(buf, at(o.pid)),
                int(buf, at(o.tgid)),
                text(&buf[comm..comm + comm_len]),
            ))
        } else {
            read("task_struct.pid", o.pid, 4, buf)?;
            let pid = int(buf, 0);
            read("task_struct.tgid", o.tgid, 4, buf)?;
            let tgid = int(buf, 0);
            read("task_struct.comm", o.comm, comm_len, buf)?;
            Ok((pid, tgid, text(buf)))
        }
    }

    /// One walk: the user processes (tgid, comm, key) in list order.
    pub fn walk(
        &mut self,
        mem: &impl KernelMemory,
        tsc: impl Fn() -> u64,
    ) -> Result<(Vec<Sighting>, WalkStats), WalkError> {
        let o = self.offsets;
        let mut stats = WalkStats::default();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut known = HashMap::with_capacity(self.known.len() + 4);
        self.seen.clear();
        let head = self.init_task.wrapping_add(o.tasks);
        let (mut node, _, _) = self.links(mem, self.init_task, &mut buf, &mut stats)?;
        let mut prev = head;
        let (mut last_addr, mut last_pid) = (self.init_task, 0);
        stats.tasks = 1;
        while node != head {
            if stats.tasks >= self.limit {
                return Err(WalkError::TooManyTasks { limit: self.limit });
            }
            if node < 0xff00_0000_0000_0000 || !node.is_multiple_of(8) {
                return Err(WalkError::BadPointer {
                    value: node,
                    after: last_addr,
                    after_pid: last_pid,
                    count: stats.tasks,
                });
            }
            if !self.seen.insert(node) {
                return Err(WalkError::Cycle {
                    node,
                    count: stats.tasks,
                });
            }
            let task = node.wrapping_sub(o.tasks);
            let (next, back, mm) = self.links(mem, task, &mut buf, &mut stats)?;
            if back != prev {
                return Err(WalkError::BrokenLink {
                    node,
                    back,
                    expected: prev,
                });
            }
            stats.tasks += 1;
            last_addr = task;
            if mm != 0 {
                let (pid, tgid, comm) = self.ids(mem, task, &mut buf, &mut stats)?;
                let (Ok(pid), Ok(tgid)) = (u32::try_from(pid), u32::try_from(tgid)) else {
                    return Err(WalkError::BadPid {
                        addr: task,
                        pid,
                        tgid,
                    });
                };
                last_pid = pid;
                let key = (task, mm, pid);
                let entry = match self.known.remove(&key) {
                    Some(k) => Some(k),
                    None => self.read_new(mem, task, mm, &mut stats)?,
                };
                if let Some(entry) = entry {
                    if let Some(cr3) = entry.user {
                        out.push(Sighting {
                            tgid,
                            comm,
                            cr3,
                            tsc: tsc(),
                        });
                    }
                    known.insert(key, entry);
                }
            }
            prev = node;
            node = next;
        }
        self.known = known;
        Ok((out, stats))
    }

    /// `flags` and the key of a task not seen before; `None` when its `pgd`
    /// is no direct-map page (an mm being torn down, or a read that raced): left out of
    /// this walk and read again in the next.
    fn read_new(
        &self,
        mem: &impl KernelMemory,
        task: u64,
        mm: u64,
        stats: &mut WalkStats,
    ) -> Result<Option<Known>, WalkError> {
        let o = &self.offsets;
        let read = |what, at: u64, buf: &mut [u8]| {
            mem.read(at, buf).map_err(|source| WalkError::Read {
                what,
                addr: at,
                source,
            })
        };
        let mut flags = [0u8; 4];
        read("task_struct.flags", task.wrapping_add(o.flags), &mut flags)?;
        stats.reads += 1;
        if u32::from_le_bytes(flags) & PF_KTHREAD != 0 {
            return Ok(Some(Known { user: None }));
        }
        let mut pgd = [0u8; 8];
        read("mm_struct.pgd", mm.wrapping_add(o.mm_pgd), &mut pgd)?;
        stats.reads += 1;
        let pgd = u64::from_le_bytes(pgd);
        let Some(cr3) = self.layout.pa(pgd).filter(|_| pgd.is_multiple_of(4096)) else {
            return Ok(None);
        };
        Ok(Some(Known { user: Some(cr3) }))
    }
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

    fn layout() -> Layout {
        Layout {
            page_offset_base: synth::PAGE_OFFSET_BASE,
            phys_base: synth::PHYS_BASE,
        }
    }

    fn walk(p: &mut Poller, k: &FakeKernel) -> (Vec<(u32, String, u64)>, WalkStats) {
        let mem = Kcore::parse(k.kcore()).unwrap();
        let (s, stats) = p.walk(&mem, || 7).unwrap();
        (
            s.into_iter()
                .map(|s| {
                    assert_eq!(s.tsc, 7);
                    (s.tgid, s.comm, s.cr3)
                })
                .collect(),
            stats,
        )
    }

    #[test]
    fn user_processes_with_keys_and_few_reads_once_known() {
        let mut k = FakeKernel::new();
        let sh = k.add_mm(0x8_2000);
        k.add_task(&FakeTask {
            pid: 1,
            comm: "init",
            kthread: false,
            mm: sh,
            active_mm: sh,
        });
        k.add_task(&FakeTask {
            pid: 2,
            comm: "kthreadd",
            kthread: true,
            mm: 0,
            active_mm: 0,
        });
        let a = k.add_mm(0x8_4000);
        k.add_task(&FakeTask {
            pid: 40,
            comm: "workload",
            kthread: false,
            mm: a,
            active_mm: a,
        });
        // A kernel thread using a user mm (kthread_use_mm) is no process.
        k.add_task(&FakeTask {
            pid: 41,
            comm: "io_uring-sq",
            kthread: true,
            mm: a,
            active_mm: a,
        });
        let mut p = Poller::new(OFFSETS, &symbols(), layout(), 100);
        let (seen, first) = walk(&mut p, &k);
        assert_eq!(
            seen,
            [
                (1, "init".to_string(), 0x8_2000),
                (40, "workload".to_string(), 0x8_4000)
            ]
        );
        // 5 tasks: one span each, pid/tgid/comm of 3 tasks with an mm; flags of those 3,
        // pgd of the 2 user ones.
        assert_eq!(
            first,
            WalkStats {
                tasks: 5,
                reads: 5 + 3 + 3 + 2
            }
        );
        let (again, second) = walk(&mut p, &k);
        assert_eq!(again, seen);
        assert_eq!(
            second,
            WalkStats {
                tasks: 5,
                reads: 5 + 3
            }
        );
        // The workload's task_struct and mm handed to a new process (pid 42): read anew.
        k.core.write_u32(k.tasks[2] + OFFSETS.pid, 42);
        k.core.write_u32(k.tasks[2] + OFFSETS.tgid, 42);
        k.core.write(k.tasks[2] + OFFSETS.comm, b"spinner\0");
        k.core
            .write_u64(a + OFFSETS.mm_pgd, synth::PAGE_OFFSET_BASE + 0x8_6000);
        let (third, _) = walk(&mut p, &k);
        assert_eq!(third[1], (42, "spinner".to_string(), 0x8_6000));
        // exec renames the task after it switched mm: the new name shows in the next walk.
        k.core.write(k.tasks[2] + OFFSETS.comm, b"renamed\0");
        let (fourth, stats) = walk(&mut p, &k);
        assert_eq!(fourth[1], (42, "renamed".to_string(), 0x8_6000));
        assert_eq!(stats.reads, 5 + 3);
    }

    #[test]
    fn broken_lists_are_errors() {
        let mut k = FakeKernel::new();
        for pid in 1..4 {
            let mm = k.add_mm(0x8_0000 + u64::from(pid) * 0x2000);
            k.add_task(&FakeTask {
                pid,
                comm: "x",
                kthread: false,
                mm,
                active_mm: mm,
            });
        }
        let node = k.tasks[2] + OFFSETS.tasks;
        let mut cyc = k.clone();
        cyc.core.write_u64(node, k.tasks[0] + OFFSETS.tasks);
        let mem = Kcore::parse(cyc.kcore()).unwrap();
        let mut p = Poller::new(OFFSETS, &symbols(), layout(), 100);
        let err = p.walk(&mem, || 0).unwrap_err();
        assert!(err.is_transient(), "{err}");
        let mem = Kcore::parse(k.kcore()).unwrap();
        let err = Poller::new(OFFSETS, &symbols(), layout(), 3)
            .walk(&mem, || 0)
            .unwrap_err();
        assert!(matches!(err, WalkError::TooManyTasks { limit: 3 }), "{err}");
        let mut poisoned = k.clone();
        poisoned.core.write_u64(node, 0xdead_0000_0000_0100);
        let mem = Kcore::parse(poisoned.kcore()).unwrap();
        let err = p.walk(&mem, || 0).unwrap_err();
        assert!(matches!(err, WalkError::BadPointer { .. }), "{err}");
        // The layout with tasks and mm far apart reads field by field, same answer.
        let far = TaskOffsets {
            mm: 0x40 + 4096,
            ..OFFSETS
        };
        assert_eq!(Poller::new(far, &symbols(), layout(), 10).span_len, 0);
    }
}
