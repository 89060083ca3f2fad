//! What `bench` and `status` read off a database besides the service's own tables' rows: row
//! counts, the outbox's length, the raw COPY rate of the event log (the speed limit of writing
//! these rows into this server), the consumer progress, and dropping a bench database.

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
