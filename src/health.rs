//! What the service knows about itself, shared by its tasks and read by the HTTP endpoints: the
//! metrics, the circuit breakers, and the process's role.
//!
//! Two breakers, one per pipeline ([`Breaker`]): sync's (`circuit_breaker_state`, `/health`'s
//! `circuit_breaker_closed`) and the analytics consumer's (`analytics_circuit_breaker_state`).
//! A failing analytics consumer never opens sync's breaker, nor the other way round: each
//! pipeline records its failures on, and waits out, its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::metrics::Metrics;

/// The role of this process (SPEC §8 `/ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connecting and migrating (and, once after an upgrade, rebuilding the derived tables).
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

/// Which pipeline's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// The sync pipeline's (SPEC §4, §8: `circuit_breaker_state`).
    Sync,
    /// The analytics consumer's (`analytics_circuit_breaker_state`).
    Analytics,
}

impl Breaker {
    /// The `pipeline` label of the pipeline the breaker guards (`pipeline_restarts_total`).
    pub fn pipeline(self) -> &'static str {
        match self {
            Breaker::Sync => "sync",
            Breaker::Analytics => "analytics",
        }
    }
}

#[derive(Debug)]
pub struct Health {
    pub metrics: Metrics,
    breaker: Mutex<CircuitBreaker>,
    analytics_breaker: Mutex<CircuitBreaker>,
    role: Mutex<Role>,
    /// When the role last became [`Role::Writer`] (for the bench: start → ready, reorg → ready).
    writer_since: Mutex<Option<Instant>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(5, Duration::from_secs(60))
    }
}

impl Health {
    /// Metrics and the sync breaker, with the service's breaker settings.
    pub fn for_sync(ops: &crate::config::OpsSettings) -> Self {
        Self::new(
            ops.circuit_breaker_threshold,
            Duration::from_millis(ops.circuit_breaker_timeout_ms),
        )
    }

    /// Metrics and the analytics breaker, with the `analytics` subcommand's breaker settings.
    pub fn for_analytics(args: &crate::config::AnalyticsArgs) -> Self {
        Self::new(
            args.circuit_breaker_threshold,
            Duration::from_millis(args.circuit_breaker_timeout_ms),
        )
    }

    pub fn new(breaker_threshold: u32, breaker_open_for: Duration) -> Self {
        let h = Self {
            metrics: Metrics::default(),
            breaker: Mutex::new(CircuitBreaker::new(breaker_threshold, breaker_open_for)),
            analytics_breaker: Mutex::new(CircuitBreaker::new(breaker_threshold, breaker_open_for)),
            role: Mutex::new(Role::Starting),
            writer_since: Mutex::new(None),
        };
        h.metrics.set_role(Role::Starting.as_str());
        h
    }

    pub fn role(&self) -> Role {
        self.role.lock().map(|r| *r).unwrap_or(Role::Starting)
    }

    pub fn set_role(&self, role: Role) {
        if let Ok(mut r) = self.role.lock() {
            if role == Role::Writer && *r != Role::Writer {
                if let Ok(mut t) = self.writer_since.lock() {
                    *t = Some(Instant::now());
                }
            }
            *r = role;
        }
        self.metrics.set_role(role.as_str());
    }

    /// When the role last turned [`Role::Writer`]; `None` if it never did.
    pub fn writer_since(&self) -> Option<Instant> {
        self.writer_since.lock().ok().and_then(|t| *t)
    }

    fn cell(&self, which: Breaker) -> &Mutex<CircuitBreaker> {
        match which {
            Breaker::Sync => &self.breaker,
            Breaker::Analytics => &self.analytics_breaker,
        }
    }

    fn gauge(&self, which: Breaker) -> &prometheus_client::metrics::gauge::Gauge {
        match which {
            Breaker::Sync => &self.metrics.circuit_breaker_state,
            Breaker::Analytics => &self.metrics.analytics_circuit_breaker_state,
        }
    }

    /// The state of `which` breaker, also set on its gauge.
    pub fn state_of(&self, which: Breaker) -> BreakerState {
        let state = self
            .cell(which)
            .lock()
            .map(|b| b.state(Instant::now()))
            .unwrap_or(BreakerState::Closed);
        self.gauge(which).set(state.code());
        state
    }

    /// How long an attempt of `which` pipeline must wait for its breaker (zero unless open).
    pub fn wait_of(&self, which: Breaker) -> Duration {
        self.cell(which)
            .lock()
            .map(|b| b.wait(Instant::now()))
            .unwrap_or_default()
    }

    /// A success of `which` pipeline: closes its breaker.
    pub fn success_of(&self, which: Breaker) {
        if let Ok(mut b) = self.cell(which).lock() {
            b.on_success();
        }
        self.state_of(which);
    }

    /// A failure of `which` pipeline: counts on its breaker only.
    pub fn failure_of(&self, which: Breaker) {
        if let Ok(mut b) = self.cell(which).lock() {
            b.on_failure(Instant::now());
        }
        if self.state_of(which) == BreakerState::Open {
            tracing::warn!(
                breaker = ?which,
                open_for_ms = self.wait_of(which).as_millis() as u64,
                "circuit breaker open"
            );
        }
    }

    /// Sync's breaker state (what `/health` reports). Refreshes both breaker gauges, so a scrape
    /// that calls it shows the analytics breaker's current state too.
    pub fn breaker_state(&self) -> BreakerState {
        self.state_of(Breaker::Analytics);
        self.state_of(Breaker::Sync)
    }

    /// How long a sync attempt must wait for its breaker (zero unless open).
    pub fn breaker_wait(&self) -> Duration {
        self.wait_of(Breaker::Sync)
    }

    /// A success of sync.
    pub fn record_success(&self) {
        self.success_of(Breaker::Sync);
    }

    /// A failure of sync.
    pub fn record_failure(&self) {
        self.failure_of(Breaker::Sync);
    }
}

/// After a failed pipeline: counts it (`pipeline_restarts_total` of its pipeline, its own breaker
/// `which`),
/// logs it once, and waits an exponential backoff (0.4 s doubling up to 10 s). Returns `true` if
/// `stop` fired meanwhile.
pub async fn back_off_on(
    health: &Health,
    which: Breaker,
    failures: u32,
    error: &anyhow::Error,
    what: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    health.metrics.restarted(which.pipeline());
    health.failure_of(which);
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

/// What one run of a supervised pipeline asks for when it ends without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Stop was requested: the supervisor returns.
    Stop,
    /// Run again at once (a reorg was applied, a refused batch quarantined, the lease lost).
    /// `reset_back_off`: the run went well (a reorg), so the next failure backs off from the
    /// start; otherwise the count of failures in a row carries over.
    Again { reset_back_off: bool },
}

/// The one supervisor of the service's pipelines (sync and the analytics consumer): waits out
/// the pipeline's own breaker (`which`) while it is open, runs `once`, and after a failure counts
/// it and backs off ([`back_off_on`]) before the next run. Returns when a run says
/// [`Next::Stop`] or `stop` fires.
pub async fn supervise<F, Fut>(
    health: &Health,
    which: Breaker,
    what: &str,
    stop: tokio::sync::watch::Receiver<bool>,
    mut once: F,
) -> anyhow::Result<()>
where
    F: FnMut(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Next>>,
{
    let mut failures = 0u32;
    loop {
        // The breaker open: wait out its open period (contract §4), then try once (half-open).
        let wait = health.wait_of(which);
        if !wait.is_zero() {
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        match once(stop.clone()).await {
            Ok(Next::Stop) => return Ok(()),
            Ok(Next::Again { reset_back_off }) => {
                if reset_back_off {
                    failures = 0;
                }
                if *stop.borrow() {
                    return Ok(());
                }
            }
            Err(e) => {
                failures += 1;
                let mut stop = stop.clone();
                if back_off_on(health, which, failures, &e, what, &mut stop).await {
                    return Ok(());
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(h: &Health) -> (bool, bool) {
        let text = h.metrics.encode();
        (
            text.lines().any(|l| l == "circuit_breaker_state 1"),
            text.lines()
                .any(|l| l == "analytics_circuit_breaker_state 1"),
        )
    }

    #[test]
    fn analytics_failures_leave_the_sync_breaker_closed() {
        let h = Health::new(2, Duration::from_secs(60));
        h.failure_of(Breaker::Analytics);
        h.failure_of(Breaker::Analytics);
        h.failure_of(Breaker::Analytics);
        assert_eq!(h.state_of(Breaker::Analytics), BreakerState::Open);
        assert_eq!(h.breaker_state(), BreakerState::Closed, "sync's breaker");
        assert_eq!(h.breaker_wait(), Duration::ZERO, "sync is not held back");
        assert!(h.wait_of(Breaker::Analytics) > Duration::ZERO);
        assert_eq!(gauges(&h), (false, true));
        // A sync success does not close the analytics breaker either.
        h.record_success();
        assert_eq!(h.state_of(Breaker::Analytics), BreakerState::Open);
        h.success_of(Breaker::Analytics);
        assert_eq!(h.state_of(Breaker::Analytics), BreakerState::Closed);
        assert_eq!(gauges(&h), (false, false));
    }

    #[test]
    fn sync_failures_leave_the_analytics_breaker_closed() {
        let h = Health::new(1, Duration::from_secs(60));
        h.record_failure();
        assert_eq!(h.breaker_state(), BreakerState::Open);
        assert_eq!(h.state_of(Breaker::Analytics), BreakerState::Closed);
        assert_eq!(h.wait_of(Breaker::Analytics), Duration::ZERO);
        assert_eq!(gauges(&h), (true, false));
    }

    #[tokio::test(start_paused = true)]
    async fn the_supervisor_runs_again_after_failures_and_again_requests_until_stop() {
        let h = Health::new(5, Duration::from_secs(60));
        let (_tx, stop) = tokio::sync::watch::channel(false);
        let runs = std::sync::atomic::AtomicU32::new(0);
        // Fails twice, asks to run again once, then stops.
        let outcome = supervise(&h, Breaker::Sync, "test", stop, |_| {
            let n = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                match n {
                    0 | 1 => Err(anyhow::anyhow!("connection refused")),
                    2 => Ok(Next::Again {
                        reset_back_off: true,
                    }),
                    _ => Ok(Next::Stop),
                }
            }
        })
        .await;
        assert!(outcome.is_ok());
        assert_eq!(runs.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(
            h.metrics.restarts("sync"),
            2,
            "only failures count as restarts"
        );
        assert_eq!(h.metrics.restarts("analytics"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_back_off_carries_over_a_run_again_unless_it_is_reset() {
        // Fail, run again, fail, stop: the second failure waits 0.8 s when the count carried
        // over (two failures in a row), 0.4 s when the run in between reset it.
        for (reset_back_off, waited) in [(false, 1_200), (true, 800)] {
            let h = Health::new(100, Duration::from_secs(60));
            let (_tx, stop) = tokio::sync::watch::channel(false);
            let runs = std::sync::atomic::AtomicU32::new(0);
            let started = tokio::time::Instant::now();
            supervise(&h, Breaker::Sync, "test", stop, |_| {
                let n = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    match n {
                        0 | 2 => Err(anyhow::anyhow!("connection refused")),
                        1 => Ok(Next::Again { reset_back_off }),
                        _ => Ok(Next::Stop),
                    }
                }
            })
            .await
            .expect("supervised");
            assert_eq!(
                started.elapsed(),
                Duration::from_millis(waited),
                "reset_back_off {reset_back_off}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_counts_on_the_pipeline_s_own_breaker() {
        let h = Health::new(1, Duration::from_secs(60));
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let e = anyhow::anyhow!("connection refused");
        let stopped = back_off_on(
            &h,
            Breaker::Analytics,
            1,
            &e,
            "analytics consumer",
            &mut stop,
        )
        .await;
        assert!(!stopped);
        assert_eq!(h.state_of(Breaker::Analytics), BreakerState::Open);
        assert_eq!(h.breaker_state(), BreakerState::Closed);
        // Sync's variant keeps its signature and counts on sync's breaker.
        assert!(!back_off_on(&h, Breaker::Sync, 1, &e, "sync pipeline", &mut stop).await);
        assert_eq!(h.breaker_state(), BreakerState::Open);
        assert_eq!(
            (h.metrics.restarts("sync"), h.metrics.restarts("analytics")),
            (1, 1),
            "each pipeline's restarts under its own label"
        );
    }
}
