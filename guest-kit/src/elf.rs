//! A small reader of the ELF facts a bundle carries about mapped objects: the GNU build
//! id (`NT_GNU_BUILD_ID` note), the function symbols of `.symtab` and the `PT_LOAD`
//! segments (file offset -> link-time address). 64-bit little-endian ELF only (x86-64
//! guests); anything else reads as "nothing there". Reads only the bytes it needs
//! (headers, notes, the symbol and string tables), never the whole file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::bundle::{Bundle, USeg, USym};

/// At most this many `usym` lines per object; more are cut with a warning.
pub const MAX_SYMBOLS_PER_OBJECT: usize = 50_000;

/// Longest build id accepted (GNU ld writes 20 bytes of SHA-1; `--build-id=0x...` may
/// be longer, but not absurdly).
pub const MAX_BUILD_ID: usize = 64;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_SYMTAB: u32 = 2;
const SHT_NOTE: u32 = 7;
const SHT_DYNSYM: u32 = 11;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const NT_GNU_BUILD_ID: u32 = 3;
/// Largest note area or string table read (a `.strtab` of a big C++ library is some
/// megabytes).
const MAX_READ: u64 = 64 << 20;

/// Random-access bytes: a file or a slice.
pub trait Source {
    /// `len` bytes at `offset`, or `None` when the source is shorter.
    fn bytes(&self, offset: u64, len: u64) -> Option<Vec<u8>>;
}

impl Source for [u8] {
    fn bytes(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.get(start..end).map(<[u8]>::to_vec)
    }
}

impl Source for File {
    fn bytes(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if len > MAX_READ {
            return None;
        }
        let mut buf = vec![0; usize::try_from(len).ok()?];
        self.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The ELF header fields this reader uses.
struct Header {
    phoff: u64,
    phentsize: u64,
    phnum: u64,
    shoff: u64,
    shentsize: u64,
    shnum: u64,
}

fn header(src: &(impl Source + ?Sized)) -> Option<Header> {
    let h = src.bytes(0, 64)?;
    // ELFCLASS64, ELFDATA2LSB.
    if h[..4] != *b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    Some(Header {
        phoff: u64_at(&h, 0x20)?,
        shoff: u64_at(&h, 0x28)?,
        phentsize: u64::from(u16_at(&h, 0x36)?),
        phnum: u64::from(u16_at(&h, 0x38)?),
        shentsize: u64::from(u16_at(&h, 0x3a)?),
        shnum: u64::from(u16_at(&h, 0x3c)?),
    })
}

/// `(p_type, p_offset, p_vaddr, p_filesz, p_align)` of every program header.
fn program_headers(src: &(impl Source + ?Sized), h: &Header) -> Vec<(u32, u64, u64, u64, u64)> {
    if h.phentsize < 56 || h.phnum == 0 {
        return Vec::new();
    }
    let Some(table) = src.bytes(h.phoff, h.phentsize * h.phnum) else {
        return Vec::new();
    };
    table
        .chunks_exact(h.phentsize as usize)
        .filter_map(|p| {
            Some((
                u32_at(p, 0)?,
                u64_at(p, 8)?,
                u64_at(p, 16)?,
                u64_at(p, 32)?,
                u64_at(p, 48)?,
            ))
        })
        .collect()
}

/// `(sh_type, sh_offset, sh_size, sh_link, sh_entsize, sh_addralign)` of every section.
fn section_headers(
    src: &(impl Source + ?Sized),
    h: &Header,
) -> Vec<(u32, u64, u64, u32, u64, u64)> {
    if h.shentsize < 64 || h.shnum == 0 || h.shnum > 0xff00 {
        return Vec::new();
    }
    let Some(table) = src.bytes(h.shoff, h.shentsize * h.shnum) else {
        return Vec::new();
    };
    table
        .chunks_exact(h.shentsize as usize)
        .filter_map(|s| {
            Some((
                u32_at(s, 4)?,
                u64_at(s, 24)?,
                u64_at(s, 32)?,
                u32_at(s, 40)?,
                u64_at(s, 56)?,
                u64_at(s, 48)?,
            ))
        })
        .collect()
}

/// The GNU build id in a note area (`align` is 4, or 8 for notes so aligned).
fn build_id_in_notes(notes: &[u8], align: usize) -> Option<Vec<u8>> {
    let pad = |n: usize| n.checked_add(align - 1).map(|v| v & !(align - 1));
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad(namesz)?)?;
        let next = desc_at.checked_add(pad(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
            let id = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
            return (!id.is_empty() && id.len() <= MAX_BUILD_ID).then(|| id.to_vec());
        }
        at = next;
    }
    None
}

/// The GNU build id of an ELF file: from its `PT_NOTE` segments, else from its
/// `SHT_NOTE` sections (`.note.gnu.build-id`). `None` when it has none or is no
/// 64-bit little-endian ELF.
pub fn build_id(src: &(impl Source + ?Sized)) -> Option<Vec<u8>> {
    let h = header(src)?;
    let align = |a: u64| if a == 8 { 8 } else { 4 };
    for (kind, offset, _, size, a) in program_headers(src, &h) {
        if kind == PT_NOTE
            && size <= MAX_READ
            && let Some(id) = src
                .bytes(offset, size)
                .and_then(|n| build_id_in_notes(&n, align(a)))
        {
            return Some(id);
        }
    }
    for (kind, offset, size, _, _, a) in section_headers(src, &h) {
        if kind == SHT_NOTE
            && size <= MAX_READ
            && let Some(id) = src
                .bytes(offset, size)
                .and_then(|n| build_id_in_notes(&n, align(a)))
        {
            return Some(id);
        }
    }
    None
}

/// The `PT_LOAD` segments: `(file offset, file size, link-time address)`.
pub fn load_segments(src: &(impl Source + ?Sized)) -> Vec<(u64, u64, u64)> {
    let Some(h) = header(src) else {
        return Vec::new();
    };
    program_headers(src, &h)
        .into_iter()
        .filter(|p| p.0 == PT_LOAD && p.3 > 0)
        .map(|(_, offset, vaddr, filesz, _)| (offset, filesz, vaddr))
        .collect()
}

/// Function symbols `(address as in the file, size, name)` of `.symtab` (of `.dynsym`
/// when the file has no `.symtab`, as stripped distribution binaries), defined ones
/// with a non-zero address, in table order; at most `limit`, and the number there were
/// in all.
pub fn function_symbols(
    src: &(impl Source + ?Sized),
    limit: usize,
) -> (Vec<(u64, u64, String)>, usize) {
    let Some(h) = header(src) else {
        return (Vec::new(), 0);
    };
    let sections = section_headers(src, &h);
    let table = sections
        .iter()
        .find(|s| s.0 == SHT_SYMTAB)
        .or_else(|| sections.iter().find(|s| s.0 == SHT_DYNSYM));
    let Some(&(_, offset, size, link, entsize, _)) = table else {
        return (Vec::new(), 0);
    };
    let Some(&(_, str_offset, str_size, ..)) = sections.get(link as usize) else {
        return (Vec::new(), 0);
    };
    let entsize = if entsize == 0 { 24 } else { entsize };
    if entsize < 24 || size > MAX_READ || str_size > MAX_READ {
        return (Vec::new(), 0);
    }
    let (Some(syms), Some(strings)) = (src.bytes(offset, size), src.bytes(str_offset, str_size))
    else {
        return (Vec::new(), 0);
    };
    let mut out = Vec::new();
    let mut total = 0;
    for s in syms.chunks_exact(entsize as usize) {
        let (Some(name), Some(value), Some(sz)) = (u32_at(s, 0), u64_at(s, 8), u64_at(s, 16))
        else {
            continue;
        };
        let (info, shndx) = (s[4], u16_at(s, 6).unwrap_or(0));
        if !matches!(info & 0xf, STT_FUNC | STT_GNU_IFUNC) || shndx == 0 || value == 0 {
            continue;
        }
        let Some(tail) = strings.get(name as usize..) else {
            continue;
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let Ok(name) = std::str::from_utf8(&tail[..end]) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        total += 1;
        if out.len() < limit {
            out.push((value, sz, name.to_string()));
        }
    }
    (out, total)
}

/// Lowercase hex of a build id, as a bundle writes it.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds to a collected bundle what the mapped files say: each `map` line's build id
/// and, with `symbols`, `useg` and `usym` lines for each mapped object (at most
/// [`MAX_SYMBOLS_PER_OBJECT`] each, a warning when cut). Paths are opened below
/// `root` (`/` in a guest); a file that cannot be opened (gone, `(deleted)`) gets
/// nothing.
pub fn annotate(bundle: &mut Bundle, root: &Path, symbols: bool, warnings: &mut Vec<String>) {
    let open = |path: &str| File::open(root.join(path.trim_start_matches('/')));
    let mut ids: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    let mut paths = Vec::new();
    for m in &mut bundle.maps {
        let id = ids.entry(m.path.clone()).or_insert_with(|| {
            paths.push(m.path.clone());
            open(&m.path).ok().and_then(|f| build_id(&f))
        });
        m.build_id.clone_from(id);
    }
    if !symbols {
        return;
    }
    for path in paths {
        let Ok(f) = open(&path) else {
            continue;
        };
        let (syms, total) = function_symbols(&f, MAX_SYMBOLS_PER_OBJECT);
        if syms.is_empty() {
            continue;
        }
        if total > syms.len() {
            warnings.push(format!(
                "{path}: {total} function symbols, only the first {} written",
                syms.len()
            ));
        }
        bundle.usegs.extend(
            load_segments(&f)
                .into_iter()
                .map(|(offset, size, vaddr)| USeg {
                    path: path.clone(),
                    offset,
                    size,
                    vaddr,
                }),
        );
        bundle
            .usyms
            .extend(syms.into_iter().map(|(addr, size, name)| USym {
                path: path.clone(),
                addr,
                size,
                name,
            }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A note area holding `notes` as (name, type, desc), 4-aligned.
    fn notes(list: &[(&[u8], u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, kind, desc) in list {
            v.extend((name.len() as u32).to_le_bytes());
            v.extend((desc.len() as u32).to_le_bytes());
            v.extend(kind.to_le_bytes());
            v.extend(*name);
            v.resize(v.len().next_multiple_of(4), 0);
            v.extend(*desc);
            v.resize(v.len().next_multiple_of(4), 0);
        }
        v
    }

    #[test]
    fn build_id_note_is_found_after_other_notes() {
        let n = notes(&[
            (b"GNU\0", 1, &[0, 0, 0, 0, 3, 2, 0, 0]), // NT_GNU_ABI_TAG
            (b"XYZ\0", 3, b"nope"),
            (b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 1]),
        ]);
        assert_eq!(
            build_id_in_notes(&n, 4),
            Some(vec![0xde, 0xad, 0xbe, 0xef, 1])
        );
        assert_eq!(build_id_in_notes(&n[..n.len() - 4], 4), None);
        assert_eq!(build_id_in_notes(b"garbage", 4), None);
        assert_eq!(build_id(b"not an elf".as_slice()), None);
        assert_eq!(hex(&[0xde, 0xad, 1]), "dead01");
    }

    #[test]
    fn reads_the_build_id_and_symbols_of_a_real_binary() {
        // The test executable itself: rustc links with `--build-id` on Linux.
        let exe = std::env::current_exe().unwrap();
        let f = File::open(&exe).unwrap();
        let id = build_id(&f).expect("the test binary has a GNU build id");
        assert!(id.len() >= 8, "{id:?}");
        // The same id from the bytes in memory (slice source) as from the file.
        let all = std::fs::read(&exe).unwrap();
        assert_eq!(build_id(all.as_slice()), Some(id.clone()));
        // `readelf -n` agrees, where it is installed.
        if let Ok(out) = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().find(|l| l.contains("Build ID:")) {
                assert_eq!(line.split_whitespace().last(), Some(hex(&id).as_str()));
            }
        }
        // This very function is among its symbols, inside a loadable segment.
        let (syms, total) = function_symbols(&f, usize::MAX);
        assert_eq!(total, syms.len());
        let me = syms
            .iter()
            .find(|s| {
                s.2.contains("reads_the_build_id_and_symbols_of_a_real_binary")
            })
            .expect("own symbol");
        assert!(
            load_segments(&f)
                .iter()
                .any(|(_, size, vaddr)| *vaddr <= me.0 && me.0 < vaddr + size)
        );
        let (cut, total2) = function_symbols(&f, 10);
        assert_eq!((cut.len(), total2), (10, total));
    }
}
