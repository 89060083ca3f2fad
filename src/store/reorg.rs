//! Applying a reorg notice (SPEC §5), in one transaction: every event of the notice's network
//! (events with no network included) at or after `fork_block` moves from the event tables to
//! `reorged_events` (the audit), every derived table is rebuilt from the remaining event log
//! ([`super::rebuild`]), and the notice is recorded in `reorgs` and `sync_progress`.
//!
//! A notice redelivered after its transaction committed (a crash before XACK) finds its row in
//! `reorgs` and does nothing.

use anyhow::Context;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::load::EVENT_LOG;
use super::rebuild::{self, Progress, Rebuilt};
use super::{write_progress, StreamProgress};
use crate::ingest::decode::ReorgNotice;

/// A reorg notice and where it was read.
#[derive(Debug, Clone, Copy)]
pub struct ReorgRequest<'a> {
    pub group: &'a str,
    pub stream: &'a str,
    pub entry_id: &'a str,
    pub notice: &'a ReorgNotice,
    /// The writer lease, checked first in the transaction (`None` outside the service).
    pub lease: Option<&'a super::lease::Lease>,
}

/// What applying a notice did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReorgOutcome {
    /// The notice (same group, stream and entry id) was applied before: nothing changed.
    AlreadyApplied,
    Applied {
        /// The notice's row in `reorgs`.
        reorg_id: i64,
        /// Events moved to `reorged_events`, per event table.
        moved: Vec<(&'static str, usize)>,
        /// The rebuild of the derived tables; `None` when no event moved (nothing to rebuild).
        rebuilt: Option<Rebuilt>,
    },
}

impl ReorgOutcome {
    /// Number of events taken out of the event log.
    pub fn events_moved(&self) -> usize {
        match self {
            ReorgOutcome::AlreadyApplied => 0,
            ReorgOutcome::Applied { moved, .. } => moved.iter().map(|(_, n)| n).sum(),
        }
    }
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Applies the notice in one transaction (see the module docs).
pub async fn apply(
    conn: &mut AsyncPgConnection,
    request: ReorgRequest<'_>,
    progress: Progress<'_>,
) -> anyhow::Result<ReorgOutcome> {
    conn.transaction(async |conn| {
        let ReorgRequest {
            group,
            stream,
            entry_id,
            notice,
            lease,
        } = request;
        if let Some(lease) = lease {
            super::lease::fence(conn, lease).await?;
        }
        // Same order as a rebuild: analytics batches, then event log writers, wait for us.
        super::analytics::lock(conn).await?;
        rebuild::lock_event_log(conn, "SHARE ROW EXCLUSIVE").await?;
        // Conflict target: the notice's stream entry, so a redelivered notice is applied once.
        let ids: Vec<IdRow> = diesel::sql_query(
            "INSERT INTO reorgs (consumer_group, stream, entry_id, network, fork_block, depth, events_moved, applied_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, now()) \
             ON CONFLICT (consumer_group, stream, entry_id) DO NOTHING RETURNING id",
        )
        .bind::<Text, _>(group)
        .bind::<Text, _>(stream)
        .bind::<Text, _>(entry_id)
        .bind::<Nullable<Text>, _>(notice.network.as_deref())
        .bind::<BigInt, _>(notice.fork_block)
        .bind::<Nullable<BigInt>, _>(notice.depth)
        .load(conn)
        .await
        .context("writing table reorgs")?;
        let Some(reorg_id) = ids.into_iter().next().map(|r| r.id) else {
            return Ok(ReorgOutcome::AlreadyApplied);
        };
        let mut moved = Vec::with_capacity(EVENT_LOG.len());
        for table in EVENT_LOG {
            // A notice without a network rolls back every network.
            let n = diesel::sql_query(format!(
                "WITH moved AS (DELETE FROM {table} WHERE block_number >= $1 \
                 AND ($2::text IS NULL OR network IS NULL OR network = $2) RETURNING *) \
                 INSERT INTO reorged_events (reorg_id, event_table, transaction_hash, log_index, block_number, \
                 network, fork_block, reorged_at, event_row) \
                 SELECT $3, '{table}', m.transaction_hash, m.log_index, m.block_number, m.network, $1, now(), \
                 to_jsonb(m) FROM moved m"
            ))
            .bind::<BigInt, _>(notice.fork_block)
            .bind::<Nullable<Text>, _>(notice.network.as_deref())
            .bind::<BigInt, _>(reorg_id)
            .execute(conn)
            .await
            .with_context(|| format!("moving orphaned events of {table} to reorged_events"))?;
            moved.push((table, n));
        }
        let total: usize = moved.iter().map(|(_, n)| n).sum();
        diesel::sql_query("UPDATE reorgs SET events_moved = $1 WHERE id = $2")
            .bind::<BigInt, _>(total as i64)
            .bind::<BigInt, _>(reorg_id)
            .execute(conn)
            .await
            .context("writing table reorgs")?;
        // Nothing left the event log: the derived tables are still its fold.
        let rebuilt = if total > 0 {
            Some(rebuild::rebuild(conn, progress).await?)
        } else {
            None
        };
        write_progress(
            conn,
            group,
            &[StreamProgress {
                stream: stream.to_owned(),
                last_entry_id: entry_id.to_owned(),
                entries: 1,
            }],
        )
        .await?;
        Ok(ReorgOutcome::Applied {
            reorg_id,
            moved,
            rebuilt,
        })
    })
    .await
}
