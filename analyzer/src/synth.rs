//! Synthetic inputs for tests and the benchmark: small ELF files with chosen
//! function symbols, and sample constructors.

use object::write::elf::{FileHeader, ProgramHeader, SectionHeader, Sym, Writer};
use vmlog::{Context, ExitReason, GuestContext, HostContext, Sample, VcpuRef, VcpuState};

/// A function of a synthetic ELF: name, offset in `.text`, size.
pub type Func<'a> = (&'a str, u64, u64);

/// Offset of `.text` in the files [`elf`] writes.
pub const TEXT_OFFSET: u64 = 0x1000;

/// Writes a minimal x86-64 ELF: one PT_LOAD segment mapping the file from
/// offset 0 at `base`, `.text` at file offset [`TEXT_OFFSET`] (so at address
/// `base + 0x1000`) holding `funcs`, and a symbol table. `pie` makes it ET_DYN.
pub fn elf(base: u64, pie: bool, funcs: &[Func<'_>]) -> Vec<u8> {
    elf_with_build_id(base, pie, funcs, None)
}

/// [`elf`] with a `.note.gnu.build-id` section holding `build_id` (when given).
pub fn elf_with_build_id(
    base: u64,
    pie: bool,
    funcs: &[Func<'_>],
    build_id: Option<&[u8]>,
) -> Vec<u8> {
    let note: Option<Vec<u8>> = build_id.map(|id| {
        let mut n = Vec::new();
        n.extend(4u32.to_le_bytes());
        n.extend((id.len() as u32).to_le_bytes());
        n.extend(object::elf::NT_GNU_BUILD_ID.to_le_bytes());
        n.extend(b"GNU\0");
        n.extend(id);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    });
    let text_len = funcs.iter().map(|f| f.1 + f.2).max().unwrap_or(0).max(16) as usize;
    let mut buf = Vec::new();
    let mut w = Writer::new(object::Endianness::Little, true, &mut buf);
    w.reserve_file_header();
    w.reserve_program_headers(1);
    w.reserve_until(TEXT_OFFSET as usize);
    w.reserve(text_len, 1);
    let note_offset = note.as_ref().map(|n| w.reserve(n.len(), 4));
    let names: Vec<_> = funcs.iter().map(|f| w.add_string(f.0.as_bytes())).collect();
    w.reserve_null_section_index();
    let text_name = w.add_section_name(b".text");
    let text_idx = w.reserve_section_index();
    let note_name = note.as_ref().map(|_| {
        (
            w.add_section_name(b".note.gnu.build-id"),
            w.reserve_section_index(),
        )
    });
    w.reserve_null_symbol_index();
    for _ in funcs {
        w.reserve_symbol_index(Some(text_idx));
    }
    w.reserve_symtab_section_index();
    w.reserve_strtab_section_index();
    w.reserve_shstrtab_section_index();
    w.reserve_symtab();
    w.reserve_strtab();
    w.reserve_shstrtab();
    w.reserve_section_headers();

    let end_of_text = TEXT_OFFSET + text_len as u64;
    // Writing into a Vec cannot fail.
    let _ = w.write_file_header(&FileHeader {
        os_abi: 0,
        abi_version: 0,
        e_type: if pie {
            object::elf::ET_DYN
        } else {
            object::elf::ET_EXEC
        },
        e_machine: object::elf::EM_X86_64,
        e_entry: base + TEXT_OFFSET,
        e_flags: 0,
    });
    w.write_align_program_headers();
    w.write_program_header(&ProgramHeader {
        p_type: object::elf::PT_LOAD,
        p_flags: object::elf::PF_R | object::elf::PF_X,
        p_offset: 0,
        p_vaddr: base,
        p_paddr: base,
        p_filesz: end_of_text,
        p_memsz: end_of_text,
        p_align: 0x1000,
    });
    w.pad_until(TEXT_OFFSET as usize);
    w.write(&vec![0xcc; text_len]);
    if let Some(n) = &note {
        w.write_align(4);
        w.write(n);
    }
    w.write_null_symbol();
    for (f, name) in funcs.iter().zip(&names) {
        w.write_symbol(&Sym {
            name: Some(*name),
            section: Some(text_idx),
            st_info: (object::elf::STB_GLOBAL << 4) | object::elf::STT_FUNC,
            st_other: 0,
            st_shndx: 0,
            st_value: base + TEXT_OFFSET + f.1,
            st_size: f.2,
        });
    }
    w.write_strtab();
    w.write_shstrtab();
    w.write_null_section_header();
    w.write_section_header(&SectionHeader {
        name: Some(text_name),
        sh_type: object::elf::SHT_PROGBITS,
        sh_flags: u64::from(object::elf::SHF_ALLOC | object::elf::SHF_EXECINSTR),
        sh_addr: base + TEXT_OFFSET,
        sh_offset: TEXT_OFFSET,
        sh_size: text_len as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 16,
        sh_entsize: 0,
    });
    if let (Some(n), Some((name, _)), Some(offset)) = (&note, note_name, note_offset) {
        w.write_section_header(&SectionHeader {
            name: Some(name),
            sh_type: object::elf::SHT_NOTE,
            sh_flags: u64::from(object::elf::SHF_ALLOC),
            sh_addr: 0,
            sh_offset: offset as u64,
            sh_size: n.len() as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 4,
            sh_entsize: 0,
        });
    }
    w.write_symtab_section_header(1);
    w.write_strtab_section_header();
    w.write_shstrtab_section_header();
    buf
}

/// A guest sample.
pub fn guest(
    tsc: u64,
    vm: u16,
    vcpu: u16,
    cr3: u64,
    cpl: u8,
    rip: u64,
    last_exit: ExitReason,
) -> Sample {
    Sample {
        tsc,
        context: Context::Guest(GuestContext {
            vm,
            vcpu,
            vpid: vcpu + 1,
            rip,
            cr3,
            cpl,
            last_exit_reason: Some(last_exit),
        }),
    }
}

/// A host sample serving `(vm, vcpu)` (or nothing) in `state`.
pub fn host(tsc: u64, rip: u64, serving: Option<(u16, u16)>, state: VcpuState) -> Sample {
    Sample {
        tsc,
        context: Context::Host(HostContext {
            rip,
            serving: serving.map(|(vm, vcpu)| VcpuRef { vm, vcpu }),
            vcpu_state: state,
        }),
    }
}
