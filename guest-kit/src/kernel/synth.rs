//! Synthetic kernels for tests (here and in other crates): a small BTF blob describing
//! `task_struct`/`mm_struct` with the layout [`OFFSETS`], an ELF core file like
//! `/proc/kcore` holding a process list, and the matching kallsyms text.
//!
//! The addresses are those of a KASLR kernel: `_text` at [`TEXT`], the direct map at
//! [`PAGE_OFFSET_BASE`], `phys_base` [`PHYS_BASE`].

use super::tasks::{PF_KTHREAD, START_KERNEL_MAP, TaskOffsets};

/// Runtime `_text` of the synthetic kernel.
pub const TEXT: u64 = 0xffff_ffff_9a00_0000;
/// Its direct-map base (`page_offset_base`'s value).
pub const PAGE_OFFSET_BASE: u64 = 0xffff_9a3c_0000_0000;
/// Its `phys_base`: `_text` is at physical `TEXT - START_KERNEL_MAP + PHYS_BASE`.
pub const PHYS_BASE: u64 = 0x2000_0000;
/// Size of the kernel-image segment.
pub const IMAGE_SIZE: u64 = 0x1_0000;
/// Size of the direct-map segment (physical 0 up).
pub const RAM_SIZE: u64 = 0x10_0000;

/// `init_task`, `init_mm`, the variables and `swapper_pg_dir` in the image.
pub const INIT_TASK: u64 = TEXT + 0x1000;
pub const INIT_MM: u64 = TEXT + 0x2000;
pub const PAGE_OFFSET_BASE_VAR: u64 = TEXT + 0x3000;
pub const PHYS_BASE_VAR: u64 = TEXT + 0x3008;
pub const SWAPPER_PG_DIR: u64 = TEXT + 0x4000;

/// The layout [`btf`] describes.
pub const OFFSETS: TaskOffsets = TaskOffsets {
    tasks: 0x40,
    pid: 0x80,
    tgid: 0x84,
    comm: 0x100,
    comm_len: 16,
    flags: 0x10,
    mm: 0x50,
    active_mm: 0x58,
    mm_pgd: 0x48,
};
/// `sizeof(struct task_struct)` in [`btf`].
pub const TASK_SIZE: u64 = 0x200;
/// `sizeof(struct mm_struct)` in [`btf`].
pub const MM_SIZE: u64 = 0x100;

/// The physical address of a kernel-image address of the synthetic kernel.
pub const fn pa_symbol(vaddr: u64) -> u64 {
    vaddr - START_KERNEL_MAP + PHYS_BASE
}

/// A minimal BTF writer (format: Documentation/bpf/btf.rst).
#[derive(Debug, Clone)]
pub struct BtfWriter {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_CONST: u32 = 10;

impl Default for BtfWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BtfWriter {
    /// An empty type list (type 0 is `void`).
    pub fn new() -> Self {
        BtfWriter {
            types: Vec::new(),
            strings: vec![0],
            count: 0,
        }
    }

    /// The id the next type will get.
    pub fn next_id(&self) -> u32 {
        self.count + 1
    }

    fn name(&mut self, name: Option<&str>) -> u32 {
        let Some(name) = name else { return 0 };
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn put(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }

    fn header(&mut self, name: Option<&str>, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
        let name = self.name(name);
        self.put(name);
        self.put((kind << 24) | vlen);
        self.put(size_or_type);
        self.count += 1;
        self.count
    }

    /// An integer type of `size` bytes.
    pub fn int(&mut self, name: &str, size: u32, signed: bool) -> u32 {
        let id = self.header(Some(name), KIND_INT, 0, size);
        self.put((u32::from(signed) << 24) | (size * 8));
        id
    }

    /// A pointer to `to`.
    pub fn ptr(&mut self, to: u32) -> u32 {
        self.header(None, KIND_PTR, 0, to)
    }

    /// `const to`.
    pub fn constant(&mut self, to: u32) -> u32 {
        self.header(None, KIND_CONST, 0, to)
    }

    /// An array of `n` elements `elem` indexed by `index`.
    pub fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        let id = self.header(None, KIND_ARRAY, 0, 0);
        self.put(elem);
        self.put(index);
        self.put(n);
        id
    }

    /// `typedef to name`.
    pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.header(Some(name), KIND_TYPEDEF, 0, to)
    }

    /// `struct name;`
    pub fn fwd(&mut self, name: &str) -> u32 {
        self.header(Some(name), KIND_FWD, 0, 0)
    }

    /// A struct (anonymous without a name) of `size` bytes: members `(name, type, byte
    /// offset)`, a member without a name being an anonymous struct or union.
    pub fn structure(
        &mut self,
        name: Option<&str>,
        size: u32,
        members: &[(Option<&str>, u32, u32)],
    ) -> u32 {
        let id = self.header(name, KIND_STRUCT, members.len() as u32, size);
        for (member, ty, offset) in members {
            let n = self.name(*member);
            self.put(n);
            self.put(*ty);
            self.put(offset * 8);
        }
        id
    }

    /// The BTF blob: header, types, strings.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        let type_len = self.types.len() as u32;
        for v in [24, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// BTF of the synthetic kernel: `struct task_struct` and `struct mm_struct` laid out as
/// [`OFFSETS`] says, with `mm_struct.pgd` inside an anonymous struct (as in Linux 6.x),
/// `pid_t` a typedef, a forward declaration of `task_struct` before its definition.
pub fn btf() -> Vec<u8> {
    btf_with_pid_size(4)
}

/// [`btf`] with `task_struct.pid` of another size (to test the type checks).
pub fn btf_with_pid_size(pid_size: u32) -> Vec<u8> {
    let mut w = BtfWriter::new();
    let int = w.int("int", 4, true);
    let uint = w.int("unsigned int", 4, false);
    let ch = w.int("char", 1, true);
    let ulong = w.int("long unsigned int", 8, false);
    let wide = w.int("long int", pid_size, true);
    w.fwd("task_struct");
    let list_head = w.next_id();
    let list_ptr = list_head + 1;
    w.structure(
        Some("list_head"),
        16,
        &[(Some("next"), list_ptr, 0), (Some("prev"), list_ptr, 8)],
    );
    w.ptr(list_head);
    let pid_t = w.typedef("pid_t", if pid_size == 4 { int } else { wide });
    let comm = w.array(ch, int, 16);
    let pgd_inner = w.structure(None, 8, &[(Some("pgd"), ulong, 0)]);
    let pgd_t = w.typedef("pgd_t", pgd_inner);
    let pgd_ptr = w.ptr(pgd_t);
    let anon = w.structure(
        None,
        0x80,
        &[(Some("mm_count"), int, 0), (Some("pgd"), pgd_ptr, 0x28)],
    );
    let mm = w.structure(
        Some("mm_struct"),
        MM_SIZE as u32,
        &[(Some("task_size"), ulong, 0), (None, anon, 0x20)],
    );
    let mm_ptr = w.ptr(mm);
    let const_uint = w.constant(uint);
    let o = OFFSETS;
    w.structure(
        Some("task_struct"),
        TASK_SIZE as u32,
        &[
            (Some("flags"), const_uint, o.flags as u32),
            (Some("tasks"), list_head, o.tasks as u32),
            (Some("mm"), mm_ptr, o.mm as u32),
            (Some("active_mm"), mm_ptr, o.active_mm as u32),
            (Some("pid"), pid_t, o.pid as u32),
            (Some("tgid"), pid_t, o.tgid as u32),
            (Some("comm"), comm, o.comm as u32),
        ],
    );
    w.finish()
}

/// An ELF core image under construction: segments of kernel memory.
#[derive(Debug, Clone, Default)]
pub struct CoreImage {
    segments: Vec<(u64, Option<u64>, Vec<u8>)>,
}

impl CoreImage {
    /// Adds a zeroed segment of `size` bytes at `vaddr` (`paddr` as kcore's `p_paddr`).
    pub fn segment(&mut self, vaddr: u64, paddr: Option<u64>, size: u64) {
        self.segments.push((vaddr, paddr, vec![0; size as usize]));
    }

    /// Writes `bytes` at `vaddr`. Panics outside the segments (a broken test).
    pub fn write(&mut self, vaddr: u64, bytes: &[u8]) {
        let (base, _, data) = self
            .segments
            .iter_mut()
            .find(|(v, _, d)| vaddr >= *v && vaddr - *v + bytes.len() as u64 <= d.len() as u64)
            .unwrap_or_else(|| panic!("{vaddr:#x} is in no segment"));
        let at = (vaddr - *base) as usize;
        data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a little-endian `u64`.
    pub fn write_u64(&mut self, vaddr: u64, v: u64) {
        self.write(vaddr, &v.to_le_bytes());
    }

    /// Writes a little-endian `u32`.
    pub fn write_u32(&mut self, vaddr: u64, v: u32) {
        self.write(vaddr, &v.to_le_bytes());
    }

    /// The ELF core file: header, a PT_NOTE and one PT_LOAD per segment, then the data.
    pub fn to_elf(&self) -> Vec<u8> {
        let phnum = self.segments.len() + 1;
        let mut data_off = 64 + 56 * phnum as u64;
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF\x02\x01\x01");
        out.resize(16, 0);
        let half = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_le_bytes());
        half(&mut out, 4); // e_type ET_CORE
        half(&mut out, 62); // e_machine EM_X86_64
        out.extend_from_slice(&1u32.to_le_bytes()); // e_version
        for v in [0u64, 64, 0] {
            out.extend_from_slice(&v.to_le_bytes()); // e_entry, e_phoff, e_shoff
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for v in [64u16, 56, phnum as u16, 64, 0, 0] {
            half(&mut out, v); // ehsize phentsize phnum shentsize shnum shstrndx
        }
        let phdr = |out: &mut Vec<u8>, ty: u32, off: u64, vaddr: u64, paddr: u64, size: u64| {
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&7u32.to_le_bytes()); // PF_R | PF_W | PF_X
            for v in [off, vaddr, paddr, size, size, 0x1000] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        phdr(&mut out, 4, 0, 0, 0, 0); // PT_NOTE, empty
        for (vaddr, paddr, data) in &self.segments {
            phdr(
                &mut out,
                1,
                data_off,
                *vaddr,
                paddr.unwrap_or(u64::MAX),
                data.len() as u64,
            );
            data_off += data.len() as u64;
        }
        for (_, _, data) in &self.segments {
            out.extend_from_slice(data);
        }
        out
    }
}

/// One task to put in a [`FakeKernel`].
#[derive(Debug, Clone, Copy)]
pub struct FakeTask<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub kthread: bool,
    /// `mm` (a vaddr from [`FakeKernel::add_mm`]), 0 for none.
    pub mm: u64,
    /// `active_mm`, 0 for none.
    pub active_mm: u64,
}

/// A synthetic running kernel: image and direct map, `init_task` heading the list.
#[derive(Debug, Clone)]
pub struct FakeKernel {
    /// Its memory.
    pub core: CoreImage,
    /// `task_struct`s after `init_task`, in list order.
    pub tasks: Vec<u64>,
    next_free: u64,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeKernel {
    /// `init_task` (pid 0, `swapper/0`, a kernel thread on `init_mm`) alone in its list;
    /// `init_mm.pgd = swapper_pg_dir`; the variables `page_offset_base` and `phys_base`.
    pub fn new() -> Self {
        let mut core = CoreImage::default();
        core.segment(TEXT, Some(pa_symbol(TEXT)), IMAGE_SIZE);
        core.segment(PAGE_OFFSET_BASE, Some(0), RAM_SIZE);
        core.write_u64(PAGE_OFFSET_BASE_VAR, PAGE_OFFSET_BASE);
        core.write_u64(PHYS_BASE_VAR, PHYS_BASE);
        core.write_u64(INIT_MM + OFFSETS.mm_pgd, SWAPPER_PG_DIR);
        let mut k = FakeKernel {
            core,
            tasks: Vec::new(),
            next_free: 0x1_0000,
        };
        let head = INIT_TASK + OFFSETS.tasks;
        k.core.write_u64(head, head);
        k.core.write_u64(head + 8, head);
        k.fill(
            INIT_TASK,
            &FakeTask {
                pid: 0,
                comm: "swapper/0",
                kthread: true,
                mm: 0,
                active_mm: INIT_MM,
            },
        );
        k
    }

    fn alloc(&mut self, size: u64) -> u64 {
        let at = self.next_free;
        self.next_free += size.next_multiple_of(0x1000);
        assert!(self.next_free <= RAM_SIZE, "synthetic RAM full");
        PAGE_OFFSET_BASE + at
    }

    fn fill(&mut self, addr: u64, t: &FakeTask<'_>) {
        let o = OFFSETS;
        self.core.write_u32(addr + o.pid, t.pid);
        self.core.write_u32(addr + o.tgid, t.pid);
        self.core.write_u32(
            addr + o.flags,
            if t.kthread {
                PF_KTHREAD | 0x40
            } else {
                0x40_0100
            },
        );
        self.core.write_u64(addr + o.mm, t.mm);
        self.core.write_u64(addr + o.active_mm, t.active_mm);
        let mut comm = [0u8; 16];
        let n = t.comm.len().min(15);
        comm[..n].copy_from_slice(&t.comm.as_bytes()[..n]);
        self.core.write(addr + o.comm, &comm);
    }

    /// A new `mm_struct` whose `pgd` is the direct-map address of physical `pgd_pa`.
    pub fn add_mm(&mut self, pgd_pa: u64) -> u64 {
        let mm = self.alloc(MM_SIZE);
        self.core
            .write_u64(mm + OFFSETS.mm_pgd, PAGE_OFFSET_BASE + pgd_pa);
        mm
    }

    /// Appends a task to the list (as `list_add_tail(&p->tasks, &init_task.tasks)`).
    pub fn add_task(&mut self, t: &FakeTask<'_>) -> u64 {
        let addr = self.alloc(TASK_SIZE);
        self.fill(addr, t);
        let head = INIT_TASK + OFFSETS.tasks;
        let node = addr + OFFSETS.tasks;
        let tail = self.tasks.last().map_or(head, |a| a + OFFSETS.tasks);
        self.core.write_u64(node, head);
        self.core.write_u64(node + 8, tail);
        self.core.write_u64(tail, node);
        self.core.write_u64(head + 8, node);
        self.tasks.push(addr);
        addr
    }

    /// The ELF core file.
    pub fn kcore(&self) -> Vec<u8> {
        self.core.to_elf()
    }

    /// `/proc/kallsyms` of this kernel (as root).
    pub fn kallsyms() -> String {
        [
            (TEXT, 'T', "_text"),
            (TEXT + 0x100, 'T', "do_syscall_64"),
            (TEXT + 0x200, 't', "schedule"),
            (INIT_TASK, 'D', "init_task"),
            (INIT_MM, 'D', "init_mm"),
            (PAGE_OFFSET_BASE_VAR, 'D', "page_offset_base"),
            (PHYS_BASE_VAR, 'D', "phys_base"),
            (SWAPPER_PG_DIR, 'D', "init_top_pgt"),
            (TEXT + IMAGE_SIZE, 'B', "_end"),
        ]
        .iter()
        .map(|(a, t, n)| format!("{a:016x} {t} {n}\n"))
        .collect()
    }
}
