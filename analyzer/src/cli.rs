//! Command line (clap derive) and dispatch.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report::{self, Format, Level, Options, SortKey};
use crate::rundir::{self, Manifest};

/// Reads the hypervisor's sample log (vmlog frames from COM2) and prints where
/// the whole machine spent its time: at host level (hypervisor functions and
/// one line per VM) and at guest level (per VM and vCPU: guest functions per
/// process, idle and steal).
#[derive(Debug, Parser)]
#[command(name = "analyzer", version, about, long_about = None)]
#[command(after_help = "Examples:\n  \
    analyzer report build/run                  (the run directory of `cargo xtask run`: its manifest.txt names every file)\n  \
    analyzer report build/run/samples.vmlog --bundle web.bundle --elf vmlinux --elf ./server --hv-elf hypervisor.elf\n  \
    analyzer report samples.vmlog --bundle web.bundle --kernel-map System.map-6.1.0-57-amd64\n  \
    analyzer report build/run --level guest --vm web --vcpu 1 --top 10\n  \
    analyzer report build/run --pid 100,101 --sort module --percent-limit 1 --time 2.5,7\n  \
    analyzer report build/run --format collapsed > run.folded\n  \
    analyzer report build/run --format flamegraph --output flame.svg\n  \
    analyzer check build/run/samples.vmlog")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile tables: `Total samples:N  OS:USER:VM = ...` at host level,
    /// `OS:USER:IDLE:steal` per VM at guest level, then `Samples %Ratio
    /// Function Module` rows, largest first.
    ///
    /// Guest processes are named from the guest bundles (--bundle files, else
    /// what each VM delivered through the hypercall channel into the log; `proc`
    /// lines map each CR3 to a PID and name, `map` lines place objects, `ksym` lines or
    /// --kernel-map name kernel functions); functions in objects come from the
    /// --elf files, found by build id (`map ... buildid=`), else by file name (a file
    /// of the right name with another build id is refused with a warning), else from
    /// the bundle's `usym` lines. Idle is time a vCPU was halted
    /// (`[idle] (halt_exit)`); steal is time it was runnable but not running:
    /// `(on vcpuN)` when a sibling vCPU of the same VM held its pCPU, `(outside)`
    /// otherwise.
    Report(Box<ReportArgs>),
    /// Frames, samples per pCPU, sequence gaps, dropped samples, corrupt frames
    /// skipped, time span and bytes per sample of a log.
    Check {
        /// The sample log.
        log: PathBuf,
    },
}

/// `--time START,END`: seconds after the start of sampling; either side may be empty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeRange {
    /// Start (`--from`).
    pub from: Option<f64>,
    /// End (`--to`).
    pub to: Option<f64>,
}

impl std::str::FromStr for TimeRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once(',').ok_or_else(|| {
            format!("`{s}`: expected START,END in seconds (e.g. 2.5,7 or 2.5, or ,7)")
        })?;
        let side = |v: &str| -> Result<Option<f64>, String> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(format!("`{v}`: not a number of seconds >= 0")),
            }
        };
        Ok(TimeRange {
            from: side(a)?,
            to: side(b)?,
        })
    }
}

/// Arguments of `analyzer report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The sample log (e.g. `build/run/samples.vmlog`), or a run directory holding a
    /// `manifest.txt` (e.g. `build/run`, as `cargo xtask run` leaves it, or a copy of
    /// it): its `log=`, `bundle.NAME=`, `elf.NAME=`, `hypervisor_elf=`, `system_map=`
    /// and `kernel_release=` lines stand for the options below, which still override
    /// them. Relative paths in it are relative to the directory; an absolute path that
    /// does not exist is looked up by file name in the directory.
    #[arg(value_name = "LOG|DIR")]
    pub log: PathBuf,
    /// A guest bundle (`gk-bundle` text, one per VM; matched by its `vm NAME`). A VM
    /// without one uses the last complete bundle it delivered through the hypercall
    /// channel (`guest-kit send`: in the log); a --bundle wins over that.
    #[arg(long = "bundle", value_name = "FILE")]
    pub bundles: Vec<PathBuf>,
    /// An ELF with symbols for a guest object (program, library or kernel);
    /// matched to `map` lines by build id when both have one, else to `map`/`kmap`
    /// paths by file name.
    #[arg(long = "elf", value_name = "PATH")]
    pub elfs: Vec<PathBuf>,
    /// The hypervisor ELF, to name hypervisor functions at host level.
    #[arg(long, value_name = "PATH")]
    pub hv_elf: Option<PathBuf>,
    /// A /proc/kallsyms copy for guests whose bundle has no `ksym` lines.
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,
    /// The guest kernel's System.map (`ADDR TYPE NAME`, e.g. from Debian's -dbg
    /// package): names kernel functions (module `vmlinux`) of VMs whose bundle has no
    /// kernel-image `ksym` lines, moved by the KASLR offset of each VM's bundle
    /// (`kernel ... text=` minus the map's `_text`).
    #[arg(long, value_name = "FILE")]
    pub kernel_map: Option<PathBuf>,
    /// The kernel release --kernel-map belongs to (default: from a file name like
    /// `System.map-6.1.0-57-amd64`); a bundle of another release gets a warning.
    #[arg(long, value_name = "RELEASE")]
    pub kernel_release: Option<String>,
    /// Guest level for this VM only.
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// Add a guest-level table for this vCPU (index inside its VM).
    #[arg(long, value_name = "N")]
    pub vcpu: Option<u16>,
    /// Guest-level rows of these guest PIDs only, e.g. `--pid 100,101` (comma-separated
    /// or repeated; percentages stay of the vCPU total; idle/steal rows left out).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Guest-level rows of processes with these names only, e.g. `--comm nginx,'[kernel]'`
    /// (comma-separated or repeated; with --pid, rows must match both).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub comm: Vec<String>,
    /// Start of the time window, seconds after the start of sampling.
    #[arg(long, value_name = "SEC")]
    pub from: Option<f64>,
    /// End of the time window, seconds after the start of sampling.
    #[arg(long, value_name = "SEC")]
    pub to: Option<f64>,
    /// The time window as START,END in seconds after the start of sampling, e.g.
    /// `--time 2.5,7` (`--time 2.5,` = from 2.5 s on, `--time ,7` = up to 7 s); the
    /// same as --from START --to END.
    #[arg(long, value_name = "START,END", conflicts_with_all = ["from", "to"])]
    pub time: Option<TimeRange>,
    /// Rows per table (0 = all).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub top: usize,
    /// Order of the rows shown, e.g. `--sort module` (groups each process's
    /// functions); --top and --percent-limit still pick the rows with most samples.
    #[arg(long, value_enum, value_name = "KEY", default_value_t = SortKey::Samples)]
    pub sort: SortKey,
    /// Hide rows under P percent of their table's total, e.g. `--percent-limit 0.5`
    /// (a note under the table counts them).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub percent_limit: f64,
    /// Output format: `text` (the tables), `json`, `collapsed` (Brendan Gregg's
    /// collapsed stacks, one `frame;frame;frame COUNT` line per distinct stack, root
    /// first: `VM;process;function`, `VM;[idle]`, `VM;[steal]` and
    /// `hypervisor;function`; every sample, not only the --top rows; a `;` inside a
    /// name becomes `:`, since `;` separates frames) or `flamegraph` (an SVG of those
    /// stacks, drawn by the inferno crate). --vm, --pid, --comm, --time and --level
    /// select the samples of collapsed stacks and flame graphs too.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the output to FILE instead of stdout, e.g.
    /// `--format flamegraph --output flame.svg`.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Which tables.
    #[arg(long, value_enum, default_value_t = Level::Both)]
    pub level: Level,
}

/// The report options of a command line: a run directory's manifest filled in
/// under the explicit options.
pub fn report_options(a: ReportArgs) -> Result<Options, crate::Fatal> {
    let (from, to) = match a.time {
        Some(t) => (t.from, t.to),
        None => (a.from, a.to),
    };
    let mut opts = Options {
        log: a.log,
        bundles: a.bundles,
        elfs: a.elfs,
        hv_elf: a.hv_elf,
        kallsyms: a.kallsyms,
        kernel_map: a.kernel_map,
        kernel_release: a.kernel_release,
        vm: a.vm,
        vcpu: a.vcpu,
        pid: a.pid,
        comm: a.comm,
        from,
        to,
        top: a.top,
        level: a.level,
        sort: a.sort,
        percent_limit: a.percent_limit,
    };
    if opts.log.is_dir() {
        let m = Manifest::load(&opts.log)?;
        apply_manifest(&mut opts, m);
    }
    Ok(opts)
}

/// Fills in what `opts` does not say from a run directory's manifest: its bundles
/// (but not for a VM a `--bundle` names), its ELFs before the `--elf` files (the
/// last given wins), its hypervisor ELF, System.map and kernel release.
pub fn apply_manifest(opts: &mut Options, m: Manifest) {
    opts.log = m.log;
    let named: Vec<String> = opts
        .bundles
        .iter()
        .filter_map(|p| rundir::bundle_vm(p))
        .collect();
    let mut bundles: Vec<PathBuf> = m
        .bundles
        .into_iter()
        .filter(|(vm, _)| !named.contains(vm))
        .map(|(_, p)| p)
        .collect();
    bundles.append(&mut opts.bundles);
    opts.bundles = bundles;
    let mut elfs = m.elfs;
    elfs.append(&mut opts.elfs);
    opts.elfs = elfs;
    if opts.hv_elf.is_none() {
        opts.hv_elf = m.hypervisor_elf;
    }
    if opts.kernel_map.is_none() && m.system_map.is_some() {
        opts.kernel_map = m.system_map;
        if opts.kernel_release.is_none() {
            opts.kernel_release = m.kernel_release;
        }
    }
}

/// Runs a parsed command line; returns what to print on stdout and the
/// warnings for stderr, or the fatal one-line error.
pub fn run(cli: Cli) -> Result<(String, Vec<String>), crate::Fatal> {
    match cli.command {
        Command::Check { log } => crate::check::run(&log).map(|s| (s, Vec::new())),
        Command::Report(a) => {
            let format = a.format;
            let output = a.output.clone();
            let opts = report_options(*a)?;
            let r = report::build(&opts)?;
            let text = match format {
                Format::Text => report::to_text(&r),
                Format::Json => report::to_json(&r) + "\n",
                Format::Collapsed => report::to_collapsed(&r),
                Format::Flamegraph => report::to_flamegraph(&r)?,
            };
            match output {
                None => Ok((text, r.warnings)),
                Some(path) => {
                    std::fs::write(&path, text)
                        .map_err(|e| crate::Fatal(format!("--output {}: {e}", path.display())))?;
                    Ok((String::new(), r.warnings))
                }
            }
        }
    }
}
