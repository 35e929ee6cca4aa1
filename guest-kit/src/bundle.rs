//! The guest bundle: what only the guest knows (processes and their CR3, mapped objects,
//! kernel image and symbols), as the text format of `docs/contracts.md`, versions 1 and 2.
//!
//! ```text
//! gk-bundle 2                                            # 1 when there is no `kernel` line
//! vm NAME
//! kernel RELEASE text=0xHEX                              # version 2; text=? when unknown
//! proc PID COMM cr3=0xHEX [from=HOSTTSC] [to=HOSTTSC]    # cr3=? when unknown
//! map PID START END OFFSET PATH [buildid=HEX]           # hex, offset as in /proc/PID/maps
//! kmap START END PATH
//! ksym ADDR TYPE NAME [MODULE]
//! useg PATH OFFSET SIZE VADDR                            # version 3: PT_LOAD of PATH
//! usym PATH ADDR SIZE NAME                               # version 3: function of PATH
//! ```
//!
//! Rules this module fixes where the contract is silent:
//! - Fields are separated by spaces or tabs; `#` starts a comment anywhere on a line.
//! - Text fields (COMM, PATH, NAME, MODULE, RELEASE, the VM name) escape space, tab, `#`,
//!   `\` and control bytes as `\xHH`, so a field never contains a separator.
//! - START, END, OFFSET and ADDR are hex, written without a prefix (as in `/proc/PID/maps`
//!   and `/proc/kallsyms`); `0x` is accepted. `cr3` and `text` are hex written with `0x`;
//!   `from`/`to` are host TSC values in decimal (`0x` hex accepted).
//! - MODULE is written bare; `[ext4]` as `/proc/kallsyms` prints it is accepted too.
//! - Version 2 adds the `kernel` record (at most one); everything else is as in version 1.
//!   The writer writes the lowest version that holds the bundle (1 without a `kernel`
//!   line), so readers of version 1 keep reading bundles that do not need 2. A version 1
//!   bundle with a `kernel` line is an error.
//! - Version 3 adds `buildid=` on `map` lines and the `useg`/`usym` records (a version
//!   1 or 2 reader refuses both, so a bundle holding them says 3); the writer writes 3
//!   only when one is present. `buildid` is lowercase hex (at most 64 bytes, written
//!   lowercase, read in either case).
//! - `cr3` is written as collected (`__pa(mm->pgd)`, already a [`cr3_key`]); the reader
//!   keeps what it reads, [`Proc::cr3_key`] masks it.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// The newest format version this module reads (and writes when a bundle needs it).
pub const VERSION: u32 = 3;

/// The oldest format version this module reads.
pub const MIN_VERSION: u32 = 1;

/// Prefix of bundle lines on a guest console (`[NAME] @gk gk-bundle 1`).
pub const CONSOLE_PREFIX: &str = "@gk ";

/// CR3 bits that are part of the page-table root: bits 13-51 (4 KiB frame bits 12-51 up
/// to the architectural MAXPHYADDR of 52, without the KPTI bit 12).
pub const CR3_KEY_MASK: u64 = ((1 << 52) - 1) & !0x1fff;

/// The process key of a raw CR3 value as the VMCS holds it: the page-table root with the
/// PCID / flag bits 0-11, the KPTI user-half bit 12 (`PTI_USER_PGTABLE_BIT`: Linux
/// allocates PGDs as 8 KiB pairs) and bits 52-63 (bit 63 is the no-flush hint on writes;
/// 61/62 are LAM on newer CPUs) cleared. For a Linux guest this equals `__pa(mm->pgd)`.
///
/// A PCID is no process key (Linux recycles 6 dynamic ASIDs per CPU). A guest that does
/// not use KPTI must keep its page-table roots 8 KiB aligned, or two roots 4 KiB apart
/// would share a key.
pub const fn cr3_key(raw_cr3: u64) -> u64 {
    raw_cr3 & CR3_KEY_MASK
}

/// Former name of [`cr3_key`], kept for callers outside this crate.
pub const fn normalize_cr3(cr3: u64) -> u64 {
    cr3_key(cr3)
}

/// One guest's bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// VM name (`vm NAME`).
    pub vm: String,
    /// Processes (`proc` lines), in file order.
    pub procs: Vec<Proc>,
    /// Objects mapped into processes (`map` lines).
    pub maps: Vec<Map>,
    /// The kernel image and modules (`kmap` lines).
    pub kmaps: Vec<KMap>,
    /// Kernel symbols (`ksym` lines).
    pub ksyms: Vec<KSym>,
    /// The running kernel (`kernel` line, version 2).
    pub kernel: Option<Kernel>,
    /// Loadable segments of mapped objects (`useg` lines, version 3).
    pub usegs: Vec<USeg>,
    /// Function symbols of mapped objects (`usym` lines, version 3).
    pub usyms: Vec<USym>,
}

/// A `PT_LOAD` segment of a mapped object: file bytes `[offset, offset + size)` of
/// `path` are at link-time address `vaddr` (turns a `map` offset into a symbol address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct USeg {
    pub path: String,
    pub offset: u64,
    pub size: u64,
    pub vaddr: u64,
}

/// A function symbol of a mapped object, as its `.symtab` holds it (link-time address;
/// size 0 when unknown), sent when the host may have no copy of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct USym {
    pub path: String,
    pub addr: u64,
    pub size: u64,
    pub name: String,
}

/// The guest's running kernel: enough for the host to relocate that kernel's System.map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r` (`/proc/sys/kernel/osrelease`), e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// Runtime address of `_text` (after KASLR); `None` when unknown (`text=?`).
    pub text: Option<u64>,
}

/// A guest process and the CR3 that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    /// `None` when the collector could not read it (`cr3=?`).
    pub cr3: Option<u64>,
    /// Host TSC from which this CR3 belongs to this process (CR3 values are reused).
    pub from: Option<u64>,
    /// Host TSC until which this CR3 belongs to this process.
    pub to: Option<u64>,
}

impl Proc {
    /// The masked CR3 ([`cr3_key`]) used to match samples, if known.
    pub fn cr3_key(&self) -> Option<u64> {
        self.cr3.map(cr3_key)
    }
}

/// An object mapped into a process: `[start, end)` of `pid`'s address space shows `path`
/// from file offset `offset` on (as in `/proc/PID/maps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
    /// The file's GNU build id (`buildid=`, version 3), when the collector read one.
    pub build_id: Option<Vec<u8>>,
}

/// The kernel image or a module at `[start, end)` of the kernel address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KMap {
    pub start: u64,
    pub end: u64,
    pub path: String,
}

/// One `/proc/kallsyms` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KSym {
    pub addr: u64,
    /// The kallsyms type letter (`T`, `t`, `D`...).
    pub kind: char,
    pub name: String,
    /// The module the symbol belongs to, `None` for the kernel image.
    pub module: Option<String>,
}

/// Why a bundle could not be read. `Display` gives `line N: <what is wrong>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number (the last line + 1 for something missing at the end).
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// What is wrong with a bundle line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error(
        "expected the header `gk-bundle {VERSION}` (or {MIN_VERSION}) before any record, found `{0}`"
    )]
    MissingHeader(String),
    #[error("no `gk-bundle {VERSION}` (or {MIN_VERSION}) header (the bundle is empty)")]
    Empty,
    #[error("unsupported bundle version `{0}` (this reader knows {MIN_VERSION} to {VERSION})")]
    UnsupportedVersion(String),
    #[error("second `gk-bundle` header")]
    DuplicateHeader,
    #[error("second `vm` line (the bundle already names VM `{0}`)")]
    DuplicateVm(String),
    #[error("no `vm NAME` line")]
    MissingVm,
    #[error("unknown record `{0}` (expected vm, kernel, proc, map, kmap, ksym, useg or usym)")]
    UnknownRecord(String),
    #[error("`{record}` needs `gk-bundle {needs}` (this bundle says {found})")]
    NeedsVersion {
        record: &'static str,
        needs: u32,
        found: u32,
    },
    #[error("second `kernel` line")]
    DuplicateKernel,
    #[error("`{record}` needs {field}")]
    MissingField {
        record: &'static str,
        field: &'static str,
    },
    #[error("`{record}` has an unexpected extra field `{extra}`")]
    ExtraField { record: &'static str, extra: String },
    #[error("{field} `{value}` is not a valid {radix} number")]
    BadNumber {
        field: &'static str,
        value: String,
        radix: &'static str,
    },
    #[error("unknown proc option `{0}` (expected cr3=, from= or to=)")]
    UnknownOption(String),
    #[error("proc option `{0}` given twice")]
    DuplicateOption(&'static str),
    #[error("proc has no `cr3=` (write `cr3=?` when it is unknown)")]
    MissingCr3,
    #[error("`{0}` is not a build id (`buildid=` and 1 to 64 bytes of hex)")]
    BadBuildId(String),
    #[error("kernel needs `text=0xADDR` (or `text=?`), found `{0}`")]
    BadKernelText(String),
    #[error("range start {start:#x} is not below end {end:#x}")]
    EmptyRange { start: u64, end: u64 },
    #[error("ksym type `{0}` is not a single letter")]
    BadSymbolType(String),
    #[error("bad escape in `{0}` (expected \\xHH)")]
    BadEscape(String),
    #[error("`{0}` is not UTF-8 once unescaped")]
    BadUtf8(String),
}

impl Bundle {
    /// Parses a bundle. Never panics; the first error is returned with its line number.
    pub fn parse(text: &str) -> Result<Bundle, ParseError> {
        let mut bundle = Bundle::default();
        let mut vm: Option<String> = None;
        let mut header_seen = false;
        let mut version = VERSION;
        let mut last_line = 0;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            last_line = line;
            let content = raw.split('#').next().unwrap_or("");
            let mut fields = content.split([' ', '\t']).filter(|f| !f.is_empty());
            let Some(record) = fields.next() else {
                continue;
            };
            let err = |kind| ParseError { line, kind };
            if !header_seen {
                if record != "gk-bundle" {
                    return Err(err(ParseErrorKind::MissingHeader(record.to_string())));
                }
                let given = fields.next().unwrap_or("");
                version = match given.parse::<u32>() {
                    // Digits only: `+2` or `02` are not version numbers.
                    Ok(v) if (MIN_VERSION..=VERSION).contains(&v) && v.to_string() == given => v,
                    _ => return Err(err(ParseErrorKind::UnsupportedVersion(given.to_string()))),
                };
                no_more(&mut fields, "gk-bundle").map_err(err)?;
                header_seen = true;
                continue;
            }
            match record {
                "gk-bundle" => return Err(err(ParseErrorKind::DuplicateHeader)),
                "vm" => {
                    let name = text_field(&mut fields, "vm", "a NAME").map_err(err)?;
                    no_more(&mut fields, "vm").map_err(err)?;
                    if let Some(previous) = vm {
                        return Err(err(ParseErrorKind::DuplicateVm(previous)));
                    }
                    vm = Some(name);
                }
                "kernel" => {
                    if version < 2 {
                        return Err(err(ParseErrorKind::NeedsVersion {
                            record: "kernel",
                            needs: 2,
                            found: version,
                        }));
                    }
                    let kernel = parse_kernel(&mut fields).map_err(err)?;
                    if bundle.kernel.is_some() {
                        return Err(err(ParseErrorKind::DuplicateKernel));
                    }
                    bundle.kernel = Some(kernel);
                }
                "proc" => bundle.procs.push(parse_proc(&mut fields).map_err(err)?),
                "map" => {
                    let map = parse_map(&mut fields).map_err(err)?;
                    if map.build_id.is_some() && version < 3 {
                        return Err(err(ParseErrorKind::NeedsVersion {
                            record: "map ... buildid=",
                            needs: 3,
                            found: version,
                        }));
                    }
                    bundle.maps.push(map);
                }
                "useg" | "usym" if version < 3 => {
                    return Err(err(ParseErrorKind::NeedsVersion {
                        record: if record == "useg" { "useg" } else { "usym" },
                        needs: 3,
                        found: version,
                    }));
                }
                "useg" => bundle.usegs.push(parse_useg(&mut fields).map_err(err)?),
                "usym" => bundle.usyms.push(parse_usym(&mut fields).map_err(err)?),
                "kmap" => bundle.kmaps.push(parse_kmap(&mut fields).map_err(err)?),
                "ksym" => bundle.ksyms.push(parse_ksym(&mut fields).map_err(err)?),
                other => return Err(err(ParseErrorKind::UnknownRecord(other.to_string()))),
            }
        }
        let end = ParseError {
            line: last_line + 1,
            kind: ParseErrorKind::Empty,
        };
        if !header_seen {
            return Err(end);
        }
        bundle.vm = vm.ok_or(ParseError {
            kind: ParseErrorKind::MissingVm,
            ..end
        })?;
        Ok(bundle)
    }

    /// Writes the bundle in the text format; [`Bundle::parse`] reads it back unchanged.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    /// The format version [`Bundle::write`] writes: the lowest that holds this bundle.
    pub fn version(&self) -> u32 {
        if !self.usyms.is_empty()
            || !self.usegs.is_empty()
            || self.maps.iter().any(|m| m.build_id.is_some())
        {
            3
        } else if self.kernel.is_some() {
            2
        } else {
            1
        }
    }

    /// Writes the bundle in the text format.
    pub fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        writeln!(out, "gk-bundle {}", self.version())?;
        writeln!(out, "vm {}", Escaped(&self.vm))?;
        if let Some(k) = &self.kernel {
            write!(out, "kernel {} ", Escaped(&k.release))?;
            match k.text {
                Some(text) => writeln!(out, "text={text:#x}")?,
                None => writeln!(out, "text=?")?,
            }
        }
        for p in &self.procs {
            write!(out, "proc {} {} ", p.pid, Escaped(&p.comm))?;
            match p.cr3 {
                Some(cr3) => write!(out, "cr3={cr3:#x}")?,
                None => out.write_str("cr3=?")?,
            }
            if let Some(from) = p.from {
                write!(out, " from={from}")?;
            }
            if let Some(to) = p.to {
                write!(out, " to={to}")?;
            }
            out.write_char('\n')?;
        }
        for m in &self.maps {
            write!(
                out,
                "map {} {:x} {:x} {:x} {}",
                m.pid,
                m.start,
                m.end,
                m.offset,
                Escaped(&m.path)
            )?;
            if let Some(id) = &m.build_id {
                out.write_str(" buildid=")?;
                for b in id {
                    write!(out, "{b:02x}")?;
                }
            }
            out.write_char('\n')?;
        }
        for k in &self.kmaps {
            writeln!(out, "kmap {:x} {:x} {}", k.start, k.end, Escaped(&k.path))?;
        }
        for s in &self.ksyms {
            write!(out, "ksym {:x} {} {}", s.addr, s.kind, Escaped(&s.name))?;
            if let Some(module) = &s.module {
                write!(out, " {}", Escaped(module))?;
            }
            out.write_char('\n')?;
        }
        for g in &self.usegs {
            writeln!(
                out,
                "useg {} {:x} {:x} {:x}",
                Escaped(&g.path),
                g.offset,
                g.size,
                g.vaddr
            )?;
        }
        for s in &self.usyms {
            writeln!(
                out,
                "usym {} {:x} {:x} {}",
                Escaped(&s.path),
                s.addr,
                s.size,
                Escaped(&s.name)
            )?;
        }
        Ok(())
    }
}

/// Bundle text per VM picked out of a console log: every `[NAME] @gk REST` line adds
/// `REST` to NAME's bundle (as the hypervisor relays guest consoles); a bare `@gk REST`
/// line (a guest console read directly) goes to the name `""`. Other lines are ignored.
pub fn bundles_from_console(console: &str) -> BTreeMap<String, String> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        let (name, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((name, rest)) => (name, rest),
            None => ("", line),
        };
        if let Some(record) = rest.strip_prefix(CONSOLE_PREFIX) {
            let text = found.entry(name.to_string()).or_default();
            text.push_str(record);
            text.push('\n');
        }
    }
    found
}

/// [`bundles_from_console`], each bundle parsed.
pub fn parse_console(console: &str) -> BTreeMap<String, Result<Bundle, ParseError>> {
    bundles_from_console(console)
        .into_iter()
        .map(|(name, text)| {
            let parsed = Bundle::parse(&text);
            (name, parsed)
        })
        .collect()
}

type Fields<'a, 'b> = &'b mut dyn Iterator<Item = &'a str>;

fn parse_proc(fields: Fields) -> Result<Proc, ParseErrorKind> {
    let pid = dec_field(fields, "proc", "PID")?;
    let comm = text_field(fields, "proc", "a COMM")?;
    let (mut cr3, mut from, mut to) = (None, None, None);
    for option in fields {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let (slot, name) = match key {
            "cr3" => (&mut cr3, "cr3"),
            "from" => (&mut from, "from"),
            "to" => (&mut to, "to"),
            _ => return Err(ParseErrorKind::UnknownOption(option.to_string())),
        };
        if slot.is_some() {
            return Err(ParseErrorKind::DuplicateOption(name));
        }
        *slot = Some(match (name, value) {
            ("cr3", "?") => None,
            ("cr3", _) => Some(parse_hex(value, "cr3")?),
            _ => Some(parse_dec_or_hex(value, name)?),
        });
    }
    let cr3 = cr3.ok_or(ParseErrorKind::MissingCr3)?;
    Ok(Proc {
        pid,
        comm,
        cr3,
        from: from.flatten(),
        to: to.flatten(),
    })
}

fn parse_kernel(fields: Fields) -> Result<Kernel, ParseErrorKind> {
    let release = text_field(fields, "kernel", "a RELEASE")?;
    let text = match fields.next() {
        None => return Err(ParseErrorKind::BadKernelText(String::new())),
        Some("text=?") => None,
        Some(option) => match option.strip_prefix("text=") {
            Some(value) => Some(parse_hex(value, "text")?),
            None => return Err(ParseErrorKind::BadKernelText(option.to_string())),
        },
    };
    no_more(fields, "kernel")?;
    Ok(Kernel { release, text })
}

fn parse_map(fields: Fields) -> Result<Map, ParseErrorKind> {
    let pid = dec_field(fields, "map", "PID")?;
    let start = hex_field(fields, "map", "START")?;
    let end = hex_field(fields, "map", "END")?;
    let offset = hex_field(fields, "map", "OFFSET")?;
    let path = text_field(fields, "map", "a PATH")?;
    let build_id = match fields.next() {
        None => None,
        Some(option) => Some(parse_build_id(option)?),
    };
    no_more(fields, "map")?;
    check_range(start, end)?;
    Ok(Map {
        pid,
        start,
        end,
        offset,
        path,
        build_id,
    })
}

/// `buildid=HEX`: an even number of hex digits, 1 to 64 bytes.
fn parse_build_id(option: &str) -> Result<Vec<u8>, ParseErrorKind> {
    let bad = || ParseErrorKind::BadBuildId(option.to_string());
    let hex = option.strip_prefix("buildid=").ok_or_else(bad)?;
    if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 128 {
        return Err(bad());
    }
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

fn parse_useg(fields: Fields) -> Result<USeg, ParseErrorKind> {
    let path = text_field(fields, "useg", "a PATH")?;
    let offset = hex_field(fields, "useg", "OFFSET")?;
    let size = hex_field(fields, "useg", "SIZE")?;
    let vaddr = hex_field(fields, "useg", "VADDR")?;
    no_more(fields, "useg")?;
    Ok(USeg {
        path,
        offset,
        size,
        vaddr,
    })
}

fn parse_usym(fields: Fields) -> Result<USym, ParseErrorKind> {
    let path = text_field(fields, "usym", "a PATH")?;
    let addr = hex_field(fields, "usym", "ADDR")?;
    let size = hex_field(fields, "usym", "SIZE")?;
    let name = text_field(fields, "usym", "a NAME")?;
    no_more(fields, "usym")?;
    Ok(USym {
        path,
        addr,
        size,
        name,
    })
}

fn parse_kmap(fields: Fields) -> Result<KMap, ParseErrorKind> {
    let start = hex_field(fields, "kmap", "START")?;
    let end = hex_field(fields, "kmap", "END")?;
    let path = text_field(fields, "kmap", "a PATH")?;
    no_more(fields, "kmap")?;
    check_range(start, end)?;
    Ok(KMap { start, end, path })
}

fn parse_ksym(fields: Fields) -> Result<KSym, ParseErrorKind> {
    let addr = hex_field(fields, "ksym", "ADDR")?;
    let kind = fields.next().ok_or(ParseErrorKind::MissingField {
        record: "ksym",
        field: "a TYPE",
    })?;
    let mut chars = kind.chars();
    let kind = match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => c,
        _ => return Err(ParseErrorKind::BadSymbolType(kind.to_string())),
    };
    let name = text_field(fields, "ksym", "a NAME")?;
    let module = match fields.next() {
        None => None,
        Some(m) => {
            let bare = m
                .strip_prefix('[')
                .and_then(|m| m.strip_suffix(']'))
                .unwrap_or(m);
            // `[]` names no module: the writer would drop it, so read it as none.
            Some(unescape(bare)?).filter(|m| !m.is_empty())
        }
    };
    no_more(fields, "ksym")?;
    Ok(KSym {
        addr,
        kind,
        name,
        module,
    })
}

fn no_more(fields: Fields, record: &'static str) -> Result<(), ParseErrorKind> {
    match fields.next() {
        None => Ok(()),
        Some(extra) => Err(ParseErrorKind::ExtraField {
            record,
            extra: extra.to_string(),
        }),
    }
}

fn check_range(start: u64, end: u64) -> Result<(), ParseErrorKind> {
    if start < end {
        Ok(())
    } else {
        Err(ParseErrorKind::EmptyRange { start, end })
    }
}

fn next_field<'a>(
    fields: &mut dyn Iterator<Item = &'a str>,
    record: &'static str,
    field: &'static str,
) -> Result<&'a str, ParseErrorKind> {
    fields
        .next()
        .ok_or(ParseErrorKind::MissingField { record, field })
}

fn text_field(
    fields: Fields,
    record: &'static str,
    field: &'static str,
) -> Result<String, ParseErrorKind> {
    unescape(next_field(fields, record, field)?)
}

fn hex_field(
    fields: Fields,
    record: &'static str,
    field: &'static str,
) -> Result<u64, ParseErrorKind> {
    parse_hex(next_field(fields, record, field)?, field)
}

fn dec_field(
    fields: Fields,
    record: &'static str,
    field: &'static str,
) -> Result<u32, ParseErrorKind> {
    let value = next_field(fields, record, field)?;
    value.parse().map_err(|_| ParseErrorKind::BadNumber {
        field,
        value: value.to_string(),
        radix: "decimal",
    })
}

fn parse_hex(value: &str, field: &'static str) -> Result<u64, ParseErrorKind> {
    let digits = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .unwrap_or(value);
    // from_str_radix accepts a leading '+'; the format does not.
    if digits.starts_with('+') {
        return Err(bad_hex(value, field));
    }
    u64::from_str_radix(digits, 16).map_err(|_| bad_hex(value, field))
}

fn bad_hex(value: &str, field: &'static str) -> ParseErrorKind {
    ParseErrorKind::BadNumber {
        field,
        value: value.to_string(),
        radix: "hex",
    }
}

fn parse_dec_or_hex(value: &str, field: &'static str) -> Result<u64, ParseErrorKind> {
    if value.starts_with("0x") || value.starts_with("0X") {
        return parse_hex(value, field);
    }
    if value.starts_with('+') {
        return Err(ParseErrorKind::BadNumber {
            field,
            value: value.to_string(),
            radix: "decimal",
        });
    }
    value.parse().map_err(|_| ParseErrorKind::BadNumber {
        field,
        value: value.to_string(),
        radix: "decimal",
    })
}

fn needs_escape(b: u8) -> bool {
    b <= b' ' || b == b'#' || b == b'\\' || b == 0x7f
}

/// A text field as written: separators, `#`, `\` and control bytes as `\xHH`.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match u8::try_from(c) {
                Ok(b) if needs_escape(b) => write!(f, "\\x{b:02x}")?,
                _ => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Escapes a text field the way the writer does (for other tools that print bundle lines).
pub fn escape(text: &str) -> String {
    Escaped(text).to_string()
}

fn unescape(field: &str) -> Result<String, ParseErrorKind> {
    if !field.contains('\\') {
        return Ok(field.to_string());
    }
    let bad = || ParseErrorKind::BadEscape(field.to_string());
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 4).ok_or_else(bad)?;
        let digits = match hex {
            [b'x', hi, lo] => [*hi, *lo],
            _ => return Err(bad()),
        };
        let digits = std::str::from_utf8(&digits).map_err(|_| bad())?;
        if digits.starts_with('+') {
            return Err(bad());
        }
        out.push(u8::from_str_radix(digits, 16).map_err(|_| bad())?);
        i += 4;
    }
    String::from_utf8(out).map_err(|_| ParseErrorKind::BadUtf8(field.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# written by hand
gk-bundle 1
vm web1
proc 1 init cr3=0x1234000 from=100 to=0x200
proc 42 kworker/0:1 cr3=?   # kernel thread
map 42 400000 452000 0 /usr/bin/foo
map 42 7f0000001000 7f0000002000 1000 /lib/x86_64-linux-gnu/libc.so.6
kmap ffffffff81000000 ffffffff83000000 vmlinux
ksym ffffffff81000000 T _text
ksym ffffffffc0000000 t ext4_fill_super [ext4]
";

    fn sample() -> Bundle {
        Bundle {
            vm: "web1".into(),
            procs: vec![
                Proc {
                    pid: 1,
                    comm: "init".into(),
                    cr3: Some(0x123_4000),
                    from: Some(100),
                    to: Some(0x200),
                },
                Proc {
                    pid: 42,
                    comm: "kworker/0:1".into(),
                    cr3: None,
                    from: None,
                    to: None,
                },
            ],
            maps: vec![
                Map {
                    pid: 42,
                    start: 0x40_0000,
                    end: 0x45_2000,
                    offset: 0,
                    path: "/usr/bin/foo".into(),
                    build_id: None,
                },
                Map {
                    pid: 42,
                    start: 0x7f00_0000_1000,
                    end: 0x7f00_0000_2000,
                    offset: 0x1000,
                    path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                    build_id: None,
                },
            ],
            kmaps: vec![KMap {
                start: 0xffff_ffff_8100_0000,
                end: 0xffff_ffff_8300_0000,
                path: "vmlinux".into(),
            }],
            ksyms: vec![
                KSym {
                    addr: 0xffff_ffff_8100_0000,
                    kind: 'T',
                    name: "_text".into(),
                    module: None,
                },
                KSym {
                    addr: 0xffff_ffff_c000_0000,
                    kind: 't',
                    name: "ext4_fill_super".into(),
                    module: Some("ext4".into()),
                },
            ],
            kernel: None,
            usegs: Vec::new(),
            usyms: Vec::new(),
        }
    }

    #[test]
    fn parses_every_record_kind() {
        assert_eq!(Bundle::parse(SAMPLE), Ok(sample()));
    }

    #[test]
    fn writer_output_is_exact_and_round_trips() {
        let text = sample().to_text();
        assert_eq!(
            text,
            "gk-bundle 1\nvm web1\n\
             proc 1 init cr3=0x1234000 from=100 to=512\n\
             proc 42 kworker/0:1 cr3=?\n\
             map 42 400000 452000 0 /usr/bin/foo\n\
             map 42 7f0000001000 7f0000002000 1000 /lib/x86_64-linux-gnu/libc.so.6\n\
             kmap ffffffff81000000 ffffffff83000000 vmlinux\n\
             ksym ffffffff81000000 T _text\n\
             ksym ffffffffc0000000 t ext4_fill_super ext4\n"
        );
        assert_eq!(Bundle::parse(&text), Ok(sample()));
    }

    #[test]
    fn empty_module_brackets_read_as_no_module() {
        // Found by the `bundle` fuzz target: `[]` used to parse as Some("") and not round-trip.
        let b = Bundle::parse("gk-bundle 1\nvm v\nksym ffff T f []\n").unwrap();
        assert_eq!(b.ksyms[0].module, None);
        assert_eq!(Bundle::parse(&b.to_text()), Ok(b));
    }

    #[test]
    fn awkward_text_fields_round_trip() {
        let mut b = sample();
        b.vm = "my vm#2".into();
        b.procs[0].comm = "Web Content".into();
        b.maps[0].path = "/tmp/a b\\c#d\te (deleted)".into();
        b.ksyms[0].name = "überfunc".into();
        let text = b.to_text();
        assert!(text.contains("vm my\\x20vm\\x232\n"), "{text}");
        assert!(text.contains("proc 1 Web\\x20Content cr3="), "{text}");
        assert!(
            text.contains(" /tmp/a\\x20b\\x5cc\\x23d\\x09e\\x20(deleted)\n"),
            "{text}"
        );
        assert_eq!(Bundle::parse(&text), Ok(b));
    }

    #[test]
    fn cr3_key_masks_pcid_kpti_noflush_and_high_bits() {
        let pgd_pa = 0x1234_2000; // __pa(mm->pgd): 8 KiB aligned
        // No PCID, no KPTI: CR3 is the root itself.
        assert_eq!(cr3_key(pgd_pa), pgd_pa);
        // KPTI user half (bit 12) without PCID.
        assert_eq!(cr3_key(pgd_pa | 1 << 12), pgd_pa);
        // PCID only (kernel ASID 1 -> PCID 2), with the no-flush bit of a CR3 write.
        assert_eq!(cr3_key(pgd_pa | 0x002 | 1 << 63), pgd_pa);
        // KPTI and PCID: user PCID has bit 11 set, user half bit 12.
        assert_eq!(cr3_key(pgd_pa | 1 << 12 | 0x802 | 1 << 63), pgd_pa);
        // Bits 52-62 (reserved, LAM on new CPUs) are no part of the root.
        assert_eq!(cr3_key(pgd_pa | 1 << 61 | 1 << 62 | 1 << 52), pgd_pa);
        // The highest root a 52-bit MAXPHYADDR allows survives.
        assert_eq!(
            cr3_key(0x000f_ffff_ffff_e000 | 0xfff),
            0x000f_ffff_ffff_e000
        );
        assert_eq!(normalize_cr3(0x8000_0000_1234_3005), 0x1234_2000);
        let p = Proc {
            pid: 1,
            comm: "a".into(),
            cr3: Some(0x5003),
            from: None,
            to: None,
        };
        assert_eq!(p.cr3_key(), Some(0x4000));
    }

    #[test]
    fn version_2_kernel_line_round_trips_and_version_1_stays_1() {
        let v1 = sample().to_text();
        assert!(v1.starts_with("gk-bundle 1\n"), "{v1}");
        let mut b = sample();
        b.kernel = Some(Kernel {
            release: "6.1.0-57-amd64".into(),
            text: Some(0xffff_ffff_9a00_0000),
        });
        let text = b.to_text();
        assert!(
            text.starts_with(
                "gk-bundle 2\nvm web1\nkernel 6.1.0-57-amd64 text=0xffffffff9a000000\nproc 1 init "
            ),
            "{text}"
        );
        assert_eq!(Bundle::parse(&text), Ok(b.clone()));
        b.kernel = Some(Kernel {
            release: "6.1 custom".into(),
            text: None,
        });
        let text = b.to_text();
        assert!(text.contains("\nkernel 6.1\\x20custom text=?\n"), "{text}");
        assert_eq!(Bundle::parse(&text), Ok(b));
        // The kernel line may come anywhere after the header, and accepts bare hex.
        let late = Bundle::parse(
            "gk-bundle 2\nproc 1 a cr3=0x2000\nkernel r text=ffffffff81000000\nvm v\n",
        )
        .unwrap();
        assert_eq!(
            late.kernel.map(|k| k.text),
            Some(Some(0xffff_ffff_8100_0000))
        );
    }

    #[test]
    fn version_3_build_ids_and_guest_symbols_round_trip() {
        let mut b = sample();
        b.maps[1].build_id = Some(vec![0x4f, 0x00, 0xab, 0xcd]);
        b.usegs.push(USeg {
            path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
            offset: 0x1000,
            size: 0x2000,
            vaddr: 0x1000,
        });
        b.usyms.push(USym {
            path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
            addr: 0x1040,
            size: 0x20,
            name: "memcpy".into(),
        });
        b.usyms.push(USym {
            path: "/opt/my app".into(),
            addr: 0x40_1000,
            size: 0,
            name: "operator new(unsigned long)".into(),
        });
        let text = b.to_text();
        assert!(text.starts_with("gk-bundle 3\n"), "{text}");
        assert!(
            text.contains(
                "\nmap 42 7f0000001000 7f0000002000 1000 /lib/x86_64-linux-gnu/libc.so.6 buildid=4f00abcd\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nmap 42 400000 452000 0 /usr/bin/foo\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "useg /lib/x86_64-linux-gnu/libc.so.6 1000 2000 1000\n\
                 usym /lib/x86_64-linux-gnu/libc.so.6 1040 20 memcpy\n\
                 usym /opt/my\\x20app 401000 0 operator\\x20new(unsigned\\x20long)\n"
            ),
            "{text}"
        );
        assert_eq!(Bundle::parse(&text), Ok(b.clone()));
        // Upper-case hex reads too; it is written lower-case.
        let upper = text.replace("buildid=4f00abcd", "buildid=4F00ABCD");
        assert_eq!(Bundle::parse(&upper), Ok(b.clone()));
        // A build id alone needs 3; so do usym lines alone; without either: 1 or 2.
        b.usyms.clear();
        b.usegs.clear();
        assert_eq!(b.version(), 3);
        b.maps[1].build_id = None;
        assert_eq!(b.version(), 1);
        b.usyms.push(USym {
            path: "/x".into(),
            addr: 1,
            size: 1,
            name: "f".into(),
        });
        assert_eq!(b.version(), 3);
    }

    fn error(text: &str) -> String {
        match Bundle::parse(text) {
            Ok(b) => panic!("parsed {b:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    #[rustfmt::skip] // one case a line reads better as a table
    fn errors_name_the_line_and_the_problem() {
        let h = "gk-bundle 1\nvm a\n";
        let cases: &[(String, &str)] = &[
            ("".into(), "line 1: no `gk-bundle 3` (or 1) header (the bundle is empty)"),
            ("# only\n\n".into(), "line 3: no `gk-bundle 3` (or 1) header (the bundle is empty)"),
            ("vm a\n".into(), "line 1: expected the header `gk-bundle 3` (or 1) before any record, found `vm`"),
            ("gk-bundle 4\n".into(), "line 1: unsupported bundle version `4` (this reader knows 1 to 3)"),
            ("gk-bundle 0\n".into(), "line 1: unsupported bundle version `0` (this reader knows 1 to 3)"),
            ("gk-bundle +2\n".into(), "line 1: unsupported bundle version `+2` (this reader knows 1 to 3)"),
            ("gk-bundle 02\n".into(), "line 1: unsupported bundle version `02` (this reader knows 1 to 3)"),
            ("gk-bundle\n".into(), "line 1: unsupported bundle version `` (this reader knows 1 to 3)"),
            (format!("{h}kernel 6.1 text=0x1000\n"), "line 3: `kernel` needs `gk-bundle 2` (this bundle says 1)"),
            ("gk-bundle 2\nkernel\n".into(), "line 2: `kernel` needs a RELEASE"),
            ("gk-bundle 2\nkernel 6.1\n".into(), "line 2: kernel needs `text=0xADDR` (or `text=?`), found ``"),
            ("gk-bundle 2\nkernel 6.1 0x1000\n".into(), "line 2: kernel needs `text=0xADDR` (or `text=?`), found `0x1000`"),
            ("gk-bundle 2\nkernel 6.1 text=zz\n".into(), "line 2: text `zz` is not a valid hex number"),
            ("gk-bundle 2\nkernel 6.1 text=? x\n".into(), "line 2: `kernel` has an unexpected extra field `x`"),
            ("gk-bundle 2\nkernel 6.1 text=?\nkernel 6.1 text=?\n".into(), "line 3: second `kernel` line"),
            ("gk-bundle 1 x\n".into(), "line 1: `gk-bundle` has an unexpected extra field `x`"),
            ("gk-bundle 1\n".into(), "line 2: no `vm NAME` line"),
            (format!("{h}gk-bundle 1\n"), "line 3: second `gk-bundle` header"),
            (format!("{h}vm b\n"), "line 3: second `vm` line (the bundle already names VM `a`)"),
            ("gk-bundle 1\nvm\n".into(), "line 2: `vm` needs a NAME"),
            (format!("{h}thread 1\n"), "line 3: unknown record `thread` (expected vm, kernel, proc, map, kmap, ksym, useg or usym)"),
            (format!("{h}proc\n"), "line 3: `proc` needs PID"),
            (format!("{h}proc x a cr3=0x1\n"), "line 3: PID `x` is not a valid decimal number"),
            (format!("{h}proc -1 a cr3=0x1\n"), "line 3: PID `-1` is not a valid decimal number"),
            (format!("{h}proc 1\n"), "line 3: `proc` needs a COMM"),
            (format!("{h}proc 1 a\n"), "line 3: proc has no `cr3=` (write `cr3=?` when it is unknown)"),
            (format!("{h}proc 1 a cr3=0xzz\n"), "line 3: cr3 `0xzz` is not a valid hex number"),
            (format!("{h}proc 1 a cr3=\n"), "line 3: cr3 `` is not a valid hex number"),
            (format!("{h}proc 1 a cr3=0x1 cr3=0x2\n"), "line 3: proc option `cr3` given twice"),
            (format!("{h}proc 1 a cr3=0x1 pgd=3\n"), "line 3: unknown proc option `pgd=3` (expected cr3=, from= or to=)"),
            (format!("{h}proc 1 a cr3=0x1 from=+5\n"), "line 3: from `+5` is not a valid decimal number"),
            (format!("{h}proc 1 a cr3=0x1 to=99999999999999999999\n"), "line 3: to `99999999999999999999` is not a valid decimal number"),
            (format!("{h}map 1 2000 1000 0 /x\n"), "line 3: range start 0x2000 is not below end 0x1000"),
            (format!("{h}map 1 1000 2000 0\n"), "line 3: `map` needs a PATH"),
            (format!("{h}map 1 1000 2000 0 /x y\n"), "line 3: `y` is not a build id (`buildid=` and 1 to 64 bytes of hex)"),
            (format!("{h}map 1 1000 2000 0 /x buildid=ab\n"), "line 3: `map ... buildid=` needs `gk-bundle 3` (this bundle says 1)"),
            ("gk-bundle 3\nmap 1 1000 2000 0 /x y\n".into(), "line 2: `y` is not a build id (`buildid=` and 1 to 64 bytes of hex)"),
            ("gk-bundle 3\nmap 1 1000 2000 0 /x buildid=abc\n".into(), "line 2: `buildid=abc` is not a build id (`buildid=` and 1 to 64 bytes of hex)"),
            ("gk-bundle 3\nmap 1 1000 2000 0 /x buildid=\n".into(), "line 2: `buildid=` is not a build id (`buildid=` and 1 to 64 bytes of hex)"),
            ("gk-bundle 3\nmap 1 1000 2000 0 /x buildid=+a\n".into(), "line 2: `buildid=+a` is not a build id (`buildid=` and 1 to 64 bytes of hex)"),
            ("gk-bundle 3\nmap 1 1000 2000 0 /x buildid=ab z\n".into(), "line 2: `map` has an unexpected extra field `z`"),
            (format!("{h}usym /x 10 4 f\n"), "line 3: `usym` needs `gk-bundle 3` (this bundle says 1)"),
            ("gk-bundle 2\nuseg /x 0 10 0\n".into(), "line 2: `useg` needs `gk-bundle 3` (this bundle says 2)"),
            ("gk-bundle 3\nusym /x 10 4\n".into(), "line 2: `usym` needs a NAME"),
            ("gk-bundle 3\nusym /x 10 zz f\n".into(), "line 2: SIZE `zz` is not a valid hex number"),
            ("gk-bundle 3\nusym /x 10 4 f g\n".into(), "line 2: `usym` has an unexpected extra field `g`"),
            ("gk-bundle 3\nuseg /x 0 10\n".into(), "line 2: `useg` needs VADDR"),
            (format!("{h}map 1 10000000000000000 2000 0 /x\n"), "line 3: START `10000000000000000` is not a valid hex number"),
            (format!("{h}kmap 1000\n"), "line 3: `kmap` needs END"),
            (format!("{h}kmap 1000 1000 vmlinux\n"), "line 3: range start 0x1000 is not below end 0x1000"),
            (format!("{h}ksym ffff TT x\n"), "line 3: ksym type `TT` is not a single letter"),
            (format!("{h}ksym ffff T\n"), "line 3: `ksym` needs a NAME"),
            (format!("{h}ksym ffff T a m z\n"), "line 3: `ksym` has an unexpected extra field `z`"),
            (format!("{h}map 1 1000 2000 0 /x\\q\n"), "line 3: bad escape in `/x\\q` (expected \\xHH)"),
            (format!("{h}map 1 1000 2000 0 /x\\x2\n"), "line 3: bad escape in `/x\\x2` (expected \\xHH)"),
            (format!("{h}map 1 1000 2000 0 /x\\xff\n"), "line 3: `/x\\xff` is not UTF-8 once unescaped"),
        ];
        for (text, want) in cases {
            assert_eq!(&error(text), want, "input {text:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // Every prefix and every single-byte corruption of a valid bundle.
        let mut b = sample();
        b.kernel = Some(Kernel {
            release: "6.1.0-57-amd64".into(),
            text: Some(0xffff_ffff_8100_0000),
        });
        let text = b.to_text();
        for end in 0..=text.len() {
            if let Some(prefix) = text.get(..end) {
                let _ = Bundle::parse(prefix);
            }
        }
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for b in [b' ', b'#', b'\\', b'x', b'0', b'\n', b'=', 0xff] {
                let mut v = bytes.to_vec();
                v[i] = b;
                let _ = Bundle::parse(&String::from_utf8_lossy(&v));
            }
        }
    }

    #[test]
    fn console_lines_are_picked_per_vm() {
        let console = "\
hv: booting\r
[alpha] @gk gk-bundle 1\r
[beta] hello
[beta] @gk gk-bundle 1
[alpha] @gk vm alpha
[beta] @gk vm beta
[beta] @gk proc 2 sh cr3=0x4000
@gk gk-bundle 1
@gk vm bare
[gamma] no bundle here
[broken @gk vm x
";
        let found = bundles_from_console(console);
        assert_eq!(found.keys().collect::<Vec<_>>(), vec!["", "alpha", "beta"]);
        assert_eq!(found["alpha"], "gk-bundle 1\nvm alpha\n");
        assert_eq!(
            found["beta"],
            "gk-bundle 1\nvm beta\nproc 2 sh cr3=0x4000\n"
        );
        assert_eq!(found[""], "gk-bundle 1\nvm bare\n");
        let parsed = parse_console(console);
        assert_eq!(parsed["beta"].as_ref().map(|b| b.procs.len()), Ok(1));
        assert_eq!(parsed["alpha"].as_ref().map(|b| b.vm.as_str()), Ok("alpha"));
    }
}
