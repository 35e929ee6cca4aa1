//! Reading the log and the side files, with one-line messages for bad input.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_kit::channel::{Reassembler, VmChannel};
use vmlog::{Decoder, Item, LogError, LogHeader, Sample, SchedEvent, Stats, VmEntry};

use crate::merge::{MergeOut, MergeStats, Merger, Tagged};

/// A fatal problem: nothing usable remains. `Display` is one line.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// What a pass over a log saw, besides the samples handed to the sink.
#[derive(Debug, Default)]
pub struct LogInfo {
    /// Header, if its frame survived.
    pub header: Option<LogHeader>,
    /// VM table.
    pub vms: BTreeMap<u16, VmEntry>,
    /// End record, if present.
    pub end: Option<vmlog::End>,
    /// Decoder counters.
    pub stats: Stats,
    /// File size.
    pub file_bytes: u64,
    /// The merge of the pCPU streams into host-time order.
    pub merge: MergeStats,
    /// Problems that did not stop the pass (one line each).
    pub warnings: Vec<String>,
    /// What the guests delivered through the hypercall channel, per VM id (`GuestData`
    /// records of kind 1, reassembled: see [`guest_kit::channel`]).
    pub channel: BTreeMap<u16, VmChannel>,
    /// `GuestData` records of other kinds, per kind.
    pub channel_other_kinds: BTreeMap<u16, u64>,
}

/// Receives the decoded records, merged across pCPUs into host-time order
/// (see [`crate::merge`]).
pub trait Sink {
    /// A decoded batch, in file order, before any of its samples reaches
    /// [`Sink::samples`] (e.g. to estimate the period of a header-less log).
    fn decoded(&mut self, _info: &LogInfo, _pcpu: u16, _samples: &[Sample]) {}
    /// The next samples, each tagged with its pCPU, in host-time order
    /// across all pCPUs (header and VM table, when present, have been seen
    /// before).
    fn samples(&mut self, info: &LogInfo, run: &[Tagged]);
    /// A scheduling event, in host-time order with the samples.
    fn sched(&mut self, _pcpu: u16, _ev: &SchedEvent) {}
}

/// Hands the merge's output to a [`Sink`].
struct ToSink<'a> {
    info: &'a LogInfo,
    sink: &'a mut dyn Sink,
}

impl MergeOut for ToSink<'_> {
    fn samples(&mut self, run: &[Tagged]) {
        self.sink.samples(self.info, run);
    }
    fn sched(&mut self, pcpu: u16, event: &SchedEvent) {
        self.sink.sched(pcpu, event);
    }
}

/// Decodes `path`, feeding `sink`. Fails only when the log cannot be read at
/// all or is of a newer format.
pub fn read_log(path: &Path, sink: &mut dyn Sink) -> Result<LogInfo, Fatal> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| Fatal(format!("{shown}: cannot open the log: {e}")))?;
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut info = LogInfo {
        file_bytes,
        ..Default::default()
    };
    let mut dec = Decoder::new(BufReader::with_capacity(1 << 16, file));
    let progress = std::io::stderr().is_terminal() && file_bytes > (16 << 20);
    let mut last_progress = Instant::now();
    let mut n = 0u64;
    let mut merge = Merger::default();
    let mut channel = Reassembler::new();
    while let Some(item) = dec.next() {
        n += 1;
        if progress && n.is_multiple_of(256) && last_progress.elapsed() > Duration::from_millis(250)
        {
            last_progress = Instant::now();
            let pct = 100 * dec.stats().bytes / file_bytes.max(1);
            eprint!(
                "\ranalyzer: {pct:3}% of {shown} ({} samples)",
                dec.stats().samples()
            );
            let _ = std::io::stderr().flush();
        }
        match item {
            Ok(Item::Header(h)) => {
                merge.expect(h.pcpus);
                info.header = Some(h);
            }
            Ok(Item::Vm(v)) => {
                info.vms.insert(v.id, v);
            }
            Ok(Item::Samples { pcpu, samples }) => {
                sink.decoded(&info, pcpu, &samples);
                let mut out = ToSink {
                    info: &info,
                    sink: &mut *sink,
                };
                merge.push_samples(pcpu, samples, &mut out);
                while let Some(v) = merge.spent() {
                    dec.recycle(v);
                }
            }
            Ok(Item::Sched { pcpu, event }) => {
                let mut out = ToSink {
                    info: &info,
                    sink: &mut *sink,
                };
                merge.push_sched(pcpu, event, &mut out);
            }
            Ok(Item::End(e)) => info.end = Some(e),
            Ok(Item::GuestData {
                vm,
                kind,
                seq,
                data,
            }) => channel.push(vm, kind, seq, &data),
            Ok(_) => {}
            Err(e @ LogError::NewerVersion { .. }) => return Err(Fatal(format!("{shown}: {e}"))),
            Err(LogError::Io(e)) => {
                info.warnings.push(format!(
                    "{shown}: read error, using what was read before it: {e}"
                ));
                break;
            }
        }
    }
    info.channel_other_kinds = channel.other_kinds.clone();
    info.channel = channel.finish();
    info.merge = merge.finish(&mut ToSink {
        info: &info,
        sink: &mut *sink,
    });
    if progress {
        eprint!("\r{:60}\r", "");
    }
    info.stats = dec.stats().clone();
    if file_bytes == 0 {
        return Err(Fatal(format!("{shown}: the log is empty (0 bytes)")));
    }
    Ok(info)
}

/// What a log's hypercall channel holds, read ahead of the samples (the guests deliver
/// their bundles at the end of a run, but the samples need them from the start).
#[derive(Debug, Default)]
pub struct ChannelScan {
    /// VM table.
    pub vms: BTreeMap<u16, VmEntry>,
    /// Kind-1 data per VM id, reassembled.
    pub channel: BTreeMap<u16, VmChannel>,
}

/// Reads only the VM table and the `GuestData` records of `path`.
pub fn read_channel(path: &Path) -> Result<ChannelScan, Fatal> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| Fatal(format!("{shown}: cannot open the log: {e}")))?;
    let mut dec = Decoder::new(BufReader::with_capacity(1 << 16, file));
    let mut scan = ChannelScan::default();
    let mut channel = Reassembler::new();
    while let Some(item) = dec.next() {
        match item {
            Ok(Item::Vm(v)) => {
                scan.vms.insert(v.id, v);
            }
            Ok(Item::Samples { samples, .. }) => dec.recycle(samples),
            Ok(Item::GuestData {
                vm,
                kind,
                seq,
                data,
            }) => channel.push(vm, kind, seq, &data),
            Ok(_) => {}
            Err(e @ LogError::NewerVersion { .. }) => return Err(Fatal(format!("{shown}: {e}"))),
            // The main pass reports it.
            Err(LogError::Io(_)) => break,
        }
    }
    scan.channel = channel.finish();
    Ok(scan)
}

/// One-line notes on what was skipped or missing in the log.
pub fn log_notes(path: &Path, info: &LogInfo) -> Vec<String> {
    let s = &info.stats;
    let shown = path.display();
    let mut v = Vec::new();
    if s.corrupt_frames > 0 {
        v.push(format!(
            "{shown}: skipped {} corrupt frame(s)",
            s.corrupt_frames
        ));
    }
    if s.unknown_records > 0 {
        v.push(format!(
            "{shown}: skipped {} record(s) of a newer minor format version",
            s.unknown_records
        ));
    }
    for (stream, st) in &s.streams {
        if st.gaps > 0 {
            let what = if *stream == vmlog::GLOBAL_STREAM {
                "global stream".to_string()
            } else {
                format!("pCPU {stream}")
            };
            v.push(format!(
                "{shown}: {what}: {} sequence gap(s), {} frame(s) missing",
                st.gaps, st.missing_frames
            ));
        }
    }
    if s.dropped() > 0 {
        v.push(format!(
            "{shown}: the hypervisor dropped {} sample(s)",
            s.dropped()
        ));
    }
    if info.merge.out_of_order > 0 {
        v.push(format!(
            "{shown}: {} sample(s) out of host-time order (a pCPU's stream lagged more than {} samples behind the others, or its TSC went back): idle/steal near them is approximate",
            info.merge.out_of_order, info.merge.lookahead
        ));
    }
    if info.header.is_none() && s.samples() > 0 {
        v.push(format!(
            "{shown}: no log header (lost or truncated): sampling period estimated, times unknown"
        ));
    }
    if info.end.is_none() && s.samples() > 0 {
        v.push(format!("{shown}: no end record: the log is truncated"));
    }
    v
}

/// Reads a side file (bundle, ELF, kallsyms) or says why not, in one line.
pub fn read_side_file(flag: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read: {e}", path.display()))
}
