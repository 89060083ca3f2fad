//! The analytics consumer: `term_updates` → triple_vault, triple_term, predicate_object,
//! subject_predicate, eventually consistent with the base tables (SPEC §2, §6).
//!
//! Each batch takes many term-update entries, de-duplicates their term ids, finds the triples
//! those terms belong to (as pro or counter term), recomputes only those triples' rows from the
//! vault table, and moves each triple's contribution between the pair aggregates it counts into:
//! the stored rows of those pairs are read, loaded into `domain::analytics::PairAggregate`s (the
//! fold's own primitive, exact in 512 bits), moved with remove/add and written back as absolute
//! values (`domain::analytics::recompute`). One transaction per batch, then XACK: a crash loses
//! nothing (the entries stay pending) and a redelivery recomputes the same rows.
//!
//! Failures (SPEC §4): a transient one is retried (`MAX_RETRIES`), then the consumer backs off
//! and restarts, acknowledging nothing, on **its own** circuit breaker (`health::Breaker::
//! Analytics`), which it waits out before trying again; sync's breaker never sees it. A batch
//! that PostgreSQL *rejects* ([`failure::Class::Rejected`]) is narrowed down by bisection
//! ([`narrow`]) to the term ids it refuses: the rest commits, each refused term is logged at
//! ERROR and counted (`analytics_rejected_terms_total`), and the entries are acknowledged, so no
//! input can wedge the consumer.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use diesel_async::AsyncConnection;
use redis::AsyncCommands;
use tokio::sync::watch;

use crate::config::AnalyticsRun;
use crate::domain::analytics::{recompute, touched_pairs};
use crate::domain::rows::TripleTermRow;
use crate::domain::TermId;
use crate::health::Breaker;
use crate::ingest::stream::{self, EntrySource, GroupReader, TERM_IDS_FIELD};
use crate::store;
use crate::store::analytics::{self as sql, AnalyticsWrite};
use crate::store::failure::{self, with_retries, Class};

/// What the running consumer shares beyond its metrics (`analytics_*`, the one source of its
/// counters): when it committed first and last, for the bench.
#[derive(Debug, Default)]
pub struct AnalyticsStats {
    /// Metrics, circuit breaker and role, shared with sync and the HTTP server.
    pub health: Arc<crate::health::Health>,
    pub first_commit: Mutex<Option<Instant>>,
    pub last_commit: Mutex<Option<Instant>>,
}

/// Runs until `shutdown` resolves (finishing the batch in flight); restarts after failures.
pub async fn run(
    run: AnalyticsRun,
    stats: Arc<AnalyticsStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = crate::health::stop_flag(shutdown);
    crate::health::supervise(
        &stats.health,
        Breaker::Analytics,
        "analytics consumer",
        stop,
        |stop| {
            let (run, stats) = (&run, &stats);
            async move {
                consume(run, stats, stop).await?;
                Ok(crate::health::Next::Stop)
            }
        },
    )
    .await
}

async fn consume(
    run: &AnalyticsRun,
    stats: &AnalyticsStats,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = store::pool(&run.connections.database_url, 1).await?;
    let group = run.settings.group();
    let conn = stream::connect(&run.connections.redis_url, run.connections.redis_ca_cert()).await?;
    let acker = conn.clone();
    let mut reader = GroupReader::new(
        conn,
        vec![run.settings.term_updates_stream.clone()],
        group.clone(),
        run.consumer.clone(),
        &[TERM_IDS_FIELD],
    )
    .await?;
    reader.restart_history();
    let mut source = EntrySource::new(
        run.settings.analytics_batch_size as usize,
        run.block,
        run.processing_timeout,
    );
    tracing::info!(stream = %run.settings.term_updates_stream, group = %group, "analytics consuming");
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let entries = tokio::select! {
            r = source.next(&mut reader) => r?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        if entries.is_empty() {
            continue;
        }
        let mut terms = BTreeSet::new();
        for e in &entries {
            let text = e
                .payload
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            for id in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if id.len() == 66
                    && id.starts_with("0x")
                    && id[2..].bytes().all(|b| b.is_ascii_hexdigit())
                {
                    terms.insert(id.to_ascii_lowercase());
                } else {
                    tracing::warn!(entry_id = %e.id, term_id = id, "ignoring a malformed term id in term_updates");
                }
            }
        }
        let terms: Vec<String> = terms.into_iter().collect();
        let done = commit(run, &pool, &terms, stats).await?;
        let acks: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.stream.clone(), e.id.clone()))
            .collect();
        with_retries("acknowledge term updates", run.max_retries, || {
            let (mut c, acks, group) = (acker.clone(), &acks, &group);
            async move { stream::ack(&mut c, group, acks).await }
        })
        .await?;
        // term_updates is ours: what every group on it acknowledged goes at once (a failure is
        // not fatal; the next batch trims it).
        let mut trimmer = acker.clone();
        match stream::trim_acknowledged(&mut trimmer, &run.settings.term_updates_stream).await {
            Ok(0) => {}
            Ok(n) => {
                stats
                    .health
                    .metrics
                    .stream_trimmed_entries
                    .get_or_create(&crate::metrics::StreamLabels {
                        stream: run.settings.term_updates_stream.clone(),
                    })
                    .inc_by(n);
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "cannot trim the term_updates stream"
            ),
        }
        let m = &stats.health.metrics;
        m.analytics_entries.inc_by(entries.len() as u64);
        m.analytics_terms.inc_by(terms.len() as u64);
        m.analytics_triples.inc_by(done.triples as u64);
        m.analytics_batches.inc_by(done.transactions as u64);
        m.analytics_rows_written.inc_by(done.rows as u64);
        stats.health.success_of(Breaker::Analytics);
        if let Ok(mut t) = stats.last_commit.lock() {
            *t = Some(Instant::now());
        }
        if let Ok(mut t) = stats.first_commit.lock() {
            t.get_or_insert_with(Instant::now);
        }
    }
}

/// What committing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Committed {
    triples: usize,
    rows: usize,
    /// Transactions committed: 1, or the parts of a narrowed batch.
    transactions: usize,
}

/// Commits the batch of `terms`: in one transaction, or, if PostgreSQL rejects it, in the parts
/// [`narrow`] finds, skipping the refused terms (logged at ERROR, counted). A transient failure
/// is returned (the caller acknowledges nothing).
async fn commit(
    run: &AnalyticsRun,
    pool: &store::Pool,
    terms: &[String],
    stats: &AnalyticsStats,
) -> anyhow::Result<Committed> {
    let error = match attempt(run, pool, terms.to_vec()).await {
        Ok((triples, rows)) => {
            return Ok(Committed {
                triples,
                rows,
                transactions: 1,
            })
        }
        Err(e) if failure::classify(&e) == Class::Rejected => e,
        Err(e) => return Err(e),
    };
    tracing::warn!(
        error = format!("{error:#}"),
        terms = terms.len(),
        "PostgreSQL rejected an analytics batch; narrowing it down to the terms it refuses"
    );
    let found = narrow(terms, error, |part| attempt(run, pool, part)).await?;
    for (term, e) in &found.refused {
        tracing::error!(
            term_id = %term,
            error = failure::reason(e),
            "PostgreSQL refuses the analytics rows of this term: skipped and acknowledged \
             (its triple-level rows stay as they were; `replay` rebuilds them)"
        );
    }
    let refused = found.refused.len() as u64;
    stats
        .health
        .metrics
        .analytics_rejected_terms
        .inc_by(refused);
    Ok(found
        .committed
        .iter()
        .fold(Committed::default(), |acc, &(triples, rows)| Committed {
            triples: acc.triples + triples,
            rows: acc.rows + rows,
            transactions: acc.transactions + 1,
        }))
}

/// One try of `terms` in its own transaction, transient failures retried (`MAX_RETRIES`); a
/// rejection is returned at once (retrying it would only be refused again).
async fn attempt(
    run: &AnalyticsRun,
    pool: &store::Pool,
    terms: Vec<String>,
) -> anyhow::Result<(usize, usize)> {
    with_retries("analytics batch", run.max_retries, || {
        let (pool, terms) = (pool.clone(), &terms);
        async move {
            let once = async {
                let mut conn = pool.get().await.context("taking a database connection")?;
                tokio::time::timeout(run.processing_timeout, apply(&mut conn, terms))
                    .await
                    .context("analytics batch timed out (PROCESSING_TIMEOUT_MS)")?
            };
            match once.await {
                Err(e) if failure::classify(&e) == Class::Rejected => Ok(Err(e)),
                other => other.map(Ok),
            }
        }
    })
    .await?
}

/// What [`narrow`] found.
#[derive(Debug)]
pub struct Narrowed<T, R> {
    /// The result of each part that committed.
    pub committed: Vec<R>,
    /// The items refused, each with the rejection of its own try.
    pub refused: Vec<(T, anyhow::Error)>,
}

/// Narrows a batch that was rejected (with `error`) down to the items that are refused on their
/// own: splits it in halves and tries each with `attempt` (its own transaction), splitting a
/// rejected part again, until the parts commit or single items are refused. Every item ends in
/// exactly one committed part or in `refused`; with k refused items of n, about 2·k·log₂ n tries.
/// A transient failure of any try ends the search with that error: nothing is acknowledged and
/// the batch comes again (parts already committed recompute to the same rows).
pub async fn narrow<T, R, F, Fut>(
    items: &[T],
    error: anyhow::Error,
    mut attempt: F,
) -> anyhow::Result<Narrowed<T, R>>
where
    T: Clone,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let mut found = Narrowed {
        committed: Vec::new(),
        refused: Vec::new(),
    };
    if let [one] = items {
        found.refused.push((one.clone(), error));
        return Ok(found);
    }
    // Parts still to try, as ranges of `items`; the last pushed is tried first (left to right).
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    let split = |r: std::ops::Range<usize>, todo: &mut Vec<std::ops::Range<usize>>| {
        let mid = r.start + r.len() / 2;
        todo.push(mid..r.end);
        todo.push(r.start..mid);
    };
    split(0..items.len(), &mut todo);
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        match attempt(items[part.clone()].to_vec()).await {
            Ok(r) => found.committed.push(r),
            Err(e) if failure::classify(&e) == Class::Rejected => {
                if part.len() == 1 {
                    found.refused.push((items[part.start].clone(), e));
                } else {
                    split(part, &mut todo);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// One batch in one transaction: returns (triples recomputed, rows written).
async fn apply(
    conn: &mut diesel_async::AsyncPgConnection,
    terms: &[String],
) -> anyhow::Result<(usize, usize)> {
    conn.transaction(async |conn| {
        sql::lock(conn).await?;
        let triples = sql::affected_triples(conn, terms).await?;
        if triples.is_empty() {
            return Ok((0, 0));
        }
        let ids: Vec<String> = triples
            .iter()
            .flat_map(|t| [t.term_id.to_string(), t.counter_term_id.to_string()])
            .collect();
        let mut vaults: HashMap<TermId, Vec<_>> = HashMap::new();
        for (term, curve, figures) in sql::vault_figures(conn, &ids).await? {
            vaults.entry(term).or_default().push((curve, figures));
        }
        let pros: Vec<String> = triples.iter().map(|t| t.term_id.to_string()).collect();
        let stored: HashMap<TermId, TripleTermRow> = sql::triple_terms(conn, &pros)
            .await?
            .into_iter()
            .map(|r| (r.term_id, r))
            .collect();
        let (po_keys, sp_keys) = touched_pairs(&triples);
        let stored_po = sql::pair_rows(conn, sql::PREDICATE_OBJECT, &po_keys).await?;
        let stored_sp = sql::pair_rows(conn, sql::SUBJECT_PREDICATE, &sp_keys).await?;
        let r = recompute(&triples, &vaults, &stored, &stored_po, &stored_sp);
        let rows = r.triple_vaults.len()
            + r.triple_terms.len()
            + r.predicate_object.len()
            + r.subject_predicate.len();
        let write = AnalyticsWrite {
            triple_vaults: r.triple_vaults,
            triples: pros,
            triple_terms: r.triple_terms,
            predicate_object: r.predicate_object,
            subject_predicate: r.subject_predicate,
        };
        sql::write(conn, &write).await?;
        Ok((triples.len(), rows))
    })
    .await
}

/// How far a consumer group is behind on a stream.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Lag {
    /// Entries not yet delivered to the group.
    pub undelivered: u64,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Age of the oldest entry not yet acknowledged, in seconds (0 when caught up).
    pub seconds: f64,
}

impl Lag {
    pub fn caught_up(&self) -> bool {
        self.undelivered == 0 && self.pending == 0
    }
}

/// The lag of `group` on `stream` (missing stream or group: nothing to do, lag 0).
pub async fn lag(
    conn: &mut redis::aio::MultiplexedConnection,
    stream_name: &str,
    group: &str,
) -> anyhow::Result<Lag> {
    let info: redis::streams::StreamInfoGroupsReply = match conn.xinfo_groups(stream_name).await {
        Ok(i) => i,
        Err(e) if e.to_string().contains("no such key") => return Ok(Lag::default()),
        Err(e) => return Err(e).with_context(|| format!("reading groups of stream {stream_name}")),
    };
    let Some(g) = info.groups.into_iter().find(|g| g.name == group) else {
        return Ok(Lag::default());
    };
    let undelivered = g.lag.unwrap_or(0) as u64;
    let pending = g.pending as u64;
    // The oldest unacknowledged entry: the smallest pending id, else the first undelivered one.
    let oldest: Option<String> = if pending > 0 {
        let summary: redis::streams::StreamPendingReply = conn
            .xpending(stream_name, group)
            .await
            .context("XPENDING")?;
        match summary {
            redis::streams::StreamPendingReply::Data(d) => Some(d.start_id),
            _ => None,
        }
    } else if undelivered > 0 {
        let next: redis::streams::StreamRangeReply = conn
            .xrange_count(stream_name, format!("({}", g.last_delivered_id), "+", 1)
            .await
            .context("XRANGE")?;
        next.ids.first().map(|s| s.id.clone())
    } else {
        None
    };
    let seconds = oldest
        .and_then(|id| id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()))
        .map(|ms| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            now.saturating_sub(ms) as f64 / 1000.0
        })
        .unwrap_or(0.0);
    Ok(Lag {
        undelivered,
        pending,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error as DieselError};

    fn rejected(message: &str) -> anyhow::Error {
        anyhow::Error::new(DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(message.to_owned()),
        ))
        .context("writing predicate_object")
    }

    /// Runs [`narrow`] over `0..n` with a try that is rejected whenever its part holds an item
    /// of `bad`: returns (committed parts, refused items, number of tries).
    async fn run(n: u32, bad: &[u32]) -> (Vec<Vec<u32>>, Vec<u32>, usize) {
        let items: Vec<u32> = (0..n).collect();
        let mut tries = 0;
        let found = narrow(
            &items,
            rejected("numeric field overflow"),
            |part: Vec<u32>| {
                tries += 1;
                std::future::ready(if part.iter().any(|i| bad.contains(i)) {
                    Err(rejected("numeric field overflow"))
                } else {
                    Ok(part)
                })
            },
        )
        .await
        .expect("no transient failure");
        assert!(found
            .refused
            .iter()
            .all(|(_, e)| failure::classify(e) == Class::Rejected
                && format!("{e:#}").contains("numeric field overflow")));
        let refused = found.refused.into_iter().map(|(t, _)| t).collect();
        (found.committed, refused, tries)
    }

    #[tokio::test]
    async fn narrow_isolates_exactly_the_refused_items_and_commits_the_rest_once() {
        for n in 1..=33u32 {
            for bad in [
                vec![],
                vec![0],
                vec![n - 1],
                vec![n / 2],
                vec![0, n / 3, n - 1],
            ] {
                let mut bad = bad;
                bad.sort_unstable();
                bad.dedup();
                if n == 1 && bad.is_empty() {
                    continue; // a batch of one that was rejected is refused without a try
                }
                let (committed, mut refused, tries) = run(n, &bad).await;
                refused.sort_unstable();
                assert_eq!(refused, bad, "n = {n}");
                let mut all: Vec<u32> = committed.iter().flatten().copied().collect();
                all.extend(&refused);
                all.sort_unstable();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "each item once, n = {n}");
                let depth = (32 - n.leading_zeros()) as usize;
                assert!(
                    tries <= 2 + 2 * bad.len().max(1) * depth,
                    "{tries} tries for n = {n}, bad = {bad:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn narrow_of_one_item_refuses_it_without_another_try() {
        let found = narrow(
            &["0xab"],
            rejected("value overflows numeric format"),
            |_| std::future::ready(Ok::<(), anyhow::Error>(())),
        )
        .await
        .expect("no try");
        assert!(found.committed.is_empty());
        assert_eq!(found.refused.len(), 1);
        assert_eq!(found.refused[0].0, "0xab");
    }

    #[tokio::test]
    async fn narrow_stops_at_a_transient_failure() {
        let items: Vec<u32> = (0..8).collect();
        let mut tries = 0;
        let out = narrow(
            &items,
            rejected("numeric field overflow"),
            |part: Vec<u32>| {
                tries += 1;
                std::future::ready(match tries {
                    1 => Ok(part),
                    _ => Err(anyhow::anyhow!("connection refused (os error 111)")),
                })
            },
        )
        .await;
        let e = out.expect_err("the transient failure is returned");
        assert_eq!(failure::classify(&e), Class::Transient);
        assert_eq!(tries, 2, "nothing tried after it");
    }

    #[tokio::test]
    async fn a_batch_rejected_by_a_fluke_commits_in_parts() {
        let (committed, refused, _) = run(10, &[]).await;
        assert!(refused.is_empty());
        assert_eq!(
            committed,
            vec![(0..5).collect::<Vec<_>>(), (5..10).collect()]
        );
    }
}
