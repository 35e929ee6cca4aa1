//! `guest-kit`: see `guest-kit --help`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use guest_kit::bundle::{Bundle, bundles_from_console};
use guest_kit::channel;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use guest_kit::collect::{Options, collect};
use guest_kit::truth::truth_from_console;
use guest_kit::watch::{DEFAULT_INTERVAL, WatchOptions, watch};

const HELP: &str = "\
guest-kit: what only the guest knows, for the whole-machine profiler

USAGE:
  guest-kit collect [--out FILE|-] [--vm NAME] [--proc DIR] [--btf FILE] [--kcore FILE]
                    [--kallsyms] [--symbols] [--root DIR]
      Run as root inside a Linux guest. Writes a guest bundle (docs/contracts.md):
      the kernel's release and runtime `_text` (a `kernel` line: the host relocates
      that kernel's System.map by it), user processes (comm) with the CR3 of their
      address space, one `proc 0 [kernel]` line for all kernel threads, their
      file-backed executable mappings, and the kernel image and modules.
      CR3: the kernel's task list is walked from init_task through /proc/kcore, with
      structure offsets from the kernel's BTF; if that fails, a warning says why and
      the `proc` lines say `cr3=?`.
      --out defaults to `-` (stdout); --vm to the host name; --proc to /proc;
      --btf to /sys/kernel/btf/vmlinux; --kcore to PROC/kcore. --kallsyms also writes
      /proc/kallsyms as `ksym` lines (large: about 200,000 lines).
      Each `map` line carries the mapped file's GNU build id (`buildid=`), so the host
      picks the right copy of it. --symbols also writes each mapped object's function
      symbols (`usym` lines, from .symtab, else .dynsym; at most 50,000 an object)
      and loadable segments (`useg`), for objects the host has no copy of. Mapped
      files are opened below --root (default `/`).
      Without root, kallsyms and module addresses read as 0 (a warning says so) and
      no CR3 can be read.

  guest-kit watch --out FILE [--vm NAME] [--interval-ms N] [--until-file PATH | --seconds S]
                  [--ready FILE] [--proc DIR] [--btf FILE] [--kcore FILE] [--symbols]
                  [--root DIR]
      Run as root inside a Linux guest during a measurement. Reads the kernel symbols
      and structure offsets once, then every interval (default 100 ms) walks the task
      list through /proc/kcore, stamps the walk with the TSC (the host's under the
      hypervisor) and sleeps. Each process (PID, CR3 key) gets a `proc` line with its
      validity interval `from=`/`to=` in host TSC: from the end of the walk before the
      one that first saw it to the end of the first walk that no longer saw it (a key
      reused within one interval: the observed bounds). Processes that start and exit
      between two walks are missed. /proc/PID/maps is read at first sight and, for
      processes still alive, at the end. Stops when PATH exists, after S seconds, or
      on SIGTERM, then writes the bundle (same format as `collect`) to FILE and one
      line of cost and counts to stderr. --ready FILE is created after the first walk.
      Build ids and (--symbols) `usym`/`useg` lines as for `collect`, read once the
      watch has stopped.

  guest-kit console FILE
      Writes FILE to stdout with each line prefixed `@gk ` (how a bundle crosses a
      guest console) and waits until the terminal has sent it all (tcdrain), so a
      `poweroff` right after cannot cut it off on a slow emulated UART. Then one line
      to stderr: `guest-kit: sent N bytes in L lines through the console in T ms`
      (TSC-timed: the host TSC under the hypervisor, rate from CPUID 0x15).

  guest-kit send [--kind bundle|N] FILE
      Hands FILE to the profiling hypervisor through the hypercall channel (VMCALL
      GUEST_DATA, at most 65536 bytes a call): the bytes go into the sample log, where
      `analyzer report` and `cargo xtask run` find the bundle of this VM. Checks the
      hypervisor's CPUID signature first (without it a VMCALL would kill the process
      with SIGILL). A bundle (the default kind) must parse. From user mode the VM
      must be booted with `vm=NAME:MODULE:...:channel=user`. Prints
      `guest-kit: sent N bytes in C calls through the hypercall channel in T ms
      (host TSC)`; exits 1 naming the hypervisor's refusal code (NOT_ALLOWED,
      BAD_ADDRESS, TOO_LONG, OVER_BUDGET, BAD_KIND) or when not under the hypervisor.

  guest-kit extract CONSOLE [--out-dir DIR]
      Picks `[NAME] @gk ...` lines out of a console log, checks each bundle and
      writes DIR/NAME.bundle (DIR defaults to `.`; a console read directly, without
      `[NAME] ` prefixes, gives `console.bundle`). Prints one summary line per VM
      and its `truth` line if there is one.

Exit status: 0 ok, 1 failed, 2 bad usage.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("collect") => run_collect(&args[1..]),
        Some("watch") => run_watch(&args[1..]),
        Some("console") => run_console(&args[1..]),
        Some("send") => run_send(&args[1..]),
        Some("extract") => run_extract(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(Failure::Usage(format!("unknown command `{other}`"))),
        None => Err(Failure::Usage("no command given".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("guest-kit: {msg} (see `guest-kit --help`)");
            ExitCode::from(2)
        }
        Err(Failure::Failed(msg)) => {
            eprintln!("guest-kit: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Failed(String),
}

/// `--key value` pairs, and the positional arguments.
type Parsed<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);

/// Splits `--key value` options and `--flag`s (each allowed once; a flag reads as the
/// value `""`) from positional arguments.
fn options<'a>(args: &'a [String], known: &[&str], flags: &[&str]) -> Result<Parsed<'a>, Failure> {
    let (mut opts, mut positional): (Vec<(&str, &str)>, Vec<&str>) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg.starts_with("--") && arg != "-" {
            let value = if flags.contains(&arg.as_str()) {
                ""
            } else if known.contains(&arg.as_str()) {
                it.next()
                    .ok_or_else(|| Failure::Usage(format!("`{arg}` needs a value")))?
            } else {
                return Err(Failure::Usage(format!("unknown option `{arg}`")));
            };
            if opts.iter().any(|(k, _)| k == arg) {
                return Err(Failure::Usage(format!("`{arg}` given twice")));
            }
            opts.push((arg, value));
        } else {
            positional.push(arg);
        }
    }
    Ok((opts, positional))
}

/// The options `collect` and `watch` share: `--proc`, `--vm`, `--btf`, `--kcore`,
/// `--symbols`, `--root`.
fn kernel_options(opts: &[(&str, &str)]) -> Options {
    let proc_root = PathBuf::from(get(opts, "--proc").unwrap_or("/proc"));
    let vm = match get(opts, "--vm") {
        Some(vm) => vm.to_string(),
        None => host_name(&proc_root),
    };
    let mut o = Options::new(&proc_root, &vm);
    if let Some(btf) = get(opts, "--btf") {
        o.btf = PathBuf::from(btf);
    }
    o.kcore = get(opts, "--kcore").map(PathBuf::from);
    o.symbols = get(opts, "--symbols").is_some();
    if let Some(root) = get(opts, "--root") {
        o.file_root = PathBuf::from(root);
    }
    o
}

fn get<'a>(opts: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn run_collect(args: &[String]) -> Result<(), Failure> {
    let (opts, positional) = options(
        args,
        &["--out", "--vm", "--proc", "--btf", "--kcore", "--root"],
        &["--kallsyms", "--symbols"],
    )?;
    if let Some(extra) = positional.first() {
        return Err(Failure::Usage(format!("unexpected argument `{extra}`")));
    }
    let mut collect_opts = kernel_options(&opts);
    collect_opts.kallsyms = get(&opts, "--kallsyms").is_some();
    let collected = collect(&collect_opts).map_err(|e| Failure::Failed(e.to_string()))?;
    for warning in &collected.warnings {
        eprintln!("guest-kit: warning: {warning}");
    }
    let text = collected.bundle.to_text();
    match get(&opts, "--out").unwrap_or("-") {
        "-" => io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| Failure::Failed(format!("cannot write to stdout: {e}"))),
        path => {
            fs::write(path, text).map_err(|e| Failure::Failed(format!("cannot write {path}: {e}")))
        }
    }?;
    let b = &collected.bundle;
    let kernel = match &b.kernel {
        Some(k) => match k.text {
            Some(text) => format!("kernel {} text={text:#x}", k.release),
            None => format!("kernel {} text=?", k.release),
        },
        None => "no kernel line".to_string(),
    };
    eprintln!(
        "guest-kit: {} proc lines ({} with cr3), {} mappings, {} kernel maps, {} kernel symbols, {kernel}",
        b.procs.len(),
        b.procs.iter().filter(|p| p.cr3.is_some()).count(),
        b.maps.len(),
        b.kmaps.len(),
        b.ksyms.len()
    );
    Ok(())
}

fn run_console(args: &[String]) -> Result<(), Failure> {
    let (_, positional) = options(args, &[], &[])?;
    let [file] = positional[..] else {
        return Err(Failure::Usage("`console` takes one FILE".into()));
    };
    let text = fs::read_to_string(file)
        .map_err(|e| Failure::Failed(format!("cannot read {file}: {e}")))?;
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.lines() {
        out.push_str(guest_kit::bundle::CONSOLE_PREFIX);
        out.push_str(line);
        out.push('\n');
    }
    let timer = Timer::start();
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Failed(format!("cannot write to stdout: {e}")))?;
    // SAFETY: tcdrain only waits on the file descriptor; on a non-terminal it fails
    // with ENOTTY, which is fine (nothing to wait for).
    unsafe {
        libc::tcdrain(1);
    }
    // stderr: stdout is the bundle's lines (and the same console in a guest's /init).
    eprintln!(
        "guest-kit: sent {} bytes in {} lines through the console in {}",
        out.len(),
        text.lines().count(),
        timer.elapsed()
    );
    Ok(())
}

/// Times an operation with the TSC (the host's under the hypervisor), converted with
/// the rate of CPUID leaf 0x15; by the wall clock where the CPU gives no rate.
struct Timer {
    tsc: u64,
    wall: std::time::Instant,
}

impl Timer {
    fn start() -> Self {
        Timer {
            tsc: channel::rdtsc(),
            wall: std::time::Instant::now(),
        }
    }

    /// `T ms (host TSC)`, or `T ms (wall clock)`.
    fn elapsed(&self) -> String {
        let ticks = channel::rdtsc().wrapping_sub(self.tsc);
        match channel::tsc_hz() {
            Some(hz) => format!("{:.3} ms (host TSC)", ticks as f64 * 1e3 / hz as f64),
            None => format!(
                "{:.3} ms (wall clock)",
                self.wall.elapsed().as_secs_f64() * 1e3
            ),
        }
    }
}

fn run_send(args: &[String]) -> Result<(), Failure> {
    let (opts, positional) = options(args, &["--kind"], &[])?;
    let [file] = positional[..] else {
        return Err(Failure::Usage("`send` takes one FILE".into()));
    };
    let kind = match get(&opts, "--kind").unwrap_or("bundle") {
        "bundle" => channel::KIND_BUNDLE,
        other => other
            .parse::<u16>()
            .map_err(|_| Failure::Usage(format!("bad --kind `{other}` (`bundle` or a number)")))?,
    };
    let mut data =
        fs::read(file).map_err(|e| Failure::Failed(format!("cannot read {file}: {e}")))?;
    if kind == channel::KIND_BUNDLE {
        let text = std::str::from_utf8(&data)
            .map_err(|_| Failure::Failed(format!("{file}: a bundle must be UTF-8 text")))?;
        if let Err(e) = Bundle::parse(text) {
            return Err(Failure::Failed(format!(
                "{file} is not a guest bundle: {e}"
            )));
        }
        // The host takes a bundle as whole when it ends with a newline (the console
        // copy of it does too).
        if data.last() != Some(&b'\n') {
            data.push(b'\n');
        }
    }
    let timer = Timer::start();
    let sent = channel::send(&data, kind).map_err(|e| Failure::Failed(e.to_string()))?;
    println!(
        "guest-kit: sent {} bytes in {} calls through the hypercall channel in {}",
        sent.bytes,
        sent.calls,
        timer.elapsed()
    );
    Ok(())
}

/// Set by SIGTERM: the watch ends after its current walk.
static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::Relaxed);
}

fn run_watch(args: &[String]) -> Result<(), Failure> {
    let (opts, positional) = options(
        args,
        &[
            "--out",
            "--vm",
            "--interval-ms",
            "--until-file",
            "--seconds",
            "--ready",
            "--proc",
            "--btf",
            "--kcore",
            "--root",
        ],
        &["--symbols"],
    )?;
    if let Some(extra) = positional.first() {
        return Err(Failure::Usage(format!("unexpected argument `{extra}`")));
    }
    let out =
        get(&opts, "--out").ok_or_else(|| Failure::Usage("`watch` needs --out FILE".into()))?;
    let interval = match get(&opts, "--interval-ms") {
        None => DEFAULT_INTERVAL,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (1..=3_600_000).contains(&ms) => Duration::from_millis(ms),
            _ => {
                return Err(Failure::Usage(format!(
                    "bad --interval-ms `{v}` (1 to 3600000)"
                )));
            }
        },
    };
    let seconds = match get(&opts, "--seconds") {
        None => None,
        Some(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Some(s),
            _ => return Err(Failure::Usage(format!("bad --seconds `{v}`"))),
        },
    };
    let until_file = get(&opts, "--until-file").map(PathBuf::from);
    if seconds.is_some() && until_file.is_some() {
        return Err(Failure::Usage(
            "give --until-file or --seconds, not both".into(),
        ));
    }
    let collect_opts = kernel_options(&opts);
    let watch_opts = WatchOptions {
        collect: collect_opts,
        interval,
        until_file,
        seconds,
        ready_file: get(&opts, "--ready").map(PathBuf::from),
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let watched = watch(&watch_opts, &|| TERMINATED.load(Ordering::Relaxed))
        .map_err(|e| Failure::Failed(e.to_string()))?;
    for warning in &watched.warnings {
        eprintln!("guest-kit: warning: {warning}");
    }
    let text = watched.bundle.to_text();
    match out {
        "-" => io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| Failure::Failed(format!("cannot write to stdout: {e}"))),
        path => {
            fs::write(path, &text).map_err(|e| Failure::Failed(format!("cannot write {path}: {e}")))
        }
    }?;
    let s = &watched.stats;
    let per_walk_us = if s.polls > 0 {
        s.polling_cpu * 1e6 / s.polls as f64
    } else {
        0.0
    };
    // Two lines: a console relay may cut long ones.
    eprintln!(
        "guest-kit: watch: {} walks every {} ms over {:.1} s ({} failed), {} tasks and {} kcore reads in the last",
        s.polls,
        interval.as_millis(),
        s.polling_wall,
        s.failed_polls,
        s.tasks,
        s.reads,
    );
    eprintln!(
        "guest-kit: watch: startup {:.2} s CPU, polling {:.3} s CPU = {:.2} % of one CPU ({per_walk_us:.0} us a walk); \
         {} process lines, {} ended, {} keys reused within an interval; bundle {} bytes",
        s.startup_cpu,
        s.polling_cpu,
        s.polling_share(),
        s.lines,
        s.exited,
        s.reuses,
        text.len()
    );
    Ok(())
}

fn host_name(proc_root: &Path) -> String {
    fs::read_to_string(proc_root.join("sys/kernel/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "guest".to_string())
}

fn run_extract(args: &[String]) -> Result<(), Failure> {
    let (opts, positional) = options(args, &["--out-dir"], &[])?;
    let [console] = positional[..] else {
        return Err(Failure::Usage("`extract` takes one CONSOLE file".into()));
    };
    let out_dir = Path::new(get(&opts, "--out-dir").unwrap_or("."));
    let bytes =
        fs::read(console).map_err(|e| Failure::Failed(format!("cannot read {console}: {e}")))?;
    let text = String::from_utf8_lossy(&bytes);
    let bundles = bundles_from_console(&text);
    if bundles.is_empty() {
        return Err(Failure::Failed(format!("{console}: no `@gk ` lines")));
    }
    let truths = truth_from_console(&text);
    let mut failed = Vec::new();
    for (name, bundle_text) in &bundles {
        let file_name = if name.is_empty() {
            "console"
        } else {
            name.as_str()
        };
        let valid_name = !file_name.contains(['/', '\\']) && file_name != "." && file_name != "..";
        let bundle = match Bundle::parse(bundle_text) {
            Ok(b) if valid_name => b,
            Ok(_) => {
                failed.push(format!("{name}: not usable as a file name"));
                continue;
            }
            Err(e) => {
                failed.push(format!("{file_name}: {e}"));
                continue;
            }
        };
        let path = out_dir.join(format!("{file_name}.bundle"));
        fs::write(&path, bundle.to_text())
            .map_err(|e| Failure::Failed(format!("cannot write {}: {e}", path.display())))?;
        println!(
            "{file_name}: vm {} with {} processes, {} maps, {} kmaps, {} ksyms -> {}",
            bundle.vm,
            bundle.procs.len(),
            bundle.maps.len(),
            bundle.kmaps.len(),
            bundle.ksyms.len(),
            path.display()
        );
    }
    for (name, truth) in &truths {
        let file_name = if name.is_empty() {
            "console"
        } else {
            name.as_str()
        };
        match truth {
            Ok(t) => println!(
                "{file_name}: truth: idle {:.2} % of the run, shares {:?}",
                t.idle_percent().unwrap_or(0.0),
                t.shares
            ),
            Err(e) => failed.push(format!("{file_name}: truth line: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(failed.join("; ")))
    }
}
