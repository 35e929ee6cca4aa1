//! Guest processes: CR3 -> `proc` line of the bundle (with validity
//! intervals, since CR3 values are reused), process labels, mapped objects.

use guest_kit::{Bundle, Map, Proc, cr3_key};
use rustc_hash::FxHashMap;

/// The process a guest sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProcKey {
    /// Index into the bundle's `procs`.
    Known(u32),
    /// No `proc` line matches; the CR3 key ([`cr3_key`]).
    Unknown(u64),
}

/// CR3 lookup for one VM's bundle.
#[derive(Clone, Debug, Default)]
pub struct ProcIndex {
    by_cr3: FxHashMap<u64, Vec<(u64, u64, u32)>>,
}

impl ProcIndex {
    /// Indexes the `proc` lines of a bundle.
    pub fn new(b: &Bundle) -> Self {
        let mut by_cr3: FxHashMap<u64, Vec<(u64, u64, u32)>> = FxHashMap::default();
        for (i, p) in b.procs.iter().enumerate() {
            if let Some(key) = p.cr3_key() {
                by_cr3.entry(key).or_default().push((
                    p.from.unwrap_or(0),
                    // Stored inclusive: [from, to) is [from, to - 1]; no `to` is "for ever".
                    p.to.map_or(u64::MAX, |t| t.saturating_sub(1)),
                    i as u32,
                ));
            }
        }
        for v in by_cr3.values_mut() {
            // `to = from` (an empty interval) holds no time at all.
            v.retain(|(f, t, _)| f <= t);
            v.sort();
        }
        ProcIndex { by_cr3 }
    }

    /// The process owning `cr3` at host TSC `tsc`: the `proc` line of that key whose
    /// validity interval `[from, to)` holds `tsc` (a line without `from` holds all
    /// time before its `to`, one without `to` all time from its `from` on). Where
    /// intervals of one key overlap, the latest-starting line wins (a `vfork` child
    /// runs in its suspended parent's address space); where none holds `tsc`, the
    /// answer is [`ProcKey::Unknown`], never another process.
    pub fn lookup(&self, cr3: u64, tsc: u64) -> ProcKey {
        self.lookup_range(cr3, tsc).0
    }

    /// Like [`ProcIndex::lookup`], also giving a TSC range `[from, to]` (inclusive)
    /// around `tsc` over which the answer stays the same (for caching).
    pub fn lookup_range(&self, cr3: u64, tsc: u64) -> (ProcKey, u64, u64) {
        let key = cr3_key(cr3);
        let Some(v) = self.by_cr3.get(&key) else {
            return (ProcKey::Unknown(key), 0, u64::MAX);
        };
        if v.len() == 1 {
            let (f, t, i) = v[0];
            if f <= tsc && tsc <= t {
                return (ProcKey::Known(i), f, t);
            }
        } else if let Some((f, t, i)) = v.iter().rev().find(|(f, t, _)| *f <= tsc && tsc <= *t) {
            // Overlapping intervals: only this exact TSC is certain.
            let overlap = v.iter().filter(|(f2, t2, _)| f2 <= t && f <= t2).count() > 1;
            return (
                ProcKey::Known(*i),
                if overlap { tsc } else { *f },
                if overlap { tsc } else { *t },
            );
        }
        (ProcKey::Unknown(key), tsc, tsc)
    }
}

/// Display labels of a bundle's processes: `comm(pid)` with the guest's real PID,
/// so that two processes of one program are told apart (`prog(7)`, `prog(9)`, as in
/// the paper); the line that stands for all kernel threads (pid 0) is just its name
/// (`[kernel]`).
pub fn labels(b: &Bundle) -> Vec<String> {
    b.procs.iter().map(label).collect()
}

/// The label of one `proc` line (see [`labels`]).
pub fn label(p: &Proc) -> String {
    if p.pid == 0 {
        p.comm.clone()
    } else {
        format!("{}({})", p.comm, p.pid)
    }
}

/// The label of samples whose CR3 key no `proc` line holds at their time.
pub fn unknown_label(key: u64) -> String {
    format!("[unknown process cr3={key:#x}]")
}

/// `map` lines grouped by pid, sorted by start.
pub fn maps_by_pid(b: &Bundle) -> FxHashMap<u32, Vec<Map>> {
    let mut m: FxHashMap<u32, Vec<Map>> = FxHashMap::default();
    for map in &b.maps {
        m.entry(map.pid).or_default().push(map.clone());
    }
    for v in m.values_mut() {
        v.sort_by_key(|x| x.start);
    }
    m
}

/// The map of `maps` (sorted) holding `addr`.
pub fn find_map(maps: &[Map], addr: u64) -> Option<&Map> {
    let i = maps.partition_point(|m| m.start <= addr).checked_sub(1)?;
    let m = &maps[i];
    (addr < m.end).then_some(m)
}

/// Last path component.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(text: &str) -> Bundle {
        Bundle::parse(text).unwrap()
    }

    #[test]
    fn cr3_reuse_follows_validity_intervals() {
        let b = bundle(
            "gk-bundle 1\nvm v\nproc 10 a cr3=0x6000 from=100 to=200\nproc 11 b cr3=0x6000 from=300\n\
             proc 12 c cr3=0x8000 to=50\nproc 13 d cr3=0x8000 from=50 to=50\n",
        );
        let ix = ProcIndex::new(&b);
        assert_eq!(ix.lookup(0x6000, 150), ProcKey::Known(0));
        assert_eq!(
            ix.lookup(0x6000 | 0x1000 | 0x3 | 1 << 63, 150),
            ProcKey::Known(0)
        );
        // [from, to): `from` belongs to the line, `to` no longer does.
        assert_eq!(ix.lookup(0x6000, 100), ProcKey::Known(0));
        assert_eq!(ix.lookup(0x6000, 199), ProcKey::Known(0));
        assert_eq!(ix.lookup(0x6000, 200), ProcKey::Unknown(0x6000));
        assert_eq!(ix.lookup(0x6000, 99), ProcKey::Unknown(0x6000));
        assert_eq!(ix.lookup(0x6000, 250), ProcKey::Unknown(0x6000));
        assert_eq!(ix.lookup(0x6000, 300), ProcKey::Known(1));
        assert_eq!(ix.lookup(0x6000, u64::MAX), ProcKey::Known(1));
        // No `from`: all time before `to`; an empty interval holds nothing.
        assert_eq!(ix.lookup(0x8000, 0), ProcKey::Known(2));
        assert_eq!(ix.lookup(0x8000, 49), ProcKey::Known(2));
        assert_eq!(ix.lookup(0x8000, 50), ProcKey::Unknown(0x8000));
        assert_eq!(ix.lookup_range(0x6000, 150), (ProcKey::Known(0), 100, 199));
    }

    #[test]
    fn processes_are_named_with_their_pids() {
        let b = bundle(
            "gk-bundle 1\nvm v\nproc 0 [kernel] cr3=0x1000\nproc 7 prog cr3=0x2000\n\
             proc 9 prog cr3=0x4000\nproc 12 sh cr3=0x6000\n",
        );
        assert_eq!(labels(&b), ["[kernel]", "prog(7)", "prog(9)", "sh(12)"]);
        assert_eq!(unknown_label(0x4000), "[unknown process cr3=0x4000]");
    }
}
