//! Run directories: `analyzer report DIR` reads `DIR/manifest.txt`, the `key=value`
//! lines `cargo xtask run` writes next to the log (`build/run/manifest.txt`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::input::Fatal;

/// What a run directory's manifest names (paths already resolved, see [`Manifest::load`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    /// The sample log (`log=`; else `samples.vmlog` in the directory).
    pub log: PathBuf,
    /// Bundles by VM name (`bundle.NAME=`).
    pub bundles: BTreeMap<String, PathBuf>,
    /// ELF files with symbols (`elf.NAME=`), in manifest order.
    pub elfs: Vec<PathBuf>,
    /// The hypervisor ELF (`hypervisor_elf=`).
    pub hypervisor_elf: Option<PathBuf>,
    /// The guest kernel's System.map (`system_map=`).
    pub system_map: Option<PathBuf>,
    /// The guest kernel's release (`kernel_release=`).
    pub kernel_release: Option<String>,
}

/// Where a manifest path is: relative paths are relative to the manifest's directory;
/// an absolute path that does not exist is replaced by the file of the same name in
/// `dir` when there is one (a run directory copied to another machine).
pub fn resolve(dir: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_relative() {
        return dir.join(p);
    }
    if !p.exists()
        && let Some(name) = p.file_name()
    {
        let here = dir.join(name);
        if here.exists() {
            return here;
        }
    }
    p.to_path_buf()
}

impl Manifest {
    /// Reads `dir/manifest.txt`. Unknown keys are ignored (the harness also writes the
    /// scenario, command line, ISO, ...).
    pub fn load(dir: &Path) -> Result<Manifest, Fatal> {
        let path = dir.join("manifest.txt");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Fatal(if path.exists() {
                format!("{}: cannot read: {e}", path.display())
            } else {
                format!(
                    "{}: a directory without manifest.txt (`cargo xtask run` writes one); give the sample log instead, e.g. {}",
                    dir.display(),
                    dir.join("samples.vmlog").display()
                )
            })
        })?;
        Ok(Manifest::parse(dir, &text))
    }

    /// Parses manifest text whose relative paths are relative to `dir`.
    pub fn parse(dir: &Path, text: &str) -> Manifest {
        let mut m = Manifest {
            log: dir.join("samples.vmlog"),
            ..Manifest::default()
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if value.is_empty() {
                continue;
            }
            if let Some(vm) = key.strip_prefix("bundle.") {
                m.bundles.insert(vm.to_string(), resolve(dir, value));
            } else if key.starts_with("elf.") {
                m.elfs.push(resolve(dir, value));
            } else {
                match key {
                    "log" => m.log = resolve(dir, value),
                    "hypervisor_elf" => m.hypervisor_elf = Some(resolve(dir, value)),
                    "system_map" => m.system_map = Some(resolve(dir, value)),
                    "kernel_release" => m.kernel_release = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        m
    }
}

/// The `vm NAME` of a bundle file, if it can be read (to let a `--bundle` replace the
/// manifest's bundle of that VM).
pub fn bundle_vm(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("vm ").map(|v| v.trim().to_string()))
}
