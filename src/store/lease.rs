//! The writer lease (SPEC §4 "one writer", issue 9): a row per consumer group with a holder, a
//! fencing token and a heartbeat, all judged by the database's clock.
//!
//! - `acquire` takes the lease when it is free or expired, bumping the token;
//! - `renew` refreshes the heartbeat while the holder and token are unchanged;
//! - `fence` does the same inside a batch transaction, before its first base, progress or outbox
//!   row (its first statement, but for an overlapped batch's event-table rows, which commit with
//!   the rest or not at all): the lease row is then locked until commit, so a takeover waits for
//!   the batch, and a batch of a holder that lost the lease fails before it commits anything.
//!   The batch fences again as its last statement, so the heartbeat it commits is the time of
//!   its commit.
//!
//! Every time is `clock_timestamp()`, the time of the statement, never `now()`, the start of its
//! transaction: a standby whose takeover waited behind a long commit must compare the heartbeat
//! that commit wrote with the time it looks, or a writer alive all along looks dead.

use std::time::Duration;

use anyhow::Context;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Who holds the lease and with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub group: String,
    pub holder: String,
    pub token: i64,
}

/// A batch was refused because its process no longer holds the lease.
#[derive(Debug, thiserror::Error)]
#[error(
    "lost the writer lease of consumer group {group} (token {token}): another process took over"
)]
pub struct Fenced {
    pub group: String,
    pub token: i64,
}

#[derive(QueryableByName)]
struct Token {
    #[diesel(sql_type = BigInt)]
    token: i64,
}

#[derive(QueryableByName, Debug)]
pub struct Holder {
    #[diesel(sql_type = Text)]
    pub holder: String,
    #[diesel(sql_type = BigInt)]
    pub token: i64,
    #[diesel(sql_type = BigInt)]
    pub age_ms: i64,
}

/// Takes the lease of `group` for `holder` if it is free, expired (no heartbeat for `ttl`) or
/// already ours; returns it with a new token, or `None` while another process holds it.
pub async fn acquire(
    conn: &mut AsyncPgConnection,
    group: &str,
    holder: &str,
    ttl: Duration,
) -> anyhow::Result<Option<Lease>> {
    // Conflict target: the group's single lease row. It is taken over only when expired (or ours).
    let rows: Vec<Token> = diesel::sql_query(
        "INSERT INTO writer_lease AS l (consumer_group, holder, token, heartbeat_at) VALUES ($1, $2, 1, clock_timestamp()) \
         ON CONFLICT (consumer_group) DO UPDATE SET holder = EXCLUDED.holder, token = l.token + 1, heartbeat_at = clock_timestamp() \
         WHERE l.holder = EXCLUDED.holder OR l.heartbeat_at < clock_timestamp() - make_interval(secs => $3::float8 / 1000) \
         RETURNING l.token",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(holder)
    .bind::<BigInt, _>(ttl.as_millis() as i64)
    .load(conn)
    .await
    .context("acquiring the writer lease")?;
    Ok(rows.into_iter().next().map(|t| Lease {
        group: group.to_owned(),
        holder: holder.to_owned(),
        token: t.token,
    }))
}

/// Refreshes the heartbeat; `Err(Fenced)` when the lease was taken over.
pub async fn renew(conn: &mut AsyncPgConnection, lease: &Lease) -> anyhow::Result<()> {
    fence(conn, lease).await
}

/// The first statement of every batch transaction: refresh the heartbeat if (and only if) the
/// lease is still ours, else fail with [`Fenced`] so nothing of the batch commits.
pub async fn fence(conn: &mut AsyncPgConnection, lease: &Lease) -> anyhow::Result<()> {
    let n = diesel::sql_query("UPDATE writer_lease SET heartbeat_at = clock_timestamp() WHERE consumer_group = $1 AND holder = $2 AND token = $3")
        .bind::<Text, _>(&lease.group)
        .bind::<Text, _>(&lease.holder)
        .bind::<BigInt, _>(lease.token)
        .execute(conn)
        .await
        .context("checking the writer lease")?;
    if n == 1 {
        Ok(())
    } else {
        Err(Fenced {
            group: lease.group.clone(),
            token: lease.token,
        }
        .into())
    }
}

/// Gives the lease up (on graceful shutdown) so a standby takes over at once.
pub async fn release(conn: &mut AsyncPgConnection, lease: &Lease) -> anyhow::Result<()> {
    diesel::sql_query("UPDATE writer_lease SET heartbeat_at = '-infinity' WHERE consumer_group = $1 AND holder = $2 AND token = $3")
        .bind::<Text, _>(&lease.group)
        .bind::<Text, _>(&lease.holder)
        .bind::<BigInt, _>(lease.token)
        .execute(conn)
        .await
        .context("releasing the writer lease")?;
    Ok(())
}

/// The current holder of `group`'s lease, with the age of its heartbeat.
pub async fn current(conn: &mut AsyncPgConnection, group: &str) -> anyhow::Result<Option<Holder>> {
    let rows: Vec<Holder> = diesel::sql_query(
        "SELECT holder, token, (extract(epoch from clock_timestamp() - heartbeat_at) * 1000)::int8 AS age_ms FROM writer_lease WHERE consumer_group = $1",
    )
    .bind::<Text, _>(group)
    .load(conn)
    .await
    .context("reading the writer lease")?;
    Ok(rows.into_iter().next())
}
