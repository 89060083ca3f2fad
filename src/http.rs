//! The HTTP endpoints of SPEC §8: `/health` (live checks of Postgres and Redis, breaker state,
//! counters), `/ready` (the role), `/metrics` (OpenMetrics text, lag gauges refreshed on each
//! scrape). No URL or secret is ever part of a response.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use serde_json::json;

use crate::analytics::{self, AnalyticsStats};
use crate::breaker::BreakerState;
use crate::health::{Health, Role};
use crate::ingest::stream;
use crate::metrics::StreamLabels;
use crate::sync::SyncStats;

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub health: Arc<Health>,
    pub sync: Arc<SyncStats>,
    pub analytics: Arc<AnalyticsStats>,
    pub database_url: String,
    pub redis_url: String,
    pub redis_ca_cert: Option<std::path::PathBuf>,
    pub streams: Vec<String>,
    pub group: String,
    pub term_updates_stream: String,
    pub analytics_group: String,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn postgres_ok(url: &str) -> bool {
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, crate::store::measure::ping(url)).await,
        Ok(true)
    )
}

async fn redis_ok(url: &str, ca_cert: Option<&std::path::Path>) -> bool {
    let check = async {
        let mut conn = stream::connect(url, ca_cert).await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, check).await,
        Ok(Some(_))
    )
}

async fn health(State(s): State<Arc<HttpState>>) -> Response {
    let (pg, redis) = tokio::join!(
        postgres_ok(&s.database_url),
        redis_ok(&s.redis_url, s.redis_ca_cert.as_deref())
    );
    let breaker = s.health.breaker_state();
    // The analytics consumer's breaker is reported, but does not make the service unhealthy:
    // the base tables keep being written while it waits.
    let analytics_breaker = s.health.state_of(crate::health::Breaker::Analytics);
    let healthy = pg && redis && breaker != BreakerState::Open;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let body = json!({
        "healthy": healthy,
        "redis_consumer_healthy": redis,
        "postgres_healthy": pg,
        "circuit_breaker_closed": breaker == BreakerState::Closed,
        "analytics_circuit_breaker_closed": analytics_breaker == BreakerState::Closed,
        "last_check": now,
        "role": s.health.role().as_str(),
        "metrics": {
            "total_events_processed": s.sync.health.metrics.events_new(),
            "total_events_failed": s.sync.health.metrics.dead_lettered_events.get(),
            "total_events_duplicate": s.sync.health.metrics.events_duplicate.get(),
            "batches_committed": s.sync.health.metrics.batches_committed.get(),
            "pipeline_restarts": s.sync.health.metrics.restarts("sync") + s.analytics.health.metrics.restarts("analytics"),
            "analytics_batches": s.analytics.health.metrics.analytics_batches.get(),
            "circuit_breaker_state": breaker.as_str(),
            "analytics_circuit_breaker_state": analytics_breaker.as_str(),
        }
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn ready(State(s): State<Arc<HttpState>>) -> Response {
    let role = s.health.role();
    let body = json!({ "ready": role == Role::Writer, "role": role.as_str() });
    let status = if role == Role::Writer {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<HttpState>>) -> Response {
    let refresh = async {
        let mut conn = stream::connect(&s.redis_url, s.redis_ca_cert.as_deref())
            .await
            .ok()?;
        for name in &s.streams {
            if let Ok(lag) = analytics::lag(&mut conn, name, &s.group).await {
                let labels = StreamLabels {
                    stream: name.clone(),
                };
                s.health
                    .metrics
                    .consumer_lag_entries
                    .get_or_create(&labels)
                    .set(lag.undelivered as i64);
                s.health
                    .metrics
                    .consumer_pending_entries
                    .get_or_create(&labels)
                    .set(lag.pending as i64);
            }
        }
        if let Ok(lag) = analytics::lag(&mut conn, &s.term_updates_stream, &s.analytics_group).await
        {
            s.health
                .metrics
                .analytics_lag_entries
                .set((lag.undelivered + lag.pending) as i64);
            s.health.metrics.analytics_lag_seconds.set(lag.seconds);
        }
        Some(())
    };
    let _ = tokio::time::timeout(CHECK_TIMEOUT, refresh).await;
    s.health.breaker_state();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.health.metrics.encode(),
    )
        .into_response()
}
