//! The `sync` service: Redis consumer group → fold → one Postgres transaction per batch → XACK.
//!
//! Two tasks joined by a one-slot channel, so Postgres commits batch N while batch N+1 is read,
//! decoded and folded:
//!
//! - the **reader** re-reads this consumer's pending entries, claims idle entries of dead
//!   consumers, then reads new ones; it decodes them, loads from Postgres the stored rows and
//!   events the batch reads that the state cache lacks, and folds them into the sharded state,
//!   producing the rows the batch changes;
//! - the **writer** commits each batch (event log, changed rows, progress, outbox) in one
//!   transaction, then publishes the term updates, dead-letters bad input and acknowledges.
//!
//! A reorg notice (SPEC §5) cuts its batch: the reader sends the entries before it as a batch,
//! then the notice, and stops reading. The writer commits the batch, then applies the notice in
//! one transaction (`store::reorg`: orphaned events leave the event log, the rows they touched are
//! recomputed), acknowledges it, and the pipeline restarts with an empty cache. Entries after the
//! notice were never folded; still pending, they are read again after the restart, so they apply
//! after the reorg.
//!
//! **Architecture Invariant:** the in-memory state is a cache of the fold of the committed event
//! log plus the batches in flight (`shards`). Any failure tears the pipeline down and starts again
//! with an empty cache, so a batch that did not commit leaves no trace anywhere; its entries,
//! never acknowledged, are read again from the pending list. A start costs no more than the first
//! batch: nothing is read that no batch needs.
//!
//! **Architecture Invariant:** no input stops a stream. What the decoder refuses is dead-lettered
//! with the batch; what PostgreSQL refuses is isolated by the writer and dead-lettered, and the
//! rest commits (`writer`); only transient failures are retried and open the breaker.
//!
//! Modules: `prepare` (entries → a batch: decode, dead letters, fold, cuts), `writer` (commit,
//! publish, acknowledge, reorgs), `shards` (the sharded fold); this file holds the supervisor,
//! the pipeline that joins reader and writer, and the writer lease's standby and heartbeat. The
//! retry helper is `store::failure::with_retries`, shared with the analytics consumer.

pub mod prepare;
pub mod shards;
pub mod writer;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use crate::config::SyncSettings;
use crate::health::{Health, Role};
use crate::ingest::stream::{self, EntrySource, GroupReader};
use crate::store::{self, failure, Pool};
use prepare::{prepare, Quarantine};
use shards::Shards;
use writer::{RejectedBatch, Work, Writer};

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
    let applied = store::migrate(url).await?;
    if !applied.is_empty() {
        tracing::info!(migrations = ?applied, "applied migrations");
    }
    check_redis(&settings.connections).await?;
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

/// Connects to Redis once at start: a TLS certificate that does not verify stops the process
/// (a setting to fix); Redis being down does not (the pipeline retries).
pub async fn check_redis(connections: &crate::config::Connections) -> anyhow::Result<()> {
    match stream::connect(&connections.redis_url, connections.redis_ca_cert()).await {
        Ok(_) => Ok(()),
        Err(e) if e.is::<crate::config::SettingError>() => Err(e),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "Redis is not reachable yet; retrying"
            );
            Ok(())
        }
    }
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
    let quarantine = Arc::new(Mutex::new(Quarantine::default()));
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
        let result = pipeline(&settings, &consumer, &stats, &quarantine, stop.clone()).await;
        stats.health.set_role(Role::Starting);
        match result {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Reorged) => {
                failures = 0;
                if *stop.borrow() {
                    return Ok(());
                }
                tracing::info!("restarting the pipeline with an empty cache after a reorg");
            }
            Err(e) if e.downcast_ref::<RejectedBatch>().is_some() => {
                // Not a failure of Postgres or Redis: the data. No back-off, no breaker: the
                // entries are retried one by one on a fresh pipeline (empty cache).
                if let (Some(r), Ok(mut q)) = (e.downcast_ref::<RejectedBatch>(), quarantine.lock())
                {
                    q.refused(&r.entries, &r.reason);
                }
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                stats.health.metrics.pipeline_restarts.inc();
                tracing::error!(
                    error = format!("{e:#}"),
                    "PostgreSQL refused rows derived from the batch; retrying its entries one by one"
                );
            }
            Err(e) if failure::fenced(&e) => {
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
                    "sync pipeline (restarted on the stored rows)",
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
    /// A reorg was applied: the cached state must be dropped (the stored rows changed under it).
    Reorged,
}

async fn pipeline(
    settings: &SyncSettings,
    consumer: &str,
    stats: &Arc<SyncStats>,
    quarantine: &Arc<Mutex<Quarantine>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    // The schema was migrated once, at process start (`service`).
    let pool = store::pool(&settings.connections.database_url, 3).await?;
    // One writer per group: wait as a standby until the lease is ours. The cache starts empty, so
    // whatever the previous holder committed is read from Postgres by the batches that need it.
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
    // The state starts empty: each batch loads the stored rows it needs (`shards`). Only base
    // rows written before those rows kept the fold's continuation need one rebuild first.
    upgrade_base_rows(&pool, &lease).await?;
    let mut shards = Shards::new(
        settings.workers as usize,
        settings.state_cache_keys as usize,
    );
    let committed = Arc::new(AtomicU64::new(0));
    let mut redis_out = stream::connect(
        &settings.connections.redis_url,
        settings.connections.redis_ca_cert(),
    )
    .await?;
    republish_outbox(
        &pool,
        &mut redis_out,
        &settings.analytics.term_updates_stream,
    )
    .await?;

    let reader_conn = stream::connect(
        &settings.connections.redis_url,
        settings.connections.redis_ca_cert(),
    )
    .await?;
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
    let (forget_tx, mut forget) = mpsc::unbounded_channel();
    let writer = tokio::spawn(
        Writer {
            pool: pool.clone(),
            redis: redis_out,
            settings: settings.clone(),
            stats: stats.clone(),
            lease: lease.clone(),
            committed: committed.clone(),
            forget: forget_tx,
            quarantine: quarantine.clone(),
        }
        .run(rx),
    );
    let mut source = EntrySource::new(
        settings.batch_size as usize,
        settings.batch_timeout(),
        settings.processing_timeout(),
    );
    // Entries read but left for the next batch (after a suspect's batch of its own).
    let mut carried = Vec::new();
    let read_result: anyhow::Result<Ended> = loop {
        if *stop.borrow() {
            break Ok(Ended::Stopped);
        }
        let entries = if carried.is_empty() {
            tokio::select! {
                r = source.next(&mut reader) => match r { Ok(e) => e, Err(e) => break Err(e) },
                _ = stop.wait_for(|s| *s) => break Ok(Ended::Stopped),
                _ = lost.wait_for(|l| *l) => break Err(store::lease::Fenced { group: lease.group.clone(), token: lease.token }.into()),
            }
        } else {
            std::mem::take(&mut carried)
        };
        if entries.is_empty() {
            continue;
        }
        stats.record_read();
        // Identities of events PostgreSQL refused: not part of the state.
        while let Ok(ids) = forget.try_recv() {
            for (tx_hash, log_index) in ids {
                shards.forget(&tx_hash, log_index);
            }
        }
        let evicted = shards.release(committed.load(Ordering::Acquire));
        let metrics = &stats.health.metrics;
        metrics.state_cache_evicted_keys.inc_by(evicted as u64);
        let snapshot = quarantine.lock().map(|q| q.clone()).unwrap_or_default();
        let prepare_started = Instant::now();
        let runtime = tokio::runtime::Handle::current();
        let mut load = |needs: &shards::Needs| {
            metrics
                .state_cache_loaded_keys
                .inc_by(needs.keys.len() as u64);
            let started = Instant::now();
            let loaded = runtime.block_on(load_needs(&pool, needs));
            tracing::debug!(
                identities = needs.identities.len(),
                keys = needs.keys.len(),
                micros = started.elapsed().as_micros() as u64,
                "loaded what the batch reads"
            );
            loaded
        };
        let cut = tokio::task::block_in_place(|| {
            prepare(
                &mut shards,
                entries,
                settings.workers as usize,
                prepare_started,
                settings.max_entry_bytes as usize,
                &snapshot,
                &mut load,
            )
        });
        metrics.state_cache_keys.set(shards.cached_keys() as i64);
        let cut = match cut {
            Ok(cut) => cut,
            Err(e) => break Err(e),
        };
        tracing::debug!(
            micros = prepare_started.elapsed().as_micros() as u64,
            "prepared batch"
        );
        carried = cut.rest;
        if let Some(prepared) = cut.batch {
            if tx.send(Work::Batch(prepared)).await.is_err() {
                break Ok(Ended::Stopped); // the writer stopped: its result says why
            }
        }
        if let Some(reorg) = cut.reorg {
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

/// Reads what a batch needs and the shards lack: the stored events of its identities and the
/// stored rows of its keys.
async fn load_needs(
    pool: &Pool,
    needs: &shards::Needs,
) -> anyhow::Result<(Vec<crate::domain::Event>, crate::domain::BaseRows)> {
    let mut conn = pool.get().await.context("taking a database connection")?;
    let stored = store::prior::load_identities(&mut conn, &needs.identities).await?;
    let rows = store::prior::load_base(&mut conn, &needs.keys).await?;
    Ok((stored, rows))
}

/// Base rows written before they kept what the fold continues from (migration
/// `fold_continuation`): rebuilds them once from the event log, fenced by the lease.
async fn upgrade_base_rows(pool: &Pool, lease: &store::lease::Lease) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("taking a database connection")?;
    if !store::rebuild::upgrade_pending(&mut conn).await? {
        return Ok(());
    }
    tracing::warn!("base rows lack the fold's continuation (written before this version): rebuilding every derived table from the event log once");
    let started = Instant::now();
    let rebuilt = store::rebuild::replay_fenced(&mut conn, lease).await?;
    tracing::info!(
        events = rebuilt.events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "derived tables rebuilt"
    );
    Ok(())
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
