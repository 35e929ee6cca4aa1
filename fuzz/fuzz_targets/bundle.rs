//! Bundle text (proc / map / kmap / ksym lines): parse, write back, parse
//! again; index processes and maps and look addresses up.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(b) = guest_kit::Bundle::parse(text) else {
        return;
    };
    let again = guest_kit::Bundle::parse(&b.to_text()).expect("written bundle parses");
    assert_eq!(again, b);
    let ix = analyzer::procs::ProcIndex::new(&b);
    let labels = analyzer::procs::labels(&b);
    assert_eq!(labels.len(), b.procs.len());
    let maps = analyzer::procs::maps_by_pid(&b);
    for p in &b.procs {
        if let Some(cr3) = p.cr3 {
            let _ = ix.lookup_range(cr3, p.from.unwrap_or(0));
        }
    }
    for m in &b.maps {
        let found = analyzer::procs::find_map(&maps[&m.pid], m.start);
        assert!(found.is_some_and(|f| f.start <= m.start && m.start < f.end));
    }
    let t = analyzer::symbols::kallsyms_table(&b.ksyms);
    for s in &b.ksyms {
        let _ = t.lookup(s.addr);
    }
});
