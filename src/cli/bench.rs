//! `bench`: measures decode + fold (`--mode fold`), the whole pipeline against local Postgres
//! and Redis (`--mode sync`), or what a history's size costs (`--mode scale`: sync, restart →
//! ready, a reorg of the newest blocks) on a fixture, and prints a table or JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use redis_postgres_sync::bench::{self, FoldReport, ScaleReport, SyncBenchOptions, SyncReport};
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::store::measure::mib;

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
    /// PostgreSQL server (no database name): `sync` and `scale` modes create a fresh database on it.
    #[arg(
        long,
        env = "BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432",
        hide_env_values = true
    )]
    pub postgres: String,
    /// Redis server URL: `sync` and `scale` modes use fresh stream names on it.
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
    /// STATE_CACHE_KEYS of the service under test (`sync` and `scale` modes).
    #[arg(long, default_value_t = redis_postgres_sync::config::DEFAULT_STATE_CACHE_KEYS, value_parser = clap::value_parser!(u64).range(1000..=1_000_000_000))]
    pub state_cache_keys: u64,
    /// BATCH_SIZE of the service under test (entries per batch); in fold mode, events per
    /// analytics refresh.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// In scale mode, how many of the newest blocks the reorg orphans (`fork_block` = highest
    /// block − (depth − 1)).
    #[arg(long, default_value_t = redis_postgres_sync::bench::DEFAULT_SCALE_REORG_DEPTH, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub reorg_depth: i64,
    /// Publish the entries in a random order.
    #[arg(long)]
    pub shuffle: bool,
    /// Share of entries (0.0 to 1.0) published twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Keep the database and streams of `sync` and `scale` modes (they are dropped otherwise).
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
    /// As `sync`, then stop and start again (restart → ready), then a reorg of the newest
    /// blocks (16 unless `--reorg-depth`; notice → ready again), with the peak RSS of each phase.
    Scale,
}

#[derive(Serialize)]
struct ScaleMedians {
    events_per_second: f64,
    sync_peak_memory_bytes: f64,
    restart_ready_seconds: f64,
    restart_peak_memory_bytes: f64,
    reorg_applied_seconds: f64,
    reorg_ready_seconds: f64,
    reorg_peak_memory_bytes: f64,
}

#[derive(Serialize)]
struct ScaleOutput {
    runs: Vec<ScaleReport>,
    median: ScaleMedians,
}

#[derive(Serialize)]
struct Output<T: Serialize> {
    runs: Vec<T>,
    median_events_per_second: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Every mode reads the fixture itself (fold streams it; sync and scale free it once published).
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
        Mode::Sync | Mode::Scale => {
            let opts = SyncBenchOptions {
                postgres_server: args.postgres.clone(),
                redis_url: args.redis_url.clone(),
                redis_ca_cert: args.redis_ca_cert.clone(),
                workers: args.workers,
                state_cache_keys: args.state_cache_keys,
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
            let progress = |run: u32| {
                let bar = bar.clone();
                let runs = args.runs;
                move |phase: &str, done: u64, total: u64| {
                    bar.set_message(format!("{phase} {run}/{runs}"));
                    bar.set_length(total);
                    bar.set_position(done);
                }
            };
            if matches!(args.mode, Mode::Scale) {
                let mut runs = Vec::new();
                for run in 1..=args.runs {
                    runs.push(
                        bench::scale(&args.fixture, &opts, args.reorg_depth, progress(run)).await?,
                    );
                }
                bar.finish_and_clear();
                let m = |f: fn(&ScaleReport) -> f64| median(runs.iter().map(f));
                let medians = ScaleMedians {
                    events_per_second: m(|r| r.events_per_second),
                    sync_peak_memory_bytes: m(|r| r.sync_peak_memory_bytes as f64),
                    restart_ready_seconds: m(|r| r.restart_ready_seconds),
                    restart_peak_memory_bytes: m(|r| r.restart_peak_memory_bytes as f64),
                    reorg_applied_seconds: m(|r| r.reorg_applied_seconds),
                    reorg_ready_seconds: m(|r| r.reorg_ready_seconds),
                    reorg_peak_memory_bytes: m(|r| r.reorg_peak_memory_bytes as f64),
                };
                if args.json {
                    let out = ScaleOutput {
                        runs,
                        median: medians,
                    };
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    print_scale(&runs, &medians);
                }
                return Ok(());
            }
            let mut runs = Vec::new();
            for run in 1..=args.runs {
                runs.push(bench::sync(&args.fixture, &opts, progress(run)).await?);
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
        "analytics: caught up {} after the last base commit; {} rows in {} transactions, {:.0} rows/s",
        runs.iter()
            .map(|r| format!("{:.2}s", r.analytics_catch_up_seconds))
            .collect::<Vec<_>>()
            .join(" / "),
        r0.analytics_rows,
        r0.analytics_batches,
        r0.analytics_rows_per_second
    );
    println!("PostgreSQL: {}", r0.postgres.describe());
    println!(
        "rows written: {}",
        r0.rows
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn print_scale(runs: &[ScaleReport], m: &ScaleMedians) {
    let r0 = &runs[0];
    println!(
        "mode scale: {} events in {} entries, blocks up to {}; reorg of blocks {}..={} ({})",
        r0.events, r0.entries, r0.highest_block, r0.fork_block, r0.highest_block, r0.reorg_depth
    );
    println!(
        "{:>6}  {:>10}  {:>10}  {:>10}  {:>14}  {:>10}  {:>14}  {:>13}  {:>10}  {:>12}",
        "run",
        "events",
        "events/s",
        "sync peak",
        "restart→ready",
        "start peak",
        "reorg→applied",
        "reorg→ready",
        "reorg peak",
        "events moved"
    );
    let secs = |s: f64| format!("{s:.2}s");
    for (i, r) in runs.iter().enumerate() {
        println!(
            "{:>6}  {:>10}  {:>10.0}  {:>10}  {:>14}  {:>10}  {:>14}  {:>13}  {:>10}  {:>12}",
            i + 1,
            r.events,
            r.events_per_second,
            mib(r.sync_peak_memory_bytes),
            secs(r.restart_ready_seconds),
            mib(r.restart_peak_memory_bytes),
            secs(r.reorg_applied_seconds),
            secs(r.reorg_ready_seconds),
            mib(r.reorg_peak_memory_bytes),
            r.events_reorged
        );
    }
    if runs.len() > 1 {
        println!(
            "{:>6}  {:>10}  {:>10.0}  {:>10}  {:>14}  {:>10}  {:>14}  {:>13}  {:>10}  {:>12}",
            "median",
            r0.events,
            m.events_per_second,
            mib(m.sync_peak_memory_bytes as u64),
            secs(m.restart_ready_seconds),
            mib(m.restart_peak_memory_bytes as u64),
            secs(m.reorg_applied_seconds),
            secs(m.reorg_ready_seconds),
            mib(m.reorg_peak_memory_bytes as u64),
            ""
        );
    }
    println!("PostgreSQL: {}", r0.postgres.describe());
    println!(
        "RSS when the restart began (start peak counts from it): {}",
        runs.iter()
            .map(|r| mib(r.restart_base_memory_bytes))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let failures: u64 = runs.iter().map(|r| r.failure_restarts).sum();
    if failures > 0 {
        println!("warning: {failures} pipeline restarts after failures during the runs");
    }
}
