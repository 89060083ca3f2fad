//! Dead letters (SPEC §4 "a dead letter appears exactly once across any crash history").
//!
//! A refused entry or item is first **recorded**, in the transaction of the batch that refused
//! it, as a row of `dead_letters` keyed by `(consumer_group, source_stream, source_id,
//! item_index)`: an entry redelivered after its batch committed records nothing new. After the
//! commit the writer **publishes** the unpublished rows in id order to `<source stream>:dlq`
//! (`ingest::stream::publish_dead_letters`, which skips a row whose id it published before) and
//! marks them published. A crash between any two of these steps leaves a row that the next
//! writer publishes, or finds published, once.

use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Binary, Integer, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

pub use crate::ingest::letter::{DeadLetter, Recorded, WHOLE_ENTRY};

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    source_stream: String,
    #[diesel(sql_type = Text)]
    source_id: String,
    #[diesel(sql_type = Integer)]
    item_index: i32,
    #[diesel(sql_type = Binary)]
    payload: Vec<u8>,
    #[diesel(sql_type = Text)]
    error: String,
}

/// PostgreSQL text cannot hold NUL; a reason quoting hostile input may.
fn storable(text: &str) -> String {
    text.replace('\0', "\\u0000")
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    source_stream: String,
    #[diesel(sql_type = Text)]
    source_id: String,
    #[diesel(sql_type = Integer)]
    item_index: i32,
}

/// Records `letters` (inside the caller's transaction); returns which of them were new (a
/// redelivered entry's letters were recorded before), by index.
pub async fn record(
    conn: &mut AsyncPgConnection,
    group: &str,
    letters: &[DeadLetter],
) -> anyhow::Result<Vec<usize>> {
    if letters.is_empty() {
        return Ok(Vec::new());
    }
    let streams: Vec<String> = letters.iter().map(|l| storable(&l.source_stream)).collect();
    let ids: Vec<String> = letters.iter().map(|l| storable(&l.source_id)).collect();
    let items: Vec<i32> = letters.iter().map(|l| l.item_index).collect();
    let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
    let errors: Vec<String> = letters.iter().map(|l| storable(&l.error)).collect();
    // Conflict target: one dead letter per group, source entry and item; a redelivered entry's
    // letters are already there.
    let inserted: Vec<Key> = diesel::sql_query(
        "INSERT INTO dead_letters (consumer_group, source_stream, source_id, item_index, payload, error, dead_lettered_at) \
         SELECT $1, u.s, u.i, u.n, u.p, u.e, clock_timestamp() \
         FROM UNNEST($2::text[], $3::text[], $4::int4[], $5::bytea[], $6::text[]) AS u(s, i, n, p, e) \
         ON CONFLICT (consumer_group, source_stream, source_id, item_index) DO NOTHING \
         RETURNING source_stream, source_id, item_index",
    )
    .bind::<Text, _>(group)
    .bind::<Array<Text>, _>(streams)
    .bind::<Array<Text>, _>(ids)
    .bind::<Array<Integer>, _>(items)
    .bind::<Array<Binary>, _>(payloads)
    .bind::<Array<Text>, _>(errors)
    .load(conn)
    .await
    .context("writing dead_letters")?;
    let new: std::collections::HashSet<(String, String, i32)> = inserted
        .into_iter()
        .map(|k| (k.source_stream, k.source_id, k.item_index))
        .collect();
    Ok(letters
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            new.contains(&(
                storable(&l.source_stream),
                storable(&l.source_id),
                l.item_index,
            ))
        })
        .map(|(i, _)| i)
        .collect())
}

/// Recorded dead letters of `group` not yet published, oldest first (at most `limit`).
pub async fn unpublished(
    conn: &mut AsyncPgConnection,
    group: &str,
    limit: i64,
) -> anyhow::Result<Vec<Recorded>> {
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT id, source_stream, source_id, item_index, payload, error FROM dead_letters \
         WHERE published_at IS NULL AND consumer_group = $1 ORDER BY id LIMIT $2",
    )
    .bind::<Text, _>(group)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
    .context("reading unpublished dead_letters")?;
    Ok(rows
        .into_iter()
        .map(|r| Recorded {
            id: r.id,
            letter: DeadLetter {
                source_stream: r.source_stream,
                source_id: r.source_id,
                item_index: r.item_index,
                payload: r.payload,
                error: r.error,
            },
        })
        .collect())
}

/// Marks dead letters published (their `<stream>:dlq` entries exist).
pub async fn mark_published(conn: &mut AsyncPgConnection, ids: &[i64]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "UPDATE dead_letters SET published_at = clock_timestamp() WHERE id = ANY($1)",
    )
    .bind::<Array<BigInt>, _>(ids)
    .execute(conn)
    .await
    .context("marking dead_letters published")?;
    Ok(())
}

/// How many dead letters `group` has recorded, and how many of them are not yet published.
pub async fn counts(conn: &mut AsyncPgConnection, group: &str) -> anyhow::Result<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        total: i64,
        #[diesel(sql_type = BigInt)]
        unpublished: i64,
    }
    let c: Counts = diesel::sql_query(
        "SELECT count(*) AS total, count(*) FILTER (WHERE published_at IS NULL) AS unpublished \
         FROM dead_letters WHERE consumer_group = $1",
    )
    .bind::<Text, _>(group)
    .get_result(conn)
    .await
    .context("counting dead_letters")?;
    Ok((c.total, c.unpublished))
}
