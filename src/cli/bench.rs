//! `bench`: measures decode + fold (`--mode fold`) or the whole pipeline against local Postgres
//! and Redis (`--mode sync`) on a fixture, and prints a table or JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use redis_postgres_sync::bench::{self, FoldReport, SyncBenchOptions, SyncReport};
use redis_postgres_sync::ingest::publish::PublishOptions;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The JSON-lines fixture (see `fixture`; `just fixture-large` makes a 1,000,000-event one).
    pub fixture: PathBuf,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Fold)]
    pub mode: Mode,
    /// Repeat the measurement this many times and report each run and the median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// PostgreSQL server (no database name): `sync` mode creates a fresh database on it.
    #[arg(
        long,
        env = "BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432",
        hide_env_values = true
    )]
    pub postgres: String,
    /// Redis server URL: `sync` mode uses fresh stream names on it.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = redis_postgres_sync::config::DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,
    /// PEM file of an extra root certificate for a `rediss://` REDIS_URL.
    #[arg(long, env = "REDIS_CA_CERT")]
    pub redis_ca_cert: Option<std::path::PathBuf>,
    /// WORKERS of the service under test.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// BATCH_SIZE of the service under test (entries per batch); in fold mode, events per
    /// analytics refresh.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Publish the entries in a random order.
    #[arg(long)]
    pub shuffle: bool,
    /// Share of entries (0.0 to 1.0) published twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Keep the database and streams of `sync` mode (they are dropped otherwise).
    #[arg(long)]
    pub keep: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Decode and fold in memory.
    Fold,
    /// Publish to a fresh stream, run sync into a fresh database until drained.
    Sync,
}

#[derive(Serialize)]
struct Output<T: Serialize> {
    runs: Vec<T>,
    median_events_per_second: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Both modes read the fixture themselves (fold streams it; sync frees it once published).
    anyhow::ensure!(
        args.fixture.is_file(),
        "fixture {} not found (see `just fixture-large`)",
        args.fixture.display()
    );
    match args.mode {
        Mode::Fold => {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let file = std::fs::File::open(&args.fixture)
                    .with_context(|| format!("reading {}", args.fixture.display()))?;
                let input = std::io::BufReader::with_capacity(1 << 20, file);
                runs.push(tokio::task::block_in_place(|| {
                    bench::fold(input, args.batch_size as usize)
                })?);
            }
            let median = median(runs.iter().map(|r| r.fold_events_per_second));
            if args.json {
                print_json(runs, median)?;
            } else {
                print_fold(&runs, median);
            }
        }
        Mode::Sync => {
            let opts = SyncBenchOptions {
                postgres_server: args.postgres.clone(),
                redis_url: args.redis_url.clone(),
                redis_ca_cert: args.redis_ca_cert.clone(),
                workers: args.workers,
                batch_size: args.batch_size,
                publish: PublishOptions {
                    shuffle: args.shuffle,
                    duplicate_share: args.duplicate_share.clamp(0.0, 1.0),
                    seed: 1,
                },
                keep: args.keep,
            };
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:8} {bar:40} {pos}/{len} entries {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let mut runs = Vec::new();
            for run in 1..=args.runs {
                let report = bench::sync(&args.fixture, &opts, |phase, done, total| {
                    bar.set_message(format!("{phase} {run}/{}", args.runs));
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await?;
                runs.push(report);
            }
            bar.finish_and_clear();
            let median = median(runs.iter().map(|r| r.events_per_second));
            if args.json {
                print_json(runs, median)?;
            } else {
                print_sync(&runs, median);
            }
        }
    }
    Ok(())
}

fn print_json<T: Serialize>(runs: Vec<T>, median: f64) -> anyhow::Result<()> {
    let out = Output {
        runs,
        median_events_per_second: median,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_fold(runs: &[FoldReport], median: f64) {
    println!(
        "mode fold: decode + fold in memory, {} events",
        runs[0].events
    );
    println!(
        "{:>4}  {:>14}  {:>14}  {:>14}  {:>10}  {:>10}",
        "run", "decode ev/s", "fold ev/s", "both ev/s", "state", "peak RSS"
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "{:>4}  {:>14.0}  {:>14.0}  {:>14.0}  {:>10}  {:>10}",
            i + 1,
            r.decode_events_per_second,
            r.fold_events_per_second,
            r.end_to_end_events_per_second,
            mib(r.state_bytes),
            mib(r.peak_memory_bytes)
        );
    }
    println!("median fold: {median:.0} events/s");
    println!(
        "rows: {}",
        runs[0]
            .rows
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn print_sync(runs: &[SyncReport], median: f64) {
    let r0 = &runs[0];
    println!(
        "mode sync: {} entries, {} events, first read → last commit",
        r0.entries, r0.events
    );
    println!(
        "{:>4}  {:>9}  {:>12}  {:>8}  {:>10}  {:>10}  {:>10}  {:>14}",
        "run",
        "seconds",
        "events/s",
        "batches",
        "commit p50",
        "commit p99",
        "peak RSS",
        "raw COPY rows/s"
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "{:>4}  {:>9.2}  {:>12.0}  {:>8}  {:>8.0}ms  {:>8.0}ms  {:>10}  {:>14.0}",
            i + 1,
            r.seconds,
            r.events_per_second,
            r.batches,
            r.commit_p50_ms,
            r.commit_p99_ms,
            mib(r.peak_memory_bytes),
            r.copy_rows_per_second
        );
    }
    println!("median: {median:.0} events/s");
    println!(
        "analytics: caught up {} after the last base commit; {} rows in {} batches, {:.0} rows/s",
        runs.iter()
            .map(|r| format!("{:.2}s", r.analytics_catch_up_seconds))
            .collect::<Vec<_>>()
            .join(" / "),
        r0.analytics_rows,
        r0.analytics_batches,
        r0.analytics_rows_per_second
    );
    println!(
        "rows written: {}",
        r0.rows
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
