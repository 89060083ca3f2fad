//! The supervisor: runs the pipeline again after a failure (back-off, breaker), after a reorg
//! (empty cache), after a refused batch (its entries quarantined) and after a lost lease
//! (standby).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::prepare::Quarantine;
use super::writer::RejectedBatch;
use crate::config::SyncSettings;
use crate::health::Role;
use crate::store::failure;

use super::pipeline::{pipeline, Ended};
use super::SyncStats;

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
