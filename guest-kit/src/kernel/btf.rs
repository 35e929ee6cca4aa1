//! Structure layouts from the kernel's BTF (`/sys/kernel/btf/vmlinux`, or the `.BTF`
//! section of a `vmlinux`), read with the `btfparse` crate.
//!
//! Offsets are absolute byte offsets from the start of the structure: members of
//! anonymous structs and unions (`mm_struct.pgd` sits in one since 5.x) are found
//! through them. [`KernelTypes::task_offsets`] also checks that each field has the type
//! the walk reads (a `list_head`, 4-byte ints, a 16-byte char array, pointers inside the
//! structure), so a kernel whose layout changed gives a clear error, not garbage.

use btfparse::{Offset, Readable, TypeInformation, TypeVariant};

use super::tasks::TaskOffsets;

/// Why BTF gave no usable layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("not readable BTF ({0})")]
    Parse(String),
    #[error("no `struct {0}` in BTF")]
    NoStruct(&'static str),
    #[error("`{strukt}.{field}`: {what}")]
    Field {
        strukt: &'static str,
        field: &'static str,
        what: String,
    },
}

/// The type of a structure member, as far as the walk cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// An integer (`size` bytes), or an enum.
    Int { size: u64 },
    /// A pointer.
    Pointer,
    /// An array of `count` elements of `elem_size` bytes each.
    Array { elem_size: u64, count: u64 },
    /// A struct or union (its name, if it has one).
    Struct { name: Option<String>, size: u64 },
    /// Anything else (functions, floats...).
    Other,
}

/// A member's place in its structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the outermost structure.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// What it is (typedefs, `const`, `volatile` resolved).
    pub ty: FieldType,
}

struct Bytes<'a>(&'a [u8]);

impl Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buffer.len())?))
            .ok_or_else(|| {
                btfparse::Error::new(
                    btfparse::ErrorKind::EOF,
                    "read beyond the end of the BTF data",
                )
            })?;
        buffer.copy_from_slice(src);
        Ok(())
    }
}

fn describe(e: &btfparse::Error) -> String {
    format!("{:?}: {}", e.kind(), e.message())
}

/// The parsed types of one BTF blob.
pub struct KernelTypes {
    info: TypeInformation,
}

impl KernelTypes {
    /// Parses raw BTF (starting with the `0xeB9F` magic).
    pub fn parse(btf: &[u8]) -> Result<Self, BtfError> {
        let info = TypeInformation::new(&Bytes(btf)).map_err(|e| BtfError::Parse(describe(&e)))?;
        Ok(KernelTypes { info })
    }

    /// The type id of the definition of `struct name` (not a forward declaration).
    fn struct_id(&self, name: &'static str) -> Result<(u32, u64), BtfError> {
        self.info
            .get()
            .iter()
            .find_map(|(id, t)| match t {
                TypeVariant::Struct(s) if s.name().as_deref() == Some(name) => {
                    Some((*id, *s.size() as u64))
                }
                _ => None,
            })
            .ok_or(BtfError::NoStruct(name))
    }

    /// Size of `struct name`.
    pub fn struct_size(&self, name: &'static str) -> Result<u64, BtfError> {
        Ok(self.struct_id(name)?.1)
    }

    /// Resolves typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<TypeVariant> {
        // Bounded: a qualifier chain longer than this is a loop.
        for _ in 0..64 {
            let t = self.info.from_id(id)?;
            id = match &t {
                TypeVariant::Typedef(x) => *x.tid(),
                TypeVariant::Const(x) => *x.tid(),
                TypeVariant::Volatile(x) => *x.tid(),
                TypeVariant::Restrict(x) => *x.tid(),
                TypeVariant::TypeTag(x) => *x.tid(),
                _ => return Some(t),
            };
        }
        None
    }

    fn field_type(&self, id: u32) -> FieldType {
        match self.resolve(id) {
            Some(TypeVariant::Int(i)) => FieldType::Int {
                size: *i.size() as u64,
            },
            Some(TypeVariant::Enum(e)) => FieldType::Int {
                size: *e.size() as u64,
            },
            Some(TypeVariant::Ptr(_)) => FieldType::Pointer,
            Some(TypeVariant::Array(a)) => FieldType::Array {
                elem_size: self.info.size_of(*a.element_tid()).unwrap_or(0) as u64,
                count: u64::from(*a.element_count()),
            },
            Some(TypeVariant::Struct(s)) => FieldType::Struct {
                name: s.name().clone(),
                size: *s.size() as u64,
            },
            Some(TypeVariant::Union(u)) => FieldType::Struct {
                name: u.name().clone(),
                size: *u.size() as u64,
            },
            _ => FieldType::Other,
        }
    }

    /// The member `field` of `struct strukt` (a name, found in nested anonymous structs
    /// and unions too).
    pub fn field(&self, strukt: &'static str, field: &'static str) -> Result<Field, BtfError> {
        let (id, struct_size) = self.struct_id(strukt)?;
        let bad = |what: String| BtfError::Field {
            strukt,
            field,
            what,
        };
        let (tid, offset) = self
            .info
            .offset_of(id, field)
            .map_err(|e| bad(describe(&e)))?;
        let Offset::ByteOffset(offset) = offset else {
            return Err(bad("a bitfield".to_string()));
        };
        let offset = u64::from(offset);
        let size = self.info.size_of(tid).map_err(|e| bad(describe(&e)))? as u64;
        if offset.checked_add(size).is_none_or(|end| end > struct_size) {
            return Err(bad(format!(
                "{size} bytes at offset {offset} do not fit in the {struct_size}-byte struct"
            )));
        }
        Ok(Field {
            offset,
            size,
            ty: self.field_type(tid),
        })
    }

    /// The offsets the task walk reads, each checked for the type it must have.
    pub fn task_offsets(&self) -> Result<TaskOffsets, BtfError> {
        let expect = |strukt, field, ok: &dyn Fn(&Field) -> bool, want: &str| {
            let f = self.field(strukt, field)?;
            if ok(&f) {
                Ok(f)
            } else {
                Err(BtfError::Field {
                    strukt,
                    field,
                    what: format!("expected {want}, found {:?} of {} bytes", f.ty, f.size),
                })
            }
        };
        let int4 = |f: &Field| f.ty == FieldType::Int { size: 4 };
        let ptr = |f: &Field| f.ty == FieldType::Pointer && f.size == 8;
        let list_head = |f: &Field| matches!(&f.ty, FieldType::Struct { name: Some(n), size: 16 } if n == "list_head");
        let comm = |f: &Field| matches!(f.ty, FieldType::Array { elem_size: 1, count } if (8..=64).contains(&count));
        let t = "task_struct";
        let comm_field = expect(t, "comm", &comm, "a char array")?;
        Ok(TaskOffsets {
            tasks: expect(t, "tasks", &list_head, "a struct list_head")?.offset,
            pid: expect(t, "pid", &int4, "a 4-byte int")?.offset,
            tgid: expect(t, "tgid", &int4, "a 4-byte int")?.offset,
            comm: comm_field.offset,
            comm_len: comm_field.size,
            flags: expect(t, "flags", &int4, "a 4-byte int")?.offset,
            mm: expect(t, "mm", &ptr, "a pointer")?.offset,
            active_mm: expect(t, "active_mm", &ptr, "a pointer")?.offset,
            mm_pgd: expect("mm_struct", "pgd", &ptr, "a pointer")?.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::synth;

    #[test]
    fn synthetic_btf_gives_the_layout_it_describes() {
        let types = KernelTypes::parse(&synth::btf()).unwrap();
        assert_eq!(types.task_offsets().unwrap(), synth::OFFSETS);
        // pgd sits in an anonymous struct at 0x20, itself at 0x28 in it.
        assert_eq!(
            types.field("mm_struct", "pgd").unwrap(),
            Field {
                offset: 0x48,
                size: 8,
                ty: FieldType::Pointer
            }
        );
        assert_eq!(
            types.field("task_struct", "comm").unwrap().ty,
            FieldType::Array {
                elem_size: 1,
                count: 16
            }
        );
        assert_eq!(types.struct_size("task_struct"), Ok(synth::TASK_SIZE));
    }

    #[test]
    fn missing_or_mistyped_fields_are_named() {
        let types = KernelTypes::parse(&synth::btf()).unwrap();
        assert_eq!(
            types.field("task_struct", "nope").unwrap_err().to_string(),
            "`task_struct.nope`: InvalidTypePath: Member 'nope' not found"
        );
        assert_eq!(
            types.field("cred", "uid").unwrap_err(),
            BtfError::NoStruct("cred")
        );
        // A task_struct whose pid is 8 bytes wide is refused.
        let odd = synth::btf_with_pid_size(8);
        let err = KernelTypes::parse(&odd)
            .unwrap()
            .task_offsets()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`task_struct.pid`: expected a 4-byte int, found Int { size: 8 }"),
            "{err}"
        );
        assert!(KernelTypes::parse(b"not btf").is_err());
        assert!(KernelTypes::parse(&[]).is_err());
    }

    #[test]
    fn truncated_btf_is_an_error_not_a_panic() {
        let b = synth::btf();
        for end in (0..b.len()).step_by(7) {
            let _ = KernelTypes::parse(&b[..end]);
        }
    }
}
