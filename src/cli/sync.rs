//! `sync` and `migrate`: the production service, and the schema alone.

use std::sync::Arc;

use redis_postgres_sync::app::{self, App};
use redis_postgres_sync::config::{AnalyticsArgs, Connections, SyncSettings};
use redis_postgres_sync::health::Health;
use redis_postgres_sync::{analytics, store, sync};

pub async fn run(settings: SyncSettings) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    tracing::info!(
        database = %store::redact(&settings.connections.database_url),
        redis = %store::redact(&settings.connections.redis_url),
        workers = settings.workers,
        batch_size = settings.batch_size,
        "starting sync"
    );
    let listener = app::listen(&settings.ops).await?;
    App::new(&settings)
        .run(settings, listener, shutdown)
        .await?;
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
