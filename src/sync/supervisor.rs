//! The supervisor: runs the pipeline again after a failure (back-off, breaker), after a reorg
//! (empty cache), after a refused batch (its entries quarantined) and after a lost lease
//! (standby).

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::prepare::Quarantine;
use super::writer::RejectedBatch;
use crate::config::SyncSettings;
use crate::health::{self, Breaker, Next, Role};
use crate::store::failure;

use super::pipeline::{pipeline, Ended};
use super::SyncStats;

/// Runs the base sync until `shutdown` resolves; the batch in flight then commits (or is abandoned
/// before its transaction) and `run` returns. A failure restarts the pipeline after a backoff
/// (`health::supervise`, the supervisor the analytics consumer shares). The schema must be
/// migrated before (`sync::service` does it once per process).
pub async fn run(
    settings: SyncSettings,
    stats: Arc<SyncStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let consumer = settings.consumer();
    let stop = health::stop_flag(shutdown);
    let quarantine = Arc::new(Mutex::new(Quarantine::default()));
    let once = |stop| {
        let (settings, consumer, stats, quarantine) = (&settings, &consumer, &stats, &quarantine);
        async move {
            let result = pipeline(settings, consumer, stats, quarantine, stop).await;
            stats.health.set_role(Role::Starting);
            match result {
                Ok(Ended::Stopped) => Ok(Next::Stop),
                Ok(Ended::Reorged) => {
                    tracing::info!("restarting the pipeline with an empty cache after a reorg");
                    Ok(Next::Again {
                        reset_back_off: true,
                    })
                }
                Err(e) if e.downcast_ref::<RejectedBatch>().is_some() => {
                    // Not a failure of Postgres or Redis: the data. No back-off, no breaker: the
                    // entries are retried one by one on a fresh pipeline (empty cache).
                    if let (Some(r), Ok(mut q)) =
                        (e.downcast_ref::<RejectedBatch>(), quarantine.lock())
                    {
                        q.refused(&r.entries, &r.reason);
                    }
                    stats.health.metrics.restarted(Breaker::Sync.pipeline());
                    tracing::error!(
                        error = format!("{e:#}"),
                        "PostgreSQL refused rows derived from the batch; retrying its entries one by one"
                    );
                    Ok(Next::Again {
                        reset_back_off: false,
                    })
                }
                Err(e) if failure::fenced(&e) => {
                    // Not a failure of Postgres or Redis: another process writes now. Standby.
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "lost the writer lease; standing by"
                    );
                    Ok(Next::Again {
                        reset_back_off: false,
                    })
                }
                Err(e) => Err(e),
            }
        }
    };
    health::supervise(
        &stats.health,
        Breaker::Sync,
        "sync pipeline (restarted on the stored rows)",
        stop,
        once,
    )
    .await
}
