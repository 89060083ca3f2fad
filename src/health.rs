//! What the service knows about itself, shared by its tasks and read by the HTTP endpoints: the
//! metrics, the circuit breaker, and the process's role.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::metrics::Metrics;

/// The role of this process (SPEC §8 `/ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connecting, migrating, rebuilding its state.
    Starting,
    /// Another process holds the writer lease; this one waits to take over.
    Standby,
    /// Consuming and writing.
    Writer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::Writer => "writer",
        }
    }
}

#[derive(Debug)]
pub struct Health {
    pub metrics: Metrics,
    breaker: Mutex<CircuitBreaker>,
    role: Mutex<Role>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(5, Duration::from_secs(60))
    }
}

impl Health {
    pub fn new(breaker_threshold: u32, breaker_open_for: Duration) -> Self {
        let h = Self {
            metrics: Metrics::default(),
            breaker: Mutex::new(CircuitBreaker::new(breaker_threshold, breaker_open_for)),
            role: Mutex::new(Role::Starting),
        };
        h.metrics.set_role(Role::Starting.as_str());
        h
    }

    pub fn role(&self) -> Role {
        self.role.lock().map(|r| *r).unwrap_or(Role::Starting)
    }

    pub fn set_role(&self, role: Role) {
        if let Ok(mut r) = self.role.lock() {
            *r = role;
        }
        self.metrics.set_role(role.as_str());
    }

    pub fn breaker_state(&self) -> BreakerState {
        let state = self
            .breaker
            .lock()
            .map(|b| b.state(Instant::now()))
            .unwrap_or(BreakerState::Closed);
        self.metrics.circuit_breaker_state.set(state.code());
        state
    }

    /// How long an attempt must wait for the breaker (zero unless open).
    pub fn breaker_wait(&self) -> Duration {
        self.breaker
            .lock()
            .map(|b| b.wait(Instant::now()))
            .unwrap_or_default()
    }

    pub fn record_success(&self) {
        if let Ok(mut b) = self.breaker.lock() {
            b.on_success();
        }
        self.breaker_state();
    }

    pub fn record_failure(&self) {
        if let Ok(mut b) = self.breaker.lock() {
            b.on_failure(Instant::now());
        }
        let state = self.breaker_state();
        if state == BreakerState::Open {
            tracing::warn!(
                open_for_ms = self.breaker_wait().as_millis() as u64,
                "circuit breaker open"
            );
        }
    }
}

/// After a failed pipeline: counts it (restarts, metric, breaker), logs it once, and waits an
/// exponential backoff (0.4 s doubling up to 10 s). Returns `true` if `stop` fired meanwhile.
pub async fn back_off(
    health: &Health,
    restarts: &std::sync::atomic::AtomicU64,
    failures: u32,
    error: &anyhow::Error,
    what: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    health.metrics.pipeline_restarts.inc();
    health.record_failure();
    let wait = Duration::from_millis(200 * 2u64.saturating_pow(failures.min(6)))
        .min(Duration::from_secs(10));
    tracing::error!(
        error = format!("{error:#}"),
        retry_in_ms = wait.as_millis() as u64,
        "{what} failed; restarting"
    );
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// A stop flag that turns true once `shutdown` resolves, for tasks that check it repeatedly.
pub fn stop_flag(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once `flag` is true.
pub async fn stopped(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
