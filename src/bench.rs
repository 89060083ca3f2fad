//! The `bench` subcommand's engine: what the service does with a fixture on this machine.
//!
//! - `fold`: decode + fold in memory (no I/O but reading the file).
//! - `sync`: a fresh database and fresh stream names, the fixture published, the full pipeline
//!   run until the input is drained, the raw `COPY` rate of the same event rows measured in the
//!   same run for comparison; everything created is dropped unless kept.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, TryStreamExt};
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
    let text = std::fs::read_to_string(fixture)
        .with_context(|| format!("reading {}", fixture.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let total = publish(&mut redis, &input, &lines, &opts.publish, |n| {
        progress("publish", n as u64, lines.len() as u64)
    })
    .await?;
    // The fixture is in Redis now: free it, and start the peak-memory count afresh so it measures
    // the service (Linux: writing 5 to clear_refs resets VmHWM).
    drop(lines);
    drop(text);
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let settings = SyncSettings {
        input_retention: crate::config::InputRetention::Keep,
        connections: Connections {
            redis_url: opts.redis_url.clone(),
            database_url: database_url.clone(),
            redis_ca_cert: opts.redis_ca_cert.clone(),
        },
        redis_streams: vec![input.clone()],
        consumer_group: crate::config::DEFAULT_CONSUMER_GROUP.into(),
        consumer_name: Some("bench".into()),
        batch_size: opts.batch_size,
        batch_timeout_ms: 100,
        workers: opts.workers,
        processing_timeout_ms: 60_000,
        max_retries: 3,
        lease_ttl_ms: 5_000,
        max_entry_bytes: 1 << 20,
        analytics: AnalyticsSettings {
            term_updates_stream: term_updates.clone(),
            consumer_group_suffix: String::new(),
            analytics_batch_size: 500,
        },
        no_analytics: false,
        ops: crate::config::OpsSettings::default(),
    };
    let stats = Arc::new(SyncStats::default());
    let analytics_stats = Arc::new(AnalyticsStats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(sync::service(
        settings,
        stats.clone(),
        analytics_stats.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let outcome = async {
        loop {
            let acked = stats.entries.load(Ordering::Relaxed);
            progress("sync", acked, total as u64);
            if acked >= total as u64 {
                break;
            }
            if service.is_finished() {
                anyhow::bail!("the sync service stopped before the input was drained");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then the analytics: caught up once the outbox is published and the group has acked all.
        loop {
            let lag = analytics::lag(&mut redis, &term_updates, "analytics").await?;
            progress(
                "analytics",
                analytics_stats.entries.load(Ordering::Relaxed),
                analytics_stats.entries.load(Ordering::Relaxed) + lag.undelivered + lag.pending,
            );
            if lag.caught_up() && outbox_empty(&database_url).await? {
                break;
            }
            if service.is_finished() {
                anyhow::bail!("the service stopped before the analytics caught up");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Instant::now())
    }
    .await;
    let _ = stop_tx.send(());
    service.await.context("sync task")??;
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

    let rows = row_counts(&database_url).await?;
    let (copy_rows, copy_seconds) = copy_rate(&database_url).await?;
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

const EVENT_TABLES: [&str; 6] = [
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
];

async fn outbox_empty(database_url: &str) -> anyhow::Result<bool> {
    let client = pg_client(database_url).await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM term_update_outbox", &[])
        .await?
        .get(0);
    Ok(n == 0)
}

async fn row_counts(database_url: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let client = pg_client(database_url).await?;
    let mut out = Vec::new();
    for t in EVENT_TABLES.iter().chain(&[
        "atom",
        "triple",
        "position",
        "vault",
        "term",
        "triple_vault",
        "triple_term",
        "predicate_object",
        "subject_predicate",
    ]) {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await?
            .get(0);
        out.push((t.to_string(), n));
    }
    Ok(out)
}

/// Copies every event-log row out (binary COPY, untimed) and into an empty copy of its table
/// with the same indexes (timed): the speed limit of writing these rows into this server.
async fn copy_rate(database_url: &str) -> anyhow::Result<(u64, f64)> {
    let client = pg_client(database_url).await?;
    // The DROP … IF EXISTS / CASCADE notices below are expected: keep them out of the output.
    client
        .batch_execute(
            "SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS copy_baseline",
        )
        .await?;
    let mut data = Vec::new();
    for t in EVENT_TABLES {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS copy_baseline.{t}; CREATE TABLE copy_baseline.{t} (LIKE public.{t} INCLUDING ALL)"))
            .await?;
        let out = client
            .copy_out(&format!("COPY public.{t} TO STDOUT (FORMAT binary)"))
            .await?;
        let chunks: Vec<bytes::Bytes> = out.try_collect().await?;
        data.push((t, chunks));
    }
    let mut rows = 0u64;
    let started = Instant::now();
    for (t, chunks) in data {
        let sink = client
            .copy_in(&format!(
                "COPY copy_baseline.{t} FROM STDIN (FORMAT binary)"
            ))
            .await?;
        futures_util::pin_mut!(sink);
        for c in chunks {
            sink.send(c).await?;
        }
        rows += sink.finish().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    client
        .batch_execute("DROP SCHEMA copy_baseline CASCADE")
        .await?;
    Ok((rows, seconds))
}

async fn pg_client(database_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    store::connect::client(database_url).await
}

async fn drop_everything(
    server: &str,
    database: &str,
    redis: &mut redis::aio::MultiplexedConnection,
    streams: &[&str],
) -> anyhow::Result<()> {
    let admin = pg_client(&store::connect::with_database(server, "postgres")).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await?;
    redis::cmd("DEL")
        .arg(streams)
        .query_async::<()>(redis)
        .await?;
    Ok(())
}
