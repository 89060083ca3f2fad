//! The circuit breaker of SPEC §4: closed → open after `threshold` consecutive failures, for
//! `open_for`; then half-open, where one attempt decides (success closes, failure re-opens).
//! Pure: time comes in as an argument, so the transitions are tested without waiting.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of the `circuit_breaker_state` metric.
    pub fn code(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    opened_at: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            opened_at: None,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.opened_at {
            None => BreakerState::Closed,
            Some(at) if now.duration_since(at) < self.open_for => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// How long to wait before the next attempt is allowed (zero unless open).
    pub fn wait(&self, now: Instant) -> Duration {
        match self.opened_at {
            Some(at) => self.open_for.saturating_sub(now.duration_since(at)),
            None => Duration::ZERO,
        }
    }

    pub fn on_success(&mut self) {
        self.failures = 0;
        self.opened_at = None;
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        // A failure while half-open, or the threshold reached: (re)open for a full period.
        if self.opened_at.is_some() || self.failures >= self.threshold {
            self.opened_at = Some(now);
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_open_half_open_closed() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut b = CircuitBreaker::new(3, Duration::from_secs(60));
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_failure(s(1));
        b.on_failure(s(2));
        assert_eq!(b.state(s(2)), BreakerState::Closed, "below the threshold");
        b.on_failure(s(3));
        assert_eq!(b.state(s(3)), BreakerState::Open);
        assert_eq!(b.wait(s(13)), Duration::from_secs(50));
        assert_eq!(b.state(s(63)), BreakerState::HalfOpen);
        assert_eq!(b.wait(s(63)), Duration::ZERO);
        b.on_failure(s(64));
        assert_eq!(
            b.state(s(64)),
            BreakerState::Open,
            "a half-open failure re-opens"
        );
        assert_eq!(b.state(s(130)), BreakerState::HalfOpen);
        b.on_success();
        assert_eq!(
            (b.state(s(130)), b.consecutive_failures()),
            (BreakerState::Closed, 0)
        );
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(2, Duration::from_secs(1));
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }
}
