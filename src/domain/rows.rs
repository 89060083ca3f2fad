//! The derived rows of SPEC §2, as plain values. Sinks turn them into SQL; tests compare them.
//!
//! A row type per derived table, keyed as the SPEC keys it. `Tables` is a whole snapshot of every
//! derived table in key order, the form in which two states (or a state and a database) are compared.

use std::collections::BTreeMap;

use primitive_types::{U256, U512};

use super::types::{Address, Order, TermId, TermType, TxHash, VaultType};

/// Key of a position: `(account_id, term_id, curve_id)`.
pub type PositionKey = (Address, TermId, U256);
/// Key of a vault: `(term_id, curve_id)`.
pub type VaultKey = (TermId, U256);
/// Key of a predicate_object or subject_predicate row: the two ids in the table's order.
pub type PairKey = (TermId, TermId);

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AtomRow {
    pub term_id: TermId,
    pub creator_id: Address,
    pub wallet_id: Address,
    /// `raw_data` as UTF-8 text; `None` when it is not valid UTF-8 or contains NUL.
    pub data: Option<String>,
    pub raw_data: Vec<u8>,
    pub block_number: i64,
    pub log_index: i64,
    pub transaction_hash: TxHash,
    pub created_at: Option<i64>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TripleRow {
    pub term_id: TermId,
    pub counter_term_id: TermId,
    pub creator_id: Address,
    pub subject_id: TermId,
    pub predicate_id: TermId,
    pub object_id: TermId,
    pub block_number: i64,
    pub log_index: i64,
    pub transaction_hash: TxHash,
    pub created_at: Option<i64>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PositionRow {
    pub account_id: Address,
    pub term_id: TermId,
    pub curve_id: U256,
    pub shares: U256,
    pub total_deposit_assets_after_total_fees: U256,
    pub total_redeem_assets_for_receiver: U256,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    /// Chain order of the position's oldest and newest event: what the fold continues from
    /// (a later event older than `first_at` sets `created_at`; one newer than `last_at` sets
    /// `shares` and `updated_at`). Persisted next to the SPEC's columns.
    pub first_at: Order,
    pub last_at: Order,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VaultRow {
    pub term_id: TermId,
    pub curve_id: U256,
    pub total_shares: U256,
    pub current_share_price: U256,
    pub total_assets: U256,
    pub market_cap: U256,
    pub position_count: i64,
    pub vault_type: VaultType,
    /// Chain order of the newest SharePriceChanged (`None` while there is none) and of the
    /// newest event of any kind of the key (the one `vault_type` is from). Persisted so the fold
    /// continues from the row.
    pub price_at: Option<Order>,
    pub type_at: Order,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TermRow {
    pub id: TermId,
    pub term_type: TermType,
    pub atom_id: Option<TermId>,
    pub triple_id: Option<TermId>,
    pub total_assets: U256,
    pub total_market_cap: U256,
    /// What `term_type`, `atom_id` and `triple_id` are derived from (a term named by several
    /// kinds of creation keeps all of them): an AtomCreated names it, a TripleCreated names it,
    /// it is the counter term of triple `counter_of`. Persisted so the fold continues from the row.
    pub is_atom: bool,
    pub is_triple: bool,
    pub counter_of: Option<TermId>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TripleVaultRow {
    pub term_id: TermId,
    pub counter_term_id: TermId,
    pub curve_id: U256,
    pub total_shares: U256,
    pub total_assets: U256,
    pub position_count: i64,
    pub market_cap: U256,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TripleTermRow {
    pub term_id: TermId,
    pub counter_term_id: TermId,
    pub total_assets: U256,
    pub total_market_cap: U256,
    pub total_position_count: i64,
}

/// A row of `predicate_object` (key `(predicate_id, object_id)`) or `subject_predicate`
/// (key `(subject_id, predicate_id)`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PairRow {
    pub key: PairKey,
    pub triple_count: i64,
    pub total_position_count: i64,
    /// Σ triple_term.total_market_cap, saturated at 2²⁵⁶−1 (SPEC §2).
    pub total_market_cap: U256,
    /// The same sum, exact in 512 bits: what a later removal of a triple starts from.
    pub total_market_cap_sum: U512,
}

/// Every derived table, each in key order.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Tables {
    pub atom: BTreeMap<TermId, AtomRow>,
    pub triple: BTreeMap<TermId, TripleRow>,
    pub position: BTreeMap<PositionKey, PositionRow>,
    pub vault: BTreeMap<VaultKey, VaultRow>,
    pub term: BTreeMap<TermId, TermRow>,
    pub triple_vault: BTreeMap<(TermId, U256), TripleVaultRow>,
    pub triple_term: BTreeMap<TermId, TripleTermRow>,
    pub predicate_object: BTreeMap<PairKey, PairRow>,
    pub subject_predicate: BTreeMap<PairKey, PairRow>,
}

impl Tables {
    /// The names of the tables whose rows differ between `self` and `other`.
    pub fn differing_tables(&self, other: &Tables) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($t:ident),*) => { $( if self.$t != other.$t { out.push(stringify!($t)); } )* };
        }
        cmp!(
            atom,
            triple,
            position,
            vault,
            term,
            triple_vault,
            triple_term,
            predicate_object,
            subject_predicate
        );
        out
    }

    /// Number of rows per table, in the SPEC's table order.
    pub fn row_counts(&self) -> [(&'static str, usize); 9] {
        [
            ("atom", self.atom.len()),
            ("triple", self.triple.len()),
            ("position", self.position.len()),
            ("vault", self.vault.len()),
            ("term", self.term.len()),
            ("triple_vault", self.triple_vault.len()),
            ("triple_term", self.triple_term.len()),
            ("predicate_object", self.predicate_object.len()),
            ("subject_predicate", self.subject_predicate.len()),
        ]
    }
}
