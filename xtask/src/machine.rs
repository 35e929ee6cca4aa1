//! Boot harness: one small trait per machine kind (Bochs, QEMU TCG, QEMU/KVM).
//!
//! A run boots an ISO in a fresh run directory under `build/runs/`, with COM1 (text
//! console) and COM2 (binary sample log) going to files there, and stops when the
//! machine exits, a while after the console shows `hv: stop status=` or `hv: fatal:`,
//! or at the timeout. Pass/fail is for the caller to decide from the [`RunResult`].

use crate::console;
use anyhow::{Context, Result, bail};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Console text that ends a run (after [`RunOptions::grace`]) if the machine does not exit.
pub const STOP_MARKERS: &[&str] = &["hv: stop status=", "hv: fatal:"];

/// How one run is done.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Part of the run directory's name (e.g. the test's name).
    pub label: String,
    /// Wall-clock limit for the whole run.
    pub timeout: Duration,
    /// How long to let the machine go on after a stop marker before ending it.
    pub grace: Duration,
    /// Guest RAM of the emulated machine, MiB.
    pub mem_mb: u32,
    /// Number of CPUs of the emulated machine.
    pub cpus: u32,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            label: "run".into(),
            timeout: Duration::from_secs(300),
            grace: Duration::from_secs(5),
            mem_mb: 1024,
            cpus: 1,
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The emulator exited by itself with this status.
    Code(i32),
    /// The emulator was killed by this signal (not by the harness).
    Signal(i32),
    /// The harness ended it: the console showed a stop marker but it did not exit.
    EndedAfterStop,
    /// The harness ended it at the timeout.
    TimedOut,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::EndedAfterStop => write!(f, "ended by the harness after the stop line"),
            Exit::TimedOut => write!(f, "timed out"),
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Machine kind, e.g. `bochs`.
    pub machine: String,
    /// COM1 as text (raw, lossily decoded: see [`RunResult::lines`]).
    pub console: String,
    /// COM2's bytes: the binary sample log.
    pub log: Vec<u8>,
    /// How the run ended.
    pub exit: Exit,
    /// The run directory (serial files, emulator config and logs).
    pub run_dir: PathBuf,
    /// Wall time of the run.
    pub wall: Duration,
    /// When the console first showed `hv: ` (the hypervisor got control), if it did.
    pub first_hv_output: Option<Duration>,
    /// The emulator's own log (bochs.log, or QEMU's stderr).
    pub emulator_log: PathBuf,
}

impl RunResult {
    /// The console's lines with terminal codes removed.
    pub fn lines(&self) -> Vec<String> {
        console::lines(&self.console)
    }

    /// The first console line starting with `prefix`.
    pub fn find_line(&self, prefix: &str) -> Option<String> {
        console::find_line(&self.lines(), prefix).map(str::to_owned)
    }

    /// The value written to QEMU's isa-debug-exit port, decoded from the exit status
    /// `(V << 1) | 1`; `None` for other exits.
    pub fn debug_exit_value(&self) -> Option<i32> {
        match self.exit {
            Exit::Code(c) if c & 1 == 1 => Some(c >> 1),
            _ => None,
        }
    }

    /// Where to look when something went wrong, and the console's last lines.
    pub fn describe(&self) -> String {
        let lines = self.lines();
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(25)
            .rev()
            .map(String::as_str)
            .collect();
        format!(
            "{} run {} after {:.1} s\n  console:  {}\n  emulator log: {}\n  last console lines:\n    {}",
            self.machine,
            self.exit,
            self.wall.as_secs_f64(),
            self.run_dir.join("serial.txt").display(),
            self.emulator_log.display(),
            if tail.is_empty() {
                "(console empty)".to_string()
            } else {
                tail.join("\n    ")
            }
        )
    }

    /// Removes the run directory (call it when the run passed).
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A kind of machine that can boot the image.
pub trait Machine {
    /// Short name, e.g. `bochs`, `qemu-tcg`, `qemu-kvm`.
    fn name(&self) -> &'static str;
    /// Boots `iso` once.
    fn boot(&self, iso: &Path, opts: &RunOptions) -> Result<RunResult>;
}

/// A fresh, unique run directory under `build/runs/`.
pub fn new_run_dir(machine: &str, label: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = crate::paths::build_dir()
        .join("runs")
        .join(format!("{machine}-{label}-{ms}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Reads what was appended to a file since `offset`.
fn read_new(path: &Path, offset: &mut u64, into: &mut Vec<u8>) {
    let Ok(mut f) = File::open(path) else { return };
    if f.seek(SeekFrom::Start(*offset)).is_ok() {
        let before = into.len();
        let _ = f.read_to_end(into);
        *offset += (into.len() - before) as u64;
    }
}

/// Ends `child`: SIGTERM (so the emulator flushes its files), then SIGKILL.
fn terminate(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet, so
        // the pid cannot have been reused; it touches no memory of ours.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn exit_of(status: ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Code(-1),
    }
}

/// Spawns `cmd` (stdin null, stdout+stderr to `run_dir/emulator.out`) and supervises it.
fn supervise(
    machine: &str,
    mut cmd: Command,
    run_dir: &Path,
    serial: &Path,
    log: &Path,
    emulator_log: PathBuf,
    opts: &RunOptions,
) -> Result<RunResult> {
    let out = File::create(run_dir.join("emulator.out"))?;
    let err = out.try_clone()?;
    cmd.current_dir(run_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let shown = crate::cmd::display(&cmd);
    std::fs::write(run_dir.join("command.txt"), format!("{shown}\n"))?;
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut console = Vec::new();
    let mut offset = 0u64;
    let mut first_hv_output = None;
    let mut stop_seen: Option<Instant> = None;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break exit_of(status);
        }
        let scanned = console.len().saturating_sub(64);
        read_new(serial, &mut offset, &mut console);
        let window = String::from_utf8_lossy(&console[scanned..]);
        if first_hv_output.is_none() && window.contains("hv: ") {
            first_hv_output = Some(start.elapsed());
        }
        if stop_seen.is_none() && STOP_MARKERS.iter().any(|m| window.contains(m)) {
            stop_seen = Some(Instant::now());
        }
        if stop_seen.is_some_and(|t| t.elapsed() > opts.grace) {
            terminate(&mut child);
            break Exit::EndedAfterStop;
        }
        if start.elapsed() > opts.timeout {
            terminate(&mut child);
            break Exit::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = start.elapsed();
    let console = std::fs::read(serial).unwrap_or_default();
    if first_hv_output.is_none() && String::from_utf8_lossy(&console).contains("hv: ") {
        first_hv_output = Some(wall);
    }
    Ok(RunResult {
        machine: machine.to_string(),
        console: String::from_utf8_lossy(&console).into_owned(),
        log: std::fs::read(log).unwrap_or_default(),
        exit,
        run_dir: run_dir.to_path_buf(),
        wall,
        first_hv_output,
        emulator_log,
    })
}

/// Bochs 2.7 with its software VMX (the only VMX this CI has).
#[derive(Clone, Debug)]
pub struct Bochs {
    /// Bochs CPU model; `corei7_haswell_4770` offers VMX with EPT and unrestricted guest
    /// and no CPUID TSC-frequency leaf (so guests calibrate their clocks).
    pub cpu_model: String,
    /// Emulated instructions per second (also the TSC rate: one tick per instruction).
    pub ips: u64,
}

impl Default for Bochs {
    fn default() -> Self {
        Bochs {
            cpu_model: "corei7_haswell_4770".into(),
            ips: 50_000_000,
        }
    }
}

impl Bochs {
    /// The bochsrc for one run (paths relative to the run directory).
    pub fn config(&self, iso: &Path, opts: &RunOptions) -> String {
        format!(
            "# Written by the xtask harness for one run.\n\
             megs: {mem}\n\
             romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
             vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
             cpu: model={model}, count={cpus}, ips={ips}, reset_on_triple_fault=0, ignore_bad_msrs=1\n\
             clock: sync=none, time0=local\n\
             pci: enabled=1, chipset=i440fx\n\
             ata0-master: type=cdrom, path=\"{iso}\", status=inserted\n\
             boot: cdrom\n\
             com1: enabled=1, mode=file, dev=serial.txt\n\
             com2: enabled=1, mode=file, dev=log.bin\n\
             display_library: rfb, options=\"timeout=0\"\n\
             mouse: enabled=0\n\
             speaker: enabled=0\n\
             sound: driver=dummy\n\
             log: bochs.log\n\
             panic: action=fatal\n\
             error: action=ignore\n",
            mem = opts.mem_mb,
            model = self.cpu_model,
            cpus = opts.cpus,
            ips = self.ips,
            iso = iso.display(),
        )
    }
}

impl Machine for Bochs {
    fn name(&self) -> &'static str {
        "bochs"
    }

    fn boot(&self, iso: &Path, opts: &RunOptions) -> Result<RunResult> {
        let iso = absolute_iso(iso)?;
        let dir = new_run_dir(self.name(), &opts.label)?;
        std::fs::write(dir.join("bochsrc"), self.config(&iso, opts))?;
        // The Debian build has the internal debugger, which waits for a command
        // before the first instruction: `c` continues.
        std::fs::write(dir.join("dbg.rc"), "c\n")?;
        let mut cmd = Command::new("bochs");
        cmd.args(["-q", "-f", "bochsrc", "-rc", "dbg.rc"]);
        supervise_in_run_dir(self.name(), cmd, &dir, "bochs.log", opts)
    }
}

/// QEMU's accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: no VMX at all (tests the boot path and the no-VT-x error).
    Tcg,
    /// Nested KVM: `-cpu host,+vmx,pmu=on`.
    Kvm,
}

/// The OVMF firmware image of Debian's `ovmf` package (UEFI boots).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// QEMU `qemu-system-x86_64`, q35 machine.
#[derive(Clone, Debug)]
pub struct Qemu {
    /// TCG or nested KVM.
    pub accel: Accel,
    /// Boot through UEFI firmware ([`OVMF`]) instead of SeaBIOS.
    pub uefi: bool,
}

impl Qemu {
    /// QEMU with `accel`, booting from the BIOS.
    pub fn new(accel: Accel) -> Self {
        Qemu { accel, uefi: false }
    }

    /// The QEMU arguments for one run (serial files relative to the run directory).
    pub fn args(&self, iso: &Path, opts: &RunOptions) -> Vec<String> {
        let mut a: Vec<String> = vec!["-machine".into(), "q35".into()];
        match self.accel {
            Accel::Tcg => a.extend(["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()]),
            Accel::Kvm => a.extend([
                "-accel".into(),
                "kvm".into(),
                "-cpu".into(),
                "host,+vmx,pmu=on".into(),
            ]),
        }
        if self.uefi {
            a.extend(["-bios".into(), OVMF.into()]);
        }
        a.extend([
            "-m".into(),
            opts.mem_mb.to_string(),
            "-smp".into(),
            opts.cpus.to_string(),
            "-nographic".into(),
            "-nic".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            "file:serial.txt".into(),
            "-serial".into(),
            "file:log.bin".into(),
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            "-cdrom".into(),
            iso.display().to_string(),
            "-boot".into(),
            "d".into(),
            "-no-reboot".into(),
        ]);
        a
    }
}

impl Machine for Qemu {
    fn name(&self) -> &'static str {
        match (self.accel, self.uefi) {
            (Accel::Tcg, false) => "qemu-tcg",
            (Accel::Tcg, true) => "qemu-tcg-uefi",
            (Accel::Kvm, false) => "qemu-kvm",
            (Accel::Kvm, true) => "qemu-kvm-uefi",
        }
    }

    fn boot(&self, iso: &Path, opts: &RunOptions) -> Result<RunResult> {
        let iso = absolute_iso(iso)?;
        if self.accel == Accel::Kvm
            && let Err(why) = nested_kvm()
        {
            bail!("nested KVM is not available here: {why}");
        }
        if self.uefi && !Path::new(OVMF).is_file() {
            bail!("{OVMF} does not exist: install the ovmf package (`cargo xtask deps`)");
        }
        let dir = new_run_dir(self.name(), &opts.label)?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(self.args(&iso, opts));
        supervise_in_run_dir(self.name(), cmd, &dir, "emulator.out", opts)
    }
}

/// [`supervise`] with the run directory's standard file names: the console in
/// `serial.txt`, the sample log in `log.bin` and the emulator's own log in
/// `emulator_log`.
fn supervise_in_run_dir(
    machine: &str,
    cmd: Command,
    dir: &Path,
    emulator_log: &str,
    opts: &RunOptions,
) -> Result<RunResult> {
    supervise(
        machine,
        cmd,
        dir,
        &dir.join("serial.txt"),
        &dir.join("log.bin"),
        dir.join(emulator_log),
        opts,
    )
}

fn absolute_iso(iso: &Path) -> Result<PathBuf> {
    if !iso.is_file() {
        bail!(
            "boot image {} does not exist: build it with `cargo xtask image`",
            iso.display()
        );
    }
    std::fs::canonicalize(iso).with_context(|| format!("cannot resolve {}", iso.display()))
}

/// Whether QEMU/KVM with nested VMX can run here; `Err` says why not.
///
/// Needs `/dev/kvm`, the `kvm_intel` module with `nested` on and `vmx` in
/// `/proc/cpuinfo`. (A `/dev/kvm` from another module, such as `kvm_pvm`, does not count.)
pub fn nested_kvm() -> std::result::Result<(), String> {
    nested_kvm_at(Path::new("/"))
}

/// [`nested_kvm`] with `/dev`, `/sys` and `/proc` looked up under `root` (for tests).
pub fn nested_kvm_at(root: &Path) -> std::result::Result<(), String> {
    if !root.join("dev/kvm").exists() {
        return Err("/dev/kvm does not exist".into());
    }
    let nested = std::fs::read_to_string(root.join("sys/module/kvm_intel/parameters/nested"))
        .map_err(|_| "the kvm_intel module is not loaded".to_string())?;
    if !matches!(nested.trim(), "Y" | "y" | "1") {
        return Err(format!(
            "kvm_intel nested={} (load it with `modprobe kvm_intel nested=1`)",
            nested.trim()
        ));
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let vmx = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx"));
    if !vmx {
        return Err("the CPU does not show the vmx flag".into());
    }
    Ok(())
}

/// The best machine for a real run: nested KVM when available, else Bochs.
pub fn best_machine() -> Box<dyn Machine> {
    match nested_kvm() {
        Ok(()) => Box::new(Qemu::new(Accel::Kvm)),
        Err(_) => Box::new(Bochs::default()),
    }
}

/// A machine by name: `bochs`, `qemu-tcg`, `qemu-kvm` (`-uefi` suffix: boot through
/// OVMF), or `auto` ([`best_machine`]).
pub fn machine_by_name(name: &str) -> Result<Box<dyn Machine>> {
    Ok(match name {
        "auto" => best_machine(),
        "bochs" => Box::new(Bochs::default()),
        "qemu-tcg" => Box::new(Qemu::new(Accel::Tcg)),
        "qemu-kvm" => Box::new(Qemu::new(Accel::Kvm)),
        "qemu-tcg-uefi" => Box::new(Qemu {
            accel: Accel::Tcg,
            uefi: true,
        }),
        "qemu-kvm-uefi" => Box::new(Qemu {
            accel: Accel::Kvm,
            uefi: true,
        }),
        other => bail!(
            "unknown machine {other:?}: use auto, bochs, qemu-tcg, qemu-kvm, qemu-tcg-uefi or qemu-kvm-uefi"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(exit: Exit) -> RunResult {
        RunResult {
            machine: "qemu-tcg".into(),
            console: "\x1b[2Jhv: fatal: VMX unavailable: x\r\n".into(),
            log: Vec::new(),
            exit,
            run_dir: "/nonexistent".into(),
            wall: Duration::from_millis(1500),
            first_hv_output: None,
            emulator_log: "/nonexistent/emulator.out".into(),
        }
    }

    #[test]
    fn debug_exit_value_decodes_qemu_status() {
        assert_eq!(result(Exit::Code(7)).debug_exit_value(), Some(3));
        assert_eq!(result(Exit::Code(1)).debug_exit_value(), Some(0));
        assert_eq!(result(Exit::Code(0)).debug_exit_value(), None);
        assert_eq!(result(Exit::TimedOut).debug_exit_value(), None);
    }

    #[test]
    fn find_line_sees_through_terminal_codes() {
        assert_eq!(
            result(Exit::Code(7)).find_line("hv: fatal: VMX unavailable:"),
            Some("hv: fatal: VMX unavailable: x".into())
        );
    }

    #[test]
    fn bochs_config_has_both_serial_files_and_the_iso() {
        let opts = RunOptions::default();
        let cfg = Bochs::default().config(Path::new("/b/hv.iso"), &opts);
        assert!(cfg.contains("com1: enabled=1, mode=file, dev=serial.txt\n"));
        assert!(cfg.contains("com2: enabled=1, mode=file, dev=log.bin\n"));
        assert!(cfg.contains("ata0-master: type=cdrom, path=\"/b/hv.iso\", status=inserted\n"));
        assert!(cfg.contains("cpu: model=corei7_haswell_4770, count=1, ips=50000000,"));
        assert!(cfg.contains("megs: 1024\n"));
    }

    #[test]
    fn qemu_kvm_args_ask_for_nested_vmx_and_pmu() {
        let a = Qemu::new(Accel::Kvm).args(Path::new("/i.iso"), &RunOptions::default());
        let s = a.join(" ");
        assert!(!s.contains("-bios"), "{s}");
        assert!(s.contains("-accel kvm -cpu host,+vmx,pmu=on"), "{s}");
        assert!(
            s.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"),
            "{s}"
        );
        assert!(
            s.contains("-serial file:serial.txt -serial file:log.bin"),
            "{s}"
        );
        assert!(s.contains("-cdrom /i.iso"), "{s}");
    }

    /// A fake root with `/dev/kvm`, optionally `kvm_intel`'s `nested` and a cpuinfo.
    fn fake_root(name: &str, nested: Option<&str>, flags: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("xtask-kvm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/kvm"), "").unwrap();
        if let Some(n) = nested {
            let p = root.join("sys/module/kvm_intel/parameters");
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("nested"), n).unwrap();
        }
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(
            root.join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags} sse2\n"),
        )
        .unwrap();
        root
    }

    #[test]
    fn nested_kvm_needs_kvm_intel_nested_and_vmx() {
        // kvm_pvm-like host: /dev/kvm but no kvm_intel and no vmx flag.
        let r = fake_root("pvm", None, "hypervisor");
        assert_eq!(
            nested_kvm_at(&r),
            Err("the kvm_intel module is not loaded".into())
        );
        let r = fake_root("off", Some("N\n"), "vmx");
        assert_eq!(
            nested_kvm_at(&r),
            Err("kvm_intel nested=N (load it with `modprobe kvm_intel nested=1`)".into())
        );
        let r = fake_root("novmx", Some("Y\n"), "vmxnot");
        assert_eq!(
            nested_kvm_at(&r),
            Err("the CPU does not show the vmx flag".into())
        );
        let r = fake_root("ok", Some("1\n"), "vmx ept");
        assert_eq!(nested_kvm_at(&r), Ok(()));
        assert_eq!(
            nested_kvm_at(&r.join("missing")),
            Err("/dev/kvm does not exist".into())
        );
        for n in ["pvm", "off", "novmx", "ok"] {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("xtask-kvm-{n}-{}", std::process::id())),
            );
        }
    }

    #[test]
    fn uefi_boots_use_ovmf() {
        let q = Qemu {
            accel: Accel::Tcg,
            uefi: true,
        };
        let s = q
            .args(Path::new("/i.iso"), &RunOptions::default())
            .join(" ");
        assert!(
            s.contains("-accel tcg -cpu max -bios /usr/share/ovmf/OVMF.fd"),
            "{s}"
        );
        assert_eq!(q.name(), "qemu-tcg-uefi");
    }

    #[test]
    fn unknown_machine_is_a_clear_error() {
        assert_eq!(
            machine_by_name("vmware").err().unwrap().to_string(),
            "unknown machine \"vmware\": use auto, bochs, qemu-tcg, qemu-kvm, qemu-tcg-uefi or qemu-kvm-uefi"
        );
    }
}
