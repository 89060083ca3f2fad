//! The writer task: commits each prepared batch in one transaction, then publishes its term
//! updates and dead letters and acknowledges its entries; applies reorg notices.
//!
//! Batches commit in order, but two transactions overlap: batch N+1's begins on a task of its
//! own and writes its event-table rows while N commits, then waits for N's commit before its
//! fence, its base rows and its COMMIT (`store::commit_after`). A failure of either falls back
//! to one batch at a time, as below; a reorg notice waits until every earlier batch committed.
//!
//! Failures are classified (`store::failure`). Transient ones are retried (`with_retries`), then
//! fail the pipeline, which restarts after a back-off. A **refusal of the data** never does:
//!
//! 1. the batch is committed again with its generic events bisected under savepoints, so the
//!    events PostgreSQL refuses are left out and dead-lettered and the rest commits
//!    (`store::commit_isolating`); their identities are handed back to the reader to forget;
//! 2. if the core rows themselves are refused (nothing foreseen does that: the decoder checks
//!    every field that reaches them), the batch fails with [`RejectedBatch`]; the supervisor
//!    quarantines its entries and restarts the pipeline, which folds each of them alone, and an
//!    entry refused alone is dead-lettered unread.
//!
//! A reorg notice PostgreSQL refuses is dead-lettered and acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::prepare::{note_progress, EntryKey, Prepared, Quarantine, ReorgWork};
use super::SyncStats;
use crate::config::InputRetention;
use crate::config::SyncSettings;
use crate::domain::types::TxHash;
use crate::ingest::stream::{self, DeadLetter, Entry};
use crate::metrics::{EventLabels, StreamLabels};
use crate::store::failure::with_retries;

/// How often acknowledged input entries are trimmed while batches queue up.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
use crate::store::dead_letters::{self, WHOLE_ENTRY};
use crate::store::failure;
use crate::store::lease::Lease;
use crate::store::reorg::{ReorgOutcome, ReorgRequest};
use crate::store::{self, Committed, Pool};

/// What the reader hands the writer, in stream order.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per batch, moved once through a bounded channel
pub enum Work {
    Batch(Prepared),
    Reorg(ReorgWork),
}

/// PostgreSQL refused the core rows of a batch (not only generic events): its entries must be
/// retried one by one.
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL refused a batch of {} entries: {reason}", entries.len())]
pub struct RejectedBatch {
    pub entries: Vec<EntryKey>,
    pub reason: String,
}

/// Identities of events PostgreSQL refused (dead-lettered): the reader forgets them, so a later
/// delivery of the identity is new.
pub type Forget = mpsc::UnboundedSender<Vec<(TxHash, i64)>>;

/// Everything the writer task uses.
#[derive(Debug)]
pub struct Writer {
    pub pool: Pool,
    pub redis: MultiplexedConnection,
    pub settings: SyncSettings,
    pub stats: Arc<SyncStats>,
    pub lease: Lease,
    /// The sequence number of the last batch committed, for the reader's cache
    /// (`Shards::release`).
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    pub forget: Forget,
    pub quarantine: Arc<Mutex<Quarantine>>,
}

/// A batch whose transaction runs on a task of its own (`store::commit_after`), so that it
/// writes its event-log rows while the batch before it commits.
struct InFlight {
    batch: Arc<Prepared>,
    started: Instant,
    task: JoinHandle<anyhow::Result<Committed>>,
    /// Resolves once this batch has committed: the gate of the batch after it.
    committed: Option<oneshot::Receiver<()>>,
}

/// What the writer loop waits for.
#[allow(clippy::large_enum_variant)] // one per turn of the loop, matched at once
enum Next {
    Work(Option<Work>),
    Done(Result<anyhow::Result<Committed>, tokio::task::JoinError>),
}

impl Writer {
    pub async fn run(self, mut rx: mpsc::Receiver<Work>) -> anyhow::Result<()> {
        // Dead letters recorded before a crash but not yet published.
        self.publish_dead_letters().await?;
        let mut in_flight = None;
        let result = self.run_loop(&mut rx, &mut in_flight).await;
        // Never return while a batch transaction may still commit: the next pipeline starts from
        // what is committed, with nothing of this one still writing.
        if let Some(f) = in_flight.take() {
            let _ = f.task.await;
        }
        result
    }

    /// Batches commit in order, two at a time at most: batch N+1's transaction begins (and
    /// writes its event-log rows) while batch N commits, and commits only after N has. Any
    /// failure of an overlapped commit falls back to committing again one batch at a time
    /// (`write_batch`: retries, isolation of refused events).
    async fn run_loop(
        &self,
        rx: &mut mpsc::Receiver<Work>,
        in_flight: &mut Option<InFlight>,
    ) -> anyhow::Result<()> {
        let mut last_trim = Instant::now();
        loop {
            let next = match in_flight.as_mut() {
                Some(f) => tokio::select! {
                    work = rx.recv() => Next::Work(work),
                    done = &mut f.task => Next::Done(done),
                },
                None => Next::Work(rx.recv().await),
            };
            match next {
                Next::Done(done) => {
                    let f = in_flight.take().expect("a batch was in flight");
                    self.settle(&f.batch, f.started, done).await?;
                }
                Next::Work(None) => return self.drain(in_flight).await,
                Next::Work(Some(Work::Batch(p))) => {
                    let mut previous = in_flight.take();
                    let gate = previous.as_mut().and_then(|f| f.committed.take());
                    let next = self.spawn_commit(Arc::new(p), gate);
                    match previous {
                        None => *in_flight = Some(next),
                        Some(f) => match f.task.await {
                            Ok(Ok(committed)) => {
                                *in_flight = Some(next);
                                self.after_commit(&f.batch, committed, f.started).await?;
                            }
                            failed => {
                                // `next` was folded on top of `f`: its gate never opens, so it
                                // rolls back; then both commit again, one after the other.
                                log_overlap_failure(&failed);
                                let _ = next.task.await;
                                self.write_batch(&f.batch).await?;
                                self.write_batch(&next.batch).await?;
                            }
                        },
                    }
                }
                Next::Work(Some(Work::Reorg(r))) => {
                    // Every earlier batch commits before the reorg is applied.
                    self.drain(in_flight).await?;
                    self.apply_reorg(r).await?;
                }
            }
            // INPUT_RETENTION=acked: at most once a second while batches queue up, and whenever
            // the writer has caught up with the reader.
            if self.settings.input_retention == InputRetention::Acked
                && (rx.is_empty() || last_trim.elapsed() >= TRIM_EVERY)
            {
                self.trim_inputs().await;
                last_trim = Instant::now();
            }
        }
    }

    /// Starts a batch's transaction on a task of its own; `after` is the gate of the batch
    /// before it (none when that one has committed already).
    fn spawn_commit(&self, batch: Arc<Prepared>, after: Option<oneshot::Receiver<()>>) -> InFlight {
        let (committed_tx, committed_rx) = oneshot::channel();
        let pool = self.pool.clone();
        let lease = self.lease.clone();
        let group = self.settings.consumer_group.clone();
        let timeout = self.settings.processing_timeout();
        let b = batch.clone();
        let task = tokio::spawn(async move {
            let mut conn = pool.get().await.context("taking a database connection")?;
            // The predecessor's task drops its sender unsent when it fails.
            let predecessor = async move {
                match after {
                    None => true,
                    Some(gate) => gate.await.is_ok(),
                }
            };
            let committed =
                store::commit_after(&mut conn, &group, &b.write, &lease, predecessor, timeout)
                    .await?;
            let _ = committed_tx.send(());
            Ok(committed)
        });
        InFlight {
            batch,
            started: Instant::now(),
            task,
            committed: Some(committed_rx),
        }
    }

    /// Waits for the batch in flight, if any, and settles it.
    async fn drain(&self, in_flight: &mut Option<InFlight>) -> anyhow::Result<()> {
        match in_flight.take() {
            Some(f) => {
                let done = f.task.await;
                self.settle(&f.batch, f.started, done).await
            }
            None => Ok(()),
        }
    }

    /// The end of a batch that had no successor in flight: its commit, or (if that failed) the
    /// batch committed again on its own.
    async fn settle(
        &self,
        p: &Prepared,
        started: Instant,
        done: Result<anyhow::Result<Committed>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        match done {
            Ok(Ok(committed)) => self.after_commit(p, committed, started).await,
            failed => {
                log_overlap_failure(&failed);
                self.write_batch(p).await
            }
        }
    }

    /// Trims acknowledged entries of the input streams. A failure is logged, not fatal: the next
    /// trim catches up.
    async fn trim_inputs(&self) {
        for name in &self.settings.redis_streams {
            let mut redis = self.redis.clone();
            match stream::trim_acknowledged(&mut redis, name).await {
                Ok(0) => {}
                Ok(n) => {
                    self.stats
                        .health
                        .metrics
                        .stream_trimmed_entries
                        .get_or_create(&StreamLabels {
                            stream: name.clone(),
                        })
                        .inc_by(n);
                }
                Err(e) => {
                    tracing::warn!(stream = %name, error = format!("{e:#}"), "cannot trim the input stream")
                }
            }
        }
    }

    /// Commits a batch on its own (retrying, isolating refused events), then settles it.
    async fn write_batch(&self, p: &Prepared) -> anyhow::Result<()> {
        let started = Instant::now();
        let committed = self.commit(p).await?;
        self.after_commit(p, committed, started).await
    }

    /// After a batch has committed: publishes its term updates and dead letters, acknowledges
    /// it, counts it.
    async fn after_commit(
        &self,
        p: &Prepared,
        committed: Committed,
        started: Instant,
    ) -> anyhow::Result<()> {
        self.committed
            .fetch_max(p.batch, std::sync::atomic::Ordering::Release);
        let commit_time = started.elapsed();
        let stats = &self.stats;
        stats.record_commit(commit_time);
        stats.health.record_success();
        if !committed.refused.is_empty() {
            let forget = committed
                .refused
                .iter()
                .map(|(i, _)| {
                    let e = &p.write.generic[*i];
                    (e.meta.transaction_hash, e.meta.log_index)
                })
                .collect();
            // The reader is gone only when the pipeline ends, and then it forgets everything.
            let _ = self.forget.send(forget);
        }
        self.publish_outbox(&committed, p).await?;
        self.settle_dead_letters(&committed).await?;
        self.ack(&p.acks).await?;
        let m = &stats.health.metrics;
        m.entries_acknowledged.inc_by(p.acks.len() as u64);
        m.batches_committed.inc();
        let mut by_type = p.new_by_type.clone();
        for (i, _) in &committed.refused {
            let name = p.write.generic[*i].kind.name();
            if let Some((_, n)) = by_type.iter_mut().find(|(t, _)| t == name) {
                *n = n.saturating_sub(1);
            }
        }
        for (event_type, n) in &by_type {
            m.events_processed
                .get_or_create(&EventLabels {
                    event_type: event_type.clone(),
                })
                .inc_by(*n);
        }
        m.events_duplicate.inc_by(p.duplicates as u64);
        m.events_conflicting.inc_by(p.conflicts as u64);
        m.database_write_duration_seconds
            .observe(commit_time.as_secs_f64());
        m.batch_size_entries.observe(p.acks.len() as f64);
        m.batch_size_events
            .observe((p.new_events + p.duplicates + p.conflicts) as f64);
        m.event_processing_duration_seconds
            .observe(p.read_at.elapsed().as_secs_f64());
        tracing::debug!(
            entries = p.acks.len(),
            new_events = p.new_events,
            commit_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// The batch transaction: all at once, or, if PostgreSQL refuses it, with the refused generic
    /// events left out.
    async fn commit(&self, p: &Prepared) -> anyhow::Result<Committed> {
        let group = self.settings.consumer_group.as_str();
        let retries = self.settings.max_retries;
        let timeout = self.settings.processing_timeout();
        let (pool, lease) = (&self.pool, &self.lease);
        let fast = with_retries("commit batch", retries, || async move {
            let mut conn = pool.get().await.context("taking a database connection")?;
            tokio::time::timeout(timeout, store::commit(&mut conn, group, &p.write, lease))
                .await
                .context("batch commit timed out (PROCESSING_TIMEOUT_MS)")?
        })
        .await;
        let refusal = match fast {
            Err(e) if failure::is_rejection(&e) => e,
            other => return other,
        };
        tracing::warn!(
            entries = p.acks.len(),
            generic_events = p.write.generic.len(),
            error = format!("{refusal:#}"),
            "PostgreSQL refused the batch; isolating the events it refuses"
        );
        let letter_for = |i: usize, why: &str| p.letter_for_generic(i, why);
        let letter_for: &(dyn Fn(usize, &str) -> DeadLetter + Send + Sync) = &letter_for;
        let isolating = with_retries(
            "commit batch (isolating refused events)",
            retries,
            || async move {
                let mut conn = pool.get().await.context("taking a database connection")?;
                store::commit_isolating(&mut conn, group, &p.write, lease, letter_for).await
            },
        )
        .await;
        match isolating {
            Err(e) if failure::is_rejection(&e) => Err(RejectedBatch {
                entries: p.acks.clone(),
                reason: failure::reason(&e),
            }
            .into()),
            other => {
                if let Ok(c) = &other {
                    for (i, why) in &c.refused {
                        let e = &p.write.generic[*i];
                        tracing::warn!(
                            transaction_hash = %e.meta.transaction_hash,
                            log_index = e.meta.log_index,
                            event_type = e.kind.name(),
                            error = %why,
                            "PostgreSQL refused an event; dead-lettered"
                        );
                    }
                }
                other
            }
        }
    }

    async fn publish_outbox(&self, committed: &Committed, p: &Prepared) -> anyhow::Result<()> {
        let Some(id) = committed.outbox else {
            return Ok(());
        };
        let term_stream = self.settings.analytics.term_updates_stream.as_str();
        let terms = &p.write.term_updates;
        with_retries("publish term updates", self.settings.max_retries, || {
            let mut redis = self.redis.clone();
            async move { stream::publish_term_updates(&mut redis, term_stream, terms).await }
        })
        .await?;
        let mut conn = self
            .pool
            .get()
            .await
            .context("taking a database connection")?;
        store::published(&mut conn, id).await
    }

    /// Logs and counts the dead letters a commit recorded, then publishes them.
    async fn settle_dead_letters(&self, committed: &Committed) -> anyhow::Result<()> {
        if committed.letters.is_empty() {
            return Ok(());
        }
        let m = &self.stats.health.metrics;
        for &i in &committed.new_dead_letters {
            let l = &committed.letters[i];
            tracing::warn!(stream = %l.source_stream, entry_id = %l.source_id, item = l.item_index, error = %l.error, "dead-lettered bad input");
            m.events_failed
                .get_or_create(&EventLabels {
                    event_type: event_type_of(&l.payload),
                })
                .inc();
        }
        let new = committed.new_dead_letters.len() as u64;
        m.dead_lettered_events.inc_by(new);
        self.publish_dead_letters().await
    }

    /// Publishes every recorded, unpublished dead letter of the group (each exactly once).
    async fn publish_dead_letters(&self) -> anyhow::Result<()> {
        let group = self.settings.consumer_group.as_str();
        loop {
            let mut conn = self
                .pool
                .get()
                .await
                .context("taking a database connection")?;
            let letters = dead_letters::unpublished(&mut conn, group, 1000).await?;
            drop(conn);
            if letters.is_empty() {
                return Ok(());
            }
            let letters = &letters;
            with_retries("dead-letter", self.settings.max_retries, || {
                let mut redis = self.redis.clone();
                async move { stream::publish_dead_letters(&mut redis, group, letters).await }
            })
            .await?;
            let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
            let mut conn = self
                .pool
                .get()
                .await
                .context("taking a database connection")?;
            dead_letters::mark_published(&mut conn, &ids).await?;
        }
    }

    async fn ack(&self, acks: &[EntryKey]) -> anyhow::Result<()> {
        let group = self.settings.consumer_group.as_str();
        with_retries("acknowledge", self.settings.max_retries, || {
            let mut redis = self.redis.clone();
            async move { stream::ack(&mut redis, group, acks).await }
        })
        .await?;
        if let Ok(mut q) = self.quarantine.lock() {
            q.settled(acks);
        }
        Ok(())
    }

    /// Applies a reorg notice (every earlier entry of its stream is committed by now), then
    /// acknowledges it. No processing timeout: its work grows with the events the notice orphans
    /// (a deep reorg can exceed a batch's). A notice PostgreSQL refuses is dead-lettered instead.
    async fn apply_reorg(&self, r: ReorgWork) -> anyhow::Result<()> {
        let group = self.settings.consumer_group.as_str();
        let retries = self.settings.max_retries;
        let started = Instant::now();
        tracing::warn!(
            stream = %r.stream,
            entry_id = %r.entry_id,
            network = r.notice.network.as_deref().unwrap_or("(every network)"),
            fork_block = r.notice.fork_block,
            depth = r.notice.depth,
            "reorg notice: rolling back the event log"
        );
        let request = ReorgRequest {
            group,
            stream: &r.stream,
            entry_id: &r.entry_id,
            notice: &r.notice,
            lease: Some(&self.lease),
        };
        let applied = with_retries("apply reorg", retries, || {
            let pool = self.pool.clone();
            async move {
                let mut conn = pool.get().await.context("taking a database connection")?;
                store::reorg::apply(&mut conn, request).await
            }
        })
        .await;
        let outcome = match applied {
            Ok(o) => o,
            Err(e) if failure::is_rejection(&e) => return self.refuse_reorg(&r, &e).await,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reorg notice {} of stream {}", r.entry_id, r.stream))
            }
        };
        let acks = [(r.stream.clone(), r.entry_id.clone())];
        self.ack(&acks).await?;
        let m = &self.stats.health.metrics;
        m.entries_acknowledged.inc();
        match &outcome {
            ReorgOutcome::AlreadyApplied => tracing::info!(
                stream = %r.stream,
                entry_id = %r.entry_id,
                "reorg notice was applied before (redelivered): nothing to do"
            ),
            ReorgOutcome::Applied {
                reorg_id,
                moved,
                recomputed,
            } => {
                let events_moved = outcome.events_moved();
                m.reorgs.inc();
                m.reorg_events_moved.inc_by(events_moved as u64);
                tracing::warn!(
                    reorg_id,
                    network = r.notice.network.as_deref().unwrap_or("(every network)"),
                    fork_block = r.notice.fork_block,
                    events_moved,
                    per_table = ?moved.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>(),
                    keys_recomputed = recomputed.keys,
                    events_read = recomputed.events_read,
                    rows_written = recomputed.rows_written,
                    rows_deleted = recomputed.rows_deleted,
                    triples_withdrawn = recomputed.triples_withdrawn,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reorg applied: orphaned events moved to reorged_events, the rows they touched recomputed"
                );
            }
        }
        Ok(())
    }

    /// Dead-letters a reorg notice PostgreSQL refused, and acknowledges it.
    async fn refuse_reorg(&self, r: &ReorgWork, e: &anyhow::Error) -> anyhow::Result<()> {
        let group = self.settings.consumer_group.as_str();
        let letter = DeadLetter {
            source_stream: r.stream.clone(),
            source_id: r.entry_id.clone(),
            item_index: WHOLE_ENTRY,
            payload: r.payload.clone(),
            error: failure::reason(e),
        };
        tracing::error!(stream = %r.stream, entry_id = %r.entry_id, error = %letter.error, "PostgreSQL refused a reorg notice; dead-lettered");
        let mut progress = Vec::new();
        note_progress(
            &mut progress,
            &Entry {
                stream: r.stream.clone(),
                id: r.entry_id.clone(),
                payload: None,
            },
        );
        let letters = [letter];
        let new = with_retries(
            "dead-letter a reorg notice",
            self.settings.max_retries,
            || {
                let (pool, letters, progress) = (self.pool.clone(), &letters, &progress);
                async move {
                    let mut conn = pool.get().await.context("taking a database connection")?;
                    store::commit_dead_letters(&mut conn, group, letters, progress, &self.lease)
                        .await
                }
            },
        )
        .await?;
        let committed = Committed {
            new_dead_letters: new,
            letters: letters.to_vec(),
            ..Committed::default()
        };
        self.settle_dead_letters(&committed).await?;
        self.ack(&[(r.stream.clone(), r.entry_id.clone())]).await
    }
}

/// An overlapped commit that failed is committed again on its own, which logs what it meets; the
/// first failure is logged here (a rolled-back successor is not a failure of its own).
fn log_overlap_failure(failed: &Result<anyhow::Result<Committed>, tokio::task::JoinError>) {
    match failed {
        Ok(Err(e)) if e.is::<store::PredecessorFailed>() => {}
        Ok(Err(e)) => tracing::warn!(
            error = format!("{e:#}"),
            "batch commit failed; committing it again on its own"
        ),
        Err(e) => {
            tracing::error!(error = %e, "the batch commit task failed; committing the batch again on its own")
        }
        Ok(Ok(_)) => {}
    }
}

/// The event name of a dead-lettered payload, for the failure metric ("unknown" when unreadable).
fn event_type_of(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("event_name")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
