//! `SyncStats`: what a running sync shares with the bench, the tests and `/health`: its
//! `Health` (whose `Metrics` are the one source of its counters) and the commit times the bench
//! reports percentiles of.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::health::Health;

/// What a running sync shares beyond its metrics, for the bench, the tests and `/health`.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Metrics (every counter), circuit breaker and role, shared with the analytics task and the
    /// HTTP server.
    pub health: Arc<Health>,
    /// Commit time of every batch, in microseconds (bounded: the newest 100,000).
    pub commit_micros: Mutex<Vec<u64>>,
    /// When the first entries were read, and when the last batch committed.
    pub first_read: Mutex<Option<Instant>>,
    pub last_commit: Mutex<Option<Instant>>,
}

impl SyncStats {
    pub(super) fn record_commit(&self, d: Duration) {
        if let Ok(mut v) = self.commit_micros.lock() {
            if v.len() >= 100_000 {
                v.drain(..50_000);
            }
            v.push(d.as_micros() as u64);
        }
        if let Ok(mut t) = self.last_commit.lock() {
            *t = Some(Instant::now());
        }
    }

    pub(super) fn record_read(&self) {
        if let Ok(mut t) = self.first_read.lock() {
            t.get_or_insert_with(Instant::now);
        }
    }
}
