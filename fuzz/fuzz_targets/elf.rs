//! Any bytes as an ELF (--elf / --hv-elf): parse, map offsets, look up.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = analyzer::symbols::ElfImage::parse(data) else {
        return;
    };
    for off in [0u64, 0x1000, 0x1010, u64::MAX] {
        if let Some(a) = img.vaddr_of_offset(off) {
            let _ = img.symbols.lookup(a);
        }
    }
});
