//! The task-walk offsets straight from raw BTF, in one pass and without building the
//! type graph: what `guest-kit watch` uses at startup.
//!
//! [`super::btf::KernelTypes`] (the `btfparse` crate) reads every type of the kernel's
//! BTF into owned structures: about 0.2 s natively, but some 12 s of guest CPU time
//! under Bochs (~50 M instructions/s), a third of a whole measurement. The walk needs
//! nine fields of two structures, so this module does only that: one pass records
//! where each type record starts (a `Vec<u32>` of ~130,000 entries for Debian's 6.1
//! kernel) and finds `struct task_struct` and `struct mm_struct` by name; members are
//! then looked up in those two records, through anonymous structs and unions, and
//! their types checked exactly as [`super::btf::KernelTypes::task_offsets`] checks
//! them. The tests hold both readers to the same answer on synthetic BTF and, in
//! `tests/real_kernel.rs`, on the real Debian kernel's BTF.
//!
//! Format: Documentation/bpf/btf.rst (header, type section, string section; type ids
//! from 1, each record a 12-byte `btf_type` plus kind-specific data).

use super::tasks::TaskOffsets;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Nesting of anonymous members followed at most (Linux nests two or three deep).
const MAX_DEPTH: usize = 8;

/// Why the scan found no usable layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("not BTF: {0}")]
    Format(String),
    #[error("no `struct {0}` in BTF")]
    NoStruct(&'static str),
    #[error("`{strukt}.{field}`: {what}")]
    Field {
        strukt: &'static str,
        field: &'static str,
        what: String,
    },
}

/// One BTF blob, indexed by type id.
pub struct BtfScan<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// `starts[id - 1]`: offset of type `id` in `types`.
    starts: Vec<u32>,
    task_struct: Option<u32>,
    mm_struct: Option<u32>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// A resolved member type, as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ty {
    Int(u32),
    Pointer,
    Array { elem: u32, count: u32 },
    Struct { name: Vec<u8>, size: u32 },
    Other,
}

impl<'a> BtfScan<'a> {
    /// Indexes `btf` (raw BTF, `0xeB9F` magic first).
    pub fn new(btf: &'a [u8]) -> Result<Self, ScanError> {
        let bad = |what: &str| ScanError::Format(what.to_string());
        let magic = btf.get(..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(bad("no 0xeB9F magic (a big-endian BTF is not supported)"));
        }
        let field = |at| u32_at(btf, at).ok_or_else(|| bad("header cut short"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|s| Some((s, s.checked_add(len)?)))
                .and_then(|(s, e)| btf.get(s..e))
                .ok_or_else(|| bad(&format!("{what} section outside the data")))
        };
        let types = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?;
        let mut scan = BtfScan {
            types,
            strings,
            starts: Vec::with_capacity(type_len / 24),
            task_struct: None,
            mm_struct: None,
        };
        let mut at = 0usize;
        while at < types.len() {
            let (name, info) = match (u32_at(types, at), u32_at(types, at + 4)) {
                (Some(n), Some(i)) if at + 12 <= types.len() => (n, i),
                _ => return Err(bad("type record cut short")),
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => return Err(bad(&format!("unknown type kind {other}"))),
            };
            let id = scan.starts.len() as u32 + 1;
            scan.starts.push(at as u32);
            if kind == KIND_STRUCT && name != 0 {
                match scan.name(name) {
                    b"task_struct" if scan.task_struct.is_none() => scan.task_struct = Some(id),
                    b"mm_struct" if scan.mm_struct.is_none() => scan.mm_struct = Some(id),
                    _ => {}
                }
            }
            at = at + 12 + extra;
            if at > types.len() {
                return Err(bad("type record cut short"));
            }
        }
        Ok(scan)
    }

    /// The NUL-terminated string at `off` (empty when out of bounds).
    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// `(name_off, info, size_or_type)` and the offset of the record of type `id`.
    fn record(&self, id: u32) -> Option<(u32, u32, u32, usize)> {
        let at = *self.starts.get((id as usize).checked_sub(1)?)? as usize;
        Some((
            u32_at(self.types, at)?,
            u32_at(self.types, at + 4)?,
            u32_at(self.types, at + 8)?,
            at,
        ))
    }

    /// The size in bytes of type `id` (typedefs and qualifiers followed).
    fn size_of(&self, mut id: u32) -> Option<u32> {
        for _ in 0..64 {
            let (_, info, st, at) = self.record(id)?;
            match (info >> 24) & 0x1f {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    return Some(st);
                }
                KIND_PTR => return Some(8),
                KIND_ARRAY => {
                    let elem = u32_at(self.types, at + 12)?;
                    let count = u32_at(self.types, at + 20)?;
                    return self.size_of(elem)?.checked_mul(count);
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = st
                }
                _ => return None,
            }
        }
        None
    }

    /// Type `id` with typedefs and qualifiers followed.
    fn resolve(&self, mut id: u32) -> Ty {
        for _ in 0..64 {
            let Some((name, info, st, at)) = self.record(id) else {
                return Ty::Other;
            };
            return match (info >> 24) & 0x1f {
                KIND_INT | KIND_ENUM | KIND_ENUM64 => Ty::Int(st),
                KIND_PTR => Ty::Pointer,
                KIND_ARRAY => match (u32_at(self.types, at + 12), u32_at(self.types, at + 20)) {
                    (Some(elem), Some(count)) => Ty::Array {
                        elem: self.size_of(elem).unwrap_or(0),
                        count,
                    },
                    _ => Ty::Other,
                },
                KIND_STRUCT | KIND_UNION => Ty::Struct {
                    name: self.name(name).to_vec(),
                    size: st,
                },
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = st;
                    continue;
                }
                _ => Ty::Other,
            };
        }
        Ty::Other
    }

    /// Byte offset and type id of member `field` of struct/union `id`, searching
    /// anonymous members depth first (as C name lookup does).
    fn member(&self, id: u32, field: &[u8], depth: usize) -> Result<Option<(u64, u32)>, String> {
        let Some((_, info, _, at)) = self.record(id) else {
            return Ok(None);
        };
        let kind = (info >> 24) & 0x1f;
        if kind != KIND_STRUCT && kind != KIND_UNION {
            return Ok(None);
        }
        let kflag = info >> 31 == 1;
        for i in 0..(info & 0xffff) as usize {
            let m = at + 12 + 12 * i;
            let (Some(name), Some(ty), Some(off)) = (
                u32_at(self.types, m),
                u32_at(self.types, m + 4),
                u32_at(self.types, m + 8),
            ) else {
                return Ok(None);
            };
            let (bits, bitfield) = if kflag {
                (off & 0xff_ffff, off >> 24)
            } else {
                (off, 0)
            };
            if name == 0 {
                if depth < MAX_DEPTH {
                    let inner = self.strip(ty);
                    if let Some((o, t)) = self.member(inner, field, depth + 1)? {
                        if !bits.is_multiple_of(8) {
                            return Err("inside a bitfield".to_string());
                        }
                        return Ok(Some((u64::from(bits / 8) + o, t)));
                    }
                }
                continue;
            }
            if self.name(name) == field {
                if bitfield != 0 || !bits.is_multiple_of(8) {
                    return Err("a bitfield".to_string());
                }
                return Ok(Some((u64::from(bits / 8), ty)));
            }
        }
        Ok(None)
    }

    /// `id` without typedefs and qualifiers (an anonymous member's struct or union).
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..64 {
            match self.record(id) {
                Some((_, info, st, _))
                    if matches!(
                        (info >> 24) & 0x1f,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = st
                }
                _ => return id,
            }
        }
        id
    }

    /// The offset of `strukt.field` after checking its type with `ok`.
    fn field(
        &self,
        strukt: &'static str,
        field: &'static str,
        want: &str,
        ok: impl Fn(&Ty, u32) -> bool,
    ) -> Result<(u64, u32), ScanError> {
        let id = match strukt {
            "task_struct" => self.task_struct,
            "mm_struct" => self.mm_struct,
            _ => None,
        }
        .ok_or(ScanError::NoStruct(strukt))?;
        let bad = |what: String| ScanError::Field {
            strukt,
            field,
            what,
        };
        let struct_size = self.record(id).map_or(0, |r| r.2);
        let (offset, ty) = self
            .member(id, field.as_bytes(), 0)
            .map_err(bad)?
            .ok_or_else(|| bad("no such member".to_string()))?;
        let size = self
            .size_of(ty)
            .ok_or_else(|| bad("a type without a size".to_string()))?;
        if offset + u64::from(size) > u64::from(struct_size) {
            return Err(bad(format!(
                "{size} bytes at offset {offset} do not fit in the {struct_size}-byte struct"
            )));
        }
        let resolved = self.resolve(ty);
        if !ok(&resolved, size) {
            return Err(bad(format!(
                "expected {want}, found {resolved:?} of {size} bytes"
            )));
        }
        Ok((offset, size))
    }

    /// The offsets the task walk reads, each checked for the type it must have (the
    /// checks of [`super::btf::KernelTypes::task_offsets`]).
    pub fn task_offsets(&self) -> Result<TaskOffsets, ScanError> {
        let int4 = |t: &Ty, _| *t == Ty::Int(4);
        let ptr = |t: &Ty, size| *t == Ty::Pointer && size == 8;
        let list_head =
            |t: &Ty, _| matches!(t, Ty::Struct { name, size: 16 } if name == b"list_head");
        let comm =
            |t: &Ty, _| matches!(t, Ty::Array { elem: 1, count } if (8..=64).contains(count));
        let t = "task_struct";
        let (comm_off, comm_len) = self.field(t, "comm", "a char array", comm)?;
        Ok(TaskOffsets {
            tasks: self.field(t, "tasks", "a struct list_head", list_head)?.0,
            pid: self.field(t, "pid", "a 4-byte int", int4)?.0,
            tgid: self.field(t, "tgid", "a 4-byte int", int4)?.0,
            comm: comm_off,
            comm_len: u64::from(comm_len),
            flags: self.field(t, "flags", "a 4-byte int", int4)?.0,
            mm: self.field(t, "mm", "a pointer", ptr)?.0,
            active_mm: self.field(t, "active_mm", "a pointer", ptr)?.0,
            mm_pgd: self.field("mm_struct", "pgd", "a pointer", ptr)?.0,
        })
    }

    /// Number of types.
    pub fn type_count(&self) -> usize {
        self.starts.len()
    }
}

/// [`BtfScan::task_offsets`] of raw BTF.
pub fn task_offsets(btf: &[u8]) -> Result<TaskOffsets, ScanError> {
    BtfScan::new(btf)?.task_offsets()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::synth;

    #[test]
    fn synthetic_btf_gives_the_layout_it_describes() {
        let btf = synth::btf();
        let scan = BtfScan::new(&btf).unwrap();
        assert_eq!(scan.task_offsets().unwrap(), synth::OFFSETS);
        // The forward declaration comes first; the definition is the one found.
        assert!(scan.task_struct.is_some());
        #[cfg(feature = "collect")]
        assert_eq!(
            crate::kernel::btf::KernelTypes::parse(&btf)
                .unwrap()
                .task_offsets()
                .unwrap(),
            scan.task_offsets().unwrap()
        );
    }

    #[test]
    fn mistyped_or_missing_fields_are_named() {
        let err = task_offsets(&synth::btf_with_pid_size(8)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`task_struct.pid`: expected a 4-byte int, found Int(8)"),
            "{err}"
        );
        let mut w = synth::BtfWriter::new();
        w.int("int", 4, true);
        assert_eq!(
            task_offsets(&w.finish()).unwrap_err(),
            ScanError::NoStruct("task_struct")
        );
        assert!(task_offsets(b"not btf").is_err());
        assert!(task_offsets(&[]).is_err());
    }

    #[test]
    fn truncated_or_corrupt_btf_is_an_error_not_a_panic() {
        let b = synth::btf();
        for end in 0..b.len() {
            let _ = task_offsets(&b[..end]);
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0xff;
            let _ = task_offsets(&c);
        }
    }
}
