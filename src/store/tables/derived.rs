//! The derived tables, each defined once: its name, key, the column key ranges cut, and its
//! columns in table order, each with how it is stored and how its value is read off the fold's
//! row ([`Get`]). From that one list `rows` builds the upserts ([`rowset`]), `compare` reads a
//! stored table in canonical form ([`Shape::select`]) and puts the fold's rows in the same form
//! ([`canonical_rows`]), and a rebuild names the tables it empties; so writing, `verify` and a
//! rebuild cannot disagree on a column's name, place or kind.

use primitive_types::{U256, U512};
use serde_json::Value;

use super::super::rows::checksum;
use super::super::rowset::{pg_numeric, pg_numeric_u512, pg_timestamp, Column, OnConflict, RowSet};
use crate::domain::rows::{
    AtomRow, PairRow, PositionRow, TermRow, TripleRow, TripleTermRow, TripleVaultRow, VaultRow,
};

/// How a column's value is read off a row of type `R`; the variant is how the column is stored.
pub enum Get<R> {
    /// TEXT: hex ids, checksummed addresses, names.
    Text(fn(&R) -> String),
    /// TEXT, NULL when `None`.
    OptText(fn(&R) -> Option<String>),
    /// NUMERIC(78,0): a uint256.
    Numeric(fn(&R) -> U256),
    /// NUMERIC wider than uint256 (a pair's exact market-cap sum, 512 bits).
    Wide(fn(&R) -> U512),
    /// BIGINT.
    BigInt(fn(&R) -> i64),
    /// BIGINT, NULL when `None`.
    OptBigInt(fn(&R) -> Option<i64>),
    /// TIMESTAMPTZ from Unix seconds, NULL when unknown.
    Time(fn(&R) -> Option<i64>),
    /// BOOLEAN.
    Bool(fn(&R) -> bool),
    /// BYTEA.
    Bytea(fn(&R) -> Vec<u8>),
}

/// How a column is stored, without its row type: what the canonical SELECT needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Numeric,
    BigInt,
    Time,
    Bool,
    Bytea,
}

impl<R> Get<R> {
    fn kind(&self) -> Kind {
        match self {
            Get::Text(_) | Get::OptText(_) => Kind::Text,
            Get::Numeric(_) | Get::Wide(_) => Kind::Numeric,
            Get::BigInt(_) | Get::OptBigInt(_) => Kind::BigInt,
            Get::Time(_) => Kind::Time,
            Get::Bool(_) => Kind::Bool,
            Get::Bytea(_) => Kind::Bytea,
        }
    }

    /// The column of `rows`, as it is bound to the upsert.
    fn column(&self, rows: &[R]) -> Column {
        match self {
            Get::Text(f) => Column::Text(rows.iter().map(f).collect()),
            Get::OptText(f) => Column::NullableText(rows.iter().map(f).collect()),
            Get::Numeric(f) => Column::Numeric(rows.iter().map(|r| pg_numeric(&f(r))).collect()),
            Get::Wide(f) => Column::Numeric(rows.iter().map(|r| pg_numeric_u512(&f(r))).collect()),
            Get::BigInt(f) => Column::BigInt(rows.iter().map(f).collect()),
            Get::OptBigInt(f) => Column::NullableBigInt(rows.iter().map(f).collect()),
            Get::Time(f) => {
                Column::Timestamp(rows.iter().map(|r| f(r).map(pg_timestamp)).collect())
            }
            Get::Bool(f) => Column::Bool(rows.iter().map(f).collect()),
            Get::Bytea(f) => Column::Bytea(rows.iter().map(f).collect()),
        }
    }

    /// The value of `row` in canonical form: what [`Shape::select`] reads from the stored row
    /// (numbers as decimal text, times as Unix seconds, bytes as hex, NULL as null).
    fn canonical(&self, row: &R) -> Value {
        let text = |s: String| Value::String(s);
        match self {
            Get::Text(f) => text(f(row)),
            Get::OptText(f) => f(row).map_or(Value::Null, text),
            Get::Numeric(f) => text(f(row).to_string()),
            Get::Wide(f) => text(f(row).to_string()),
            Get::BigInt(f) => Value::from(f(row)),
            Get::OptBigInt(f) | Get::Time(f) => f(row).map_or(Value::Null, Value::from),
            Get::Bool(f) => Value::Bool(f(row)),
            Get::Bytea(f) => text(hex::encode(f(row))),
        }
    }
}

impl<R> std::fmt::Debug for Get<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind())
    }
}

/// One column of a derived table.
#[derive(Debug)]
pub struct Col<R> {
    pub name: &'static str,
    pub get: Get<R>,
}

/// A derived table whose rows are the fold's `R`.
#[derive(Debug)]
pub struct Table<R: 'static> {
    pub name: &'static str,
    /// The primary key's columns (the upsert's conflict target), leading the column list.
    pub key: &'static [&'static str],
    /// The id column that key ranges cut (the term id; for a pair table, its first id): the
    /// leading column of an index of the table.
    pub range_column: &'static str,
    pub columns: &'static [Col<R>],
}

/// What every derived table is, whatever its row type: what `verify`, `compare` and a rebuild
/// need.
pub trait Shape: Sync {
    fn name(&self) -> &'static str;
    /// The primary key's columns, which lead [`columns`](Shape::columns).
    fn key(&self) -> &'static [&'static str];
    fn key_len(&self) -> usize {
        self.key().len()
    }
    fn range_column(&self) -> &'static str;
    /// The column names and how each is stored, in table order.
    fn columns(&self) -> Vec<(&'static str, Kind)>;

    /// The SELECT expressions of the columns in canonical form (see [`Get::canonical`]).
    fn select(&self) -> Vec<String> {
        self.columns()
            .into_iter()
            .map(|(c, kind)| match kind {
                Kind::Text | Kind::BigInt | Kind::Bool => c.to_owned(),
                Kind::Numeric => format!("{c}::text"),
                Kind::Time => format!("extract(epoch from {c})::int8"),
                Kind::Bytea => format!("encode({c}, 'hex')"),
            })
            .collect()
    }

    /// Whether the analytics consumer keeps the table (eventually consistent).
    fn is_analytics(&self) -> bool {
        ANALYTICS_TABLES.contains(&self.name())
    }
}

impl std::fmt::Debug for dyn Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl<R> Shape for Table<R> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn key(&self) -> &'static [&'static str] {
        self.key
    }
    fn range_column(&self) -> &'static str {
        self.range_column
    }
    fn columns(&self) -> Vec<(&'static str, Kind)> {
        self.columns
            .iter()
            .map(|c| (c.name, c.get.kind()))
            .collect()
    }
}

/// The upserts of `rows` into `table`: every non-key column replaced, since the fold's row is
/// the truth.
pub fn rowset<R>(table: &'static Table<R>, rows: &[R]) -> RowSet {
    RowSet {
        table: table.name,
        key: table.key,
        columns: table
            .columns
            .iter()
            .map(|c| (c.name, c.get.column(rows)))
            .collect(),
        on_conflict: OnConflict::Update,
    }
}

/// `rows` in canonical form, keyed by the JSON text of their key columns.
pub fn canonical_rows<'a, R: 'a>(
    table: &'static Table<R>,
    rows: impl Iterator<Item = &'a R>,
) -> std::collections::BTreeMap<String, Vec<Value>> {
    rows.map(|r| {
        let row: Vec<Value> = table.columns.iter().map(|c| c.get.canonical(r)).collect();
        (
            Value::Array(row[..table.key.len()].to_vec()).to_string(),
            row,
        )
    })
    .collect()
}

/// The triple-level tables, written by the analytics consumer (contract §2: eventually
/// consistent).
pub const ANALYTICS_TABLES: [&str; 4] = [
    "triple_vault",
    "triple_term",
    "predicate_object",
    "subject_predicate",
];

const fn col<R>(name: &'static str, get: Get<R>) -> Col<R> {
    Col { name, get }
}

use Get::{BigInt, Bool, Bytea, Numeric, OptBigInt, OptText, Text, Time, Wide};

pub const ATOM: Table<AtomRow> = Table {
    name: "atom",
    key: &["term_id"],
    range_column: "term_id",
    columns: &[
        col("term_id", Text(|r| r.term_id.to_string())),
        col("creator_id", Text(|r| checksum(&r.creator_id))),
        col("wallet_id", Text(|r| checksum(&r.wallet_id))),
        col("data", OptText(|r| r.data.clone())),
        col("raw_data", Bytea(|r| r.raw_data.clone())),
        col("block_number", BigInt(|r| r.block_number)),
        col("log_index", BigInt(|r| r.log_index)),
        col("transaction_hash", Text(|r| r.transaction_hash.to_string())),
        col("created_at", Time(|r| r.created_at)),
    ],
};

pub const TRIPLE: Table<TripleRow> = Table {
    name: "triple",
    key: &["term_id"],
    range_column: "term_id",
    columns: &[
        col("term_id", Text(|r| r.term_id.to_string())),
        col("counter_term_id", Text(|r| r.counter_term_id.to_string())),
        col("creator_id", Text(|r| checksum(&r.creator_id))),
        col("subject_id", Text(|r| r.subject_id.to_string())),
        col("predicate_id", Text(|r| r.predicate_id.to_string())),
        col("object_id", Text(|r| r.object_id.to_string())),
        col("block_number", BigInt(|r| r.block_number)),
        col("log_index", BigInt(|r| r.log_index)),
        col("transaction_hash", Text(|r| r.transaction_hash.to_string())),
        col("created_at", Time(|r| r.created_at)),
    ],
};

pub const POSITION: Table<PositionRow> = Table {
    name: "position",
    key: &["account_id", "term_id", "curve_id"],
    range_column: "term_id",
    columns: &[
        col("account_id", Text(|r| checksum(&r.account_id))),
        col("term_id", Text(|r| r.term_id.to_string())),
        col("curve_id", Numeric(|r| r.curve_id)),
        col("shares", Numeric(|r| r.shares)),
        col(
            "total_deposit_assets_after_total_fees",
            Numeric(|r| r.total_deposit_assets_after_total_fees),
        ),
        col(
            "total_redeem_assets_for_receiver",
            Numeric(|r| r.total_redeem_assets_for_receiver),
        ),
        col("created_at", Time(|r| r.created_at)),
        col("updated_at", Time(|r| r.updated_at)),
        col("first_block_number", BigInt(|r| r.first_at.block_number)),
        col("first_log_index", BigInt(|r| r.first_at.log_index)),
        col(
            "first_transaction_hash",
            Text(|r| r.first_at.transaction_hash.to_string()),
        ),
        col("last_block_number", BigInt(|r| r.last_at.block_number)),
        col("last_log_index", BigInt(|r| r.last_at.log_index)),
        col(
            "last_transaction_hash",
            Text(|r| r.last_at.transaction_hash.to_string()),
        ),
    ],
};

pub const VAULT: Table<VaultRow> = Table {
    name: "vault",
    key: &["term_id", "curve_id"],
    range_column: "term_id",
    columns: &[
        col("term_id", Text(|r| r.term_id.to_string())),
        col("curve_id", Numeric(|r| r.curve_id)),
        col("total_shares", Numeric(|r| r.total_shares)),
        col("current_share_price", Numeric(|r| r.current_share_price)),
        col("total_assets", Numeric(|r| r.total_assets)),
        col("market_cap", Numeric(|r| r.market_cap)),
        col("position_count", BigInt(|r| r.position_count)),
        col("vault_type", Text(|r| r.vault_type.as_str().to_owned())),
        col(
            "price_block_number",
            OptBigInt(|r| r.price_at.map(|o| o.block_number)),
        ),
        col(
            "price_log_index",
            OptBigInt(|r| r.price_at.map(|o| o.log_index)),
        ),
        col(
            "price_transaction_hash",
            OptText(|r| r.price_at.map(|o| o.transaction_hash.to_string())),
        ),
        col("type_block_number", BigInt(|r| r.type_at.block_number)),
        col("type_log_index", BigInt(|r| r.type_at.log_index)),
        col(
            "type_transaction_hash",
            Text(|r| r.type_at.transaction_hash.to_string()),
        ),
    ],
};

pub const TERM: Table<TermRow> = Table {
    name: "term",
    key: &["id"],
    range_column: "id",
    columns: &[
        col("id", Text(|r| r.id.to_string())),
        col("type", Text(|r| r.term_type.as_str().to_owned())),
        col("atom_id", OptText(|r| r.atom_id.map(|a| a.to_string()))),
        col("triple_id", OptText(|r| r.triple_id.map(|a| a.to_string()))),
        col("total_assets", Numeric(|r| r.total_assets)),
        col("total_market_cap", Numeric(|r| r.total_market_cap)),
        col("is_atom", Bool(|r| r.is_atom)),
        col("is_triple", Bool(|r| r.is_triple)),
        col(
            "counter_of",
            OptText(|r| r.counter_of.map(|a| a.to_string())),
        ),
    ],
};

pub const TRIPLE_VAULT: Table<TripleVaultRow> = Table {
    name: "triple_vault",
    key: &["term_id", "counter_term_id", "curve_id"],
    range_column: "term_id",
    columns: &[
        col("term_id", Text(|r| r.term_id.to_string())),
        col("counter_term_id", Text(|r| r.counter_term_id.to_string())),
        col("curve_id", Numeric(|r| r.curve_id)),
        col("total_shares", Numeric(|r| r.total_shares)),
        col("total_assets", Numeric(|r| r.total_assets)),
        col("position_count", BigInt(|r| r.position_count)),
        col("market_cap", Numeric(|r| r.market_cap)),
    ],
};

pub const TRIPLE_TERM: Table<TripleTermRow> = Table {
    name: "triple_term",
    key: &["term_id", "counter_term_id"],
    range_column: "term_id",
    columns: &[
        col("term_id", Text(|r| r.term_id.to_string())),
        col("counter_term_id", Text(|r| r.counter_term_id.to_string())),
        col("total_assets", Numeric(|r| r.total_assets)),
        col("total_market_cap", Numeric(|r| r.total_market_cap)),
        col("total_position_count", BigInt(|r| r.total_position_count)),
    ],
};

/// The columns of a pair table after its two id columns ([`PairRow::key`], in key order). The
/// market cap goes in twice: saturated (`total_market_cap`, NUMERIC(78,0)) and exact
/// (`total_market_cap_sum`, 512 bits).
macro_rules! pair_table {
    ($name:literal, $first:literal, $second:literal) => {
        Table {
            name: $name,
            key: &[$first, $second],
            range_column: $first,
            columns: &[
                col($first, Text(|r: &PairRow| r.key.0.to_string())),
                col($second, Text(|r: &PairRow| r.key.1.to_string())),
                col("triple_count", BigInt(|r: &PairRow| r.triple_count)),
                col(
                    "total_position_count",
                    BigInt(|r: &PairRow| r.total_position_count),
                ),
                col(
                    "total_market_cap",
                    Numeric(|r: &PairRow| r.total_market_cap),
                ),
                col(
                    "total_market_cap_sum",
                    Wide(|r: &PairRow| r.total_market_cap_sum),
                ),
            ],
        }
    };
}

pub const PREDICATE_OBJECT: Table<PairRow> =
    pair_table!("predicate_object", "predicate_id", "object_id");

pub const SUBJECT_PREDICATE: Table<PairRow> =
    pair_table!("subject_predicate", "subject_id", "predicate_id");

/// Every derived table, in the order `verify` reports them: the five base tables, then the four
/// the analytics consumer keeps.
pub static DERIVED: [&dyn Shape; 9] = [
    &ATOM,
    &TRIPLE,
    &POSITION,
    &VAULT,
    &TERM,
    &TRIPLE_VAULT,
    &TRIPLE_TERM,
    &PREDICATE_OBJECT,
    &SUBJECT_PREDICATE,
];

/// The derived tables' names, in [`DERIVED`] order.
pub const DERIVED_NAMES: [&str; 9] = [
    ATOM.name,
    TRIPLE.name,
    POSITION.name,
    VAULT.name,
    TERM.name,
    TRIPLE_VAULT.name,
    TRIPLE_TERM.name,
    PREDICATE_OBJECT.name,
    SUBJECT_PREDICATE.name,
];

/// The definition of the derived table named `name`.
pub fn shape(name: &str) -> Option<&'static dyn Shape> {
    DERIVED.iter().copied().find(|s| s.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_leads_with_its_key_and_names_distinct_columns() {
        for (shape, name) in DERIVED.iter().zip(DERIVED_NAMES) {
            assert_eq!(shape.name(), name);
            let columns: Vec<&str> = shape.columns().iter().map(|c| c.0).collect();
            let mut distinct = columns.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), columns.len(), "{name}: a column twice");
            assert_eq!(
                &columns[..shape.key_len()],
                shape.key(),
                "{name}: key first"
            );
            assert!(columns.contains(&shape.range_column()), "{name}");
            for c in &columns {
                assert!(
                    c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{name}: {c:?}"
                );
            }
        }
        assert_eq!(PREDICATE_OBJECT.key, ["predicate_id", "object_id"]);
        assert_eq!(SUBJECT_PREDICATE.key, ["subject_id", "predicate_id"]);
        let analytics: Vec<_> = DERIVED
            .iter()
            .filter(|s| s.is_analytics())
            .map(|s| s.name())
            .collect();
        assert_eq!(analytics, ANALYTICS_TABLES);
    }

    #[test]
    fn canonical_select_follows_how_each_column_is_stored() {
        assert_eq!(
            ATOM.select(),
            [
                "term_id",
                "creator_id",
                "wallet_id",
                "data",
                "encode(raw_data, 'hex')",
                "block_number",
                "log_index",
                "transaction_hash",
                "extract(epoch from created_at)::int8",
            ]
        );
        assert_eq!(
            &SUBJECT_PREDICATE.select()[4..],
            ["total_market_cap::text", "total_market_cap_sum::text"]
        );
    }
}
