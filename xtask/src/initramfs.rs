//! The initramfs of Linux guests: a reproducible `newc` cpio archive with busybox,
//! `guest-kit`, the workload and an `/init` script.
//!
//! [`Cpio`] writes the archive format the kernel unpacks (`070701` headers, see the
//! kernel's Documentation/driver-api/early-userspace/buffer-format.rst): entries sorted
//! by path, inode numbers 1, 2, 3... in that order, owner root, mtime 0, so the same
//! inputs always give the same bytes. [`build_initramfs`] packs one for an [`Init`]:
//!
//! ```text
//! /bin/busybox      Debian's busybox-static, and a symlink per applet in BUSYBOX_APPLETS
//! /bin/guest-kit    the guest-kit crate, x86_64-unknown-linux-musl, release, symbols kept
//!                   (`.symtab`) but no DWARF (`objcopy --strip-debug`)
//! /bin/workload     tests/linux-workload, likewise
//! /bin/spinner      tests/linux-workload's second program, likewise
//! /dev/console      (5, 1), so /init has a console even without a built-in initramfs
//! /dev /proc /sys /tmp
//! /init             a busybox sh script (Init::script)
//! ```
//!
//! The DWARF of the programs is most of their size (the archive was 14 MB with it, and
//! GRUB reads it slowly under Bochs); the analyzer names functions from `.symtab`
//! alone, and gets the unstripped copies from [`elves_dir`] anyway.

use crate::{cmd, image, paths};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target of the programs that run inside Linux guests (static executables).
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

/// Busybox applets linked in `/bin` (what the init scripts and a person at the console
/// use).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "cat", "dmesg", "echo", "hostname", "kill", "ls", "mkdir", "mount", "poweroff", "ps", "reboot",
    "renice", "sed", "sh", "sleep", "true", "umount", "uname",
];

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// What an archive entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with these contents.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One archive entry: its kind and permission bits (`0o755`...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (no file type bits).
    pub perm: u32,
    /// What it is.
    pub kind: Kind,
}

impl Entry {
    fn mode(&self) -> u32 {
        let kind = match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDev { .. } => S_IFCHR,
        };
        kind | (self.perm & 0o7777)
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            Kind::Dir | Kind::CharDev { .. } => &[],
        }
    }
}

/// A `newc` cpio archive being put together; paths are relative (`bin/sh`), parents are
/// added as `0755` directories when missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cpio {
    entries: BTreeMap<String, Entry>,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, perm: u32) -> &mut Self {
        self.insert(path, perm, Kind::Dir)
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> &mut Self {
        self.insert(path, perm, Kind::File(data))
    }

    /// Adds a symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(path, 0o777, Kind::Symlink(target.to_string()))
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.insert(path, perm, Kind::CharDev { major, minor })
    }

    /// The entries, in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Adds `path` (a leading `/` is dropped), replacing an entry of that path, and its
    /// missing parent directories. Panics on empty, `.` or `..` components: paths here
    /// are the program's own constants.
    fn insert(&mut self, path: &str, perm: u32, kind: Kind) -> &mut Self {
        let path = path.trim_start_matches('/');
        assert!(
            !path.is_empty()
                && path
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".."),
            "bad archive path {path:?}"
        );
        let mut parent = String::new();
        for component in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.entries.entry(parent.clone()).or_insert(Entry {
                perm: 0o755,
                kind: Kind::Dir,
            });
        }
        self.entries.insert(path.to_string(), Entry { perm, kind });
        self
    }

    /// The archive's bytes: one `newc` record per entry in path order (inode numbers
    /// from 1 in that order), then the `TRAILER!!!` record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (rmajor, rminor) = match entry.kind {
                Kind::CharDev { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let nlink = if entry.kind == Kind::Dir { 2 } else { 1 };
            let header = Header {
                ino,
                mode: entry.mode(),
                nlink,
                rdev: (rmajor, rminor),
            };
            write_record(&mut out, &header, path, entry.data());
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
        };
        write_record(&mut out, &trailer, "TRAILER!!!", &[]);
        out
    }
}

/// The header fields that vary; uid, gid, mtime, devices of the file system and the
/// check field are all 0.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
}

/// Appends one record: the 110-byte header (`070701` and 13 fields of 8 hex digits),
/// the NUL-terminated name padded to a multiple of 4 bytes from the record's start, the
/// data padded likewise.
fn write_record(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) {
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        0, // mtime
        u32::try_from(data.len()).expect("initramfs members are under 4 GiB"),
        0, // devmajor
        0, // devminor
        h.rdev.0,
        h.rdev.1,
        u32::try_from(name.len() + 1).expect("short name"),
        0, // check
    ];
    let mut header = String::from("070701");
    for f in fields {
        write!(header, "{f:08X}").unwrap();
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// What `/init` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Init {
    /// The main Linux scenario: `guest-kit watch` in the background (`init: watcher
    /// ready` after its first walk), `workload --seconds 4 --name w1`, then the watcher
    /// stopped and its bundle of VM `vm` delivered through the hypercall channel
    /// (`guest-kit send`) and on the console (each line prefixed `@gk `; `guest-kit
    /// collect`'s if the watcher gave none), `init: done` and `poweroff -f`.
    Workload {
        /// VM name written into the bundle (`vm NAME`): the hypervisor's name for it.
        vm: String,
    },
    /// `init: provoking a triple fault`, then `reboot -f` (with `reboot=t` on the kernel
    /// command line Linux restarts by triple fault).
    TripleFault,
    /// Several processes under `guest-kit watch` (issue 8): the watcher first (it
    /// creates `/tmp/ready` after its first walk), then two instances of the workload
    /// (`--name a`, `--name b`) and the spinner (`--name c`), each [`PROCS_SECONDS`] of
    /// CPU time, and 2 s later a short-lived workload (`--name short`, 0.5 s of CPU)
    /// that exits before them; the PIDs as `init: pids a=N b=N c=N` and
    /// `init: pid short=N`; when all have ended `/tmp/stop` stops the watcher, whose
    /// bundle of VM `vm` goes through the hypercall channel and to the console with the
    /// `@gk ` prefix; `init: done`, `poweroff -f`.
    Procs {
        /// VM name written into the bundle.
        vm: String,
    },
}

/// The start of the workload scripts: PATH, the file systems, `init: start` and the
/// kernel release.
const MOUNTS: &str = "export PATH=/bin\n\
    mount -t proc proc /proc\n\
    mount -t sysfs sysfs /sys\n\
    mount -t devtmpfs devtmpfs /dev\n\
    echo \"init: start\"\n\
    echo \"init: kernel $(uname -r)\"\n";

/// Starts `guest-kit watch` in the background and waits for its first walk
/// (`/tmp/ready`), or for it to fail.
fn watch_start(vm: &str) -> String {
    format!(
        "# The watcher first: it reads the kernel's symbols and offsets once, then walks\n\
         # the task list every 100 ms until /tmp/stop appears.\n\
         guest-kit watch --vm {vm} --out /tmp/bundle --until-file /tmp/stop --ready /tmp/ready &\n\
         gk=$!\n\
         while [ ! -e /tmp/ready ] && kill -0 $gk 2>/dev/null; do sleep 0.1; done\n\
         if [ -e /tmp/ready ]; then echo \"init: watcher ready\"; else echo \"init: guest-kit watch failed\"; fi\n"
    )
}

/// Stops the watcher and delivers its bundle (without a bundle from the watcher,
/// `guest-kit collect`'s of what is left) twice: through the hypercall channel into the
/// sample log (`guest-kit send`; the VM is booted with `:channel=user`), and on the
/// console with the `@gk ` prefix (docs/contracts.md) through `guest-kit console`, which
/// waits until the UART has sent it (a `poweroff` one second after `sed` cut a 1.5 kB
/// bundle off under Bochs). The console copy is the fallback when the channel refuses,
/// and both print how long they took, so the two paths can be compared.
fn watch_stop(vm: &str) -> String {
    format!(
        "echo stop > /tmp/stop\n\
         wait $gk\n\
         if [ ! -s /tmp/bundle ]; then\n\
         \x20   echo \"init: no bundle from guest-kit watch, guest-kit collect instead\"\n\
         \x20   guest-kit collect --vm {vm} --out /tmp/bundle\n\
         fi\n\
         guest-kit send /tmp/bundle || echo \"init: guest-kit send failed: the console copy is the fallback\"\n\
         guest-kit console /tmp/bundle\n"
    )
}

/// CPU seconds of each long-running process of [`Init::Procs`]: three of them share
/// one vCPU, so this is a third of their wall time.
pub const PROCS_SECONDS: u32 = 4;

impl Init {
    /// The archive's file name under [`paths::initramfs_dir`].
    pub fn file_name(&self) -> String {
        match self {
            Init::Workload { vm } => format!("workload-{vm}.cpio"),
            Init::TripleFault => "triplefault.cpio".into(),
            Init::Procs { vm } => format!("procs-{vm}.cpio"),
        }
    }

    /// The `/init` script (busybox sh).
    pub fn script(&self) -> String {
        match self {
            Init::Workload { vm } => format!(
                "{head}\
                 # /init of the Linux workload scenario (written by xtask/src/initramfs.rs).\n\
                 {mounts}\
                 {watch}\
                 workload --seconds 4 --name w1\n\
                 {bundle}\
                 echo \"init: done\"\n\
                 sleep 1\n\
                 poweroff -f\n",
                head = "#!/bin/sh\n",
                mounts = MOUNTS,
                watch = watch_start(vm),
                bundle = watch_stop(vm),
            ),
            Init::Procs { vm } => format!(
                "#!/bin/sh\n\
                 # /init of the linux-procs scenario (written by xtask/src/initramfs.rs):\n\
                 # processes that start, run and exit under `guest-kit watch`.\n\
                 {mounts}\
                 {watch}\
                 workload --seconds {secs} --name a &\n\
                 a=$!\n\
                 workload --seconds {secs} --name b &\n\
                 b=$!\n\
                 spinner --seconds {secs} --name c &\n\
                 c=$!\n\
                 echo \"init: pids a=$a b=$b c=$c\"\n\
                 # A short-lived process: starts after the others, exits before them.\n\
                 sleep 2\n\
                 workload --seconds 0.5 --name short &\n\
                 s=$!\n\
                 echo \"init: pid short=$s\"\n\
                 wait $s\n\
                 wait $a\n\
                 wait $b\n\
                 wait $c\n\
                 {bundle}\
                 echo \"init: done\"\n\
                 sleep 1\n\
                 poweroff -f\n",
                mounts = MOUNTS,
                watch = watch_start(vm),
                bundle = watch_stop(vm),
                secs = PROCS_SECONDS
            ),
            Init::TripleFault => "#!/bin/sh\n\
                 # /init of the triple-fault scenario (written by xtask/src/initramfs.rs):\n\
                 # with reboot=t on the command line, Linux restarts by a triple fault.\n\
                 export PATH=/bin\n\
                 mount -t proc proc /proc\n\
                 echo \"init: provoking a triple fault\"\n\
                 reboot -f\n\
                 sleep 5\n\
                 echo \"init: still running 5 s after reboot -f\"\n\
                 poweroff -f\n"
                .into(),
        }
    }
}

/// The programs an initramfs holds (host paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPrograms {
    /// Debian's static busybox.
    pub busybox: PathBuf,
    /// `guest-kit`, static, with symbols.
    pub guest_kit: PathBuf,
    /// `workload`, static, with symbols.
    pub workload: PathBuf,
    /// `spinner`, static, with symbols.
    pub spinner: PathBuf,
}

impl GuestPrograms {
    /// The ELFs with symbols the analyzer wants for a Linux guest (`--elf`): the programs
    /// are matched to the bundle's `map` lines (`/bin/workload`...) by file name.
    pub fn elves(&self) -> Vec<PathBuf> {
        vec![
            self.workload.clone(),
            self.spinner.clone(),
            self.guest_kit.clone(),
        ]
    }
}

/// Builds `guest-kit`, `workload` and `spinner` for [`GUEST_TARGET`] (release, symbols
/// kept) and finds busybox.
pub fn guest_programs() -> Result<GuestPrograms> {
    let busybox = find_busybox()?;
    let manifest = paths::linux_workload_manifest();
    if !manifest.is_file() {
        bail!(
            "the workload crate is missing: {} does not exist",
            manifest.display()
        );
    }
    let exes = image::cargo_build_executables(&[
        "-p",
        "guest-kit",
        "-p",
        "linux-workload",
        "--bin",
        "guest-kit",
        "--bin",
        "workload",
        "--bin",
        "spinner",
        "--target",
        GUEST_TARGET,
        "--release",
    ])?;
    let find = |name: &str| {
        exes.iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .with_context(|| format!("cargo built no `{name}` executable for {GUEST_TARGET}"))
    };
    Ok(GuestPrograms {
        busybox,
        guest_kit: find("guest-kit")?,
        workload: find("workload")?,
        spinner: find("spinner")?,
    })
}

/// `/bin/busybox` of Debian's busybox-static (found with `dpkg -L`).
fn find_busybox() -> Result<PathBuf> {
    const HINT: &str = "install busybox-static (`cargo xtask deps`)";
    if cmd::on_path("dpkg") {
        let out = Command::new("dpkg")
            .args(["-L", "busybox-static"])
            .output()
            .context("cannot start `dpkg -L busybox-static`")?;
        if !out.status.success() {
            bail!("busybox-static is not installed: {HINT}");
        }
        return String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(Path::new)
            .find(|p| p.ends_with("bin/busybox") && p.is_file())
            .map(Path::to_path_buf)
            .with_context(|| format!("busybox-static lists no bin/busybox: {HINT}"));
    }
    let fallback = Path::new("/bin/busybox");
    if fallback.is_file() {
        return Ok(fallback.to_path_buf());
    }
    bail!("no static busybox found (no dpkg, no /bin/busybox): {HINT}")
}

/// Fails unless `busybox` offers every applet of [`BUSYBOX_APPLETS`].
fn check_applets(busybox: &Path) -> Result<()> {
    let out = cmd::output(Command::new(busybox).arg("--list"))?;
    let list = String::from_utf8_lossy(&out.stdout);
    let have: Vec<&str> = list.lines().collect();
    let missing: Vec<&str> = BUSYBOX_APPLETS
        .iter()
        .copied()
        .filter(|a| !have.contains(a))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks the applets {}",
            busybox.display(),
            missing.join(" ")
        );
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The bytes of an ELF without its DWARF (`objcopy --strip-debug`: `.symtab` stays, so
/// a profile of the guest still names functions). Without objcopy, or for a file it
/// cannot handle, the file as it is, with a warning.
pub fn strip_debug(path: &Path) -> Result<Vec<u8>> {
    let out = std::env::temp_dir().join(format!(
        "xtask-strip-{}-{}",
        std::process::id(),
        path.file_name()
            .map_or("elf".into(), |n| n.to_string_lossy())
    ));
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(path)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {
            let bytes = read(&out);
            let _ = std::fs::remove_file(&out);
            bytes
        }
        other => {
            let _ = std::fs::remove_file(&out);
            println!(
                "initramfs: warning: `objcopy --strip-debug {}` failed ({}): packed with its debug info (install binutils)",
                path.display(),
                match other {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                }
            );
            read(path)
        }
    }
}

/// The archive for `init` with `programs` (their files as they are).
pub fn archive(init: &Init, programs: &GuestPrograms) -> Result<Cpio> {
    archive_with(init, programs, read)
}

/// The archive for `init`, each program's bytes from `load` (e.g. [`strip_debug`]).
pub fn archive_with(
    init: &Init,
    programs: &GuestPrograms,
    load: impl Fn(&Path) -> Result<Vec<u8>>,
) -> Result<Cpio> {
    let mut cpio = Cpio::new();
    cpio.file("bin/busybox", 0o755, read(&programs.busybox)?)
        .file("bin/guest-kit", 0o755, load(&programs.guest_kit)?)
        .file("bin/workload", 0o755, load(&programs.workload)?)
        .file("bin/spinner", 0o755, load(&programs.spinner)?)
        .dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("tmp", 0o1777)
        .file("init", 0o755, init.script().into_bytes());
    for applet in BUSYBOX_APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(cpio)
}

/// Builds the programs and writes the initramfs for `init` to
/// `build/initramfs/<Init::file_name>` (replaced atomically); returns its path. Copies of
/// the program ELFs packed into it go to [`elves_dir`] of it, for the analyzer.
pub fn build_initramfs(init: &Init) -> Result<PathBuf> {
    let programs = guest_programs()?;
    check_applets(&programs.busybox)?;
    let bytes = archive_with(init, &programs, strip_debug)?.to_bytes();
    let dir = paths::initramfs_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(init.file_name());
    let tag = format!("tmp-{}", std::process::id());
    let elves = elves_dir(&path);
    std::fs::create_dir_all(&elves)
        .with_context(|| format!("cannot create {}", elves.display()))?;
    for elf in programs.elves() {
        let name = elf.file_name().context("program without a file name")?;
        let to = elves.join(name);
        let tmp = elves.join(format!("{}.{tag}", name.to_string_lossy()));
        std::fs::copy(&elf, &tmp)
            .with_context(|| format!("cannot copy {} to {}", elf.display(), tmp.display()))?;
        std::fs::rename(&tmp, &to)
            .with_context(|| format!("cannot move {} into place", to.display()))?;
    }
    let tmp = dir.join(format!("{}.{tag}", init.file_name()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(path)
}

/// Where [`build_initramfs`] keeps copies of the ELFs it packed into `initrd`
/// (`workload-linux.cpio` -> `workload-linux.elves/`).
pub fn elves_dir(initrd: &Path) -> PathBuf {
    initrd.with_extension("elves")
}

/// The ELFs with symbols packed into `initrd` (`workload`, `spinner`, `guest-kit`), as
/// kept by [`build_initramfs`] (with their debug info); empty for an initramfs built
/// otherwise.
pub fn packed_elves(initrd: &Path) -> Vec<PathBuf> {
    let dir = elves_dir(initrd);
    ["workload", "spinner", "guest-kit"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record read back.
    #[derive(Debug, PartialEq, Eq)]
    struct Record {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// A strict newc reader: checks the magic, the padding and the trailer.
    fn parse(mut b: &[u8]) -> Vec<Record> {
        let mut records = Vec::new();
        let start_len = b.len();
        loop {
            assert_eq!((start_len - b.len()) % 4, 0, "record not 4-aligned");
            assert_eq!(&b[..6], b"070701", "bad magic");
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(
                    s.bytes()
                        .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                );
                u32::from_str_radix(s, 16).unwrap()
            };
            let [
                ino,
                mode,
                uid,
                gid,
                nlink,
                mtime,
                size,
                _,
                _,
                rmaj,
                rmin,
                namesize,
                check,
            ] = std::array::from_fn(field);
            assert_eq!(check, 0);
            let name_end = 110 + namesize as usize;
            assert_eq!(b[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&b[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = name_end.div_ceil(4) * 4;
            assert!(b[name_end..data_start].iter().all(|&x| x == 0));
            let data_end = data_start + size as usize;
            let data = b[data_start..data_end].to_vec();
            let next = data_end.div_ceil(4) * 4;
            assert!(b[data_end..next].iter().all(|&x| x == 0));
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty(), "bytes after the trailer");
                return records;
            }
            records.push(Record {
                name,
                ino,
                mode,
                uid,
                gid,
                nlink,
                mtime,
                rdev: (rmaj, rmin),
                data,
            });
        }
    }

    #[test]
    fn archive_round_trips_with_parents_sorted_and_fixed_metadata() {
        let mut c = Cpio::new();
        c.file("/init", 0o755, b"#!/bin/sh\n".to_vec())
            .symlink("bin/sh", "busybox")
            .file("bin/busybox", 0o755, vec![0x7f, b'E', b'L', b'F', 1])
            .char_dev("dev/console", 0o600, 5, 1)
            .dir("tmp", 0o1777);
        let r = parse(&c.to_bytes());
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "tmp"
            ]
        );
        assert_eq!(
            r.iter().map(|r| r.ino).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert!(r.iter().all(|r| r.uid == 0 && r.gid == 0 && r.mtime == 0));
        assert_eq!((r[0].mode, r[0].nlink), (0o040_755, 2));
        assert_eq!(r[1].mode, 0o100_755);
        assert_eq!(r[1].data, [0x7f, b'E', b'L', b'F', 1]);
        assert_eq!(
            (r[2].mode, r[2].data.as_slice()),
            (0o120_777, &b"busybox"[..])
        );
        assert_eq!((r[4].mode, r[4].rdev), (0o020_600, (5, 1)));
        assert_eq!(r[5].data, b"#!/bin/sh\n");
        assert_eq!(r[6].mode, 0o041_777);
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let b = Cpio::new().to_bytes();
        assert!(parse(&b).is_empty());
        assert_eq!(b.len(), 124); // 110 + "TRAILER!!!\0" = 121, padded to 124
    }

    /// Fake programs in a temporary directory.
    fn fake_programs(tag: &str) -> (PathBuf, GuestPrograms) {
        let dir =
            std::env::temp_dir().join(format!("xtask-initramfs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = |name: &str, data: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, data).unwrap();
            path
        };
        let programs = GuestPrograms {
            busybox: p("busybox", b"busybox bytes"),
            guest_kit: p("guest-kit", b"guest-kit bytes, odd length"),
            workload: p("workload", b"workload"),
            spinner: p("spinner", b"spinner!"),
        };
        (dir, programs)
    }

    #[test]
    fn two_builds_are_byte_identical_and_hold_everything() {
        let (dir, programs) = fake_programs("repro");
        let init = Init::Workload { vm: "linux".into() };
        let a = archive(&init, &programs).unwrap().to_bytes();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = archive(&init, &programs).unwrap().to_bytes();
        assert_eq!(a, b);
        let r = parse(&a);
        let find = |n: &str| {
            r.iter()
                .find(|r| r.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(find("bin/guest-kit").data, b"guest-kit bytes, odd length");
        assert_eq!(find("bin/workload").mode, 0o100_755);
        assert_eq!(find("bin/spinner").data, b"spinner!");
        assert_eq!(find("init").mode, 0o100_755);
        assert_eq!(find("init").data, init.script().as_bytes());
        for applet in BUSYBOX_APPLETS {
            assert_eq!(find(&format!("bin/{applet}")).data, b"busybox");
        }
        for d in ["dev", "proc", "sys", "tmp"] {
            assert_eq!(find(d).mode & S_IFDIR, S_IFDIR, "{d}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn init_scripts_do_what_the_scenarios_expect() {
        let w = Init::Workload { vm: "linux".into() }.script();
        let order = [
            "mount -t proc proc /proc",
            "mount -t sysfs sysfs /sys",
            "mount -t devtmpfs devtmpfs /dev",
            "echo \"init: start\"",
            "guest-kit watch --vm linux --out /tmp/bundle --until-file /tmp/stop --ready /tmp/ready &",
            "while [ ! -e /tmp/ready ] && kill -0 $gk",
            "workload --seconds 4 --name w1\n",
            "echo stop > /tmp/stop",
            "wait $gk",
            "guest-kit collect --vm linux --out /tmp/bundle",
            "guest-kit send /tmp/bundle || echo \"init: guest-kit send failed",
            "guest-kit console /tmp/bundle",
            "echo \"init: done\"",
            "poweroff -f",
        ];
        let mut at = 0;
        for step in order {
            at += w[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step:?} missing or out of order in\n{w}"));
        }
        assert!(w.starts_with("#!/bin/sh\n"));
        // Every program the scripts start is in /bin (shell keywords and builtins aside).
        let t = Init::TripleFault.script();
        let p = Init::Procs { vm: "linux".into() }.script();
        let builtins = [
            "export", "if", "then", "else", "fi", "wait", "while", "done",
        ];
        for line in w.lines().chain(t.lines()).chain(p.lines()) {
            let Some(word) = line.split_whitespace().next() else {
                continue;
            };
            if word.starts_with('#') || word.contains('=') || builtins.contains(&word) {
                continue;
            }
            assert!(
                BUSYBOX_APPLETS.contains(&word)
                    || ["workload", "spinner", "guest-kit"].contains(&word),
                "/init runs {word:?}, which is not linked in /bin"
            );
        }
        assert!(t.contains("echo \"init: provoking a triple fault\"\nreboot -f\n"));
        assert_eq!(Init::TripleFault.file_name(), "triplefault.cpio");
        assert_eq!(
            Init::Workload { vm: "linux".into() }.file_name(),
            "workload-linux.cpio"
        );
    }

    #[test]
    fn procs_script_starts_the_watcher_first_and_stops_it_last() {
        let p = Init::Procs { vm: "linux".into() }.script();
        let order = [
            "echo \"init: start\"",
            "guest-kit watch --vm linux --out /tmp/bundle --until-file /tmp/stop --ready /tmp/ready &",
            "while [ ! -e /tmp/ready ] && kill -0 $gk",
            "workload --seconds 4 --name a &",
            "workload --seconds 4 --name b &",
            "spinner --seconds 4 --name c &",
            "echo \"init: pids a=$a b=$b c=$c\"",
            "sleep 2",
            "workload --seconds 0.5 --name short &",
            "echo \"init: pid short=$s\"",
            "wait $s",
            "wait $c",
            "echo stop > /tmp/stop",
            "wait $gk",
            "guest-kit send /tmp/bundle",
            "guest-kit console /tmp/bundle",
            "echo \"init: done\"",
            "poweroff -f",
        ];
        let mut at = 0;
        for step in order {
            at += p[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step:?} missing or out of order in\n{p}"));
        }
        assert_eq!(
            Init::Procs { vm: "linux".into() }.file_name(),
            "procs-linux.cpio"
        );
    }

    /// The section names of an ELF64 little-endian file.
    fn section_names(b: &[u8]) -> Vec<String> {
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
        let (shoff, shentsize, shnum, shstrndx) =
            (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
        let strtab = u64_at(shoff + shstrndx * shentsize + 0x18);
        (0..shnum)
            .map(|i| {
                let name = strtab + u32_at(shoff + i * shentsize);
                let end = b[name..].iter().position(|&c| c == 0).unwrap() + name;
                String::from_utf8_lossy(&b[name..end]).into_owned()
            })
            .collect()
    }

    #[test]
    fn stripping_keeps_the_symbol_table_and_drops_dwarf() {
        // This test binary itself: built with debug info (the workspace profiles).
        let exe = std::env::current_exe().unwrap();
        let before = section_names(&std::fs::read(&exe).unwrap());
        let after = section_names(&strip_debug(&exe).unwrap());
        let has = |names: &[String], n: &str| names.iter().any(|x| x == n);
        assert!(has(&before, ".debug_info"), "{before:?}");
        assert!(!has(&after, ".debug_info"), "DWARF left: {after:?}");
        assert!(has(&after, ".symtab"), "symbol table gone: {after:?}");
        assert!(has(&after, ".text"), "{after:?}");
    }

    #[test]
    #[should_panic(expected = "bad archive path")]
    fn paths_that_leave_the_root_are_refused() {
        Cpio::new().file("bin/../../etc/passwd", 0o644, Vec::new());
    }
}
