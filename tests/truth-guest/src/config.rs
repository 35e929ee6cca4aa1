//! The guest's options, from the `hvm_start_info` command line (space-separated
//! `key=value`; keys without the `gk.` prefix belong to others and are ignored):
//!
//! - `gk.rounds=N` busy rounds (default 20: 200 M instructions, ~2 s in Bochs at 100 MIPS
//!   of guest code, well under a second in QEMU TCG), 1..=100000;
//! - `gk.idle_pct=P` idle share of the whole run in percent (default 26, i.e. ~0.7 s idle
//!   after ~2 s busy), 0..=90;
//! - `gk.slice_us=U` length of one HLT timer in microseconds (default 10000), 10..=1000000;
//! - `gk.vm=NAME` the name printed in the bundle's `vm` line (default `truth`),
//!   1..=32 of `[A-Za-z0-9_.-]`.
//!
//! Core-only so the host tests can run it.

/// Parsed options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub rounds: u32,
    pub idle_pct: u32,
    pub slice_us: u32,
    vm: [u8; 32],
    vm_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        let mut vm = [0; 32];
        vm[..5].copy_from_slice(b"truth");
        Config {
            rounds: 20,
            idle_pct: 26,
            slice_us: 10_000,
            vm,
            vm_len: 5,
        }
    }
}

/// A `gk.` option that was not understood (the default was kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadOption<'a>(pub &'a str);

impl Config {
    /// The VM name for the bundle.
    pub fn vm(&self) -> &str {
        // Only ASCII is ever stored (see `parse`).
        core::str::from_utf8(self.vm.get(..self.vm_len).unwrap_or(b"truth")).unwrap_or("truth")
    }

    /// Parses a command line; each bad `gk.` option is passed to `bad` and keeps its default.
    pub fn parse<'a>(cmdline: &'a str, mut bad: impl FnMut(BadOption<'a>)) -> Config {
        let mut config = Config::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(option) = word.strip_prefix("gk.") else {
                continue;
            };
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let ok = match key {
                "rounds" => set(&mut config.rounds, value, 1, 100_000),
                "idle_pct" => set(&mut config.idle_pct, value, 0, 90),
                "slice_us" => set(&mut config.slice_us, value, 10, 1_000_000),
                "vm" => config.set_vm(value),
                _ => false,
            };
            if !ok {
                bad(BadOption(word));
            }
        }
        config
    }

    fn set_vm(&mut self, name: &str) -> bool {
        let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if name.is_empty() || name.len() > self.vm.len() || !name.bytes().all(valid) {
            return false;
        }
        self.vm = [0; 32];
        self.vm[..name.len()].copy_from_slice(name.as_bytes());
        self.vm_len = name.len();
        true
    }
}

fn set(slot: &mut u32, value: &str, min: u32, max: u32) -> bool {
    match value.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) && !value.starts_with('+') => {
            *slot = v;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cmdline: &str) -> (Config, Vec<&str>) {
        let mut bad = Vec::new();
        let config = Config::parse(cmdline, |BadOption(w)| bad.push(w));
        (config, bad)
    }

    #[test]
    fn defaults_without_options() {
        let (c, bad) = parse("console=ttyS0 quiet");
        assert_eq!(c, Config::default());
        assert_eq!(
            (c.rounds, c.idle_pct, c.slice_us, c.vm()),
            (20, 26, 10_000, "truth")
        );
        assert!(bad.is_empty());
    }

    #[test]
    fn reads_every_option() {
        let (c, bad) = parse("gk.rounds=3  gk.idle_pct=50 x=1 gk.slice_us=500 gk.vm=t-1.a_b");
        assert_eq!(
            (c.rounds, c.idle_pct, c.slice_us, c.vm()),
            (3, 50, 500, "t-1.a_b")
        );
        assert!(bad.is_empty());
    }

    #[test]
    fn bad_options_keep_defaults_and_are_reported() {
        let (c, bad) = parse(
            "gk.rounds=0 gk.idle_pct=91 gk.slice_us=x gk.vm=a#b gk.vm= gk.foo=1 gk.rounds=+5 \
             gk.vm=abcdefghijabcdefghijabcdefghijabc",
        );
        assert_eq!(c, Config::default());
        assert_eq!(
            bad,
            [
                "gk.rounds=0",
                "gk.idle_pct=91",
                "gk.slice_us=x",
                "gk.vm=a#b",
                "gk.vm=",
                "gk.foo=1",
                "gk.rounds=+5",
                "gk.vm=abcdefghijabcdefghijabcdefghijabc"
            ]
        );
    }
}
