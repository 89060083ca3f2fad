//! SQL of the analytics consumer: finding the triples a set of changed terms affects, reading
//! their vault figures and current triple_term rows, and writing the recomputed rows and the
//! pair deltas.

use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use primitive_types::U256;

use super::rows::{triple_term_rows, triple_vault_rows};
use super::rowset::pg_numeric;
use crate::domain::analytics::{PairDelta, TripleKeys, VaultFigures};
use crate::domain::rows::{PairKey, TripleTermRow, TripleVaultRow};
use crate::domain::{Bytes32, TermId};

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

fn id(s: &str) -> anyhow::Result<TermId> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim_start_matches("0x"), &mut out)
        .with_context(|| format!("{s:?} is not a term id"))?;
    Ok(Bytes32(out))
}

fn num(s: &str) -> anyhow::Result<U256> {
    U256::from_dec_str(s).map_err(|e| anyhow::anyhow!("{s:?} is not a uint256: {e:?}"))
}

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

/// Everything one analytics batch writes.
#[derive(Debug, Default)]
pub struct AnalyticsWrite {
    pub triple_vaults: Vec<TripleVaultRow>,
    /// Triples whose triple_vault rows are exactly `triple_vaults` now (stale curves deleted).
    pub triples: Vec<String>,
    pub triple_terms: Vec<TripleTermRow>,
    pub predicate_object: Vec<(PairKey, PairDelta)>,
    pub subject_predicate: Vec<(PairKey, PairDelta)>,
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
    for (table, first, second, deltas) in [
        (
            "predicate_object",
            "predicate_id",
            "object_id",
            &w.predicate_object,
        ),
        (
            "subject_predicate",
            "subject_id",
            "predicate_id",
            &w.subject_predicate,
        ),
    ] {
        apply_pair_deltas(conn, table, first, second, deltas).await?;
    }
    Ok(())
}

/// Adds the deltas to the pair rows (creating them), then deletes pairs left with no triple.
/// Conflict target: the pair key; the new values are old + delta, computed by Postgres in NUMERIC,
/// so the result is exact.
async fn apply_pair_deltas(
    conn: &mut AsyncPgConnection,
    table: &str,
    first: &str,
    second: &str,
    deltas: &[(PairKey, PairDelta)],
) -> anyhow::Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let a: Vec<String> = deltas.iter().map(|(k, _)| k.0.to_string()).collect();
    let b: Vec<String> = deltas.iter().map(|(k, _)| k.1.to_string()).collect();
    let n: Vec<i64> = deltas.iter().map(|(_, d)| d.triple_count).collect();
    let p: Vec<i64> = deltas.iter().map(|(_, d)| d.position_count).collect();
    let add: Vec<_> = deltas
        .iter()
        .map(|(_, d)| pg_numeric(&d.market_cap_add))
        .collect();
    let sub: Vec<_> = deltas
        .iter()
        .map(|(_, d)| pg_numeric(&d.market_cap_sub))
        .collect();
    let sql = format!(
        "INSERT INTO {table} AS t ({first}, {second}, triple_count, total_position_count, total_market_cap) \
         SELECT u.a, u.b, u.n, u.p, u.add - u.sub FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::numeric[], $6::numeric[]) \
         AS u(a, b, n, p, add, sub) \
         ON CONFLICT ({first}, {second}) DO UPDATE SET triple_count = t.triple_count + EXCLUDED.triple_count, \
         total_position_count = t.total_position_count + EXCLUDED.total_position_count, \
         total_market_cap = t.total_market_cap + EXCLUDED.total_market_cap"
    );
    diesel::sql_query(sql)
        .bind::<Array<Text>, _>(&a)
        .bind::<Array<Text>, _>(&b)
        .bind::<Array<BigInt>, _>(n)
        .bind::<Array<BigInt>, _>(p)
        .bind::<Array<diesel::sql_types::Numeric>, _>(add)
        .bind::<Array<diesel::sql_types::Numeric>, _>(sub)
        .execute(conn)
        .await
        .with_context(|| format!("writing {table}"))?;
    diesel::sql_query(format!(
        "DELETE FROM {table} t USING UNNEST($1::text[], $2::text[]) AS u(a, b) \
         WHERE t.{first} = u.a AND t.{second} = u.b AND t.triple_count <= 0"
    ))
    .bind::<Array<Text>, _>(&a)
    .bind::<Array<Text>, _>(&b)
    .execute(conn)
    .await
    .with_context(|| format!("deleting empty {table} rows"))?;
    Ok(())
}
