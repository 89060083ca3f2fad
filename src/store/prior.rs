//! Reading the stored base rows of given keys — what the `sync` service's state cache loads
//! before it folds a batch (`sync::shards`) and what a reorg recomputes from (`store::reorg`) —
//! and the stored events of given identities (the batch's identity check, through the
//! `event_transactions` keys, which `backfill_transaction_keys` adds once for events stored
//! before that table existed).
//!
//! One set-based query per table: keys travel as arrays (`= ANY($1)`, or `UNNEST` for composite
//! keys), so the cost is a few index probes per key whatever the size of the history.

use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::load::{load_events, EVENT_LOG};
use super::tables::{hash_prefix, HASH_PREFIX_SQL, TRANSACTIONS, TRANSACTION_KEY};
use super::text::{address, bytes32 as b32, term_type, u256 as num, vault_type};
use crate::domain::rows::{AtomRow, PositionRow, TermRow, TripleRow, VaultRow};
use crate::domain::types::TxHash;
use crate::domain::{BaseRows, Event, Keys, Order};

/// The stored rows of `keys`: atoms, triples, terms with every vault of those terms, positions.
/// Keys with no row are left out (the fold starts them fresh).
pub async fn load_base(conn: &mut AsyncPgConnection, keys: &Keys) -> anyhow::Result<BaseRows> {
    let mut rows = BaseRows::default();
    if !keys.atoms.is_empty() {
        let ids: Vec<String> = keys.atoms.iter().map(ToString::to_string).collect();
        let found: Vec<AtomRecord> = diesel::sql_query(
            "SELECT term_id, creator_id, wallet_id, data, raw_data, block_number, log_index, \
             transaction_hash, extract(epoch from created_at)::int8 AS created_at \
             FROM atom WHERE term_id = ANY($1)",
        )
        .bind::<Array<Text>, _>(ids)
        .load(conn)
        .await
        .context("reading stored atom rows")?;
        rows.atoms = found
            .into_iter()
            .map(AtomRecord::into_row)
            .collect::<anyhow::Result<_>>()
            .context("a stored atom row")?;
    }
    if !keys.triples.is_empty() {
        let ids: Vec<String> = keys.triples.iter().map(ToString::to_string).collect();
        let found: Vec<TripleRecord> = diesel::sql_query(
            "SELECT term_id, counter_term_id, creator_id, subject_id, predicate_id, object_id, \
             block_number, log_index, transaction_hash, \
             extract(epoch from created_at)::int8 AS created_at \
             FROM triple WHERE term_id = ANY($1)",
        )
        .bind::<Array<Text>, _>(ids)
        .load(conn)
        .await
        .context("reading stored triple rows")?;
        rows.triples = found
            .into_iter()
            .map(TripleRecord::into_row)
            .collect::<anyhow::Result<_>>()
            .context("a stored triple row")?;
    }
    if !keys.terms.is_empty() {
        let ids: Vec<String> = keys.terms.iter().map(ToString::to_string).collect();
        let found: Vec<TermRecord> = diesel::sql_query(
            "SELECT id, type, atom_id, triple_id, total_assets::text AS total_assets, \
             total_market_cap::text AS total_market_cap, is_atom, is_triple, counter_of \
             FROM term WHERE id = ANY($1)",
        )
        .bind::<Array<Text>, _>(ids.clone())
        .load(conn)
        .await
        .context("reading stored term rows")?;
        rows.terms = found
            .into_iter()
            .map(TermRecord::into_row)
            .collect::<anyhow::Result<_>>()
            .context("a stored term row")?;
        let found: Vec<VaultRecord> = diesel::sql_query(
            "SELECT term_id, curve_id::text AS curve_id, total_shares::text AS total_shares, \
             current_share_price::text AS current_share_price, total_assets::text AS total_assets, \
             market_cap::text AS market_cap, position_count, vault_type, price_block_number, \
             price_log_index, price_transaction_hash, type_block_number, type_log_index, \
             type_transaction_hash FROM vault WHERE term_id = ANY($1)",
        )
        .bind::<Array<Text>, _>(ids)
        .load(conn)
        .await
        .context("reading stored vault rows")?;
        rows.vaults = found
            .into_iter()
            .map(VaultRecord::into_row)
            .collect::<anyhow::Result<_>>()
            .context("a stored vault row")?;
    }
    if !keys.positions.is_empty() {
        let (mut accounts, mut terms, mut curves) = (Vec::new(), Vec::new(), Vec::new());
        for (a, t, c) in &keys.positions {
            accounts.push(a.to_checksum());
            terms.push(t.to_string());
            curves.push(c.to_string());
        }
        let found: Vec<PositionRecord> = diesel::sql_query(
            "SELECT p.account_id, p.term_id, p.curve_id::text AS curve_id, p.shares::text AS shares, \
             p.total_deposit_assets_after_total_fees::text AS deposits, \
             p.total_redeem_assets_for_receiver::text AS redeems, \
             extract(epoch from p.created_at)::int8 AS created_at, \
             extract(epoch from p.updated_at)::int8 AS updated_at, \
             p.first_block_number, p.first_log_index, p.first_transaction_hash, \
             p.last_block_number, p.last_log_index, p.last_transaction_hash \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(account_id, term_id, curve_id) \
             JOIN position p ON p.account_id = k.account_id AND p.term_id = k.term_id \
             AND p.curve_id = k.curve_id::numeric",
        )
        .bind::<Array<Text>, _>(accounts)
        .bind::<Array<Text>, _>(terms)
        .bind::<Array<Text>, _>(curves)
        .load(conn)
        .await
        .context("reading stored position rows")?;
        rows.positions = found
            .into_iter()
            .map(PositionRecord::into_row)
            .collect::<anyhow::Result<_>>()
            .context("a stored position row")?;
    }
    Ok(rows)
}

/// The stored events (any of the six event tables) with one of `identities`: two statements
/// find which are stored; only those few — redeliveries, conflicts — are then read whole.
///
/// First the batch's transactions are looked up in `event_transactions`, one compact index of
/// 8-byte keys (`tables::hash_prefix`): a transaction without a key has no stored event, which
/// is the usual answer and costs one descent of that index. Only the transactions with a key
/// (redelivered, in conflict, cut by a batch boundary, or sharing a key) are then probed in the
/// six event tables, by transaction hash, one indexed read per hash and table. Both probes are
/// sorted, in a `LATERAL` join: a plan that stays index probes whether or not the tables have
/// statistics (an `IN`/`ANY` over the batch flips to a whole-table hash join on tables never
/// analyzed). Rows of those transactions with other log indexes are dropped here.
pub async fn load_identities(
    conn: &mut AsyncPgConnection,
    identities: &[(TxHash, i64)],
) -> anyhow::Result<Vec<Event>> {
    if identities.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<i64> = identities.iter().map(|(h, _)| hash_prefix(h)).collect();
    keys.sort_unstable();
    keys.dedup();
    let known: Vec<KeyRecord> = diesel::sql_query(format!(
        "SELECT k.key FROM UNNEST($1::int8[]) AS k(key) CROSS JOIN LATERAL \
         (SELECT 1 FROM {TRANSACTIONS} t WHERE t.{key} = k.key) s",
        key = TRANSACTION_KEY[0],
    ))
    .bind::<Array<BigInt>, _>(&keys)
    .load(conn)
    .await
    .context("looking up the batch's transactions in event_transactions")?;
    if known.is_empty() {
        // The usual case (nothing redelivered): no event table is read.
        return Ok(Vec::new());
    }
    let known: std::collections::HashSet<i64> = known.into_iter().map(|r| r.key).collect();
    let mut hashes: Vec<String> = identities
        .iter()
        .filter(|(h, _)| known.contains(&hash_prefix(h)))
        .map(|(h, _)| h.to_string())
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    let probes: Vec<String> = EVENT_LOG
        .iter()
        .map(|t| {
            format!(
                "SELECT e.transaction_hash, e.log_index FROM {t} e \
                 WHERE e.transaction_hash = k.tx"
            )
        })
        .collect();
    let sql = format!(
        "SELECT s.transaction_hash, s.log_index FROM UNNEST($1::text[]) AS k(tx) \
         CROSS JOIN LATERAL ({}) s",
        probes.join(" UNION ALL ")
    );
    let found: Vec<IdentityRecord> = diesel::sql_query(sql)
        .bind::<Array<Text>, _>(hashes)
        .load(conn)
        .await
        .context("looking up the batch's identities in the event log")?;
    if found.is_empty() {
        // The usual case (nothing redelivered): no set of the batch's identities is built.
        return Ok(Vec::new());
    }
    let asked: std::collections::HashSet<&(TxHash, i64)> = identities.iter().collect();
    let mut kept = Vec::with_capacity(found.len());
    for r in found {
        if asked.contains(&(b32(&r.transaction_hash)?, r.log_index)) {
            kept.push(r);
        }
    }
    let found = kept;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    // Hex ids and integers read back from the event log: inlined as literals.
    let hashes: Vec<String> = found
        .iter()
        .map(|r| format!("'{}'", r.transaction_hash))
        .collect();
    let logs: Vec<String> = found.iter().map(|r| r.log_index.to_string()).collect();
    let filter = format!(
        "(transaction_hash, log_index) IN (SELECT * FROM UNNEST(ARRAY[{}]::text[], ARRAY[{}]::int8[]))",
        hashes.join(","),
        logs.join(",")
    );
    load_events(conn, Some(&filter))
        .await
        .context("reading stored events of the batch's identities")
}

/// Adds the `event_transactions` keys of every stored event, once: the first writer of the
/// version that introduced the table does it under its lease before its first batch, so events
/// an older writer stored while the migration ran are covered too. Returns the keys added, or
/// `None` when it was done before. Reads the whole event log (once per database); a writer of
/// an older version that takes the lease back afterwards would again store events without keys
/// (upgrade forward only, see the README).
pub async fn backfill_transaction_keys(
    conn: &mut AsyncPgConnection,
    lease: &super::lease::Lease,
) -> anyhow::Result<Option<usize>> {
    conn.transaction(async |conn| {
        super::lease::fence(conn, lease).await?;
        let cleared = diesel::sql_query("DELETE FROM event_transactions_backfill")
            .execute(conn)
            .await
            .context("clearing table event_transactions_backfill")?;
        if cleared == 0 {
            return Ok(None);
        }
        let stored: Vec<String> = EVENT_LOG
            .iter()
            .map(|t| format!("SELECT {HASH_PREFIX_SQL} AS k FROM {t}"))
            .collect();
        let added = diesel::sql_query(format!(
            "INSERT INTO {TRANSACTIONS} ({key}) SELECT DISTINCT k FROM ({}) e \
             ON CONFLICT ({key}) DO NOTHING",
            stored.join(" UNION ALL "),
            key = TRANSACTION_KEY[0],
        ))
        .execute(conn)
        .await
        .context("adding the event_transactions keys of the stored events")?;
        super::lease::fence(conn, lease).await?;
        Ok(Some(added))
    })
    .await
}

#[derive(QueryableByName)]
struct KeyRecord {
    #[diesel(sql_type = BigInt)]
    key: i64,
}

#[derive(QueryableByName)]
struct IdentityRecord {
    #[diesel(sql_type = Text)]
    transaction_hash: String,
    #[diesel(sql_type = BigInt)]
    log_index: i64,
}

fn order(block_number: i64, log_index: i64, tx: &str) -> anyhow::Result<Order> {
    Ok(Order {
        block_number,
        log_index,
        transaction_hash: b32(tx)?,
    })
}

#[derive(QueryableByName)]
struct AtomRecord {
    #[diesel(sql_type = Text)]
    term_id: String,
    #[diesel(sql_type = Text)]
    creator_id: String,
    #[diesel(sql_type = Text)]
    wallet_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    data: Option<String>,
    #[diesel(sql_type = Bytea)]
    raw_data: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    block_number: i64,
    #[diesel(sql_type = BigInt)]
    log_index: i64,
    #[diesel(sql_type = Text)]
    transaction_hash: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    created_at: Option<i64>,
}

impl AtomRecord {
    fn into_row(self) -> anyhow::Result<AtomRow> {
        Ok(AtomRow {
            term_id: b32(&self.term_id)?,
            creator_id: address(&self.creator_id)?,
            wallet_id: address(&self.wallet_id)?,
            data: self.data,
            raw_data: self.raw_data,
            block_number: self.block_number,
            log_index: self.log_index,
            transaction_hash: b32(&self.transaction_hash)?,
            created_at: self.created_at,
        })
    }
}

#[derive(QueryableByName)]
struct TripleRecord {
    #[diesel(sql_type = Text)]
    term_id: String,
    #[diesel(sql_type = Text)]
    counter_term_id: String,
    #[diesel(sql_type = Text)]
    creator_id: String,
    #[diesel(sql_type = Text)]
    subject_id: String,
    #[diesel(sql_type = Text)]
    predicate_id: String,
    #[diesel(sql_type = Text)]
    object_id: String,
    #[diesel(sql_type = BigInt)]
    block_number: i64,
    #[diesel(sql_type = BigInt)]
    log_index: i64,
    #[diesel(sql_type = Text)]
    transaction_hash: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    created_at: Option<i64>,
}

impl TripleRecord {
    fn into_row(self) -> anyhow::Result<TripleRow> {
        Ok(TripleRow {
            term_id: b32(&self.term_id)?,
            counter_term_id: b32(&self.counter_term_id)?,
            creator_id: address(&self.creator_id)?,
            subject_id: b32(&self.subject_id)?,
            predicate_id: b32(&self.predicate_id)?,
            object_id: b32(&self.object_id)?,
            block_number: self.block_number,
            log_index: self.log_index,
            transaction_hash: b32(&self.transaction_hash)?,
            created_at: self.created_at,
        })
    }
}

#[derive(QueryableByName)]
struct TermRecord {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text, column_name = "type")]
    term_type: String,
    #[diesel(sql_type = Nullable<Text>)]
    atom_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    triple_id: Option<String>,
    #[diesel(sql_type = Text)]
    total_assets: String,
    #[diesel(sql_type = Text)]
    total_market_cap: String,
    #[diesel(sql_type = Bool)]
    is_atom: bool,
    #[diesel(sql_type = Bool)]
    is_triple: bool,
    #[diesel(sql_type = Nullable<Text>)]
    counter_of: Option<String>,
}

impl TermRecord {
    fn into_row(self) -> anyhow::Result<TermRow> {
        Ok(TermRow {
            id: b32(&self.id)?,
            term_type: term_type(&self.term_type)?,
            atom_id: self.atom_id.as_deref().map(b32).transpose()?,
            triple_id: self.triple_id.as_deref().map(b32).transpose()?,
            total_assets: num(&self.total_assets)?,
            total_market_cap: num(&self.total_market_cap)?,
            is_atom: self.is_atom,
            is_triple: self.is_triple,
            counter_of: self.counter_of.as_deref().map(b32).transpose()?,
        })
    }
}

#[derive(QueryableByName)]
struct VaultRecord {
    #[diesel(sql_type = Text)]
    term_id: String,
    #[diesel(sql_type = Text)]
    curve_id: String,
    #[diesel(sql_type = Text)]
    total_shares: String,
    #[diesel(sql_type = Text)]
    current_share_price: String,
    #[diesel(sql_type = Text)]
    total_assets: String,
    #[diesel(sql_type = Text)]
    market_cap: String,
    #[diesel(sql_type = BigInt)]
    position_count: i64,
    #[diesel(sql_type = Text)]
    vault_type: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    price_block_number: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    price_log_index: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    price_transaction_hash: Option<String>,
    #[diesel(sql_type = BigInt)]
    type_block_number: i64,
    #[diesel(sql_type = BigInt)]
    type_log_index: i64,
    #[diesel(sql_type = Text)]
    type_transaction_hash: String,
}

impl VaultRecord {
    fn into_row(self) -> anyhow::Result<VaultRow> {
        let price_at = match (
            self.price_block_number,
            self.price_log_index,
            self.price_transaction_hash.as_deref(),
        ) {
            (Some(b), Some(l), Some(t)) => Some(order(b, l, t)?),
            _ => None,
        };
        Ok(VaultRow {
            term_id: b32(&self.term_id)?,
            curve_id: num(&self.curve_id)?,
            total_shares: num(&self.total_shares)?,
            current_share_price: num(&self.current_share_price)?,
            total_assets: num(&self.total_assets)?,
            market_cap: num(&self.market_cap)?,
            position_count: self.position_count,
            vault_type: vault_type(&self.vault_type)?,
            price_at,
            type_at: order(
                self.type_block_number,
                self.type_log_index,
                &self.type_transaction_hash,
            )?,
        })
    }
}

#[derive(QueryableByName)]
struct PositionRecord {
    #[diesel(sql_type = Text)]
    account_id: String,
    #[diesel(sql_type = Text)]
    term_id: String,
    #[diesel(sql_type = Text)]
    curve_id: String,
    #[diesel(sql_type = Text)]
    shares: String,
    #[diesel(sql_type = Text)]
    deposits: String,
    #[diesel(sql_type = Text)]
    redeems: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    created_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    updated_at: Option<i64>,
    #[diesel(sql_type = BigInt)]
    first_block_number: i64,
    #[diesel(sql_type = BigInt)]
    first_log_index: i64,
    #[diesel(sql_type = Text)]
    first_transaction_hash: String,
    #[diesel(sql_type = BigInt)]
    last_block_number: i64,
    #[diesel(sql_type = BigInt)]
    last_log_index: i64,
    #[diesel(sql_type = Text)]
    last_transaction_hash: String,
}

impl PositionRecord {
    fn into_row(self) -> anyhow::Result<PositionRow> {
        Ok(PositionRow {
            account_id: address(&self.account_id)?,
            term_id: b32(&self.term_id)?,
            curve_id: num(&self.curve_id)?,
            shares: num(&self.shares)?,
            total_deposit_assets_after_total_fees: num(&self.deposits)?,
            total_redeem_assets_for_receiver: num(&self.redeems)?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            first_at: order(
                self.first_block_number,
                self.first_log_index,
                &self.first_transaction_hash,
            )?,
            last_at: order(
                self.last_block_number,
                self.last_log_index,
                &self.last_transaction_hash,
            )?,
        })
    }
}
