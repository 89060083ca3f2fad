//! The `bench` subcommand's engine: what the service does with a fixture on this machine.
//!
//! - `fold`: decode + fold in memory (no I/O but reading the file).
//! - `sync`: a fresh database and fresh stream names, the fixture published, the full pipeline
//!   run until the input is drained, the raw `COPY` rate of the same event rows measured in the
//!   same run for comparison; everything created is dropped unless kept.
//! - `scale`: what a history's size costs (issue 14): sync it into a fresh database, start again
//!   on it (start → ready), apply a 16-block reorg at its head (notice → ready again), with the
//!   peak RSS of each phase.

use std::sync::atomic::Ordering;
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
use crate::sync::{self, SyncStats};

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
    pub analytics_batches: u64,
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
    let events = stats.events_new.load(Ordering::Relaxed);
    let analytics_rows = analytics_stats.rows.load(Ordering::Relaxed);
    let analytics_catch_up = caught_up.saturating_duration_since(last).as_secs_f64();
    let analytics_first = analytics_stats.first_commit.lock().ok().and_then(|t| *t);
    let analytics_busy = analytics_first
        .map(|f| caught_up.saturating_duration_since(f).as_secs_f64())
        .unwrap_or(0.0);

    let rows = store::measure::row_counts(&database_url).await?;
    let (copy_rows, copy_seconds) = store::measure::copy_rate(&database_url).await?;
    let report = SyncReport {
        database: name.clone(),
        stream: input.clone(),
        entries: total,
        events,
        duplicates: stats.events_duplicate.load(Ordering::Relaxed),
        seconds,
        events_per_second: events as f64 / seconds,
        batches: stats.batches.load(Ordering::Relaxed),
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
        analytics_batches: analytics_stats.batches.load(Ordering::Relaxed),
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

/// The depth of the reorg `scale` mode applies at the head of the history.
pub const SCALE_REORG_DEPTH: i64 = 16;

/// What `bench --mode scale` measures on one history: sync, restart, and a reorg at the head.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub database: String,
    pub stream: String,
    pub entries: usize,
    /// Events in the history (new events committed by the first run).
    pub events: u64,
    pub highest_block: i64,
    /// `highest_block - 15`: blocks `fork_block..=highest_block`, 16 of them, are orphaned.
    pub fork_block: i64,
    /// First read → last commit of the first run, and its events per second.
    pub sync_seconds: f64,
    pub events_per_second: f64,
    /// Peak RSS of the first run (from the service's start until input and analytics drained).
    pub sync_peak_memory_bytes: u64,
    /// RSS of the process when the second start began (the peak count is reset to it).
    pub restart_base_memory_bytes: u64,
    /// Second start on the same database and streams: spawn → `Role::Writer` (what `/ready`
    /// answers 200 for), and the peak RSS meanwhile.
    pub restart_ready_seconds: f64,
    pub restart_peak_memory_bytes: u64,
    /// XADD of the reorg notice → the writer had applied it (`SyncStats::reorgs` incremented;
    /// polled every 2 ms).
    pub reorg_applied_seconds: f64,
    /// XADD of the reorg notice → `Role::Writer` again (the state rebuilt, consuming).
    pub reorg_ready_seconds: f64,
    /// Peak RSS from the XADD until writer again (the count reset just before the XADD).
    pub reorg_peak_memory_bytes: u64,
    /// Events the reorg moved out of the event log.
    pub events_reorged: u64,
    /// Pipeline restarts after failures during the run (0 in a clean measurement).
    pub failure_restarts: u64,
}

/// The highest block number of a fixture's lines (the envelope's `block_number`, or else its
/// events'); `None` when no line carries one.
pub fn highest_block<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Head {
        block_number: Option<serde_json::Value>,
    }
    lines
        .into_iter()
        .filter_map(|line| {
            let top = serde_json::from_str::<Head>(line)
                .ok()
                .and_then(|h| h.block_number)
                .and_then(|b| b.as_i64());
            top.or_else(|| match decode_envelope(line.as_bytes()) {
                Ok(Envelope::Events { items, .. }) => items
                    .iter()
                    .filter_map(|i| i.as_ref().ok())
                    .map(|e| e.meta.block_number)
                    .max(),
                _ => None,
            })
        })
        .max()
}

/// The `fork_block` of a reorg of the newest `depth` blocks up to `highest` (SPEC §5: events at
/// or after `fork_block` are orphaned).
pub fn fork_block_at_head(highest: i64, depth: i64) -> i64 {
    highest - (depth.max(1) - 1)
}

/// The reorg notice of `fork_block` on rindexer's network (SPEC §5).
pub fn reorg_notice(fork_block: i64, depth: i64) -> String {
    serde_json::json!({
        "event_name": crate::ingest::decode::REORG_EVENT,
        "network": "intuition",
        "event_data": [{"type": "reorg", "network": "intuition", "fork_block": fork_block, "depth": depth}],
    })
    .to_string()
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
        let stats = Arc::new(SyncStats::default());
        let analytics = Arc::new(AnalyticsStats::default());
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sync::service(
            settings,
            stats.clone(),
            analytics.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        Self {
            stats,
            analytics,
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

fn reset_peak_memory() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    memory().1
}

/// `bench --mode scale` on one history: sync it into a fresh database (events/s, peak RSS),
/// stop, start again on the same database and streams (start → ready, peak RSS), then publish a
/// 16-block reorg at the head and time it until applied and until ready again.
pub async fn scale(
    fixture: &std::path::Path,
    opts: &SyncBenchOptions,
    mut progress: impl FnMut(&str, u64, u64),
) -> anyhow::Result<ScaleReport> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("rps_bench_{}", &id[..12]);
    let database_url = format!("{}/{name}", opts.postgres_server.trim_end_matches('/'));
    let input = format!("{name}:in");
    let term_updates = format!("{name}:term_updates");
    let mut redis = stream::connect(&opts.redis_url, opts.redis_ca_cert.as_deref()).await?;
    let (total, highest) =
        publish_fixture(&mut redis, &input, fixture, &opts.publish, &mut progress).await?;
    let highest = highest.with_context(|| format!("no block number in {}", fixture.display()))?;
    let fork_block = fork_block_at_head(highest, SCALE_REORG_DEPTH);
    let settings = bench_settings(opts, &database_url, &input, &term_updates);
    let outcome = async {
        // 1. Sync the history.
        reset_peak_memory();
        let first = Running::start(settings.clone());
        let drained = drained(
            &mut redis,
            &first.stats,
            &first.analytics,
            &first.task,
            total as u64,
            &database_url,
            &term_updates,
            &mut progress,
        )
        .await;
        let sync_peak = memory().0;
        let stats = first.stats.clone();
        first.stop().await?;
        drained?;
        let read = stats.first_read.lock().ok().and_then(|t| *t);
        let committed = stats.last_commit.lock().ok().and_then(|t| *t);
        let (read, committed) = read.zip(committed).context("nothing was committed")?;
        let sync_seconds = committed.duration_since(read).as_secs_f64();
        let events = stats.events_new.load(Ordering::Relaxed);
        let mut failures = stats.restarts.load(Ordering::Relaxed);

        // 2. Start again on the same database and streams.
        progress("restart", 0, 1);
        let base = reset_peak_memory();
        let started = Instant::now();
        let second = Running::start(settings.clone());
        second
            .until("it was ready", |s| s.health.writer_since().is_some())
            .await?;
        let ready = second
            .stats
            .health
            .writer_since()
            .unwrap_or_else(Instant::now);
        let restart_peak = memory().0;

        // 3. A 16-block reorg at the head.
        progress("reorg", 0, 1);
        reset_peak_memory();
        let notice = reorg_notice(fork_block, SCALE_REORG_DEPTH);
        let published = Instant::now();
        publish(
            &mut redis,
            &input,
            &[notice.as_str()],
            &PublishOptions::default(),
            |_| {},
        )
        .await?;
        second
            .until("the reorg was applied", |s| {
                s.reorgs.load(Ordering::Relaxed) >= 1
            })
            .await?;
        let applied = Instant::now();
        // The pipeline that applied the notice became writer before the XADD; the next one after.
        second
            .until("it was ready after the reorg", |s| {
                s.health.writer_since().is_some_and(|t| t > published)
            })
            .await?;
        let ready_again = second
            .stats
            .health
            .writer_since()
            .unwrap_or_else(Instant::now);
        let reorg_peak = memory().0;
        let events_reorged = second.stats.events_reorged.load(Ordering::Relaxed);
        failures += second.stats.restarts.load(Ordering::Relaxed);
        second.stop().await?;
        Ok::<_, anyhow::Error>(ScaleReport {
            database: name.clone(),
            stream: input.clone(),
            entries: total,
            events,
            highest_block: highest,
            fork_block,
            sync_seconds,
            events_per_second: events as f64 / sync_seconds,
            sync_peak_memory_bytes: sync_peak,
            restart_base_memory_bytes: base,
            restart_ready_seconds: ready.duration_since(started).as_secs_f64(),
            restart_peak_memory_bytes: restart_peak,
            reorg_applied_seconds: applied.duration_since(published).as_secs_f64(),
            reorg_ready_seconds: ready_again.duration_since(published).as_secs_f64(),
            reorg_peak_memory_bytes: reorg_peak,
            events_reorged,
            failure_restarts: failures,
        })
    }
    .await;
    if !opts.keep {
        drop_everything(
            &opts.postgres_server,
            &name,
            &mut redis,
            &[&input, &term_updates, &stream::dlq_stream(&input)],
        )
        .await?;
    }
    outcome
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
        state_cache_keys: 500_000,
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
        let acked = stats.entries.load(Ordering::Relaxed);
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
            analytics_stats.entries.load(Ordering::Relaxed),
            analytics_stats.entries.load(Ordering::Relaxed) + lag.undelivered + lag.pending,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_16_block_reorg_at_the_head_forks_15_blocks_below_the_highest() {
        let lines = [
            r#"{"block_number":1311,"event_name":"Deposited","event_data":[]}"#,
            r#"{"block_number":17928,"event_name":"AtomCreated","event_data":[]}"#,
            "",
            r#"{"block_number":9000,"event_name":"Redeemed","event_data":[]}"#,
        ];
        let highest = highest_block(lines).expect("a block");
        assert_eq!(highest, 17928);
        let fork = fork_block_at_head(highest, SCALE_REORG_DEPTH);
        assert_eq!(fork, 17913);
        assert_eq!((fork..=highest).count(), 16);
        assert_eq!(highest_block(["not json", "{}"]), None);
    }

    #[test]
    fn the_highest_block_of_the_recorded_fixture_and_its_notice_decode() {
        let text = include_str!("../tests/fixtures/small.jsonl");
        let highest = highest_block(text.lines()).expect("a block");
        let mut max = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(Envelope::Events { items, .. }) = decode_envelope(line.as_bytes()) {
                for e in items.into_iter().flatten() {
                    max = max.max(e.meta.block_number);
                }
            }
        }
        assert_eq!(
            highest, max,
            "the envelopes' block numbers are their events'"
        );
        let notice = reorg_notice(fork_block_at_head(highest, 16), 16);
        match decode_envelope(notice.as_bytes()).expect("a valid notice") {
            Envelope::Reorg(n) => {
                assert_eq!(n.fork_block, highest - 15);
                assert_eq!(n.network.as_deref(), Some("intuition"));
                assert_eq!(n.depth, Some(16));
            }
            Envelope::Events { .. } => panic!("decoded as events"),
        }
    }
}
