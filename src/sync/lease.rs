//! The writer lease seen from sync: wait as a standby until this process holds it, and keep it
//! alive while it writes (a heartbeat that reports a takeover).

use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::SyncSettings;
use crate::health::Role;
use crate::store::{self, Pool};

use super::SyncStats;

/// Waits, as a standby, until this process holds the writer lease of its group. `None` when
/// stopped first.
pub(super) async fn standby_until_leased(
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
pub(super) async fn heartbeat(
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
