//! Domain events → the column-wise [`RowSet`]s of the event log: one row set per event table
//! for a batch's new events, written as plain `INSERT`s. The fold admits only identities the event
//! log does not hold (the identity probe, `store::prior::load_identities`, plus the identities in
//! flight), so a conflict would be a bug of that probe: it fails the batch, which the writer then
//! quarantines and folds entry by entry against the committed log, instead of being skipped
//! while the derived rows count the event a second time. Leaving out `ON CONFLICT` also spares
//! every row a second descent of the primary key (the speculative-insertion check).
//!
//! With the events go the keys of their transactions in `event_transactions`, the probe's index
//! (`ON CONFLICT DO NOTHING`: a transaction's events may come in several batches, a key may be
//! shared).

use diesel::pg::data_types::PgNumeric;

use super::rows::{checksum, numeric, times};
use super::rowset::{Column, OnConflict, RowSet};
use super::tables::{
    hash_prefix, EventTable, Stored, EVENT_TABLES, META, TRANSACTIONS, TRANSACTION_KEY,
};
use crate::domain::{Event, EventKind, EventMeta};

/// Primary key of every event table: the event identity.
const EVENT_KEY: &[&str] = &["transaction_hash", "log_index"];

#[derive(Default)]
struct MetaColumns {
    transaction_hash: Vec<String>,
    log_index: Vec<i64>,
    block_number: Vec<i64>,
    block_hash: Vec<Option<String>>,
    transaction_index: Vec<Option<i64>>,
    block_timestamp: Vec<Option<i64>>,
    address: Vec<Option<String>>,
    network: Vec<Option<String>>,
    chain_id: Vec<Option<i64>>,
}

impl MetaColumns {
    fn push(&mut self, m: &EventMeta) {
        self.transaction_hash.push(m.transaction_hash.to_string());
        self.log_index.push(m.log_index);
        self.block_number.push(m.block_number);
        self.block_hash.push(m.block_hash.map(|h| h.to_string()));
        self.transaction_index.push(m.transaction_index);
        self.block_timestamp.push(m.block_timestamp);
        self.address.push(m.address.map(|a| checksum(&a)));
        self.network.push(m.network.as_deref().map(str::to_owned));
        self.chain_id.push(m.chain_id);
    }

    fn len(&self) -> usize {
        self.log_index.len()
    }

    fn into_columns(self) -> Vec<(&'static str, Column)> {
        let cols = [
            Column::Text(self.transaction_hash),
            Column::BigInt(self.log_index),
            Column::BigInt(self.block_number),
            Column::NullableText(self.block_hash),
            Column::NullableBigInt(self.transaction_index),
            Column::Timestamp(times(self.block_timestamp)),
            Column::NullableText(self.address),
            Column::NullableText(self.network),
            Column::NullableBigInt(self.chain_id),
        ];
        META.into_iter().zip(cols).collect()
    }
}

/// Rows of one event table under construction, with the columns of its definition.
struct TableRows {
    table: &'static str,
    meta: MetaColumns,
    params: Vec<(&'static str, Column)>,
}

impl TableRows {
    fn new(def: &'static EventTable) -> Self {
        let params = def
            .params
            .iter()
            .map(|p| {
                let column = match p.stored {
                    Stored::Text => Column::Text(Vec::new()),
                    Stored::Numeric => Column::Numeric(Vec::new()),
                    Stored::Bytea => Column::Bytea(Vec::new()),
                    Stored::Jsonb => Column::Jsonb(Vec::new()),
                };
                (p.column, column)
            })
            .collect();
        Self {
            table: def.table,
            meta: MetaColumns::default(),
            params,
        }
    }

    fn into_rowset(self) -> Option<RowSet> {
        if self.meta.len() == 0 {
            return None;
        }
        let mut columns = self.meta.into_columns();
        columns.extend(self.params);
        Some(RowSet {
            table: self.table,
            key: EVENT_KEY,
            columns,
            on_conflict: OnConflict::Fail,
        })
    }
}

/// Appends one value to a parameter column of the same kind (the tables below pair them up).
fn push(c: &mut Column, v: Value) {
    match (c, v) {
        (Column::Text(x) | Column::Jsonb(x), Value::T(v)) => x.push(v),
        (Column::Numeric(x), Value::N(v)) => x.push(v),
        (Column::Bytea(x), Value::B(v)) => x.push(v),
        (c, _) => unreachable!("value of another kind for column {c:?}"),
    }
}

/// Event log rows for `events` (each must be new: applied as `Applied::New`), then the
/// `event_transactions` keys of their transactions.
pub fn event_rows<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<RowSet> {
    let [atom, triple, deposited, redeemed, price, generic] = &EVENT_TABLES;
    let (mut atom, mut triple, mut deposited, mut redeemed, mut price, mut generic) = (
        TableRows::new(atom),
        TableRows::new(triple),
        TableRows::new(deposited),
        TableRows::new(redeemed),
        TableRows::new(price),
        TableRows::new(generic),
    );

    let mut transactions: Vec<i64> = Vec::new();
    for e in events {
        transactions.push(hash_prefix(&e.meta.transaction_hash));
        // Each value names its column: a value out of place fails at once, in every build.
        let (table, values): (&mut TableRows, Vec<(&str, Value)>) = match &e.kind {
            EventKind::AtomCreated {
                creator,
                term_id,
                atom_data,
                atom_wallet,
            } => (
                &mut atom,
                vec![
                    ("creator", Value::T(checksum(creator))),
                    ("term_id", Value::T(term_id.to_string())),
                    ("atom_data", Value::B(atom_data.clone())),
                    ("atom_wallet", Value::T(checksum(atom_wallet))),
                ],
            ),
            EventKind::TripleCreated {
                creator,
                term_id,
                subject_id,
                predicate_id,
                object_id,
            } => (
                &mut triple,
                vec![
                    ("creator", Value::T(checksum(creator))),
                    ("term_id", Value::T(term_id.to_string())),
                    ("subject_id", Value::T(subject_id.to_string())),
                    ("predicate_id", Value::T(predicate_id.to_string())),
                    ("object_id", Value::T(object_id.to_string())),
                    (
                        "counter_term_id",
                        Value::T(crate::domain::types::counter_term_id(term_id).to_string()),
                    ),
                ],
            ),
            EventKind::Deposited {
                sender,
                receiver,
                term_id,
                curve_id,
                assets,
                assets_after_fees,
                shares,
                total_shares,
                vault_type,
            } => (
                &mut deposited,
                vec![
                    ("sender", Value::T(checksum(sender))),
                    ("receiver", Value::T(checksum(receiver))),
                    ("term_id", Value::T(term_id.to_string())),
                    ("curve_id", Value::N(numeric(curve_id))),
                    ("assets", Value::N(numeric(assets))),
                    ("assets_after_fees", Value::N(numeric(assets_after_fees))),
                    ("shares", Value::N(numeric(shares))),
                    ("total_shares", Value::N(numeric(total_shares))),
                    ("vault_type", Value::T(vault_type.as_str().to_owned())),
                ],
            ),
            EventKind::Redeemed {
                sender,
                receiver,
                term_id,
                curve_id,
                shares,
                total_shares,
                assets,
                fees,
                vault_type,
            } => (
                &mut redeemed,
                vec![
                    ("sender", Value::T(checksum(sender))),
                    ("receiver", Value::T(checksum(receiver))),
                    ("term_id", Value::T(term_id.to_string())),
                    ("curve_id", Value::N(numeric(curve_id))),
                    ("shares", Value::N(numeric(shares))),
                    ("total_shares", Value::N(numeric(total_shares))),
                    ("assets", Value::N(numeric(assets))),
                    ("fees", Value::N(numeric(fees))),
                    ("vault_type", Value::T(vault_type.as_str().to_owned())),
                ],
            ),
            EventKind::SharePriceChanged {
                term_id,
                curve_id,
                share_price,
                total_assets,
                total_shares,
                vault_type,
            } => (
                &mut price,
                vec![
                    ("term_id", Value::T(term_id.to_string())),
                    ("curve_id", Value::N(numeric(curve_id))),
                    ("share_price", Value::N(numeric(share_price))),
                    ("total_assets", Value::N(numeric(total_assets))),
                    ("total_shares", Value::N(numeric(total_shares))),
                    ("vault_type", Value::T(vault_type.as_str().to_owned())),
                ],
            ),
            EventKind::Generic {
                event_name,
                payload,
            } => (
                &mut generic,
                vec![
                    ("event_name", Value::T(event_name.clone())),
                    ("payload", Value::T(payload.clone())),
                ],
            ),
        };
        table.meta.push(&e.meta);
        // One value per column of the table's definition, in its order.
        assert_eq!(values.len(), table.params.len(), "{}", table.table);
        for ((column, col), (name, v)) in table.params.iter_mut().zip(values) {
            assert_eq!(*column, name, "{}: a value out of place", table.table);
            push(col, v);
        }
    }
    let mut sets: Vec<RowSet> = [atom, triple, deposited, redeemed, price, generic]
        .into_iter()
        .filter_map(TableRows::into_rowset)
        .collect();
    if !transactions.is_empty() {
        // Sorted: the inserts walk the index in key order, and a transaction's events are one key.
        transactions.sort_unstable();
        transactions.dedup();
        sets.push(RowSet {
            table: TRANSACTIONS,
            key: TRANSACTION_KEY,
            columns: vec![(TRANSACTION_KEY[0], Column::BigInt(transactions))],
            on_conflict: OnConflict::Skip,
        });
    }
    sets
}

/// Sorts and de-duplicates the `event_transactions` keys among `sets` after the row sets of
/// several folds were appended together (the sharded fold builds one per shard, and a
/// transaction's events may fall to several shards).
pub fn dedup_transaction_keys(sets: &mut [RowSet]) {
    for set in sets.iter_mut().filter(|s| s.table == TRANSACTIONS) {
        for (_, column) in &mut set.columns {
            if let Column::BigInt(keys) = column {
                keys.sort_unstable();
                keys.dedup();
            }
        }
    }
}

/// Moves the `event_transactions` keys of `from` (a batch's generic row sets) into `into` (its
/// core row sets), de-duplicated: one key statement per batch, on the commit's serial path,
/// instead of one per group. A key of a generic event PostgreSQL then refuses stays, as the
/// table allows.
pub fn move_transaction_keys(from: &mut Vec<RowSet>, into: &mut Vec<RowSet>) {
    let Some(at) = from.iter().position(|s| s.table == TRANSACTIONS) else {
        return;
    };
    let keys = from.remove(at);
    match into.iter_mut().find(|s| s.table == TRANSACTIONS) {
        Some(existing) => existing.append(keys),
        None => into.push(keys),
    }
    dedup_transaction_keys(into);
}

enum Value {
    T(String),
    N(PgNumeric),
    B(Vec<u8>),
}
