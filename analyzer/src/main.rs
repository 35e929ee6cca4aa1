//! `analyzer`: see `analyzer --help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = analyzer::cli::Cli::parse();
    match analyzer::cli::run(cli) {
        Ok((out, warnings)) => {
            for w in warnings {
                eprintln!("analyzer: warning: {w}");
            }
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (e.g. `| head`) is not an error worth a message.
            let _ = stdout.write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("analyzer: error: {e}");
            ExitCode::FAILURE
        }
    }
}
