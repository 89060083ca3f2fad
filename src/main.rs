//! The `redis-postgres-sync` binary: parses the command line and dispatches to one module per
//! subcommand (see `src/cli/`).

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_telemetry(&args.log);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
