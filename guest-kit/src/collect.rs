//! `guest-kit collect`: a bundle from a Linux guest's `/proc` (run as root).
//!
//! - `proc` lines: every user process (`/proc/PID/stat`: comm; kernel threads, flag
//!   `PF_KTHREAD`, are left out: they have no page tables of their own).
//! - `map` lines: file-backed executable mappings of `/proc/PID/maps`.
//! - `ksym` lines: `/proc/kallsyms`; `kmap` lines: the kernel image (`_text`..`_end`) and
//!   each module of `/proc/modules`.
//!
//! **CR3 is not collected yet**: `/proc` does not show a process's page-table root, so
//! every `proc` line says `cr3=?`.
// TODO(cr3): read `task_struct->mm->pgd` for each PID through /proc/kcore, with the field
// offsets taken from BTF (/sys/kernel/btf/vmlinux) and `init_task` from kallsyms; write
// `__pa(pgd)` (== the masked CR3, see platform-notes.md "Linux as a guest").

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, KMap, KSym, Map, Proc};

/// `task_struct->flags` bit of kernel threads (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

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

/// Collects from the proc file system at `proc_root` (normally `/proc`).
pub fn collect(proc_root: &Path, vm: &str) -> Result<Collected, CollectError> {
    let mut out = Collected {
        bundle: Bundle {
            vm: vm.to_string(),
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
    out.bundle.ksyms = parse_kallsyms(&kallsyms, &text)?;
    if !out.bundle.ksyms.is_empty() && out.bundle.ksyms.iter().all(|s| s.addr == 0) {
        out.warnings.push(format!(
            "{}: every address is 0 (not root, or kernel.kptr_restrict): kernel symbols are useless",
            kallsyms.display()
        ));
    }
    let find = |name: &str| {
        out.bundle
            .ksyms
            .iter()
            .find(|s| s.module.is_none() && s.name == name)
            .map(|s| s.addr)
    };
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
    Ok(out)
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
fn parse_maps_line(line: &str) -> Result<Option<Map>, String> {
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
fn parse_modules(
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

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A /proc with: init (pid 1), a process whose comm has spaces and parentheses
    /// (pid 42), a kernel thread (pid 2), a vanished process (dir without files), and a
    /// non-PID entry.
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
        fs::create_dir_all(root.join("77")).unwrap();
        write(root, "sys/kernel/hostname", "guest1\n");
        write(
            root,
            "kallsyms",
            "ffffffff81000000 T _text\n\
             ffffffff81001000 T do_syscall_64\n\
             ffffffff83000000 B _end\n\
             ffffffffc0a01000 t ext4_fill_super\t[ext4]\n",
        );
        write(
            root,
            "modules",
            "ext4 995328 1 - Live 0xffffffffc0a00000\n\
             crc16 16384 1 ext4, Live 0xffffffffc09f0000 (E)\n",
        );
        dir
    }

    #[test]
    fn collects_processes_maps_and_kernel() {
        let dir = fixture();
        let got = collect(dir.path(), "vm1").unwrap();
        assert_eq!(got.warnings, Vec::<String>::new());
        let b = &got.bundle;
        let procs: Vec<(u32, &str, Option<u64>)> = b
            .procs
            .iter()
            .map(|p| (p.pid, p.comm.as_str(), p.cr3))
            .collect();
        assert_eq!(procs, [(1, "init", None), (42, "Web (Content) 1", None)]);
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
                (0xffff_ffff_8100_0000, 0xffff_ffff_8300_0000, "vmlinux"),
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
        assert_eq!(b.ksyms.len(), 4);
        assert_eq!(b.ksyms[3].module.as_deref(), Some("ext4"));
        // The written bundle reads back the same.
        assert_eq!(Bundle::parse(&b.to_text()).as_ref(), Ok(b));
        assert!(
            b.to_text()
                .contains("proc 42 Web\\x20(Content)\\x201 cr3=?\n")
        );
    }

    #[test]
    fn unprivileged_view_gives_warnings() {
        let dir = fixture();
        write(
            dir.path(),
            "kallsyms",
            "0000000000000000 T _text\n0000000000000000 B _end\n",
        );
        write(
            dir.path(),
            "modules",
            "ext4 995328 1 - Live 0x0000000000000000\n",
        );
        let got = collect(dir.path(), "vm1").unwrap();
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
            ]
        );
    }

    #[test]
    fn broken_files_give_one_line_errors() {
        let dir = fixture();
        write(dir.path(), "kallsyms", "ffffffff81000000 T _text\nzz T x\n");
        let err = collect(dir.path(), "vm1").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}/kallsyms: line 2: bad address `zz`",
                dir.path().display()
            )
        );

        write(dir.path(), "kallsyms", "ffffffff81000000 T _text\n");
        write(dir.path(), "modules", "ext4 big 1 - Live 0x1\n");
        let err = collect(dir.path(), "vm1").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{}/modules: line 1: bad size `big`", dir.path().display())
        );

        let missing = dir.path().join("nope");
        let err = collect(&missing, "vm1").unwrap_err().to_string();
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
