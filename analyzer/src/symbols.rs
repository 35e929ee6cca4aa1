//! Address -> function name tables: ELF symbol tables (via `object`),
//! kallsyms lists and a kernel's System.map (relocated to where KASLR put it).

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// Sorted, non-overlapping address ranges with names.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    starts: Vec<u64>,
    ends: Vec<u64>,
    names: Vec<String>,
}

impl SymbolTable {
    /// Builds a table from `(start, size, name)`; a size of 0 extends to the
    /// next symbol (at most `max_open` bytes).
    pub fn build(mut syms: Vec<(u64, u64, String)>, max_open: u64) -> Self {
        syms.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        syms.dedup_by_key(|s| s.0);
        let mut t = SymbolTable::default();
        for i in 0..syms.len() {
            let (start, size, _) = &syms[i];
            let next = syms.get(i + 1).map_or(u64::MAX, |n| n.0);
            let end = if *size > 0 {
                start.saturating_add(*size).min(next)
            } else {
                start.saturating_add(max_open).min(next)
            };
            t.starts.push(*start);
            t.ends.push(end);
        }
        t.names = syms.into_iter().map(|s| s.2).collect();
        t
    }

    /// Function containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.starts.partition_point(|&s| s <= addr);
        let i = i.checked_sub(1)?;
        (addr < self.ends[i]).then(|| self.names[i].as_str())
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

/// An ELF file's function symbols and its loadable segments (to turn a file
/// offset from a `map` line into a link-time address).
#[derive(Clone, Debug, Default)]
pub struct ElfImage {
    /// Function symbols at link-time addresses.
    pub symbols: SymbolTable,
    segments: Vec<(u64, u64, u64)>, // (file offset, file size, vaddr)
    /// The GNU build id (`NT_GNU_BUILD_ID` note), if the file has one.
    pub build_id: Option<Vec<u8>>,
}

impl ElfImage {
    /// Parses an ELF file. The error is one line.
    pub fn parse(data: &[u8]) -> Result<ElfImage, String> {
        let file =
            object::File::parse(data).map_err(|e| format!("not a readable ELF file ({e})"))?;
        let mut syms = Vec::new();
        for s in file.symbols().chain(file.dynamic_symbols()) {
            if s.kind() != SymbolKind::Text || s.address() == 0 {
                continue;
            }
            if let Ok(name) = s.name()
                && !name.is_empty()
            {
                syms.push((s.address(), s.size(), demangle(name)));
            }
        }
        let segments = file
            .segments()
            .map(|seg| {
                let (off, size) = seg.file_range();
                (off, size, seg.address())
            })
            .collect();
        Ok(ElfImage {
            symbols: SymbolTable::build(syms, 0x1000),
            segments,
            build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
        })
    }

    /// The image of one object from a bundle's `usym` and `useg` lines of `path` (the
    /// guest's copy of the symbol table, for objects no `--elf` file matches).
    pub fn from_bundle(bundle: &guest_kit::Bundle, path: &str) -> ElfImage {
        let syms = bundle
            .usyms
            .iter()
            .filter(|s| s.path == path)
            .map(|s| (s.addr, s.size, demangle(&s.name)))
            .collect();
        let segments = bundle
            .usegs
            .iter()
            .filter(|g| g.path == path)
            .map(|g| (g.offset, g.size, g.vaddr))
            .collect();
        ElfImage {
            symbols: SymbolTable::build(syms, 0x1000),
            segments,
            build_id: None,
        }
    }

    /// Link-time address of a file offset, if a loadable segment holds it.
    pub fn vaddr_of_offset(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(o, sz, _)| off >= *o && off - *o < *sz)
            .and_then(|(o, _, v)| v.checked_add(off - o))
    }
}

/// How far a kernel symbol without a size reaches when no symbol follows.
const KERNEL_MAX_OPEN: u64 = 0x10_0000;

fn is_text(kind: char) -> bool {
    matches!(kind, 't' | 'T' | 'w' | 'W')
}

fn ksym_entries(syms: &[guest_kit::KSym]) -> impl Iterator<Item = (u64, u64, String)> + '_ {
    syms.iter().filter(|s| is_text(s.kind)).map(|s| {
        let name = match &s.module {
            Some(m) if !m.is_empty() => format!("{}\u{0}{m}", s.name),
            _ => s.name.clone(),
        };
        (s.addr, 0, name)
    })
}

/// Builds a table from kallsyms entries (text symbols only).
pub fn kallsyms_table(syms: &[guest_kit::KSym]) -> SymbolTable {
    SymbolTable::build(ksym_entries(syms).collect(), KERNEL_MAX_OPEN)
}

/// A kernel's `System.map` (`ADDR TYPE NAME` lines, link-time addresses): its text
/// symbols (`t`, `T`, `w`, `W`) and the address of `_text`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemMap {
    /// Text symbols, `(link-time address, name)`, in file order.
    pub text_syms: Vec<(u64, String)>,
    /// Link-time `_text`, the base KASLR moves.
    pub text: Option<u64>,
    /// Lines that are not `ADDR TYPE NAME`.
    pub bad_lines: usize,
}

impl SystemMap {
    /// Parses a System.map; lines that do not parse are counted, not fatal.
    pub fn parse(text: &str) -> SystemMap {
        let mut map = SystemMap::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name), None) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                if !line.trim().is_empty() {
                    map.bad_lines += 1;
                }
                continue;
            };
            let mut kc = kind.chars();
            let (Ok(addr), Some(kind), None) =
                (u64::from_str_radix(addr, 16), kc.next(), kc.next())
            else {
                map.bad_lines += 1;
                continue;
            };
            if name == "_text" {
                map.text = Some(addr);
            }
            if is_text(kind) {
                map.text_syms.push((addr, name.to_string()));
            }
        }
        map
    }

    /// The kernel release a file name like `System.map-6.1.0-57-amd64` names.
    pub fn release_from_file_name(path: &std::path::Path) -> Option<String> {
        let name = path.file_name()?.to_str()?;
        let release = name.strip_prefix("System.map-")?;
        (!release.is_empty()).then(|| release.to_string())
    }
}

/// The kernel symbol table of one VM: its bundle's kallsyms entries first, then the
/// System.map's text symbols moved by `delta` (runtime `_text` - link-time `_text`,
/// wrapping); where both name one address, the bundle's entry wins.
pub fn kernel_table(ksyms: &[guest_kit::KSym], map: Option<&SystemMap>, delta: u64) -> SymbolTable {
    let mut v: Vec<(u64, u64, String)> = ksym_entries(ksyms).collect();
    if let Some(map) = map {
        v.extend(
            map.text_syms
                .iter()
                .map(|(addr, name)| (addr.wrapping_add(delta), 0, name.clone())),
        );
    }
    SymbolTable::build(v, KERNEL_MAX_OPEN)
}

/// A Rust symbol (legacy or v0 mangling) as a path without hashes, e.g.
/// `hypervisor::vmm::run::Runner::idle`; any other name as it is.
pub fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}

/// Splits a name from [`kallsyms_table`] into (function, module).
pub fn split_ksym(name: &str) -> (&str, Option<&str>) {
    match name.split_once('\u{0}') {
        Some((f, m)) => (f, Some(m)),
        None => (name, None),
    }
}

/// Parses a `/proc/kallsyms` file (`ADDR TYPE NAME [[MODULE]]`). Lines that do
/// not parse are counted, not fatal.
pub fn parse_kallsyms(text: &str) -> (Vec<guest_kit::KSym>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            if !line.trim().is_empty() {
                bad += 1;
            }
            continue;
        };
        let addr = addr.trim_start_matches("0x");
        let mut kc = kind.chars();
        let (Ok(addr), Some(kind), None) = (u64::from_str_radix(addr, 16), kc.next(), kc.next())
        else {
            bad += 1;
            continue;
        };
        let module = f
            .next()
            .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string())
            .filter(|m| !m.is_empty());
        out.push(guest_kit::KSym {
            addr,
            kind,
            name: name.to_string(),
            module,
        });
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_respects_sizes_and_gaps() {
        let t = SymbolTable::build(
            vec![
                (0x100, 0x10, "a".into()),
                (0x200, 0, "b".into()),
                (0x100, 0, "alias".into()),
            ],
            0x40,
        );
        assert_eq!(t.lookup(0xff), None);
        assert_eq!(t.lookup(0x100), Some("a"));
        assert_eq!(t.lookup(0x10f), Some("a"));
        assert_eq!(t.lookup(0x110), None);
        assert_eq!(t.lookup(0x23f), Some("b"));
        assert_eq!(t.lookup(0x240), None);
    }

    #[test]
    fn kallsyms_lines() {
        let (syms, bad) = parse_kallsyms(
            "ffffffff81000000 T _stext\nffffffffc0000000 t ext4_foo [ext4]\nnonsense\n\n",
        );
        assert_eq!(bad, 1);
        assert_eq!(syms.len(), 2);
        assert_eq!(syms[1].module.as_deref(), Some("ext4"));
        let t = kallsyms_table(&syms);
        assert_eq!(
            split_ksym(t.lookup(0xffff_ffff_c000_0010).unwrap()),
            ("ext4_foo", Some("ext4"))
        );
        assert_eq!(
            split_ksym(t.lookup(0xffff_ffff_8100_0010).unwrap()),
            ("_stext", None)
        );
    }

    #[test]
    fn system_map_is_relocated_by_the_kaslr_offset() {
        let map = SystemMap::parse(
            "0000000000000000 D __per_cpu_start\n\
             ffffffff81000000 T _text\n\
             ffffffff81000000 T _stext\n\
             ffffffff81000100 t do_one_initcall\n\
             ffffffff81000200 W weak_fn\n\
             ffffffff82000000 D init_task\n\
             ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n\
             zz T bad\n",
        );
        assert_eq!(map.text, Some(0xffff_ffff_8100_0000));
        assert_eq!(map.bad_lines, 2);
        assert_eq!(map.text_syms.len(), 4);
        let delta = 0xffff_ffff_9a00_0000u64.wrapping_sub(0xffff_ffff_8100_0000);
        let t = kernel_table(&[], Some(&map), delta);
        assert_eq!(t.lookup(0xffff_ffff_9a00_0150), Some("do_one_initcall"));
        assert_eq!(t.lookup(0xffff_ffff_9a00_0200), Some("weak_fn"));
        assert_eq!(t.lookup(0xffff_ffff_8100_0150), None);
        // _text and _stext share an address: one of them names it.
        assert!(matches!(
            t.lookup(0xffff_ffff_9a00_0000),
            Some("_text" | "_stext")
        ));
        // Bundle entries come first and win; modules keep their names.
        let (ksyms, _) =
            parse_kallsyms("ffffffff9a000100 T from_bundle\nffffffffc0000000 t ext4_foo [ext4]\n");
        let t = kernel_table(&ksyms, Some(&map), delta);
        assert_eq!(t.lookup(0xffff_ffff_9a00_0100), Some("from_bundle"));
        assert_eq!(
            split_ksym(t.lookup(0xffff_ffff_c000_0004).unwrap()),
            ("ext4_foo", Some("ext4"))
        );
        use std::path::Path;
        assert_eq!(
            SystemMap::release_from_file_name(Path::new("/boot/System.map-6.1.0-57-amd64")),
            Some("6.1.0-57-amd64".into())
        );
        assert_eq!(
            SystemMap::release_from_file_name(Path::new("System.map")),
            None
        );
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(
            ElfImage::parse(b"hello")
                .unwrap_err()
                .starts_with("not a readable ELF file")
        );
    }
}

#[cfg(test)]
mod demangle_tests {
    use super::demangle;

    #[test]
    fn rust_v0_and_legacy_names_become_paths_and_c_names_stay() {
        assert_eq!(
            demangle("_RNvMs0_NtNtCsh2rLgUl31iQ_10hypervisor3vmm3runNtB5_6Runner4idle"),
            "<hypervisor::vmm::run::Runner>::idle"
        );
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("alpha_heavy"), "alpha_heavy");
    }
}
