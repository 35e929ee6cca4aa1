//! `analyzer report`: host- and guest-level profiles.

use std::collections::BTreeMap;
use std::path::PathBuf;

use guest_kit::Bundle;
use rustc_hash::FxHashMap;
use serde::Serialize;
use vmlog::{Sample, SchedEvent};

use crate::aggregate::{Aggregator, GuestKey, VcpuCounts};
use crate::input::{self, Fatal, LogInfo, Sink};
use crate::merge::Tagged;
use crate::procs::{self, ProcIndex, ProcKey};
use crate::symbols::{self, ElfImage, SymbolTable, SystemMap};

/// Which levels to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Level {
    /// Hypervisor functions and one line per VM.
    Host,
    /// Per VM (and per vCPU with --vcpu): guest functions, idle and steal.
    Guest,
    /// Both.
    #[default]
    Both,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// The paper's tables.
    #[default]
    Text,
    /// Stable JSON (see analyzer/README.md).
    Json,
    /// Brendan Gregg's collapsed stacks, `VM;process;function COUNT` per line
    /// (`hypervisor;function COUNT` for hypervisor samples).
    Collapsed,
    /// A flame graph SVG of the collapsed stacks (`inferno`).
    Flamegraph,
}

/// Options of `analyzer report`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The sample log.
    pub log: PathBuf,
    /// Guest bundles.
    pub bundles: Vec<PathBuf>,
    /// Guest ELF files with symbols.
    pub elfs: Vec<PathBuf>,
    /// Hypervisor ELF.
    pub hv_elf: Option<PathBuf>,
    /// A kallsyms file for guests whose bundle has no `ksym` lines.
    pub kallsyms: Option<PathBuf>,
    /// The guest kernel's System.map, relocated per VM by its bundle's `kernel` line.
    pub kernel_map: Option<PathBuf>,
    /// The release `kernel_map` is for (else from its file name).
    pub kernel_release: Option<String>,
    /// Only this VM at guest level.
    pub vm: Option<String>,
    /// Also a section for this vCPU.
    pub vcpu: Option<u16>,
    /// Only rows of these guest PIDs (empty: all).
    pub pid: Vec<u32>,
    /// Only rows of processes with one of these names (empty: all).
    pub comm: Vec<String>,
    /// Window start, seconds from the start of the log.
    pub from: Option<f64>,
    /// Window end, seconds from the start of the log.
    pub to: Option<f64>,
    /// Rows per table (0 = all).
    pub top: usize,
    /// Levels.
    pub level: Level,
    /// Order of the rows shown (which rows are shown depends on their samples only).
    pub sort: SortKey,
    /// Hide rows under this percentage of their section's total (0 = none hidden).
    pub percent_limit: f64,
}

/// Row order of `--sort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum SortKey {
    /// Most samples first (ties by function, then module).
    #[default]
    Samples,
    /// By function name, then module.
    Name,
    /// By module, then most samples first, then function.
    Module,
}

/// One share of a section's total (`OS`, `USER`, ...).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Share {
    /// `OS`, `USER`, `VM`, `IDLE` or `steal`.
    pub name: &'static str,
    /// Samples.
    pub samples: u64,
    /// Percent of the section total.
    pub percent: f64,
}

/// Kind of a row.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RowKind {
    /// A symbolised function.
    Function,
    /// Code whose function is unknown.
    Unknown,
    /// A VM (host level).
    Vm,
    /// Idle slots.
    Idle,
    /// Steal slots.
    Steal,
}

/// One table row.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    /// Samples.
    pub samples: u64,
    /// Percent of the section total.
    pub percent: f64,
    /// Function column.
    pub function: String,
    /// Module column.
    pub module: String,
    /// What the row is.
    pub kind: RowKind,
}

/// One table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Section {
    /// `host` or `guest`.
    pub level: &'static str,
    /// VM name (guest level).
    pub vm: Option<String>,
    /// VM id (guest level).
    pub vm_id: Option<u16>,
    /// vCPU (per-vCPU sections).
    pub vcpu: Option<u16>,
    /// Total samples.
    pub total: u64,
    /// Shares of the total.
    pub shares: Vec<Share>,
    /// Rows, largest first, at most `--top`.
    pub rows: Vec<Row>,
    /// Rows left out by `--top`.
    pub rows_omitted: usize,
    /// Rows left out by `--percent-limit` (under it).
    pub rows_below_limit: usize,
}

/// Log facts in the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LogSummary {
    /// Log path.
    pub path: String,
    /// Bytes.
    pub bytes: u64,
    /// Frames decoded.
    pub frames: u64,
    /// Samples decoded (all, before the time window).
    pub samples: u64,
    /// Samples in the window.
    pub samples_in_window: u64,
    /// Corrupt frames skipped.
    pub corrupt_frames: u64,
    /// Sequence gaps.
    pub sequence_gaps: u64,
    /// Samples the hypervisor reported dropped.
    pub dropped_samples: u64,
    /// Samples aggregated out of host-time order (see the warnings).
    pub out_of_order_samples: u64,
    /// TSC Hz (0 when the header is missing).
    pub tsc_hz: u64,
    /// Sampling period in TSC ticks.
    pub period_tsc: u64,
    /// Hypervisor build id from the header.
    pub hv_build_id: Option<String>,
}

/// The `#` lines at the top of the text report (perf style), and `summary` in JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Samples decoded from the log (all, before the time window).
    pub samples_read: u64,
    /// Samples the hypervisor wrote, from the End record (`null` when it is missing).
    pub samples_expected: Option<u64>,
    /// Samples in the time window (`--from`/`--to`/`--time`).
    pub samples_in_window: u64,
    /// `LAPIC timer` or `PMU NMI (event 0x...)`; `unknown` without a header.
    pub source: String,
    /// Samples per second per pCPU (0 when unknown).
    pub rate_hz: f64,
    /// Seconds from the first to the last sample (`null` when the TSC rate is unknown).
    pub time_span_s: Option<f64>,
    /// pCPUs (from the header, else the sample streams seen).
    pub pcpus: u64,
    /// Frames missing at sequence gaps.
    pub lost_frames: u64,
    /// Sequence gaps.
    pub sequence_gaps: u64,
    /// Samples the hypervisor reported dropped.
    pub dropped_samples: u64,
    /// Warnings (the `warnings` list; on stderr with the text report).
    pub warnings: usize,
}

/// The whole report (the JSON document).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Version of this JSON layout.
    pub report_version: u32,
    /// The perf-style summary.
    pub summary: Summary,
    /// Log facts.
    pub log: LogSummary,
    /// Host level (absent with `--level guest`).
    pub host: Option<Section>,
    /// Guest level sections.
    pub guests: Vec<Section>,
    /// One-line notes on skipped or missing input.
    pub warnings: Vec<String>,
    /// Collapsed stacks (`frame;frame;frame` -> samples) of every sample the report
    /// covers, before `--top`/`--percent-limit`; not part of the JSON.
    #[serde(skip)]
    pub stacks: BTreeMap<String, u64>,
}

fn pct(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        // Rounded to 2 decimals so text and JSON agree.
        (n as f64 * 10000.0 / total as f64).round() / 100.0
    }
}

struct Collect<'a> {
    opts: &'a Options,
    bundles_by_name: &'a BTreeMap<String, usize>,
    bundles: &'a [Bundle],
    /// How many of `bundles` came from `--bundle` (the rest from the hypercall channel).
    explicit: usize,
    /// VM id -> index into `bundles` of the bundle that VM delivered through the
    /// hypercall channel, for the VMs without a `--bundle`.
    channel: &'a BTreeMap<u16, usize>,
    agg: Option<Aggregator>,
    warnings: Vec<String>,
    vm_bundle: BTreeMap<u16, usize>,
    /// First and last sample TSC seen (all samples, before the time window).
    span: Option<(u64, u64)>,
}

impl Collect<'_> {
    fn start(&mut self, info: &LogInfo, first: &[Sample]) -> Aggregator {
        let (period, start, hz) = match &info.header {
            Some(h) => (h.period_tsc, h.start_tsc, h.tsc_hz),
            None => {
                let est = first
                    .windows(2)
                    .map(|w| w[1].tsc.wrapping_sub(w[0].tsc))
                    .filter(|d| *d > 0 && *d < u64::MAX / 2)
                    .min()
                    .unwrap_or(1);
                (est, first.first().map_or(0, |s| s.tsc), 0)
            }
        };
        let mut window = (0, u64::MAX);
        if self.opts.from.is_some() || self.opts.to.is_some() {
            if hz == 0 {
                self.warnings
                    .push("--from/--to ignored: the log header (TSC rate) is missing".to_string());
            } else {
                let at = |s: f64| start.saturating_add((s.max(0.0) * hz as f64) as u64);
                window = (
                    self.opts.from.map_or(0, at),
                    self.opts.to.map_or(u64::MAX, at),
                );
            }
        }
        // Match bundles to VM ids by name.
        for (id, vm) in &info.vms {
            if let Some(&b) = self.bundles_by_name.get(&vm.name) {
                self.vm_bundle.insert(*id, b);
            }
        }
        if info.vms.is_empty() && self.explicit == 1 {
            self.warnings.push(format!(
                "the log's VM table is missing: bundle for `{}` assumed to be VM 0",
                self.bundles[0].vm
            ));
            self.vm_bundle.insert(0, 0);
        }
        for (id, b) in self.channel {
            self.vm_bundle.entry(*id).or_insert(*b);
        }
        let procs: FxHashMap<u16, ProcIndex> = self
            .vm_bundle
            .iter()
            .map(|(id, b)| (*id, ProcIndex::new(&self.bundles[*b])))
            .collect();
        Aggregator::new(period, window, procs)
    }
}

impl Sink for Collect<'_> {
    fn decoded(&mut self, info: &LogInfo, _pcpu: u16, samples: &[Sample]) {
        if self.agg.is_none() {
            let a = self.start(info, samples);
            self.agg = Some(a);
        }
    }

    fn samples(&mut self, _info: &LogInfo, run: &[Tagged]) {
        let (lo, hi) = run
            .iter()
            .fold(self.span.unwrap_or((u64::MAX, 0)), |(lo, hi), t| {
                (lo.min(t.sample.tsc), hi.max(t.sample.tsc))
            });
        if lo <= hi {
            self.span = Some((lo, hi));
        }
        if let Some(a) = self.agg.as_mut() {
            a.feed_tagged(run);
        }
    }

    fn sched(&mut self, pcpu: u16, ev: &SchedEvent) {
        if let Some(a) = self.agg.as_mut() {
            a.sched(pcpu, ev);
        }
    }
}

/// Loaded ELF files, found by build id, else by file name.
#[derive(Default)]
struct Elfs {
    images: Vec<ElfImage>,
    /// `--elf` path as given, file name, and the name up to its first `.`, per image.
    names: Vec<(String, String, String)>,
    /// (`--elf` index, guest path) pairs already warned about.
    warned: std::collections::BTreeSet<(usize, String)>,
}

fn stem(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

impl Elfs {
    fn add(&mut self, path: &std::path::Path, img: ElfImage) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let s = stem(&name).to_string();
        self.names.push((path.display().to_string(), name, s));
        self.images.push(img);
    }

    /// The images named like `path`: the same file name, else the same name up to the
    /// first `.` (`libc.so` for `libc.so.6`); the last given first.
    fn by_name(&self, path: &str) -> Vec<usize> {
        let base = procs::basename(path);
        let exact: Vec<usize> = (0..self.names.len())
            .rev()
            .filter(|&i| self.names[i].1 == base)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        let s = stem(base);
        (0..self.names.len())
            .rev()
            .filter(|&i| self.names[i].1 == s || self.names[i].2 == s)
            .collect()
    }

    /// The image for a kernel module or image name (no build id).
    fn find(&self, path: &str) -> Option<&ElfImage> {
        self.by_name(path).first().map(|&i| &self.images[i])
    }

    /// The `--elf` file for a guest object: the one with its build id (whatever its
    /// name), else one of its name without a build id, or any of its name when the
    /// guest gave none. A file of its name with another build id is the wrong file:
    /// never used for it, and one warning per file and object.
    fn pick(&mut self, path: &str, id: Option<&[u8]>, warnings: &mut Vec<String>) -> Option<usize> {
        let Some(id) = id else {
            return self.by_name(path).first().copied();
        };
        if let Some(i) = (0..self.images.len())
            .rev()
            .find(|&i| self.images[i].build_id.as_deref() == Some(id))
        {
            return Some(i);
        }
        let mut found = None;
        for i in self.by_name(path) {
            match &self.images[i].build_id {
                None => {
                    found = found.or(Some(i));
                }
                Some(other) => {
                    if self.warned.insert((i, path.to_string())) {
                        warnings.push(format!(
                            "--elf {}: build id {} differs from the guest's {path} (build id {}): not used for it",
                            self.names[i].0,
                            guest_kit::elf::hex(other),
                            guest_kit::elf::hex(id)
                        ));
                    }
                }
            }
        }
        found
    }
}

/// Symbol source per mapped object, keyed by (guest path, build id).
type ObjectMap = FxHashMap<(String, Option<Vec<u8>>), ObjSyms>;

/// Where a guest object's functions come from.
#[derive(Clone, Copy, Debug)]
enum ObjSyms {
    /// `--elf` file index.
    Elf(usize),
    /// Index into [`GuestSyms::guest_images`] (the bundle's `usym` lines).
    Guest(usize),
}

/// Chooses the symbol source of every object a bundle maps (see [`Elfs::pick`]; the
/// bundle's `usym` lines when no `--elf` file fits).
fn object_symbols(
    bundle: Option<&Bundle>,
    elfs: &mut Elfs,
    warnings: &mut Vec<String>,
) -> (ObjectMap, Vec<ElfImage>) {
    let mut chosen = FxHashMap::default();
    let mut guest: Vec<ElfImage> = Vec::new();
    let mut guest_index: FxHashMap<&str, usize> = FxHashMap::default();
    let Some(b) = bundle else {
        return (chosen, guest);
    };
    let with_usyms: std::collections::BTreeSet<&str> =
        b.usyms.iter().map(|s| s.path.as_str()).collect();
    for m in &b.maps {
        let key = (m.path.clone(), m.build_id.clone());
        if chosen.contains_key(&key) {
            continue;
        }
        let pick = match elfs.pick(&m.path, m.build_id.as_deref(), warnings) {
            Some(i) => Some(ObjSyms::Elf(i)),
            None if with_usyms.contains(m.path.as_str()) => {
                let i = *guest_index.entry(m.path.as_str()).or_insert_with(|| {
                    guest.push(ElfImage::from_bundle(b, &m.path));
                    guest.len() - 1
                });
                Some(ObjSyms::Guest(i))
            }
            None => None,
        };
        if let Some(p) = pick {
            chosen.insert(key, p);
        }
    }
    (chosen, guest)
}

/// `--kernel-map`: a System.map and the kernel release it belongs to (if known).
struct KernelMap {
    map: SystemMap,
    release: Option<String>,
    path: PathBuf,
}

impl KernelMap {
    fn load(opts: &Options, warnings: &mut Vec<String>) -> Option<KernelMap> {
        let Some(path) = &opts.kernel_map else {
            if opts.kernel_release.is_some() {
                warnings.push("--kernel-release ignored: no --kernel-map".to_string());
            }
            return None;
        };
        let data = match input::read_side_file("--kernel-map", path) {
            Ok(d) => d,
            Err(w) => {
                warnings.push(w);
                return None;
            }
        };
        let shown = path.display();
        let map = SystemMap::parse(&String::from_utf8_lossy(&data));
        if map.text_syms.is_empty() {
            warnings.push(format!(
                "--kernel-map {shown}: no text symbols (Debian's image package ships a stub; the real System.map is in its -dbg package)"
            ));
            return None;
        }
        if map.bad_lines > 0 {
            warnings.push(format!(
                "--kernel-map {shown}: skipped {} line(s) that are not `ADDR TYPE NAME`",
                map.bad_lines
            ));
        }
        if map.text.is_none() {
            warnings.push(format!(
                "--kernel-map {shown}: no `_text` symbol: cannot relocate, addresses used as linked"
            ));
        }
        let release = opts
            .kernel_release
            .clone()
            .or_else(|| SystemMap::release_from_file_name(path));
        Some(KernelMap {
            map,
            release,
            path: path.clone(),
        })
    }

    /// The KASLR offset of VM `vm` (runtime `_text` - the map's `_text`), 0 when a
    /// side is unknown; warns about what is missing or does not match.
    fn delta(&self, bundle: Option<&Bundle>, vm: &str, warnings: &mut Vec<String>) -> u64 {
        let shown = self.path.display();
        let Some(link_text) = self.map.text else {
            return 0;
        };
        let Some(b) = bundle else {
            warnings.push(format!(
                "--kernel-map {shown}: VM `{vm}` has no bundle: System.map used as linked (right only without KASLR)"
            ));
            return 0;
        };
        let Some(k) = &b.kernel else {
            warnings.push(format!(
                "--kernel-map {shown}: the bundle of VM `{vm}` has no `kernel` line: System.map used as linked (right only without KASLR)"
            ));
            return 0;
        };
        if let Some(want) = &self.release
            && want != &k.release
        {
            warnings.push(format!(
                "--kernel-map {shown} is for kernel {want}, but VM `{vm}` runs {}: its kernel functions may be misnamed",
                k.release
            ));
        }
        match k.text {
            Some(text) => text.wrapping_sub(link_text),
            None => {
                warnings.push(format!(
                    "--kernel-map {shown}: the bundle of VM `{vm}` does not know its `_text` (text=?): System.map used as linked"
                ));
                0
            }
        }
    }
}

/// The kernel symbol table of one VM: its bundle's `ksym` lines; without kernel-image
/// lines among them, `--kernel-map` relocated for this VM (plus the bundle's module
/// lines); `--kallsyms` when that leaves nothing.
fn kernel_symbols(
    bundle: Option<&Bundle>,
    vm: &str,
    kernel_map: Option<&KernelMap>,
    extra: Option<&[guest_kit::KSym]>,
    warnings: &mut Vec<String>,
) -> SymbolTable {
    let ksyms = bundle.map_or(&[][..], |b| b.ksyms.as_slice());
    let image_lines = ksyms
        .iter()
        .any(|s| s.module.is_none() && matches!(s.kind, 't' | 'T' | 'w' | 'W'));
    let mut table = match kernel_map {
        Some(km) if !image_lines => {
            let delta = km.delta(bundle, vm, warnings);
            symbols::kernel_table(ksyms, Some(&km.map), delta)
        }
        _ => symbols::kallsyms_table(ksyms),
    };
    if table.is_empty()
        && let Some(extra) = extra
    {
        table = symbols::kallsyms_table(extra);
    }
    table
}

/// Symbolises one VM's guest samples.
struct GuestSyms<'a> {
    bundle: Option<&'a Bundle>,
    labels: Vec<String>,
    maps: FxHashMap<u32, Vec<guest_kit::Map>>,
    ksyms: SymbolTable,
    elfs: &'a Elfs,
    /// Symbol source per mapped (path, build id).
    objects: ObjectMap,
    /// Objects named from the bundle's `usym` lines.
    guest_images: Vec<ElfImage>,
}

impl GuestSyms<'_> {
    fn kernel_module(&self, rip: u64) -> String {
        self.bundle
            .and_then(|b| b.kmaps.iter().find(|k| k.start <= rip && rip < k.end))
            .map_or_else(
                || "vmlinux".to_string(),
                |k| procs::basename(&k.path).to_string(),
            )
    }

    /// The process of a sample as the Module column names it: `comm(pid)`, `[kernel]`
    /// (pid 0) or `[unknown process cr3=...]`; kernel samples included.
    fn process(&self, k: &GuestKey) -> String {
        match k.proc_ {
            ProcKey::Known(i) => self
                .labels
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| "[unknown process]".to_string()),
            ProcKey::Unknown(cr3) => procs::unknown_label(cr3),
        }
    }

    fn resolve(&self, k: &GuestKey) -> (String, String, RowKind) {
        if k.kernel {
            if let Some(name) = self.ksyms.lookup(k.rip) {
                let (f, m) = symbols::split_ksym(name);
                let module = m.map_or_else(|| self.kernel_module(k.rip), str::to_string);
                return (f.to_string(), module, RowKind::Function);
            }
            let module = self.kernel_module(k.rip);
            if let Some(f) = self
                .elfs
                .find(&module)
                .and_then(|e| e.symbols.lookup(k.rip))
            {
                return (f.to_string(), module, RowKind::Function);
            }
            return ("[unknown]".to_string(), module, RowKind::Unknown);
        }
        let (label, pid) = match k.proc_ {
            ProcKey::Known(i) => {
                let p = self.bundle.and_then(|b| b.procs.get(i as usize));
                (
                    self.labels.get(i as usize).cloned().unwrap_or_default(),
                    p.map(|p| (p.pid, p.comm.as_str())),
                )
            }
            ProcKey::Unknown(cr3) => (procs::unknown_label(cr3), None),
        };
        let Some((pid, comm)) = pid else {
            return ("[unknown]".to_string(), label, RowKind::Unknown);
        };
        let Some(map) = self.maps.get(&pid).and_then(|m| procs::find_map(m, k.rip)) else {
            return ("[unknown]".to_string(), label, RowKind::Unknown);
        };
        let obj = procs::basename(&map.path);
        // The program itself is shown as the process; other objects as process:object.
        let main = obj == comm || (comm.len() >= 15 && obj.starts_with(comm));
        let module = if main {
            label
        } else {
            format!("{label}:{obj}")
        };
        let off = (k.rip - map.start).wrapping_add(map.offset);
        let image = self
            .objects
            .get(&(map.path.clone(), map.build_id.clone()))
            .map(|o| match *o {
                ObjSyms::Elf(i) => &self.elfs.images[i],
                ObjSyms::Guest(i) => &self.guest_images[i],
            });
        match image.and_then(|e| e.vaddr_of_offset(off).and_then(|a| e.symbols.lookup(a))) {
            Some(f) => (f.to_string(), module, RowKind::Function),
            None => ("[unknown]".to_string(), module, RowKind::Unknown),
        }
    }
}

/// Rows kept by `--percent-limit` and `--top` (chosen by samples), in `--sort` order;
/// also how many `--top` and the limit left out.
fn finish_rows(mut rows: Vec<Row>, opts: &Options) -> (Vec<Row>, usize, usize) {
    rows.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.module.cmp(&b.module))
    });
    let before = rows.len();
    if opts.percent_limit > 0.0 {
        rows.retain(|r| r.percent >= opts.percent_limit);
    }
    let below = before - rows.len();
    let top = opts.top;
    let omitted = if top > 0 && rows.len() > top {
        rows.len() - top
    } else {
        0
    };
    if top > 0 {
        rows.truncate(top);
    }
    match opts.sort {
        SortKey::Samples => {}
        SortKey::Name => rows.sort_by(|a, b| {
            a.function
                .cmp(&b.function)
                .then_with(|| a.module.cmp(&b.module))
        }),
        SortKey::Module => rows.sort_by(|a, b| {
            a.module
                .cmp(&b.module)
                .then_with(|| b.samples.cmp(&a.samples))
                .then_with(|| a.function.cmp(&b.function))
        }),
    }
    (rows, omitted, below)
}

fn guest_section(
    opts: &Options,
    syms: &GuestSyms<'_>,
    vm_name: &str,
    vm_id: u16,
    vcpu: Option<u16>,
    parts: &[&VcpuCounts],
    mut stacks: Option<&mut BTreeMap<String, u64>>,
) -> Section {
    let os: u64 = parts.iter().map(|c| c.os).sum();
    let user: u64 = parts.iter().map(|c| c.user).sum();
    let idle: u64 = parts.iter().map(|c| c.idle).sum();
    let steal: u64 = parts.iter().map(|c| c.steal()).sum();
    let total = os + user + idle + steal;
    let filtering = !opts.pid.is_empty() || !opts.comm.is_empty();
    let keep = |k: &GuestKey| -> bool {
        if !filtering {
            return true;
        }
        let ProcKey::Known(i) = k.proc_ else {
            return false;
        };
        let Some(p) = syms.bundle.and_then(|b| b.procs.get(i as usize)) else {
            return false;
        };
        (opts.pid.is_empty() || opts.pid.contains(&p.pid))
            && (opts.comm.is_empty() || opts.comm.contains(&p.comm))
    };
    let mut acc: BTreeMap<(String, String, RowKind), u64> = BTreeMap::new();
    for c in parts {
        for (k, n) in c.funcs() {
            if keep(&k) {
                let row = syms.resolve(&k);
                if let Some(st) = stacks.as_deref_mut() {
                    *st.entry(stack(&[vm_name, &syms.process(&k), &row.0]))
                        .or_default() += n;
                }
                *acc.entry(row).or_default() += n;
            }
        }
        if !filtering {
            let mut add = |f: &str, m: String, kind, n: u64| {
                if n > 0 {
                    if let Some(st) = stacks.as_deref_mut() {
                        *st.entry(stack(&[vm_name, f])).or_default() += n;
                    }
                    *acc.entry((f.to_string(), m, kind)).or_default() += n;
                }
            };
            add("[idle]", "(halt_exit)".to_string(), RowKind::Idle, c.idle);
            add(
                "[steal]",
                "(outside)".to_string(),
                RowKind::Steal,
                c.steal_outside,
            );
            for (sib, n) in &c.steal_on {
                add("[steal]", format!("(on vcpu{sib})"), RowKind::Steal, *n);
            }
        }
    }
    let rows = acc
        .into_iter()
        .map(|((function, module, kind), samples)| Row {
            samples,
            percent: pct(samples, total),
            function,
            module,
            kind,
        })
        .collect();
    let (rows, rows_omitted, rows_below_limit) = finish_rows(rows, opts);
    let share = |name, samples| Share {
        name,
        samples,
        percent: pct(samples, total),
    };
    Section {
        level: "guest",
        vm: Some(vm_name.to_string()),
        vm_id: Some(vm_id),
        vcpu,
        total,
        shares: vec![
            share("OS", os),
            share("USER", user),
            share("IDLE", idle),
            share("steal", steal),
        ],
        rows,
        rows_omitted,
        rows_below_limit,
    }
}

/// The bundles the guests delivered through the hypercall channel (read ahead of the
/// samples, see [`input::read_channel`]): each VM's last complete bundle is appended to
/// `bundles` when no `--bundle` names that VM (an explicit `--bundle` wins; a note says so
/// when the two differ). Returns VM id -> index into `bundles`; problems of the channel
/// data (lost records, a delivery cut off) become warnings.
fn channel_bundles(
    opts: &Options,
    by_name: &BTreeMap<String, usize>,
    paths: &[&PathBuf],
    bundles: &mut Vec<Bundle>,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<u16, usize>, Fatal> {
    let scan = input::read_channel(&opts.log)?;
    let mut used = BTreeMap::new();
    for (id, ch) in scan.channel {
        let name = scan
            .vms
            .get(&id)
            .map_or_else(|| format!("vm{id}"), |v| v.name.clone());
        for w in &ch.warnings {
            warnings.push(format!("hypercall channel of VM `{name}`: {w}"));
        }
        let Some(d) = ch.bundle else {
            continue;
        };
        if let Some(&i) = by_name.get(&name) {
            if bundles[i] != d.bundle {
                warnings.push(format!(
                    "--bundle {} differs from the bundle VM `{name}` delivered through the hypercall channel: the --bundle is used",
                    paths[i].display()
                ));
            }
            continue;
        }
        if d.bundle.vm != name && scan.vms.contains_key(&id) {
            warnings.push(format!(
                "hypercall channel of VM `{name}`: its bundle says `vm {}`; used for VM `{name}`, which delivered it",
                d.bundle.vm
            ));
        }
        used.insert(id, bundles.len());
        bundles.push(d.bundle);
    }
    Ok(used)
}

/// Builds the report. Fails only when nothing usable remains.
pub fn build(opts: &Options) -> Result<Report, Fatal> {
    let mut warnings = Vec::new();
    // Side files first: their problems are warnings.
    let mut bundles = Vec::new();
    let mut bundle_paths = Vec::new();
    for path in &opts.bundles {
        match input::read_side_file("--bundle", path) {
            Err(w) => warnings.push(w),
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Err(_) => warnings.push(format!("--bundle {}: not UTF-8 text", path.display())),
                Ok(text) => match Bundle::parse(text) {
                    Ok(b) => {
                        bundles.push(b);
                        bundle_paths.push(path);
                    }
                    Err(e) => warnings.push(format!("--bundle {}: {e}", path.display())),
                },
            },
        }
    }
    let bundles_by_name: BTreeMap<String, usize> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| (b.vm.clone(), i))
        .collect();
    let explicit = bundles.len();
    let channel = channel_bundles(
        opts,
        &bundles_by_name,
        &bundle_paths,
        &mut bundles,
        &mut warnings,
    )?;
    let mut elfs = Elfs::default();
    for path in &opts.elfs {
        match input::read_side_file("--elf", path)
            .and_then(|d| ElfImage::parse(&d).map_err(|e| format!("--elf {}: {e}", path.display())))
        {
            Err(w) => warnings.push(w),
            Ok(img) => elfs.add(path, img),
        }
    }
    let hv = opts.hv_elf.as_ref().and_then(|path| {
        match input::read_side_file("--hv-elf", path).and_then(|d| {
            ElfImage::parse(&d).map_err(|e| format!("--hv-elf {}: {e}", path.display()))
        }) {
            Ok(i) => Some(i),
            Err(w) => {
                warnings.push(w);
                None
            }
        }
    });
    let extra_ksyms =
        opts.kallsyms
            .as_ref()
            .and_then(|path| match input::read_side_file("--kallsyms", path) {
                Err(w) => {
                    warnings.push(w);
                    None
                }
                Ok(d) => {
                    let (syms, bad) = symbols::parse_kallsyms(&String::from_utf8_lossy(&d));
                    if bad > 0 {
                        warnings.push(format!(
                            "--kallsyms {}: skipped {bad} line(s) that are not `ADDR TYPE NAME`",
                            path.display()
                        ));
                    }
                    if syms.is_empty() {
                        warnings.push(format!("--kallsyms {}: no symbols", path.display()));
                    }
                    Some(syms)
                }
            });
    let kernel_map = KernelMap::load(opts, &mut warnings);

    let mut collect = Collect {
        opts,
        bundles_by_name: &bundles_by_name,
        bundles: &bundles,
        explicit,
        channel: &channel,
        agg: None,
        warnings: Vec::new(),
        vm_bundle: BTreeMap::new(),
        span: None,
    };
    let info = input::read_log(&opts.log, &mut collect)?;
    warnings.extend(input::log_notes(&opts.log, &info));
    warnings.append(&mut collect.warnings);
    let shown = opts.log.display();
    let Some(mut agg) = collect.agg.take() else {
        return Err(Fatal(format!(
            "{shown}: no usable samples ({} bytes, {} frames decoded, {} corrupt frames skipped)",
            info.file_bytes, info.stats.frames, info.stats.corrupt_frames
        )));
    };
    agg.finish();
    if agg.host.total == 0 {
        return Err(Fatal(format!(
            "{shown}: no samples in the time window ({} samples in the log)",
            agg.seen
        )));
    }
    for b in &bundles[..explicit] {
        if !info.vms.values().any(|v| v.name == b.vm)
            && !collect.vm_bundle.values().any(|&i| bundles[i].vm == b.vm)
        {
            let names: Vec<&str> = info.vms.values().map(|v| v.name.as_str()).collect();
            warnings.push(format!(
                "bundle for VM `{}` matches no VM of the log (VMs: {})",
                b.vm,
                if names.is_empty() {
                    "unknown".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    let vm_name = |id: u16| {
        info.vms
            .get(&id)
            .map_or_else(|| format!("vm{id}"), |v| v.name.clone())
    };

    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    // Host level.
    let host = (opts.level != Level::Guest).then(|| {
        let h = &agg.host;
        let mut acc: BTreeMap<(String, String, RowKind), u64> = BTreeMap::new();
        let mut unresolved = 0;
        for (rip, n) in &h.host_rips {
            let f = hv.as_ref().and_then(|e| e.symbols.lookup(*rip));
            if f.is_none() {
                unresolved += n;
            }
            let kind = if f.is_some() { RowKind::Function } else { RowKind::Unknown };
            *stacks.entry(stack(&["hypervisor", f.unwrap_or("[unknown]")])).or_default() += n;
            *acc.entry((f.unwrap_or("[unknown]").to_string(), "hypervisor".to_string(), kind)).or_default() += n;
        }
        if let (Some(path), true) = (&opts.hv_elf, hv.is_some() && unresolved * 2 > h.host) {
            warnings.push(format!(
                "--hv-elf {}: {}% of hypervisor samples fall outside its functions; is it the build that wrote the log{}?",
                path.display(),
                (unresolved * 100) / h.host.max(1),
                info.header.as_ref().map_or(String::new(), |hd| format!(" (build `{}`)", hd.hv_build_id))
            ));
        }
        for (id, n) in h.per_vm.iter().enumerate().filter(|(_, n)| **n > 0) {
            let id = id as u16;
            acc.insert((format!("[{}]", vm_name(id)), format!("(VM{id})"), RowKind::Vm), *n);
        }
        let rows = acc
            .into_iter()
            .map(|((function, module, kind), samples)| Row {
                samples,
                percent: pct(samples, h.total),
                function,
                module,
                kind,
            })
            .collect();
        let (rows, rows_omitted, rows_below_limit) = finish_rows(rows, opts);
        let vm: u64 = h.per_vm.iter().sum();
        Section {
            level: "host",
            vm: None,
            vm_id: None,
            vcpu: None,
            total: h.total,
            shares: vec![
                Share { name: "OS", samples: h.host, percent: pct(h.host, h.total) },
                Share { name: "USER", samples: 0, percent: 0.0 },
                Share { name: "VM", samples: vm, percent: pct(vm, h.total) },
            ],
            rows,
            rows_omitted,
            rows_below_limit,
        }
    });

    // Guest level.
    let mut guests = Vec::new();
    if opts.level != Level::Host {
        let mut vm_ids: Vec<u16> = agg.vcpus.iter().map(|c| c.vm).collect();
        vm_ids.extend(info.vms.keys());
        vm_ids.sort();
        vm_ids.dedup();
        if let Some(want) = &opts.vm
            && !vm_ids.iter().any(|id| &vm_name(*id) == want)
        {
            let names: Vec<String> = vm_ids.iter().map(|id| vm_name(*id)).collect();
            warnings.push(format!(
                "--vm {want}: no such VM in the log (VMs: {})",
                names.join(", ")
            ));
        }
        for id in vm_ids {
            let name = vm_name(id);
            if opts.vm.as_ref().is_some_and(|w| w != &name) {
                continue;
            }
            let bundle = collect.vm_bundle.get(&id).map(|&i| &bundles[i]);
            let ksyms = kernel_symbols(
                bundle,
                &name,
                kernel_map.as_ref(),
                extra_ksyms.as_deref(),
                &mut warnings,
            );
            let (objects, guest_images) = object_symbols(bundle, &mut elfs, &mut warnings);
            let syms = GuestSyms {
                bundle,
                labels: bundle.map(procs::labels).unwrap_or_default(),
                maps: bundle.map(procs::maps_by_pid).unwrap_or_default(),
                ksyms,
                elfs: &elfs,
                objects,
                guest_images,
            };
            let parts: Vec<&VcpuCounts> = agg.vcpus.iter().filter(|c| c.vm == id).collect();
            guests.push(guest_section(
                opts,
                &syms,
                &name,
                id,
                None,
                &parts,
                Some(&mut stacks),
            ));
            if let Some(n) = opts.vcpu {
                let one: Vec<&VcpuCounts> = parts.iter().copied().filter(|c| c.vcpu == n).collect();
                if one.is_empty() {
                    warnings.push(format!(
                        "--vcpu {n}: VM `{name}` has no samples of vCPU {n}"
                    ));
                } else {
                    guests.push(guest_section(opts, &syms, &name, id, Some(n), &one, None));
                }
            }
        }
    }

    let s = &info.stats;
    let header = info.header.as_ref();
    let summary = Summary {
        samples_read: s.samples(),
        samples_expected: info.end.as_ref().map(|e| e.samples_total),
        samples_in_window: agg.host.total,
        source: header.map_or_else(
            || "unknown".to_string(),
            |h| match h.source {
                vmlog::SamplingSource::LapicTimer => "LAPIC timer".to_string(),
                vmlog::SamplingSource::PmuNmi { event } => format!("PMU NMI (event {event:#x})"),
            },
        ),
        rate_hz: header
            .filter(|h| h.period_tsc > 0)
            .map_or(0.0, |h| h.tsc_hz as f64 / h.period_tsc as f64),
        time_span_s: match (collect.span, header) {
            (Some((lo, hi)), Some(h)) if h.tsc_hz > 0 => Some((hi - lo) as f64 / h.tsc_hz as f64),
            _ => None,
        },
        pcpus: header.map_or_else(
            || {
                s.streams
                    .keys()
                    .filter(|k| **k != vmlog::GLOBAL_STREAM)
                    .count() as u64
            },
            |h| u64::from(h.pcpus),
        ),
        lost_frames: s.streams.values().map(|st| st.missing_frames).sum(),
        sequence_gaps: s.gaps(),
        dropped_samples: s.dropped(),
        warnings: warnings.len(),
    };
    Ok(Report {
        report_version: 1,
        summary,
        log: LogSummary {
            path: shown.to_string(),
            bytes: info.file_bytes,
            frames: s.frames,
            samples: s.samples(),
            samples_in_window: agg.host.total,
            corrupt_frames: s.corrupt_frames,
            sequence_gaps: s.gaps(),
            dropped_samples: s.dropped(),
            out_of_order_samples: info.merge.out_of_order,
            tsc_hz: info.header.as_ref().map_or(0, |h| h.tsc_hz),
            period_tsc: info.header.as_ref().map_or(0, |h| h.period_tsc),
            hv_build_id: info.header.as_ref().map(|h| h.hv_build_id.clone()),
        },
        host,
        guests,
        warnings,
        stacks,
    })
}

/// One frame of a collapsed stack: `;` (the frame separator) becomes `:`, and line
/// breaks become spaces.
pub fn frame(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains([';', '\n', '\r']) {
        name.replace(';', ":").replace(['\n', '\r'], " ").into()
    } else {
        name.into()
    }
}

fn stack(frames: &[&str]) -> String {
    let v: Vec<std::borrow::Cow<'_, str>> = frames.iter().map(|f| frame(f)).collect();
    v.join(";")
}

/// Renders the report as collapsed stacks: `frame;frame;frame COUNT` per distinct
/// stack, sorted by stack (root first: `VM;process;function`, `VM;[idle]`,
/// `VM;[steal]`, `hypervisor;function`).
pub fn to_collapsed(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (s, n) in r.stacks.iter().filter(|(_, n)| **n > 0) {
        let _ = writeln!(out, "{s} {n}");
    }
    out
}

/// Renders the collapsed stacks as a flame graph SVG (`inferno`), titled with the log.
pub fn to_flamegraph(r: &Report) -> Result<String, Fatal> {
    let collapsed = to_collapsed(r);
    if collapsed.is_empty() {
        return Err(Fatal(format!(
            "{}: no samples for a flame graph",
            r.log.path
        )));
    }
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = format!("analyzer: {}", r.log.path);
    opt.count_name = "samples".to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opt, collapsed.lines(), &mut svg)
        .map_err(|e| Fatal(format!("flame graph: {e}")))?;
    String::from_utf8(svg).map_err(|e| Fatal(format!("flame graph: {e}")))
}

/// Widest Function column of the text report, in characters; longer names are cut in
/// the middle with `…` (the JSON report has them whole).
pub const FUNCTION_WIDTH: usize = 60;

/// `name` cut to at most `width` characters: its start, `…`, and its end (the end of a
/// Rust or C++ symbol is the function's own name).
pub fn fit(name: &str, width: usize) -> std::borrow::Cow<'_, str> {
    let n = name.chars().count();
    if n <= width || width < 3 {
        return name.into();
    }
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let mut out: String = name.chars().take(head).collect();
    out.push('…');
    out.extend(name.chars().skip(n - tail));
    out.into()
}

fn section_text(out: &mut String, title: &str, s: &Section) {
    use std::fmt::Write;
    let _ = writeln!(out, "== {title} ==");
    let names: Vec<&str> = s.shares.iter().map(|x| x.name).collect();
    let values: Vec<String> = s
        .shares
        .iter()
        .map(|x| format!("{:.2}%", x.percent))
        .collect();
    let _ = writeln!(
        out,
        "Total samples:{}   {} = {}",
        s.total,
        names.join(":"),
        values.join(":")
    );
    let w = s
        .rows
        .iter()
        .map(|r| r.function.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(20, FUNCTION_WIDTH);
    let _ = writeln!(
        out,
        "{:>8}  {:>6}  {:<w$}  Module",
        "Samples", "%Ratio", "Function"
    );
    for r in &s.rows {
        let _ = writeln!(
            out,
            "{:>8}  {:>6.2}  {:<w$}  {}",
            r.samples,
            r.percent,
            fit(&r.function, w),
            r.module
        );
    }
    if s.rows_below_limit > 0 {
        let _ = writeln!(
            out,
            "({} rows under --percent-limit not shown)",
            s.rows_below_limit
        );
    }
    if s.rows_omitted > 0 {
        let _ = writeln!(out, "({} more rows; --top 0 shows all)", s.rows_omitted);
    }
}

/// The `#` summary lines of the text report (ending with a lone `#`).
pub fn summary_text(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let expected = match s.samples_expected {
        Some(n) if n == s.samples_read => format!("{n} expected (end record)"),
        Some(n) => format!(
            "{n} expected (end record): {} lost",
            n.saturating_sub(s.samples_read)
        ),
        None => "expected unknown (no end record: truncated log)".to_string(),
    };
    let _ = write!(out, "# Samples: {} read, {expected}", s.samples_read);
    if s.samples_in_window != s.samples_read {
        let _ = write!(out, "; {} in the time window", s.samples_in_window);
    }
    out.push('\n');
    if s.rate_hz > 0.0 {
        let _ = writeln!(out, "# Source: {}, {:.1} Hz per pCPU", s.source, s.rate_hz);
    } else {
        let _ = writeln!(out, "# Source: {}, rate unknown", s.source);
    }
    let span = s
        .time_span_s
        .map_or_else(|| "unknown".to_string(), |t| format!("{t:.3} s"));
    let _ = writeln!(out, "# Time span: {span}, pCPUs: {}", s.pcpus);
    let _ = writeln!(
        out,
        "# Lost: {} frames ({} sequence gaps), {} samples dropped",
        s.lost_frames, s.sequence_gaps, s.dropped_samples
    );
    let _ = writeln!(out, "# Warnings: {}", s.warnings);
    out.push_str("#\n");
    out
}

/// Renders the report as text: the `#` summary lines, then the tables.
pub fn to_text(r: &Report) -> String {
    let mut out = summary_text(&r.summary);
    let mut first = true;
    if let Some(h) = &r.host {
        section_text(&mut out, "Host level", h);
        first = false;
    }
    for g in &r.guests {
        if !first {
            out.push('\n');
        }
        first = false;
        let name = g.vm.as_deref().unwrap_or("?");
        let id = g.vm_id.unwrap_or(0);
        let title = match g.vcpu {
            Some(v) => format!("Guest level: {name} (VM{id}) vCPU {v}"),
            None => format!("Guest level: {name} (VM{id})"),
        };
        section_text(&mut out, &title, g);
    }
    out
}

/// Renders the report as JSON (layout in analyzer/README.md).
pub fn to_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
