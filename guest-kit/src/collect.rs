//! `guest-kit collect`: a bundle from a running Linux guest (run as root).
//!
//! - `kernel` line: the release (`/proc/sys/kernel/osrelease`) and the runtime address of
//!   `_text` from `/proc/kallsyms`, so the host can relocate the kernel's System.map.
//! - `proc` lines: every user process of `/proc` (`/proc/PID/stat`: comm), with the CR3
//!   key of its address space: the kernel's task list is walked from `init_task` through
//!   `/proc/kcore` with structure offsets from BTF (`/sys/kernel/btf/vmlinux`), see
//!   [`crate::kernel`]. Kernel threads share `init_mm`: one line `proc 0 [kernel]`
//!   stands for all of them. If the walk fails, a warning says why and every line says
//!   `cr3=?`.
//! - `map` lines: file-backed executable mappings of `/proc/PID/maps`.
//! - `kmap` lines: the kernel image (`_text`..`_end`) and each module of `/proc/modules`.
//! - `ksym` lines: `/proc/kallsyms`, only when asked for ([`Options::kallsyms`]): the
//!   host names kernel functions from System.map and the `kernel` line instead.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, KMap, KSym, Kernel, Map, Proc};
use crate::kernel::btf::{BtfError, KernelTypes};
use crate::kernel::kcore::{Kcore, KcoreError};
use crate::kernel::tasks::{self, Cr3Map, KernelSymbols, Layout, WalkError};

/// `task_struct->flags` bit of kernel threads (include/linux/sched.h).
const PF_KTHREAD: u64 = tasks::PF_KTHREAD as u64;

/// PID of the `proc` line that stands for all kernel threads.
pub const KERNEL_PID: u32 = 0;

/// COMM of the `proc` line that stands for all kernel threads.
pub const KERNEL_COMM: &str = "[kernel]";

/// Where the kernel's BTF is.
pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A list that changed under the walk is walked again, at most this often in all.
const WALK_ATTEMPTS: usize = 3;

/// What to collect, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The proc file system (normally `/proc`).
    pub proc_root: PathBuf,
    /// The VM name for the `vm` line.
    pub vm: String,
    /// The kernel's BTF ([`DEFAULT_BTF`]).
    pub btf: PathBuf,
    /// The kernel's memory as an ELF core (`PROC/kcore` when `None`).
    pub kcore: Option<PathBuf>,
    /// Also write `/proc/kallsyms` as `ksym` lines.
    pub kallsyms: bool,
    /// Also write the mapped objects' function symbols and loadable segments (`usym`
    /// and `useg` lines, [`crate::elf::annotate`]); build ids are always written.
    pub symbols: bool,
    /// Where the guest's file system is: mapped paths are opened below it (`/`).
    pub file_root: PathBuf,
}

impl Options {
    /// Defaults for a guest whose proc file system is at `proc_root`.
    pub fn new(proc_root: &Path, vm: &str) -> Self {
        Options {
            proc_root: proc_root.to_path_buf(),
            vm: vm.to_string(),
            btf: PathBuf::from(DEFAULT_BTF),
            kcore: None,
            kallsyms: false,
            symbols: false,
            file_root: PathBuf::from("/"),
        }
    }
}

/// A bundle and what was left out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub bundle: Bundle,
    /// One line each: things that were skipped or look wrong.
    pub warnings: Vec<String>,
}

/// Why nothing could be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot list {}: {source}", path.display())]
    ListProc { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: line {line}: {what}", path.display())]
    Format {
        path: PathBuf,
        line: usize,
        what: String,
    },
}

/// Why the CR3 keys could not be read (the bundle then says `cr3=?`).
#[derive(Debug, thiserror::Error)]
pub enum Cr3Error {
    #[error("{}: {source}", path.display())]
    Symbols { path: PathBuf, source: WalkError },
    #[error("cannot read {}: {source}", path.display())]
    ReadBtf { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Btf { path: PathBuf, source: BtfError },
    #[error("{}: {source}", path.display())]
    Kcore { path: PathBuf, source: KcoreError },
    #[error("{}: {source}", path.display())]
    Walk { path: PathBuf, source: WalkError },
}

/// Collects what [`Options`] say.
pub fn collect(opts: &Options) -> Result<Collected, CollectError> {
    let proc_root = opts.proc_root.as_path();
    let mut out = Collected {
        bundle: Bundle {
            vm: opts.vm.clone(),
            ..Bundle::default()
        },
        warnings: Vec::new(),
    };
    let mut pids = list_pids(proc_root)?;
    pids.sort_unstable();
    for pid in pids {
        collect_process(proc_root, pid, &mut out);
    }
    let kallsyms = proc_root.join("kallsyms");
    let text = read(&kallsyms)?;
    let ksyms = parse_kallsyms(&kallsyms, &text)?;
    if !ksyms.is_empty() && ksyms.iter().all(|s| s.addr == 0) {
        out.warnings.push(format!(
            "{}: every address is 0 (not root, or kernel.kptr_restrict): kernel symbols are useless",
            kallsyms.display()
        ));
    }
    let find = |name: &str| {
        ksyms
            .iter()
            .find(|s| s.module.is_none() && s.name == name)
            .map(|s| s.addr)
            .filter(|a| *a != 0)
    };
    let osrelease = proc_root.join("sys/kernel/osrelease");
    match fs::read_to_string(&osrelease) {
        Ok(release) if !release.trim().is_empty() => {
            out.bundle.kernel = Some(Kernel {
                release: release.trim().to_string(),
                text: find("_text"),
            });
        }
        Ok(_) => out
            .warnings
            .push(format!("{}: empty: no kernel line", osrelease.display())),
        Err(e) => out.warnings.push(format!(
            "cannot read {}: {e}: no kernel line",
            osrelease.display()
        )),
    }
    match (find("_text"), find("_end").or_else(|| find("_etext"))) {
        (Some(start), Some(end)) if start < end => out.bundle.kmaps.push(KMap {
            start,
            end,
            path: "vmlinux".to_string(),
        }),
        _ => out.warnings.push(format!(
            "{}: no usable _text/_end symbols: no kmap line for the kernel image",
            kallsyms.display()
        )),
    }
    let modules = proc_root.join("modules");
    match fs::read_to_string(&modules) {
        Ok(text) => {
            let kmaps = parse_modules(&modules, &text, &mut out.warnings)?;
            out.bundle.kmaps.extend(kmaps);
        }
        // A kernel without module support has no /proc/modules.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CollectError::Read {
                path: modules,
                source,
            });
        }
    }
    match read_cr3_map(opts, &kallsyms, &ksyms) {
        Ok(map) => add_cr3s(&map, &mut out),
        Err(e) => out.warnings.push(format!(
            "cr3 not collected, every proc line says cr3=?: {e}"
        )),
    }
    if opts.kallsyms {
        out.bundle.ksyms = ksyms;
    }
    crate::elf::annotate(
        &mut out.bundle,
        &opts.file_root,
        opts.symbols,
        &mut out.warnings,
    );
    Ok(out)
}

/// Symbols from kallsyms, offsets from BTF, memory from kcore: the CR3 map.
pub fn read_cr3_map(opts: &Options, kallsyms: &Path, ksyms: &[KSym]) -> Result<Cr3Map, Cr3Error> {
    let syms = KernelSymbols::from_kallsyms(ksyms).map_err(|source| Cr3Error::Symbols {
        path: kallsyms.to_path_buf(),
        source,
    })?;
    let btf_path = &opts.btf;
    let btf = fs::read(btf_path).map_err(|source| Cr3Error::ReadBtf {
        path: btf_path.clone(),
        source,
    })?;
    let offsets = KernelTypes::parse(&btf)
        .and_then(|types| types.task_offsets())
        .map_err(|source| Cr3Error::Btf {
            path: btf_path.clone(),
            source,
        })?;
    drop(btf);
    let kcore_path = opts
        .kcore
        .clone()
        .unwrap_or_else(|| opts.proc_root.join("kcore"));
    let kcore = Kcore::open(&kcore_path).map_err(|source| Cr3Error::Kcore {
        path: kcore_path.clone(),
        source,
    })?;
    let walk_err = |source| Cr3Error::Walk {
        path: kcore_path.clone(),
        source,
    };
    let layout = Layout::read(&kcore, &syms).map_err(walk_err)?;
    let mut attempt = 1;
    loop {
        match tasks::cr3_map(&kcore, &syms, &offsets, &layout, tasks::MAX_TASKS) {
            Ok(map) => return Ok(map),
            Err(e) if e.is_transient() && attempt < WALK_ATTEMPTS => attempt += 1,
            Err(e) => return Err(walk_err(e)),
        }
    }
}

/// Puts the keys into the `proc` lines; adds processes /proc did not show and the
/// kernel line.
fn add_cr3s(map: &Cr3Map, out: &mut Collected) {
    let procs = &mut out.bundle.procs;
    let mut missing = Vec::new();
    for p in procs.iter_mut() {
        match map.user.get(&p.pid) {
            Some(u) => p.cr3 = Some(u.cr3),
            // Zombies keep their /proc entry but no address space: cr3=?, no warning.
            None if map.without_mm.contains(&p.pid) => {}
            None => missing.push(p.pid),
        }
    }
    let listed: BTreeSet<u32> = procs.iter().map(|p| p.pid).collect();
    for (pid, u) in &map.user {
        if !listed.contains(pid) {
            procs.push(Proc {
                pid: *pid,
                comm: if u.comm.is_empty() {
                    "?".into()
                } else {
                    u.comm.clone()
                },
                cr3: Some(u.cr3),
                from: None,
                to: None,
            });
        }
    }
    procs.push(Proc {
        pid: KERNEL_PID,
        comm: KERNEL_COMM.to_string(),
        cr3: Some(map.kernel),
        from: None,
        to: None,
    });
    procs.sort_by_key(|p| p.pid);
    out.warnings.extend(map.notes.iter().cloned());
    if let Some(first) = missing.first() {
        out.warnings.push(format!(
            "{} process(es) of /proc not in the kernel's task list (exited?), cr3=?: first pid {first}",
            missing.len()
        ));
    }
}

fn read(path: &Path) -> Result<String, CollectError> {
    fs::read_to_string(path).map_err(|source| CollectError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn list_pids(proc_root: &Path) -> Result<Vec<u32>, CollectError> {
    let list_err = |source| CollectError::ListProc {
        path: proc_root.to_path_buf(),
        source,
    };
    let mut pids = Vec::new();
    for entry in fs::read_dir(proc_root).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Adds one process; a process that vanished meanwhile is skipped without a word.
fn collect_process(proc_root: &Path, pid: u32, out: &mut Collected) {
    let dir = proc_root.join(pid.to_string());
    let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
        return;
    };
    let Some((comm, flags)) = parse_stat(&stat) else {
        out.warnings.push(format!(
            "{}: unreadable stat line, process skipped",
            dir.join("stat").display()
        ));
        return;
    };
    if flags & PF_KTHREAD != 0 {
        return;
    }
    let Ok(maps) = fs::read_to_string(dir.join("maps")) else {
        return;
    };
    out.bundle.procs.push(Proc {
        pid,
        comm: if comm.is_empty() { "?".into() } else { comm },
        cr3: None,
        from: None,
        to: None,
    });
    for (index, line) in maps.lines().enumerate() {
        match parse_maps_line(line) {
            Ok(Some(m)) => out.bundle.maps.push(Map { pid, ..m }),
            Ok(None) => {}
            Err(what) => out.warnings.push(format!(
                "{}: line {}: {what}",
                dir.join("maps").display(),
                index + 1
            )),
        }
    }
}

/// `PID (COMM) STATE PPID ... FLAGS ...`: COMM (which may hold spaces and parentheses)
/// and the flags field (the 9th).
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After ")": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    let flags = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()?;
    Some((comm, flags))
}

/// One `/proc/PID/maps` line; `Ok(None)` unless it maps a file executable.
pub(crate) fn parse_maps_line(line: &str) -> Result<Option<Map>, String> {
    let mut rest = line;
    let mut next = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find([' ', '\t']).unwrap_or(trimmed.len());
        let (field, tail) = trimmed.split_at(end);
        rest = tail;
        field
    };
    let (range, perms, offset, _dev, _inode) = (next(), next(), next(), next(), next());
    let path = rest.trim();
    if perms.len() < 3 {
        return Err(format!("bad maps line `{line}`"));
    }
    if perms.as_bytes().get(2) != Some(&b'x') || !path.starts_with('/') {
        return Ok(None);
    }
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let (start, end) = range
        .split_once('-')
        .and_then(|(a, b)| Some((hex(a)?, hex(b)?)))
        .ok_or_else(|| format!("bad address range `{range}`"))?;
    let offset = hex(offset).ok_or_else(|| format!("bad offset `{offset}`"))?;
    if start >= end {
        return Err(format!("empty address range `{range}`"));
    }
    Ok(Some(Map {
        pid: 0,
        start,
        end,
        offset,
        path: path.to_string(),
        build_id: None,
    }))
}

fn parse_kallsyms(path: &Path, text: &str) -> Result<Vec<KSym>, CollectError> {
    let mut syms = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let bad = |what: String| CollectError::Format {
            path: path.to_path_buf(),
            line: index + 1,
            what,
        };
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(bad(format!(
                "expected `ADDR TYPE NAME [[MODULE]]`, found `{line}`"
            )));
        };
        let addr =
            u64::from_str_radix(addr, 16).map_err(|_| bad(format!("bad address `{addr}`")))?;
        let mut chars = kind.chars();
        let kind = match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_alphabetic() => c,
            _ => return Err(bad(format!("bad symbol type `{kind}`"))),
        };
        let module = fields
            .next()
            .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
        syms.push(KSym {
            addr,
            kind,
            name: name.to_string(),
            module,
        });
    }
    Ok(syms)
}

/// `/proc/modules`: `NAME SIZE REFS DEPS STATE ADDRESS [TAINT]`.
pub(crate) fn parse_modules(
    path: &Path,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<KMap>, CollectError> {
    let mut kmaps = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: String| CollectError::Format {
            path: path.to_path_buf(),
            line: index + 1,
            what,
        };
        let [name, size, _refs, _deps, _state, addr, ..] = fields[..] else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(bad(format!(
                "expected `NAME SIZE REFS DEPS STATE ADDRESS`, found `{line}`"
            )));
        };
        let size: u64 = size
            .parse()
            .map_err(|_| bad(format!("bad size `{size}`")))?;
        let digits = addr.strip_prefix("0x").unwrap_or(addr);
        let start =
            u64::from_str_radix(digits, 16).map_err(|_| bad(format!("bad address `{addr}`")))?;
        if start == 0 || size == 0 {
            warnings.push(format!(
                "{}: line {}: module {name} has no address (not root?): no kmap line",
                path.display(),
                index + 1
            ));
            continue;
        }
        let end = start
            .checked_add(size)
            .ok_or_else(|| bad(format!("module {name} wraps around")))?;
        kmaps.push(KMap {
            start,
            end,
            path: name.to_string(),
        });
    }
    Ok(kmaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::synth::{self, FakeKernel, FakeTask};

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// The kernel behind the fixture: init (1, pgd at 0x80000), kthreadd (2), the web
    /// process (42, pgd at 0x82000), `late` (99, pgd at 0x84000), which started after
    /// /proc was listed, and a zombie (50).
    fn fake_kernel() -> FakeKernel {
        let mut k = FakeKernel::new();
        for (pid, comm, pgd) in [
            (1, "init", Some(0x8_0000)),
            (2, "kthreadd", None),
            (42, "Web (Content) 1", Some(0x8_2000)),
            (99, "late", Some(0x8_4000)),
        ] {
            let mm = pgd.map_or(0, |p| k.add_mm(p));
            k.add_task(&FakeTask {
                pid,
                comm,
                kthread: pgd.is_none(),
                mm,
                active_mm: mm,
            });
        }
        // A zombie: no mm any more, not a kernel thread.
        k.add_task(&FakeTask {
            pid: 50,
            comm: "defunct",
            kthread: false,
            mm: 0,
            active_mm: 0,
        });
        k
    }

    /// A /proc with: init (pid 1), a process whose comm has spaces and parentheses
    /// (pid 42), a kernel thread (pid 2), a vanished process (dir without files), and a
    /// non-PID entry; `kcore` and a BTF file (`btf`, beside the /proc tree) of
    /// [`fake_kernel`].
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "1/stat", "1 (init) S 0 1 1 0 -1 4194560 100 0 0 0\n");
        write(
            root,
            "1/maps",
            "00400000-00452000 r-xp 00000000 08:01 1234   /sbin/init\n\
             00651000-00652000 rw-p 00051000 08:01 1234   /sbin/init\n\
             7f0000000000-7f0000021000 r-xp 00001000 08:01 77     /lib/libc.so.6\n\
             7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0      [stack]\n\
             7ffc00100000-7ffc00101000 r-xp 00000000 00:00 0      [vdso]\n",
        );
        write(
            root,
            "42/stat",
            "42 (Web (Content) 1) R 1 42 42 0 -1 4194304 5 0\n",
        );
        write(
            root,
            "42/maps",
            "55d000000000-55d000001000 r-xp 00002000 08:01 99 /opt/my app/bin (deleted)\n",
        );
        write(root, "2/stat", "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0\n");
        write(root, "2/maps", "");
        write(root, "50/stat", "50 (defunct) Z 1 50 50 0 -1 4227084 0 0\n");
        write(root, "50/maps", "");
        fs::create_dir_all(root.join("77")).unwrap();
        write(root, "sys/kernel/hostname", "guest1\n");
        write(root, "sys/kernel/osrelease", "6.1.0-57-amd64\n");
        write(
            root,
            "kallsyms",
            &format!(
                "{}ffffffffc0a01000 t ext4_fill_super\t[ext4]\n",
                FakeKernel::kallsyms()
            ),
        );
        write(
            root,
            "modules",
            "ext4 995328 1 - Live 0xffffffffc0a00000\n\
             crc16 16384 1 ext4, Live 0xffffffffc09f0000 (E)\n",
        );
        fs::write(root.join("kcore"), fake_kernel().kcore()).unwrap();
        fs::write(root.join("btf"), synth::btf()).unwrap();
        dir
    }

    fn options(dir: &tempfile::TempDir) -> Options {
        Options {
            btf: dir.path().join("btf"),
            // Mapped paths (/sbin/init...) are the fixture's, not this machine's.
            file_root: dir.path().join("root"),
            ..Options::new(dir.path(), "vm1")
        }
    }

    #[test]
    fn collects_processes_with_cr3_maps_and_kernel() {
        let dir = fixture();
        let got = collect(&options(&dir)).unwrap();
        assert_eq!(got.warnings, Vec::<String>::new());
        let b = &got.bundle;
        let procs: Vec<(u32, &str, Option<u64>)> = b
            .procs
            .iter()
            .map(|p| (p.pid, p.comm.as_str(), p.cr3))
            .collect();
        assert_eq!(
            procs,
            [
                (0, "[kernel]", Some(synth::pa_symbol(synth::SWAPPER_PG_DIR))),
                (1, "init", Some(0x8_0000)),
                (42, "Web (Content) 1", Some(0x8_2000)),
                (50, "defunct", None),
                (99, "late", Some(0x8_4000)),
            ]
        );
        assert_eq!(
            b.kernel,
            Some(Kernel {
                release: "6.1.0-57-amd64".into(),
                text: Some(synth::TEXT)
            })
        );
        let maps: Vec<(u32, u64, u64, u64, &str)> = b
            .maps
            .iter()
            .map(|m| (m.pid, m.start, m.end, m.offset, m.path.as_str()))
            .collect();
        assert_eq!(
            maps,
            [
                (1, 0x40_0000, 0x45_2000, 0, "/sbin/init"),
                (
                    1,
                    0x7f00_0000_0000,
                    0x7f00_0002_1000,
                    0x1000,
                    "/lib/libc.so.6"
                ),
                (
                    42,
                    0x55d0_0000_0000,
                    0x55d0_0000_1000,
                    0x2000,
                    "/opt/my app/bin (deleted)"
                ),
            ]
        );
        let kmaps: Vec<(u64, u64, &str)> = b
            .kmaps
            .iter()
            .map(|k| (k.start, k.end, k.path.as_str()))
            .collect();
        assert_eq!(
            kmaps,
            [
                (synth::TEXT, synth::TEXT + synth::IMAGE_SIZE, "vmlinux"),
                (
                    0xffff_ffff_c0a0_0000,
                    0xffff_ffff_c0a0_0000 + 995_328,
                    "ext4"
                ),
                (
                    0xffff_ffff_c09f_0000,
                    0xffff_ffff_c09f_0000 + 16_384,
                    "crc16"
                ),
            ]
        );
        // No ksym lines unless asked for.
        assert!(b.ksyms.is_empty());
        // The written bundle reads back the same.
        let text = b.to_text();
        assert_eq!(Bundle::parse(&text).as_ref(), Ok(b));
        assert!(
            text.starts_with(
                "gk-bundle 2\nvm vm1\nkernel 6.1.0-57-amd64 text=0xffffffff9a000000\n\
                 proc 0 [kernel] cr3=0x3a004000\nproc 1 init cr3=0x80000\n\
                 proc 42 Web\\x20(Content)\\x201 cr3=0x82000\nproc 50 defunct cr3=?\n\
                 proc 99 late cr3=0x84000\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn build_ids_always_and_guest_symbols_on_request() {
        let dir = fixture();
        // /sbin/init of the guest's file system is this test program (it has a build id).
        let exe = std::env::current_exe().unwrap();
        let init = dir.path().join("root/sbin/init");
        fs::create_dir_all(init.parent().unwrap()).unwrap();
        fs::copy(&exe, &init).unwrap();
        let id = crate::elf::build_id(&fs::File::open(&exe).unwrap()).unwrap();
        let plain = collect(&options(&dir)).unwrap().bundle;
        let ids: Vec<(&str, Option<&Vec<u8>>)> = plain
            .maps
            .iter()
            .map(|m| (m.path.as_str(), m.build_id.as_ref()))
            .collect();
        assert_eq!(
            ids,
            [
                ("/sbin/init", Some(&id)),
                ("/lib/libc.so.6", None),
                ("/opt/my app/bin (deleted)", None)
            ]
        );
        assert!(plain.usyms.is_empty() && plain.usegs.is_empty());
        let text = plain.to_text();
        assert!(text.starts_with("gk-bundle 3\n"), "{text}");
        assert!(
            text.contains(&format!(
                "map 1 400000 452000 0 /sbin/init buildid={}\n",
                crate::elf::hex(&id)
            )),
            "{text}"
        );
        let full = collect(&Options {
            symbols: true,
            ..options(&dir)
        })
        .unwrap()
        .bundle;
        assert!(full.usyms.len() > 100, "{}", full.usyms.len());
        assert!(full.usyms.iter().all(|s| s.path == "/sbin/init"));
        assert!(full.usegs.iter().any(|g| g.path == "/sbin/init"));
        assert!(full.usyms.iter().any(|s| {
            s.name
                .contains("build_ids_always_and_guest_symbols_on_request")
        }));
        assert_eq!(Bundle::parse(&full.to_text()), Ok(full));
    }

    #[test]
    fn kallsyms_lines_on_request() {
        let dir = fixture();
        let got = collect(&Options {
            kallsyms: true,
            ..options(&dir)
        })
        .unwrap();
        let b = &got.bundle;
        assert_eq!(b.ksyms.len(), 10);
        assert_eq!(b.ksyms[9].module.as_deref(), Some("ext4"));
        assert_eq!(Bundle::parse(&b.to_text()).as_ref(), Ok(b));
    }

    #[test]
    fn without_kcore_or_btf_cr3_is_unknown_with_one_warning() {
        let dir = fixture();
        fs::remove_file(dir.path().join("kcore")).unwrap();
        let got = collect(&options(&dir)).unwrap();
        let root = dir.path().display();
        assert_eq!(
            got.warnings,
            [format!(
                "cr3 not collected, every proc line says cr3=?: {root}/kcore: cannot open it: No such file or directory (os error 2)"
            )]
        );
        let procs: Vec<(u32, Option<u64>)> =
            got.bundle.procs.iter().map(|p| (p.pid, p.cr3)).collect();
        assert_eq!(procs, [(1, None), (42, None), (50, None)]);
        assert!(
            got.bundle
                .to_text()
                .contains("proc 42 Web\\x20(Content)\\x201 cr3=?\n")
        );

        let got = collect(&Options {
            btf: dir.path().join("nope"),
            ..options(&dir)
        })
        .unwrap();
        assert_eq!(
            got.warnings,
            [format!(
                "cr3 not collected, every proc line says cr3=?: cannot read {root}/nope: No such file or directory (os error 2)"
            )]
        );
    }

    #[test]
    fn a_broken_task_list_is_a_warning() {
        let dir = fixture();
        let mut k = fake_kernel();
        // Point the last task back at itself: a cycle that never reaches init_task.
        let node = k.tasks[3] + synth::OFFSETS.tasks;
        k.core.write_u64(node, node);
        fs::write(dir.path().join("kcore"), k.kcore()).unwrap();
        let got = collect(&options(&dir)).unwrap();
        assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
        assert!(
            got.warnings[0].starts_with(&format!(
                "cr3 not collected, every proc line says cr3=?: {}/kcore: tasks list: node {node:#x} comes back after 5 tasks",
                dir.path().display()
            )),
            "{}",
            got.warnings[0]
        );
    }

    #[test]
    fn unprivileged_view_gives_warnings() {
        let dir = fixture();
        write(
            dir.path(),
            "kallsyms",
            "0000000000000000 T _text\n0000000000000000 D init_task\n0000000000000000 B _end\n",
        );
        write(
            dir.path(),
            "modules",
            "ext4 995328 1 - Live 0x0000000000000000\n",
        );
        let got = collect(&options(&dir)).unwrap();
        let root = dir.path().display();
        assert_eq!(
            got.warnings,
            [
                format!(
                    "{root}/kallsyms: every address is 0 (not root, or kernel.kptr_restrict): kernel symbols are useless"
                ),
                format!(
                    "{root}/kallsyms: no usable _text/_end symbols: no kmap line for the kernel image"
                ),
                format!(
                    "{root}/modules: line 1: module ext4 has no address (not root?): no kmap line"
                ),
                format!(
                    "cr3 not collected, every proc line says cr3=?: {root}/kallsyms: kallsyms shows address 0 for init_task (not root, or kernel.kptr_restrict=2)"
                ),
            ]
        );
        assert_eq!(
            got.bundle.kernel,
            Some(Kernel {
                release: "6.1.0-57-amd64".into(),
                text: None
            })
        );
        assert!(
            got.bundle
                .to_text()
                .contains("\nkernel 6.1.0-57-amd64 text=?\n")
        );
    }

    #[test]
    fn broken_files_give_one_line_errors() {
        let dir = fixture();
        write(dir.path(), "kallsyms", "ffffffff81000000 T _text\nzz T x\n");
        let err = collect(&options(&dir)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}/kallsyms: line 2: bad address `zz`",
                dir.path().display()
            )
        );

        write(dir.path(), "kallsyms", "ffffffff81000000 T _text\n");
        write(dir.path(), "modules", "ext4 big 1 - Live 0x1\n");
        let err = collect(&options(&dir)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{}/modules: line 1: bad size `big`", dir.path().display())
        );

        let missing = dir.path().join("nope");
        let err = collect(&Options::new(&missing, "vm1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot list {}: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn maps_lines() {
        assert_eq!(parse_maps_line("1000-2000 rw-p 0 00:00 0 /x"), Ok(None));
        assert_eq!(parse_maps_line("1000-2000 r-xp 0 00:00 0"), Ok(None));
        assert_eq!(
            parse_maps_line("2000-1000 r-xp 0 00:00 0 /x"),
            Err("empty address range `2000-1000`".to_string())
        );
        assert_eq!(
            parse_maps_line("x-1000 r-xp 0 00:00 0 /x"),
            Err("bad address range `x-1000`".to_string())
        );
        assert_eq!(parse_maps_line(""), Err("bad maps line ``".to_string()));
    }
}
