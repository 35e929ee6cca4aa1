//! `workload`: CPU-bound work with known shares, for profiling Linux guests.
//!
//! `workload [--seconds S | --rounds N] [--name NAME]` runs rounds of three hot
//! functions (`hot_alpha` 50 %, `hot_beta` 30 %, `hot_gamma` 20 % of each round's
//! instructions by construction: see `linux_workload::work`) until it has had S seconds
//! of CPU time (default 4) or for exactly N rounds, then prints one line:
//!
//! ```text
//! workload NAME done rounds=N alpha=50 beta=30 gamma=20
//! ```
//!
//! CPU time, not wall time: while something more urgent runs (the guest's `init` runs
//! `guest-kit collect` with the workload reniced), the workload waits instead of
//! running out, so it is still there to be collected however slow the machine is.

use linux_workload::{cpu_seconds, work};
use std::process::ExitCode;

const USAGE: &str = "usage: workload [--seconds S | --rounds N] [--name NAME]";

/// How long to run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Length {
    Seconds(f64),
    Rounds(u64),
}

/// Parsed command line.
#[derive(Clone, Debug, PartialEq)]
struct Args {
    length: Length,
    name: String,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut length = None;
    let mut name = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--seconds" | "--rounds" if length.is_some() => {
                return Err("give --seconds or --rounds once".into());
            }
            "--seconds" => {
                let v = value()?;
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("bad --seconds {v:?}"))?;
                length = Some(Length::Seconds(s));
            }
            "--rounds" => {
                let v = value()?;
                let n = v.parse().map_err(|_| format!("bad --rounds {v:?}"))?;
                length = Some(Length::Rounds(n));
            }
            "--name" => name = Some(value()?.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        length: length.unwrap_or(Length::Seconds(4.0)),
        name: name.unwrap_or_else(|| "workload".into()),
    })
}

/// Runs rounds for `length`; returns how many ran.
fn run(length: Length) -> u64 {
    let mut sum = 0u64;
    let mut rounds = 0u64;
    match length {
        Length::Rounds(n) => {
            while rounds < n {
                sum = sum.wrapping_add(work::round());
                rounds += 1;
            }
        }
        Length::Seconds(s) => {
            while cpu_seconds() < s {
                sum = sum.wrapping_add(work::round());
                rounds += 1;
            }
        }
    }
    std::hint::black_box(sum);
    rounds
}

/// The line printed at the end.
fn done_line(name: &str, rounds: u64) -> String {
    let mut line = format!("workload {name} done rounds={rounds}");
    for (function, units) in work::FUNCTIONS {
        line.push_str(&format!(" {function}={}", work::share_percent(units)));
    }
    line
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("workload: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rounds = run(args.length);
    println!("{}", done_line(&args.name, rounds));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn arguments() {
        assert_eq!(
            args("").unwrap(),
            Args {
                length: Length::Seconds(4.0),
                name: "workload".into()
            }
        );
        assert_eq!(
            args("--seconds 2.5 --name w1").unwrap(),
            Args {
                length: Length::Seconds(2.5),
                name: "w1".into()
            }
        );
        assert_eq!(args("--rounds 7").unwrap().length, Length::Rounds(7));
        assert!(args("--rounds 1 --seconds 1").is_err());
        assert!(args("--seconds -1").is_err());
        assert!(args("--name").is_err());
        assert!(args("--bogus").is_err());
    }

    #[test]
    fn done_line_names_the_shares_by_construction() {
        assert_eq!(
            done_line("w1", 12),
            "workload w1 done rounds=12 alpha=50 beta=30 gamma=20"
        );
    }

    #[test]
    fn rounds_run_exactly() {
        assert_eq!(run(Length::Rounds(3)), 3);
        assert_eq!(run(Length::Rounds(0)), 0);
        let before = cpu_seconds();
        assert!(run(Length::Seconds(before + 0.05)) >= 1);
        assert!(cpu_seconds() >= before + 0.05);
    }
}
