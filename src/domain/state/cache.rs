//! The state as a bounded cache over the stored rows: the keys an event touches ([`Keys`]), what
//! a batch reads that the cache lacks (`State::missing`), seeding it with the stored rows
//! ([`BaseRows`], `State::seed`), marking what a batch changed (`mark`), the changed rows
//! (`base_rows`) and eviction of entries whose batches have committed (`evict`).

use super::*;

/// Keys of the base rows: what a batch reads (to load the missing ones from the database) or
/// what orphaned events touched (to recompute after a reorg).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub atoms: Set<TermId>,
    pub triples: Set<TermId>,
    /// Terms, with all their vaults.
    pub terms: Set<TermId>,
    pub vaults: Set<VaultKey>,
    pub positions: Set<PositionKey>,
}

impl Keys {
    /// Every key `events` touch: atoms, triples (and their counter terms), vaults and positions,
    /// and the terms of all of them.
    pub fn of_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut keys = Keys::default();
        for e in events {
            keys.add(e);
        }
        keys
    }

    /// Adds the keys `event` touches.
    pub fn add(&mut self, event: &Event) {
        each_key(event, |key| self.insert(key));
    }

    fn insert(&mut self, key: Key) {
        match key {
            Key::Atom(t) => self.atoms.insert(t),
            Key::Triple(t) => self.triples.insert(t),
            Key::Term(t) => self.terms.insert(t),
            Key::Vault(k) => self.vaults.insert(k),
            Key::Position(k) => self.positions.insert(k),
        };
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys named, of every kind.
    pub fn len(&self) -> usize {
        self.atoms.len()
            + self.triples.len()
            + self.terms.len()
            + self.vaults.len()
            + self.positions.len()
    }
}

/// One key an event touches.
enum Key {
    Atom(TermId),
    Triple(TermId),
    Term(TermId),
    Vault(VaultKey),
    Position(PositionKey),
}

impl Key {
    /// The term whose shard owns the key.
    fn term(&self) -> &TermId {
        match self {
            Key::Atom(t) | Key::Triple(t) | Key::Term(t) => t,
            Key::Vault((t, _)) => t,
            Key::Position((_, t, _)) => t,
        }
    }
}

/// Calls `f` with every key `event` touches: atoms, triples (and their counter terms), vaults and
/// positions, and the terms of all of them.
fn each_key(event: &Event, mut f: impl FnMut(Key)) {
    match &event.kind {
        EventKind::AtomCreated { term_id, .. } => {
            f(Key::Atom(*term_id));
            f(Key::Term(*term_id));
        }
        EventKind::TripleCreated { term_id, .. } => {
            f(Key::Triple(*term_id));
            f(Key::Term(*term_id));
            f(Key::Term(counter_term_id(term_id)));
        }
        EventKind::Deposited {
            receiver,
            term_id,
            curve_id,
            ..
        }
        | EventKind::Redeemed {
            receiver,
            term_id,
            curve_id,
            ..
        } => {
            f(Key::Position((*receiver, *term_id, *curve_id)));
            f(Key::Vault((*term_id, *curve_id)));
            f(Key::Term(*term_id));
        }
        EventKind::SharePriceChanged {
            term_id, curve_id, ..
        } => {
            f(Key::Vault((*term_id, *curve_id)));
            f(Key::Term(*term_id));
        }
        EventKind::Generic { .. } => {}
    }
}

/// Base rows of some keys, with what the fold needs to continue from them: the rows a batch
/// changed (to write), or stored rows (what [`State::seed`] continues from).
#[derive(Clone, Debug, Default)]
pub struct BaseRows {
    pub atoms: Vec<AtomRow>,
    pub triples: Vec<TripleRow>,
    pub terms: Vec<TermRow>,
    /// Vault rows. Loaded for [`State::seed`]: every vault of the terms in `terms`.
    pub vaults: Vec<VaultRow>,
    pub positions: Vec<PositionRow>,
}

/// The state as a cache over the stored rows (the `sync` service): load what a batch needs,
/// stamp what it changed, evict what committed long ago. And the reorg recomputation of the
/// keys orphaned events touched, from their stored rows and the remaining events.
impl State {
    /// Of the keys `event` reads, those this state (as a shard: the part it owns) lacks. A vault
    /// is read with its term (a term is loaded with all its vaults).
    pub fn missing(&self, event: &Event, wanted: &mut Keys) {
        each_key(event, |key| {
            let held = match &key {
                Key::Atom(t) => self.atoms.contains_key(t),
                Key::Triple(t) => self.triples.contains_key(t),
                Key::Term(t) => self.terms.contains_key(t),
                Key::Vault(_) => true,
                Key::Position(k) => self.positions.contains_key(k),
            };
            if !held && self.owns(key.term()) {
                wanted.insert(key);
            }
        });
    }

    /// Loads stored rows of keys this state does not hold (a key it holds is newer here: a batch
    /// in flight changed it). `batch` stamps them, as [`mark`](Self::mark) does.
    pub fn seed(&mut self, prior: BaseRows, batch: u64) {
        for row in prior.atoms {
            let at = Order {
                block_number: row.block_number,
                log_index: row.log_index,
                transaction_hash: row.transaction_hash,
            };
            self.atoms.entry(row.term_id).or_insert(Versioned {
                at,
                row,
                touched: batch,
            });
        }
        for row in prior.triples {
            let at = Order {
                block_number: row.block_number,
                log_index: row.log_index,
                transaction_hash: row.transaction_hash,
            };
            self.triples.entry(row.term_id).or_insert(Versioned {
                at,
                row,
                touched: batch,
            });
        }
        let mut fresh: Set<TermId> = Set::default();
        for row in prior.terms {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.terms.entry(row.id) {
                slot.insert(TermState {
                    vaults: Vec::new(),
                    is_atom: row.is_atom,
                    is_triple: row.is_triple,
                    counter_of: row.counter_of,
                    touched: batch,
                });
                fresh.insert(row.id);
            }
        }
        for v in prior.vaults {
            if !fresh.contains(&v.term_id) {
                continue;
            }
            if let Some(term) = self.terms.get_mut(&v.term_id) {
                term.vaults.push((
                    v.curve_id,
                    VaultState {
                        price_at: v.price_at,
                        total_shares: v.total_shares,
                        share_price: v.current_share_price,
                        total_assets: v.total_assets,
                        type_at: v.type_at,
                        vault_type: v.vault_type,
                        position_count: v.position_count,
                    },
                ));
            }
        }
        for p in prior.positions {
            self.positions
                .entry((p.account_id, p.term_id, p.curve_id))
                .or_insert(PositionState {
                    first_at: p.first_at,
                    created_at: p.created_at,
                    last_at: p.last_at,
                    updated_at: p.updated_at,
                    shares: p.shares,
                    deposits: p.total_deposit_assets_after_total_fees,
                    redeems: p.total_redeem_assets_for_receiver,
                    touched: batch,
                });
        }
    }

    /// Stamps the entries `changes` names with `batch`: until that batch has committed, they
    /// are newer than the stored rows and must not be evicted.
    pub fn mark(&mut self, changes: &Changes, batch: u64) {
        for id in &changes.atoms {
            if let Some(a) = self.atoms.get_mut(id) {
                a.touched = batch;
            }
        }
        for id in &changes.triples {
            if let Some(t) = self.triples.get_mut(id) {
                t.touched = batch;
            }
        }
        for key in &changes.positions {
            if let Some(p) = self.positions.get_mut(key) {
                p.touched = batch;
            }
        }
        for id in changes
            .terms
            .iter()
            .chain(changes.vaults.iter().map(|(t, _)| t))
        {
            if let Some(t) = self.terms.get_mut(id) {
                t.touched = batch;
            }
        }
    }

    /// The current rows of the keys `changes` names (a key with no row has none: the live fold
    /// never deletes).
    pub fn base_rows(&self, changes: &Changes) -> BaseRows {
        let mut terms: Vec<TermRow> = Vec::with_capacity(changes.terms.len());
        terms.extend(changes.terms.iter().filter_map(|id| self.term(id)));
        BaseRows {
            atoms: changes
                .atoms
                .iter()
                .filter_map(|id| self.atom(id))
                .collect(),
            triples: changes
                .triples
                .iter()
                .filter_map(|id| self.triple(id))
                .collect(),
            terms,
            vaults: changes
                .vaults
                .iter()
                .filter_map(|k| self.vault(k))
                .collect(),
            positions: changes
                .positions
                .iter()
                .filter_map(|k| self.position(k))
                .collect(),
        }
    }

    /// Entries held: atoms, triples, terms (with their vaults) and positions.
    pub fn cached_keys(&self) -> usize {
        self.atoms.len() + self.triples.len() + self.terms.len() + self.positions.len()
    }

    /// When more than `capacity` entries are held, drops the least recently loaded or changed
    /// ones down to 90 % of it — only entries of batches up to `committed`, whose stored rows
    /// are current. Returns the number dropped.
    pub fn evict(&mut self, committed: u64, capacity: usize) -> usize {
        let held = self.cached_keys();
        if held <= capacity {
            return 0;
        }
        let excess = held - (capacity - capacity / 10);
        let mut stamps: Vec<u64> = self
            .atoms
            .values()
            .map(|a| a.touched)
            .chain(self.triples.values().map(|t| t.touched))
            .chain(self.terms.values().map(|t| t.touched))
            .chain(self.positions.values().map(|p| p.touched))
            .filter(|&t| t <= committed)
            .collect();
        if stamps.is_empty() {
            return 0;
        }
        let k = excess.min(stamps.len()) - 1;
        let (_, &mut cut, _) = stamps.select_nth_unstable(k);
        let old = |t: u64| t > cut;
        self.atoms.retain(|_, a| old(a.touched));
        self.triples.retain(|_, t| old(t.touched));
        self.terms.retain(|_, t| old(t.touched));
        self.positions.retain(|_, p| old(p.touched));
        held - self.cached_keys()
    }
}
