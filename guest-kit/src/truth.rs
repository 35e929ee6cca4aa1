//! The ground-truth line printed by `tests/truth-guest` (not part of the bundle):
//!
//! ```text
//! truth busy_tsc=N idle_tsc=N busy_start=T idle_start=T idle_end=T rounds=N alpha_heavy=60 alpha_light=10 beta_work=20 kernel_work=10
//! ```
//!
//! `busy_tsc`/`idle_tsc` are the TSC ticks the guest measured in its busy and idle phases;
//! `busy_start`, `idle_start`, `idle_end` are host TSC stamps (VMCALL `TSC_NOW`) of the phase
//! boundaries; every other `NAME=P` is a function's share of the busy instructions in percent,
//! fixed by construction. On a console the line is relayed as `[VM] truth ...`.

use std::collections::BTreeMap;

/// Keys of the truth line that are measurements, not function shares.
pub const MEASURED_KEYS: [&str; 6] = [
    "busy_tsc",
    "idle_tsc",
    "busy_start",
    "idle_start",
    "idle_end",
    "rounds",
];

/// A parsed truth line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth {
    /// The measured values ([`MEASURED_KEYS`]) that were present.
    pub measured: BTreeMap<String, u64>,
    /// Function name -> share of busy instructions in percent (sums to 100).
    pub shares: BTreeMap<String, u32>,
}

impl Truth {
    /// A measured value (`busy_tsc`, `idle_tsc`, ...), if present.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.measured.get(key).copied()
    }

    /// Idle share of the whole run in percent, from `busy_tsc` and `idle_tsc`.
    pub fn idle_percent(&self) -> Option<f64> {
        let busy = self.get("busy_tsc")? as f64;
        let idle = self.get("idle_tsc")? as f64;
        (busy + idle > 0.0).then(|| 100.0 * idle / (busy + idle))
    }
}

/// Why a truth line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TruthError {
    #[error("not a truth line (expected `truth KEY=VALUE ...`)")]
    NotTruth,
    #[error("truth field `{0}` is not KEY=NUMBER")]
    BadField(String),
    #[error("truth key `{0}` given twice")]
    Duplicate(String),
    #[error("truth line lacks `{0}`")]
    Missing(&'static str),
    #[error("function shares sum to {0} %, not 100 %")]
    BadSum(u64),
}

impl Truth {
    /// Parses one line, `truth ...` (without the console's `[VM] ` prefix).
    pub fn parse(line: &str) -> Result<Truth, TruthError> {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("truth") {
            return Err(TruthError::NotTruth);
        }
        let mut measured = BTreeMap::new();
        let mut shares = BTreeMap::new();
        for field in fields {
            let bad = || TruthError::BadField(field.to_string());
            let (key, value) = field.split_once('=').ok_or_else(bad)?;
            if key.is_empty() || value.starts_with('+') {
                return Err(bad());
            }
            let value: u64 = value.parse().map_err(|_| bad())?;
            let fresh = if MEASURED_KEYS.contains(&key) {
                measured.insert(key.to_string(), value).is_none()
            } else {
                let percent = u32::try_from(value).map_err(|_| bad())?;
                shares.insert(key.to_string(), percent).is_none()
            };
            if !fresh {
                return Err(TruthError::Duplicate(key.to_string()));
            }
        }
        for key in ["busy_tsc", "idle_tsc"] {
            if !measured.contains_key(key) {
                return Err(TruthError::Missing(key));
            }
        }
        let sum: u64 = shares.values().map(|&p| u64::from(p)).sum();
        if sum != 100 {
            return Err(TruthError::BadSum(sum));
        }
        Ok(Truth { measured, shares })
    }
}

/// The truth line of each VM in a console log (`[VM] truth ...`; a bare `truth ...` line
/// goes to the name `""`).
pub fn truth_from_console(console: &str) -> BTreeMap<String, Result<Truth, TruthError>> {
    let mut found = BTreeMap::new();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        let (name, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((name, rest)) => (name, rest),
            None => ("", line),
        };
        if rest.starts_with("truth ") {
            found.insert(name.to_string(), Truth::parse(rest));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "truth busy_tsc=300 idle_tsc=100 busy_start=5 idle_start=305 idle_end=405 \
                        rounds=20 alpha_heavy=60 alpha_light=10 beta_work=20 kernel_work=10";

    #[test]
    fn parses_the_guest_line() {
        let t = Truth::parse(LINE).unwrap();
        assert_eq!(t.get("busy_tsc"), Some(300));
        assert_eq!(t.get("idle_end"), Some(405));
        assert_eq!(t.get("nope"), None);
        assert_eq!(t.shares["alpha_heavy"], 60);
        assert_eq!(t.shares["kernel_work"], 10);
        assert_eq!(t.shares.len(), 4);
        assert_eq!(t.idle_percent(), Some(25.0));
    }

    #[test]
    fn rejects_bad_lines_with_a_reason() {
        let cases = [
            ("hello", "not a truth line (expected `truth KEY=VALUE ...`)"),
            (
                "truth busy_tsc=1 idle_tsc=x a=100",
                "truth field `idle_tsc=x` is not KEY=NUMBER",
            ),
            (
                "truth busy_tsc=1 idle_tsc=1 a",
                "truth field `a` is not KEY=NUMBER",
            ),
            (
                "truth busy_tsc=1 busy_tsc=2",
                "truth key `busy_tsc` given twice",
            ),
            ("truth busy_tsc=1 a=100", "truth line lacks `idle_tsc`"),
            (
                "truth busy_tsc=1 idle_tsc=1 a=60 b=30",
                "function shares sum to 90 %, not 100 %",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(Truth::parse(line).unwrap_err().to_string(), want, "{line}");
        }
    }

    #[test]
    fn found_per_vm_on_a_console() {
        let console = format!("[t1] hi\n[t1] {LINE}\r\n{LINE}\n[t2] truth busy_tsc=1\n");
        let found = truth_from_console(&console);
        assert_eq!(found.len(), 3);
        assert_eq!(found["t1"].as_ref().unwrap().get("rounds"), Some(20));
        assert!(found[""].is_ok());
        assert_eq!(found["t2"], Err(TruthError::Missing("idle_tsc")));
    }
}
