//! Domain values → column-wise [`RowSet`]s: the event log rows of a batch's new events, and the
//! base-table rows (atom, triple, position, vault, term) that the batch changed.

use primitive_types::U256;

use super::rowset::{Column, OnConflict, RowSet};
use crate::domain::rows::TripleVaultRow;
use crate::domain::{Changes, Event, EventKind, EventMeta, State};

/// The columns every event table has, in table order.
const META: [&str; 9] = [
    "transaction_hash",
    "log_index",
    "block_number",
    "block_hash",
    "transaction_index",
    "block_timestamp",
    "address",
    "network",
    "chain_id",
];
/// Conflict target of every event table: the event identity.
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
        self.address.push(m.address.map(|a| a.to_checksum()));
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
            Column::Timestamp(self.block_timestamp),
            Column::NullableText(self.address),
            Column::NullableText(self.network),
            Column::NullableBigInt(self.chain_id),
        ];
        META.into_iter().zip(cols).collect()
    }
}

/// Rows of one event table under construction.
struct EventTable {
    table: &'static str,
    meta: MetaColumns,
    params: Vec<(&'static str, Column)>,
}

impl EventTable {
    fn new(table: &'static str, params: Vec<(&'static str, Column)>) -> Self {
        Self {
            table,
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
            on_conflict: OnConflict::Ignore,
        })
    }
}

fn text(c: &mut Column, v: String) {
    match c {
        Column::Text(x) | Column::Numeric(x) | Column::Jsonb(x) => x.push(v),
        other => unreachable!("column {other:?} is not text"),
    }
}

fn bytes(c: &mut Column, v: Vec<u8>) {
    match c {
        Column::Bytea(x) => x.push(v),
        other => unreachable!("column {other:?} is not bytea"),
    }
}

fn numeric(v: &U256) -> String {
    v.to_string()
}

/// JSONB cannot hold `\u0000`; such an escape is stored as the text `\\u0000` instead, so the
/// event is kept rather than failing its whole batch.
fn jsonb_safe(payload: &str) -> String {
    if payload.contains("\\u0000") {
        payload.replace("\\u0000", "\\\\u0000")
    } else {
        payload.to_owned()
    }
}

/// Event log rows for `events` (each must be new: applied as `Applied::New`).
pub fn event_rows<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<RowSet> {
    let t = || Column::Text(Vec::new());
    let n = || Column::Numeric(Vec::new());
    let mut atom = EventTable::new(
        "atom_created_events",
        vec![
            ("creator", t()),
            ("term_id", t()),
            ("atom_data", Column::Bytea(Vec::new())),
            ("atom_wallet", t()),
        ],
    );
    let mut triple = EventTable::new(
        "triple_created_events",
        vec![
            ("creator", t()),
            ("term_id", t()),
            ("subject_id", t()),
            ("predicate_id", t()),
            ("object_id", t()),
            ("counter_term_id", t()),
        ],
    );
    let mut deposited = EventTable::new(
        "deposited_events",
        vec![
            ("sender", t()),
            ("receiver", t()),
            ("term_id", t()),
            ("curve_id", n()),
            ("assets", n()),
            ("assets_after_fees", n()),
            ("shares", n()),
            ("total_shares", n()),
            ("vault_type", t()),
        ],
    );
    let mut redeemed = EventTable::new(
        "redeemed_events",
        vec![
            ("sender", t()),
            ("receiver", t()),
            ("term_id", t()),
            ("curve_id", n()),
            ("shares", n()),
            ("total_shares", n()),
            ("assets", n()),
            ("fees", n()),
            ("vault_type", t()),
        ],
    );
    let mut price = EventTable::new(
        "share_price_changed_events",
        vec![
            ("term_id", t()),
            ("curve_id", n()),
            ("share_price", n()),
            ("total_assets", n()),
            ("total_shares", n()),
            ("vault_type", t()),
        ],
    );
    let mut generic = EventTable::new(
        "generic_events",
        vec![("event_name", t()), ("payload", Column::Jsonb(Vec::new()))],
    );

    for e in events {
        let (table, values): (&mut EventTable, Vec<Value>) = match &e.kind {
            EventKind::AtomCreated {
                creator,
                term_id,
                atom_data,
                atom_wallet,
            } => (
                &mut atom,
                vec![
                    Value::T(creator.to_checksum()),
                    Value::T(term_id.to_string()),
                    Value::B(atom_data.clone()),
                    Value::T(atom_wallet.to_checksum()),
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
                    Value::T(creator.to_checksum()),
                    Value::T(term_id.to_string()),
                    Value::T(subject_id.to_string()),
                    Value::T(predicate_id.to_string()),
                    Value::T(object_id.to_string()),
                    Value::T(crate::domain::types::counter_term_id(term_id).to_string()),
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
                    Value::T(sender.to_checksum()),
                    Value::T(receiver.to_checksum()),
                    Value::T(term_id.to_string()),
                    Value::T(numeric(curve_id)),
                    Value::T(numeric(assets)),
                    Value::T(numeric(assets_after_fees)),
                    Value::T(numeric(shares)),
                    Value::T(numeric(total_shares)),
                    Value::T(vault_type.as_str().to_owned()),
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
                    Value::T(sender.to_checksum()),
                    Value::T(receiver.to_checksum()),
                    Value::T(term_id.to_string()),
                    Value::T(numeric(curve_id)),
                    Value::T(numeric(shares)),
                    Value::T(numeric(total_shares)),
                    Value::T(numeric(assets)),
                    Value::T(numeric(fees)),
                    Value::T(vault_type.as_str().to_owned()),
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
                    Value::T(term_id.to_string()),
                    Value::T(numeric(curve_id)),
                    Value::T(numeric(share_price)),
                    Value::T(numeric(total_assets)),
                    Value::T(numeric(total_shares)),
                    Value::T(vault_type.as_str().to_owned()),
                ],
            ),
            EventKind::Generic {
                event_name,
                payload,
            } => (
                &mut generic,
                vec![Value::T(event_name.clone()), Value::T(jsonb_safe(payload))],
            ),
        };
        table.meta.push(&e.meta);
        for ((_, col), v) in table.params.iter_mut().zip(values) {
            match v {
                Value::T(s) => text(col, s),
                Value::B(b) => bytes(col, b),
            }
        }
    }
    [atom, triple, deposited, redeemed, price, generic]
        .into_iter()
        .filter_map(EventTable::into_rowset)
        .collect()
}

enum Value {
    T(String),
    B(Vec<u8>),
}

/// Upserts of the base rows named by `changes`: atom, triple, position, vault, term.
pub fn base_rows(state: &State, changes: &Changes) -> Vec<RowSet> {
    let mut out = Vec::with_capacity(5);

    let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5, mut c6, mut c7, mut c8) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for row in changes.atoms.iter().filter_map(|id| state.atom(id)) {
        c0.push(row.term_id.to_string());
        c1.push(row.creator_id.to_checksum());
        c2.push(row.wallet_id.to_checksum());
        c3.push(row.data);
        c4.push(row.raw_data);
        c5.push(row.block_number);
        c6.push(row.log_index);
        c7.push(row.transaction_hash.to_string());
        c8.push(row.created_at);
    }
    out.push(RowSet {
        table: "atom",
        key: &["term_id"],
        columns: vec![
            ("term_id", Column::Text(c0)),
            ("creator_id", Column::Text(c1)),
            ("wallet_id", Column::Text(c2)),
            ("data", Column::NullableText(c3)),
            ("raw_data", Column::Bytea(c4)),
            ("block_number", Column::BigInt(c5)),
            ("log_index", Column::BigInt(c6)),
            ("transaction_hash", Column::Text(c7)),
            ("created_at", Column::Timestamp(c8)),
        ],
        on_conflict: OnConflict::Update,
    });

    let mut cols: [Vec<String>; 7] = Default::default();
    let (mut block, mut log, mut created) = (vec![], vec![], vec![]);
    for row in changes.triples.iter().filter_map(|id| state.triple(id)) {
        for (c, v) in cols.iter_mut().zip([
            row.term_id.to_string(),
            row.counter_term_id.to_string(),
            row.creator_id.to_checksum(),
            row.subject_id.to_string(),
            row.predicate_id.to_string(),
            row.object_id.to_string(),
            row.transaction_hash.to_string(),
        ]) {
            c.push(v);
        }
        block.push(row.block_number);
        log.push(row.log_index);
        created.push(row.created_at);
    }
    let [term_id, counter, creator, subject, predicate, object, tx] = cols;
    out.push(RowSet {
        table: "triple",
        key: &["term_id"],
        columns: vec![
            ("term_id", Column::Text(term_id)),
            ("counter_term_id", Column::Text(counter)),
            ("creator_id", Column::Text(creator)),
            ("subject_id", Column::Text(subject)),
            ("predicate_id", Column::Text(predicate)),
            ("object_id", Column::Text(object)),
            ("block_number", Column::BigInt(block)),
            ("log_index", Column::BigInt(log)),
            ("transaction_hash", Column::Text(tx)),
            ("created_at", Column::Timestamp(created)),
        ],
        on_conflict: OnConflict::Update,
    });

    let mut cols: [Vec<String>; 6] = Default::default();
    let (mut created, mut updated) = (vec![], vec![]);
    for row in changes.positions.iter().filter_map(|k| state.position(k)) {
        for (c, v) in cols.iter_mut().zip([
            row.account_id.to_checksum(),
            row.term_id.to_string(),
            numeric(&row.curve_id),
            numeric(&row.shares),
            numeric(&row.total_deposit_assets_after_total_fees),
            numeric(&row.total_redeem_assets_for_receiver),
        ]) {
            c.push(v);
        }
        created.push(row.created_at);
        updated.push(row.updated_at);
    }
    let [account, term_id, curve, shares, deposits, redeems] = cols;
    out.push(RowSet {
        table: "position",
        key: &["account_id", "term_id", "curve_id"],
        columns: vec![
            ("account_id", Column::Text(account)),
            ("term_id", Column::Text(term_id)),
            ("curve_id", Column::Numeric(curve)),
            ("shares", Column::Numeric(shares)),
            (
                "total_deposit_assets_after_total_fees",
                Column::Numeric(deposits),
            ),
            ("total_redeem_assets_for_receiver", Column::Numeric(redeems)),
            ("created_at", Column::Timestamp(created)),
            ("updated_at", Column::Timestamp(updated)),
        ],
        on_conflict: OnConflict::Update,
    });

    let mut cols: [Vec<String>; 7] = Default::default();
    let mut count = vec![];
    for row in changes.vaults.iter().filter_map(|k| state.vault(k)) {
        for (c, v) in cols.iter_mut().zip([
            row.term_id.to_string(),
            numeric(&row.curve_id),
            numeric(&row.total_shares),
            numeric(&row.current_share_price),
            numeric(&row.total_assets),
            numeric(&row.market_cap),
            row.vault_type.as_str().to_owned(),
        ]) {
            c.push(v);
        }
        count.push(row.position_count);
    }
    let [term_id, curve, shares, price, assets, cap, vault_type] = cols;
    out.push(RowSet {
        table: "vault",
        key: &["term_id", "curve_id"],
        columns: vec![
            ("term_id", Column::Text(term_id)),
            ("curve_id", Column::Numeric(curve)),
            ("total_shares", Column::Numeric(shares)),
            ("current_share_price", Column::Numeric(price)),
            ("total_assets", Column::Numeric(assets)),
            ("market_cap", Column::Numeric(cap)),
            ("position_count", Column::BigInt(count)),
            ("vault_type", Column::Text(vault_type)),
        ],
        on_conflict: OnConflict::Update,
    });

    let (mut id, mut ty, mut atom_id, mut triple_id, mut assets, mut cap) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for row in changes.terms.iter().filter_map(|t| state.term(t)) {
        id.push(row.id.to_string());
        ty.push(row.term_type.as_str().to_owned());
        atom_id.push(row.atom_id.map(|a| a.to_string()));
        triple_id.push(row.triple_id.map(|a| a.to_string()));
        assets.push(numeric(&row.total_assets));
        cap.push(numeric(&row.total_market_cap));
    }
    out.push(RowSet {
        table: "term",
        key: &["id"],
        columns: vec![
            ("id", Column::Text(id)),
            ("type", Column::Text(ty)),
            ("atom_id", Column::NullableText(atom_id)),
            ("triple_id", Column::NullableText(triple_id)),
            ("total_assets", Column::Numeric(assets)),
            ("total_market_cap", Column::Numeric(cap)),
        ],
        on_conflict: OnConflict::Update,
    });
    out.retain(|r| !r.is_empty());
    out
}

/// Upserts of triple_vault rows.
pub fn triple_vault_rows(rows: &[TripleVaultRow]) -> RowSet {
    let mut cols: [Vec<String>; 6] = Default::default();
    let mut count = vec![];
    for r in rows {
        for (c, v) in cols.iter_mut().zip([
            r.term_id.to_string(),
            r.counter_term_id.to_string(),
            numeric(&r.curve_id),
            numeric(&r.total_shares),
            numeric(&r.total_assets),
            numeric(&r.market_cap),
        ]) {
            c.push(v);
        }
        count.push(r.position_count);
    }
    let [term_id, counter, curve, shares, assets, cap] = cols;
    RowSet {
        table: "triple_vault",
        key: &["term_id", "counter_term_id", "curve_id"],
        columns: vec![
            ("term_id", Column::Text(term_id)),
            ("counter_term_id", Column::Text(counter)),
            ("curve_id", Column::Numeric(curve)),
            ("total_shares", Column::Numeric(shares)),
            ("total_assets", Column::Numeric(assets)),
            ("position_count", Column::BigInt(count)),
            ("market_cap", Column::Numeric(cap)),
        ],
        on_conflict: OnConflict::Update,
    }
}
