//! `guest-kit watch`: processes appearing and exiting during a measurement, each CR3 key
//! with a validity interval on the host-time axis.
//!
//! Startup (once): the few kernel symbols the walk needs from `/proc/kallsyms`, the
//! `task_struct`/`mm_struct` offsets from BTF ([`crate::kernel::btf_scan`], one pass),
//! `/proc/kcore` opened, the `kernel` line and `kmap` lines as `collect` writes them.
//! Then every interval it walks the task list ([`crate::kernel::poll::Poller`]) and
//! sleeps (`nanosleep`) until the next one. Each walk is stamped with RDTSC: under the
//! hypervisor the guest's TSC is the host's (offset 0), so the stamps are host TSC.
//!
//! A process is a *line* per (tgid, CR3 key). The bounds ([`Tracker`]):
//!
//! - `from` = the TSC at the **end of the walk before** the one that first saw it. New
//!   tasks are appended at the tail of the task list, so a task missing from a walk was
//!   created after that walk reached the tail, i.e. after that walk ended: nothing of
//!   the process ran before `from`. (The first walk's processes predate the watcher: no
//!   `from`, their lines hold all earlier time.)
//! - `to` = the TSC at the **end of the first walk that no longer saw it** (gone, or
//!   past `exit_mm`, or running another key after `exec`): its address space was no
//!   longer in use by then. Processes alive at the end have no `to`.
//! - So `[from, to)` covers every sample of the process, and is at most one interval
//!   wider than its life at each end. Where that would overlap another owner of the
//!   same key, the bounds are tightened to what was observed: a key reused within one
//!   interval (the old owner gone and the new one there at the same walk) ends the old
//!   line just after its last sighting and starts the new one at its first sighting;
//!   samples between the two are `[unknown process cr3=...]` in the analyzer, since
//!   either could have run then. A key shared by two live processes (`vfork`,
//!   `CLONE_VM`) gives the newcomer the observed bounds only.
//! - A process that starts and exits between two walks is missed (its samples show as
//!   `[unknown process cr3=...]`); one that lives longer than an interval is caught.
//!
//! Maps: `/proc/PID/maps` is read when a line is first seen (exited processes keep
//! that) and again at the end for processes still alive; `map` lines are per PID, so
//! the maps of a PID's lines (before and after an `exec`) are merged.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bundle::{Bundle, KMap, KSym, Kernel, Map, Proc};
use crate::collect::{self, CollectError, KERNEL_COMM, KERNEL_PID, parse_maps_line};
use crate::kernel::btf_scan;
use crate::kernel::kcore::{Kcore, KernelMemory};
use crate::kernel::poll::{Poller, Sighting};
use crate::kernel::tasks::{self, KernelSymbols, Layout};

/// Default polling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// A walk that fails this often in a row (a list changing under it) is given up for
/// this interval.
const WALK_ATTEMPTS: usize = 3;

/// Walks during which the maps of a line without any executable file mapping are read
/// again.
const MAPS_TRIES: u32 = 50;

/// The kallsyms names startup needs (`_etext` ends the `kmap` of the kernel image: its
/// text is what samples hit, and `_end` comes last in the file, after all of `.bss`).
const WANTED: [&str; 6] = [
    "_text",
    "_etext",
    "init_task",
    "init_mm",
    "page_offset_base",
    "phys_base",
];

/// One process line being tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub tgid: u32,
    /// `comm` at the latest sighting.
    pub comm: String,
    pub cr3: u64,
    /// Start of validity (host TSC), `None` before the first walk.
    pub from: Option<u64>,
    /// End of validity (exclusive), `None` while alive.
    pub to: Option<u64>,
    /// TSC of the first and the latest walk that read it.
    pub first_seen: u64,
    pub last_seen: u64,
    /// Observed bounds only (a key shared with another live process).
    pub tight: bool,
    /// Walks that saw it.
    pub sightings: u32,
}

/// The validity intervals, fed one walk at a time (see the module documentation).
#[derive(Debug, Default)]
pub struct Tracker {
    pub lines: Vec<Line>,
    live: HashMap<(u32, u64), usize>,
    last_end: Option<u64>,
    /// Walks fed so far.
    pub polls: usize,
    /// Keys handed from one process to another within one interval.
    pub reuses: usize,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// One walk that started at TSC `start` and ended at `end`; returns the indices of
    /// the lines it opened.
    pub fn poll(&mut self, seen: &[Sighting], start: u64, end: u64) -> Vec<usize> {
        let _ = start;
        let now: HashMap<(u32, u64), &Sighting> =
            seen.iter().map(|s| ((s.tgid, s.cr3), s)).collect();
        // Close what is gone.
        let mut closed_now: HashMap<u64, usize> = HashMap::new();
        let gone: Vec<(u32, u64)> = self
            .live
            .keys()
            .filter(|k| !now.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            let i = self.live.remove(&key).unwrap_or_default();
            let line = &mut self.lines[i];
            line.to = Some(if line.tight { line.last_seen + 1 } else { end });
            closed_now.insert(line.cr3, i);
        }
        let live_keys: HashMap<u64, usize> =
            self.live.iter().map(|(&(_, cr3), &i)| (cr3, i)).collect();
        let mut opened = Vec::new();
        let mut opened_keys: HashMap<u64, usize> = HashMap::new();
        for s in seen {
            if let Some(&i) = self.live.get(&(s.tgid, s.cr3)) {
                let line = &mut self.lines[i];
                line.last_seen = s.tsc;
                line.sightings += 1;
                // `exec` renames the task just after switching to the new mm.
                if line.comm != s.comm {
                    line.comm.clone_from(&s.comm);
                }
                continue;
            }
            let mut line = Line {
                tgid: s.tgid,
                comm: s.comm.clone(),
                cr3: s.cr3,
                from: if self.polls == 0 { None } else { self.last_end },
                to: None,
                first_seen: s.tsc,
                last_seen: s.tsc,
                tight: false,
                sightings: 1,
            };
            if live_keys.contains_key(&s.cr3) || opened_keys.contains_key(&s.cr3) {
                // Shared address space: observed bounds only.
                line.tight = true;
                line.from = Some(s.tsc);
            } else if let Some(&old) = closed_now.get(&s.cr3) {
                // Reused within one interval: either could have run in between.
                let prev = &mut self.lines[old];
                prev.to = Some(prev.last_seen + 1);
                line.from = Some(s.tsc);
                self.reuses += 1;
            }
            let i = self.lines.len();
            self.lines.push(line);
            self.live.insert((s.tgid, s.cr3), i);
            opened_keys.insert(s.cr3, i);
            opened.push(i);
        }
        self.last_end = Some(end);
        self.polls += 1;
        opened
    }

    /// Indices of the lines still alive.
    pub fn alive(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.live.values().copied().collect();
        v.sort_unstable();
        v
    }
}

/// What to watch, and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchOptions {
    /// The proc file system and defaults, as for `collect`.
    pub collect: collect::Options,
    /// Time between the starts of two walks.
    pub interval: Duration,
    /// Stop when this file exists.
    pub until_file: Option<PathBuf>,
    /// Stop after this long.
    pub seconds: Option<f64>,
    /// Created once startup is done and the first walk is in.
    pub ready_file: Option<PathBuf>,
}

/// The bundle and what the watch cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub bundle: Bundle,
    pub warnings: Vec<String>,
    pub stats: WatchStats,
}

/// Cost and counts of one watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchStats {
    /// Walks done, and walks given up (list changing under them 3 times).
    pub polls: usize,
    pub failed_polls: usize,
    /// Seconds of CPU time (this process) at startup and while polling.
    pub startup_cpu: f64,
    pub polling_cpu: f64,
    /// Wall-clock seconds of the polling phase.
    pub polling_wall: f64,
    /// Tasks and kcore reads of the last walk.
    pub tasks: usize,
    pub reads: usize,
    /// Process lines, how many ended during the watch, keys reused within one interval.
    pub lines: usize,
    pub exited: usize,
    pub reuses: usize,
    /// TSC ticks per second, measured over the watch (0 when unknown).
    pub tsc_hz: f64,
}

impl WatchStats {
    /// Polling CPU time as a share of the polling wall time, in percent.
    pub fn polling_share(&self) -> f64 {
        if self.polling_wall > 0.0 {
            self.polling_cpu * 100.0 / self.polling_wall
        } else {
            0.0
        }
    }
}

/// Why the watch could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error("{}: {what}", path.display())]
    Setup { path: PathBuf, what: String },
    #[error("cannot create {}: {source}", path.display())]
    Ready { path: PathBuf, source: io::Error },
}

/// The host TSC (the guest's equals it under the hypervisor: offset 0, not trapped).
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads the time-stamp counter; user mode may (CR4.TSD clear on
        // Linux); no memory is touched.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// CPU time of this process, seconds.
pub fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The core-kernel (not module) symbols of `names` in kallsyms text, first match each.
/// Lines are `ADDR TYPE NAME[\t[MODULE]]`; only lines whose name is wanted are parsed.
pub fn scan_kallsyms(text: &str, names: &[&str]) -> Vec<KSym> {
    let mut found = Vec::new();
    let mut text = text.as_bytes().to_vec();
    text.push(b'\n');
    scan_lines(&text, names, &mut found);
    found
}

/// Adds the wanted symbols of the complete lines of `text` to `found`; returns the
/// length of the complete lines. Bytes, not text: most lines are only looked at for
/// their newline (memchr) and the length of their name.
fn scan_lines(text: &[u8], names: &[&str], found: &mut Vec<KSym>) -> usize {
    let mut pos = 0;
    while let Some(nl) = memchr::memchr(b'\n', &text[pos..]).map(|i| pos + i) {
        let line = &text[pos..nl];
        pos = nl + 1;
        // `ADDR TYPE NAME`: on x86_64 ADDR has 16 digits and NAME starts at 19.
        let name_at = if line.get(16) == Some(&b' ') {
            19
        } else {
            match line.iter().position(|&b| b == b' ') {
                Some(sp) => sp + 3,
                None => continue,
            }
        };
        let Some(name) = line.get(name_at..) else {
            continue;
        };
        // Module symbols (`name\t[mod]`) never equal a wanted name.
        let Some(want) = names.iter().find(|n| n.as_bytes() == name) else {
            continue;
        };
        if found.iter().any(|s: &KSym| s.name == *want) {
            continue;
        }
        let addr = std::str::from_utf8(&line[..name_at - 3])
            .ok()
            .and_then(|a| u64::from_str_radix(a, 16).ok());
        let (Some(addr), kind) = (addr, char::from(line[name_at - 2])) else {
            continue;
        };
        found.push(KSym {
            addr,
            kind,
            name: want.to_string(),
            module: None,
        });
    }
    pos
}

/// [`scan_kallsyms`] of a reader (`/proc/kallsyms`), read in chunks and only as far as
/// it takes to find every name: the kernel formats each line it is asked for, which
/// is most of the startup cost (~3 s of guest CPU under Bochs for the whole file).
pub fn scan_kallsyms_reader(mut r: impl io::Read, names: &[&str]) -> io::Result<Vec<KSym>> {
    let mut found = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 17);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        let done = scan_lines(&buf, names, &mut found);
        buf.drain(..done);
        if found.len() == names.len() {
            return Ok(found);
        }
    }
    buf.push(b'\n');
    scan_lines(&buf, names, &mut found);
    Ok(found)
}

/// Everything startup reads once.
struct Setup {
    kernel: Option<Kernel>,
    kmaps: Vec<KMap>,
    kernel_key: u64,
    kcore: Kcore<fs::File>,
    poller: Poller,
}

fn setup(opts: &collect::Options, warnings: &mut Vec<String>) -> Result<Setup, WatchError> {
    let root = opts.proc_root.as_path();
    let kallsyms = root.join("kallsyms");
    let syms = fs::File::open(&kallsyms)
        .and_then(|f| scan_kallsyms_reader(f, &WANTED))
        .map_err(|source| CollectError::Read {
            path: kallsyms.clone(),
            source,
        })?;
    let find = |n: &str| {
        syms.iter()
            .find(|s| s.name == n)
            .map(|s| s.addr)
            .filter(|a| *a != 0)
    };
    let release = fs::read_to_string(root.join("sys/kernel/osrelease"))
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    let kernel = if release.is_empty() {
        warnings.push("no kernel release (sys/kernel/osrelease): no kernel line".into());
        None
    } else {
        Some(Kernel {
            release,
            text: find("_text"),
        })
    };
    let mut kmaps = Vec::new();
    match (find("_text"), find("_etext")) {
        (Some(start), Some(end)) if start < end => kmaps.push(KMap {
            start,
            end,
            path: "vmlinux".to_string(),
        }),
        _ => warnings.push(format!(
            "{}: no usable _text/_etext symbols: no kmap line for the kernel image",
            kallsyms.display()
        )),
    }
    let modules = root.join("modules");
    if let Ok(text) = fs::read_to_string(&modules) {
        kmaps.extend(collect::parse_modules(&modules, &text, warnings)?);
    }
    let setup_err = |path: &Path, what: String| WatchError::Setup {
        path: path.to_path_buf(),
        what,
    };
    let ksyms =
        KernelSymbols::from_kallsyms(&syms).map_err(|e| setup_err(&kallsyms, e.to_string()))?;
    let btf =
        fs::read(&opts.btf).map_err(|e| setup_err(&opts.btf, format!("cannot read it: {e}")))?;
    let offsets = btf_scan::task_offsets(&btf).map_err(|e| setup_err(&opts.btf, e.to_string()))?;
    drop(btf);
    let kcore_path = opts.kcore.clone().unwrap_or_else(|| root.join("kcore"));
    let kcore = Kcore::open(&kcore_path).map_err(|e| setup_err(&kcore_path, e.to_string()))?;
    let layout = Layout::read(&kcore, &ksyms).map_err(|e| setup_err(&kcore_path, e.to_string()))?;
    let init_mm = ksyms.init_mm.unwrap_or(ksyms.init_task);
    let kernel_key = kcore
        .read_u64(init_mm.wrapping_add(offsets.mm_pgd))
        .ok()
        .filter(|_| ksyms.init_mm.is_some())
        .and_then(|pgd| layout.pa(pgd))
        .ok_or_else(|| setup_err(&kcore_path, "cannot read init_mm.pgd".into()))?;
    let poller = Poller::new(offsets, &ksyms, layout, tasks::MAX_TASKS);
    Ok(Setup {
        kernel,
        kmaps,
        kernel_key,
        kcore,
        poller,
    })
}

/// The executable file mappings of `pid` now (empty when it is gone).
fn read_maps(root: &Path, pid: u32, warnings: &mut Vec<String>) -> Vec<Map> {
    let path = root.join(pid.to_string()).join("maps");
    let Ok(text) = fs::read_to_string(&path) else {
        return Vec::new();
    };
    let mut maps = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_maps_line(line) {
            Ok(Some(m)) => maps.push(Map { pid, ..m }),
            Ok(None) => {}
            Err(what) => warnings.push(format!("{}: line {}: {what}", path.display(), index + 1)),
        }
    }
    maps
}

/// One walk, retried when the list changed under it.
fn walk(
    poller: &mut Poller,
    mem: &impl KernelMemory,
    stats: &mut WatchStats,
    warnings: &mut Vec<String>,
) -> Option<Vec<Sighting>> {
    let mut last = None;
    for _ in 0..WALK_ATTEMPTS {
        match poller.walk(mem, rdtsc) {
            Ok((seen, s)) => {
                stats.tasks = s.tasks;
                stats.reads = s.reads;
                return Some(seen);
            }
            Err(e) if e.is_transient() => last = Some(e.to_string()),
            Err(e) => {
                last = Some(e.to_string());
                break;
            }
        }
    }
    stats.failed_polls += 1;
    if stats.failed_polls == 1 {
        warnings.push(format!(
            "a walk of the task list failed {WALK_ATTEMPTS} times (later failures only counted): {}",
            last.unwrap_or_default()
        ));
    }
    None
}

/// Runs the watch until a stop condition holds (`stop()` is asked after every walk,
/// e.g. for SIGTERM), and returns the bundle.
pub fn watch(opts: &WatchOptions, stop: &dyn Fn() -> bool) -> Result<Watched, WatchError> {
    let cpu0 = cpu_seconds();
    let mut warnings = Vec::new();
    let root = opts.collect.proc_root.clone();
    let mut s = setup(&opts.collect, &mut warnings)?;
    let mut stats = WatchStats {
        startup_cpu: cpu_seconds() - cpu0,
        ..WatchStats::default()
    };
    let mut tracker = Tracker::new();
    let mut maps: HashMap<u32, BTreeSet<(u64, u64, u64, String)>> = HashMap::new();
    let mut add_maps = |pid: u32, list: Vec<Map>| {
        let set = maps.entry(pid).or_default();
        for m in list {
            set.insert((m.start, m.end, m.offset, m.path));
        }
    };
    // Lines whose maps showed an executable file mapping.
    let mut mapped: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let cpu1 = cpu_seconds();
    let (wall1, tsc1) = (Instant::now(), rdtsc());
    let mut next = wall1;
    loop {
        let start = rdtsc();
        if let Some(seen) = walk(&mut s.poller, &s.kcore, &mut stats, &mut warnings) {
            let end = rdtsc();
            tracker.poll(&seen, start, end);
            for i in tracker.alive() {
                let line = &tracker.lines[i];
                let n = line.sightings;
                if n <= 2 || (!mapped.contains(&i) && n <= MAPS_TRIES) {
                    let found = read_maps(&root, line.tgid, &mut warnings);
                    if !found.is_empty() {
                        mapped.insert(i);
                    }
                    add_maps(line.tgid, found);
                }
            }
        }
        stats.polls += 1;
        if stats.polls == 1
            && let Some(ready) = &opts.ready_file
        {
            fs::write(ready, b"").map_err(|source| WatchError::Ready {
                path: ready.clone(),
                source,
            })?;
        }
        let elapsed = wall1.elapsed().as_secs_f64();
        if stop()
            || opts.until_file.as_ref().is_some_and(|f| f.exists())
            || opts.seconds.is_some_and(|limit| elapsed >= limit)
        {
            break;
        }
        next += opts.interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Late (the walk took longer, or the CPU was busy): no catching up.
            next = now;
        }
    }
    stats.polling_cpu = cpu_seconds() - cpu1;
    stats.polling_wall = wall1.elapsed().as_secs_f64();
    let ticks = rdtsc().wrapping_sub(tsc1) as f64;
    stats.tsc_hz = if stats.polling_wall > 0.0 {
        ticks / stats.polling_wall
    } else {
        0.0
    };
    // Processes still alive: their maps now too (libraries mapped after first sight).
    for i in tracker.alive() {
        let pid = tracker.lines[i].tgid;
        add_maps(pid, read_maps(&root, pid, &mut warnings));
    }
    stats.lines = tracker.lines.len();
    stats.exited = tracker.lines.iter().filter(|l| l.to.is_some()).count();
    stats.reuses = tracker.reuses;
    let mut procs: Vec<Proc> = tracker
        .lines
        .iter()
        .map(|l| Proc {
            pid: l.tgid,
            comm: if l.comm.is_empty() {
                "?".into()
            } else {
                l.comm.clone()
            },
            cr3: Some(l.cr3),
            from: l.from,
            to: l.to,
        })
        .collect();
    procs.push(Proc {
        pid: KERNEL_PID,
        comm: KERNEL_COMM.to_string(),
        cr3: Some(s.kernel_key),
        from: None,
        to: None,
    });
    procs.sort_by_key(|p| (p.pid, p.from));
    let mut pids: Vec<u32> = maps.keys().copied().collect();
    pids.sort_unstable();
    let maps = pids
        .into_iter()
        .flat_map(|pid| {
            maps[&pid]
                .iter()
                .map(move |(start, end, offset, path)| Map {
                    pid,
                    start: *start,
                    end: *end,
                    offset: *offset,
                    path: path.clone(),
                    build_id: None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut bundle = Bundle {
        vm: opts.collect.vm.clone(),
        procs,
        maps,
        kmaps: s.kmaps,
        kernel: s.kernel,
        ..Bundle::default()
    };
    // After the measurement: reading the files costs nothing during it.
    crate::elf::annotate(
        &mut bundle,
        &opts.collect.file_root,
        opts.collect.symbols,
        &mut warnings,
    );
    Ok(Watched {
        bundle,
        warnings,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::synth::{self, FakeKernel, FakeTask};

    fn see(tgid: u32, cr3: u64, tsc: u64) -> Sighting {
        Sighting {
            tgid,
            comm: format!("p{tgid}"),
            cr3,
            tsc,
        }
    }

    fn bounds(t: &Tracker) -> Vec<(u32, u64, Option<u64>, Option<u64>)> {
        t.lines
            .iter()
            .map(|l| (l.tgid, l.cr3, l.from, l.to))
            .collect()
    }

    #[test]
    fn intervals_from_the_walk_before_to_the_walk_after() {
        let mut t = Tracker::new();
        // Walks at [100,110], [200,210], [300,310], [400,410], [500,510].
        assert_eq!(t.poll(&[see(1, 0xa000, 105)], 100, 110), [0]);
        assert_eq!(
            t.poll(&[see(1, 0xa000, 205), see(7, 0xb000, 207)], 200, 210),
            [1]
        );
        t.poll(&[see(1, 0xa000, 305), see(7, 0xb000, 307)], 300, 310);
        t.poll(&[see(1, 0xa000, 405)], 400, 410);
        // pid 9 gets pid 7's key one walk after pid 7 was gone: no overlap.
        t.poll(&[see(1, 0xa000, 505), see(9, 0xb000, 506)], 500, 510);
        assert_eq!(
            bounds(&t),
            [
                // Seen by the first walk: it predates the watcher.
                (1, 0xa000, None, None),
                // First seen by the walk ending at 210: born after the walk before (110);
                // gone at the walk ending at 410.
                (7, 0xb000, Some(110), Some(410)),
                (9, 0xb000, Some(410), None),
            ]
        );
        assert_eq!(t.alive(), [0, 2]);
        assert_eq!(t.reuses, 0);
    }

    #[test]
    fn a_key_reused_within_one_interval_gets_observed_bounds() {
        let mut t = Tracker::new();
        t.poll(&[], 0, 10);
        t.poll(&[see(7, 0xb000, 105)], 100, 110);
        // pid 7 exited and pid 9 got its pgd page before the next walk.
        t.poll(&[see(9, 0xb000, 206)], 200, 210);
        assert_eq!(
            bounds(&t),
            [
                (7, 0xb000, Some(10), Some(106)),
                (9, 0xb000, Some(206), None)
            ]
        );
        assert_eq!(t.reuses, 1);
    }

    #[test]
    fn exec_is_a_new_line_and_shared_keys_get_observed_bounds() {
        let mut t = Tracker::new();
        t.poll(&[see(1, 0xa000, 5)], 0, 10);
        // pid 8 forked from 1: a copy of its address space, new key; a vfork child
        // (pid 9) runs on pid 1's mm.
        t.poll(
            &[
                see(1, 0xa000, 105),
                see(8, 0xc000, 106),
                see(9, 0xa000, 107),
            ],
            100,
            110,
        );
        // pid 8 exec'd (new key); pid 9 exec'd too.
        t.poll(
            &[
                see(1, 0xa000, 205),
                see(8, 0xd000, 206),
                see(9, 0xe000, 207),
            ],
            200,
            210,
        );
        assert_eq!(
            bounds(&t),
            [
                (1, 0xa000, None, None),
                (8, 0xc000, Some(10), Some(210)),
                (9, 0xa000, Some(107), Some(108)),
                (8, 0xd000, Some(110), None),
                (9, 0xe000, Some(110), None),
            ]
        );
    }

    #[test]
    fn kallsyms_scan_takes_core_symbols_only() {
        let text = format!(
            "{}ffffffffc0000000 t init_task\t[evil]\n",
            FakeKernel::kallsyms()
        );
        let found = scan_kallsyms(&text, &WANTED);
        let names: Vec<(&str, u64)> = found.iter().map(|s| (s.name.as_str(), s.addr)).collect();
        let want = [
            ("_text", synth::TEXT),
            ("init_task", synth::INIT_TASK),
            ("init_mm", synth::INIT_MM),
            ("page_offset_base", synth::PAGE_OFFSET_BASE_VAR),
            ("phys_base", synth::PHYS_BASE_VAR),
        ];
        assert_eq!(names, want);
        // Read in chunks of any size, lines cut anywhere: the same symbols.
        struct Trickle<'a>(&'a [u8], usize);
        impl io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(self.0.len()).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for step in [1, 7, 40, 1 << 20] {
            let got = scan_kallsyms_reader(Trickle(text.as_bytes(), step), &WANTED).unwrap();
            let names: Vec<(&str, u64)> = got.iter().map(|s| (s.name.as_str(), s.addr)).collect();
            assert_eq!(names, want, "chunks of {step}");
        }
        // With `_etext` in the file, the reader stops once all are found.
        let text = format!("{text}ffffffff9a000f00 T _etext\nffffffff9a001000 T late\n");
        let got = scan_kallsyms_reader(Trickle(text.as_bytes(), 1 << 20), &WANTED).unwrap();
        assert_eq!(got.len(), WANTED.len());
        // A last line without a newline still counts.
        let got = scan_kallsyms(&text, &["late"]);
        assert_eq!(got.len(), 1);
        let got = scan_kallsyms_reader(&b"ffffffff9a000000 T _text"[..], &["_text"]).unwrap();
        assert_eq!(got.len(), 1);
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A whole watch over a fixture /proc whose kcore changes between walks: a process
    /// alive throughout, one that exits, and its key reused by a later one.
    #[test]
    fn watch_writes_a_bundle_with_intervals_and_maps() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "kallsyms",
            &format!(
                "{}{:016x} T _etext\n",
                FakeKernel::kallsyms(),
                synth::TEXT + 0x8000
            ),
        );
        write(root, "sys/kernel/osrelease", "6.1.0-57-amd64\n");
        write(root, "modules", "");
        fs::write(root.join("btf"), synth::btf()).unwrap();
        write(
            root,
            "1/maps",
            "00400000-00452000 r-xp 00000000 08:01 1 /bin/busybox\n",
        );
        write(
            root,
            "40/maps",
            "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]\n",
        );
        // pid 41 appears later (the key of pid 40, which exits).
        write(
            root,
            "41/maps",
            "7f1000001000-7f1000050000 r-xp 00001000 08:01 3 /bin/spinner\n",
        );
        let mut k = FakeKernel::new();
        let init_mm = k.add_mm(0x8_0000);
        k.add_task(&FakeTask {
            pid: 1,
            comm: "init",
            kthread: false,
            mm: init_mm,
            active_mm: init_mm,
        });
        let w = k.add_mm(0x8_2000);
        let task = k.add_task(&FakeTask {
            pid: 40,
            comm: "workload",
            kthread: false,
            mm: w,
            active_mm: w,
        });
        fs::write(root.join("kcore"), k.kcore()).unwrap();
        let step = std::cell::Cell::new(0);
        let kcore = root.join("kcore");
        let opts = WatchOptions {
            collect: collect::Options {
                btf: root.join("btf"),
                file_root: root.join("root"),
                ..collect::Options::new(root, "vm1")
            },
            interval: Duration::from_millis(1),
            until_file: None,
            seconds: None,
            ready_file: Some(root.join("ready")),
        };
        let stop = || {
            step.set(step.get() + 1);
            if step.get() == 1 {
                // pid 40 was caught between exec's mm switch and its mappings: its maps
                // show up one walk later and are read then.
                write(
                    root,
                    "40/maps",
                    "7f0000001000-7f0000050000 r-xp 00001000 08:01 2 /bin/workload\n",
                );
            }
            match step.get() {
                // After walk 2: pid 40 exits, pid 41 starts with its pgd page.
                2 => {
                    let mut k2 = k.clone();
                    k2.core.write_u32(task + synth::OFFSETS.pid, 41);
                    k2.core.write_u32(task + synth::OFFSETS.tgid, 41);
                    k2.core.write(task + synth::OFFSETS.comm, b"spinner\0");
                    fs::write(&kcore, k2.kcore()).unwrap();
                    false
                }
                n => n >= 4,
            }
        };
        let got = watch(&opts, &stop).unwrap();
        assert_eq!(got.warnings, Vec::<String>::new());
        assert!(root.join("ready").exists());
        let b = &got.bundle;
        let procs: Vec<(u32, &str, Option<u64>, bool, bool)> = b
            .procs
            .iter()
            .map(|p| {
                (
                    p.pid,
                    p.comm.as_str(),
                    p.cr3,
                    p.from.is_some(),
                    p.to.is_some(),
                )
            })
            .collect();
        assert_eq!(
            procs,
            [
                (
                    0,
                    "[kernel]",
                    Some(synth::pa_symbol(synth::SWAPPER_PG_DIR)),
                    false,
                    false
                ),
                (1, "init", Some(0x8_0000), false, false),
                (40, "workload", Some(0x8_2000), false, true),
                (41, "spinner", Some(0x8_2000), true, false),
            ]
        );
        // The reuse within one interval: pid 40 ends just after its last sighting,
        // pid 41 starts at its first: they do not overlap.
        let (w40, s41) = (&b.procs[2], &b.procs[3]);
        assert!(w40.to.unwrap() <= s41.from.unwrap(), "{w40:?} {s41:?}");
        assert_eq!(got.stats.reuses, 1);
        assert_eq!((got.stats.polls, got.stats.failed_polls), (4, 0));
        let maps: Vec<(u32, &str)> = b.maps.iter().map(|m| (m.pid, m.path.as_str())).collect();
        assert_eq!(
            maps,
            [
                (1, "/bin/busybox"),
                (40, "/bin/workload"),
                (41, "/bin/spinner")
            ]
        );
        assert_eq!(b.kernel.as_ref().unwrap().text, Some(synth::TEXT));
        assert_eq!(
            b.kmaps,
            [KMap {
                start: synth::TEXT,
                end: synth::TEXT + 0x8000,
                path: "vmlinux".into()
            }]
        );
        assert_eq!(Bundle::parse(&b.to_text()).as_ref(), Ok(b));
    }
}
