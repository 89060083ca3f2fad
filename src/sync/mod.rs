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
//! Modules, by role: `supervisor` (restarts), `pipeline` (one run: the lease, the writer task,
//! the reader loop), `lease` (standby and heartbeat), `prepare` (entries → a batch: decode, dead
//! letters, fold, cuts), `shards` (the sharded fold over the cache), `writer` (commit, publish,
//! acknowledge, reorgs), `stats`; this file starts sync beside the analytics consumer
//! (`service`). The retry helper is `store::failure::with_retries`, shared with analytics.

mod lease;
mod pipeline;
pub mod prepare;
pub mod shards;
mod stats;
mod supervisor;
pub mod writer;

pub use stats::SyncStats;
pub use supervisor::run;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;

use crate::config::SyncSettings;
use crate::ingest::stream;
use crate::store;

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
    store::measure::advise_on_buffer_cache(url).await;
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
