//! The derived tables in a canonical form (numbers as text, times as Unix seconds, bytes as hex),
//! whole or one key range, and their comparison with the fold's rows: what `verify` and the
//! tests check. [`DERIVED`] names each table's key and columns.

use std::collections::BTreeMap;

use anyhow::Context;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use super::load::KeyFilter;
use super::partition::Ranges;
use crate::domain::rows::{PairRow, Tables};
use crate::domain::Address;

/// A derived table: its name, the number of key columns, and the SELECT expressions of its
/// columns in canonical form (numbers as text, times as Unix seconds, bytes as hex).
#[derive(Debug)]
pub struct TableShape {
    pub name: &'static str,
    pub key_len: usize,
    /// The id column that key ranges cut (the term id; for a pair table, its first id): the
    /// leading column of an index of the table.
    pub range_column: &'static str,
    pub select: &'static [&'static str],
}

pub const DERIVED: [TableShape; 9] = [
    TableShape {
        name: "atom",
        key_len: 1,
        range_column: "term_id",
        select: &[
            "term_id",
            "creator_id",
            "wallet_id",
            "data",
            "encode(raw_data, 'hex')",
            "block_number",
            "log_index",
            "transaction_hash",
            "extract(epoch from created_at)::int8",
        ],
    },
    TableShape {
        name: "triple",
        key_len: 1,
        range_column: "term_id",
        select: &[
            "term_id",
            "counter_term_id",
            "creator_id",
            "subject_id",
            "predicate_id",
            "object_id",
            "block_number",
            "log_index",
            "transaction_hash",
            "extract(epoch from created_at)::int8",
        ],
    },
    TableShape {
        name: "position",
        key_len: 3,
        range_column: "term_id",
        select: &[
            "account_id",
            "term_id",
            "curve_id::text",
            "shares::text",
            "total_deposit_assets_after_total_fees::text",
            "total_redeem_assets_for_receiver::text",
            "extract(epoch from created_at)::int8",
            "extract(epoch from updated_at)::int8",
            "first_block_number",
            "first_log_index",
            "first_transaction_hash",
            "last_block_number",
            "last_log_index",
            "last_transaction_hash",
        ],
    },
    TableShape {
        name: "vault",
        key_len: 2,
        range_column: "term_id",
        select: &[
            "term_id",
            "curve_id::text",
            "total_shares::text",
            "current_share_price::text",
            "total_assets::text",
            "market_cap::text",
            "position_count",
            "vault_type",
            "price_block_number",
            "price_log_index",
            "price_transaction_hash",
            "type_block_number",
            "type_log_index",
            "type_transaction_hash",
        ],
    },
    TableShape {
        name: "term",
        key_len: 1,
        range_column: "id",
        select: &[
            "id",
            "type",
            "atom_id",
            "triple_id",
            "total_assets::text",
            "total_market_cap::text",
            "is_atom",
            "is_triple",
            "counter_of",
        ],
    },
    TableShape {
        name: "triple_vault",
        key_len: 3,
        range_column: "term_id",
        select: &[
            "term_id",
            "counter_term_id",
            "curve_id::text",
            "total_shares::text",
            "total_assets::text",
            "position_count",
            "market_cap::text",
        ],
    },
    TableShape {
        name: "triple_term",
        key_len: 2,
        range_column: "term_id",
        select: &[
            "term_id",
            "counter_term_id",
            "total_assets::text",
            "total_market_cap::text",
            "total_position_count",
        ],
    },
    TableShape {
        name: "predicate_object",
        key_len: 2,
        range_column: "predicate_id",
        select: &[
            "predicate_id",
            "object_id",
            "triple_count",
            "total_position_count",
            "total_market_cap::text",
            "total_market_cap_sum::text",
        ],
    },
    TableShape {
        name: "subject_predicate",
        key_len: 2,
        range_column: "subject_id",
        select: &[
            "subject_id",
            "predicate_id",
            "triple_count",
            "total_position_count",
            "total_market_cap::text",
            "total_market_cap_sum::text",
        ],
    },
];

impl TableShape {
    /// The column names, in `select` order (each expression names the column it reads).
    pub fn columns(&self) -> Vec<&'static str> {
        self.select.iter().map(|e| column_of(e)).collect()
    }

    /// Whether the table is one of the four the analytics consumer keeps (eventually consistent).
    pub fn is_analytics(&self) -> bool {
        ANALYTICS_TABLES.contains(&self.name)
    }
}

/// The triple-level tables, written by the analytics consumer (SPEC §2: eventually consistent).
pub const ANALYTICS_TABLES: [&str; 4] = [
    "triple_vault",
    "triple_term",
    "predicate_object",
    "subject_predicate",
];

/// The column a canonical SELECT expression reads: `x`, `x::text`, `encode(x, 'hex')`,
/// `extract(epoch from x)::int8`.
fn column_of(expr: &'static str) -> &'static str {
    let inner = if let Some(rest) = expr.strip_prefix("encode(") {
        rest.split(',').next().unwrap_or(rest)
    } else if let Some(rest) = expr.strip_prefix("extract(epoch from ") {
        rest.split(')').next().unwrap_or(rest)
    } else {
        expr.split("::").next().unwrap_or(expr)
    };
    inner.trim()
}

/// Rows of one table in canonical form: key (JSON array text) → whole row.
pub type CanonicalTable = BTreeMap<String, Vec<Value>>;

#[derive(QueryableByName)]
struct RowText {
    #[diesel(sql_type = Text)]
    row: String,
}

/// Reads one derived table in canonical form.
pub async fn load_table(
    conn: &mut AsyncPgConnection,
    shape: &TableShape,
) -> anyhow::Result<CanonicalTable> {
    load_table_where(conn, shape, "TRUE").await
}

/// Reads the rows of one derived table whose [`range_column`](TableShape::range_column) is in
/// range `range`, in canonical form.
pub async fn load_table_range(
    conn: &mut AsyncPgConnection,
    shape: &TableShape,
    filter: KeyFilter,
    ranges: Ranges,
    range: usize,
) -> anyhow::Result<CanonicalTable> {
    let condition = filter.condition(shape.range_column, ranges, range);
    load_table_where(conn, shape, &condition).await
}

/// Reads the rows of one derived table that match the SQL `condition`, in canonical form.
async fn load_table_where(
    conn: &mut AsyncPgConnection,
    shape: &TableShape,
    condition: &str,
) -> anyhow::Result<CanonicalTable> {
    let sql = format!(
        "SELECT json_build_array({})::text AS row FROM {} WHERE {condition}",
        shape.select.join(", "),
        shape.name
    );
    let rows: Vec<RowText> = diesel::sql_query(sql)
        .load(conn)
        .await
        .with_context(|| format!("reading table {}", shape.name))?;
    rows.into_iter()
        .map(|r| {
            let row: Vec<Value> =
                serde_json::from_str(&r.row).with_context(|| format!("a row of {}", shape.name))?;
            Ok((Value::Array(row[..shape.key_len].to_vec()).to_string(), row))
        })
        .collect()
}

/// The fold's tables in the same canonical form, table by table in [`DERIVED`] order.
pub fn canonical(tables: &Tables) -> Vec<CanonicalTable> {
    fn s<T: ToString>(v: T) -> Value {
        Value::String(v.to_string())
    }
    fn n(v: i64) -> Value {
        Value::from(v)
    }
    /// An optional number (a time in Unix seconds, an order's block or log index), or null.
    fn on(v: Option<i64>) -> Value {
        v.map_or(Value::Null, Value::from)
    }
    fn o<T: ToString>(v: Option<T>) -> Value {
        v.map_or(Value::Null, |x| s(x))
    }
    fn keyed(shape: &TableShape, rows: impl Iterator<Item = Vec<Value>>) -> CanonicalTable {
        rows.map(|row| (Value::Array(row[..shape.key_len].to_vec()).to_string(), row))
            .collect()
    }
    let a = |addr: &Address| Value::String(addr.to_checksum());
    // predicate_object and subject_predicate rows have the same shape.
    let pair = |r: &PairRow| {
        vec![
            s(r.key.0),
            s(r.key.1),
            n(r.triple_count),
            n(r.total_position_count),
            s(r.total_market_cap),
            s(r.total_market_cap_sum),
        ]
    };
    vec![
        keyed(
            &DERIVED[0],
            tables.atom.values().map(|r| {
                vec![
                    s(r.term_id),
                    a(&r.creator_id),
                    a(&r.wallet_id),
                    o(r.data.as_ref()),
                    s(hex::encode(&r.raw_data)),
                    n(r.block_number),
                    n(r.log_index),
                    s(r.transaction_hash),
                    on(r.created_at),
                ]
            }),
        ),
        keyed(
            &DERIVED[1],
            tables.triple.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.counter_term_id),
                    a(&r.creator_id),
                    s(r.subject_id),
                    s(r.predicate_id),
                    s(r.object_id),
                    n(r.block_number),
                    n(r.log_index),
                    s(r.transaction_hash),
                    on(r.created_at),
                ]
            }),
        ),
        keyed(
            &DERIVED[2],
            tables.position.values().map(|r| {
                vec![
                    a(&r.account_id),
                    s(r.term_id),
                    s(r.curve_id),
                    s(r.shares),
                    s(r.total_deposit_assets_after_total_fees),
                    s(r.total_redeem_assets_for_receiver),
                    on(r.created_at),
                    on(r.updated_at),
                    n(r.first_at.block_number),
                    n(r.first_at.log_index),
                    s(r.first_at.transaction_hash),
                    n(r.last_at.block_number),
                    n(r.last_at.log_index),
                    s(r.last_at.transaction_hash),
                ]
            }),
        ),
        keyed(
            &DERIVED[3],
            tables.vault.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.curve_id),
                    s(r.total_shares),
                    s(r.current_share_price),
                    s(r.total_assets),
                    s(r.market_cap),
                    n(r.position_count),
                    s(r.vault_type.as_str()),
                    on(r.price_at.map(|o| o.block_number)),
                    on(r.price_at.map(|o| o.log_index)),
                    o(r.price_at.map(|o| o.transaction_hash)),
                    n(r.type_at.block_number),
                    n(r.type_at.log_index),
                    s(r.type_at.transaction_hash),
                ]
            }),
        ),
        keyed(
            &DERIVED[4],
            tables.term.values().map(|r| {
                vec![
                    s(r.id),
                    s(r.term_type.as_str()),
                    o(r.atom_id),
                    o(r.triple_id),
                    s(r.total_assets),
                    s(r.total_market_cap),
                    Value::Bool(r.is_atom),
                    Value::Bool(r.is_triple),
                    o(r.counter_of),
                ]
            }),
        ),
        keyed(
            &DERIVED[5],
            tables.triple_vault.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.counter_term_id),
                    s(r.curve_id),
                    s(r.total_shares),
                    s(r.total_assets),
                    n(r.position_count),
                    s(r.market_cap),
                ]
            }),
        ),
        keyed(
            &DERIVED[6],
            tables.triple_term.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.counter_term_id),
                    s(r.total_assets),
                    s(r.total_market_cap),
                    n(r.total_position_count),
                ]
            }),
        ),
        keyed(&DERIVED[7], tables.predicate_object.values().map(pair)),
        keyed(&DERIVED[8], tables.subject_predicate.values().map(pair)),
    ]
}

/// How a stored table differs from the expected one.
#[derive(Debug, Default, Clone)]
pub struct TableDiff {
    pub table: &'static str,
    pub checked: usize,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub differing: Vec<(Vec<Value>, Vec<Value>)>,
}

impl TableDiff {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }
}

/// Compares `stored` with `expected`, row by row.
pub fn diff(table: &'static str, expected: &CanonicalTable, stored: &CanonicalTable) -> TableDiff {
    let mut d = TableDiff {
        table,
        checked: expected.len().max(stored.len()),
        ..TableDiff::default()
    };
    for (k, row) in expected {
        match stored.get(k) {
            None => d.missing.push(k.clone()),
            Some(s) if s != row => d.differing.push((row.clone(), s.clone())),
            Some(_) => {}
        }
    }
    d.extra = stored
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    d
}

/// Compares every derived table (or only those named in `only`) with `expected`.
pub async fn compare(
    conn: &mut AsyncPgConnection,
    expected: &Tables,
    only: &[&str],
) -> anyhow::Result<Vec<TableDiff>> {
    let want = canonical(expected);
    let mut out = Vec::new();
    for (shape, expected) in DERIVED.iter().zip(&want) {
        if !only.is_empty() && !only.contains(&shape.name) {
            continue;
        }
        let stored = load_table(conn, shape).await?;
        out.push(diff(shape.name, expected, &stored));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canonical_expression_names_its_column() {
        assert_eq!(
            DERIVED[0].columns(),
            [
                "term_id",
                "creator_id",
                "wallet_id",
                "data",
                "raw_data",
                "block_number",
                "log_index",
                "transaction_hash",
                "created_at"
            ]
        );
        assert_eq!(
            &DERIVED[2].columns()[..4],
            ["account_id", "term_id", "curve_id", "shares"]
        );
        for shape in &DERIVED {
            for c in shape.columns() {
                assert!(
                    c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{}: {c:?}",
                    shape.name
                );
            }
        }
        let analytics: Vec<_> = DERIVED
            .iter()
            .filter(|s| s.is_analytics())
            .map(|s| s.name)
            .collect();
        assert_eq!(analytics, ANALYTICS_TABLES);
    }

    #[test]
    fn diff_names_missing_extra_and_differing_keys() {
        let row = |k: &str, v: i64| (format!("[\"{k}\"]"), vec![Value::from(k), Value::from(v)]);
        let expected: CanonicalTable = [row("a", 1), row("b", 2), row("c", 3)].into();
        let stored: CanonicalTable = [row("a", 1), row("b", 5), row("d", 4)].into();
        let d = diff("atom", &expected, &stored);
        assert_eq!(d.missing, ["[\"c\"]"]);
        assert_eq!(d.extra, ["[\"d\"]"]);
        assert_eq!(d.differing.len(), 1);
        assert_eq!(d.differing[0].1[1], Value::from(5));
        assert!(!d.is_clean());
    }
}
