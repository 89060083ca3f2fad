//! The analytics consumer: `term_updates` → triple_vault, triple_term, predicate_object,
//! subject_predicate, eventually consistent with the base tables (SPEC §2, §6).
//!
//! Each batch takes many term-update entries, de-duplicates their term ids, finds the triples
//! those terms belong to (as pro or counter term), recomputes only those triples' rows from the
//! vault table, and moves each triple's contribution between the pair aggregates it counts into:
//! the stored rows of those pairs are read, loaded into `domain::analytics::PairAggregate`s (the
//! fold's own primitive, exact in 512 bits), moved with remove/add and written back as absolute
//! values (`domain::analytics::recompute`). One transaction per batch, then XACK: a crash loses
//! nothing (the entries stay pending) and a redelivery recomputes the same rows.
//!
//! Failures (SPEC §4): a transient one is retried (`MAX_RETRIES`), then the consumer backs off
//! and restarts, acknowledging nothing, on **its own** circuit breaker (`health::Breaker::
//! Analytics`), which it waits out before trying again; sync's breaker never sees it.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use diesel_async::AsyncConnection;
use redis::AsyncCommands;
use tokio::sync::watch;

use crate::config::Connections;
use crate::domain::analytics::{recompute, touched_pairs};
use crate::domain::rows::TripleTermRow;
use crate::domain::TermId;
use crate::health::Breaker;
use crate::ingest::stream::{self, EntrySource, GroupReader, TERM_IDS_FIELD};
use crate::store;
use crate::store::analytics::{self as sql, AnalyticsWrite};
use crate::sync::with_retries;

/// Settings of the analytics consumer (SPEC §7).
#[derive(Debug, Clone, Args)]
pub struct AnalyticsSettings {
    /// Stream of changed term ids written by `sync`.
    #[arg(long, env = "TERM_UPDATES_STREAM", default_value = crate::config::DEFAULT_TERM_UPDATES_STREAM)]
    pub term_updates_stream: String,
    /// Suffix of the analytics consumer group: the group is `analytics<suffix>`.
    #[arg(long, env = "CONSUMER_GROUP_SUFFIX", default_value = "")]
    pub consumer_group_suffix: String,
    /// Most term-update entries per analytics batch (one transaction).
    #[arg(long, env = "ANALYTICS_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub analytics_batch_size: u32,
}

impl AnalyticsSettings {
    pub fn group(&self) -> String {
        format!("analytics{}", self.consumer_group_suffix)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.term_updates_stream.trim().is_empty() {
            return Err("TERM_UPDATES_STREAM: must not be empty".into());
        }
        if self.consumer_group_suffix.chars().any(char::is_whitespace) {
            return Err("CONSUMER_GROUP_SUFFIX: must not contain white space".into());
        }
        Ok(())
    }
}

/// Everything the consumer needs to run.
#[derive(Debug, Clone)]
pub struct AnalyticsRun {
    pub connections: Connections,
    pub settings: AnalyticsSettings,
    pub consumer: String,
    pub block: Duration,
    pub processing_timeout: Duration,
    pub max_retries: u32,
}

/// Counters of the running consumer.
#[derive(Debug, Default)]
pub struct AnalyticsStats {
    /// Metrics, circuit breaker and role, shared with sync and the HTTP server.
    pub health: Arc<crate::health::Health>,
    pub entries: AtomicU64,
    pub terms: AtomicU64,
    pub triples: AtomicU64,
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    pub restarts: AtomicU64,
    pub first_commit: Mutex<Option<Instant>>,
    pub last_commit: Mutex<Option<Instant>>,
}

/// Runs until `shutdown` resolves (finishing the batch in flight); restarts after failures.
pub async fn run(
    run: AnalyticsRun,
    stats: Arc<AnalyticsStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = crate::health::stop_flag(shutdown);
    let mut failures = 0u32;
    loop {
        // Our own breaker open: wait out its open period, then try once (half-open).
        let wait = stats.health.wait_of(Breaker::Analytics);
        if !wait.is_zero() {
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        match consume(&run, &stats, stop.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                failures += 1;
                let mut stop = stop.clone();
                if crate::health::back_off_on(
                    &stats.health,
                    Breaker::Analytics,
                    &stats.restarts,
                    failures,
                    &e,
                    "analytics consumer",
                    &mut stop,
                )
                .await
                {
                    return Ok(());
                }
            }
        }
    }
}

async fn consume(
    run: &AnalyticsRun,
    stats: &AnalyticsStats,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = store::pool(&run.connections.database_url, 1).await?;
    let group = run.settings.group();
    let conn = stream::connect(&run.connections.redis_url).await?;
    let acker = conn.clone();
    let mut reader = GroupReader::new(
        conn,
        vec![run.settings.term_updates_stream.clone()],
        group.clone(),
        run.consumer.clone(),
        &[TERM_IDS_FIELD],
    )
    .await?;
    reader.restart_history();
    let mut source = EntrySource::new(
        run.settings.analytics_batch_size as usize,
        run.block,
        run.processing_timeout,
    );
    tracing::info!(stream = %run.settings.term_updates_stream, group = %group, "analytics consuming");
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let entries = tokio::select! {
            r = source.next(&mut reader) => r?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        if entries.is_empty() {
            continue;
        }
        let mut terms = BTreeSet::new();
        for e in &entries {
            let text = e
                .payload
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            for id in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if id.len() == 66
                    && id.starts_with("0x")
                    && id[2..].bytes().all(|b| b.is_ascii_hexdigit())
                {
                    terms.insert(id.to_ascii_lowercase());
                } else {
                    tracing::warn!(entry_id = %e.id, term_id = id, "ignoring a malformed term id in term_updates");
                }
            }
        }
        let terms: Vec<String> = terms.into_iter().collect();
        let (triples, rows) = with_retries("analytics batch", run.max_retries, || {
            let (pool, terms) = (pool.clone(), &terms);
            async move {
                let mut conn = pool.get().await.context("taking a database connection")?;
                tokio::time::timeout(run.processing_timeout, apply(&mut conn, terms))
                    .await
                    .context("analytics batch timed out (PROCESSING_TIMEOUT_MS)")?
            }
        })
        .await?;
        let acks: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.stream.clone(), e.id.clone()))
            .collect();
        with_retries("acknowledge term updates", run.max_retries, || {
            let (mut c, acks, group) = (acker.clone(), &acks, &group);
            async move { stream::ack(&mut c, group, acks).await }
        })
        .await?;
        stats
            .entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        stats.terms.fetch_add(terms.len() as u64, Ordering::Relaxed);
        stats.triples.fetch_add(triples as u64, Ordering::Relaxed);
        stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.health.metrics.analytics_batches.inc();
        stats
            .health
            .metrics
            .analytics_rows_written
            .inc_by(rows as u64);
        stats.health.success_of(Breaker::Analytics);
        if let Ok(mut t) = stats.last_commit.lock() {
            *t = Some(Instant::now());
        }
        if let Ok(mut t) = stats.first_commit.lock() {
            t.get_or_insert_with(Instant::now);
        }
    }
}

/// One batch in one transaction: returns (triples recomputed, rows written).
async fn apply(
    conn: &mut diesel_async::AsyncPgConnection,
    terms: &[String],
) -> anyhow::Result<(usize, usize)> {
    conn.transaction(async |conn| {
        sql::lock(conn).await?;
        let triples = sql::affected_triples(conn, terms).await?;
        if triples.is_empty() {
            return Ok((0, 0));
        }
        let ids: Vec<String> = triples
            .iter()
            .flat_map(|t| [t.term_id.to_string(), t.counter_term_id.to_string()])
            .collect();
        let mut vaults: HashMap<TermId, Vec<_>> = HashMap::new();
        for (term, curve, figures) in sql::vault_figures(conn, &ids).await? {
            vaults.entry(term).or_default().push((curve, figures));
        }
        let pros: Vec<String> = triples.iter().map(|t| t.term_id.to_string()).collect();
        let stored: HashMap<TermId, TripleTermRow> = sql::triple_terms(conn, &pros)
            .await?
            .into_iter()
            .map(|r| (r.term_id, r))
            .collect();
        let (po_keys, sp_keys) = touched_pairs(&triples);
        let stored_po = sql::pair_rows(conn, sql::PREDICATE_OBJECT, &po_keys).await?;
        let stored_sp = sql::pair_rows(conn, sql::SUBJECT_PREDICATE, &sp_keys).await?;
        let r = recompute(&triples, &vaults, &stored, &stored_po, &stored_sp);
        let rows = r.triple_vaults.len()
            + r.triple_terms.len()
            + r.predicate_object.len()
            + r.subject_predicate.len();
        let write = AnalyticsWrite {
            triple_vaults: r.triple_vaults,
            triples: pros,
            triple_terms: r.triple_terms,
            predicate_object: r.predicate_object,
            subject_predicate: r.subject_predicate,
        };
        sql::write(conn, &write).await?;
        Ok((triples.len(), rows))
    })
    .await
}

/// How far a consumer group is behind on a stream.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Lag {
    /// Entries not yet delivered to the group.
    pub undelivered: u64,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Age of the oldest entry not yet acknowledged, in seconds (0 when caught up).
    pub seconds: f64,
}

impl Lag {
    pub fn caught_up(&self) -> bool {
        self.undelivered == 0 && self.pending == 0
    }
}

/// The lag of `group` on `stream` (missing stream or group: nothing to do, lag 0).
pub async fn lag(
    conn: &mut redis::aio::MultiplexedConnection,
    stream_name: &str,
    group: &str,
) -> anyhow::Result<Lag> {
    let info: redis::streams::StreamInfoGroupsReply = match conn.xinfo_groups(stream_name).await {
        Ok(i) => i,
        Err(e) if e.to_string().contains("no such key") => return Ok(Lag::default()),
        Err(e) => return Err(e).with_context(|| format!("reading groups of stream {stream_name}")),
    };
    let Some(g) = info.groups.into_iter().find(|g| g.name == group) else {
        return Ok(Lag::default());
    };
    let undelivered = g.lag.unwrap_or(0) as u64;
    let pending = g.pending as u64;
    // The oldest unacknowledged entry: the smallest pending id, else the first undelivered one.
    let oldest: Option<String> = if pending > 0 {
        let summary: redis::streams::StreamPendingReply = conn
            .xpending(stream_name, group)
            .await
            .context("XPENDING")?;
        match summary {
            redis::streams::StreamPendingReply::Data(d) => Some(d.start_id),
            _ => None,
        }
    } else if undelivered > 0 {
        let next: redis::streams::StreamRangeReply = conn
            .xrange_count(stream_name, format!("({}", g.last_delivered_id), "+", 1)
            .await
            .context("XRANGE")?;
        next.ids.first().map(|s| s.id.clone())
    } else {
        None
    };
    let seconds = oldest
        .and_then(|id| id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()))
        .map(|ms| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            now.saturating_sub(ms) as f64 / 1000.0
        })
        .unwrap_or(0.0);
    Ok(Lag {
        undelivered,
        pending,
        seconds,
    })
}
