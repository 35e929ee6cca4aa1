//! Guest processes: CR3 -> `proc` line of the bundle (with validity
//! intervals, since CR3 values are reused), process labels, mapped objects.

use guest_kit::{Bundle, Map, cr3_key};
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
                    p.to.unwrap_or(u64::MAX),
                    i as u32,
                ));
            }
        }
        for v in by_cr3.values_mut() {
            v.sort();
        }
        ProcIndex { by_cr3 }
    }

    /// The process owning `cr3` at host TSC `tsc`: the latest-starting `proc`
    /// line whose interval `[from, to]` holds `tsc`.
    pub fn lookup(&self, cr3: u64, tsc: u64) -> ProcKey {
        self.lookup_range(cr3, tsc).0
    }

    /// Like [`ProcIndex::lookup`], also giving a TSC range `[from, to]`
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

/// Display labels of a bundle's processes: `comm`, or `comm(pid)` when
/// several processes share the name.
pub fn labels(b: &Bundle) -> Vec<String> {
    let mut pids: FxHashMap<&str, Vec<u32>> = FxHashMap::default();
    for p in &b.procs {
        let v = pids.entry(p.comm.as_str()).or_default();
        if !v.contains(&p.pid) {
            v.push(p.pid);
        }
    }
    b.procs
        .iter()
        .map(|p| {
            if pids.get(p.comm.as_str()).is_some_and(|v| v.len() > 1) {
                format!("{}({})", p.comm, p.pid)
            } else {
                p.comm.clone()
            }
        })
        .collect()
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
            "gk-bundle 1\nvm v\nproc 10 a cr3=0x6000 from=100 to=200\nproc 11 b cr3=0x6000 from=300\n",
        );
        let ix = ProcIndex::new(&b);
        assert_eq!(ix.lookup(0x6000, 150), ProcKey::Known(0));
        assert_eq!(
            ix.lookup(0x6000 | 0x1000 | 0x3 | 1 << 63, 150),
            ProcKey::Known(0)
        );
        assert_eq!(ix.lookup(0x6000, 250), ProcKey::Unknown(0x6000));
        assert_eq!(ix.lookup(0x6000, 301), ProcKey::Known(1));
    }

    #[test]
    fn duplicate_names_get_pids() {
        let b = bundle(
            "gk-bundle 1\nvm v\nproc 7 prog cr3=0x2000\nproc 9 prog cr3=0x4000\nproc 12 sh cr3=0x6000\n",
        );
        assert_eq!(labels(&b), ["prog(7)", "prog(9)", "sh"]);
    }
}
