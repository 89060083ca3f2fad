//! Command-line interface: the subcommands, their settings, and telemetry setup.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod bench;
mod dlq;
mod fixture;
mod publish;
mod replay;
mod status;
mod sync;
mod verify;

use redis_postgres_sync::config::{AnalyticsArgs, Connections, SyncSettings};

/// Keeps PostgreSQL in step with Intuition MultiVault events that rindexer publishes to Redis
/// streams: an event log, base state (atom, triple, position, vault, term) and triple-level
/// analytics, all derived in Rust from (block_number, log_index) order.
#[derive(Debug, Parser)]
#[command(name = "redis-postgres-sync", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `redis_postgres_sync=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: consume the input streams into PostgreSQL until SIGINT/SIGTERM.
    ///
    /// Reads with a consumer group, folds each batch into the derived state, commits the event
    /// log, the changed base rows and the progress in one transaction, then publishes changed
    /// term ids to TERM_UPDATES_STREAM and acknowledges. Runs migrations first.
    Sync(SyncSettings),
    /// Run only the analytics consumer (when `sync` runs with --no-analytics elsewhere).
    ///
    /// Consumes TERM_UPDATES_STREAM with group `analytics<CONSUMER_GROUP_SUFFIX>` and keeps
    /// triple_vault, triple_term, predicate_object and subject_predicate up to date. Several
    /// instances are safe: their transactions take turns on an advisory lock.
    Analytics(AnalyticsArgs),
    /// Inspect, re-inject or purge dead letters (`<stream>:dlq`).
    Dlq(dlq::DlqArgs),
    /// One screen of state: per-stream lag and pending, dead letters, analytics lag, progress.
    Status(status::StatusArgs),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate(Connections),
    /// Generate a realistic, deterministic event history as rindexer JSON lines.
    ///
    /// The history follows the MultiVault contract's emission order per transaction and keeps
    /// vault totals, prices and balances consistent. Same seed and knobs, same bytes.
    Fixture(fixture::FixtureArgs),
    /// Push a JSON-lines fixture into a Redis stream (field `payload`), pipelined.
    ///
    /// With --shuffle and --duplicate-share it replays the delivery faults the service must
    /// absorb: any order, some entries twice.
    Publish(publish::PublishArgs),
    /// Measure what the service does with a fixture on this machine.
    ///
    /// `--mode fold` decodes and folds in memory; `--mode sync` publishes to fresh streams, runs
    /// the full pipeline into a fresh database until drained, measures the raw COPY rate of the
    /// same rows for comparison, and drops what it created (unless --keep).
    Bench(bench::BenchArgs),
    /// Rebuild every derived table from the event log already in PostgreSQL.
    ///
    /// Use it after a schema change that adds or redefines derived columns, or to recover from
    /// corrupted rows: it reads the event log (atom_created_events … generic_events), folds it
    /// exactly as `sync` does, and replaces the rows of atom, triple, position, vault, term,
    /// triple_vault, triple_term, predicate_object and subject_predicate in ONE transaction. Until
    /// it commits, readers keep seeing the old rows; afterwards the tables equal what live sync
    /// and analytics produce from the same events. Nothing is read from Redis.
    ///
    /// It can run while `sync` runs: it locks the event log against writes and takes the
    /// analytics lock, so nothing changes under it. Sync batch commits wait for it (one that waits
    /// longer than PROCESSING_TIMEOUT_MS is retried, then the pipeline restarts: nothing is lost).
    /// Pending migrations are applied first. Memory: the whole event log and its fold, as at sync
    /// start.
    Replay(replay::ReplayArgs),
    /// Check every derived table against the fold of the event log; exit 1 on any drift.
    ///
    /// Reads the event log and the derived tables from one consistent snapshot, folds the events
    /// in memory and compares row by row. Prints, per table: rows checked, rows missing (the fold
    /// has them, the table not), extra (the table has them, the fold not) and differing (same key,
    /// other values), with up to --examples examples each, keys and columns named.
    ///
    /// atom, triple, position, vault and term commit together with the event log, so any
    /// difference there is drift. triple_vault, triple_term, predicate_object and
    /// subject_predicate are eventually consistent: the analytics consumer updates them from
    /// TERM_UPDATES_STREAM after each sync commit, so verify them once it has caught up (or stop
    /// the input), else recent changes show up as drift. Exit status: 0 no drift, 1 drift (or an
    /// error). Read-only: fix drift with `replay`.
    Verify(verify::VerifyArgs),
}

pub fn init_telemetry(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Fixture(args) => fixture::run(args),
        Command::Publish(args) => runtime()?.block_on(publish::run(args)),
        Command::Bench(args) => runtime()?.block_on(bench::run(args)),
        Command::Dlq(args) => runtime()?.block_on(dlq::run(args)),
        Command::Status(args) => runtime()?.block_on(status::run(args)),
        Command::Sync(settings) => {
            invalid_setting(settings.validate());
            runtime()?.block_on(sync::run(settings))
        }
        Command::Analytics(args) => {
            invalid_setting(args.validate());
            runtime()?.block_on(sync::analytics(args))
        }
        Command::Migrate(connections) => {
            invalid_setting(redis_postgres_sync::config::validate_connections(
                &connections,
            ));
            runtime()?.block_on(sync::migrate(connections))
        }
        Command::Replay(args) => {
            invalid_setting(args.database.validate());
            runtime()?.block_on(replay::run(args))
        }
        Command::Verify(args) => {
            invalid_setting(args.database.validate());
            return runtime()?.block_on(verify::run(args));
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// Exits with status 2 and clap's usage error format when a setting is invalid.
fn invalid_setting(check: Result<(), String>) {
    if let Err(message) = check {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
