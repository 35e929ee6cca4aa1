//! `cargo xtask kernel`: Debian's current x86_64 kernel, for Linux guests and their tests.
//!
//! The kernel is whatever `linux-image-amd64` depends on today (nothing here names a
//! version). [`ensure`] puts into [`paths::kernel_dir`] (`build/kernel/`, or
//! `$HV_KERNEL_DIR`):
//!
//! | file         | what                                                                    |
//! |--------------|-------------------------------------------------------------------------|
//! | `vmlinuz`    | the bzImage as shipped in `/boot` of the package                        |
//! | `vmlinux`    | its xz payload, decompressed: an ELF with the PVH entry note            |
//! | `config`     | the kernel's `.config`                                                  |
//! | `System.map` | the real one, from the `-dbg` package (the image package ships a stub) |
//! | `version.txt`| `release=6.1.0-57-amd64` and `package=6.1.192-3` (say)                   |
//!
//! Fetching needs apt (`apt-get download` works without root), `dpkg-deb`, `tar` and `xz`.
//! Once every file is there, [`ensure`] uses them without touching the network;
//! [`fetch`] with `refresh` fetches again.

use crate::{cmd, paths};
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Debian's meta-package that depends on the current kernel image.
pub const META_PACKAGE: &str = "linux-image-amd64";

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note type of the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The kernel files in [`paths::kernel_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFiles {
    /// The directory holding them.
    pub dir: PathBuf,
    /// Uncompressed ELF kernel, entered through its PVH note.
    pub vmlinux: PathBuf,
    /// The bzImage as Debian ships it.
    pub vmlinuz: PathBuf,
    /// The kernel configuration.
    pub config: PathBuf,
    /// The kernel's real `System.map` (from `linux-image-RELEASE-dbg`).
    pub system_map: PathBuf,
    /// `version.txt`.
    pub version_file: PathBuf,
    /// Kernel release (`uname -r`), e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// Debian version of the package, e.g. `6.1.192-3`.
    pub package: String,
}

impl KernelFiles {
    /// The file names in `dir` for `release` and `package`.
    fn at(dir: &Path, release: &str, package: &str) -> Self {
        KernelFiles {
            dir: dir.to_path_buf(),
            vmlinux: dir.join("vmlinux"),
            vmlinuz: dir.join("vmlinuz"),
            config: dir.join("config"),
            system_map: dir.join("System.map"),
            version_file: dir.join("version.txt"),
            release: release.to_string(),
            package: package.to_string(),
        }
    }

    /// The files in `dir` if all of them are there (read from `version.txt`).
    pub fn cached(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("version.txt")).ok()?;
        let (release, package) = parse_version_txt(&text)?;
        let files = KernelFiles::at(dir, &release, &package);
        [
            &files.vmlinux,
            &files.vmlinuz,
            &files.config,
            &files.system_map,
        ]
        .iter()
        .all(|p| p.is_file())
        .then_some(files)
    }

    /// One line naming the kernel, e.g. `Linux 6.1.0-57-amd64 (Debian package 6.1.192-3)`.
    pub fn describe(&self) -> String {
        format!(
            "Linux {} (Debian linux-image-{} {})",
            self.release, self.release, self.package
        )
    }
}

/// `release=...` and `package=...` lines of `version.txt`.
fn parse_version_txt(text: &str) -> Option<(String, String)> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Some((value("release")?, value("package")?))
}

/// `version.txt`'s text.
fn version_txt(release: &str, package: &str) -> String {
    format!("release={release}\npackage={package}\n")
}

/// The kernel files, fetched once (see the module doc); prints which kernel it is.
pub fn ensure() -> Result<KernelFiles> {
    fetch(false)
}

/// Like [`ensure`], but with `refresh` fetches again even when the files are there.
pub fn fetch(refresh: bool) -> Result<KernelFiles> {
    let dir = paths::kernel_dir();
    if !refresh && let Some(files) = KernelFiles::cached(&dir) {
        println!("kernel: {} in {} (cached)", files.describe(), dir.display());
        return Ok(files);
    }
    let start = Instant::now();
    let files = fetch_into(&dir)?;
    println!(
        "kernel: {} in {} (fetched in {:.1} s)",
        files.describe(),
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(files)
}

/// Fails with one line when a tool the fetch needs is missing.
fn check_tools() -> Result<()> {
    if !cmd::on_path("apt-get") {
        bail!(
            "apt-get not found: the kernel is Debian's {META_PACKAGE}, fetched with apt \
             (run on Debian, or put vmlinuz, vmlinux, config, System.map and version.txt \
             into {} by hand)",
            paths::kernel_dir().display()
        );
    }
    for (tool, package) in [("dpkg-deb", "dpkg"), ("tar", "tar"), ("xz", "xz-utils")] {
        if !cmd::on_path(tool) {
            bail!("{tool} not found: install the Debian package {package} (`cargo xtask deps`)");
        }
    }
    Ok(())
}

/// Downloads, unpacks and checks the kernel into `dir`, replacing what was there.
fn fetch_into(dir: &Path) -> Result<KernelFiles> {
    check_tools()?;
    let work = dir.join("dl").join(format!("fetch-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = fetch_in(dir, &work);
    // The packages are big (the -dbg one is most of a gigabyte): never keep them.
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir(dir.join("dl")); // only if nothing else is in it
    result
}

fn fetch_in(dir: &Path, work: &Path) -> Result<KernelFiles> {
    println!("kernel: apt-get download {META_PACKAGE}");
    let meta = apt_download(work, META_PACKAGE)?;
    let depends = control_field(&meta, "Depends")?;
    let (image_pkg, image_ver) = versioned_package(&depends).with_context(|| {
        format!("{META_PACKAGE} depends on no linux-image-* package (Depends: {depends})")
    })?;
    let image_ver = match image_ver {
        Some(v) => v,
        None => control_field(&meta, "Version")?,
    };
    println!("kernel: apt-get download {image_pkg}={image_ver}");
    let image = apt_download(work, &format!("{image_pkg}={image_ver}"))?;
    let package = control_field(&image, "Version")?;

    // Only ./boot/ is wanted (the modules are 400 MB unpacked).
    let unpacked = work.join("x");
    std::fs::create_dir_all(&unpacked)?;
    extract_from_deb(&image, &unpacked, &["--wildcards", "./boot/*"])?;
    let boot = unpacked.join("boot");
    let release = std::fs::read_dir(&boot)
        .with_context(|| format!("{} has no /boot", image.display()))?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .with_context(|| format!("{} has no /boot/vmlinuz-*", image.display()))?;
    let config = boot.join(format!("config-{release}"));
    if !config.is_file() {
        bail!("{} has no /boot/config-{release}", image.display());
    }

    // The real System.map: stream the -dbg package and stop at the one member.
    let dbg_pkg = format!("linux-image-{release}-dbg");
    println!("kernel: apt-get download {dbg_pkg}={package} (System.map only)");
    let dbg = apt_download(work, &format!("{dbg_pkg}={package}"))?;
    let map_member = format!("./usr/lib/debug/boot/System.map-{release}");
    extract_from_deb(&dbg, &unpacked, &["--occurrence=1", &map_member])?;
    let _ = std::fs::remove_file(&dbg);
    let system_map = unpacked.join(&map_member);
    check_system_map(&system_map)?;

    // vmlinux: the bzImage's xz payload, decompressed, must carry the PVH entry note.
    let vmlinuz = boot.join(format!("vmlinuz-{release}"));
    let bz =
        std::fs::read(&vmlinuz).with_context(|| format!("cannot read {}", vmlinuz.display()))?;
    let payload = payload_range(&bz).with_context(|| format!("{}", vmlinuz.display()))?;
    let vmlinux = work.join("vmlinux");
    decompress_xz(&bz[payload], work, &vmlinux)
        .with_context(|| format!("{}: cannot decompress the payload", vmlinuz.display()))?;
    let elf = std::fs::read(&vmlinux)?;
    let entry = pvh_entry(&elf).with_context(|| {
        format!(
            "the kernel decompressed from {} cannot be entered by PVH",
            vmlinuz.display()
        )
    })?;
    println!("kernel: vmlinux {} bytes, PVH entry {entry:#x}", elf.len());

    // Into place, version.txt last: it is what marks the set complete.
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(dir.join("version.txt"));
    let files = KernelFiles::at(dir, &release, &package);
    for (from, to) in [
        (&vmlinuz, &files.vmlinuz),
        (&vmlinux, &files.vmlinux),
        (&config, &files.config),
        (&system_map, &files.system_map),
    ] {
        place(from, to)?;
    }
    let version = work.join("version.txt");
    std::fs::write(&version, version_txt(&release, &package))?;
    place(&version, &files.version_file)?;
    Ok(files)
}

/// Moves `from` onto `to` (replacing a file or a symbolic link there).
fn place(from: &Path, to: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    // Another file system: copy next to the target, then rename.
    let tmp = to.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::copy(from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot move {} into place", to.display()))
}

/// `apt-get download SPEC` in `dir`; returns the `.deb` it wrote.
fn apt_download(dir: &Path, spec: &str) -> Result<PathBuf> {
    let before = debs(dir)?;
    let mut c = Command::new("apt-get");
    c.args(["download", spec]).current_dir(dir);
    let shown = cmd::display(&c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "{}",
            apt_failure(spec, &String::from_utf8_lossy(&out.stderr))
        );
    }
    let new: Vec<PathBuf> = debs(dir)?
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    match &new[..] {
        [deb] => Ok(deb.clone()),
        _ => bail!(
            "`{shown}` succeeded but wrote {} .deb files in {}",
            new.len(),
            dir.display()
        ),
    }
}

/// One line saying why `apt-get download SPEC` failed, from its stderr.
fn apt_failure(spec: &str, stderr: &str) -> String {
    let first_error = stderr
        .lines()
        .find(|l| l.starts_with("E:"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("no message")
        .trim();
    let network = [
        "Temporary failure resolving",
        "Could not resolve",
        "Could not connect",
        "Failed to fetch",
        "Network is unreachable",
        "Connection timed out",
    ];
    let unknown = [
        "Unable to locate package",
        "Can't select",
        "has no installation candidate",
        "was not found",
    ];
    if network.iter().any(|n| stderr.contains(n)) {
        format!("cannot download {spec}: no network? (apt-get: {first_error})")
    } else if unknown.iter().any(|n| stderr.contains(n)) {
        format!(
            "apt does not know {spec}: run `apt-get update` as root, then try again \
             (apt-get: {first_error})"
        )
    } else {
        format!("`apt-get download {spec}` failed: {first_error}")
    }
}

/// The `.deb` files in `dir`.
fn debs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect())
}

/// `dpkg-deb -f DEB FIELD`.
fn control_field(deb: &Path, field: &str) -> Result<String> {
    let out = cmd::output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if value.is_empty() {
        bail!("{} has no {field} field", deb.display());
    }
    Ok(value)
}

/// The first `linux-image-*` package in a `Depends` field, with the version pinned by
/// `(= VERSION)` if any. Alternatives (`a | b`) count in order.
pub fn versioned_package(depends: &str) -> Option<(String, Option<String>)> {
    depends.split([',', '|']).map(str::trim).find_map(|dep| {
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        let name = name.split(':').next()?; // drop an architecture qualifier
        if !name.starts_with("linux-image-") {
            return None;
        }
        let version = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.trim().strip_prefix('='))
            .map(|v| v.trim().to_string());
        Some((name.to_string(), version))
    })
}

/// `dpkg-deb --fsys-tarfile DEB | tar -xf - -C INTO TAR_ARGS...`. tar may stop reading
/// early (`--occurrence`), so dpkg-deb's broken pipe is not an error; tar's status is.
fn extract_from_deb(deb: &Path, into: &Path, tar_args: &[&str]) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start dpkg-deb")?;
    let pipe = dpkg.stdout.take().context("dpkg-deb has no stdout")?;
    let mut tar = Command::new("tar");
    tar.args(["-xf", "-", "-C"]).arg(into).args(tar_args);
    let shown = format!(
        "dpkg-deb --fsys-tarfile {} | {}",
        deb.display(),
        cmd::display(&tar)
    );
    tar.stdin(pipe).stdout(Stdio::null()).stderr(Stdio::piped());
    let out = tar.output();
    // The Command holds the pipe's read end: drop it, or dpkg-deb never sees the pipe
    // close when tar stops early and blocks on a full pipe for ever.
    drop(tar);
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let _ = dpkg.kill();
            let _ = dpkg.wait();
            return Err(e).with_context(|| format!("cannot start `{shown}`"));
        }
    };
    let _ = dpkg.wait();
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fails unless `path` looks like a real System.map (not Debian's one-line stub).
fn check_system_map(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the -dbg package has no {}", path.display()))?;
    let symbols = text.lines().take(1000).count();
    if symbols < 1000 || !text.contains(" T _text\n") && !text.contains(" T startup_64\n") {
        bail!(
            "{} is not a real System.map ({} lines)",
            path.display(),
            text.lines().count()
        );
    }
    Ok(())
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where the compressed kernel lies in a bzImage: it starts after the real-mode setup,
/// `(setup_sects + 1) * 512` bytes (`setup_sects` at 0x1f1, 0 meaning 4), plus the setup
/// header's `payload_offset` (0x248), and is `payload_length` (0x24c) bytes long. The
/// payload must be xz (Debian's choice): anything else is named in the error.
pub fn payload_range(bz: &[u8]) -> Result<Range<usize>> {
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage: no `HdrS` setup header at 0x202");
    }
    let version = le16(bz, 0x206).unwrap_or(0);
    if version < 0x0208 {
        bail!("boot protocol {version:#06x} is older than 2.08: no payload fields");
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = le32(bz, 0x248).context("truncated setup header")? as usize;
    let length = le32(bz, 0x24c).context("truncated setup header")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let end = start
        .checked_add(length)
        .filter(|&e| e <= bz.len() && length > 0)
        .with_context(|| {
            format!(
                "payload [{start:#x}, +{length:#x}) lies outside the file ({:#x} bytes)",
                bz.len()
            )
        })?;
    let head = &bz[start..end];
    if !head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        bail!(
            "the payload is not xz but {} (first bytes {:02x?})",
            compression_name(head),
            &head[..head.len().min(6)]
        );
    }
    Ok(start..end)
}

/// The compression a kernel payload starts with, by its magic.
fn compression_name(head: &[u8]) -> &'static str {
    const MAGICS: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "gzip"),
        (b"BZh", "bzip2"),
        (&[0x5d, 0x00, 0x00], "lzma"),
        (&[0x89, b'L', b'Z', b'O'], "lzo"),
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (b"\x7fELF", "an uncompressed ELF"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map_or("an unknown format", |(_, n)| *n)
}

/// Decompresses `xz` data to `out` with the `xz` CLI. Only the first stream is read:
/// the kernel build appends the uncompressed size after it, which xz would call garbage.
fn decompress_xz(data: &[u8], work: &Path, out: &Path) -> Result<()> {
    let input = work.join("payload.xz");
    std::fs::write(&input, data)?;
    let sink = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut c = Command::new("xz");
    c.args(["--decompress", "--stdout", "--single-stream"])
        .arg(&input);
    let shown = cmd::display(&c);
    let res = c
        .stdin(Stdio::null())
        .stdout(sink)
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let _ = std::fs::remove_file(&input);
    if !res.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    Ok(())
}

/// The 32-bit PVH entry point of an ELF64 kernel: the `XEN_ELFNOTE_PHYS32_ENTRY` note
/// (type 18, name `Xen`) in a `PT_NOTE` segment.
pub fn pvh_entry(elf: &[u8]) -> Result<u64> {
    if !elf.starts_with(b"\x7fELF") {
        bail!(
            "not an ELF file (first bytes {:02x?})",
            &elf[..elf.len().min(4)]
        );
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 file");
    }
    let phoff = le64(elf, 0x20).context("truncated ELF header")? as usize;
    let phentsize = usize::from(le16(elf, 0x36).context("truncated ELF header")?);
    let phnum = usize::from(le16(elf, 0x38).context("truncated ELF header")?);
    if phentsize < 56 {
        bail!("bad program header size {phentsize}");
    }
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_NOTE: u32 = 4;
        if le32(elf, ph).context("truncated program headers")? != PT_NOTE {
            continue;
        }
        let off = le64(elf, ph + 8).context("truncated program headers")? as usize;
        let size = le64(elf, ph + 32).context("truncated program headers")? as usize;
        let notes = off
            .checked_add(size)
            .and_then(|end| elf.get(off..end))
            .context("PT_NOTE segment outside the file")?;
        if let Some(entry) = find_pvh_note(notes) {
            return Ok(entry);
        }
    }
    bail!("no PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY (type 18, name \"Xen\")")
}

/// Walks ELF notes (4-byte aligned name and descriptor) for the PVH entry.
fn find_pvh_note(mut notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let namesz = le32(notes, 0)? as usize;
        let descsz = le32(notes, 4)? as usize;
        let kind = le32(notes, 8)?;
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + align4(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            return match descsz {
                4 => le32(desc, 0).map(u64::from),
                8 => le64(desc, 0),
                _ => None,
            };
        }
        notes = notes.get(desc_at + align4(descsz)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_names_the_versioned_image() {
        assert_eq!(
            versioned_package("linux-image-6.1.0-57-amd64 (= 6.1.192-3)"),
            Some((
                "linux-image-6.1.0-57-amd64".into(),
                Some("6.1.192-3".into())
            ))
        );
        assert_eq!(
            versioned_package(
                "initramfs-tools | linux-initramfs-tool, linux-image-6.12.9-amd64-unsigned (= 6.12.9-1) | linux-image-6.12.9-amd64 (= 6.12.9-1)"
            ),
            Some((
                "linux-image-6.12.9-amd64-unsigned".into(),
                Some("6.12.9-1".into())
            ))
        );
        assert_eq!(
            versioned_package("linux-image-7.0.0-1-amd64"),
            Some(("linux-image-7.0.0-1-amd64".into(), None))
        );
        assert_eq!(versioned_package("kmod, linux-base (>= 4.3~)"), None);
    }

    #[test]
    fn version_txt_round_trips() {
        let text = version_txt("6.1.0-57-amd64", "6.1.192-3");
        assert_eq!(text, "release=6.1.0-57-amd64\npackage=6.1.192-3\n");
        assert_eq!(
            parse_version_txt(&text),
            Some(("6.1.0-57-amd64".into(), "6.1.192-3".into()))
        );
        assert_eq!(parse_version_txt("release=x\n"), None);
        assert_eq!(parse_version_txt("release=\npackage=1\n"), None);
    }

    /// A bzImage-shaped buffer: `setup_sects` at 0x1f1, the header magic, protocol 2.15,
    /// and `payload` placed at `offset` after the setup sectors.
    fn bzimage(setup_sects: u8, offset: u32, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            setup_sects as usize
        };
        let start = (sects + 1) * 512 + offset as usize;
        let mut b = vec![0u8; start + payload.len() + 4];
        b[0x1f1] = setup_sects;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[start..start + payload.len()].copy_from_slice(payload);
        b
    }

    #[test]
    fn payload_is_found_after_the_setup_sectors() {
        let xz = b"\xfd7zXZ\0rest";
        assert_eq!(payload_range(&bzimage(27, 0x2cc, xz)).unwrap(), {
            let s = 28 * 512 + 0x2cc;
            s..s + xz.len()
        });
        // setup_sects 0 means 4.
        assert_eq!(
            payload_range(&bzimage(0, 16, xz)).unwrap().start,
            5 * 512 + 16
        );
    }

    #[test]
    fn payload_errors_are_one_line() {
        let e = payload_range(&bzimage(4, 0, b"\x1f\x8b\x08\0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the payload is not xz but gzip (first bytes [1f, 8b, 08, 00])"
        );
        let e = payload_range(&[0u8; 1024]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a bzImage: no `HdrS` setup header at 0x202"
        );
        let mut b = bzimage(4, 0, b"\xfd7zXZ\0");
        b[0x24c..0x250].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(
            payload_range(&b)
                .unwrap_err()
                .to_string()
                .contains("outside the file")
        );
    }

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        e[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        e[64 + 32..64 + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        e.extend_from_slice(notes);
        e
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn pvh_note_is_found_among_other_notes() {
        let mut notes = note(b"GNU\0", 3, &[0xaa; 20]);
        notes.extend(note(b"Xen\0", 6, b"linux\0"));
        notes.extend(note(b"Xen\0", 18, &0x0100_0850u32.to_le_bytes()));
        assert_eq!(pvh_entry(&elf_with_notes(&notes)).unwrap(), 0x0100_0850);
    }

    #[test]
    fn no_pvh_note_is_a_clear_error() {
        let notes = note(b"Xen\0", 6, b"linux\0");
        assert_eq!(
            pvh_entry(&elf_with_notes(&notes)).unwrap_err().to_string(),
            "no PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY (type 18, name \"Xen\")"
        );
        // The same type under another name does not count.
        let notes = note(b"GNU\0", 18, &[1, 0, 0, 0]);
        assert!(pvh_entry(&elf_with_notes(&notes)).is_err());
        assert!(
            pvh_entry(b"MZ\x90\0")
                .unwrap_err()
                .to_string()
                .starts_with("not an ELF file")
        );
    }

    #[test]
    fn apt_failures_are_named() {
        assert_eq!(
            apt_failure(
                "linux-image-amd64",
                "W: x\nE: Failed to fetch http://deb.debian.org/a.deb  Temporary failure resolving 'deb.debian.org'\n"
            ),
            "cannot download linux-image-amd64: no network? (apt-get: E: Failed to fetch \
             http://deb.debian.org/a.deb  Temporary failure resolving 'deb.debian.org')"
        );
        assert!(
            apt_failure(
                "linux-image-x-dbg=1",
                "E: Unable to locate package linux-image-x-dbg\n"
            )
            .starts_with("apt does not know linux-image-x-dbg=1: run `apt-get update`")
        );
    }
}
