//! Rebuilding every derived table from the event log (the `replay` subcommand and the one-time
//! upgrade at start; reorgs recompute only the keys they touch, `store::reorg`), in bounded
//! memory: inside the caller's transaction, delete every row of the nine derived tables, then
//! fold the event log key range by key range ([`partition`]: each range's events, the base rows
//! of its terms, the triple-level rows of its triples) and insert each range's rows as soon as it
//! is folded, set-based ([`RowSet`]s of at most `CHUNK` rows); the pair tables
//! (predicate_object, subject_predicate) last, from the aggregates kept across ranges. Until the
//! transaction commits, readers keep seeing the old rows (MVCC); after it, they see f(E) for the
//! event log E that was read.
//!
//! Memory is one range's events and rows plus the pair aggregates and the triple ids, not the
//! whole log: the number of ranges grows with the log ([`Ranges::for_events`]).
//!
//! **Architecture Invariant:** nothing changes the event log while a rebuild reads it and writes
//! its fold: the rebuild holds SHARE locks on the event tables (a sync batch commit waits for it)
//! and the analytics lock (an analytics batch waits for it), both until its transaction ends.

use anyhow::Context;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::load::{self, EVENT_LOG};
use super::partition::{self, Plan, Ranges, Sink, Stored};
use super::rows;
use super::rowset::{OnConflict, RowSet};
use super::tables::derived::DERIVED_NAMES;
use crate::domain::Tables;

/// Rows per INSERT statement: one array parameter per column, kept far below Postgres's 1 GB
/// limit on a single value.
const CHUNK: usize = 50_000;

/// What a rebuild (or a fold of the event log by `verify`) is doing, for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `done` of `total` key ranges folded (and written, or compared); `events` events of the
    /// log accounted for so far (the generic ones from the start: they fold to no row).
    Range {
        done: usize,
        total: usize,
        events: usize,
    },
    /// After the last range: writing (or comparing) the `rows` rows of the two pair tables.
    Pairs { rows: usize },
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
    /// Key ranges the event log was folded in.
    pub ranges: usize,
}

/// The `replay` operation: rebuilds every derived table from the event log, in one transaction.
pub async fn replay(
    conn: &mut AsyncPgConnection,
    progress: Progress<'_>,
) -> anyhow::Result<Rebuilt> {
    replay_in(conn, None, progress).await
}

/// [`replay`] in `ranges` key ranges (`None`: as many as the log's size calls for).
pub async fn replay_in(
    conn: &mut AsyncPgConnection,
    ranges: Option<Ranges>,
    progress: Progress<'_>,
) -> anyhow::Result<Rebuilt> {
    conn.transaction(async |conn| rebuild_in(conn, ranges, progress).await)
        .await
}

/// Rebuilds every derived table from the event log, inside the caller's transaction (see the
/// module docs for the locks it takes).
pub async fn rebuild(
    conn: &mut AsyncPgConnection,
    progress: Progress<'_>,
) -> anyhow::Result<Rebuilt> {
    rebuild_in(conn, None, progress).await
}

/// [`rebuild`] in `ranges` key ranges (`None`: as many as the log's size calls for).
pub async fn rebuild_in(
    conn: &mut AsyncPgConnection,
    ranges: Option<Ranges>,
    progress: Progress<'_>,
) -> anyhow::Result<Rebuilt> {
    super::analytics::lock(conn).await?;
    lock_event_log(conn, "SHARE").await?;
    let (core, generic) = load::count_events(conn).await?;
    let ranges = ranges.unwrap_or(Ranges::for_events(core));
    empty_derived_tables(conn).await?;
    let mut writer = Stored {
        conn,
        generic,
        sink: Inserter,
    };
    let plan = Plan {
        ranges,
        analytics: true,
    };
    let folded = partition::run(&mut writer, plan, progress).await?;
    // The rows now hold what the fold continues from (migration `fold_continuation`).
    diesel::sql_query("DELETE FROM fold_upgrade")
        .execute(conn)
        .await
        .context("clearing table fold_upgrade")?;
    Ok(Rebuilt {
        events: folded.events,
        rows: folded.rows,
        ranges: ranges.count(),
    })
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

/// Runs CPU-heavy work without stalling the runtime's other tasks (on a multi-thread runtime).
pub(crate) fn cpu_bound<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Deletes every row of the nine derived tables. DELETE, not TRUNCATE: TRUNCATE would lock
/// readers out until commit.
async fn empty_derived_tables(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    for table in DERIVED_NAMES {
        diesel::sql_query(format!("DELETE FROM {table}"))
            .execute(conn)
            .await
            .with_context(|| format!("emptying table {table}"))?;
    }
    Ok(())
}

/// The rebuild's [`Sink`]: inserts each range's rows, then the pair rows, into the emptied
/// tables.
struct Inserter;

impl Sink for Inserter {
    async fn range_rows(
        &mut self,
        conn: &mut AsyncPgConnection,
        _: Ranges,
        _: usize,
        rows: Tables,
    ) -> anyhow::Result<()> {
        write_tables(conn, rows).await
    }

    async fn pair_rows(
        &mut self,
        conn: &mut AsyncPgConnection,
        _: Ranges,
        rows: Tables,
    ) -> anyhow::Result<()> {
        write_tables(conn, rows).await
    }
}

/// Inserts every row of `tables` into the emptied derived tables.
async fn write_tables(conn: &mut AsyncPgConnection, tables: Tables) -> anyhow::Result<()> {
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
    write(conn, "atom", atom.into_values(), rows::atom_rows).await?;
    write(conn, "triple", triple.into_values(), rows::triple_rows).await?;
    write(
        conn,
        "position",
        position.into_values(),
        rows::position_rows,
    )
    .await?;
    write(conn, "vault", vault.into_values(), rows::vault_rows).await?;
    write(conn, "term", term.into_values(), rows::term_rows).await?;
    write(conn, "triple_vault", triple_vault.into_values(), |c| {
        rows::triple_vault_rows(&c)
    })
    .await?;
    write(conn, "triple_term", triple_term.into_values(), |c| {
        rows::triple_term_rows(&c)
    })
    .await?;
    write(
        conn,
        "predicate_object",
        predicate_object.into_values(),
        rows::predicate_object_rows,
    )
    .await?;
    write(
        conn,
        "subject_predicate",
        subject_predicate.into_values(),
        rows::subject_predicate_rows,
    )
    .await
}

/// Inserts `rows` into the emptied `table`, [`CHUNK`] rows per statement.
async fn write<T: Send>(
    conn: &mut AsyncPgConnection,
    table: &'static str,
    mut rows: impl Iterator<Item = T> + Send,
    build: impl Fn(Vec<T>) -> RowSet + Send,
) -> anyhow::Result<()> {
    loop {
        let chunk: Vec<T> = rows.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        let mut set = build(chunk);
        debug_assert_eq!(set.table, table);
        // No conflict target: the table was emptied in this transaction and the fold's keys
        // are unique (each key's term lies in one range), so a conflict would be a bug, and
        // fails the rebuild.
        set.on_conflict = OnConflict::Fail;
        set.write(conn)
            .await
            .with_context(|| format!("writing table {table}"))?;
    }
}
