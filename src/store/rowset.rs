//! Set-based writes: a [`RowSet`] is a whole batch of rows for one table, held column by column,
//! written in **one statement** whatever its size:
//!
//! ```sql
//! INSERT INTO t (a, b, …) SELECT u.a, u.b::numeric, … FROM UNNEST($1::text[], $2::text[], …) AS u(a, b, …)
//! ON CONFLICT (key) DO UPDATE SET b = EXCLUDED.b, …     -- or DO NOTHING, or no ON CONFLICT
//! ```
//!
//! One bind parameter per column, so Postgres's 65,535-parameter limit never applies. uint256
//! values travel as decimal text and are cast to NUMERIC by Postgres; times travel as Unix seconds.

use diesel::pg::data_types::{PgNumeric, PgTimestamp};
use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Binary, Nullable, Numeric, Text, Timestamptz};
use diesel_async::AsyncPgConnection;
use primitive_types::{U256, U512};

/// One column of values, typed by how it is stored.
#[derive(Debug, Clone)]
pub enum Column {
    Text(Vec<String>),
    NullableText(Vec<Option<String>>),
    BigInt(Vec<i64>),
    NullableBigInt(Vec<Option<i64>>),
    Bool(Vec<bool>),
    /// A uint256, stored as NUMERIC(78,0), sent in Postgres's binary form (no text parsing).
    Numeric(Vec<PgNumeric>),
    Bytea(Vec<Vec<u8>>),
    /// A time, stored as TIMESTAMPTZ (binary); `None` is NULL.
    Timestamp(Vec<Option<PgTimestamp>>),
    /// JSON text, stored as JSONB.
    Jsonb(Vec<String>),
}

impl Column {
    /// Values in the column (one per row of its row set).
    pub fn len(&self) -> usize {
        match self {
            Column::Text(v) | Column::Jsonb(v) => v.len(),
            Column::Numeric(v) => v.len(),
            Column::NullableText(v) => v.len(),
            Column::BigInt(v) => v.len(),
            Column::NullableBigInt(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Timestamp(v) => v.len(),
            Column::Bytea(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, other: Column) {
        match (self, other) {
            (Column::Text(a), Column::Text(b)) | (Column::Jsonb(a), Column::Jsonb(b)) => {
                a.extend(b)
            }
            (Column::Numeric(a), Column::Numeric(b)) => a.extend(b),
            (Column::NullableText(a), Column::NullableText(b)) => a.extend(b),
            (Column::BigInt(a), Column::BigInt(b)) => a.extend(b),
            (Column::NullableBigInt(a), Column::NullableBigInt(b)) => a.extend(b),
            (Column::Bool(a), Column::Bool(b)) => a.extend(b),
            (Column::Timestamp(a), Column::Timestamp(b)) => a.extend(b),
            (Column::Bytea(a), Column::Bytea(b)) => a.extend(b),
            (a, b) => unreachable!("appending column {b:?} to a column of another type {a:?}"),
        }
    }

    /// The parameter's array type and the expression that turns an element into the column value.
    fn sql(&self, name: &str) -> (&'static str, String) {
        match self {
            Column::Text(_) | Column::NullableText(_) => ("text[]", format!("u.{name}")),
            Column::BigInt(_) | Column::NullableBigInt(_) => ("int8[]", format!("u.{name}")),
            Column::Bool(_) => ("bool[]", format!("u.{name}")),
            Column::Numeric(_) => ("numeric[]", format!("u.{name}")),
            Column::Bytea(_) => ("bytea[]", format!("u.{name}")),
            Column::Timestamp(_) => ("timestamptz[]", format!("u.{name}")),
            Column::Jsonb(_) => ("text[]", format!("u.{name}::jsonb")),
        }
    }
}

/// A uint256 in Postgres's binary NUMERIC form: base-10000 digit groups, most significant first,
/// `weight` the index of the first group before the decimal point, trailing zero groups dropped.
pub fn pg_numeric(v: &U256) -> PgNumeric {
    let mut groups: Vec<i16> = Vec::with_capacity(20);
    if v.bits() <= 128 {
        let mut x = v.low_u128();
        while x > 0 {
            groups.push((x % 10_000) as i16);
            x /= 10_000;
        }
    } else {
        let mut x = *v;
        let base = U256::from(10_000u64);
        while !x.is_zero() {
            let (q, r) = x.div_mod(base);
            groups.push(r.low_u64() as i16);
            x = q;
        }
    }
    from_groups(groups)
}

/// Base-10000 digit groups, least significant first, as a positive integral NUMERIC.
fn from_groups(mut groups: Vec<i16>) -> PgNumeric {
    let weight = groups.len() as i16 - 1;
    groups.reverse();
    while groups.last() == Some(&0) {
        groups.pop();
    }
    PgNumeric::Positive {
        weight: weight.max(0),
        scale: 0,
        digits: groups,
    }
}

/// A 512-bit unsigned integer in the binary NUMERIC form of [`pg_numeric`]: the exact market-cap
/// sums of the pair aggregates (`total_market_cap_sum`, up to 2⁵¹²−1, 155 digits). A value that
/// fits uint256 takes [`pg_numeric`]'s path.
pub fn pg_numeric_u512(v: &U512) -> PgNumeric {
    if let Ok(small) = U256::try_from(*v) {
        return pg_numeric(&small);
    }
    let mut groups: Vec<i16> = Vec::with_capacity(39);
    let mut x = *v;
    let base = U512::from(10_000u64);
    while !x.is_zero() {
        let (q, r) = x.div_mod(base);
        groups.push(r.low_u64() as i16);
        x = q;
    }
    from_groups(groups)
}

/// Unix seconds as a Postgres timestamp (microseconds since 2000-01-01T00:00:00Z).
pub fn pg_timestamp(unix_seconds: i64) -> PgTimestamp {
    const PG_EPOCH: i64 = 946_684_800;
    PgTimestamp((unix_seconds - PG_EPOCH).saturating_mul(1_000_000))
}

/// What to do when a row's key already exists.
#[derive(Debug, Clone, Copy)]
pub enum OnConflict {
    /// No conflict is possible: a conflict is an error that fails the transaction. The event log
    /// is written this way (the fold admits only identities not yet committed, and the lease
    /// fences a second writer), and so is a rebuild, into tables it has just emptied.
    Fail,
    /// Replace every non-key column (derived rows: the new value is the truth).
    Update,
    /// Keep the stored row (`DO NOTHING`). Only for `event_transactions`, a set of keys that
    /// batches in flight and redeliveries may each write again; never for the event log.
    Skip,
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
            OnConflict::Fail => String::new(),
            OnConflict::Skip => format!("ON CONFLICT ({}) DO NOTHING", self.key.join(", ")),
            OnConflict::Update => {
                let sets: Vec<String> = names
                    .iter()
                    .filter(|n| !self.key.contains(n))
                    .map(|n| format!("{n} = EXCLUDED.{n}"))
                    .collect();
                format!(
                    "ON CONFLICT ({}) DO UPDATE SET {}",
                    self.key.join(", "),
                    sets.join(", ")
                )
            }
        };
        format!(
            "INSERT INTO {table} ({cols}) SELECT {exprs} FROM UNNEST({params}) AS u({cols}) {conflict}",
            table = self.table,
            cols = names.join(", "),
            exprs = exprs.join(", "),
            params = params.join(", "),
        )
        .trim_end()
        .to_owned()
    }

    /// Writes the rows; returns the number of rows inserted or updated. Takes a shared
    /// connection so that several row sets can be sent at once (diesel-async pipelines futures
    /// polled together): Postgres executes them one after the other without waiting for us.
    pub async fn write(&self, conn: &AsyncPgConnection) -> diesel::QueryResult<usize> {
        use diesel_async::RunQueryDsl;
        if self.is_empty() {
            return Ok(0);
        }
        // A column short of a value would pair each later row with its successor's value (UNNEST
        // pads the short array with NULL at the end): a bug of the row builder, which
        // tests/it/columns.rs checks for every table.
        debug_assert!(
            self.columns.iter().all(|(_, c)| c.len() == self.len()),
            "row set of {} has columns of different lengths",
            self.table
        );
        let mut conn = conn;
        let mut query = diesel::sql_query(self.sql()).into_boxed::<Pg>();
        for (_, column) in &self.columns {
            query = match column {
                Column::Text(v) | Column::Jsonb(v) => query.bind::<Array<Text>, _>(v),
                Column::Numeric(v) => query.bind::<Array<Numeric>, _>(v),
                Column::Timestamp(v) => query.bind::<Array<Nullable<Timestamptz>>, _>(v),
                Column::NullableText(v) => query.bind::<Array<Nullable<Text>>, _>(v),
                Column::BigInt(v) => query.bind::<Array<BigInt>, _>(v),
                Column::NullableBigInt(v) => query.bind::<Array<Nullable<BigInt>>, _>(v),
                Column::Bool(v) => query.bind::<Array<diesel::sql_types::Bool>, _>(v),
                Column::Bytea(v) => query.bind::<Array<Binary>, _>(v),
            };
        }
        query.execute(&mut conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_groups() {
        let n = |v: U256| match pg_numeric(&v) {
            PgNumeric::Positive {
                weight,
                scale,
                digits,
            } => (weight, scale, digits),
            other => panic!("{other:?}"),
        };
        assert_eq!(n(U256::zero()), (0, 0, vec![]));
        assert_eq!(n(U256::from(7u64)), (0, 0, vec![7]));
        assert_eq!(n(U256::from(10_000u64)), (1, 0, vec![1]));
        assert_eq!(n(U256::from(123_456_789u64)), (2, 0, vec![1, 2345, 6789]));
        assert_eq!(
            n(U256::from(1_000_000_000_000_000_000u128)),
            (4, 0, vec![100])
        );
        let max = n(U256::MAX);
        assert_eq!(
            (max.0, max.2.len(), max.2[0], *max.2.last().expect("digits")),
            (19, 20, 11, 9935)
        );
    }

    #[test]
    fn numeric_groups_of_512_bit_values() {
        let n = |v: U512| match pg_numeric_u512(&v) {
            PgNumeric::Positive {
                weight,
                scale,
                digits,
            } => (weight, scale, digits),
            other => panic!("{other:?}"),
        };
        for v in [U256::zero(), U256::from(10_000u64), U256::MAX] {
            assert_eq!(pg_numeric_u512(&U512::from(v)), pg_numeric(&v), "{v}");
        }
        // 2^256: one past uint256, 78 digits, 115792…639936.
        let past = n(U512::from(U256::MAX) + U512::one());
        assert_eq!(
            (past.0, past.2[0], *past.2.last().expect("digits")),
            (19, 11, 9936)
        );
        // 2^512 − 1: 155 digits, 134078…084095.
        let max = n(U512::MAX);
        assert_eq!(
            (max.0, max.2.len(), max.2[0], *max.2.last().expect("digits")),
            (38, 39, 134, 4095)
        );
        // Trailing zero groups are dropped: 10^100 = weight 25, one group of 1.
        let ten = U512::from(10u64);
        assert_eq!(n(ten.pow(U512::from(100u64))), (25, 0, vec![1]));
    }

    #[test]
    fn timestamps_count_from_2000() {
        assert_eq!(pg_timestamp(946_684_800).0, 0);
        assert_eq!(pg_timestamp(946_684_801).0, 1_000_000);
    }

    #[test]
    fn sql_upserts_every_non_key_column() {
        let rows = RowSet {
            table: "vault",
            key: &["term_id", "curve_id"],
            columns: vec![
                ("term_id", Column::Text(vec!["0x1".into()])),
                ("curve_id", Column::Numeric(vec![pg_numeric(&U256::one())])),
                ("position_count", Column::BigInt(vec![3])),
            ],
            on_conflict: OnConflict::Update,
        };
        assert_eq!(
            rows.sql(),
            "INSERT INTO vault (term_id, curve_id, position_count) SELECT u.term_id, u.curve_id, \
             u.position_count FROM UNNEST($1::text[], $2::numeric[], $3::int8[]) AS u(term_id, curve_id, position_count) \
             ON CONFLICT (term_id, curve_id) DO UPDATE SET position_count = EXCLUDED.position_count"
        );
    }
}
