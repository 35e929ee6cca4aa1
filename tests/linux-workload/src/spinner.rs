//! `spinner`: a second CPU-bound program for Linux guests, with its own hot functions.
//!
//! `spinner [--seconds S] [--name NAME]` runs rounds of `spin_left` (75 %) and
//! `spin_right` (25 % of each round's instructions, see `linux_workload::work`) until it
//! has had S seconds of CPU time (default 4), then prints one line:
//!
//! ```text
//! spinner NAME done rounds=N left=75 right=25
//! ```

use linux_workload::{cpu_seconds, work};
use std::process::ExitCode;

const USAGE: &str = "usage: spinner [--seconds S] [--name NAME]";

fn parse(args: &[String]) -> Result<(f64, String), String> {
    let (mut seconds, mut name) = (4.0, "spinner".to_string());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                let v = value?;
                seconds = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("bad --seconds {v:?}"))?;
            }
            "--name" => name = value?.clone(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((seconds, name))
}

fn done_line(name: &str, rounds: u64) -> String {
    let mut line = format!("spinner {name} done rounds={rounds}");
    for (function, units) in work::SPINNER_FUNCTIONS {
        line.push_str(&format!(
            " {function}={}",
            units * 100 / work::SPINNER_UNITS_PER_ROUND
        ));
    }
    line
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (seconds, name) = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("spinner: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (mut sum, mut rounds) = (0u64, 0u64);
    while cpu_seconds() < seconds {
        sum = sum.wrapping_add(work::spin_round());
        rounds += 1;
    }
    std::hint::black_box(sum);
    println!("{}", done_line(&name, rounds));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<(f64, String), String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn arguments_and_done_line() {
        assert_eq!(args("").unwrap(), (4.0, "spinner".into()));
        assert_eq!(args("--seconds 1.5 --name c").unwrap(), (1.5, "c".into()));
        assert!(args("--seconds -1").is_err());
        assert!(args("--name").is_err());
        assert!(args("--rounds 3").is_err());
        assert_eq!(
            done_line("c", 9),
            "spinner c done rounds=9 left=75 right=25"
        );
    }
}
