//! Every metric the service exports, registered once with help text (prometheus-client,
//! OpenMetrics text at `/metrics`). Counters get the `_total` suffix from the encoder; units are
//! in the names.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

/// Which of the service's two pipelines: `sync` or `analytics`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

impl PipelineLabels {
    pub fn of(pipeline: &str) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
        }
    }
}

/// The service's metrics: the one source of its counters (the bench, `/health` and the tests
/// read them here). Cheap to update from any task (atomics inside).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events_processed: Family<EventLabels, Counter>,
    pub events_failed: Family<EventLabels, Counter>,
    pub events_duplicate: Counter,
    pub events_conflicting: Counter,
    /// Stream entries sync acknowledged (a batch's after its commit, a reorg notice's after it
    /// was applied).
    pub entries_acknowledged: Counter,
    pub batches_committed: Counter,
    pub event_processing_duration_seconds: Histogram,
    pub database_write_duration_seconds: Histogram,
    pub batch_size_entries: Histogram,
    pub batch_size_events: Histogram,
    pub dead_lettered_events: Counter,
    pub circuit_breaker_state: Gauge,
    pub analytics_circuit_breaker_state: Gauge,
    pub consumer_lag_entries: Family<StreamLabels, Gauge>,
    pub consumer_pending_entries: Family<StreamLabels, Gauge>,
    pub stream_trimmed_entries: Family<StreamLabels, Counter>,
    pub analytics_lag_entries: Gauge,
    pub analytics_lag_seconds: Gauge<f64, AtomicU64>,
    pub analytics_entries: Counter,
    pub analytics_terms: Counter,
    pub analytics_triples: Counter,
    pub analytics_rows_written: Counter,
    pub analytics_batches: Counter,
    pub analytics_rejected_terms: Counter,
    pub pipeline_restarts: Family<PipelineLabels, Counter>,
    pub reorgs: Counter,
    pub reorg_events_moved: Counter,
    pub state_cache_keys: Gauge,
    pub state_cache_loaded_keys: Counter,
    pub state_cache_evicted_keys: Counter,
    pub role: Family<RoleLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            events_processed: Family::default(),
            events_failed: Family::default(),
            events_duplicate: Counter::default(),
            events_conflicting: Counter::default(),
            entries_acknowledged: Counter::default(),
            batches_committed: Counter::default(),
            event_processing_duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            database_write_duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            batch_size_entries: Histogram::new(exponential_buckets(1.0, 2.0, 18)),
            batch_size_events: Histogram::new(exponential_buckets(1.0, 2.0, 20)),
            dead_lettered_events: Counter::default(),
            circuit_breaker_state: Gauge::default(),
            analytics_circuit_breaker_state: Gauge::default(),
            consumer_lag_entries: Family::default(),
            consumer_pending_entries: Family::default(),
            stream_trimmed_entries: Family::default(),
            analytics_lag_entries: Gauge::default(),
            analytics_lag_seconds: Gauge::default(),
            analytics_entries: Counter::default(),
            analytics_terms: Counter::default(),
            analytics_triples: Counter::default(),
            analytics_rows_written: Counter::default(),
            analytics_batches: Counter::default(),
            analytics_rejected_terms: Counter::default(),
            pipeline_restarts: Family::default(),
            reorgs: Counter::default(),
            reorg_events_moved: Counter::default(),
            state_cache_keys: Gauge::default(),
            state_cache_loaded_keys: Counter::default(),
            state_cache_evicted_keys: Counter::default(),
            role: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_processed",
            "Events applied for the first time, by event type",
            m.events_processed.clone(),
        );
        registry.register(
            "events_failed",
            "Event items rejected as bad input and dead-lettered, by event type",
            m.events_failed.clone(),
        );
        registry.register(
            "events_duplicate",
            "Redelivered events ignored (same identity, same content)",
            m.events_duplicate.clone(),
        );
        registry.register(
            "events_conflicting",
            "Events reusing an applied identity with different content (the first stays)",
            m.events_conflicting.clone(),
        );
        registry.register(
            "entries_acknowledged",
            "Input stream entries sync acknowledged: a batch's once it committed, a reorg notice's once applied",
            m.entries_acknowledged.clone(),
        );
        registry.register(
            "batches_committed",
            "Batch transactions sync committed",
            m.batches_committed.clone(),
        );
        registry.register(
            "event_processing_duration_seconds",
            "Time from reading a batch to acknowledging it: the processing latency of its events",
            m.event_processing_duration_seconds.clone(),
        );
        registry.register(
            "database_write_duration_seconds",
            "Time from beginning a batch transaction (event log, base rows, progress, outbox) to its commit, the wait for the batch before it included",
            m.database_write_duration_seconds.clone(),
        );
        registry.register(
            "batch_size_entries",
            "Stream entries per committed batch",
            m.batch_size_entries.clone(),
        );
        registry.register(
            "batch_size_events",
            "Decoded events per committed batch",
            m.batch_size_events.clone(),
        );
        registry.register(
            "dead_lettered_events",
            "Entries or items written to a dead-letter stream",
            m.dead_lettered_events.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker of the sync pipeline: 0 closed, 1 open, 2 half-open",
            m.circuit_breaker_state.clone(),
        );
        registry.register(
            "analytics_circuit_breaker_state",
            "Circuit breaker of the analytics consumer (its own, apart from sync's): 0 closed, 1 open, 2 half-open",
            m.analytics_circuit_breaker_state.clone(),
        );
        registry.register(
            "consumer_lag_entries",
            "Entries of an input stream not yet delivered to the consumer group",
            m.consumer_lag_entries.clone(),
        );
        registry.register(
            "stream_trimmed_entries",
            "Entries trimmed from a stream once every consumer group on it had acknowledged them",
            m.stream_trimmed_entries.clone(),
        );
        registry.register(
            "consumer_pending_entries",
            "Entries of an input stream delivered but not acknowledged",
            m.consumer_pending_entries.clone(),
        );
        registry.register(
            "analytics_lag_entries",
            "term_updates entries not yet acknowledged by the analytics group",
            m.analytics_lag_entries.clone(),
        );
        registry.register(
            "analytics_lag_seconds",
            "Age of the oldest unacknowledged term_updates entry",
            m.analytics_lag_seconds.clone(),
        );
        registry.register(
            "analytics_entries",
            "term_updates entries the analytics consumer acknowledged",
            m.analytics_entries.clone(),
        );
        registry.register(
            "analytics_terms",
            "Distinct term ids per analytics batch, summed",
            m.analytics_terms.clone(),
        );
        registry.register(
            "analytics_triples",
            "Triples whose rows the analytics consumer recomputed",
            m.analytics_triples.clone(),
        );
        registry.register(
            "analytics_rows_written",
            "Triple-level rows written by the analytics consumer",
            m.analytics_rows_written.clone(),
        );
        registry.register(
            "analytics_batches",
            "Analytics transactions committed",
            m.analytics_batches.clone(),
        );
        registry.register(
            "analytics_rejected_terms",
            "Term ids whose analytics rows PostgreSQL refused: logged, skipped and acknowledged",
            m.analytics_rejected_terms.clone(),
        );
        registry.register(
            "pipeline_restarts",
            "Times a pipeline (sync or analytics) failed and was started again",
            m.pipeline_restarts.clone(),
        );
        registry.register("reorgs", "rindexer reorg notices applied", m.reorgs.clone());
        registry.register(
            "reorg_events_moved",
            "Events reorg notices moved out of the event log (into reorged_events)",
            m.reorg_events_moved.clone(),
        );
        registry.register(
            "state_cache_keys",
            "Entries (atoms, triples, terms, positions) the sync state holds in memory (bounded by STATE_CACHE_KEYS)",
            m.state_cache_keys.clone(),
        );
        registry.register(
            "state_cache_loaded_keys",
            "Keys a batch needed that were not in memory, read from PostgreSQL (found or not)",
            m.state_cache_loaded_keys.clone(),
        );
        registry.register(
            "state_cache_evicted_keys",
            "Entries evicted from the sync state because it held more than STATE_CACHE_KEYS",
            m.state_cache_evicted_keys.clone(),
        );
        registry.register(
            "role",
            "1 for this process's current role (writer, standby, starting)",
            m.role.clone(),
        );
        // Both pipelines' restart series exist from the start, at 0.
        for pipeline in ["sync", "analytics"] {
            m.pipeline_restarts
                .get_or_create(&PipelineLabels::of(pipeline))
                .inc_by(0);
        }
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Restarts of `pipeline` (`sync` or `analytics`) so far.
    pub fn restarts(&self, pipeline: &str) -> u64 {
        self.pipeline_restarts
            .get_or_create(&PipelineLabels::of(pipeline))
            .get()
    }

    /// Counts a restart of `pipeline`.
    pub fn restarted(&self, pipeline: &str) {
        self.pipeline_restarts
            .get_or_create(&PipelineLabels::of(pipeline))
            .inc();
    }

    /// Events applied for the first time so far, all types: the sum of `events_processed` over
    /// its labels, read from the exposition (a family cannot be summed otherwise).
    pub fn events_new(&self) -> u64 {
        self.encode()
            .lines()
            .filter(|l| l.starts_with("events_processed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets the role gauge: 1 for `role`, 0 for the others.
    pub fn set_role(&self, role: &str) {
        for r in ["starting", "standby", "writer"] {
            self.role
                .get_or_create(&RoleLabels { role: r.to_owned() })
                .set(i64::from(r == role));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_spec_names_with_help() {
        let m = Metrics::default();
        m.events_processed
            .get_or_create(&EventLabels {
                event_type: "Deposited".into(),
            })
            .inc();
        m.events_failed
            .get_or_create(&EventLabels {
                event_type: "Deposited".into(),
            })
            .inc();
        m.event_processing_duration_seconds.observe(0.01);
        let text = m.encode();
        for name in [
            "events_processed_total",
            "events_failed_total",
            "event_processing_duration_seconds_bucket",
            "circuit_breaker_state",
            "analytics_circuit_breaker_state",
            "analytics_rejected_terms_total",
            "dead_lettered_events_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(
            text.lines().filter(|l| l.starts_with("# TYPE")).count() >= 16,
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# TYPE")).count(),
            text.lines().filter(|l| l.starts_with("# HELP")).count(),
            "help text on every metric"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn counters_read_back_summed_over_labels() {
        let m = Metrics::default();
        for (event_type, n) in [("Deposited", 3), ("Redeemed", 2), ("ProtocolFeeAccrued", 5)] {
            m.events_processed
                .get_or_create(&EventLabels {
                    event_type: event_type.into(),
                })
                .inc_by(n);
        }
        assert_eq!(m.events_new(), 10);
        m.restarted("sync");
        m.restarted("analytics");
        m.restarted("analytics");
        assert_eq!((m.restarts("sync"), m.restarts("analytics")), (1, 2));
        assert!(m
            .encode()
            .contains("pipeline_restarts_total{pipeline=\"analytics\"} 2"));
    }
}
