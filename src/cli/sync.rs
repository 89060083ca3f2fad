//! `sync` and `migrate`: the production service, and the schema alone.

use std::sync::Arc;

use redis_postgres_sync::config::{Connections, SyncSettings};
use redis_postgres_sync::{store, sync};

pub async fn run(settings: SyncSettings) -> anyhow::Result<()> {
    tracing::info!(
        database = %store::redact(&settings.connections.database_url),
        redis = %store::redact(&settings.connections.redis_url),
        workers = settings.workers,
        batch_size = settings.batch_size,
        "starting sync"
    );
    let stats = Arc::new(sync::SyncStats::default());
    sync::run(settings, stats, shutdown_signal()).await?;
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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: finishing the batch in flight"),
        _ = term => tracing::info!("SIGTERM: finishing the batch in flight"),
    }
}
