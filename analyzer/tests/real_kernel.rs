//! The analyzer's kernel-symbol readers against the real Debian kernel's System.map (from
//! the `-dbg` package, fetched by `cargo xtask kernel`): the same `ADDR TYPE NAME` format
//! as the guest's `/proc/kallsyms`, at link-time addresses.

use std::path::PathBuf;

use analyzer::symbols::{SystemMap, parse_kallsyms};

fn system_map() -> String {
    let dir = match std::env::var_os("HV_KERNEL_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(d)
            }
        }
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/kernel"),
    };
    let path = dir.join("System.map");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "real kernel files missing: run `cargo xtask kernel` ({}: {e})",
            path.display()
        )
    })
}

#[test]
fn real_system_map_gives_the_link_time_text_and_the_kernels_functions() {
    let text = system_map();
    let map = SystemMap::parse(&text);
    assert_eq!(map.bad_lines, 0);
    assert_eq!(
        map.text,
        Some(0xffff_ffff_8100_0000),
        "x86_64's link-time _text"
    );
    assert!(
        map.text_syms.len() > 30_000,
        "{} text symbols",
        map.text_syms.len()
    );
    for f in [
        "start_kernel",
        "schedule",
        "native_apic_mem_read",
        "do_syscall_64",
    ] {
        let addr = map
            .text_syms
            .iter()
            .find(|(_, n)| n == f)
            .map(|(a, _)| *a)
            .unwrap_or_else(|| panic!("{f} is not a text symbol"));
        assert!(addr >= 0xffff_ffff_8100_0000, "{f} at {addr:#x}");
    }
    // Debian's image package ships a one-line placeholder instead: this is the real map.
    assert!(!text.contains("The real System.map is in"));
}

#[test]
fn real_map_read_as_kallsyms_gives_every_line() {
    let text = system_map();
    let (syms, bad) = parse_kallsyms(&text);
    assert_eq!(bad, 0);
    assert_eq!(syms.len(), text.lines().count());
    let t = syms.iter().find(|s| s.name == "_text").unwrap();
    assert_eq!((t.addr, t.kind), (0xffff_ffff_8100_0000, 'T'));
    assert!(
        syms.iter().all(|s| s.module.is_none()),
        "no module symbols in vmlinux"
    );
}
