//! The service as one value, wired in one place: the binary (`sync`), the bench and the tests
//! all build an [`App`] and call [`App::run`], so what they measure and test is what runs in
//! production.
//!
//! [`App::new`] makes the shared state — metrics, the two circuit breakers and the role
//! (`Health`), the sync and analytics counters — that the caller may watch while it runs;
//! [`App::run`] migrates the schema (once per process), then runs `sync`, the analytics consumer
//! (unless `NO_ANALYTICS`) and, given a listener, the HTTP endpoints, until `shutdown` resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::analytics::AnalyticsStats;
use crate::config::{OpsSettings, SyncSettings};
use crate::health::{self, Health};
use crate::http::{self, HttpState};
use crate::sync::{self, SyncStats};

/// What a running service shares with whoever started it.
#[derive(Debug, Clone)]
pub struct App {
    pub health: Arc<Health>,
    pub sync: Arc<SyncStats>,
    pub analytics: Arc<AnalyticsStats>,
}

impl App {
    /// Fresh metrics, breakers (with the settings' thresholds) and counters.
    pub fn new(settings: &SyncSettings) -> Self {
        let health = Arc::new(Health::for_sync(&settings.ops));
        Self {
            sync: Arc::new(SyncStats {
                health: health.clone(),
                ..Default::default()
            }),
            analytics: Arc::new(AnalyticsStats {
                health: health.clone(),
                ..Default::default()
            }),
            health,
        }
    }

    /// Runs the service until `shutdown` resolves; each task finishes its batch in flight. With
    /// a `listener`, `/health`, `/ready` and `/metrics` are served on it.
    pub async fn run(
        &self,
        settings: SyncSettings,
        listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = health::stop_flag(shutdown);
        let http = listener.map(|listener| {
            let state = HttpState {
                health: self.health.clone(),
                sync: self.sync.clone(),
                analytics: self.analytics.clone(),
                database_url: settings.connections.database_url.clone(),
                redis_url: settings.connections.redis_url.clone(),
                redis_ca_cert: settings.connections.redis_ca_cert.clone(),
                streams: settings.redis_streams.clone(),
                group: settings.consumer_group.clone(),
                term_updates_stream: settings.analytics.term_updates_stream.clone(),
                analytics_group: settings.analytics.group(),
            };
            tokio::spawn(http::serve(listener, state, health::stopped(stop.clone())))
        });
        let served = sync::service(
            settings,
            self.sync.clone(),
            self.analytics.clone(),
            health::stopped(stop),
        )
        .await;
        let http = match http {
            // The service failed (a setting to fix, a migration that cannot run): the endpoints
            // must not keep the process alive, so the caller sees the error and exits.
            Some(task) if served.is_err() => {
                task.abort();
                let _ = task.await;
                Ok(())
            }
            Some(task) => task.await.context("the HTTP task panicked")?,
            None => Ok(()),
        };
        served.and(http)
    }
}

/// The listener for the HTTP endpoints (`HTTP_BIND`:`HTTP_PORT`), or none when `HTTP_PORT=0`.
pub async fn listen(ops: &OpsSettings) -> anyhow::Result<Option<TcpListener>> {
    if ops.http_port == 0 {
        return Ok(None);
    }
    let addr = SocketAddr::new(ops.http_bind, ops.http_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("HTTP_PORT: cannot listen on {addr}"))?;
    tracing::info!(%addr, "serving /health, /ready and /metrics");
    Ok(Some(listener))
}
