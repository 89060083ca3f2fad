//! `SyncStats`: the counters of a running sync, for the bench, the tests and `/health`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::health::Health;

/// Counters of a running sync, for the bench, the tests and the metrics endpoint.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Metrics, circuit breaker and role, shared with the analytics task and the HTTP server.
    pub health: Arc<Health>,
    pub entries: AtomicU64,
    pub events_new: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_conflicting: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    /// Pipeline restarts after a failure.
    pub restarts: AtomicU64,
    /// Reorg notices applied.
    pub reorgs: AtomicU64,
    /// Events taken out of the event log by reorgs.
    pub events_reorged: AtomicU64,
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
