//! The `sync` service: Redis consumer group → fold → one Postgres transaction per batch → XACK.
//!
//! Two tasks joined by a one-slot channel, so Postgres commits batch N while batch N+1 is read,
//! decoded and folded:
//!
//! - the **reader** re-reads this consumer's pending entries, claims idle entries of dead
//!   consumers, then reads new ones; it decodes them and folds them into the sharded state,
//!   producing the rows the batch changes;
//! - the **writer** commits each batch (event log, changed rows, progress, outbox) in one
//!   transaction, then publishes the term updates, dead-letters bad input and acknowledges.
//!
//! A reorg notice (SPEC §5) cuts its batch: the reader sends the entries before it as a batch,
//! then the notice, and stops reading. The writer commits the batch, then applies the notice in
//! one transaction (`store::reorg`: orphaned events leave the event log, every derived table is
//! rebuilt), acknowledges it, and the pipeline restarts, so the in-memory state is rebuilt from
//! the event log without the orphaned events. Entries after the notice were never folded; still
//! pending, they are read again after the restart, so they apply after the reorg.
//!
//! **Architecture Invariant:** the in-memory state is a fold of the committed event log plus the
//! batches in flight. Any failure tears the pipeline down and rebuilds the state from Postgres, so
//! a batch that did not commit leaves no trace anywhere; its entries, never acknowledged, are read
//! again from the pending list.

pub mod shards;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use crate::config::SyncSettings;
use crate::domain::Event;
use crate::health::{Health, Role};
use crate::ingest::decode::{decode_envelope, Envelope, ReorgNotice};
use crate::ingest::stream::{self, DeadLetter, Entry, EntrySource, GroupReader};
use crate::metrics::EventLabels;
use crate::store::reorg::{ReorgOutcome, ReorgRequest};
use crate::store::{self, BatchWrite, Pool, StreamProgress};
use shards::Shards;

/// Counters of a running sync, for the bench, the tests and the metrics endpoint.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Metrics, circuit breaker and role, shared with the analytics task and the HTTP server.
    pub health: Arc<Health>,
    pub entries: AtomicU64,
    pub events_new: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_conflicting: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    /// Pipeline restarts after a failure.
    pub restarts: AtomicU64,
    /// Reorg notices applied.
    pub reorgs: AtomicU64,
    /// Events taken out of the event log by reorgs.
    pub events_reorged: AtomicU64,
    /// Commit time of every batch, in microseconds (bounded: the newest 100,000).
    pub commit_micros: Mutex<Vec<u64>>,
    /// When the first entries were read, and when the last batch committed.
    pub first_read: Mutex<Option<Instant>>,
    pub last_commit: Mutex<Option<Instant>>,
}

impl SyncStats {
    fn record_commit(&self, d: Duration) {
        if let Ok(mut v) = self.commit_micros.lock() {
            if v.len() >= 100_000 {
                v.drain(..50_000);
            }
            v.push(d.as_micros() as u64);
        }
        if let Ok(mut t) = self.last_commit.lock() {
            *t = Some(Instant::now());
        }
    }

    fn record_read(&self) {
        if let Ok(mut t) = self.first_read.lock() {
            t.get_or_insert_with(Instant::now);
        }
    }
}

/// The whole service: migrations, then `sync` and (unless `no_analytics`) the analytics consumer
/// side by side, until `shutdown` resolves; both finish their batch in flight.
pub async fn service(
    settings: SyncSettings,
    stats: Arc<SyncStats>,
    analytics_stats: Arc<crate::analytics::AnalyticsStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let url = &settings.connections.database_url;
    store::create_database_if_missing(url).await?;
    store::migrate(url).await?;
    let stop_rx = crate::health::stop_flag(shutdown);
    let stopped = crate::health::stopped;
    let analytics = (!settings.no_analytics).then(|| {
        let run = settings.analytics_run(&format!("analytics-{}", uuid::Uuid::new_v4()));
        tokio::spawn(crate::analytics::run(
            run,
            analytics_stats,
            stopped(stop_rx.clone()),
        ))
    });
    let synced = run(settings, stats, stopped(stop_rx)).await;
    let analysed = match analytics {
        Some(task) => task.await.context("the analytics task panicked")?,
        None => Ok(()),
    };
    synced.and(analysed)
}

/// Runs the base sync until `shutdown` resolves; the batch in flight then commits (or is abandoned
/// before its transaction) and `run` returns. A failure restarts the pipeline after a backoff.
pub async fn run(
    settings: SyncSettings,
    stats: Arc<SyncStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let consumer = settings.consumer();
    let stop = crate::health::stop_flag(shutdown);
    let mut failures = 0u32;
    loop {
        // An open breaker: wait out its open period (SPEC §4), then try once (half-open).
        let wait = stats.health.breaker_wait();
        if !wait.is_zero() {
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        let result = pipeline(&settings, &consumer, &stats, stop.clone()).await;
        stats.health.set_role(Role::Starting);
        match result {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Reorged) => {
                failures = 0;
                if *stop.borrow() {
                    return Ok(());
                }
                tracing::info!("rebuilding the in-memory state after a reorg");
            }
            Err(e) if fenced(&e) => {
                // Not a failure of Postgres or Redis: another process writes now. Back to standby.
                tracing::warn!(
                    error = format!("{e:#}"),
                    "lost the writer lease; standing by"
                );
            }
            Err(e) => {
                failures += 1;
                let mut stop = stop.clone();
                if crate::health::back_off(
                    &stats.health,
                    &stats.restarts,
                    failures,
                    &e,
                    "sync pipeline (state rebuilt from Postgres)",
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

/// Why a pipeline ended without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Shutdown was requested.
    Stopped,
    /// A reorg was applied: the in-memory state must be rebuilt from the event log.
    Reorged,
}

/// What the reader hands the writer, in stream order.
#[derive(Debug)]
enum Work {
    Batch(Prepared),
    Reorg(ReorgWork),
}

/// A reorg notice and the entry that carried it.
#[derive(Debug)]
struct ReorgWork {
    stream: String,
    entry_id: String,
    notice: ReorgNotice,
}

/// A batch ready to commit.
#[derive(Debug)]
struct Prepared {
    write: BatchWrite,
    dead_letters: Vec<DeadLetter>,
    acks: Vec<(String, String)>,
    entries: usize,
    new_events: usize,
    new_by_type: Vec<(String, u64)>,
    duplicates: usize,
    conflicts: usize,
    read_at: Instant,
}

async fn pipeline(
    settings: &SyncSettings,
    consumer: &str,
    stats: &Arc<SyncStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    let url = &settings.connections.database_url;
    store::create_database_if_missing(url).await?;
    let applied = store::migrate(url).await?;
    if !applied.is_empty() {
        tracing::info!(migrations = ?applied, "applied migrations");
    }
    let pool = store::pool(url, 3).await?;
    // One writer per group: wait as a standby until the lease is ours, then rebuild the state
    // from Postgres before writing anything (the previous holder may have committed more).
    let Some(lease) = standby_until_leased(&pool, settings, consumer, stats, &mut stop).await?
    else {
        return Ok(Ended::Stopped);
    };
    let (lost_tx, mut lost) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat(
        pool.clone(),
        lease.clone(),
        settings.lease_ttl(),
        lost_tx,
    ));
    let started = Instant::now();
    let mut shards = Shards::new(settings.workers as usize);
    {
        let mut conn = pool.get().await.context("taking a database connection")?;
        let events = store::load::load_events(&mut conn, None).await?;
        let n = events.len();
        tokio::task::block_in_place(|| shards.fold(events));
        tracing::info!(
            events = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state rebuilt from the event log"
        );
    }
    let mut redis_out = stream::connect(&settings.connections.redis_url).await?;
    republish_outbox(
        &pool,
        &mut redis_out,
        &settings.analytics.term_updates_stream,
    )
    .await?;

    let reader_conn = stream::connect(&settings.connections.redis_url).await?;
    let mut reader = GroupReader::new(
        reader_conn,
        settings.redis_streams.clone(),
        settings.consumer_group.clone(),
        consumer.to_owned(),
        stream::PAYLOAD_FIELDS,
    )
    .await?;
    reader.restart_history();
    stats.health.set_role(Role::Writer);
    tracing::info!(streams = %settings.redis_streams.join(","), group = %settings.consumer_group, consumer, "consuming");

    let (tx, rx) = mpsc::channel::<Work>(1);
    let writer = tokio::spawn(writer(
        pool.clone(),
        redis_out,
        settings.clone(),
        stats.clone(),
        rx,
        lease.clone(),
    ));
    let mut source = EntrySource::new(
        settings.batch_size as usize,
        settings.batch_timeout(),
        settings.processing_timeout(),
    );
    let read_result: anyhow::Result<Ended> = loop {
        if *stop.borrow() {
            break Ok(Ended::Stopped);
        }
        let entries = tokio::select! {
            r = source.next(&mut reader) => match r { Ok(e) => e, Err(e) => break Err(e) },
            _ = stop.wait_for(|s| *s) => break Ok(Ended::Stopped),
            _ = lost.wait_for(|l| *l) => break Err(store::lease::Fenced { group: lease.group.clone(), token: lease.token }.into()),
        };
        if entries.is_empty() {
            continue;
        }
        stats.record_read();
        let prepare_started = Instant::now();
        let (prepared, reorg) = tokio::task::block_in_place(|| {
            prepare(
                &mut shards,
                entries,
                settings.workers as usize,
                prepare_started,
                settings.max_entry_bytes as usize,
            )
        });
        tracing::trace!(
            micros = prepare_started.elapsed().as_micros() as u64,
            "prepared batch"
        );
        if let Some(prepared) = prepared {
            if tx.send(Work::Batch(prepared)).await.is_err() {
                break Ok(Ended::Stopped); // the writer stopped: its result says why
            }
        }
        if let Some(reorg) = reorg {
            // Nothing more is read or folded on the state from before the reorg: the pipeline
            // restarts once the writer has applied it.
            if tx.send(Work::Reorg(reorg)).await.is_err() {
                break Ok(Ended::Stopped);
            }
            break Ok(Ended::Reorged);
        }
    };
    drop(tx);
    let write_result = writer.await.context("the writer task panicked")?;
    heartbeat.abort();
    let result = write_result.and(read_result);
    if matches!(result, Ok(Ended::Stopped)) {
        // A graceful stop hands the lease over at once.
        if let Ok(mut conn) = pool.get().await {
            let _ = store::lease::release(&mut conn, &lease).await;
        }
    }
    result
}

/// Waits, as a standby, until this process holds the writer lease of its group. `None` when
/// stopped first.
async fn standby_until_leased(
    pool: &Pool,
    settings: &SyncSettings,
    consumer: &str,
    stats: &SyncStats,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<store::lease::Lease>> {
    let ttl = settings.lease_ttl();
    let mut announced = false;
    loop {
        let mut conn = pool.get().await.context("taking a database connection")?;
        if let Some(lease) =
            store::lease::acquire(&mut conn, &settings.consumer_group, consumer, ttl).await?
        {
            tracing::info!(group = %lease.group, token = lease.token, "holding the writer lease");
            return Ok(Some(lease));
        }
        if !announced {
            let holder = store::lease::current(&mut conn, &settings.consumer_group).await?;
            tracing::info!(group = %settings.consumer_group, holder = ?holder.map(|h| h.holder), "standby: another process holds the writer lease");
            stats.health.set_role(Role::Standby);
            announced = true;
        }
        drop(conn);
        tokio::select! {
            _ = tokio::time::sleep((ttl / 10).max(Duration::from_millis(100))) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
}

/// Keeps the lease alive; sets `lost` when another process has taken it over.
async fn heartbeat(
    pool: Pool,
    lease: store::lease::Lease,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(ttl / 5).await;
        let renewed = match pool.get().await {
            Ok(mut conn) => store::lease::renew(&mut conn, &lease).await,
            Err(e) => Err(anyhow::Error::new(e).context("taking a database connection")),
        };
        if let Err(e) = renewed {
            if e.downcast_ref::<store::lease::Fenced>().is_some() {
                let _ = lost.send(true);
                return;
            }
            // Unreachable database: batches cannot commit either; the lease may expire and the
            // next commit will then be fenced.
            tracing::warn!(error = format!("{e:#}"), "cannot renew the writer lease");
        }
    }
}

/// Decodes and folds a batch of entries into the rows it writes. A reorg notice cuts the batch:
/// the entries before it are the batch, the notice is returned beside it, and the entries after
/// it are left out (not acknowledged, so read again once the reorg is applied).
fn prepare(
    shards: &mut Shards,
    entries: Vec<Entry>,
    workers: usize,
    read_at: Instant,
    max_entry_bytes: usize,
) -> (Option<Prepared>, Option<ReorgWork>) {
    let mut events: Vec<Event> = Vec::with_capacity(entries.len() * 4);
    let mut dead_letters = Vec::new();
    let mut progress: Vec<StreamProgress> = Vec::new();
    let mut acks = Vec::with_capacity(entries.len());
    let mut reorg = None;
    for (entry, decoded) in decode_all(&entries, workers, max_entry_bytes) {
        match decoded {
            Decoded::Events(mut e, mut letters) => {
                events.append(&mut e);
                dead_letters.append(&mut letters);
            }
            Decoded::Dead(letter) => dead_letters.push(letter),
            Decoded::Reorg(notice) => {
                reorg = Some(ReorgWork {
                    stream: entry.stream.clone(),
                    entry_id: entry.id.clone(),
                    notice,
                });
                break;
            }
        }
        match progress.iter_mut().find(|p| p.stream == entry.stream) {
            Some(p) => {
                if stream_id_key(&entry.id) > stream_id_key(&p.last_entry_id) {
                    p.last_entry_id = entry.id.clone();
                }
                p.entries += 1;
            }
            None => progress.push(StreamProgress {
                stream: entry.stream.clone(),
                last_entry_id: entry.id.clone(),
                entries: 1,
            }),
        }
        acks.push((entry.stream.clone(), entry.id.clone()));
    }
    let n = acks.len();
    if n == 0 {
        return (None, reorg);
    }
    let folded = shards.fold(events);
    let prepared = Prepared {
        write: BatchWrite {
            rows: folded.rows,
            progress,
            term_updates: folded.changed_terms,
        },
        dead_letters,
        acks,
        entries: n,
        new_events: folded.new_events,
        new_by_type: folded.new_by_type,
        read_at,
        duplicates: folded.duplicates,
        conflicts: folded.conflicts,
    };
    (Some(prepared), reorg)
}

enum Decoded {
    Events(Vec<Event>, Vec<DeadLetter>),
    Dead(DeadLetter),
    Reorg(ReorgNotice),
}

/// Decodes entries, in parallel when there are several workers.
fn decode_all(entries: &[Entry], workers: usize, max_entry_bytes: usize) -> Vec<(&Entry, Decoded)> {
    if workers <= 1 || entries.len() < 64 {
        return entries
            .iter()
            .map(|e| (e, decode_entry(e, max_entry_bytes)))
            .collect();
    }
    let chunk = entries.len().div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|e| (e, decode_entry(e, max_entry_bytes)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn decode_entry(entry: &Entry, max_entry_bytes: usize) -> Decoded {
    let dead = |payload: &[u8], error: String| DeadLetter {
        source_stream: entry.stream.clone(),
        source_id: entry.id.clone(),
        payload: payload.to_vec(),
        error,
    };
    let Some(payload) = &entry.payload else {
        return Decoded::Dead(dead(
            b"",
            format!("entry has no {} field", stream::PAYLOAD_FIELDS.join(", ")),
        ));
    };
    if payload.len() > max_entry_bytes {
        return Decoded::Dead(dead(
            payload,
            format!(
                "entry of {} bytes exceeds MAX_ENTRY_BYTES ({max_entry_bytes})",
                payload.len()
            ),
        ));
    }
    match decode_envelope(payload) {
        Err(e) => Decoded::Dead(dead(payload, e.to_string())),
        Ok(Envelope::Reorg(notice)) => Decoded::Reorg(notice),
        Ok(Envelope::Events { items, .. }) => {
            let mut events = Vec::with_capacity(items.len());
            let mut letters = Vec::new();
            for item in items {
                match item {
                    Ok(e) => events.push(e),
                    Err(bad) => letters.push(dead(
                        &single_item_envelope(payload, &bad.item),
                        bad.to_string(),
                    )),
                }
            }
            Decoded::Events(events, letters)
        }
    }
}

/// The envelope with `event_data` holding only `item` (how a bad item is dead-lettered).
fn single_item_envelope(payload: &[u8], item: &serde_json::Value) -> Vec<u8> {
    let mut envelope: serde_json::Value =
        serde_json::from_slice(payload).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(obj) = envelope.as_object_mut() {
        obj.insert(
            "event_data".into(),
            serde_json::Value::Array(vec![item.clone()]),
        );
    }
    envelope.to_string().into_bytes()
}

/// `ms-seq` as numbers, for comparing stream ids.
fn stream_id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

async fn writer(
    pool: Pool,
    redis: MultiplexedConnection,
    settings: SyncSettings,
    stats: Arc<SyncStats>,
    mut rx: mpsc::Receiver<Work>,
    lease: store::lease::Lease,
) -> anyhow::Result<()> {
    while let Some(work) = rx.recv().await {
        match work {
            Work::Batch(p) => write_batch(&pool, &redis, &settings, &stats, p, &lease).await?,
            Work::Reorg(r) => apply_reorg(&pool, &redis, &settings, &stats, r, &lease).await?,
        }
    }
    Ok(())
}

/// Commits a batch, publishes its term updates, dead-letters its bad input, acknowledges it.
async fn write_batch(
    pool: &Pool,
    redis: &MultiplexedConnection,
    settings: &SyncSettings,
    stats: &SyncStats,
    p: Prepared,
    lease: &store::lease::Lease,
) -> anyhow::Result<()> {
    let group = settings.consumer_group.as_str();
    let term_stream = settings.analytics.term_updates_stream.as_str();
    let retries = settings.max_retries;
    let timeout = settings.processing_timeout();
    let started = Instant::now();
    let write = &p.write;
    let outbox = with_retries("commit batch", retries, || {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.context("taking a database connection")?;
            tokio::time::timeout(timeout, store::commit(&mut conn, group, write, lease))
                .await
                .context("batch commit timed out (PROCESSING_TIMEOUT_MS)")?
        }
    })
    .await?;
    let commit_time = started.elapsed();
    stats.record_commit(commit_time);
    stats.health.record_success();
    if let Some(id) = outbox {
        with_retries("publish term updates", retries, || {
            let mut redis = redis.clone();
            async move {
                stream::publish_term_updates(&mut redis, term_stream, &write.term_updates).await
            }
        })
        .await?;
        let mut conn = pool.get().await.context("taking a database connection")?;
        store::published(&mut conn, id).await?;
    }
    if !p.dead_letters.is_empty() {
        for l in &p.dead_letters {
            tracing::warn!(stream = %l.source_stream, entry_id = %l.source_id, error = %l.error, "dead-lettered bad input");
        }
        let letters = &p.dead_letters;
        with_retries("dead-letter", retries, || {
            let mut redis = redis.clone();
            async move { stream::dead_letter(&mut redis, letters).await }
        })
        .await?;
    }
    let acks = &p.acks;
    with_retries("acknowledge", retries, || {
        let mut redis = redis.clone();
        async move { stream::ack(&mut redis, group, acks).await }
    })
    .await?;
    stats.entries.fetch_add(p.entries as u64, Ordering::Relaxed);
    stats
        .events_new
        .fetch_add(p.new_events as u64, Ordering::Relaxed);
    stats
        .events_duplicate
        .fetch_add(p.duplicates as u64, Ordering::Relaxed);
    stats
        .events_conflicting
        .fetch_add(p.conflicts as u64, Ordering::Relaxed);
    stats
        .dead_lettered
        .fetch_add(p.dead_letters.len() as u64, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    let m = &stats.health.metrics;
    for (event_type, n) in &p.new_by_type {
        m.events_processed
            .get_or_create(&EventLabels {
                event_type: event_type.clone(),
            })
            .inc_by(*n);
    }
    for l in &p.dead_letters {
        m.events_failed
            .get_or_create(&EventLabels {
                event_type: event_type_of(&l.payload),
            })
            .inc();
    }
    m.dead_lettered_events.inc_by(p.dead_letters.len() as u64);
    m.events_duplicate.inc_by(p.duplicates as u64);
    m.events_conflicting.inc_by(p.conflicts as u64);
    m.database_write_duration_seconds
        .observe(commit_time.as_secs_f64());
    m.batch_size_entries.observe(p.entries as f64);
    m.batch_size_events
        .observe((p.new_events + p.duplicates + p.conflicts) as f64);
    m.event_processing_duration_seconds
        .observe(p.read_at.elapsed().as_secs_f64());
    tracing::debug!(
        entries = p.entries,
        new_events = p.new_events,
        commit_ms = started.elapsed().as_millis() as u64,
        "batch committed"
    );
    Ok(())
}

/// Applies a reorg notice (every earlier entry of its stream is committed by now), then
/// acknowledges it. No processing timeout: the rebuild's work grows with the whole event log,
/// not with a batch.
async fn apply_reorg(
    pool: &Pool,
    redis: &MultiplexedConnection,
    settings: &SyncSettings,
    stats: &SyncStats,
    r: ReorgWork,
    lease: &store::lease::Lease,
) -> anyhow::Result<()> {
    let group = settings.consumer_group.as_str();
    let retries = settings.max_retries;
    let started = Instant::now();
    tracing::warn!(
        stream = %r.stream,
        entry_id = %r.entry_id,
        network = r.notice.network.as_deref().unwrap_or("(every network)"),
        fork_block = r.notice.fork_block,
        depth = r.notice.depth,
        "reorg notice: rolling back the event log"
    );
    let request = ReorgRequest {
        group,
        stream: &r.stream,
        entry_id: &r.entry_id,
        notice: &r.notice,
        lease: Some(lease),
    };
    let outcome = with_retries("apply reorg", retries, || {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.context("taking a database connection")?;
            store::reorg::apply(&mut conn, request, &mut |_| {}).await
        }
    })
    .await
    .with_context(|| format!("reorg notice {} of stream {}", r.entry_id, r.stream))?;
    let acks = [(r.stream.clone(), r.entry_id.clone())];
    with_retries("acknowledge", retries, || {
        let mut redis = redis.clone();
        let acks = &acks;
        async move { stream::ack(&mut redis, group, acks).await }
    })
    .await?;
    stats.entries.fetch_add(1, Ordering::Relaxed);
    match &outcome {
        ReorgOutcome::AlreadyApplied => tracing::info!(
            stream = %r.stream,
            entry_id = %r.entry_id,
            "reorg notice was applied before (redelivered): nothing to do"
        ),
        ReorgOutcome::Applied {
            reorg_id,
            moved,
            rebuilt,
        } => {
            let events_moved = outcome.events_moved();
            stats.reorgs.fetch_add(1, Ordering::Relaxed);
            stats.health.metrics.reorgs.inc();
            stats
                .events_reorged
                .fetch_add(events_moved as u64, Ordering::Relaxed);
            tracing::warn!(
                reorg_id,
                network = r.notice.network.as_deref().unwrap_or("(every network)"),
                fork_block = r.notice.fork_block,
                events_moved,
                per_table = ?moved.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>(),
                events_left = rebuilt.as_ref().map(|b| b.events),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reorg applied: orphaned events moved to reorged_events, derived tables rebuilt"
            );
        }
    }
    Ok(())
}

/// The event name of a dead-lettered payload, for the failure metric ("unknown" when unreadable).
fn event_type_of(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("event_name")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whether `e` says this process lost the writer lease (never worth a retry).
fn fenced(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<store::lease::Fenced>().is_some())
}

/// Runs `op` until it succeeds, at most `retries` more times, with exponential backoff.
pub async fn with_retries<T, F, Fut>(what: &str, retries: u32, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < retries && !fenced(&e) => {
                attempt += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
                tracing::warn!(
                    operation = what,
                    attempt,
                    error = format!("{e:#}"),
                    "retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                return Err(e.context(format!("{what} failed after {} attempts", attempt + 1)))
            }
        }
    }
}

/// Publishes term updates committed before a crash but never published.
async fn republish_outbox(
    pool: &Pool,
    redis: &mut MultiplexedConnection,
    stream_name: &str,
) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("taking a database connection")?;
    for row in store::unpublished(&mut conn).await? {
        stream::publish_term_updates(redis, stream_name, &row.term_ids).await?;
        store::published(&mut conn, row.id).await?;
        tracing::info!(
            outbox_id = row.id,
            terms = row.term_ids.len(),
            "republished term updates left by an earlier run"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, payload: &str) -> Entry {
        Entry {
            stream: "in".to_owned(),
            id: id.to_owned(),
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_reorg_notice_cuts_its_batch() {
        let lines: Vec<&str> = include_str!("../../tests/fixtures/small.jsonl")
            .lines()
            .take(3)
            .collect();
        let notice = r#"{"event_name":"__rindexer_reorg","network":"intuition","event_data":[{"type":"reorg","network":"intuition","fork_block":"0x51f","depth":3}]}"#;
        let entries = vec![
            entry("1-0", lines[0]),
            entry("2-0", "not json"),
            entry("3-0", notice),
            entry("4-0", lines[1]),
            entry("5-0", notice),
        ];
        let mut shards = Shards::new(2);
        let (batch, reorg) = prepare(&mut shards, entries, 2, Instant::now(), 1 << 20);
        let batch = batch.expect("the entries before the notice");
        assert_eq!(
            batch.acks,
            [
                ("in".to_owned(), "1-0".to_owned()),
                ("in".to_owned(), "2-0".to_owned())
            ],
            "only entries before the notice are acknowledged with the batch"
        );
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(batch.write.progress[0].last_entry_id, "2-0");
        let reorg = reorg.expect("the notice");
        assert_eq!(
            (reorg.stream.as_str(), reorg.entry_id.as_str()),
            ("in", "3-0")
        );
        assert_eq!(reorg.notice.fork_block, 0x51f);
        let events_before = events_of(lines[0]);
        assert_eq!(
            shards.event_count(),
            events_before,
            "entry 4-0 was not folded"
        );

        let (batch, reorg) = prepare(
            &mut Shards::new(1),
            vec![entry("6-0", notice)],
            1,
            Instant::now(),
            1 << 20,
        );
        assert!(batch.is_none(), "nothing before the notice: no batch");
        assert_eq!(reorg.map(|r| r.entry_id), Some("6-0".to_owned()));
    }

    fn events_of(line: &str) -> usize {
        match decode_envelope(line.as_bytes()) {
            Ok(Envelope::Events { items, .. }) => items.iter().filter(|i| i.is_ok()).count(),
            other => panic!("not events: {other:?}"),
        }
    }
}
