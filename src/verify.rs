//! The `verify` engine: folds the event log and compares every derived table with the fold, row
//! by row, reading both from one snapshot (a REPEATABLE READ, READ ONLY transaction), and reports
//! per table the rows checked, missing, extra and differing, with examples keyed by column.
//!
//! It works key range by key range, in bounded memory: the fold of one range of term ids
//! (`store::partition`, the same engine `replay` writes from) is compared with the stored rows of
//! that range only, read with the same key filter (`store::compare::load_table_range`), and the
//! counts and the first examples are accumulated per table ([`Tally`]); the pair tables are
//! compared last, range by range of their first id. What is kept across ranges: the tallies, the
//! triple ids and the pair aggregates of the fold. The triple-level figures come from the fold of
//! the events (the vault events of the counter terms are read and folded apart), never from
//! stored rows, so a drifted vault row cannot hide a drifted triple_vault row.
//!
//! The base tables (atom, triple, position, vault, term) commit with the event log, so any
//! difference there is drift. The four analytics tables follow through `term_updates`
//! (eventually consistent): a difference there can also mean the analytics consumer is behind.

use std::fmt::{self, Write as _};

use anyhow::{bail, Context};
use diesel_async::AsyncPgConnection;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::domain::Tables;
use crate::store::compare::{
    self, canonical, diff, CanonicalTable, Shape, ANALYTICS_TABLES, DERIVED, DERIVED_NAMES,
};
use crate::store::load::{self, KeyFilter};
use crate::store::partition::{self, pairs_by_range, Plan, Ranges, Sink, Stored};
use crate::store::rebuild::Progress;

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
fn shape(name: &str) -> anyhow::Result<&'static dyn Shape> {
    match compare::shape(name) {
        Some(s) => Ok(s),
        None => bail!(
            "unknown table {name:?}; the derived tables are {}",
            DERIVED_NAMES.join(", ")
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
    verify_in(conn, only, examples, None, progress).await
}

/// [`verify`] in `ranges` key ranges (`None`: as many as the log's size calls for).
pub async fn verify_in(
    conn: &mut AsyncPgConnection,
    only: &[&str],
    examples: usize,
    ranges: Option<Ranges>,
    progress: Progress<'_>,
) -> anyhow::Result<Report> {
    for name in only {
        shape(name)?;
    }
    let tallies: Vec<Tally> = DERIVED
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name()))
        .map(|s| Tally::new(*s, examples))
        .collect();
    let (events, tallies) = conn
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| -> anyhow::Result<_> {
            let (core, generic) = load::count_events(conn).await?;
            let ranges = ranges.unwrap_or(Ranges::for_events(core));
            let filter = KeyFilter::probe(conn).await?;
            let plan = Plan {
                ranges,
                analytics: tallies.iter().any(|t| t.shape.is_analytics()),
            };
            let mut comparer = Stored {
                conn,
                generic,
                sink: Comparer { filter, tallies },
            };
            let folded = partition::run(&mut comparer, plan, progress).await?;
            Ok((folded.events, comparer.sink.tallies))
        })
        .await
        .context("verifying the derived tables")?;
    let tables = tallies
        .iter()
        .map(Tally::report)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Report {
        events,
        clean: tables.iter().all(TableReport::is_clean),
        tables,
    })
}

/// The verify [`Sink`]: compares each range's rows with the stored rows of the range, read in
/// the same snapshot with the same key filter.
struct Comparer {
    filter: KeyFilter,
    /// One per table compared, in [`DERIVED`] order.
    tallies: Vec<Tally>,
}

impl Comparer {
    /// Compares the rows of `rows` (the fold's, of range `range`) with the stored rows of the
    /// range, for the tables compared that are `pairs` tables or not.
    async fn compare(
        &mut self,
        conn: &mut AsyncPgConnection,
        ranges: Ranges,
        range: usize,
        rows: &Tables,
        pairs: bool,
    ) -> anyhow::Result<()> {
        let want = canonical(rows);
        for (shape, expected) in DERIVED.iter().zip(&want) {
            let is_pair = matches!(shape.name(), "predicate_object" | "subject_predicate");
            let Some(tally) = self
                .tallies
                .iter_mut()
                .find(|t| t.shape.name() == shape.name())
            else {
                continue;
            };
            if is_pair != pairs {
                continue;
            }
            let stored =
                compare::load_table_range(conn, *shape, self.filter, ranges, range).await?;
            tally.add(expected, &stored);
        }
        Ok(())
    }
}

impl Sink for Comparer {
    async fn range_rows(
        &mut self,
        conn: &mut AsyncPgConnection,
        ranges: Ranges,
        range: usize,
        rows: Tables,
    ) -> anyhow::Result<()> {
        self.compare(conn, ranges, range, &rows, false).await
    }

    async fn pair_rows(
        &mut self,
        conn: &mut AsyncPgConnection,
        ranges: Ranges,
        rows: Tables,
    ) -> anyhow::Result<()> {
        for (range, piece) in pairs_by_range(ranges, rows).into_iter().enumerate() {
            self.compare(conn, ranges, range, &piece, true).await?;
        }
        Ok(())
    }
}

/// One table's comparison so far, summed over key ranges: counts of every kind, and the first
/// `examples` keys of each kind (range order, then key order within a range).
#[derive(Debug)]
pub struct Tally {
    shape: &'static dyn Shape,
    examples: usize,
    /// Rows of the fold and of the table.
    expected: usize,
    stored: usize,
    missing: usize,
    extra: usize,
    differing: usize,
    missing_keys: Vec<String>,
    extra_keys: Vec<String>,
    /// `(expected row, stored row)`.
    differing_rows: Vec<(Vec<Value>, Vec<Value>)>,
}

impl Tally {
    pub fn new(shape: &'static dyn Shape, examples: usize) -> Self {
        Self {
            shape,
            examples,
            expected: 0,
            stored: 0,
            missing: 0,
            extra: 0,
            differing: 0,
            missing_keys: Vec::new(),
            extra_keys: Vec::new(),
            differing_rows: Vec::new(),
        }
    }

    /// Adds the comparison of one key range: the fold's rows and the stored rows of the range.
    pub fn add(&mut self, expected: &CanonicalTable, stored: &CanonicalTable) {
        let d = diff(self.shape.name(), expected, stored);
        self.expected += expected.len();
        self.stored += stored.len();
        self.missing += d.missing.len();
        self.extra += d.extra.len();
        self.differing += d.differing.len();
        let room = |kept: usize| self.examples.saturating_sub(kept);
        let n = room(self.missing_keys.len());
        self.missing_keys.extend(d.missing.into_iter().take(n));
        let n = room(self.extra_keys.len());
        self.extra_keys.extend(d.extra.into_iter().take(n));
        let n = room(self.differing_rows.len());
        self.differing_rows.extend(d.differing.into_iter().take(n));
    }

    /// The table's report.
    fn report(&self) -> anyhow::Result<TableReport> {
        let shape = self.shape;
        let columns: Vec<&'static str> = shape.columns().into_iter().map(|(c, _)| c).collect();
        let key_of = |row: &[Value]| {
            Key(shape
                .key()
                .iter()
                .copied()
                .zip(row.iter().cloned())
                .collect())
        };
        let parse_key = |text: &String| -> anyhow::Result<Key> {
            let values: Vec<Value> = serde_json::from_str(text)
                .with_context(|| format!("a key of table {}", shape.name()))?;
            Ok(key_of(&values))
        };
        Ok(TableReport {
            table: shape.name(),
            analytics: shape.is_analytics(),
            checked: self.expected.max(self.stored),
            missing: self.missing,
            extra: self.extra,
            differing: self.differing,
            examples: Examples {
                missing: self
                    .missing_keys
                    .iter()
                    .map(parse_key)
                    .collect::<anyhow::Result<_>>()?,
                extra: self
                    .extra_keys
                    .iter()
                    .map(parse_key)
                    .collect::<anyhow::Result<_>>()?,
                differing: self
                    .differing_rows
                    .iter()
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
        let row = |v: &[&str]| -> (String, Vec<Value>) {
            let row: Vec<Value> = v.iter().map(|s| Value::from(*s)).collect();
            (Value::Array(row[..2].to_vec()).to_string(), row)
        };
        let table = |rows: &[&[&str]]| -> CanonicalTable { rows.iter().map(|r| row(r)).collect() };
        let mut t = Tally::new(shape("vault").expect("vault"), 1);
        // Two key ranges: the counts add up, examples stop at the cap.
        t.add(
            &table(&[&["0xaa", "1", "5", "7"], &["0xab", "1", "5", "7"]]),
            &table(&[&["0xab", "1", "5", "7"], &["0xbb", "2", "5", "7"]]),
        );
        t.add(
            &table(&[&["0xdd", "1", "5", "7"]]),
            &table(&[&["0xcc", "2", "5", "7"], &["0xdd", "1", "5", "8"]]),
        );
        let t = t.report().expect("report");
        assert_eq!((t.checked, t.missing, t.extra, t.differing), (4, 1, 2, 1));
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
