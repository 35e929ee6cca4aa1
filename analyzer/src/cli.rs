//! Command line (clap derive) and dispatch.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report::{self, Format, Level, Options};

/// Reads the hypervisor's sample log (vmlog frames from COM2) and prints where
/// the whole machine spent its time: at host level (hypervisor functions and
/// one line per VM) and at guest level (per VM and vCPU: guest functions per
/// process, idle and steal).
#[derive(Debug, Parser)]
#[command(name = "analyzer", version, about, long_about = None)]
#[command(after_help = "Examples:\n  \
    analyzer report samples.vmlog --bundle web.bundle --elf vmlinux --elf ./server --hv-elf hypervisor.elf\n  \
    analyzer report samples.vmlog --bundle web.bundle --kernel-map System.map-6.1.0-57-amd64\n  \
    analyzer report samples.vmlog --level guest --vm web --vcpu 1 --top 10\n  \
    analyzer check samples.vmlog")]
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

/// Arguments of `analyzer report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The sample log (e.g. `target/run/samples.vmlog`).
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
    /// Guest-level rows of this guest PID only (percentages stay of the vCPU total).
    #[arg(long, value_name = "N")]
    pub pid: Option<u32>,
    /// Guest-level rows of processes with this name only.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Start of the time window, seconds after the start of sampling.
    #[arg(long, value_name = "SEC")]
    pub from: Option<f64>,
    /// End of the time window, seconds after the start of sampling.
    #[arg(long, value_name = "SEC")]
    pub to: Option<f64>,
    /// Rows per table (0 = all).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub top: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Which tables.
    #[arg(long, value_enum, default_value_t = Level::Both)]
    pub level: Level,
}

/// Runs a parsed command line; returns what to print on stdout and the
/// warnings for stderr, or the fatal one-line error.
pub fn run(cli: Cli) -> Result<(String, Vec<String>), crate::Fatal> {
    match cli.command {
        Command::Check { log } => crate::check::run(&log).map(|s| (s, Vec::new())),
        Command::Report(a) => {
            let opts = Options {
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
                from: a.from,
                to: a.to,
                top: a.top,
                level: a.level,
            };
            let r = report::build(&opts)?;
            let text = match a.format {
                Format::Text => report::to_text(&r),
                Format::Json => report::to_json(&r) + "\n",
            };
            Ok((text, r.warnings))
        }
    }
}
