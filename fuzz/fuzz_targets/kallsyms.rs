//! A /proc/kallsyms file: parse, build the table, look every symbol up.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (syms, _bad) = analyzer::symbols::parse_kallsyms(&text);
    let t = analyzer::symbols::kallsyms_table(&syms);
    for s in &syms {
        // A symbol at the very last address has no room for a range.
        if matches!(s.kind, 't' | 'T' | 'w' | 'W') && s.addr != u64::MAX {
            assert!(t.lookup(s.addr).is_some());
        }
        let _ = t.lookup(s.addr.wrapping_sub(1));
    }
});
