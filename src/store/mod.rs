//! PostgreSQL: the only module that knows SQL. Connection pool, embedded migrations, the batch
//! transaction (event log + changed rows + progress + outbox), reading back, whole rebuilds of the
//! derived tables, and reorgs.
//!
//! **Architecture Invariant:** a batch is one transaction; its progress rows and its outbox row
//! commit with its data or not at all.

pub mod analytics;
pub mod compare;
pub mod connect;
pub mod dead_letters;
pub mod event_rows;
pub mod failure;
pub mod lease;
pub mod load;
pub mod measure;
pub mod partition;
pub mod prior;
pub mod rebuild;
pub mod reorg;
pub mod rows;
pub mod rowset;
pub mod tables;
pub mod text;

use std::time::Duration;

use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::bb8::Pool as Bb8Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::domain::rows::TripleRow;
use crate::domain::Event;
use dead_letters::DeadLetter;
use rowset::RowSet;

/// The schema, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type Pool = Bb8Pool<AsyncPgConnection>;

pub use crate::config::database::redact;

/// The database name of a `postgres://…/name?…` URL, and the same URL naming `other` instead.
fn database_of(url: &str, other: &str) -> Option<(String, String)> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (prefix, name) = base.rsplit_once('/')?;
    if name.is_empty() || prefix.ends_with('/') {
        return None;
    }
    let swapped = format!(
        "{prefix}/{other}{}",
        query.map(|q| format!("?{q}")).unwrap_or_default()
    );
    Some((name.to_owned(), swapped))
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres` to do
/// so), so the default settings work on a fresh machine.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    match connect::connect(url).await {
        Ok(_) => Ok(()),
        Err(e) if e.downcast_ref::<crate::config::SettingError>().is_some() => Err(e),
        Err(e) if format!("{e:#}").contains("does not exist") => {
            let (name, admin_url) =
                database_of(url, "postgres").context("DATABASE_URL names no database")?;
            let mut admin = connect::connect(&admin_url)
                .await
                .with_context(|| format!("connecting to the server to create database {name}"))?;
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match diesel::sql_query(format!("CREATE DATABASE {quoted}"))
                .execute(&mut admin)
                .await
            {
                Ok(_) => tracing::info!(database = %name, "created database"),
                // Another process created it meanwhile.
                Err(e) if e.to_string().contains("already exists") => {}
                Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A pool of `size` connections to `url`.
pub async fn pool(url: &str, size: u32) -> anyhow::Result<Pool> {
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(connect::setup);
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Bb8Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .build(manager)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// Advisory lock key serialising migrations between processes starting together.
const MIGRATION_LOCK: i64 = 7_310_411_862_190_233_170;

/// Runs pending migrations; returns the versions applied. Processes that start together take
/// turns (a session advisory lock), so a fresh database is migrated once.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = connect::connect(url).await?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .context("taking the migration lock")?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?
        .iter()
        .map(|v| v.to_string())
        .collect();
    let mut conn = harness.into_inner();
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .context("releasing the migration lock")?;
    Ok(applied)
}

/// What one stream contributed to a batch.
#[derive(Debug, Clone)]
pub struct StreamProgress {
    pub stream: String,
    pub last_entry_id: String,
    pub entries: i64,
}

/// Everything a batch writes, in one transaction.
#[derive(Debug, Default)]
pub struct BatchWrite {
    /// Event-log rows of the new core events, then the changed base rows.
    pub rows: Vec<RowSet>,
    /// The new generic events, and their `generic_events` rows. Kept apart: they carry free-form
    /// input, so they are what PostgreSQL may refuse, and they change no derived row, so a
    /// refused one can be left out of the batch alone.
    pub generic: Vec<Event>,
    pub generic_rows: Vec<RowSet>,
    /// Entries and items the decoder refused.
    pub dead_letters: Vec<DeadLetter>,
    pub progress: Vec<StreamProgress>,
    /// Term ids to publish after commit (written to the outbox in the same transaction).
    pub term_updates: Vec<String>,
    /// Triples whose row now names another subject, predicate or object, `(stored row, new
    /// row)`: taken out of the pair rows of their stored ids in the same transaction
    /// (`reorg::withdraw_triples`, as a reorg does), so the analytics consumer counts them into
    /// the new pairs only.
    pub moved_triples: Vec<(TripleRow, TripleRow)>,
}

/// What a committed batch wrote.
#[derive(Debug, Default)]
pub struct Committed {
    /// The outbox row to publish, when there are term updates.
    pub outbox: Option<i64>,
    /// The dead letters this commit recorded, by index into the letters it was given (the
    /// decoder's, then the refused events'); a redelivered entry's were recorded before.
    pub new_dead_letters: Vec<usize>,
    /// Every dead letter of the batch: the decoder's, then those of refused events.
    pub letters: Vec<DeadLetter>,
    /// Generic events PostgreSQL refused: index into [`BatchWrite::generic`] and the reason.
    pub refused: Vec<(usize, String)>,
}

/// Commits a batch: every statement pipelined in one transaction. A refusal of the data fails it
/// whole (see [`commit_isolating`]).
pub async fn commit(
    conn: &mut AsyncPgConnection,
    group: &str,
    batch: &BatchWrite,
    lease: &lease::Lease,
) -> anyhow::Result<Committed> {
    conn.transaction(async |conn| {
        // Fencing first: the lease row stays locked until commit, so no takeover can interleave.
        fenced_rows(
            conn,
            group,
            batch,
            lease,
            batch.rows.iter().chain(&batch.generic_rows),
        )
        .await
    })
    .await
}

/// The fenced part of a batch transaction: the lease fenced, `sets`, the batch's moved triples,
/// then [`finish`].
async fn fenced_rows<'a>(
    conn: &mut AsyncPgConnection,
    group: &str,
    batch: &BatchWrite,
    lease: &lease::Lease,
    sets: impl Iterator<Item = &'a RowSet>,
) -> anyhow::Result<Committed> {
    lease::fence(conn, lease).await?;
    let started = std::time::Instant::now();
    write_pipelined(conn, sets).await?;
    withdraw_moved_triples(conn, batch).await?;
    tracing::trace!(micros = started.elapsed().as_micros() as u64, "wrote rows");
    finish(conn, group, batch, batch.dead_letters.clone(), lease).await
}

/// The batch that committed just before this one failed: this one, folded on top of it, must not
/// commit (it was rolled back).
#[derive(Debug, thiserror::Error)]
#[error("the batch before this one did not commit; this one was rolled back unwritten")]
pub struct PredecessorFailed;

/// Whether a row set is one of the event tables: rows whose keys (the identities the batch
/// admitted as new) no other batch in flight writes, so they may be written before the batch
/// before has committed without ever waiting on it. Not `event_transactions`: consecutive
/// batches share transactions, so their keys are written only after the predecessor committed
/// (else each of two batches could wait on the other's key, one in PostgreSQL and one here).
fn is_event_table(rows: &RowSet) -> bool {
    tables::events::EVENT_LOG.contains(&rows.table)
}

/// [`commit`], begun while the batch before it (`predecessor`) is still committing, so the two
/// transactions use both of PostgreSQL's cores: the event-table rows first (new identities
/// only, which no other batch writes), then wait for `predecessor` — `true` once it has
/// committed — and only then the fence, `event_transactions`, the base rows (folded on top of
/// the predecessor's), progress, outbox and COMMIT. So batches still commit in order, one after
/// another; a predecessor that fails, or has not committed within `timeout` of this batch's
/// first half (a wait this batch's locks might be part of), rolls this one back with
/// [`PredecessorFailed`]. `timeout` bounds each half and the wait, and four times it the whole
/// transaction, ROLLBACK included: that queues behind a statement still blocked on the server,
/// so a timed-out half alone would not end the call. Dropped mid-transaction, the connection is
/// discarded by the pool, as [`commit`]'s is under the writer's timeout.
pub async fn commit_after(
    conn: &mut AsyncPgConnection,
    group: &str,
    batch: &BatchWrite,
    lease: &lease::Lease,
    predecessor: impl std::future::Future<Output = bool> + Send,
    timeout: Duration,
) -> anyhow::Result<Committed> {
    const TIMED_OUT: &str = "batch commit timed out (PROCESSING_TIMEOUT_MS)";
    let transaction = conn.transaction(async |conn| {
        let all = || batch.rows.iter().chain(&batch.generic_rows);
        let events = all().filter(|r| is_event_table(r));
        tokio::time::timeout(timeout, write_pipelined(conn, events))
            .await
            .context(TIMED_OUT)??;
        let committed = tokio::time::timeout(timeout, predecessor).await;
        if !committed.unwrap_or(false) {
            return Err(PredecessorFailed.into());
        }
        let rest = all().filter(|r| !is_event_table(r));
        tokio::time::timeout(timeout, fenced_rows(conn, group, batch, lease, rest))
            .await
            .context(TIMED_OUT)?
    });
    tokio::time::timeout(timeout * 4, transaction)
        .await
        .context(TIMED_OUT)?
}

/// Commits a batch that [`commit`] saw refused: the core rows first (a refusal of those fails the
/// whole batch again), then the generic events by bisection, each attempt under a savepoint, so
/// exactly the events PostgreSQL refuses are left out and dead-lettered (`letter_for` makes the
/// dead letter of a refused event from its index and the reason). Costs O(k log n) statements for
/// k refused events of n.
pub async fn commit_isolating(
    conn: &mut AsyncPgConnection,
    group: &str,
    batch: &BatchWrite,
    lease: &lease::Lease,
    letter_for: &(dyn Fn(usize, &str) -> DeadLetter + Send + Sync),
) -> anyhow::Result<Committed> {
    conn.transaction(async |conn| {
        lease::fence(conn, lease).await?;
        write_pipelined(conn, batch.rows.iter()).await?;
        withdraw_moved_triples(conn, batch).await?;
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut pending = vec![(0, batch.generic.len())];
        while let Some((lo, hi)) = pending.pop() {
            if lo == hi {
                continue;
            }
            let rows = event_rows::event_rows(&batch.generic[lo..hi]);
            // A nested transaction is a savepoint: a refusal rolls back this attempt alone.
            let attempt = conn
                .transaction(async |conn| write_pipelined(conn, rows.iter()).await)
                .await;
            match attempt {
                Ok(()) => {}
                Err(e) if failure::is_rejection(&e) => {
                    if hi - lo == 1 {
                        refused.push((lo, failure::reason(&e)));
                    } else {
                        let mid = lo + (hi - lo) / 2;
                        pending.push((mid, hi));
                        pending.push((lo, mid));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        refused.sort_unstable_by_key(|(i, _)| *i);
        let mut letters = batch.dead_letters.clone();
        letters.extend(refused.iter().map(|(i, why)| letter_for(*i, why)));
        let mut committed = finish(conn, group, batch, letters, lease).await?;
        committed.refused = refused;
        Ok(committed)
    })
    .await
}

/// Takes the batch's moved triples out of the pairs they were counted in (hostile input only;
/// nothing to do, and no lock taken, in any other batch). Under the analytics lock, as a reorg:
/// the consumer must not count the triple between this read and the commit.
async fn withdraw_moved_triples(
    conn: &mut AsyncPgConnection,
    batch: &BatchWrite,
) -> anyhow::Result<()> {
    if batch.moved_triples.is_empty() {
        return Ok(());
    }
    let (stored, new): (Vec<TripleRow>, Vec<TripleRow>) =
        batch.moved_triples.iter().cloned().unzip();
    analytics::lock(conn).await?;
    let moved = reorg::withdraw_triples(conn, &stored, &new).await?;
    tracing::warn!(
        triples = moved,
        "a TripleCreated named other ids for a known triple; the triple moves between pair rows"
    );
    Ok(())
}

/// Sends every statement before reading the first reply.
async fn write_pipelined<'a>(
    conn: &AsyncPgConnection,
    sets: impl Iterator<Item = &'a RowSet>,
) -> anyhow::Result<()> {
    futures_util::future::try_join_all(sets.map(|rows| async move {
        rows.write(conn)
            .await
            .with_context(|| format!("writing table {}", rows.table))
    }))
    .await?;
    Ok(())
}

/// The end of a batch transaction: dead letters, progress, outbox, and the lease's heartbeat at
/// the time of the commit (a commit longer than `LEASE_TTL_MS` must not look like a dead
/// writer to a standby that waited on the lease row).
async fn finish(
    conn: &mut AsyncPgConnection,
    group: &str,
    batch: &BatchWrite,
    letters: Vec<DeadLetter>,
    lease: &lease::Lease,
) -> anyhow::Result<Committed> {
    let new_dead_letters = dead_letters::record(conn, group, &letters).await?;
    write_progress(conn, group, &batch.progress).await?;
    let outbox = if batch.term_updates.is_empty() {
        None
    } else {
        let id: IdRow =
            diesel::sql_query("INSERT INTO term_update_outbox (term_ids) VALUES ($1) RETURNING id")
                .bind::<Array<Text>, _>(&batch.term_updates)
                .get_result(conn)
                .await
                .context("writing term_update_outbox")?;
        Some(id.id)
    };
    lease::fence(conn, lease).await?;
    Ok(Committed {
        outbox,
        new_dead_letters,
        letters,
        refused: Vec::new(),
    })
}

/// Records dead letters with progress in one transaction of their own (a reorg notice refused
/// by PostgreSQL, whose own transaction rolled back).
pub async fn commit_dead_letters(
    conn: &mut AsyncPgConnection,
    group: &str,
    letters: &[DeadLetter],
    progress: &[StreamProgress],
    lease: &lease::Lease,
) -> anyhow::Result<Vec<usize>> {
    conn.transaction(async |conn| {
        lease::fence(conn, lease).await?;
        let new = dead_letters::record(conn, group, letters).await?;
        write_progress(conn, group, progress).await?;
        Ok(new)
    })
    .await
}

/// Records what each stream contributed (inside the caller's transaction).
pub async fn write_progress(
    conn: &mut AsyncPgConnection,
    group: &str,
    progress: &[StreamProgress],
) -> anyhow::Result<()> {
    if progress.is_empty() {
        return Ok(());
    }
    let streams: Vec<&str> = progress.iter().map(|p| p.stream.as_str()).collect();
    let ids: Vec<&str> = progress.iter().map(|p| p.last_entry_id.as_str()).collect();
    let counts: Vec<i64> = progress.iter().map(|p| p.entries).collect();
    // Conflict target: one progress row per (consumer_group, stream).
    diesel::sql_query(
        "INSERT INTO sync_progress (consumer_group, stream, last_entry_id, entries_total, updated_at) \
         SELECT $1, u.stream, u.id, u.n, now() FROM UNNEST($2::text[], $3::text[], $4::int8[]) AS u(stream, id, n) \
         ON CONFLICT (consumer_group, stream) DO UPDATE SET last_entry_id = EXCLUDED.last_entry_id, \
         entries_total = sync_progress.entries_total + EXCLUDED.entries_total, updated_at = now()",
    )
    .bind::<Text, _>(group)
    .bind::<Array<Text>, _>(streams)
    .bind::<Array<Text>, _>(ids)
    .bind::<Array<BigInt>, _>(counts)
    .execute(conn)
    .await
    .context("writing sync_progress")?;
    Ok(())
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName, Debug)]
pub struct OutboxRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Array<Text>)]
    pub term_ids: Vec<String>,
}

/// Outbox rows committed but not yet published (after a crash), oldest first.
pub async fn unpublished(conn: &mut AsyncPgConnection) -> anyhow::Result<Vec<OutboxRow>> {
    diesel::sql_query("SELECT id, term_ids FROM term_update_outbox ORDER BY id")
        .load(conn)
        .await
        .context("reading term_update_outbox")
}

/// Forgets an outbox row once its term ids are published.
pub async fn published(conn: &mut AsyncPgConnection, id: i64) -> anyhow::Result<()> {
    diesel::sql_query("DELETE FROM term_update_outbox WHERE id = $1")
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await
        .context("deleting from term_update_outbox")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(redact("postgres://u:p@ss:w@h/x"), "postgres://u:***@h/x");
    }

    #[test]
    fn database_name_is_swapped() {
        assert_eq!(
            database_of("postgres://u@h:5432/app?sslmode=disable", "postgres"),
            Some((
                "app".into(),
                "postgres://u@h:5432/postgres?sslmode=disable".into()
            ))
        );
        assert_eq!(database_of("postgres://u@h:5432", "postgres"), None);
    }
}
