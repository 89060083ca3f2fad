//! One run of the pipeline: take the writer lease (standing by until then), start the writer
//! task and the heartbeat, then the reader loop — read entries, load what the batch reads and
//! the cache lacks, fold, hand the batch to the writer — until a stop, a reorg or a failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use super::prepare::{prepare, Quarantine};
use super::shards::{self, Shards};
use super::writer::{Work, Writer};
use crate::config::SyncSettings;
use crate::health::Role;
use crate::ingest::stream::{self, EntrySource, GroupReader};
use crate::store::{self, Pool};

use super::lease::{heartbeat, standby_until_leased};
use super::SyncStats;

/// Why a pipeline ended without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Shutdown was requested.
    Stopped,
    /// A reorg was applied: the cached state must be dropped (the stored rows changed under it).
    Reorged,
}

pub(super) async fn pipeline(
    settings: &SyncSettings,
    consumer: &str,
    stats: &Arc<SyncStats>,
    quarantine: &Arc<Mutex<Quarantine>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    // The schema was migrated once, at process start (`service`). Five connections: two batch
    // transactions in flight (`Writer`), the reader's loads, the heartbeat, the outbox's mark.
    let pool = store::pool(&settings.connections.database_url, 5).await?;
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
    backfill_transaction_keys(&pool, &lease).await?;
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

/// The identity probe's keys of events stored before `event_transactions` existed: added once,
/// fenced by the lease, before the first batch relies on them.
async fn backfill_transaction_keys(pool: &Pool, lease: &store::lease::Lease) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("taking a database connection")?;
    let started = Instant::now();
    if let Some(added) = store::prior::backfill_transaction_keys(&mut conn, lease).await? {
        tracing::info!(
            transactions = added,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event_transactions filled from the event log (once, after the upgrade)"
        );
    }
    Ok(())
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
