//! The derived tables in a canonical form (numbers as text, times as Unix seconds, bytes as hex),
//! whole or one key range, and their comparison with the fold's rows: what `verify` and the
//! tests check. Both sides come from each table's one definition (`tables::derived`).

use std::collections::BTreeMap;

use anyhow::Context;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use super::load::KeyFilter;
use super::partition::Ranges;
use super::tables::derived::{
    canonical_rows, ATOM, POSITION, PREDICATE_OBJECT, SUBJECT_PREDICATE, TERM, TRIPLE, TRIPLE_TERM,
    TRIPLE_VAULT, VAULT,
};
pub use super::tables::derived::{shape, Shape, ANALYTICS_TABLES, DERIVED, DERIVED_NAMES};
use crate::domain::rows::Tables;

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
    shape: &dyn Shape,
) -> anyhow::Result<CanonicalTable> {
    load_table_where(conn, shape, "TRUE").await
}

/// Reads the rows of one derived table whose [`range_column`](Shape::range_column) is in
/// range `range`, in canonical form.
pub async fn load_table_range(
    conn: &mut AsyncPgConnection,
    shape: &dyn Shape,
    filter: KeyFilter,
    ranges: Ranges,
    range: usize,
) -> anyhow::Result<CanonicalTable> {
    let condition = filter.condition(shape.range_column(), ranges, range);
    load_table_where(conn, shape, &condition).await
}

/// Reads the rows of one derived table that match the SQL `condition`, in canonical form.
async fn load_table_where(
    conn: &mut AsyncPgConnection,
    shape: &dyn Shape,
    condition: &str,
) -> anyhow::Result<CanonicalTable> {
    let sql = format!(
        "SELECT json_build_array({})::text AS row FROM {} WHERE {condition}",
        shape.select().join(", "),
        shape.name()
    );
    let rows: Vec<RowText> = diesel::sql_query(sql)
        .load(conn)
        .await
        .with_context(|| format!("reading table {}", shape.name()))?;
    rows.into_iter()
        .map(|r| {
            let row: Vec<Value> = serde_json::from_str(&r.row)
                .with_context(|| format!("a row of {}", shape.name()))?;
            Ok((
                Value::Array(row[..shape.key_len()].to_vec()).to_string(),
                row,
            ))
        })
        .collect()
}

/// The fold's tables in the same canonical form, table by table in [`DERIVED`] order.
pub fn canonical(tables: &Tables) -> Vec<CanonicalTable> {
    vec![
        canonical_rows(&ATOM, tables.atom.values()),
        canonical_rows(&TRIPLE, tables.triple.values()),
        canonical_rows(&POSITION, tables.position.values()),
        canonical_rows(&VAULT, tables.vault.values()),
        canonical_rows(&TERM, tables.term.values()),
        canonical_rows(&TRIPLE_VAULT, tables.triple_vault.values()),
        canonical_rows(&TRIPLE_TERM, tables.triple_term.values()),
        canonical_rows(&PREDICATE_OBJECT, tables.predicate_object.values()),
        canonical_rows(&SUBJECT_PREDICATE, tables.subject_predicate.values()),
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
        if !only.is_empty() && !only.contains(&shape.name()) {
            continue;
        }
        let stored = load_table(conn, *shape).await?;
        out.push(diff(shape.name(), expected, &stored));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
