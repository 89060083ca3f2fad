//! Rebuilding every derived table from the event log (the `replay` subcommand, and reorgs):
//! load the event log, fold it with the full [`State`] (analytics included), then, inside the
//! caller's transaction, delete every row of the nine derived tables and insert the fold's rows,
//! set-based ([`RowSet`]s). Until the transaction commits, readers keep seeing the old rows
//! (MVCC); after it, they see f(E) for the event log E that was read.
//!
//! **Architecture Invariant:** nothing changes the event log while a rebuild reads it and writes
//! its fold: the rebuild holds SHARE locks on the event tables (a sync batch commit waits for it)
//! and the analytics lock (an analytics batch waits for it), both until its transaction ends.

use anyhow::Context;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::load::{load_events_with, DERIVED, EVENT_LOG};
use super::rows;
use super::rowset::{OnConflict, RowSet};
use crate::domain::{Changes, Event, State, Tables};

/// Rows per INSERT statement: one array parameter per column, kept far below Postgres's 1 GB
/// limit on a single value.
const CHUNK: usize = 50_000;
/// Events folded between two progress reports.
const FOLD_STEP: usize = 100_000;

/// What a rebuild (or a fold of the event log) is doing, for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Event table `table` was read; `events` events are loaded so far.
    Loading { table: &'static str, events: usize },
    /// `done` of `total` events folded.
    Folding { done: usize, total: usize },
    /// Writing table `table`; `done` of `total` rows of all nine tables are written.
    Writing {
        table: &'static str,
        done: usize,
        total: usize,
    },
}

/// A progress callback.
pub type Progress<'a> = &'a mut (dyn FnMut(Step) + Send);

/// What a rebuild wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Distinct events in the event log.
    pub events: usize,
    /// Rows written per derived table, in SPEC order.
    pub rows: Vec<(&'static str, usize)>,
}

/// The `replay` operation: rebuilds every derived table from the event log, in one transaction.
pub async fn replay(
    conn: &mut AsyncPgConnection,
    progress: Progress<'_>,
) -> anyhow::Result<Rebuilt> {
    conn.transaction(async |conn| rebuild(conn, progress).await)
        .await
}

/// Rebuilds every derived table from the event log, inside the caller's transaction (see the
/// module docs for the locks it takes).
pub async fn rebuild(
    conn: &mut AsyncPgConnection,
    progress: Progress<'_>,
) -> anyhow::Result<Rebuilt> {
    super::analytics::lock(conn).await?;
    lock_event_log(conn, "SHARE").await?;
    let (events, tables) = fold_event_log(conn, progress).await?;
    let rows = write_tables(conn, tables, progress).await?;
    // The rows now hold what the fold continues from (migration `fold_continuation`).
    diesel::sql_query("DELETE FROM fold_upgrade")
        .execute(conn)
        .await
        .context("clearing table fold_upgrade")?;
    Ok(Rebuilt { events, rows })
}

/// Whether base rows written before the migration `fold_continuation` still lack what the fold
/// continues from (then the service rebuilds once before it writes).
pub async fn upgrade_pending(conn: &mut AsyncPgConnection) -> anyhow::Result<bool> {
    #[derive(diesel::QueryableByName)]
    struct Pending {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        pending: bool,
    }
    let rows: Vec<Pending> = diesel::sql_query("SELECT pending FROM fold_upgrade")
        .load(conn)
        .await
        .context("reading table fold_upgrade")?;
    Ok(rows.iter().any(|r| r.pending))
}

/// [`replay`] by the holder of the writer `lease` (fenced first, as every batch).
pub async fn replay_fenced(
    conn: &mut AsyncPgConnection,
    lease: &super::lease::Lease,
) -> anyhow::Result<Rebuilt> {
    conn.transaction(async |conn| {
        super::lease::fence(conn, lease).await?;
        rebuild(conn, &mut |_| {}).await
    })
    .await
}

/// Locks the six event tables in `mode` until the transaction ends (waiting for transactions
/// that are writing them).
pub async fn lock_event_log(conn: &mut AsyncPgConnection, mode: &str) -> anyhow::Result<()> {
    diesel::sql_query(format!(
        "LOCK TABLE {} IN {mode} MODE",
        EVENT_LOG.join(", ")
    ))
    .execute(conn)
    .await
    .with_context(|| format!("locking the event log tables in {mode} mode"))?;
    Ok(())
}

/// Reads the event log and folds it: the number of distinct events and every derived table.
pub async fn fold_event_log(
    conn: &mut AsyncPgConnection,
    progress: Progress<'_>,
) -> anyhow::Result<(usize, Tables)> {
    let events = load_events_with(conn, None, &mut |table, events| {
        progress(Step::Loading { table, events })
    })
    .await?;
    Ok(cpu_bound(|| fold_tables(events, progress)))
}

/// Folds `events` with the full state (analytics included), as [`crate::domain::fold`] does,
/// reporting progress: the number of distinct events and every derived table.
pub fn fold_tables(events: Vec<Event>, progress: Progress<'_>) -> (usize, Tables) {
    let total = events.len();
    let mut state = State::new();
    let mut changes = Changes::default();
    progress(Step::Folding { done: 0, total });
    let mut done = 0;
    for chunk in events.chunks(FOLD_STEP) {
        for e in chunk {
            state.apply(e, &mut changes);
        }
        // Nobody reads the changed keys of a whole fold: keep memory flat.
        changes.clear();
        done += chunk.len();
        progress(Step::Folding { done, total });
    }
    drop(events);
    state.refresh_analytics(&mut changes);
    (state.event_count(), state.tables())
}

/// Runs CPU-heavy work without stalling the runtime's other tasks (on a multi-thread runtime).
fn cpu_bound<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Replaces the rows of the nine derived tables by `tables`.
async fn write_tables(
    conn: &mut AsyncPgConnection,
    tables: Tables,
    progress: Progress<'_>,
) -> anyhow::Result<Vec<(&'static str, usize)>> {
    let counts = tables.row_counts();
    let total = counts.iter().map(|(_, n)| n).sum();
    // DELETE, not TRUNCATE: TRUNCATE would lock readers out until commit.
    for shape in &DERIVED {
        diesel::sql_query(format!("DELETE FROM {}", shape.name))
            .execute(conn)
            .await
            .with_context(|| format!("emptying table {}", shape.name))?;
    }
    let Tables {
        atom,
        triple,
        position,
        vault,
        term,
        triple_vault,
        triple_term,
        predicate_object,
        subject_predicate,
    } = tables;
    let mut w = TableWriter {
        conn,
        done: 0,
        total,
        progress,
    };
    w.write("atom", atom.into_values(), rows::atom_rows).await?;
    w.write("triple", triple.into_values(), rows::triple_rows)
        .await?;
    w.write("position", position.into_values(), rows::position_rows)
        .await?;
    w.write("vault", vault.into_values(), rows::vault_rows)
        .await?;
    w.write("term", term.into_values(), rows::term_rows).await?;
    w.write("triple_vault", triple_vault.into_values(), |c| {
        rows::triple_vault_rows(&c)
    })
    .await?;
    w.write("triple_term", triple_term.into_values(), |c| {
        rows::triple_term_rows(&c)
    })
    .await?;
    w.write(
        "predicate_object",
        predicate_object.into_values(),
        rows::predicate_object_rows,
    )
    .await?;
    w.write(
        "subject_predicate",
        subject_predicate.into_values(),
        rows::subject_predicate_rows,
    )
    .await?;
    Ok(counts.to_vec())
}

struct TableWriter<'c, 'p> {
    conn: &'c mut AsyncPgConnection,
    done: usize,
    total: usize,
    progress: Progress<'p>,
}

impl TableWriter<'_, '_> {
    /// Inserts `rows` into the emptied `table`, [`CHUNK`] rows per statement.
    async fn write<T: Send>(
        &mut self,
        table: &'static str,
        mut rows: impl Iterator<Item = T> + Send,
        build: impl Fn(Vec<T>) -> RowSet + Send,
    ) -> anyhow::Result<()> {
        (self.progress)(Step::Writing {
            table,
            done: self.done,
            total: self.total,
        });
        loop {
            let chunk: Vec<T> = rows.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            let n = chunk.len();
            let mut set = build(chunk);
            debug_assert_eq!(set.table, table);
            // No conflict target: the table was emptied in this transaction and the fold's keys
            // are unique, so a conflict would be a bug, and fails the rebuild.
            set.on_conflict = OnConflict::Fail;
            set.write(self.conn)
                .await
                .with_context(|| format!("writing table {table}"))?;
            self.done += n;
            (self.progress)(Step::Writing {
                table,
                done: self.done,
                total: self.total,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fold;
    use crate::fixture::read_events;

    #[test]
    fn fold_tables_equals_the_reference_fold_and_reports_progress() {
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        let reference = fold(&events);
        let mut steps = Vec::new();
        let (n, tables) = fold_tables(events.clone(), &mut |s| steps.push(s));
        assert_eq!(n, reference.event_count());
        assert_eq!(tables, reference.tables());
        assert_eq!(
            <[Step]>::first(&steps),
            Some(&Step::Folding {
                done: 0,
                total: events.len()
            })
        );
        assert_eq!(
            steps.last(),
            Some(&Step::Folding {
                done: events.len(),
                total: events.len()
            })
        );
    }
}
