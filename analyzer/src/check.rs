//! `analyzer check`: what is in a log and what is wrong with it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use vmlog::Context;

use crate::input::{self, Fatal, LogInfo, Sink};
use crate::merge::Tagged;

#[derive(Default)]
struct Count {
    host: BTreeMap<u16, u64>,
    guest: BTreeMap<u16, u64>,
    first: Option<u64>,
    last: Option<u64>,
}

impl Sink for Count {
    fn samples(&mut self, _info: &LogInfo, run: &[Tagged]) {
        for &Tagged { pcpu, sample: s } in run {
            let slot = match s.context {
                Context::Host(_) => &mut self.host,
                Context::Guest(_) => &mut self.guest,
            };
            *slot.entry(pcpu).or_default() += 1;
            self.first = Some(self.first.map_or(s.tsc, |f| f.min(s.tsc)));
            self.last = Some(self.last.map_or(s.tsc, |l| l.max(s.tsc)));
        }
    }
}

/// Runs the check; returns the text to print. Fails only when nothing usable
/// is in the log.
pub fn run(path: &Path) -> Result<String, Fatal> {
    let mut c = Count::default();
    let info = input::read_log(path, &mut c)?;
    let s = &info.stats;
    let mut out = String::new();
    let _ = writeln!(out, "log: {} ({} bytes)", path.display(), info.file_bytes);
    match &info.header {
        Some(h) => {
            let source = match h.source {
                vmlog::SamplingSource::LapicTimer => "LAPIC timer".to_string(),
                vmlog::SamplingSource::PmuNmi { event } => format!("PMU NMI (event {event:#x})"),
            };
            let hz = if h.period_tsc > 0 {
                h.tsc_hz as f64 / h.period_tsc as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "format: {}.{}, hypervisor build `{}`, TSC {} Hz, {source}, period {} ticks ({hz:.1} Hz), {} pCPUs",
                h.format_major, h.format_minor, h.hv_build_id, h.tsc_hz, h.period_tsc, h.pcpus
            );
        }
        None => {
            let _ = writeln!(out, "format: no header frame (lost or truncated)");
        }
    }
    for vm in info.vms.values() {
        let _ = writeln!(out, "vm {}: {} ({} vCPUs)", vm.id, vm.name, vm.vcpus);
    }
    for (id, ch) in &info.channel {
        let used = match &ch.bundle {
            Some(d) => format!(
                "the last complete one: records {}..={}, {} bytes",
                d.first_seq,
                d.first_seq + d.records.saturating_sub(1),
                d.text.len()
            ),
            None => "none complete".to_string(),
        };
        let _ = writeln!(
            out,
            "guest data of vm {id}: {} bundle records, {} bytes, {} bundle(s) delivered, {used}",
            ch.records, ch.bytes, ch.deliveries
        );
        for w in &ch.warnings {
            let _ = writeln!(out, "guest data of vm {id}: {w}");
        }
    }
    for (kind, n) in &info.channel_other_kinds {
        let _ = writeln!(out, "guest data: {n} record(s) of unknown kind {kind}");
    }
    let _ = writeln!(
        out,
        "frames: {} decoded, {} corrupt skipped, {} of unknown kind skipped",
        s.frames, s.corrupt_frames, s.unknown_records
    );
    for (stream, st) in &s.streams {
        if *stream == vmlog::GLOBAL_STREAM {
            if st.gaps > 0 {
                let _ = writeln!(
                    out,
                    "global stream: {} sequence gaps ({} frames missing)",
                    st.gaps, st.missing_frames
                );
            }
            continue;
        }
        let _ = writeln!(
            out,
            "pCPU {stream}: {} samples ({} host, {} guest), {} frames, {} sequence gaps ({} frames missing), {} dropped",
            st.samples,
            c.host.get(stream).copied().unwrap_or(0),
            c.guest.get(stream).copied().unwrap_or(0),
            st.frames,
            st.gaps,
            st.missing_frames,
            st.dropped
        );
    }
    let m = &info.merge;
    if m.streams > 1 || m.out_of_order > 0 {
        let _ = writeln!(
            out,
            "time order: {} pCPU streams merged by TSC (look-ahead {} samples per pCPU, at most {} held), {} samples out of order",
            m.streams, m.lookahead, m.peak_buffered, m.out_of_order
        );
    }
    let samples = s.samples();
    match (c.first, c.last, &info.header) {
        (Some(f), Some(l), Some(h)) if h.tsc_hz > 0 => {
            let _ = writeln!(
                out,
                "time span: {:.3} s (TSC {f}..{l})",
                (l - f) as f64 / h.tsc_hz as f64
            );
        }
        (Some(f), Some(l), _) => {
            let _ = writeln!(out, "time span: TSC {f}..{l} (rate unknown)");
        }
        _ => {}
    }
    let bps = if samples > 0 {
        info.stats.bytes as f64 / samples as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "samples: {samples}, dropped: {}, sequence gaps: {}, bytes/sample: {bps:.2}",
        s.dropped(),
        s.gaps()
    );
    match &info.end {
        Some(e) if e.samples_total == samples => {
            let _ = writeln!(
                out,
                "end record: present, {} samples written = {samples} read",
                e.samples_total
            );
        }
        Some(e) => {
            let _ = writeln!(
                out,
                "end record: present, {} samples written but {samples} read ({} lost)",
                e.samples_total,
                e.samples_total.saturating_sub(samples)
            );
        }
        None => {
            let _ = writeln!(out, "end record: missing (the log is truncated)");
        }
    }
    if s.frames == 0 {
        return Err(Fatal(format!(
            "{}: no valid frame in {} bytes ({} corrupt chunks): not a vmlog sample log?",
            path.display(),
            info.file_bytes,
            s.corrupt_frames
        )));
    }
    Ok(out)
}
