//! The `bench` subcommand's engine: what the service does with a fixture on this machine.
//!
//! - `fold`: decode + fold in memory (no I/O but reading the file).
//! - `sync`: a fresh database and fresh stream names, the fixture published, the full pipeline
//!   run until the input is drained, the raw `COPY` rate of the same event rows measured in the
//!   same run for comparison; everything created is dropped unless kept.
//! - `scale`: what a history's size costs (issue 14): sync it into a fresh database, start again
//!   on it (start → ready), apply a reorg of its newest blocks (16, or `--reorg-depth`; notice →
//!   ready again), with the peak RSS of each phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::analytics::{self, AnalyticsStats};
use crate::config::{AnalyticsSettings, Connections, SyncSettings};
use crate::domain::{Changes, State};
use crate::ingest::decode::{decode_envelope, Envelope};
use crate::ingest::publish::{publish, PublishOptions};
use crate::ingest::stream;
use crate::store;
use crate::sync::SyncStats;

mod scale;
pub use scale::{
    fork_block_at_head, highest_block, reorg_notice, scale, ScaleReport, DEFAULT_SCALE_REORG_DEPTH,
};

/// Peak and current resident memory of this process, in bytes (Linux `/proc/self/status`).
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[derive(Debug, Clone, Serialize)]
pub struct FoldReport {
    pub events: usize,
    pub decode_seconds: f64,
    pub fold_seconds: f64,
    pub decode_events_per_second: f64,
    pub fold_events_per_second: f64,
    pub end_to_end_events_per_second: f64,
    /// Resident memory added by the folded state.
    pub state_bytes: u64,
    pub peak_memory_bytes: u64,
    pub rows: Vec<(String, usize)>,
}

/// Decodes and folds the JSON lines of `input` in batches of `batch` lines (streaming: only one
/// batch of decoded events is held at a time, so the peak memory is the state's), refreshing the
/// analytics after each batch. Decode and fold are timed apart.
pub fn fold(input: impl std::io::BufRead, batch: usize) -> anyhow::Result<FoldReport> {
    let (_, rss_before) = memory();
    let mut state = State::new();
    let mut changes = Changes::default();
    let (mut decode, mut fold) = (Duration::ZERO, Duration::ZERO);
    let mut lines = input.lines().enumerate();
    let mut events = Vec::new();
    let mut total = 0usize;
    loop {
        events.clear();
        let started = Instant::now();
        let mut read = 0;
        for (n, line) in lines.by_ref() {
            let line = line.context("reading the fixture")?;
            if line.trim().is_empty() {
                continue;
            }
            if let Envelope::Events { items, .. } =
                decode_envelope(line.as_bytes()).with_context(|| format!("line {}", n + 1))?
            {
                events.extend(items.into_iter().filter_map(Result::ok));
            }
            read += 1;
            if read == batch.max(1) {
                break;
            }
        }
        decode += started.elapsed();
        if read == 0 {
            break;
        }
        let started = Instant::now();
        for e in &events {
            state.apply(e, &mut changes);
        }
        state.refresh_analytics(&mut changes);
        changes.clear();
        fold += started.elapsed();
        total += events.len();
    }
    let (peak, rss_after) = memory();
    let rows = state
        .tables()
        .row_counts()
        .iter()
        .map(|(t, n)| (t.to_string(), *n))
        .collect();
    let n = total as f64;
    Ok(FoldReport {
        events: total,
        decode_seconds: decode.as_secs_f64(),
        fold_seconds: fold.as_secs_f64(),
        decode_events_per_second: n / decode.as_secs_f64(),
        fold_events_per_second: n / fold.as_secs_f64(),
        end_to_end_events_per_second: n / (decode + fold).as_secs_f64(),
        state_bytes: rss_after.saturating_sub(rss_before),
        peak_memory_bytes: peak,
        rows,
    })
}

/// Knobs of a sync bench.
#[derive(Debug, Clone)]
pub struct SyncBenchOptions {
    /// Server URL without a database name, e.g. `postgres://postgres@127.0.0.1:5432`.
    pub postgres_server: String,
    pub redis_url: String,
    pub redis_ca_cert: Option<std::path::PathBuf>,
    pub workers: u32,
    /// `STATE_CACHE_KEYS` of the service under test.
    pub state_cache_keys: u64,
    pub batch_size: u32,
    pub publish: PublishOptions,
    /// Keep the database and streams afterwards.
    pub keep: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub database: String,
    pub stream: String,
    pub entries: usize,
    pub events: u64,
    pub duplicates: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub batches: u64,
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    pub peak_memory_bytes: u64,
    pub rows: Vec<(String, i64)>,
    /// Raw `COPY … FROM STDIN (FORMAT binary)` of the same event-log rows into empty copies of
    /// the event tables, in rows per second.
    pub copy_rows: u64,
    pub copy_seconds: f64,
    pub copy_rows_per_second: f64,
    /// From the last base commit until the analytics consumer had caught up.
    pub analytics_catch_up_seconds: f64,
    /// Triple-level rows written by the analytics consumer, and their rate over its busy time.
    pub analytics_rows: u64,
    pub analytics_rows_per_second: f64,
    /// Analytics transactions committed (`analytics_batches_total`): one per consumer batch,
    /// more when a refused batch was narrowed down.
    pub analytics_batches: u64,
    /// The server's buffer cache and WAL settings, and the event log's index size after the run.
    pub postgres: store::measure::BufferCache,
}

/// Runs the full pipeline on `lines`; `progress(acked_entries, total_entries)` is called while
/// it runs.
pub async fn sync(
    fixture: &std::path::Path,
    opts: &SyncBenchOptions,
    mut progress: impl FnMut(&str, u64, u64),
) -> anyhow::Result<SyncReport> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("rps_bench_{}", &id[..12]);
    let database_url = store::connect::with_database(&opts.postgres_server, &name);
    let input = format!("{name}:in");
    let term_updates = format!("{name}:term_updates");
    let mut redis = stream::connect(&opts.redis_url, opts.redis_ca_cert.as_deref()).await?;
    let (total, _) =
        publish_fixture(&mut redis, &input, fixture, &opts.publish, &mut progress).await?;
    // The fixture is in Redis now: start the peak-memory count afresh so it measures the service
    // (Linux: writing 5 to clear_refs resets VmHWM).
    reset_peak_memory();

    let running = Running::start(bench_settings(opts, &database_url, &input, &term_updates));
    let (stats, analytics_stats) = (running.stats.clone(), running.analytics.clone());
    let outcome = drained(
        &mut redis,
        &stats,
        &analytics_stats,
        &running.task,
        total as u64,
        &database_url,
        &term_updates,
        &mut progress,
    )
    .await;
    running.stop().await?;
    let caught_up = outcome?;

    let first = stats
        .first_read
        .lock()
        .ok()
        .and_then(|t| *t)
        .context("nothing was read")?;
    let last = stats
        .last_commit
        .lock()
        .ok()
        .and_then(|t| *t)
        .context("nothing was committed")?;
    let seconds = last.duration_since(first).as_secs_f64();
    let mut commits = stats
        .commit_micros
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    commits.sort_unstable();
    let pct = |p: f64| {
        commits
            .get(((commits.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let events = stats.health.metrics.events_new();
    let analytics_rows = analytics_stats.health.metrics.analytics_rows_written.get();
    let analytics_catch_up = caught_up.saturating_duration_since(last).as_secs_f64();
    let analytics_first = analytics_stats.first_commit.lock().ok().and_then(|t| *t);
    let analytics_busy = analytics_first
        .map(|f| caught_up.saturating_duration_since(f).as_secs_f64())
        .unwrap_or(0.0);

    let rows = store::measure::row_counts(&database_url).await?;
    let (copy_rows, copy_seconds) = store::measure::copy_rate(&database_url).await?;
    let postgres = store::measure::read_buffer_cache(&database_url).await?;
    let report = SyncReport {
        database: name.clone(),
        stream: input.clone(),
        entries: total,
        events,
        duplicates: stats.health.metrics.events_duplicate.get(),
        seconds,
        events_per_second: events as f64 / seconds,
        batches: stats.health.metrics.batches_committed.get(),
        commit_p50_ms: pct(0.5),
        commit_p99_ms: pct(0.99),
        peak_memory_bytes: memory().0,
        rows,
        copy_rows,
        copy_seconds,
        copy_rows_per_second: copy_rows as f64 / copy_seconds,
        analytics_catch_up_seconds: analytics_catch_up,
        analytics_rows,
        analytics_rows_per_second: if analytics_busy > 0.0 {
            analytics_rows as f64 / analytics_busy
        } else {
            0.0
        },
        analytics_batches: analytics_stats.health.metrics.analytics_batches.get(),
        postgres,
    };
    if !opts.keep {
        drop_everything(
            &opts.postgres_server,
            &name,
            &mut redis,
            &[&input, &term_updates, &stream::dlq_stream(&input)],
        )
        .await?;
    }
    Ok(report)
}

fn reset_peak_memory() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    memory().1
}

/// The service running in this process.
struct Running {
    stats: Arc<SyncStats>,
    analytics: Arc<AnalyticsStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(settings: SyncSettings) -> Self {
        let app = crate::app::App::new(&settings);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = app.clone();
        let task = tokio::spawn(async move {
            running
                .run(settings, None, async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        Self {
            stats: app.sync,
            analytics: app.analytics,
            stop,
            task,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("sync task")?
    }

    /// Waits until `done` holds, polling every 2 ms; fails if the service stopped.
    async fn until(&self, what: &str, done: impl Fn(&SyncStats) -> bool) -> anyhow::Result<()> {
        while !done(&self.stats) {
            anyhow::ensure!(
                !self.task.is_finished(),
                "the service stopped before {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// Publishes the fixture at `path` to `input`; returns the entries written and the highest block.
/// In file order (no shuffle, no duplicates) it streams the file in chunks, so a 10 M-event
/// fixture never sits in this process's memory (whose peak RSS the scale mode measures).
async fn publish_fixture(
    redis: &mut redis::aio::MultiplexedConnection,
    input: &str,
    path: &std::path::Path,
    opts: &PublishOptions,
    progress: &mut impl FnMut(&str, u64, u64),
) -> anyhow::Result<(usize, Option<i64>)> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if opts.shuffle || opts.duplicate_share > 0.0 {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let highest = highest_block(lines.iter().copied());
        let total = publish(redis, input, &lines, opts, |n| {
            progress("publish", n as u64, lines.len() as u64)
        })
        .await?;
        return Ok((total, highest));
    }
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut total, mut highest, mut read) = (0usize, None::<i64>, 0u64);
    let mut chunk: Vec<String> = Vec::with_capacity(50_000);
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        read += n as u64;
        if n > 0 && !line.trim().is_empty() {
            chunk.push(line.trim_end().to_owned());
        }
        if (n == 0 && !chunk.is_empty()) || chunk.len() == 50_000 {
            let lines: Vec<&str> = chunk.iter().map(String::as_str).collect();
            highest = highest.max(highest_block(lines.iter().copied()));
            total += publish(redis, input, &lines, opts, |_| {}).await?;
            progress("publish", read, size);
            chunk.clear();
        }
        if n == 0 {
            return Ok((total, highest));
        }
    }
}

/// The settings of the service under test: sync and analytics on `input` and `term_updates`,
/// writing into `database_url`, HTTP off.
fn bench_settings(
    opts: &SyncBenchOptions,
    database_url: &str,
    input: &str,
    term_updates: &str,
) -> SyncSettings {
    SyncSettings {
        input_retention: crate::config::InputRetention::Keep,
        connections: Connections {
            redis_url: opts.redis_url.clone(),
            database_url: database_url.to_owned(),
            redis_ca_cert: opts.redis_ca_cert.clone(),
        },
        redis_streams: vec![input.to_owned()],
        consumer_group: crate::config::DEFAULT_CONSUMER_GROUP.into(),
        consumer_name: Some("bench".into()),
        batch_size: opts.batch_size,
        batch_timeout_ms: 100,
        workers: opts.workers,
        processing_timeout_ms: 60_000,
        max_retries: 3,
        lease_ttl_ms: 5_000,
        state_cache_keys: opts.state_cache_keys,
        max_entry_bytes: 1 << 20,
        analytics: AnalyticsSettings {
            term_updates_stream: term_updates.to_owned(),
            consumer_group_suffix: String::new(),
            analytics_batch_size: 500,
        },
        no_analytics: false,
        ops: crate::config::OpsSettings::default(),
    }
}

/// Waits until `total` input entries are acknowledged, then until the analytics consumer has
/// caught up (the outbox published, the group has acknowledged all of term_updates); returns
/// when. Fails if the service stops first.
#[allow(clippy::too_many_arguments)]
async fn drained(
    redis: &mut redis::aio::MultiplexedConnection,
    stats: &SyncStats,
    analytics_stats: &AnalyticsStats,
    service: &tokio::task::JoinHandle<anyhow::Result<()>>,
    total: u64,
    database_url: &str,
    term_updates: &str,
    progress: &mut impl FnMut(&str, u64, u64),
) -> anyhow::Result<Instant> {
    loop {
        let acked = stats.health.metrics.entries_acknowledged.get();
        progress("sync", acked, total);
        if acked >= total {
            break;
        }
        if service.is_finished() {
            anyhow::bail!("the sync service stopped before the input was drained");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let lag = analytics::lag(redis, term_updates, "analytics").await?;
        progress(
            "analytics",
            analytics_stats.health.metrics.analytics_entries.get(),
            analytics_stats.health.metrics.analytics_entries.get() + lag.undelivered + lag.pending,
        );
        if lag.caught_up() && store::measure::outbox_len(database_url).await? == 0 {
            break;
        }
        if service.is_finished() {
            anyhow::bail!("the service stopped before the analytics caught up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Instant::now())
}

async fn drop_everything(
    server: &str,
    database: &str,
    redis: &mut redis::aio::MultiplexedConnection,
    streams: &[&str],
) -> anyhow::Result<()> {
    store::measure::drop_database(server, database).await?;
    redis::cmd("DEL")
        .arg(streams)
        .query_async::<()>(redis)
        .await?;
    Ok(())
}
