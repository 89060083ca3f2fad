//! The `redis-postgres-sync` binary: parses the command line and dispatches to one module per
//! subcommand (see `src/cli/`).

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// jemalloc rather than the system allocator: decoding allocates many small, short-lived strings,
/// and glibc's allocator both spends more time on them and keeps more memory resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_telemetry(&args.log);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            // A setting the operator must fix (found while connecting): exit 2, like an invalid
            // value caught at start.
            if e.chain()
                .any(|c| c.is::<redis_postgres_sync::config::SettingError>())
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
