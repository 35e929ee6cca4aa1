//! The hypervisor command line (docs/contracts.md, "Boot"): space-separated `key=value`.
//!
//! - `sample_hz=N`: sampling rate, 1..=[`MAX_SAMPLE_HZ`] (default [`DEFAULT_SAMPLE_HZ`]);
//! - `run_ms=N`: stop after this much host time, 0 = until every guest has stopped (default 0);
//! - `vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]`: one
//!   per VM, `MODULE` being the name given to GRUB's `module2` (the first word of its
//!   command line), `initrd` naming a second module to give a Linux guest as its initial
//!   RAM disk, `channel` who in the guest may use the `GUEST_DATA` hypercall ([`Channel`]).
//!
//! GRUB puts the image path first (`/boot/hypervisor.elf sample_hz=1000`); a first word
//! without `=` that starts with `/` or `(` is taken as that path and skipped.

use crate::fixed::FixedVec;
use thiserror::Error;

/// Most VMs one command line may declare.
pub const MAX_VMS: usize = 8;
/// Most vCPUs one VM may have.
pub const MAX_VCPUS: u32 = 8;
/// vCPUs per VM the hypervisor runs for now (SMP guests are a later step); a larger
/// `vcpus=` is refused rather than silently cut down.
pub const SUPPORTED_VCPUS: u32 = 1;
/// Longest accepted `run_ms`: 24 hours.
pub const MAX_RUN_MS: u64 = 24 * 60 * 60 * 1000;
/// Highest accepted `sample_hz`.
pub const MAX_SAMPLE_HZ: u32 = 100_000;
/// `sample_hz` when the command line has none.
pub const DEFAULT_SAMPLE_HZ: u32 = 1000;
/// Guest RAM when a `vm=` entry has no `mem_mb`.
pub const DEFAULT_MEM_MB: u32 = 64;
/// Guest RAM limit: guest RAM starts at 0 and must stay below the 32-bit MMIO hole.
pub const MAX_MEM_MB: u32 = 3072;
/// Longest VM name.
pub const MAX_NAME_LEN: usize = 32;

/// Who in a VM may deliver data to the host through the `GUEST_DATA` hypercall
/// (docs/contracts.md, "Guests"): `channel=off|kernel|user` in a `vm=` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Channel {
    /// Nobody: every call is refused.
    Off,
    /// Only code at CPL 0 (the guest kernel). The default.
    #[default]
    Kernel,
    /// Any privilege level, user processes (CPL 3) included; their buffers must then be
    /// user-accessible.
    User,
}

impl Channel {
    /// The option's value on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Off => "off",
            Channel::Kernel => "kernel",
            Channel::User => "user",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        [Channel::Off, Channel::Kernel, Channel::User]
            .into_iter()
            .find(|c| c.name() == value)
    }
}

/// One `vm=` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmSpec<'a> {
    /// The VM's name, used to prefix its console lines and in the sample log.
    pub name: &'a str,
    /// The name of the Multiboot2 module holding the guest image.
    pub module: &'a str,
    /// The name of the Multiboot2 module holding the guest's initrd (Linux guests).
    pub initrd: Option<&'a str>,
    /// Number of vCPUs, 1..=[`SUPPORTED_VCPUS`].
    pub vcpus: u32,
    /// Guest RAM in MiB, 1..=[`MAX_MEM_MB`].
    pub mem_mb: u32,
    /// Who may use the guest-data hypercall (default [`Channel::Kernel`]).
    pub channel: Channel,
}

/// The parsed hypervisor command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HvConfig<'a> {
    /// Sampling rate in Hz.
    pub sample_hz: u32,
    /// Stop after this many milliseconds of host time, at most [`MAX_RUN_MS`]; 0 = run until
    /// every guest stopped.
    pub run_ms: u64,
    /// The VMs to start, in command-line order.
    pub vms: FixedVec<VmSpec<'a>, MAX_VMS>,
}

impl Default for HvConfig<'_> {
    fn default() -> Self {
        Self {
            sample_hz: DEFAULT_SAMPLE_HZ,
            run_ms: 0,
            vms: FixedVec::new(),
        }
    }
}

/// Why a command line was refused. Each message names the offending word.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    #[error("cmdline: `{0}` is not key=value")]
    NotKeyValue(&'a str),
    #[error("cmdline: unknown option `{0}` (known: sample_hz, run_ms, vm)")]
    UnknownKey(&'a str),
    #[error("cmdline: {key}=`{value}` is not a decimal number")]
    NotANumber { key: &'a str, value: &'a str },
    #[error("cmdline: {key}={value} is out of range {min}..={max}")]
    OutOfRange {
        key: &'a str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error(
        "cmdline: `{0}` is not vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]"
    )]
    BadVm(&'a str),
    #[error("cmdline: VM name `{0}` must be 1-32 characters of A-Z a-z 0-9 _ -")]
    BadVmName(&'a str),
    #[error("cmdline: unknown VM option `{0}` (known: initrd, vcpus, mem_mb, channel)")]
    UnknownVmOption(&'a str),
    #[error("cmdline: channel=`{0}` is not one of off, kernel, user")]
    BadChannel(&'a str),
    #[error("cmdline: VM `{0}` is declared twice")]
    DuplicateVm(&'a str),
    #[error("cmdline: more than {MAX_VMS} vm= entries")]
    TooManyVms,
    #[error("cmdline: `{0}` is given twice")]
    Repeated(&'a str),
    #[error("cmdline: vcpus={0}: this hypervisor runs {SUPPORTED_VCPUS} vCPU per VM for now")]
    VcpusUnsupported(u32),
}

fn number<'a>(key: &'a str, value: &'a str, min: u64, max: u64) -> Result<u64, CmdlineError<'a>> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CmdlineError::NotANumber { key, value });
    }
    // All digits: the only possible failure left is overflow, which is out of range.
    let n = value.parse::<u64>().map_err(|_| CmdlineError::OutOfRange {
        key,
        value: u64::MAX,
        min,
        max,
    })?;
    if n < min || n > max {
        return Err(CmdlineError::OutOfRange {
            key,
            value: n,
            min,
            max,
        });
    }
    Ok(n)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_vm(value: &str) -> Result<VmSpec<'_>, CmdlineError<'_>> {
    let mut parts = value.split(':');
    let name = parts.next().unwrap_or("");
    let module = parts.next().ok_or(CmdlineError::BadVm(value))?;
    if name.is_empty() || module.is_empty() {
        return Err(CmdlineError::BadVm(value));
    }
    if !valid_name(name) {
        return Err(CmdlineError::BadVmName(name));
    }
    let mut vm = VmSpec {
        name,
        module,
        initrd: None,
        vcpus: 1,
        mem_mb: DEFAULT_MEM_MB,
        channel: Channel::default(),
    };
    let (mut seen_vcpus, mut seen_mem, mut seen_channel) = (false, false, false);
    for opt in parts {
        let (key, val) = opt.split_once('=').ok_or(CmdlineError::BadVm(value))?;
        match key {
            "initrd" if vm.initrd.is_none() => {
                if val.is_empty() {
                    return Err(CmdlineError::BadVm(value));
                }
                vm.initrd = Some(val);
            }
            "vcpus" if !seen_vcpus => {
                seen_vcpus = true;
                vm.vcpus = number(key, val, 1, MAX_VCPUS.into())? as u32;
                if vm.vcpus > SUPPORTED_VCPUS {
                    return Err(CmdlineError::VcpusUnsupported(vm.vcpus));
                }
            }
            "mem_mb" if !seen_mem => {
                seen_mem = true;
                vm.mem_mb = number(key, val, 1, MAX_MEM_MB.into())? as u32;
            }
            "channel" if !seen_channel => {
                seen_channel = true;
                vm.channel = Channel::parse(val).ok_or(CmdlineError::BadChannel(val))?;
            }
            "initrd" | "vcpus" | "mem_mb" | "channel" => {
                return Err(CmdlineError::Repeated(key));
            }
            _ => return Err(CmdlineError::UnknownVmOption(opt)),
        }
    }
    Ok(vm)
}

impl<'a> HvConfig<'a> {
    /// Parses a command line; the first error found is returned.
    pub fn parse(cmdline: &'a str) -> Result<Self, CmdlineError<'a>> {
        let mut config = HvConfig::default();
        let (mut seen_hz, mut seen_run) = (false, false);
        for (i, word) in cmdline.split_ascii_whitespace().enumerate() {
            let Some((key, value)) = word.split_once('=') else {
                if i == 0 && (word.starts_with('/') || word.starts_with('(')) {
                    continue;
                }
                return Err(CmdlineError::NotKeyValue(word));
            };
            match key {
                "sample_hz" if !seen_hz => {
                    seen_hz = true;
                    config.sample_hz = number(key, value, 1, MAX_SAMPLE_HZ.into())? as u32;
                }
                "run_ms" if !seen_run => {
                    seen_run = true;
                    config.run_ms = number(key, value, 0, MAX_RUN_MS)?;
                }
                "sample_hz" | "run_ms" => return Err(CmdlineError::Repeated(key)),
                "vm" => {
                    let vm = parse_vm(value)?;
                    if config.vms.iter().any(|v| v.name == vm.name) {
                        return Err(CmdlineError::DuplicateVm(vm.name));
                    }
                    config.vms.push(vm).map_err(|_| CmdlineError::TooManyVms)?;
                }
                _ => return Err(CmdlineError::UnknownKey(key)),
            }
        }
        Ok(config)
    }

    /// The `vm=` entry named `name`.
    pub fn vm(&self, name: &str) -> Option<&VmSpec<'a>> {
        self.vms.iter().find(|v| v.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_gives_defaults() {
        let c = HvConfig::parse("").unwrap();
        assert_eq!(c.sample_hz, 1000);
        assert_eq!(c.run_ms, 0);
        assert!(c.vms.is_empty());
    }

    #[test]
    fn full_line_with_grub_path() {
        let c = HvConfig::parse(
            "/boot/hypervisor.elf sample_hz=250 run_ms=3000 vm=linux:vmlinux:vcpus=1:mem_mb=256:initrd=initrd.cpio  vm=gt:ground-truth",
        )
        .unwrap();
        assert_eq!(c.sample_hz, 250);
        assert_eq!(c.run_ms, 3000);
        assert_eq!(
            c.vms.as_slice(),
            &[
                VmSpec {
                    name: "linux",
                    module: "vmlinux",
                    initrd: Some("initrd.cpio"),
                    vcpus: 1,
                    mem_mb: 256,
                    channel: Channel::Kernel,
                },
                VmSpec {
                    name: "gt",
                    module: "ground-truth",
                    initrd: None,
                    vcpus: 1,
                    mem_mb: 64,
                    channel: Channel::Kernel,
                },
            ]
        );
        assert_eq!(c.vm("gt").unwrap().module, "ground-truth");
        assert!(c.vm("nope").is_none());
    }

    fn err(line: &str) -> String {
        HvConfig::parse(line).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_bad_word() {
        assert_eq!(
            err("sample_hz=0"),
            "cmdline: sample_hz=0 is out of range 1..=100000"
        );
        assert_eq!(
            err("sample_hz=1k"),
            "cmdline: sample_hz=`1k` is not a decimal number"
        );
        assert_eq!(
            err("sample_hz="),
            "cmdline: sample_hz=`` is not a decimal number"
        );
        assert_eq!(
            err("sample_hz=-5"),
            "cmdline: sample_hz=`-5` is not a decimal number"
        );
        assert_eq!(
            err("run_ms=99999999999999999999999"),
            "cmdline: run_ms=18446744073709551615 is out of range 0..=86400000"
        );
        assert_eq!(
            err("run_ms=86400001"),
            "cmdline: run_ms=86400001 is out of range 0..=86400000"
        );
        assert_eq!(
            HvConfig::parse("run_ms=86400000").unwrap().run_ms,
            86_400_000
        );
        assert_eq!(
            err("vm=a:m:vcpus=2"),
            "cmdline: vcpus=2: this hypervisor runs 1 vCPU per VM for now"
        );
        assert_eq!(err("quiet"), "cmdline: `quiet` is not key=value");
        assert_eq!(
            err("sample_hz=5 /boot/x"),
            "cmdline: `/boot/x` is not key=value"
        );
        assert_eq!(
            err("hz=5"),
            "cmdline: unknown option `hz` (known: sample_hz, run_ms, vm)"
        );
        assert_eq!(
            err("vm=a"),
            "cmdline: `a` is not vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]"
        );
        assert_eq!(
            err("vm=:m"),
            "cmdline: `:m` is not vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]"
        );
        assert_eq!(
            err("vm=a b:m"),
            "cmdline: `a` is not vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]"
        );
        assert_eq!(
            err("vm=a.b:m"),
            "cmdline: VM name `a.b` must be 1-32 characters of A-Z a-z 0-9 _ -"
        );
        assert_eq!(
            err("vm=a:m:vcpus=9"),
            "cmdline: vcpus=9 is out of range 1..=8"
        );
        assert_eq!(
            err("vm=a:m:mem_mb=0"),
            "cmdline: mem_mb=0 is out of range 1..=3072"
        );
        assert_eq!(
            err("vm=a:m:cpus=2"),
            "cmdline: unknown VM option `cpus=2` (known: initrd, vcpus, mem_mb, channel)"
        );
        assert_eq!(
            err("vm=a:m:vcpus"),
            "cmdline: `a:m:vcpus` is not vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]"
        );
        assert_eq!(
            err("vm=a:m:initrd="),
            "cmdline: `a:m:initrd=` is not vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]"
        );
        assert_eq!(
            err("vm=a:m:initrd=i:initrd=j"),
            "cmdline: `initrd` is given twice"
        );
        assert_eq!(
            err("vm=a:m:vcpus=1:vcpus=2"),
            "cmdline: `vcpus` is given twice"
        );
        assert_eq!(err("vm=a:m vm=a:n"), "cmdline: VM `a` is declared twice");
        assert_eq!(err("run_ms=1 run_ms=2"), "cmdline: `run_ms` is given twice");
        let nine: String = (0..9).map(|i| format!("vm=v{i}:m ")).collect();
        assert_eq!(err(&nine), "cmdline: more than 8 vm= entries");
    }

    #[test]
    fn channel_option() {
        let c = HvConfig::parse(
            "vm=a:m vm=b:m:channel=off vm=c:m:channel=kernel vm=d:m:mem_mb=8:channel=user:initrd=i",
        )
        .unwrap();
        let ch: Vec<Channel> = c.vms.iter().map(|v| v.channel).collect();
        assert_eq!(
            ch,
            [
                Channel::Kernel,
                Channel::Off,
                Channel::Kernel,
                Channel::User
            ]
        );
        assert_eq!(
            c.vm("d").map(|v| (v.mem_mb, v.initrd)),
            Some((8, Some("i")))
        );
        assert_eq!(VmSpec::default().channel, Channel::Kernel);
        assert_eq!(Channel::User.name(), "user");
        assert_eq!(
            err("vm=a:m:channel=yes"),
            "cmdline: channel=`yes` is not one of off, kernel, user"
        );
        assert_eq!(
            err("vm=a:m:channel="),
            "cmdline: channel=`` is not one of off, kernel, user"
        );
        assert_eq!(
            err("vm=a:m:channel=User"),
            "cmdline: channel=`User` is not one of off, kernel, user"
        );
        assert_eq!(
            err("vm=a:m:channel=off:channel=user"),
            "cmdline: `channel` is given twice"
        );
        assert_eq!(
            err("vm=a:m:chan=off"),
            "cmdline: unknown VM option `chan=off` (known: initrd, vcpus, mem_mb, channel)"
        );
        assert_eq!(
            err("vm=a:m:channel"),
            "cmdline: `a:m:channel` is not vm=NAME:MODULE[:initrd=MODULE][:vcpus=N][:mem_mb=N][:channel=off|kernel|user]"
        );
    }
}
