//! Set-based writes: a [`RowSet`] is a whole batch of rows for one table, held column by column,
//! written in **one statement** whatever its size:
//!
//! ```sql
//! INSERT INTO t (a, b, …) SELECT u.a, u.b::numeric, … FROM UNNEST($1::text[], $2::text[], …) AS u(a, b, …)
//! ON CONFLICT (key) DO UPDATE SET b = EXCLUDED.b, …     -- or DO NOTHING
//! ```
//!
//! One bind parameter per column, so Postgres's 65,535-parameter limit never applies. uint256
//! values travel as decimal text and are cast to NUMERIC by Postgres; times travel as Unix seconds.

use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Binary, Nullable, Text};
use diesel_async::AsyncPgConnection;

/// One column of values, typed by how it is stored.
#[derive(Debug, Clone)]
pub enum Column {
    Text(Vec<String>),
    NullableText(Vec<Option<String>>),
    BigInt(Vec<i64>),
    NullableBigInt(Vec<Option<i64>>),
    /// Decimal text of a uint256, stored as NUMERIC(78,0).
    Numeric(Vec<String>),
    Bytea(Vec<Vec<u8>>),
    /// Unix seconds, stored as TIMESTAMPTZ; `None` is NULL.
    Timestamp(Vec<Option<i64>>),
    /// JSON text, stored as JSONB.
    Jsonb(Vec<String>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Text(v) | Column::Numeric(v) | Column::Jsonb(v) => v.len(),
            Column::NullableText(v) => v.len(),
            Column::BigInt(v) => v.len(),
            Column::NullableBigInt(v) | Column::Timestamp(v) => v.len(),
            Column::Bytea(v) => v.len(),
        }
    }

    fn append(&mut self, other: Column) {
        match (self, other) {
            (Column::Text(a), Column::Text(b))
            | (Column::Numeric(a), Column::Numeric(b))
            | (Column::Jsonb(a), Column::Jsonb(b)) => a.extend(b),
            (Column::NullableText(a), Column::NullableText(b)) => a.extend(b),
            (Column::BigInt(a), Column::BigInt(b)) => a.extend(b),
            (Column::NullableBigInt(a), Column::NullableBigInt(b))
            | (Column::Timestamp(a), Column::Timestamp(b)) => a.extend(b),
            (Column::Bytea(a), Column::Bytea(b)) => a.extend(b),
            (a, b) => unreachable!("appending column {b:?} to a column of another type {a:?}"),
        }
    }

    /// The parameter's array type and the expression that turns an element into the column value.
    fn sql(&self, name: &str) -> (&'static str, String) {
        match self {
            Column::Text(_) | Column::NullableText(_) => ("text[]", format!("u.{name}")),
            Column::BigInt(_) | Column::NullableBigInt(_) => ("int8[]", format!("u.{name}")),
            Column::Numeric(_) => ("text[]", format!("u.{name}::numeric")),
            Column::Bytea(_) => ("bytea[]", format!("u.{name}")),
            Column::Timestamp(_) => ("int8[]", format!("to_timestamp(u.{name})")),
            Column::Jsonb(_) => ("text[]", format!("u.{name}::jsonb")),
        }
    }
}

/// What to do when a row's key already exists.
#[derive(Debug, Clone, Copy)]
pub enum OnConflict {
    /// Keep the stored row (the event log: the first delivery of an identity stays).
    Ignore,
    /// Replace every non-key column (derived rows: the new value is the truth).
    Update,
}

/// A batch of rows for one table.
#[derive(Debug)]
pub struct RowSet {
    pub table: &'static str,
    /// Key columns (the conflict target), in order.
    pub key: &'static [&'static str],
    pub columns: Vec<(&'static str, Column)>,
    pub on_conflict: OnConflict,
}

impl RowSet {
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the rows of `other`, a row set of the same table built the same way.
    pub fn append(&mut self, other: RowSet) {
        debug_assert_eq!(self.table, other.table);
        for ((_, mine), (_, theirs)) in self.columns.iter_mut().zip(other.columns) {
            mine.append(theirs);
        }
    }

    /// The statement, with `$n` parameters in column order.
    pub fn sql(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| *n).collect();
        let (mut params, mut exprs) = (Vec::new(), Vec::new());
        for (i, (name, col)) in self.columns.iter().enumerate() {
            let (ty, expr) = col.sql(name);
            params.push(format!("${}::{ty}", i + 1));
            exprs.push(expr);
        }
        let conflict = match self.on_conflict {
            OnConflict::Ignore => "DO NOTHING".to_owned(),
            OnConflict::Update => {
                let sets: Vec<String> = names
                    .iter()
                    .filter(|n| !self.key.contains(n))
                    .map(|n| format!("{n} = EXCLUDED.{n}"))
                    .collect();
                format!("DO UPDATE SET {}", sets.join(", "))
            }
        };
        format!(
            "INSERT INTO {table} ({cols}) SELECT {exprs} FROM UNNEST({params}) AS u({cols}) \
             ON CONFLICT ({key}) {conflict}",
            table = self.table,
            cols = names.join(", "),
            exprs = exprs.join(", "),
            params = params.join(", "),
            key = self.key.join(", "),
        )
    }

    /// Writes the rows; returns the number of rows inserted or updated.
    pub async fn write(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
        use diesel_async::RunQueryDsl;
        if self.is_empty() {
            return Ok(0);
        }
        let mut query = diesel::sql_query(self.sql()).into_boxed::<Pg>();
        for (_, column) in &self.columns {
            query = match column {
                Column::Text(v) | Column::Numeric(v) | Column::Jsonb(v) => {
                    query.bind::<Array<Text>, _>(v)
                }
                Column::NullableText(v) => query.bind::<Array<Nullable<Text>>, _>(v),
                Column::BigInt(v) => query.bind::<Array<BigInt>, _>(v),
                Column::NullableBigInt(v) | Column::Timestamp(v) => {
                    query.bind::<Array<Nullable<BigInt>>, _>(v)
                }
                Column::Bytea(v) => query.bind::<Array<Binary>, _>(v),
            };
        }
        query.execute(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_upserts_every_non_key_column() {
        let rows = RowSet {
            table: "vault",
            key: &["term_id", "curve_id"],
            columns: vec![
                ("term_id", Column::Text(vec!["0x1".into()])),
                ("curve_id", Column::Numeric(vec!["1".into()])),
                ("position_count", Column::BigInt(vec![3])),
            ],
            on_conflict: OnConflict::Update,
        };
        assert_eq!(
            rows.sql(),
            "INSERT INTO vault (term_id, curve_id, position_count) SELECT u.term_id, u.curve_id::numeric, \
             u.position_count FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(term_id, curve_id, position_count) \
             ON CONFLICT (term_id, curve_id) DO UPDATE SET position_count = EXCLUDED.position_count"
        );
    }
}
