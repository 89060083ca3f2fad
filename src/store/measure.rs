//! What `bench` and `status` read off a database besides the service's own tables' rows: row
//! counts, the outbox's length, the raw COPY rate of the event log (the speed limit of writing
//! these rows into this server), the consumer progress, the server settings that decide how fast
//! the event log grows (`BufferCache`), and dropping a bench database.

use std::time::Instant;

use anyhow::Context;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::{SinkExt, TryStreamExt};

use super::load::EVENT_LOG;
use super::tables::derived::DERIVED_NAMES;

/// [`unpublished_batches`] of the database at `database_url`.
pub async fn outbox_len(database_url: &str) -> anyhow::Result<i64> {
    let mut conn = super::connect::connect(database_url).await?;
    unpublished_batches(&mut conn).await
}

/// Rows of each event table and derived table.
pub async fn row_counts(database_url: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let client = pg_client(database_url).await?;
    let mut out = Vec::new();
    for t in EVENT_LOG.iter().chain(&DERIVED_NAMES) {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await?
            .get(0);
        out.push((t.to_string(), n));
    }
    Ok(out)
}

/// Copies every event-log row out (binary COPY, untimed) and into an empty copy of its table
/// with the same indexes (timed): the speed limit of writing these rows into this server.
pub async fn copy_rate(database_url: &str) -> anyhow::Result<(u64, f64)> {
    let client = pg_client(database_url).await?;
    // The DROP … IF EXISTS / CASCADE notices below are expected: keep them out of the output.
    client
        .batch_execute(
            "SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS copy_baseline",
        )
        .await?;
    let mut data = Vec::new();
    for t in EVENT_LOG {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS copy_baseline.{t}; CREATE TABLE copy_baseline.{t} (LIKE public.{t} INCLUDING ALL)"))
            .await?;
        let out = client
            .copy_out(&format!("COPY public.{t} TO STDOUT (FORMAT binary)"))
            .await?;
        let chunks: Vec<bytes::Bytes> = out.try_collect().await?;
        data.push((t, chunks));
    }
    let mut rows = 0u64;
    let started = Instant::now();
    for (t, chunks) in data {
        let sink = client
            .copy_in(&format!(
                "COPY copy_baseline.{t} FROM STDIN (FORMAT binary)"
            ))
            .await?;
        futures_util::pin_mut!(sink);
        for c in chunks {
            sink.send(c).await?;
        }
        rows += sink.finish().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    client
        .batch_execute("DROP SCHEMA copy_baseline CASCADE")
        .await?;
    Ok((rows, seconds))
}

/// Drops `database` on the server of `server` (an URL naming any database).
pub async fn drop_database(server: &str, database: &str) -> anyhow::Result<()> {
    let admin = pg_client(&super::connect::with_database(server, "postgres")).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await?;
    Ok(())
}

async fn pg_client(database_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    super::connect::client(database_url).await
}

/// The committed progress of one consumer group on one input stream.
#[derive(Debug, QueryableByName)]
pub struct Progress {
    #[diesel(sql_type = Text)]
    pub stream: String,
    #[diesel(sql_type = Text)]
    pub last_entry_id: String,
    #[diesel(sql_type = BigInt)]
    pub entries_total: i64,
    #[diesel(sql_type = Text)]
    pub updated_at: String,
}

/// The committed progress of `group`, per stream.
pub async fn progress(conn: &mut AsyncPgConnection, group: &str) -> anyhow::Result<Vec<Progress>> {
    diesel::sql_query(
        "SELECT stream, last_entry_id, entries_total, updated_at::text AS updated_at \
         FROM sync_progress WHERE consumer_group = $1 ORDER BY stream",
    )
    .bind::<Text, _>(group)
    .load(conn)
    .await
    .context("reading sync_progress (has `migrate` run?)")
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Term-update batches committed and not yet published (rows of `term_update_outbox`).
pub async fn unpublished_batches(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
    let count: Count = diesel::sql_query("SELECT count(*) AS n FROM term_update_outbox")
        .get_result(conn)
        .await
        .context("reading term_update_outbox")?;
    Ok(count.n)
}

/// The server's buffer cache against what a batch writes into at random pages: the event log's
/// indexes (its primary keys are random transaction hashes, so once they outgrow
/// `shared_buffers` most index inserts read a page from outside it), and the WAL settings that
/// decide how often a changed page is written to the WAL whole again. Printed by `bench`, checked
/// at `sync` start ([`BufferCache::advice`]).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct BufferCache {
    /// `shared_buffers` in bytes.
    #[diesel(sql_type = BigInt)]
    pub shared_buffers: i64,
    /// The indexes of the event tables and of `event_transactions`, in bytes.
    #[diesel(sql_type = BigInt)]
    pub event_log_indexes: i64,
    /// `max_wal_size` as the server prints it (e.g. `1GB`).
    #[diesel(sql_type = Text)]
    pub max_wal_size: String,
    /// `max_wal_size` in bytes.
    #[diesel(sql_type = BigInt)]
    pub max_wal_bytes: i64,
    /// `checkpoint_timeout` as the server prints it (e.g. `5min`).
    #[diesel(sql_type = Text)]
    pub checkpoint_timeout: String,
}

/// `max_wal_size` below this many times the event log's indexes draws [`BufferCache::advice`]:
/// after a checkpoint the first change to a page writes the whole page to the WAL, and a
/// catching-up sync changes index pages all over the indexes, so unless checkpoints are a few
/// index sizes of WAL apart most of its index inserts write a whole page. (Measured, README: at
/// 10 M events with 1,745 MiB of indexes and `shared_buffers` 128 MB, `max_wal_size` 1 GB gives
/// 35 k events/s, 24 GB 46 k; at 2 M, 348 MiB of indexes, 1 GB loses nothing.)
pub const WAL_PER_INDEX_BYTE: i64 = 2;

impl BufferCache {
    /// A warning once the event log's indexes have outgrown the server's settings — checkpoints
    /// closer together than [`WAL_PER_INDEX_BYTE`] times the indexes, or a buffer cache smaller
    /// than them — naming each setting and the sizes; `None` while they fit.
    pub fn advice(&self) -> Option<String> {
        let indexes = mib(self.event_log_indexes);
        let (mut findings, mut raise) = (Vec::new(), Vec::new());
        if self.max_wal_bytes < WAL_PER_INDEX_BYTE.saturating_mul(self.event_log_indexes) {
            raise.push("max_wal_size");
            findings.push(format!(
                "max_wal_size ({}) is less than {WAL_PER_INDEX_BYTE} times the event log's \
                 indexes ({indexes}): a checkpoint comes round before a catching-up sync has \
                 changed each index page once, and the first change to a page after a \
                 checkpoint writes the whole page to the WAL (checkpoint_timeout {} spaces \
                 checkpoints too)",
                self.max_wal_size, self.checkpoint_timeout,
            ));
        }
        if self.event_log_indexes > self.shared_buffers {
            raise.push("shared_buffers");
            findings.push(format!(
                "shared_buffers ({}) is smaller than the event log's indexes ({indexes}): most \
                 index inserts of a batch read a page from outside the buffer cache",
                mib(self.shared_buffers),
            ));
        }
        (!findings.is_empty()).then(|| {
            format!(
                "{}; so a catching-up sync slows down as the history grows: raise {} (README, \
                 Benchmarks: Postgres tuning)",
                findings.join("; "),
                raise.join(" and "),
            )
        })
    }

    /// One line for a report: the three settings and the indexes' size.
    pub fn describe(&self) -> String {
        format!(
            "shared_buffers {}, max_wal_size {}, checkpoint_timeout {}; event-log indexes {}",
            mib(self.shared_buffers),
            self.max_wal_size,
            self.checkpoint_timeout,
            mib(self.event_log_indexes),
        )
    }
}

/// `bytes` in whole MiB, as `bench` and the buffer-cache advice print sizes (negative as 0).
pub fn mib(bytes: impl TryInto<u64>) -> String {
    let bytes = bytes.try_into().unwrap_or(0);
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The [`BufferCache`] figures of the database `conn` is connected to (catalog reads only).
pub async fn buffer_cache(conn: &mut AsyncPgConnection) -> anyhow::Result<BufferCache> {
    let tables: Vec<String> = EVENT_LOG
        .iter()
        .chain(std::iter::once(&super::tables::events::TRANSACTIONS))
        .map(|t| t.to_string())
        .collect();
    diesel::sql_query(
        "SELECT pg_size_bytes(current_setting('shared_buffers')) AS shared_buffers, \
                (SELECT COALESCE(sum(pg_indexes_size(to_regclass(t))), 0)::bigint \
                  FROM UNNEST($1::text[]) AS t) AS event_log_indexes, \
                current_setting('max_wal_size') AS max_wal_size, \
                pg_size_bytes(current_setting('max_wal_size')) AS max_wal_bytes, \
                current_setting('checkpoint_timeout') AS checkpoint_timeout",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(&tables)
    .get_result(conn)
    .await
    .context("reading shared_buffers and the size of the event log's indexes")
}

/// [`buffer_cache`] of the database at `database_url`.
pub async fn read_buffer_cache(database_url: &str) -> anyhow::Result<BufferCache> {
    let mut conn = super::connect::connect(database_url).await?;
    buffer_cache(&mut conn).await
}

/// Logs [`BufferCache::advice`] once at start (WARN), or, while the settings fit the indexes, the
/// figures at DEBUG. Advisory only: a failure to read them is logged and changes nothing.
pub async fn advise_on_buffer_cache(url: &str) {
    match read_buffer_cache(url).await {
        Ok(cache) => match cache.advice() {
            Some(advice) => tracing::warn!("{advice}"),
            None => tracing::debug!(settings = cache.describe(), "buffer cache"),
        },
        Err(e) => tracing::debug!(
            error = format!("{e:#}"),
            "cannot read shared_buffers and the event log's index sizes"
        ),
    }
}

/// Whether the server at `url` answers a query.
pub async fn ping(url: &str) -> bool {
    let Ok(mut conn) = super::connect::connect(url).await else {
        return false;
    };
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::BufferCache;

    const MIB: i64 = 1024 * 1024;

    fn cache(shared_buffers: i64, event_log_indexes: i64, max_wal_bytes: i64) -> BufferCache {
        BufferCache {
            shared_buffers,
            event_log_indexes,
            max_wal_size: format!("{}MB", max_wal_bytes / MIB),
            max_wal_bytes,
            checkpoint_timeout: "5min".into(),
        }
    }

    #[test]
    fn no_advice_while_the_indexes_fit_the_cache_and_the_checkpoint_distance() {
        assert_eq!(cache(128 * MIB, 128 * MIB, 1024 * MIB).advice(), None);
        assert_eq!(cache(4096 * MIB, 1745 * MIB, 24_576 * MIB).advice(), None);
        assert_eq!(
            cache(128 * MIB, 0, 1024 * MIB).advice(),
            None,
            "a fresh log"
        );
    }

    #[test]
    fn advice_names_the_buffer_cache_and_both_sizes_once_the_indexes_outgrow_it() {
        let advice = cache(128 * MIB, 400 * MIB, 24_576 * MIB)
            .advice()
            .expect("indexes exceed the cache");
        assert!(
            advice.starts_with(
                "shared_buffers (128 MiB) is smaller than the event log's indexes (400 MiB)"
            ),
            "{advice}"
        );
        assert!(advice.contains("raise shared_buffers ("), "{advice}");
        assert!(!advice.contains("max_wal_size"), "{advice}");
    }

    #[test]
    fn advice_names_max_wal_size_once_checkpoints_come_closer_than_twice_the_indexes() {
        assert_eq!(
            cache(4096 * MIB, 512 * MIB, 1024 * MIB).advice(),
            None,
            "just fits"
        );
        let advice = cache(4096 * MIB, 1745 * MIB, 1024 * MIB)
            .advice()
            .expect("checkpoints too close");
        assert!(
            advice.starts_with(
                "max_wal_size (1024MB) is less than 2 times the event log's indexes (1745 MiB)"
            ),
            "{advice}"
        );
        assert!(advice.contains("checkpoint_timeout 5min"), "{advice}");
        assert!(advice.contains("raise max_wal_size ("), "{advice}");
        assert!(!advice.contains("shared_buffers"), "{advice}");
    }

    #[test]
    fn advice_names_both_settings_when_both_fall_short() {
        let advice = cache(128 * MIB, 1745 * MIB, 1024 * MIB)
            .advice()
            .expect("both short");
        assert!(advice.starts_with("max_wal_size (1024MB)"), "{advice}");
        assert!(
            advice.contains("; shared_buffers (128 MiB) is smaller than the event log's indexes"),
            "{advice}"
        );
        assert!(
            advice.contains("raise max_wal_size and shared_buffers ("),
            "{advice}"
        );
    }
}
