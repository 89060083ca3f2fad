//! `sync` and `migrate`: the production service, and the schema alone.

use std::sync::Arc;

use anyhow::Context;
use redis_postgres_sync::config::{AnalyticsArgs, Connections, SyncSettings};
use redis_postgres_sync::health::Health;
use redis_postgres_sync::{analytics, http, store, sync};

pub async fn run(settings: SyncSettings) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    tracing::info!(
        database = %store::redact(&settings.connections.database_url),
        redis = %store::redact(&settings.connections.redis_url),
        workers = settings.workers,
        batch_size = settings.batch_size,
        "starting sync"
    );
    let stop_rx = redis_postgres_sync::health::stop_flag(shutdown);
    let stopped = redis_postgres_sync::health::stopped;
    let health = Arc::new(Health::for_sync(&settings.ops));
    let stats = Arc::new(sync::SyncStats {
        health: health.clone(),
        ..Default::default()
    });
    let analytics_stats = Arc::new(analytics::AnalyticsStats {
        health: health.clone(),
        ..Default::default()
    });
    let http_task = if settings.ops.http_port == 0 {
        None
    } else {
        let addr = std::net::SocketAddr::new(settings.ops.http_bind, settings.ops.http_port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("HTTP_PORT: cannot listen on {addr}"))?;
        tracing::info!(%addr, "serving /health, /ready and /metrics");
        let state = http::HttpState {
            health,
            sync: stats.clone(),
            analytics: analytics_stats.clone(),
            database_url: settings.connections.database_url.clone(),
            redis_url: settings.connections.redis_url.clone(),
            redis_ca_cert: settings.connections.redis_ca_cert.clone(),
            streams: settings.redis_streams.clone(),
            group: settings.consumer_group.clone(),
            term_updates_stream: settings.analytics.term_updates_stream.clone(),
            analytics_group: settings.analytics.group(),
        };
        Some(tokio::spawn(http::serve(
            listener,
            state,
            stopped(stop_rx.clone()),
        )))
    };
    sync::service(settings, stats, analytics_stats, stopped(stop_rx)).await?;
    if let Some(task) = http_task {
        task.await.context("the HTTP task panicked")??;
    }
    tracing::info!("stopped");
    Ok(())
}

pub async fn analytics(args: AnalyticsArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let run = args.run();
    tracing::info!(
        database = %store::redact(&run.connections.database_url),
        stream = %run.settings.term_updates_stream,
        group = %run.settings.group(),
        "starting the analytics consumer"
    );
    store::create_database_if_missing(&run.connections.database_url).await?;
    store::migrate(&run.connections.database_url).await?;
    sync::check_redis(&run.connections).await?;
    let stats = analytics::AnalyticsStats {
        health: Arc::new(Health::for_analytics(&args)),
        ..Default::default()
    };
    analytics::run(run, Arc::new(stats), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

pub async fn migrate(connections: Connections) -> anyhow::Result<()> {
    let url = &connections.database_url;
    store::create_database_if_missing(url).await?;
    let applied = store::migrate(url).await?;
    if applied.is_empty() {
        println!("schema is up to date ({})", store::redact(url));
    } else {
        println!(
            "applied {} migration(s) to {}: {}",
            applied.len(),
            store::redact(url),
            applied.join(", ")
        );
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (not when it
/// is first polled), so a signal during start-up is not lost. Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = int.recv() => tracing::info!("SIGINT: finishing the batch in flight"),
                        _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in flight"),
                    }
                    let _ = tx.send(());
                });
            }
            _ => tracing::warn!("cannot install signal handlers; stop with SIGKILL"),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(());
        }
    });
    async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
