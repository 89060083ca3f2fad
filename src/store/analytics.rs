//! SQL of the analytics consumer: finding the triples a set of changed terms affects, reading
//! their vault figures, current triple_term rows and the stored rows of the pairs they count
//! into, and writing the recomputed rows — pair rows as absolute values, never as deltas added in
//! SQL, so Postgres never does arithmetic that could overflow a column.
//!
//! Ranges: every value written fits its column. triple_vault and triple_term figures are
//! saturating uint256 sums (`math::sum`, `saturating_add`), at most 2²⁵⁶−1, which NUMERIC(78,0)
//! holds; counts are saturating `i64`s; a pair's `total_market_cap` is `Total::value()`
//! (saturated) and its `total_market_cap_sum` a U512, which NUMERIC(155,0) holds.

use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use primitive_types::U256;

use super::rows::{
    predicate_object_rows, subject_predicate_rows, triple_term_rows, triple_vault_rows,
};
use super::rowset::pg_numeric;
use super::text::{bytes32 as id, u256 as num, u512 as num512};
use crate::domain::analytics::{PairWrite, TripleKeys, VaultFigures};
use crate::domain::math;
use crate::domain::rows::{PairKey, PairRow, TripleTermRow, TripleVaultRow};
use crate::domain::TermId;

#[derive(QueryableByName)]
struct TripleRecord {
    #[diesel(sql_type = Text)]
    term_id: String,
    #[diesel(sql_type = Text)]
    counter_term_id: String,
    #[diesel(sql_type = Text)]
    subject_id: String,
    #[diesel(sql_type = Text)]
    predicate_id: String,
    #[diesel(sql_type = Text)]
    object_id: String,
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
    total_assets: String,
    #[diesel(sql_type = Text)]
    market_cap: String,
    #[diesel(sql_type = BigInt)]
    position_count: i64,
}

#[derive(QueryableByName)]
struct TripleTermRecord {
    #[diesel(sql_type = Text)]
    term_id: String,
    #[diesel(sql_type = Text)]
    counter_term_id: String,
    #[diesel(sql_type = Text)]
    total_assets: String,
    #[diesel(sql_type = Text)]
    total_market_cap: String,
    #[diesel(sql_type = BigInt)]
    total_position_count: i64,
}

#[derive(QueryableByName)]
struct PairRecord {
    #[diesel(sql_type = Text)]
    a: String,
    #[diesel(sql_type = Text)]
    b: String,
    #[diesel(sql_type = BigInt)]
    triple_count: i64,
    #[diesel(sql_type = BigInt)]
    total_position_count: i64,
    #[diesel(sql_type = Text)]
    total_market_cap_sum: String,
}

/// A pair table: its name and its two key columns, in [`PairKey`] order.
#[derive(Debug, Clone, Copy)]
pub struct PairTable {
    pub name: &'static str,
    pub first: &'static str,
    pub second: &'static str,
}

pub const PREDICATE_OBJECT: PairTable = PairTable {
    name: "predicate_object",
    first: "predicate_id",
    second: "object_id",
};

pub const SUBJECT_PREDICATE: PairTable = PairTable {
    name: "subject_predicate",
    first: "subject_id",
    second: "predicate_id",
};

/// Serialises analytics transactions across processes: they read then write pair aggregates, so
/// two at once could count a triple's change twice. A transaction-scoped advisory lock, released
/// at commit or rollback.
pub async fn lock(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(7310411862190233169)")
        .execute(conn)
        .await
        .context("taking the analytics lock")?;
    Ok(())
}

/// Triples whose pro or counter term is one of `terms`.
pub async fn affected_triples(
    conn: &mut AsyncPgConnection,
    terms: &[String],
) -> anyhow::Result<Vec<TripleKeys>> {
    let rows: Vec<TripleRecord> = diesel::sql_query(
        "SELECT term_id, counter_term_id, subject_id, predicate_id, object_id FROM triple \
         WHERE term_id = ANY($1) OR counter_term_id = ANY($1)",
    )
    .bind::<Array<Text>, _>(terms)
    .load(conn)
    .await
    .context("reading affected triples")?;
    rows.iter()
        .map(|r| {
            Ok(TripleKeys {
                term_id: id(&r.term_id)?,
                counter_term_id: id(&r.counter_term_id)?,
                subject_id: id(&r.subject_id)?,
                predicate_id: id(&r.predicate_id)?,
                object_id: id(&r.object_id)?,
            })
        })
        .collect()
}

/// Vault figures of `terms`, as `(term, curve, figures)`.
pub async fn vault_figures(
    conn: &mut AsyncPgConnection,
    terms: &[String],
) -> anyhow::Result<Vec<(TermId, U256, VaultFigures)>> {
    let rows: Vec<VaultRecord> = diesel::sql_query(
        "SELECT term_id, curve_id::text AS curve_id, total_shares::text AS total_shares, total_assets::text AS total_assets, \
         market_cap::text AS market_cap, position_count FROM vault WHERE term_id = ANY($1)",
    )
    .bind::<Array<Text>, _>(terms)
    .load(conn)
    .await
    .context("reading vault figures")?;
    rows.iter()
        .map(|r| {
            Ok((
                id(&r.term_id)?,
                num(&r.curve_id)?,
                VaultFigures {
                    total_shares: num(&r.total_shares)?,
                    total_assets: num(&r.total_assets)?,
                    market_cap: num(&r.market_cap)?,
                    position_count: r.position_count,
                },
            ))
        })
        .collect()
}

/// Current triple_term rows of `triples`.
pub async fn triple_terms(
    conn: &mut AsyncPgConnection,
    triples: &[String],
) -> anyhow::Result<Vec<TripleTermRow>> {
    let rows: Vec<TripleTermRecord> = diesel::sql_query(
        "SELECT term_id, counter_term_id, total_assets::text AS total_assets, total_market_cap::text AS total_market_cap, \
         total_position_count FROM triple_term WHERE term_id = ANY($1)",
    )
    .bind::<Array<Text>, _>(triples)
    .load(conn)
    .await
    .context("reading triple_term")?;
    rows.iter()
        .map(|r| {
            Ok(TripleTermRow {
                term_id: id(&r.term_id)?,
                counter_term_id: id(&r.counter_term_id)?,
                total_assets: num(&r.total_assets)?,
                total_market_cap: num(&r.total_market_cap)?,
                total_position_count: r.total_position_count,
            })
        })
        .collect()
}

/// The stored rows of `keys` in `table` (one set-based query; keys with no row are left out).
/// Only the exact sum is read: the shown market cap is a function of it.
pub async fn pair_rows(
    conn: &mut AsyncPgConnection,
    table: PairTable,
    keys: &[PairKey],
) -> anyhow::Result<Vec<PairRow>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let a: Vec<String> = keys.iter().map(|k| k.0.to_string()).collect();
    let b: Vec<String> = keys.iter().map(|k| k.1.to_string()).collect();
    let PairTable {
        name,
        first,
        second,
    } = table;
    let rows: Vec<PairRecord> = diesel::sql_query(format!(
        "SELECT t.{first} AS a, t.{second} AS b, t.triple_count, t.total_position_count, \
         t.total_market_cap_sum::text AS total_market_cap_sum \
         FROM {name} t JOIN UNNEST($1::text[], $2::text[]) AS u(a, b) ON t.{first} = u.a AND t.{second} = u.b"
    ))
    .bind::<Array<Text>, _>(&a)
    .bind::<Array<Text>, _>(&b)
    .load(conn)
    .await
    .with_context(|| format!("reading {name}"))?;
    rows.iter()
        .map(|r| {
            let sum = num512(&r.total_market_cap_sum)?;
            Ok(PairRow {
                key: (id(&r.a)?, id(&r.b)?),
                triple_count: r.triple_count,
                total_position_count: r.total_position_count,
                total_market_cap: math::saturate(sum),
                total_market_cap_sum: sum,
            })
        })
        .collect()
}

/// Everything one analytics batch writes.
#[derive(Debug, Default)]
pub struct AnalyticsWrite {
    pub triple_vaults: Vec<TripleVaultRow>,
    /// Triples whose triple_vault rows are exactly `triple_vaults` now (stale curves deleted).
    pub triples: Vec<String>,
    pub triple_terms: Vec<TripleTermRow>,
    /// Absolute pair rows (`None`: delete the pair, no triple is left).
    pub predicate_object: Vec<PairWrite>,
    pub subject_predicate: Vec<PairWrite>,
}

/// Writes a batch (inside the caller's transaction).
pub async fn write(conn: &mut AsyncPgConnection, w: &AnalyticsWrite) -> anyhow::Result<()> {
    if !w.triples.is_empty() {
        // Curves a triple no longer has (only after a reorg): drop their rows.
        let (mut keep_t, mut keep_c): (Vec<String>, Vec<diesel::pg::data_types::PgNumeric>) =
            (vec![], vec![]);
        for r in &w.triple_vaults {
            keep_t.push(r.term_id.to_string());
            keep_c.push(pg_numeric(&r.curve_id));
        }
        diesel::sql_query(
            "DELETE FROM triple_vault tv WHERE tv.term_id = ANY($1) AND NOT EXISTS \
             (SELECT 1 FROM UNNEST($2::text[], $3::numeric[]) AS k(t, c) WHERE k.t = tv.term_id AND k.c = tv.curve_id)",
        )
        .bind::<Array<Text>, _>(&w.triples)
        .bind::<Array<Text>, _>(keep_t)
        .bind::<Array<diesel::sql_types::Numeric>, _>(keep_c)
        .execute(conn)
        .await
        .context("deleting stale triple_vault rows")?;
    }
    let shared: &AsyncPgConnection = conn;
    triple_vault_rows(&w.triple_vaults)
        .write(shared)
        .await
        .context("writing triple_vault")?;
    triple_term_rows(&w.triple_terms)
        .write(shared)
        .await
        .context("writing triple_term")?;
    let upserts = |writes: &[PairWrite]| -> Vec<PairRow> {
        writes.iter().filter_map(|(_, r)| r.clone()).collect()
    };
    predicate_object_rows(upserts(&w.predicate_object))
        .write(shared)
        .await
        .context("writing predicate_object")?;
    subject_predicate_rows(upserts(&w.subject_predicate))
        .write(shared)
        .await
        .context("writing subject_predicate")?;
    for (table, writes) in [
        (PREDICATE_OBJECT, &w.predicate_object),
        (SUBJECT_PREDICATE, &w.subject_predicate),
    ] {
        delete_pairs(conn, table, writes).await?;
    }
    Ok(())
}

/// Deletes the triple_term rows of `triples` (their triple_vault rows go with a write whose
/// `triples` names them and whose `triple_vaults` has none of theirs).
pub async fn delete_triple_terms(
    conn: &mut AsyncPgConnection,
    triples: &[String],
) -> anyhow::Result<()> {
    diesel::sql_query("DELETE FROM triple_term WHERE term_id = ANY($1)")
        .bind::<Array<Text>, _>(triples)
        .execute(conn)
        .await
        .context("deleting triple_term rows")?;
    Ok(())
}

/// Deletes the pairs left with no triple (`None` in `writes`).
async fn delete_pairs(
    conn: &mut AsyncPgConnection,
    table: PairTable,
    writes: &[PairWrite],
) -> anyhow::Result<()> {
    let gone: Vec<&PairKey> = writes
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(k, _)| k)
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let a: Vec<String> = gone.iter().map(|k| k.0.to_string()).collect();
    let b: Vec<String> = gone.iter().map(|k| k.1.to_string()).collect();
    let PairTable {
        name,
        first,
        second,
    } = table;
    diesel::sql_query(format!(
        "DELETE FROM {name} t USING UNNEST($1::text[], $2::text[]) AS u(a, b) \
         WHERE t.{first} = u.a AND t.{second} = u.b"
    ))
    .bind::<Array<Text>, _>(&a)
    .bind::<Array<Text>, _>(&b)
    .execute(conn)
    .await
    .with_context(|| format!("deleting empty {name} rows"))?;
    Ok(())
}
