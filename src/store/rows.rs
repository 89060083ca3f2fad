//! Domain values → column-wise [`RowSet`]s of the derived tables: the base-table rows (atom,
//! triple, position, vault, term) that a batch changed, and the upserts of each derived table
//! (the nine of contract §2), built from its one definition in `tables::derived`. The event
//! log's rows are `event_rows`.

use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use primitive_types::U256;

use diesel::pg::data_types::{PgNumeric, PgTimestamp};

use super::rowset::{pg_numeric, pg_timestamp, RowSet};
use super::tables::derived::{self, Table};
use crate::domain::rows::{
    AtomRow, PairRow, PositionRow, TermRow, TripleRow, TripleTermRow, TripleVaultRow, VaultRow,
};
use crate::domain::{Address, BaseRows};

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
    upserts(&derived::ATOM, rows)
}

/// Upserts of triple rows (conflict target: `term_id`).
pub fn triple_rows(rows: impl IntoIterator<Item = TripleRow>) -> RowSet {
    upserts(&derived::TRIPLE, rows)
}

/// Upserts of position rows (conflict target: `(account_id, term_id, curve_id)`).
pub fn position_rows(rows: impl IntoIterator<Item = PositionRow>) -> RowSet {
    upserts(&derived::POSITION, rows)
}

/// Upserts of vault rows (conflict target: `(term_id, curve_id)`).
pub fn vault_rows(rows: impl IntoIterator<Item = VaultRow>) -> RowSet {
    upserts(&derived::VAULT, rows)
}

/// Upserts of term rows (conflict target: `id`).
pub fn term_rows(rows: impl IntoIterator<Item = TermRow>) -> RowSet {
    upserts(&derived::TERM, rows)
}

/// Upserts of triple_vault rows (conflict target: `(term_id, counter_term_id, curve_id)`).
pub fn triple_vault_rows(rows: &[TripleVaultRow]) -> RowSet {
    derived::rowset(&derived::TRIPLE_VAULT, rows)
}

/// Upserts of triple_term rows (conflict target: `(term_id, counter_term_id)`).
pub fn triple_term_rows(rows: &[TripleTermRow]) -> RowSet {
    derived::rowset(&derived::TRIPLE_TERM, rows)
}

/// Upserts of whole predicate_object rows (conflict target: `(predicate_id, object_id)`): for
/// rebuilds, and for the analytics consumer, which writes each touched pair's absolute row.
pub fn predicate_object_rows(rows: impl IntoIterator<Item = PairRow>) -> RowSet {
    upserts(&derived::PREDICATE_OBJECT, rows)
}

/// Upserts of whole subject_predicate rows (conflict target: `(subject_id, predicate_id)`).
pub fn subject_predicate_rows(rows: impl IntoIterator<Item = PairRow>) -> RowSet {
    upserts(&derived::SUBJECT_PREDICATE, rows)
}

fn upserts<R>(table: &'static Table<R>, rows: impl IntoIterator<Item = R>) -> RowSet {
    derived::rowset(table, &rows.into_iter().collect::<Vec<_>>())
}
