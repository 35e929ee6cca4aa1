//! What the guest prints at the end: its bundle (`@gk ` lines, format of
//! `docs/contracts.md`) and the `truth` line. Core-only so the host tests can parse the
//! exact output with `guest_kit`.

use core::fmt::{self, Write};

use crate::work;

/// The object name used in `map`/`kmap` lines: the guest's own ELF.
pub const OBJECT: &str = "truth-guest";

/// Where the ELF's first byte (and its only PT_LOAD segment) sits: file offset =
/// address - IMAGE_BASE (see link.ld).
pub const IMAGE_BASE: u64 = 0x10_0000;

/// A half-open address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// A process of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub comm: &'static str,
    pub cr3: u64,
    /// Its user code and stack (none for the kernel).
    pub user: Option<Range>,
}

/// Timings of a run. `*_tsc` are guest RDTSC deltas; the stamps are host TSC values
/// (VMCALL TSC_NOW; RDTSC without a hypervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Run {
    pub rounds: u32,
    pub busy_tsc: u64,
    pub idle_tsc: u64,
    pub tables_built: u64,
    pub busy_start: u64,
    pub idle_start: u64,
    pub idle_end: u64,
}

/// Writes the bundle, one `@gk ` line per record.
pub fn write_bundle(
    out: &mut impl Write,
    vm: &str,
    procs: &[ProcInfo],
    kernel_text: Range,
    run: &Run,
) -> fmt::Result {
    writeln!(out, "@gk gk-bundle 1")?;
    writeln!(out, "@gk vm {vm}")?;
    for p in procs {
        writeln!(
            out,
            "@gk proc {} {} cr3={:#x} from={} to={}",
            p.pid, p.comm, p.cr3, run.tables_built, run.idle_end
        )?;
    }
    for p in procs {
        if let Some(user) = p.user {
            writeln!(
                out,
                "@gk map {} {:x} {:x} {:x} {OBJECT}",
                p.pid,
                user.start,
                user.end,
                user.start - IMAGE_BASE
            )?;
        }
    }
    writeln!(
        out,
        "@gk kmap {:x} {:x} {OBJECT}",
        kernel_text.start, kernel_text.end
    )
}

/// Writes the `truth` line.
pub fn write_truth(out: &mut impl Write, run: &Run) -> fmt::Result {
    write!(
        out,
        "truth busy_tsc={} idle_tsc={} busy_start={} idle_start={} idle_end={} rounds={}",
        run.busy_tsc, run.idle_tsc, run.busy_start, run.idle_start, run.idle_end, run.rounds
    )?;
    for (name, units) in work::FUNCTIONS {
        write!(out, " {name}={}", work::share_percent(units))?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_kit::bundle::{Bundle, bundles_from_console};
    use guest_kit::truth::Truth;

    #[test]
    fn printed_lines_parse_with_guest_kit() {
        let procs = [
            ProcInfo {
                pid: 0,
                comm: "kernel",
                cr3: 0x18_0000,
                user: None,
            },
            ProcInfo {
                pid: 1,
                comm: "alpha",
                cr3: 0x18_4000,
                user: Some(Range {
                    start: 0x10_3000,
                    end: 0x10_6000,
                }),
            },
        ];
        let run = Run {
            rounds: 20,
            busy_tsc: 300,
            idle_tsc: 100,
            tables_built: 7,
            busy_start: 10,
            idle_start: 310,
            idle_end: 410,
        };
        let text_range = Range {
            start: 0x10_0100,
            end: 0x10_2000,
        };
        let mut console = String::new();
        write_bundle(&mut console, "truth", &procs, text_range, &run).unwrap();
        write_truth(&mut console, &run).unwrap();
        assert_eq!(
            console,
            "@gk gk-bundle 1\n@gk vm truth\n\
             @gk proc 0 kernel cr3=0x180000 from=7 to=410\n\
             @gk proc 1 alpha cr3=0x184000 from=7 to=410\n\
             @gk map 1 103000 106000 3000 truth-guest\n\
             @gk kmap 100100 102000 truth-guest\n\
             truth busy_tsc=300 idle_tsc=100 busy_start=10 idle_start=310 idle_end=410 \
             rounds=20 alpha_heavy=60 alpha_light=10 beta_work=20 kernel_work=10\n"
        );

        let bundles = bundles_from_console(&console);
        let bundle = Bundle::parse(&bundles[""]).unwrap();
        assert_eq!(bundle.vm, "truth");
        assert_eq!(bundle.procs[1].cr3_key(), Some(0x18_4000));
        assert_eq!(bundle.procs[1].from, Some(7));
        assert_eq!(bundle.maps[0].offset, 0x3000);
        assert_eq!(bundle.kmaps[0].start, 0x10_0100);

        let truth = Truth::parse(console.lines().last().unwrap()).unwrap();
        assert_eq!(truth.shares["beta_work"], 20);
        assert_eq!(truth.idle_percent(), Some(25.0));
    }
}
