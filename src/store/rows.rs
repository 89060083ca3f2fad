//! Domain values → column-wise [`RowSet`]s of the derived tables: the base-table rows (atom,
//! triple, position, vault, term) that a batch changed, and one builder per derived table (the
//! nine of contract §2) for whole-table rebuilds. The event log's rows are `event_rows`.

use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use primitive_types::U256;

use diesel::pg::data_types::{PgNumeric, PgTimestamp};

use super::rowset::{pg_numeric, pg_numeric_u512, pg_timestamp, Column, OnConflict, RowSet};
use crate::domain::rows::{
    AtomRow, PairRow, PositionRow, TermRow, TripleRow, TripleTermRow, TripleVaultRow, VaultRow,
};
use crate::domain::{Address, BaseRows, Order};

pub(super) fn numeric(v: &U256) -> PgNumeric {
    pg_numeric(v)
}

pub(super) fn times(v: Vec<Option<i64>>) -> Vec<Option<PgTimestamp>> {
    v.into_iter().map(|t| t.map(pg_timestamp)).collect()
}

/// EIP-55 text of an address, cached: the same few thousand accounts (and one contract address)
/// appear in nearly every batch, and each checksum costs a keccak. Shared by the shard threads.
pub(super) fn checksum(a: &Address) -> String {
    static CACHE: LazyLock<DashMap<Address, Arc<str>>> = LazyLock::new(DashMap::new);
    if let Some(hit) = CACHE.get(a) {
        return hit.to_string();
    }
    let text = a.to_checksum();
    if CACHE.len() >= 1_000_000 {
        CACHE.clear();
    }
    CACHE.insert(*a, Arc::from(text.as_str()));
    text
}

/// Upserts of the base rows named by `changes`: atom, triple, position, vault, term. Conflict
/// target of each: the table's primary key (the row's identity in SPEC §2); every other column is
/// replaced, since the fold's row is the truth.
pub fn base_rows(rows: BaseRows) -> Vec<RowSet> {
    let mut out = vec![
        atom_rows(rows.atoms),
        triple_rows(rows.triples),
        position_rows(rows.positions),
        vault_rows(rows.vaults),
        term_rows(rows.terms),
    ];
    out.retain(|r| !r.is_empty());
    out
}

/// Upserts of atom rows (conflict target: `term_id`).
pub fn atom_rows(rows: impl IntoIterator<Item = AtomRow>) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, r.term_id.to_string());
        t.text(1, checksum(&r.creator_id));
        t.text(2, checksum(&r.wallet_id));
        t.opt_text(0, r.data);
        t.bytes(r.raw_data);
        t.int(0, r.block_number);
        t.int(1, r.log_index);
        t.text(3, r.transaction_hash.to_string());
        t.time(0, r.created_at);
    }
    t.rowset(
        "atom",
        &["term_id"],
        &[
            ("term_id", T(0)),
            ("creator_id", T(1)),
            ("wallet_id", T(2)),
            ("data", O(0)),
            ("raw_data", B),
            ("block_number", I(0)),
            ("log_index", I(1)),
            ("transaction_hash", T(3)),
            ("created_at", Ts(0)),
        ],
    )
}

/// Upserts of triple rows (conflict target: `term_id`).
pub fn triple_rows(rows: impl IntoIterator<Item = TripleRow>) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, r.term_id.to_string());
        t.text(1, r.counter_term_id.to_string());
        t.text(2, checksum(&r.creator_id));
        t.text(3, r.subject_id.to_string());
        t.text(4, r.predicate_id.to_string());
        t.text(5, r.object_id.to_string());
        t.int(0, r.block_number);
        t.int(1, r.log_index);
        t.text(6, r.transaction_hash.to_string());
        t.time(0, r.created_at);
    }
    t.rowset(
        "triple",
        &["term_id"],
        &[
            ("term_id", T(0)),
            ("counter_term_id", T(1)),
            ("creator_id", T(2)),
            ("subject_id", T(3)),
            ("predicate_id", T(4)),
            ("object_id", T(5)),
            ("block_number", I(0)),
            ("log_index", I(1)),
            ("transaction_hash", T(6)),
            ("created_at", Ts(0)),
        ],
    )
}

/// Upserts of position rows (conflict target: `(account_id, term_id, curve_id)`).
pub fn position_rows(rows: impl IntoIterator<Item = PositionRow>) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, checksum(&r.account_id));
        t.text(1, r.term_id.to_string());
        t.num(0, &r.curve_id);
        t.num(1, &r.shares);
        t.num(2, &r.total_deposit_assets_after_total_fees);
        t.num(3, &r.total_redeem_assets_for_receiver);
        t.time(0, r.created_at);
        t.time(1, r.updated_at);
        t.order((0, 1), 2, &r.first_at);
        t.order((2, 3), 3, &r.last_at);
    }
    t.rowset(
        "position",
        &["account_id", "term_id", "curve_id"],
        &[
            ("account_id", T(0)),
            ("term_id", T(1)),
            ("curve_id", N(0)),
            ("shares", N(1)),
            ("total_deposit_assets_after_total_fees", N(2)),
            ("total_redeem_assets_for_receiver", N(3)),
            ("created_at", Ts(0)),
            ("updated_at", Ts(1)),
            ("first_block_number", I(0)),
            ("first_log_index", I(1)),
            ("first_transaction_hash", T(2)),
            ("last_block_number", I(2)),
            ("last_log_index", I(3)),
            ("last_transaction_hash", T(3)),
        ],
    )
}

/// Upserts of vault rows (conflict target: `(term_id, curve_id)`).
pub fn vault_rows(rows: impl IntoIterator<Item = VaultRow>) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, r.term_id.to_string());
        t.num(0, &r.curve_id);
        t.num(1, &r.total_shares);
        t.num(2, &r.current_share_price);
        t.num(3, &r.total_assets);
        t.num(4, &r.market_cap);
        t.int(0, r.position_count);
        t.text(1, r.vault_type.as_str().to_owned());
        t.opt_int(0, r.price_at.map(|o| o.block_number));
        t.opt_int(1, r.price_at.map(|o| o.log_index));
        t.opt_text(0, r.price_at.map(|o| o.transaction_hash.to_string()));
        t.order((1, 2), 2, &r.type_at);
    }
    t.rowset(
        "vault",
        &["term_id", "curve_id"],
        &[
            ("term_id", T(0)),
            ("curve_id", N(0)),
            ("total_shares", N(1)),
            ("current_share_price", N(2)),
            ("total_assets", N(3)),
            ("market_cap", N(4)),
            ("position_count", I(0)),
            ("vault_type", T(1)),
            ("price_block_number", OI(0)),
            ("price_log_index", OI(1)),
            ("price_transaction_hash", O(0)),
            ("type_block_number", I(1)),
            ("type_log_index", I(2)),
            ("type_transaction_hash", T(2)),
        ],
    )
}

/// Upserts of term rows (conflict target: `id`).
pub fn term_rows(rows: impl IntoIterator<Item = TermRow>) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, r.id.to_string());
        t.text(1, r.term_type.as_str().to_owned());
        t.opt_text(0, r.atom_id.map(|a| a.to_string()));
        t.opt_text(1, r.triple_id.map(|a| a.to_string()));
        t.num(0, &r.total_assets);
        t.num(1, &r.total_market_cap);
        t.flag(0, r.is_atom);
        t.flag(1, r.is_triple);
        t.opt_text(2, r.counter_of.map(|a| a.to_string()));
    }
    t.rowset(
        "term",
        &["id"],
        &[
            ("id", T(0)),
            ("type", T(1)),
            ("atom_id", O(0)),
            ("triple_id", O(1)),
            ("total_assets", N(0)),
            ("total_market_cap", N(1)),
            ("is_atom", F(0)),
            ("is_triple", F(1)),
            ("counter_of", O(2)),
        ],
    )
}

/// Upserts of triple_vault rows (conflict target: `(term_id, counter_term_id, curve_id)`).
pub fn triple_vault_rows(rows: &[TripleVaultRow]) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, r.term_id.to_string());
        t.text(1, r.counter_term_id.to_string());
        t.num(0, &r.curve_id);
        t.num(1, &r.total_shares);
        t.num(2, &r.total_assets);
        t.int(0, r.position_count);
        t.num(3, &r.market_cap);
    }
    t.rowset(
        "triple_vault",
        &["term_id", "counter_term_id", "curve_id"],
        &[
            ("term_id", T(0)),
            ("counter_term_id", T(1)),
            ("curve_id", N(0)),
            ("total_shares", N(1)),
            ("total_assets", N(2)),
            ("position_count", I(0)),
            ("market_cap", N(3)),
        ],
    )
}

/// Upserts of triple_term rows (conflict target: `(term_id, counter_term_id)`).
pub fn triple_term_rows(rows: &[TripleTermRow]) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, r.term_id.to_string());
        t.text(1, r.counter_term_id.to_string());
        t.num(0, &r.total_assets);
        t.num(1, &r.total_market_cap);
        t.int(0, r.total_position_count);
    }
    t.rowset(
        "triple_term",
        &["term_id", "counter_term_id"],
        &[
            ("term_id", T(0)),
            ("counter_term_id", T(1)),
            ("total_assets", N(0)),
            ("total_market_cap", N(1)),
            ("total_position_count", I(0)),
        ],
    )
}

/// Upserts of whole predicate_object rows (conflict target: `(predicate_id, object_id)`): for
/// rebuilds, and for the analytics consumer, which writes each touched pair's absolute row.
pub fn predicate_object_rows(rows: impl IntoIterator<Item = PairRow>) -> RowSet {
    pair_rows("predicate_object", &["predicate_id", "object_id"], rows)
}

/// Upserts of whole subject_predicate rows (conflict target: `(subject_id, predicate_id)`).
pub fn subject_predicate_rows(rows: impl IntoIterator<Item = PairRow>) -> RowSet {
    pair_rows("subject_predicate", &["subject_id", "predicate_id"], rows)
}

/// A pair aggregate table: `key` names its two id columns, in [`PairRow::key`] order. The market
/// cap goes in twice: saturated (`total_market_cap`, NUMERIC(78,0)) and exact
/// (`total_market_cap_sum`, 512 bits).
fn pair_rows(
    table: &'static str,
    key: &'static [&'static str; 2],
    rows: impl IntoIterator<Item = PairRow>,
) -> RowSet {
    let mut t = Cols::default();
    for r in rows {
        t.text(0, r.key.0.to_string());
        t.text(1, r.key.1.to_string());
        t.int(0, r.triple_count);
        t.int(1, r.total_position_count);
        t.num(0, &r.total_market_cap);
        slot(&mut t.num, 1).push(pg_numeric_u512(&r.total_market_cap_sum));
    }
    t.rowset(
        table,
        key,
        &[
            (key[0], T(0)),
            (key[1], T(1)),
            ("triple_count", I(0)),
            ("total_position_count", I(1)),
            ("total_market_cap", N(0)),
            ("total_market_cap_sum", N(1)),
        ],
    )
}

/// Which buffer of [`Cols`] a column takes its values from.
#[derive(Clone, Copy)]
enum Src {
    T(usize),
    O(usize),
    N(usize),
    I(usize),
    Ts(usize),
    OI(usize),
    F(usize),
    B,
}
use Src::{Ts, B, F, I, N, O, OI, T};

/// Column buffers of one table under construction, numbered per kind.
#[derive(Default)]
struct Cols {
    text: Vec<Vec<String>>,
    opt_text: Vec<Vec<Option<String>>>,
    num: Vec<Vec<PgNumeric>>,
    int: Vec<Vec<i64>>,
    time: Vec<Vec<Option<i64>>>,
    opt_int: Vec<Vec<Option<i64>>>,
    flag: Vec<Vec<bool>>,
    bytes: Vec<Vec<u8>>,
}

fn slot<V>(v: &mut Vec<Vec<V>>, i: usize) -> &mut Vec<V> {
    while v.len() <= i {
        v.push(Vec::new());
    }
    &mut v[i]
}

impl Cols {
    fn text(&mut self, i: usize, v: String) {
        slot(&mut self.text, i).push(v);
    }
    fn opt_text(&mut self, i: usize, v: Option<String>) {
        slot(&mut self.opt_text, i).push(v);
    }
    fn num(&mut self, i: usize, v: &U256) {
        slot(&mut self.num, i).push(numeric(v));
    }
    fn int(&mut self, i: usize, v: i64) {
        slot(&mut self.int, i).push(v);
    }
    fn time(&mut self, i: usize, v: Option<i64>) {
        slot(&mut self.time, i).push(v);
    }
    fn opt_int(&mut self, i: usize, v: Option<i64>) {
        slot(&mut self.opt_int, i).push(v);
    }
    fn flag(&mut self, i: usize, v: bool) {
        slot(&mut self.flag, i).push(v);
    }
    /// An [`Order`] as three columns: block number and log index in int slots `ints`, the
    /// transaction hash in text slot `text`.
    fn order(&mut self, ints: (usize, usize), text: usize, o: &Order) {
        self.int(ints.0, o.block_number);
        self.int(ints.1, o.log_index);
        self.text(text, o.transaction_hash.to_string());
    }
    fn bytes(&mut self, v: Vec<u8>) {
        self.bytes.push(v);
    }

    fn rowset(
        mut self,
        table: &'static str,
        key: &'static [&'static str],
        layout: &[(&'static str, Src)],
    ) -> RowSet {
        let columns = layout
            .iter()
            .map(|(name, src)| {
                let col = match *src {
                    T(i) => Column::Text(std::mem::take(slot(&mut self.text, i))),
                    O(i) => Column::NullableText(std::mem::take(slot(&mut self.opt_text, i))),
                    N(i) => Column::Numeric(std::mem::take(slot(&mut self.num, i))),
                    I(i) => Column::BigInt(std::mem::take(slot(&mut self.int, i))),
                    Ts(i) => Column::Timestamp(times(std::mem::take(slot(&mut self.time, i)))),
                    OI(i) => Column::NullableBigInt(std::mem::take(slot(&mut self.opt_int, i))),
                    F(i) => Column::Bool(std::mem::take(slot(&mut self.flag, i))),
                    B => Column::Bytea(std::mem::take(&mut self.bytes)),
                };
                (*name, col)
            })
            .collect();
        RowSet {
            table,
            key,
            columns,
            on_conflict: OnConflict::Update,
        }
    }
}
