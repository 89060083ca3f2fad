//! Applying a reorg notice (SPEC §5), in one transaction: every event of the notice's network
//! (events with no network included) at or after `fork_block` moves from the event tables to
//! `reorged_events` (the audit); the rows of the keys those events touched — and only those —
//! are recomputed from their stored rows and the remaining events that decide them
//! ([`crate::domain::state::recompute_keys`], the fold's own code), and only rows whose value
//! changes are written or deleted; the notice is recorded in `reorgs` and `sync_progress`, and the
//! touched terms go to the outbox so the analytics consumer recomputes their triples.
//!
//! Cost: a few indexed reads per touched key (the migration `key_prefix_indexes` indexes the
//! event tables by position, by vault and by term, on the keys' [`key_prefix`]), plus the events
//! of the touched positions — not the history.
//!
//! A notice redelivered after its transaction committed (a crash before XACK) finds its row in
//! `reorgs` and does nothing.

use anyhow::Context;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::analytics as sql;
use super::load::{load_events, load_events_from, EVENT_LOG};
use super::rebuild;
use super::tables::events::{key_prefix, key_prefix_sql};
use super::{prior, rows, write_progress, StreamProgress};
use crate::domain::analytics::{withdraw, TripleKeys};
use crate::domain::rows::TripleRow;
use crate::domain::state::recompute_keys;
use crate::domain::{BaseRows, Event, Keys};
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
        /// What the recomputation of the touched keys wrote.
        recomputed: Recomputed,
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

/// What the recomputation after a reorg did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recomputed {
    /// Keys the orphaned events touched (atoms, triples, terms, vaults, positions).
    pub keys: usize,
    /// Remaining events read to recompute them.
    pub events_read: usize,
    /// Base rows written (their value changed) and deleted (nothing names the key any more).
    pub rows_written: usize,
    pub rows_deleted: usize,
    /// Triples taken out of their pair rows (their creation left, or now names other ids).
    pub triples_withdrawn: usize,
}

/// Applies the notice in one transaction (see the module docs).
pub async fn apply(
    conn: &mut AsyncPgConnection,
    request: ReorgRequest<'_>,
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
        index_reads_only(conn).await?;
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
        // The orphaned events as the fold knows them, before they move.
        let orphaned = load_events(conn, Some(&orphaned_condition(notice))).await?;
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
        anyhow::ensure!(
            total == orphaned.len(),
            "reorg: {} orphaned events read but {total} moved",
            orphaned.len()
        );
        let recomputed = recompute(conn, &orphaned).await?;
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
            recomputed,
        })
    })
    .await
}

/// Every read of a reorg is a few index probes by design (block number, position, vault, term).
/// Right after a catch-up the event tables may not be analyzed yet, and without statistics the
/// planner guesses a third of the table for `block_number >= fork` and scans all of it (8.6 s at
/// 10 M events for 167 orphaned events). The newest event of a vault is the first row of a
/// backward walk of its key index, but the planner, which expects one row of the whole key,
/// prefers reading every event of the vault and sorting them (445 ms for 31 vaults at 2 M
/// events, 1.8 ms walking): so a full sort is a last resort. For this transaction only: index
/// paths, no full sorts, no parallel workers, no JIT (both only pay off on the large scans this
/// transaction never needs).
async fn index_reads_only(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    for setting in [
        "SET LOCAL enable_seqscan = off",
        "SET LOCAL enable_sort = off",
        "SET LOCAL max_parallel_workers_per_gather = 0",
        "SET LOCAL jit = off",
    ] {
        diesel::sql_query(setting)
            .execute(conn)
            .await
            .with_context(|| format!("{setting} for the reorg transaction"))?;
    }
    Ok(())
}

/// The SQL condition of the events `notice` orphans (the move above binds the same values).
fn orphaned_condition(notice: &ReorgNotice) -> String {
    let network = match &notice.network {
        // A notice without a network rolls back every network.
        None => "TRUE".to_owned(),
        Some(n) => format!("(network IS NULL OR network = {})", literal(n)),
    };
    format!("block_number >= {} AND {network}", notice.fork_block)
}

/// `s` as an SQL string literal (the decoder refuses NUL; standard_conforming_strings is on).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `ARRAY[…]::{ty}[]` of already-checked values (hex ids, addresses, decimal numbers).
fn array(values: impl Iterator<Item = String>, ty: &str) -> String {
    let items: Vec<String> = values.map(|v| format!("'{v}'")).collect();
    format!("ARRAY[{}]::{ty}[]", items.join(","))
}

/// The newest event of `table` per key of `keys` (`k_prefix`, the [`key_prefix`] of `k_term`,
/// and optionally `k_curve` columns): a backward walk of the table's key index from the key's
/// newest block, stopping at the first event of the whole key.
fn newest_per_key(table: &str, keys: &str, by_curve: bool) -> String {
    let curve = if by_curve {
        " AND e.curve_id = k.k_curve"
    } else {
        ""
    };
    format!(
        "{keys} CROSS JOIN LATERAL (SELECT * FROM {table} e WHERE {} = k.k_prefix \
         AND e.term_id = k.k_term{curve} \
         ORDER BY e.block_number DESC, e.log_index DESC, e.transaction_hash COLLATE \"C\" DESC \
         LIMIT 1) x",
        key_prefix_sql("e.term_id")
    )
}

/// `ARRAY[…]::bigint[]` of the [`key_prefix`] of each of `ids`.
fn prefixes<'a>(ids: impl Iterator<Item = &'a [u8]>) -> String {
    array(ids.map(|id| key_prefix(id).to_string()), "bigint")
}

/// Recomputes the base rows of the keys `orphaned` touched (they have left the event log) and
/// writes those whose value changed; see the module docs.
async fn recompute(conn: &mut AsyncPgConnection, orphaned: &[Event]) -> anyhow::Result<Recomputed> {
    let keys = Keys::of_events(orphaned);
    if keys.is_empty() {
        return Ok(Recomputed::default());
    }
    let stored = prior::load_base(conn, &keys).await?;
    let (decisive, vault_events) = remaining_decisive(conn, &keys).await?;
    let events_read = decisive.len() + vault_events.len();
    let new = recompute_keys(stored.clone(), &keys, &decisive, &vault_events);
    let withdrawn = withdraw_triples(conn, &stored.triples, &new.triples).await?;
    let (changed, gone) = difference(&keys, stored, new);
    let rows_written = changed.atoms.len()
        + changed.triples.len()
        + changed.terms.len()
        + changed.vaults.len()
        + changed.positions.len();
    let rows_deleted = gone.len();
    let mut terms: Vec<String> = keys.terms.iter().map(ToString::to_string).collect();
    terms.sort_unstable();
    let shared: &AsyncPgConnection = conn;
    for set in rows::base_rows(changed) {
        let table = set.table;
        set.write(shared)
            .await
            .with_context(|| format!("writing recomputed {table} rows"))?;
    }
    delete_rows(conn, &gone).await?;
    diesel::sql_query("INSERT INTO term_update_outbox (term_ids) VALUES ($1)")
        .bind::<diesel::sql_types::Array<Text>, _>(&terms)
        .execute(conn)
        .await
        .context("writing term_update_outbox")?;
    Ok(Recomputed {
        keys: keys.len(),
        events_read,
        rows_written,
        rows_deleted,
        triples_withdrawn: withdrawn,
    })
}

/// The remaining events that decide the rows of `keys` (see `recompute_keys`): `(decisive,
/// vault_events)`.
async fn remaining_decisive(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
) -> anyhow::Result<(Vec<Event>, Vec<Event>)> {
    let mut decisive = Vec::new();
    let mut vault_events = Vec::new();
    if !keys.positions.is_empty() {
        // Every event of each position, through the table's position index (term and receiver
        // prefixes), the whole key checked on the row. The keys are a set: no event twice.
        let p = &keys.positions;
        let k = format!(
            "UNNEST({}, {}, {}, {}, {}) AS k(k_term_prefix, k_receiver_prefix, k_term, k_receiver, k_curve)",
            prefixes(p.iter().map(|k| &k.1 .0[..])),
            prefixes(p.iter().map(|k| &k.0 .0[..])),
            array(p.iter().map(|k| k.1.to_string()), "text"),
            array(p.iter().map(|k| k.0.to_checksum()), "text"),
            array(p.iter().map(|k| k.2.to_string()), "numeric"),
        );
        for table in ["deposited_events", "redeemed_events"] {
            let from = format!(
                "{k} CROSS JOIN LATERAL (SELECT * FROM {table} e WHERE {} = k.k_term_prefix \
                 AND {} = k.k_receiver_prefix AND e.term_id = k.k_term \
                 AND e.receiver = k.k_receiver AND e.curve_id = k.k_curve) x",
                key_prefix_sql("e.term_id"),
                key_prefix_sql("e.receiver"),
            );
            decisive.extend(load_events_from(conn, table, &from).await?);
        }
    }
    if !keys.vaults.is_empty() {
        let v = &keys.vaults;
        let k = format!(
            "UNNEST({}, {}, {}) AS k(k_prefix, k_term, k_curve)",
            prefixes(v.iter().map(|k| &k.0 .0[..])),
            array(v.iter().map(|k| k.0.to_string()), "text"),
            array(v.iter().map(|k| k.1.to_string()), "numeric"),
        );
        let table = "share_price_changed_events";
        decisive.extend(load_events_from(conn, table, &newest_per_key(table, &k, true)).await?);
        for table in ["deposited_events", "redeemed_events"] {
            vault_events
                .extend(load_events_from(conn, table, &newest_per_key(table, &k, true)).await?);
        }
    }
    for (table, ids) in [
        ("atom_created_events", &keys.atoms),
        ("triple_created_events", &keys.triples),
    ] {
        if ids.is_empty() {
            continue;
        }
        let k = format!(
            "UNNEST({}, {}) AS k(k_prefix, k_term)",
            prefixes(ids.iter().map(|id| &id.0[..])),
            array(ids.iter().map(ToString::to_string), "text")
        );
        decisive.extend(load_events_from(conn, table, &newest_per_key(table, &k, false)).await?);
    }
    Ok((decisive, vault_events))
}

/// Keys whose row a reorg deletes.
#[derive(Debug, Default)]
struct Gone {
    atoms: Vec<String>,
    triples: Vec<String>,
    terms: Vec<String>,
    vaults: Vec<(String, String)>,
    positions: Vec<(String, String, String)>,
}

impl Gone {
    fn len(&self) -> usize {
        self.atoms.len()
            + self.triples.len()
            + self.terms.len()
            + self.vaults.len()
            + self.positions.len()
    }
}

/// The rows of `new` that differ from the stored ones, and the stored rows of `keys` that `new`
/// no longer has.
fn difference(keys: &Keys, stored: BaseRows, new: BaseRows) -> (BaseRows, Gone) {
    use std::collections::HashMap;
    fn split<K: std::hash::Hash + Eq + Copy, R: PartialEq>(
        stored: Vec<R>,
        new: Vec<R>,
        key: impl Fn(&R) -> K,
        touched: impl Fn(&K) -> bool,
    ) -> (Vec<R>, Vec<K>) {
        let mut before: HashMap<K, R> = stored
            .into_iter()
            .map(|r| (key(&r), r))
            .filter(|(k, _)| touched(k))
            .collect();
        let mut changed = Vec::new();
        for r in new {
            match before.remove(&key(&r)) {
                Some(old) if old == r => {}
                _ => changed.push(r),
            }
        }
        (changed, before.into_keys().collect())
    }
    let (atoms, atoms_gone) = split(
        stored.atoms,
        new.atoms,
        |r| r.term_id,
        |k| keys.atoms.contains(k),
    );
    let (triples, triples_gone) = split(
        stored.triples,
        new.triples,
        |r| r.term_id,
        |k| keys.triples.contains(k),
    );
    let (terms, terms_gone) = split(
        stored.terms,
        new.terms,
        |r| r.id,
        |k| keys.terms.contains(k),
    );
    let (vaults, vaults_gone) = split(
        stored.vaults,
        new.vaults,
        |r| (r.term_id, r.curve_id),
        |k| keys.vaults.contains(k),
    );
    let (positions, positions_gone) = split(
        stored.positions,
        new.positions,
        |r| (r.account_id, r.term_id, r.curve_id),
        |k| keys.positions.contains(k),
    );
    let gone = Gone {
        atoms: atoms_gone.iter().map(ToString::to_string).collect(),
        triples: triples_gone.iter().map(ToString::to_string).collect(),
        terms: terms_gone.iter().map(ToString::to_string).collect(),
        vaults: vaults_gone
            .iter()
            .map(|(t, c)| (t.to_string(), c.to_string()))
            .collect(),
        positions: positions_gone
            .iter()
            .map(|(a, t, c)| (a.to_checksum(), t.to_string(), c.to_string()))
            .collect(),
    };
    (
        BaseRows {
            atoms,
            triples,
            terms,
            vaults,
            positions,
        },
        gone,
    )
}

/// Deletes the rows of `gone`.
async fn delete_rows(conn: &mut AsyncPgConnection, gone: &Gone) -> anyhow::Result<()> {
    let one = |table: &str, column: &str, ids: &[String]| {
        (!ids.is_empty()).then(|| {
            format!(
                "DELETE FROM {table} WHERE {column} = ANY({})",
                array(ids.iter().cloned(), "text")
            )
        })
    };
    let mut statements: Vec<String> = [
        one("atom", "term_id", &gone.atoms),
        one("triple", "term_id", &gone.triples),
        one("term", "id", &gone.terms),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !gone.vaults.is_empty() {
        statements.push(format!(
            "DELETE FROM vault v USING UNNEST({}, {}) AS k(t, c) WHERE v.term_id = k.t AND v.curve_id = k.c",
            array(gone.vaults.iter().map(|k| k.0.clone()), "text"),
            array(gone.vaults.iter().map(|k| k.1.clone()), "numeric"),
        ));
    }
    if !gone.positions.is_empty() {
        statements.push(format!(
            "DELETE FROM position p USING UNNEST({}, {}, {}) AS k(a, t, c) \
             WHERE p.account_id = k.a AND p.term_id = k.t AND p.curve_id = k.c",
            array(gone.positions.iter().map(|k| k.0.clone()), "text"),
            array(gone.positions.iter().map(|k| k.1.clone()), "text"),
            array(gone.positions.iter().map(|k| k.2.clone()), "numeric"),
        ));
    }
    for sql in statements {
        diesel::sql_query(&sql)
            .execute(conn)
            .await
            .context("deleting base rows no event names any more")?;
    }
    Ok(())
}

/// Takes the triples of `stored` that `new` no longer has, or has naming other subject,
/// predicate or object (a reorg took their creation out; a newer creation, of a reorg or of a
/// batch, names other ids), out of the pair rows they were counted into, and deletes their
/// triple_vault and triple_term rows; the analytics consumer counts the remaining creation in
/// anew. Takes no lock: the caller holds the analytics lock. Returns the number of triples
/// withdrawn.
pub(super) async fn withdraw_triples(
    conn: &mut AsyncPgConnection,
    stored: &[TripleRow],
    new: &[TripleRow],
) -> anyhow::Result<usize> {
    let keys = |t: &TripleRow| TripleKeys {
        term_id: t.term_id,
        counter_term_id: t.counter_term_id,
        subject_id: t.subject_id,
        predicate_id: t.predicate_id,
        object_id: t.object_id,
    };
    let moved: Vec<TripleKeys> = stored
        .iter()
        .filter(|old| {
            new.iter()
                .find(|n| n.term_id == old.term_id)
                .is_none_or(|n| keys(n) != keys(old))
        })
        .map(keys)
        .collect();
    if moved.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = moved.iter().map(|t| t.term_id.to_string()).collect();
    let counted: std::collections::HashMap<_, _> = sql::triple_terms(conn, &ids)
        .await?
        .into_iter()
        .map(|r| (r.term_id, r))
        .collect();
    let gone: Vec<(TripleKeys, crate::domain::rows::TripleTermRow)> = moved
        .iter()
        .filter_map(|t| counted.get(&t.term_id).map(|r| (*t, r.clone())))
        .collect();
    let (po_keys, sp_keys) = crate::domain::analytics::touched_pairs(&moved);
    let stored_po = sql::pair_rows(conn, sql::PREDICATE_OBJECT, &po_keys).await?;
    let stored_sp = sql::pair_rows(conn, sql::SUBJECT_PREDICATE, &sp_keys).await?;
    let (predicate_object, subject_predicate) = withdraw(&gone, &stored_po, &stored_sp);
    sql::write(
        conn,
        &sql::AnalyticsWrite {
            triple_vaults: Vec::new(),
            triples: ids.clone(),
            triple_terms: Vec::new(),
            predicate_object,
            subject_predicate,
        },
    )
    .await?;
    sql::delete_triple_terms(conn, &ids).await?;
    Ok(moved.len())
}
