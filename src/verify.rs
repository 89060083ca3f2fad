//! The `verify` engine: folds the event log and compares every derived table with the fold, row
//! by row, reading both from one snapshot (a REPEATABLE READ, READ ONLY transaction), and reports
//! per table the rows checked, missing, extra and differing, with examples keyed by column.
//!
//! The base tables (atom, triple, position, vault, term) commit with the event log, so any
//! difference there is drift. The four analytics tables follow through `term_updates`
//! (eventually consistent): a difference there can also mean the analytics consumer is behind.

use std::fmt::{self, Write as _};

use anyhow::{bail, Context};
use diesel_async::AsyncPgConnection;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::store::load::{compare, TableDiff, TableShape, ANALYTICS_TABLES, DERIVED};
use crate::store::rebuild::{fold_event_log, Progress};

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Distinct events in the event log.
    pub events: usize,
    /// No table drifts.
    pub clean: bool,
    pub tables: Vec<TableReport>,
}

/// One table's comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: &'static str,
    /// Kept by the analytics consumer (eventually consistent).
    pub analytics: bool,
    /// Rows compared (the larger of the expected and stored row counts).
    pub checked: usize,
    /// Rows the fold has and the table lacks.
    pub missing: usize,
    /// Rows the table has and the fold lacks.
    pub extra: usize,
    /// Rows with the same key and other values.
    pub differing: usize,
    pub examples: Examples,
}

impl TableReport {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.differing == 0
    }
}

/// The first few differences of each kind.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Examples {
    pub missing: Vec<Key>,
    pub extra: Vec<Key>,
    pub differing: Vec<Difference>,
}

/// A row's key: `(column, value)` in key order (serialised as a JSON object in that order).
#[derive(Debug, Clone, PartialEq)]
pub struct Key(pub Vec<(&'static str, Value)>);

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (column, value) in &self.0 {
            map.serialize_entry(column, value)?;
        }
        map.end()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (column, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{column}={}", show(value))?;
        }
        Ok(())
    }
}

/// A row present on both sides with different values.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    pub key: Key,
    /// Only the columns that differ.
    pub columns: Vec<ColumnDifference>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ColumnDifference {
    pub column: &'static str,
    /// The fold's value.
    pub expected: Value,
    /// The table's value.
    pub stored: Value,
}

/// A value as text: strings unquoted, NULL as `NULL`.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".to_owned(),
        other => other.to_string(),
    }
}

/// The derived table named `name`.
fn shape(name: &str) -> anyhow::Result<&'static TableShape> {
    match DERIVED.iter().find(|s| s.name == name) {
        Some(s) => Ok(s),
        None => bail!(
            "unknown table {name:?}; the derived tables are {}",
            DERIVED.map(|s| s.name).join(", ")
        ),
    }
}

/// Folds the event log and compares the derived tables named in `only` (all nine when empty)
/// with it, keeping up to `examples` examples of each kind of difference per table.
pub async fn verify(
    conn: &mut AsyncPgConnection,
    only: &[&str],
    examples: usize,
    progress: Progress<'_>,
) -> anyhow::Result<Report> {
    for name in only {
        shape(name)?;
    }
    let (events, diffs) = conn
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| -> anyhow::Result<_> {
            let (events, tables) = fold_event_log(conn, progress).await?;
            let diffs = compare(conn, &tables, only).await?;
            Ok((events, diffs))
        })
        .await
        .context("verifying the derived tables")?;
    let tables = diffs
        .iter()
        .map(|d| table_report(d, examples))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Report {
        events,
        clean: tables.iter().all(TableReport::is_clean),
        tables,
    })
}

fn table_report(d: &TableDiff, examples: usize) -> anyhow::Result<TableReport> {
    let shape = shape(d.table)?;
    let columns = shape.columns();
    let key_of = |row: &[Value]| {
        Key(columns
            .iter()
            .copied()
            .zip(row.iter().cloned())
            .take(shape.key_len)
            .collect())
    };
    let parse_key = |text: &String| -> anyhow::Result<Key> {
        let values: Vec<Value> =
            serde_json::from_str(text).with_context(|| format!("a key of table {}", d.table))?;
        Ok(key_of(&values))
    };
    Ok(TableReport {
        table: d.table,
        analytics: shape.is_analytics(),
        checked: d.checked,
        missing: d.missing.len(),
        extra: d.extra.len(),
        differing: d.differing.len(),
        examples: Examples {
            missing: d
                .missing
                .iter()
                .take(examples)
                .map(parse_key)
                .collect::<anyhow::Result<_>>()?,
            extra: d
                .extra
                .iter()
                .take(examples)
                .map(parse_key)
                .collect::<anyhow::Result<_>>()?,
            differing: d
                .differing
                .iter()
                .take(examples)
                .map(|(expected, stored)| Difference {
                    key: key_of(expected),
                    columns: columns
                        .iter()
                        .zip(expected.iter().zip(stored))
                        .filter(|(_, (e, s))| e != s)
                        .map(|(column, (e, s))| ColumnDifference {
                            column,
                            expected: e.clone(),
                            stored: s.clone(),
                        })
                        .collect(),
                })
                .collect(),
        },
    })
}

impl Report {
    /// The tables that drift.
    pub fn drifting(&self) -> Vec<&'static str> {
        self.tables
            .iter()
            .filter(|t| !t.is_clean())
            .map(|t| t.table)
            .collect()
    }

    /// The report for people: a table of counts, examples under each drifting table, a verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} events in the event log; {} derived table(s) compared with their fold\n",
            self.events,
            self.tables.len()
        );
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>9} {:>9} {:>9}",
            "table", "rows", "missing", "extra", "differing"
        );
        for t in &self.tables {
            let _ = writeln!(
                out,
                "{:<18} {:>10} {:>9} {:>9} {:>9}  {}",
                t.table,
                t.checked,
                t.missing,
                t.extra,
                t.differing,
                if t.is_clean() { "ok" } else { "DRIFT" }
            );
            for k in &t.examples.missing {
                let _ = writeln!(out, "    missing    {k}");
            }
            for k in &t.examples.extra {
                let _ = writeln!(out, "    extra      {k}");
            }
            for d in &t.examples.differing {
                let cols: Vec<String> = d
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} expected {} stored {}",
                            c.column,
                            show(&c.expected),
                            show(&c.stored)
                        )
                    })
                    .collect();
                let _ = writeln!(out, "    differing  {}: {}", d.key, cols.join("; "));
            }
            let shown =
                t.examples.missing.len() + t.examples.extra.len() + t.examples.differing.len();
            let all = t.missing + t.extra + t.differing;
            if all > shown {
                let _ = writeln!(out, "    … and {} more", all - shown);
            }
        }
        let drifting = self.drifting();
        out.push('\n');
        if drifting.is_empty() {
            let _ = writeln!(out, "no drift");
        } else {
            let _ = writeln!(
                out,
                "drift in {} of {} table(s): {}",
                drifting.len(),
                self.tables.len(),
                drifting.join(", ")
            );
            if drifting.iter().any(|t| ANALYTICS_TABLES.contains(t)) {
                let _ = writeln!(
                    out,
                    "note: {} are eventually consistent (kept by the analytics consumer from \
                     term_updates); drift there is expected while it is behind: verify again once \
                     it has caught up, or run `replay` to rebuild them",
                    ANALYTICS_TABLES.join(", ")
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_the_drifting_rows_by_key_and_column() {
        let d = TableDiff {
            table: "vault",
            checked: 10,
            missing: vec![r#"["0xaa","1"]"#.to_owned()],
            extra: vec![r#"["0xbb","2"]"#.to_owned(), r#"["0xcc","2"]"#.to_owned()],
            differing: vec![(
                vec![
                    Value::from("0xdd"),
                    Value::from("1"),
                    Value::from("5"),
                    Value::from("7"),
                ],
                vec![
                    Value::from("0xdd"),
                    Value::from("1"),
                    Value::from("5"),
                    Value::from("8"),
                ],
            )],
        };
        let t = table_report(&d, 1).expect("report");
        assert_eq!((t.missing, t.extra, t.differing), (1, 2, 1));
        assert_eq!(t.examples.extra.len(), 1, "examples are capped");
        assert_eq!(
            t.examples.differing[0].columns[0].column,
            "current_share_price"
        );
        let report = Report {
            events: 3,
            clean: false,
            tables: vec![t],
        };
        let text = report.render();
        assert!(
            text.contains("missing    term_id=0xaa, curve_id=1"),
            "{text}"
        );
        assert!(
            text.contains(
                "differing  term_id=0xdd, curve_id=1: current_share_price expected 7 stored 8"
            ),
            "{text}"
        );
        assert!(text.contains("drift in 1 of 1 table(s): vault"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json["tables"][0]["examples"]["missing"][0],
            serde_json::json!({"term_id": "0xaa", "curve_id": "1"})
        );
    }

    #[test]
    fn unknown_tables_are_named() {
        let e = shape("vaults").expect_err("unknown");
        assert!(e.to_string().contains("\"vaults\""));
    }
}
