//! The fold: the state machine that turns a set of events into every derived table of SPEC §2.
//!
//! [`State::apply`] takes one event in any order; [`State::refresh_analytics`] brings the
//! triple-level tables up to date for what changed since the last call. [`Changes`] collects the
//! keys of rows that may have changed, so a sink writes only those ([`State::tables`] gives all).
//!
//! **Order independence.** Every field is either "of the newest event" (kept with the [`Order`]
//! of the event that set it, replaced only by a newer one), "of the oldest event" (likewise), a
//! commutative sum, or a pure function of other fields computed when a row is read. So any
//! permutation of the same events gives the same rows, and a repeated identity is ignored.
//!
//! This file holds the per-key state and the fold of one event; `read` the rows read out of it
//! and the triple-level analytics, `cache` the state as a bounded cache over the stored rows,
//! `reorg` the recomputation of the keys a reorg touched.

use std::collections::{HashMap, HashSet};

use primitive_types::U256;

use super::analytics::{self, PairAggregate, VaultFigures};
use super::identity::Seen;
use super::math;
use super::rows::{
    AtomRow, PairKey, PairRow, PositionKey, PositionRow, Tables, TermRow, TripleRow, TripleTermRow,
    TripleVaultRow, VaultKey, VaultRow,
};
use super::types::{
    counter_term_id, Address, Event, EventKind, EventMeta, Order, TermId, TermType, VaultType,
};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

mod cache;
mod read;
mod reorg;

pub use cache::{BaseRows, Keys};
pub use reorg::recompute_keys;

pub use super::identity::Applied;

/// `type_at` of a vault whose events a reorg took out, until the remaining ones are replayed
/// ([`State::retract`]); a vault still holding it afterwards has no event left.
const NO_EVIDENCE: Order = Order {
    block_number: i64::MIN,
    log_index: i64::MIN,
    transaction_hash: super::types::Bytes32([0; 32]),
};

/// Keys of the rows that may have changed. For each key the sink reads the row from the state
/// and upserts it; a batch never deletes a row (only a reorg does: `store::reorg`).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub atoms: Set<TermId>,
    pub triples: Set<TermId>,
    pub positions: Set<PositionKey>,
    pub vaults: Set<VaultKey>,
    pub terms: Set<TermId>,
    /// Triples whose triple_vault rows (all curves) and triple_term row may have changed.
    pub triple_analytics: Set<TermId>,
    pub predicate_objects: Set<PairKey>,
    pub subject_predicates: Set<PairKey>,
    /// Triples whose row a newer TripleCreated replaced with one naming another subject,
    /// predicate or object (hostile input): each triple's row before the first such replacement.
    /// The pair rows the triple was counted in under the old ids must let it go
    /// (`store::commit`); the analytics consumer counts it into the new ones.
    pub replaced_triples: Vec<TripleRow>,
}

impl Changes {
    /// Forgets every key, keeping the allocated capacity for the next batch.
    pub fn clear(&mut self) {
        self.atoms.clear();
        self.triples.clear();
        self.positions.clear();
        self.vaults.clear();
        self.terms.clear();
        self.triple_analytics.clear();
        self.predicate_objects.clear();
        self.subject_predicates.clear();
        self.replaced_triples.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.atoms.is_empty()
            && self.triples.is_empty()
            && self.positions.is_empty()
            && self.vaults.is_empty()
            && self.terms.is_empty()
            && self.triple_analytics.is_empty()
            && self.predicate_objects.is_empty()
            && self.subject_predicates.is_empty()
            && self.replaced_triples.is_empty()
    }
}

#[derive(Clone, Debug)]
struct Versioned<T> {
    at: Order,
    row: T,
    /// The batch that last changed the entry (see [`State::mark`]).
    touched: u64,
}

#[derive(Clone, Debug)]
struct VaultState {
    /// Order of the newest SharePriceChanged; `None` while there is none.
    price_at: Option<Order>,
    total_shares: U256,
    share_price: U256,
    total_assets: U256,
    /// Order of the newest event of any kind of the key, and the vault type it named.
    type_at: Order,
    vault_type: VaultType,
    /// Positions of the key with `shares > 0`.
    position_count: i64,
}

impl VaultState {
    fn market_cap(&self) -> U256 {
        math::market_cap(self.total_shares, self.share_price)
    }

    fn figures(&self) -> VaultFigures {
        VaultFigures {
            total_shares: self.total_shares,
            total_assets: self.total_assets,
            market_cap: self.market_cap(),
            position_count: self.position_count,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct TermState {
    /// The term's vaults by curve; a term has one or two in practice, so a small vector.
    vaults: Vec<(U256, VaultState)>,
    is_atom: bool,
    is_triple: bool,
    /// Set when this term is the counter term of a created triple: the pro triple's id.
    counter_of: Option<TermId>,
    /// The batch that last changed the entry (see [`State::mark`]).
    touched: u64,
}

impl TermState {
    fn vault_mut(&mut self, curve: U256, at: Order, vault_type: VaultType) -> &mut VaultState {
        let i = match self.vaults.iter().position(|(c, _)| *c == curve) {
            Some(i) => i,
            None => {
                self.vaults.push((
                    curve,
                    VaultState {
                        price_at: None,
                        total_shares: U256::zero(),
                        share_price: U256::zero(),
                        total_assets: U256::zero(),
                        type_at: at,
                        vault_type,
                        position_count: 0,
                    },
                ));
                self.vaults.len() - 1
            }
        };
        let vault = &mut self.vaults[i].1;
        if at > vault.type_at {
            vault.type_at = at;
            vault.vault_type = vault_type;
        }
        vault
    }

    fn vault(&self, curve: &U256) -> Option<&VaultState> {
        self.vaults.iter().find(|(c, _)| c == curve).map(|(_, v)| v)
    }
}

#[derive(Clone, Debug)]
struct PositionState {
    first_at: Order,
    created_at: Option<i64>,
    last_at: Order,
    updated_at: Option<i64>,
    shares: U256,
    deposits: U256,
    redeems: U256,
    /// The batch that last changed the entry (see [`State::mark`]).
    touched: u64,
}

/// The triple-level figures last derived for a triple, and the pairs they were counted into.
#[derive(Clone, Debug)]
struct TripleAnalytics {
    predicate_object: PairKey,
    subject_predicate: PairKey,
    triple_term: TripleTermRow,
}

/// The derived state of a set of events. See the module docs for why it is order independent.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Every identity applied, with its content fingerprint. A sharded fold keeps one `Seen` for
    /// all shards instead (`sync::shards`), so its shard states leave this empty.
    seen: Seen,
    atoms: Map<TermId, Versioned<AtomRow>>,
    triples: Map<TermId, Versioned<TripleRow>>,
    terms: Map<TermId, TermState>,
    positions: Map<PositionKey, PositionState>,
    triple_analytics: Map<TermId, TripleAnalytics>,
    predicate_objects: Map<PairKey, PairAggregate>,
    subject_predicates: Map<PairKey, PairAggregate>,
    /// Triples whose analytics are stale: set by `apply`, cleared by `refresh_analytics`.
    stale_triples: Set<TermId>,
    /// When set, this state is shard `.0` of `.1` and keeps only the terms it owns.
    shard: Option<(u64, u64)>,
    /// Whether the triple-level tables are maintained (the sync service leaves them to the
    /// analytics consumer).
    skip_analytics: bool,
}

/// The shard of `count` that owns `term` (terms are keccak hashes, so any 8 bytes are uniform).
pub fn shard_of(term: &TermId, count: u64) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&term.0[..8]);
    u64::from_le_bytes(b) % count.max(1)
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Shard `index` of `count`: keeps the base rows of the terms it owns ([`shard_of`]), and no
    /// triple-level tables (they need vaults of two shards). Route each event to the shard of its
    /// term, and call [`link_counter`](Self::link_counter) on the counter term's shard for every
    /// TripleCreated.
    pub fn shard(index: u64, count: u64) -> Self {
        Self {
            shard: Some((index, count)),
            skip_analytics: true,
            ..Self::default()
        }
    }

    /// A state that keeps the base tables only (atom, triple, position, vault, term).
    pub fn base_only() -> Self {
        Self {
            skip_analytics: true,
            ..Self::default()
        }
    }

    fn owns(&self, term: &TermId) -> bool {
        self.shard.is_none_or(|(i, n)| shard_of(term, n) == i)
    }

    /// Marks `counter` as the counter term of triple `pro` (what TripleCreated does to the
    /// counter term). Idempotent. Only needed when the counter term lives in another shard.
    pub fn link_counter(&mut self, pro: TermId, counter: TermId, changes: &mut Changes) {
        let term = self.terms.entry(counter).or_default();
        if term.counter_of != Some(pro) {
            term.counter_of = Some(pro);
            changes.terms.insert(counter);
        }
    }

    /// Number of distinct events applied through [`apply`](Self::apply).
    pub fn event_count(&self) -> usize {
        self.seen.len()
    }

    /// Number of deliveries that repeated an identity with different content.
    pub fn conflict_count(&self) -> u64 {
        self.seen.conflicts()
    }

    /// Applies one event unless its identity was applied before, recording the keys of the rows
    /// it touched in `changes`.
    pub fn apply(&mut self, event: &Event, changes: &mut Changes) -> Applied {
        let admitted = self.seen.admit(event);
        if admitted == Applied::New {
            self.apply_admitted(event, changes);
        }
        admitted
    }

    /// Applies an event whose identity a [`Seen`] kept elsewhere has just admitted as new (the
    /// sharded fold checks identities once, before it splits the work by term). Applying one
    /// identity twice this way counts it twice: callers must admit first.
    pub fn apply_admitted(&mut self, event: &Event, changes: &mut Changes) {
        let meta = &event.meta;
        let at = meta.order();
        match &event.kind {
            EventKind::AtomCreated {
                creator,
                term_id,
                atom_data,
                atom_wallet,
            } => self.apply_atom(
                meta,
                at,
                *creator,
                *term_id,
                atom_data,
                *atom_wallet,
                changes,
            ),
            EventKind::TripleCreated {
                creator,
                term_id,
                subject_id,
                predicate_id,
                object_id,
            } => {
                let row = TripleRow {
                    term_id: *term_id,
                    counter_term_id: counter_term_id(term_id),
                    creator_id: *creator,
                    subject_id: *subject_id,
                    predicate_id: *predicate_id,
                    object_id: *object_id,
                    block_number: meta.block_number,
                    log_index: meta.log_index,
                    transaction_hash: meta.transaction_hash,
                    created_at: meta.block_timestamp,
                };
                self.apply_triple(at, row, changes);
            }
            EventKind::Deposited {
                receiver,
                term_id,
                curve_id,
                assets_after_fees,
                total_shares,
                vault_type,
                ..
            } => self.apply_position(
                meta,
                at,
                (*receiver, *term_id, *curve_id),
                *total_shares,
                Flow::Deposit(*assets_after_fees),
                *vault_type,
                changes,
            ),
            EventKind::Redeemed {
                receiver,
                term_id,
                curve_id,
                assets,
                total_shares,
                vault_type,
                ..
            } => self.apply_position(
                meta,
                at,
                (*receiver, *term_id, *curve_id),
                *total_shares,
                Flow::Redeem(*assets),
                *vault_type,
                changes,
            ),
            EventKind::SharePriceChanged {
                term_id,
                curve_id,
                share_price,
                total_assets,
                total_shares,
                vault_type,
            } => {
                let vault =
                    self.terms
                        .entry(*term_id)
                        .or_default()
                        .vault_mut(*curve_id, at, *vault_type);
                if vault.price_at.is_none_or(|p| at > p) {
                    vault.price_at = Some(at);
                    vault.share_price = *share_price;
                    vault.total_assets = *total_assets;
                    vault.total_shares = *total_shares;
                }
                self.touch_vault(*term_id, *curve_id, changes);
            }
            EventKind::Generic { .. } => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_atom(
        &mut self,
        meta: &EventMeta,
        at: Order,
        creator: Address,
        term_id: TermId,
        atom_data: &[u8],
        atom_wallet: Address,
        changes: &mut Changes,
    ) {
        let newer = self.atoms.get(&term_id).is_none_or(|a| at > a.at);
        if newer {
            let data = std::str::from_utf8(atom_data)
                .ok()
                .filter(|s| !s.contains('\0'))
                .map(str::to_owned);
            let row = AtomRow {
                term_id,
                creator_id: creator,
                wallet_id: atom_wallet,
                data,
                raw_data: atom_data.to_vec(),
                block_number: meta.block_number,
                log_index: meta.log_index,
                transaction_hash: meta.transaction_hash,
                created_at: meta.block_timestamp,
            };
            self.atoms.insert(
                term_id,
                Versioned {
                    at,
                    row,
                    touched: 0,
                },
            );
            changes.atoms.insert(term_id);
        }
        self.terms.entry(term_id).or_default().is_atom = true;
        changes.terms.insert(term_id);
    }

    fn apply_triple(&mut self, at: Order, row: TripleRow, changes: &mut Changes) {
        let (id, counter) = (row.term_id, row.counter_term_id);
        let stored = self.triples.get(&id);
        if stored.is_none_or(|t| at > t.at) {
            let ids = |r: &TripleRow| (r.subject_id, r.predicate_id, r.object_id);
            if let Some(old) = stored.filter(|old| ids(&old.row) != ids(&row)) {
                if !changes.replaced_triples.iter().any(|r| r.term_id == id) {
                    changes.replaced_triples.push(old.row.clone());
                }
            }
            self.triples.insert(
                id,
                Versioned {
                    at,
                    row,
                    touched: 0,
                },
            );
            changes.triples.insert(id);
        }
        self.terms.entry(id).or_default().is_triple = true;
        changes.terms.insert(id);
        if self.owns(&counter) {
            self.terms.entry(counter).or_default().counter_of = Some(id);
            changes.terms.insert(counter);
        }
        if !self.skip_analytics {
            self.stale_triples.insert(id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_position(
        &mut self,
        meta: &EventMeta,
        at: Order,
        key: PositionKey,
        total_shares: U256,
        flow: Flow,
        vault_type: VaultType,
        changes: &mut Changes,
    ) {
        let (was_open, is_open) = {
            let pos = self.positions.entry(key).or_insert_with(|| PositionState {
                first_at: at,
                created_at: meta.block_timestamp,
                last_at: at,
                updated_at: meta.block_timestamp,
                shares: U256::zero(),
                deposits: U256::zero(),
                redeems: U256::zero(),
                touched: 0,
            });
            let was_open = !pos.shares.is_zero();
            if at < pos.first_at {
                pos.first_at = at;
                pos.created_at = meta.block_timestamp;
            }
            if at >= pos.last_at {
                // `>=`: a new position starts with last_at = at and must take its shares.
                pos.last_at = at;
                pos.updated_at = meta.block_timestamp;
                pos.shares = total_shares;
            }
            match flow {
                Flow::Deposit(v) => pos.deposits = pos.deposits.saturating_add(v),
                Flow::Redeem(v) => pos.redeems = pos.redeems.saturating_add(v),
            }
            (was_open, !pos.shares.is_zero())
        };
        let (_, term_id, curve_id) = key;
        let vault = self
            .terms
            .entry(term_id)
            .or_default()
            .vault_mut(curve_id, at, vault_type);
        vault.position_count += i64::from(is_open) - i64::from(was_open);
        changes.positions.insert(key);
        self.touch_vault(term_id, curve_id, changes);
    }

    /// Records that vault `(term_id, curve_id)` changed: its vault row, its term row, and the
    /// analytics of the triple it belongs to.
    fn touch_vault(&mut self, term_id: TermId, curve_id: U256, changes: &mut Changes) {
        changes.vaults.insert((term_id, curve_id));
        changes.terms.insert(term_id);
        if self.skip_analytics {
            return;
        }
        if let Some(term) = self.terms.get(&term_id) {
            if term.is_triple {
                self.stale_triples.insert(term_id);
            }
            if let Some(pro) = term.counter_of {
                self.stale_triples.insert(pro);
            }
        }
    }
}

enum Flow {
    Deposit(U256),
    Redeem(U256),
}

/// Folds `events` into a fresh state and refreshes the analytics: the reference result.
pub fn fold<'a, I: IntoIterator<Item = &'a Event>>(events: I) -> State {
    let mut state = State::new();
    let mut changes = Changes::default();
    for e in events {
        state.apply(e, &mut changes);
    }
    state.refresh_analytics(&mut changes);
    state
}

#[cfg(test)]
mod tests {
    //! Table-driven tests of every SPEC §2 formula and ordering case, on hand-made events.

    use super::*;
    use crate::domain::types::Bytes32;

    const ATOM: TermId = Bytes32([0xa1; 32]);
    const ATOM2: TermId = Bytes32([0xa2; 32]);
    const ATOM3: TermId = Bytes32([0xa3; 32]);
    const ALICE: Address = Address([0x11; 20]);
    const BOB: Address = Address([0x22; 20]);

    fn u(v: u128) -> U256 {
        U256::from(v)
    }

    /// An event at `(block, log)` in transaction `tx`.
    fn at(block: i64, log: i64, tx: u8, kind: EventKind) -> Event {
        Event {
            meta: EventMeta {
                transaction_hash: Bytes32([tx; 32]),
                log_index: log,
                block_number: block,
                block_timestamp: Some(1_700_000_000 + block),
                block_hash: None,
                transaction_index: None,
                address: None,
                network: None,
                chain_id: None,
            },
            kind,
        }
    }

    fn atom_created(term_id: TermId, data: &[u8]) -> EventKind {
        EventKind::AtomCreated {
            creator: ALICE,
            term_id,
            atom_data: data.to_vec(),
            atom_wallet: BOB,
        }
    }

    fn triple_created(term_id: TermId, s: TermId, p: TermId, o: TermId) -> EventKind {
        EventKind::TripleCreated {
            creator: ALICE,
            term_id,
            subject_id: s,
            predicate_id: p,
            object_id: o,
        }
    }

    fn price(
        term_id: TermId,
        curve: u64,
        price: u128,
        assets: u128,
        shares: u128,
        vt: VaultType,
    ) -> EventKind {
        EventKind::SharePriceChanged {
            term_id,
            curve_id: curve.into(),
            share_price: u(price),
            total_assets: u(assets),
            total_shares: u(shares),
            vault_type: vt,
        }
    }

    fn deposit(
        who: Address,
        term_id: TermId,
        curve: u64,
        after_fees: u128,
        total: u128,
        vt: VaultType,
    ) -> EventKind {
        EventKind::Deposited {
            sender: who,
            receiver: who,
            term_id,
            curve_id: curve.into(),
            assets: u(after_fees + 10),
            assets_after_fees: u(after_fees),
            shares: u(total),
            total_shares: u(total),
            vault_type: vt,
        }
    }

    fn redeem(
        sender: Address,
        receiver: Address,
        term_id: TermId,
        curve: u64,
        assets: u128,
        total: u128,
    ) -> EventKind {
        EventKind::Redeemed {
            sender,
            receiver,
            term_id,
            curve_id: curve.into(),
            shares: u(1),
            total_shares: u(total),
            assets: u(assets),
            fees: u(1),
            vault_type: VaultType::Atom,
        }
    }

    fn run(events: &[Event]) -> State {
        fold(events)
    }

    fn vault(s: &State, term: TermId, curve: u64) -> VaultRow {
        s.vault(&(term, curve.into())).expect("vault row")
    }

    fn position(s: &State, who: Address, term: TermId, curve: u64) -> PositionRow {
        s.position(&(who, term, curve.into()))
            .expect("position row")
    }

    const WAD: u128 = 1_000_000_000_000_000_000;

    #[test]
    fn atom_row_with_utf8_data() {
        let s = run(&[at(5, 2, 1, atom_created(ATOM, b"alice"))]);
        let a = s.atom(&ATOM).expect("atom");
        assert_eq!(a.data.as_deref(), Some("alice"));
        assert_eq!(a.raw_data, b"alice");
        assert_eq!(
            (a.block_number, a.log_index, a.created_at),
            (5, 2, Some(1_700_000_005))
        );
        assert_eq!((a.creator_id, a.wallet_id), (ALICE, BOB));
    }

    #[test]
    fn atom_data_that_is_not_text_is_null() {
        for bad in [&[0xff, 0xfe][..], b"a\0b"] {
            let s = run(&[at(5, 2, 1, atom_created(ATOM, bad))]);
            let a = s.atom(&ATOM).expect("atom");
            assert_eq!(a.data, None, "{bad:?}");
            assert_eq!(a.raw_data, bad);
        }
    }

    #[test]
    fn repeated_atom_creation_newest_wins() {
        let s = run(&[
            at(9, 0, 2, atom_created(ATOM, b"new")),
            at(5, 0, 1, atom_created(ATOM, b"old")),
        ]);
        assert_eq!(s.atom(&ATOM).expect("atom").data.as_deref(), Some("new"));
    }

    #[test]
    fn triple_has_counter_term_by_keccak() {
        let triple = Bytes32([0x7e; 32]);
        let s = run(&[at(1, 0, 1, triple_created(triple, ATOM, ATOM2, ATOM3))]);
        let t = s.triple(&triple).expect("triple");
        assert_eq!(t.counter_term_id, counter_term_id(&triple));
        assert_eq!(
            (t.subject_id, t.predicate_id, t.object_id),
            (ATOM, ATOM2, ATOM3)
        );
        let counter = s.term(&t.counter_term_id).expect("counter term");
        assert_eq!(counter.term_type, TermType::CounterTriple);
        assert_eq!((counter.atom_id, counter.triple_id), (None, Some(triple)));
        let pro = s.term(&triple).expect("pro term");
        assert_eq!(
            (pro.term_type, pro.triple_id),
            (TermType::Triple, Some(triple))
        );
    }

    #[test]
    fn position_formulas() {
        // shares = totalShares of the newest deposit-or-redeem; sums of assetsAfterFees and of
        // redeemed assets; created_at/updated_at from the oldest/newest event.
        let s = run(&[
            at(1, 0, 1, deposit(ALICE, ATOM, 1, 100, 100, VaultType::Atom)),
            at(2, 0, 2, deposit(ALICE, ATOM, 1, 50, 140, VaultType::Atom)),
            at(3, 0, 3, redeem(ALICE, ALICE, ATOM, 1, 30, 110)),
        ]);
        let p = position(&s, ALICE, ATOM, 1);
        assert_eq!(p.shares, u(110));
        assert_eq!(p.total_deposit_assets_after_total_fees, u(150));
        assert_eq!(p.total_redeem_assets_for_receiver, u(30));
        assert_eq!(
            (p.created_at, p.updated_at),
            (Some(1_700_000_001), Some(1_700_000_003))
        );
    }

    #[test]
    fn redeem_burns_the_receivers_shares() {
        let s = run(&[
            at(1, 0, 1, deposit(BOB, ATOM, 1, 100, 100, VaultType::Atom)),
            at(2, 0, 2, redeem(ALICE, BOB, ATOM, 1, 40, 60)),
        ]);
        assert_eq!(position(&s, BOB, ATOM, 1).shares, u(60));
        assert_eq!(
            position(&s, BOB, ATOM, 1).total_redeem_assets_for_receiver,
            u(40)
        );
        assert!(s.position(&(ALICE, ATOM, 1.into())).is_none());
    }

    #[test]
    fn redeem_to_zero_keeps_the_row_and_drops_the_count() {
        let s = run(&[
            at(1, 0, 1, deposit(ALICE, ATOM, 1, 100, 100, VaultType::Atom)),
            at(1, 1, 1, deposit(BOB, ATOM, 1, 100, 100, VaultType::Atom)),
            at(2, 0, 2, redeem(ALICE, ALICE, ATOM, 1, 100, 0)),
        ]);
        assert_eq!(position(&s, ALICE, ATOM, 1).shares, U256::zero());
        assert_eq!(vault(&s, ATOM, 1).position_count, 1);
    }

    #[test]
    fn vault_formulas_from_newest_share_price_changed() {
        let s = run(&[
            at(1, 0, 1, price(ATOM, 1, WAD, 500, 500, VaultType::Atom)),
            at(2, 0, 2, price(ATOM, 1, 2 * WAD, 900, 450, VaultType::Atom)),
            at(2, 1, 2, deposit(ALICE, ATOM, 1, 10, 10, VaultType::Atom)),
        ]);
        let v = vault(&s, ATOM, 1);
        assert_eq!(
            (v.total_shares, v.current_share_price, v.total_assets),
            (u(450), u(2 * WAD), u(900))
        );
        assert_eq!(v.market_cap, u(900)); // 450 * 2e18 / 1e18
        assert_eq!((v.position_count, v.vault_type), (1, VaultType::Atom));
    }

    #[test]
    fn deposit_before_any_price_gives_a_zero_vault() {
        let s = run(&[at(
            1,
            0,
            1,
            deposit(ALICE, ATOM, 2, 10, 10, VaultType::Atom),
        )]);
        let v = vault(&s, ATOM, 2);
        assert_eq!(
            (
                v.total_shares,
                v.current_share_price,
                v.total_assets,
                v.market_cap
            ),
            (u(0), u(0), u(0), u(0))
        );
        assert_eq!(v.position_count, 1);
    }

    #[test]
    fn two_price_changes_in_one_transaction_the_later_log_wins() {
        for events in [
            [
                at(7, 3, 1, price(ATOM, 1, WAD, 100, 100, VaultType::Atom)),
                at(7, 5, 1, price(ATOM, 1, WAD, 200, 200, VaultType::Atom)),
            ],
            [
                at(7, 5, 1, price(ATOM, 1, WAD, 200, 200, VaultType::Atom)),
                at(7, 3, 1, price(ATOM, 1, WAD, 100, 100, VaultType::Atom)),
            ],
        ] {
            assert_eq!(vault(&run(&events), ATOM, 1).total_assets, u(200));
        }
    }

    #[test]
    fn share_price_changed_before_creation_in_the_same_transaction() {
        // The contract's own order: SharePriceChanged (log 2), AtomCreated (log 3), Deposited (log 4).
        let events = [
            at(
                10,
                2,
                1,
                price(
                    ATOM,
                    1,
                    WAD,
                    884_250_000_000_017_500,
                    884_250_000_000_017_500,
                    VaultType::Atom,
                ),
            ),
            at(10, 3, 1, atom_created(ATOM, b"alice")),
            at(
                10,
                4,
                1,
                deposit(
                    ALICE,
                    ATOM,
                    1,
                    884_249_999_999_017_500,
                    884_249_999_999_017_500,
                    VaultType::Atom,
                ),
            ),
        ];
        let s = run(&events);
        let v = vault(&s, ATOM, 1);
        assert_eq!(v.market_cap, u(884_250_000_000_017_500));
        assert_eq!(v.position_count, 1); // the ghost shares are no position
        let t = s.term(&ATOM).expect("term");
        assert_eq!((t.term_type, t.atom_id), (TermType::Atom, Some(ATOM)));
        assert_eq!(t.total_assets, u(884_250_000_000_017_500));
    }

    #[test]
    fn unknown_term_is_upgraded_when_its_creation_arrives() {
        let mut s = State::new();
        let mut c = Changes::default();
        s.apply(
            &at(1, 0, 1, price(ATOM, 1, WAD, 5, 5, VaultType::Atom)),
            &mut c,
        );
        assert_eq!(s.term(&ATOM).expect("term").term_type, TermType::Unknown);
        let mut c = Changes::default();
        s.apply(&at(1, 1, 1, atom_created(ATOM, b"x")), &mut c);
        assert_eq!(s.term(&ATOM).expect("term").term_type, TermType::Atom);
        assert!(
            c.terms.contains(&ATOM),
            "the upgrade is reported as a change"
        );
    }

    #[test]
    fn a_newer_creation_naming_other_ids_reports_the_row_it_replaced() {
        let triple = Bytes32([0x7d; 32]);
        let mut s = State::new();
        let mut c = Changes::default();
        s.apply(
            &at(1, 0, 1, triple_created(triple, ATOM, ATOM2, ATOM3)),
            &mut c,
        );
        assert!(
            c.replaced_triples.is_empty(),
            "a first creation replaces nothing"
        );
        let mut c = Changes::default();
        // The same ids again (another identity): nothing moves between pairs.
        s.apply(
            &at(2, 0, 2, triple_created(triple, ATOM, ATOM2, ATOM3)),
            &mut c,
        );
        assert!(c.replaced_triples.is_empty());
        // Other ids, twice in one batch: the row as it was before the batch is reported once.
        let mut c = Changes::default();
        s.apply(
            &at(3, 0, 3, triple_created(triple, ATOM2, ATOM2, ATOM3)),
            &mut c,
        );
        s.apply(
            &at(4, 0, 4, triple_created(triple, ATOM3, ATOM2, ATOM3)),
            &mut c,
        );
        assert_eq!(c.replaced_triples.len(), 1);
        assert_eq!(c.replaced_triples[0].subject_id, ATOM);
        assert_eq!(c.replaced_triples[0].block_number, 2);
        // An older creation does not replace the row.
        let mut c = Changes::default();
        s.apply(
            &at(1, 5, 5, triple_created(triple, ATOM2, ATOM, ATOM)),
            &mut c,
        );
        assert!(c.replaced_triples.is_empty());
    }

    #[test]
    fn counter_vault_without_deposits() {
        let triple = Bytes32([0x7e; 32]);
        let counter = counter_term_id(&triple);
        let events = [
            at(
                3,
                0,
                1,
                price(
                    triple,
                    1,
                    WAD,
                    888_749_999_999_025_000,
                    888_749_999_999_025_000,
                    VaultType::Triple,
                ),
            ),
            at(
                3,
                1,
                1,
                price(
                    counter,
                    1,
                    WAD,
                    1_000_000,
                    1_000_000,
                    VaultType::CounterTriple,
                ),
            ),
            at(3, 2, 1, triple_created(triple, ATOM, ATOM2, ATOM3)),
            at(
                3,
                3,
                1,
                deposit(
                    ALICE,
                    triple,
                    1,
                    888_749_999_998_025_000,
                    888_749_999_998_025_000,
                    VaultType::Triple,
                ),
            ),
        ];
        let s = run(&events);
        let cv = vault(&s, counter, 1);
        assert_eq!(
            (cv.total_shares, cv.market_cap, cv.position_count),
            (u(1_000_000), u(1_000_000), 0)
        );
        assert_eq!(cv.vault_type, VaultType::CounterTriple);
        assert_eq!(
            s.term(&counter).expect("counter").term_type,
            TermType::CounterTriple
        );
        // triple_vault adds pro and counter.
        let tv = s.triple_vaults(&triple);
        assert_eq!(tv.len(), 1);
        assert_eq!(tv[0].total_assets, u(888_749_999_999_025_000 + 1_000_000));
        assert_eq!(tv[0].position_count, 1);
        assert_eq!(tv[0].counter_term_id, counter);
    }

    #[test]
    fn term_totals_sum_the_terms_vaults() {
        let s = run(&[
            at(1, 0, 1, price(ATOM, 1, WAD, 100, 100, VaultType::Atom)),
            at(1, 1, 1, price(ATOM, 2, 3 * WAD, 50, 20, VaultType::Atom)),
        ]);
        let t = s.term(&ATOM).expect("term");
        assert_eq!(t.total_assets, u(150));
        assert_eq!(t.total_market_cap, u(100 + 60));
    }

    #[test]
    fn vault_type_comes_from_the_newest_event_of_the_key() {
        let s = run(&[
            at(2, 0, 1, deposit(ALICE, ATOM, 1, 1, 1, VaultType::Triple)),
            at(1, 0, 1, price(ATOM, 1, WAD, 1, 1, VaultType::Atom)),
        ]);
        assert_eq!(vault(&s, ATOM, 1).vault_type, VaultType::Triple);
    }

    #[test]
    fn triples_over_triples_and_pair_aggregates() {
        let t1 = Bytes32([0x71; 32]);
        let t2 = Bytes32([0x72; 32]);
        let t3 = Bytes32([0x73; 32]); // subject is the triple t1
        let events = [
            at(1, 0, 1, triple_created(t1, ATOM, ATOM2, ATOM3)),
            at(1, 1, 1, triple_created(t2, ATOM2, ATOM2, ATOM3)),
            at(1, 2, 1, triple_created(t3, t1, ATOM2, ATOM3)),
            at(2, 0, 2, price(t1, 1, WAD, 10, 10, VaultType::Triple)),
            at(2, 1, 2, deposit(ALICE, t1, 1, 10, 10, VaultType::Triple)),
            at(
                2,
                2,
                2,
                price(
                    counter_term_id(&t3),
                    1,
                    2 * WAD,
                    7,
                    5,
                    VaultType::CounterTriple,
                ),
            ),
            at(
                2,
                3,
                2,
                deposit(BOB, counter_term_id(&t3), 1, 7, 5, VaultType::CounterTriple),
            ),
        ];
        let s = run(&events);
        // All three share (predicate ATOM2, object ATOM3).
        let po = s.predicate_object(&(ATOM2, ATOM3)).expect("pair");
        assert_eq!((po.triple_count, po.total_position_count), (3, 2));
        assert_eq!(po.total_market_cap, u(10 + 10));
        let sp = s
            .subject_predicate(&(t1, ATOM2))
            .expect("pair with a triple as subject");
        assert_eq!((sp.triple_count, sp.total_market_cap), (1, u(10)));
        let tt = s.triple_term(&t3).expect("triple_term");
        assert_eq!(
            (
                tt.total_assets,
                tt.total_market_cap,
                tt.total_position_count
            ),
            (u(7), u(10), 1)
        );
        // A triple with no vault has a zero triple_term and no triple_vault rows.
        assert!(s.triple_vaults(&t2).is_empty());
        assert_eq!(
            s.triple_term(&t2)
                .expect("triple_term")
                .total_position_count,
            0
        );
    }

    #[test]
    fn duplicates_change_nothing_and_conflicts_keep_the_first() {
        let e = at(1, 0, 1, deposit(ALICE, ATOM, 1, 100, 100, VaultType::Atom));
        let mut s = State::new();
        let mut c = Changes::default();
        assert_eq!(s.apply(&e, &mut c), Applied::New);
        assert_eq!(s.apply(&e, &mut c), Applied::Duplicate);
        let mut other = e.clone();
        other.kind = deposit(ALICE, ATOM, 1, 999, 999, VaultType::Atom);
        assert_eq!(s.apply(&other, &mut c), Applied::Conflict);
        assert_eq!(
            position(&s, ALICE, ATOM, 1).total_deposit_assets_after_total_fees,
            u(100)
        );
        assert_eq!((s.event_count(), s.conflict_count()), (1, 1));
    }

    #[test]
    fn many_logs_under_one_transaction_are_told_apart_across_the_list_to_map_switch() {
        // More logs than `crate::domain::identity::FEW_LOGS` under one hash: identities stay distinct, repeats stay
        // duplicates and a changed repeat stays a conflict, before and after the switch.
        let n = (crate::domain::identity::FEW_LOGS * 3) as i64;
        let events: Vec<Event> = (0..n)
            .map(|log| {
                at(
                    1,
                    log,
                    7,
                    deposit(ALICE, ATOM, 1, 1 + log as u128, 5, VaultType::Atom),
                )
            })
            .collect();
        let mut s = State::new();
        let mut c = Changes::default();
        for e in &events {
            assert_eq!(s.apply(e, &mut c), Applied::New);
        }
        for e in events.iter().rev() {
            assert_eq!(s.apply(e, &mut c), Applied::Duplicate);
        }
        for log in [0, crate::domain::identity::FEW_LOGS as i64 + 1, n - 1] {
            let changed = at(1, log, 7, deposit(ALICE, ATOM, 1, 999, 5, VaultType::Atom));
            assert_eq!(s.apply(&changed, &mut c), Applied::Conflict);
        }
        assert_eq!((s.event_count(), s.conflict_count()), (n as usize, 3));
        let sum: u128 = (1..=n as u128).sum();
        assert_eq!(
            position(&s, ALICE, ATOM, 1).total_deposit_assets_after_total_fees,
            u(sum)
        );
    }

    #[test]
    fn changes_name_exactly_the_touched_rows() {
        let mut s = run(&[at(1, 0, 1, price(ATOM, 1, WAD, 1, 1, VaultType::Atom))]);
        let mut c = Changes::default();
        s.apply(
            &at(2, 0, 2, deposit(ALICE, ATOM2, 1, 5, 5, VaultType::Atom)),
            &mut c,
        );
        s.refresh_analytics(&mut c);
        assert_eq!(c.positions.len(), 1);
        assert!(c.vaults.contains(&(ATOM2, 1.into())) && c.vaults.len() == 1);
        assert!(c.terms.contains(&ATOM2) && c.terms.len() == 1);
        assert!(c.atoms.is_empty() && c.triple_analytics.is_empty());
    }
}
