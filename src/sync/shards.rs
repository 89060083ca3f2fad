//! The fold, sharded by term across `WORKERS` threads, over a bounded cache of the stored rows.
//!
//! Base rows of a term (its position, vault and term rows) depend only on events of that term, so
//! each shard owns a slice of the term space and folds its events alone, without locks. The one
//! cross-term effect, TripleCreated naming a counter term, is sent to the counter term's shard as
//! a link. Any `WORKERS` value gives the same rows: the shards partition the keys.
//!
//! **The state is a cache, not the history.** The shards hold the entries (atoms, triples, terms
//! with their vaults, positions) recent batches used, at most `STATE_CACHE_KEYS` of them. Before a
//! batch is folded, [`Shards::needs`] names what it reads and the cache lacks — keys, and event
//! identities not admitted in flight — the caller loads those from PostgreSQL
//! (`store::prior`) and hands them to [`Shards::seed`]; then [`Shards::fold`]. A start, a
//! takeover or a restart after a failure begins with an empty cache: nothing is read that no
//! batch needs.
//!
//! **Architecture Invariant:** an entry a batch changed is never evicted, nor an identity it
//! admitted forgotten, before that batch has committed ([`Shards::release`]): until then the
//! cache is newer than the database. An entry not held is read from the database, which then
//! holds its newest value, since every batch that changed it has committed.
//!
//! Identities are checked once, for the whole batch, before the work is split: [`Shards`] keeps
//! the one [`Seen`] of the fold, so a second delivery of an identity is a duplicate or a conflict
//! whichever shard its term would route it to. It holds the identities of batches in flight and
//! the stored events of the batch's identities that the event log already has.

use std::collections::VecDeque;
use std::thread;

use crate::domain::identity::Seen;
use crate::domain::rows::TripleRow;
use crate::domain::state::shard_of;
use crate::domain::types::{counter_term_id, TxHash};
use crate::domain::{Applied, BaseRows, Changes, Event, EventKind, Keys, State};
use crate::store::event_rows::{dedup_transaction_keys, event_rows};
use crate::store::rows::base_rows;
use crate::store::rowset::RowSet;

/// The rows one batch writes, and what it did.
#[derive(Debug, Default)]
pub struct Folded {
    /// The batch's sequence number: report it to [`Shards::release`] once it has committed.
    pub batch: u64,
    /// Event log rows of the new core events, then the changed base rows, merged across shards.
    pub rows: Vec<RowSet>,
    /// The changed base rows as values, and the new events (only when
    /// [`Shards::keep_changed`] is set: tests).
    pub changed: BaseRows,
    pub events: Vec<Event>,
    /// The new generic events (their rows are written apart: see `store::BatchWrite`).
    pub generic: Vec<Event>,
    /// Ids of terms whose term or vault rows changed.
    pub changed_terms: Vec<String>,
    /// Triples whose row now names another subject, predicate or object: `(row as stored
    /// before, new row)` (see `Changes::replaced_triples`).
    pub moved_triples: Vec<(TripleRow, TripleRow)>,
    pub new_events: usize,
    /// New events per event name, for the metrics.
    pub new_by_type: Vec<(String, u64)>,
    pub duplicates: usize,
    pub conflicts: usize,
}

/// What a batch reads that the shards do not hold: load it with `store::prior`.
#[derive(Debug, Default)]
pub struct Needs {
    /// Identities of the batch admitted by no batch in flight: their stored events, if any.
    pub identities: Vec<(TxHash, i64)>,
    /// Base rows of keys no shard holds.
    pub keys: Keys,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.keys.is_empty()
    }
}

#[derive(Debug)]
pub struct Shards {
    /// Identities of the batches in flight (and the stored events of the batch being prepared),
    /// checked before events are routed to their shard.
    seen: Seen,
    states: Vec<State>,
    /// Sequence number of the next batch folded (1, 2, …; 0 is "nothing committed").
    next: u64,
    /// Identities admitted per batch, forgotten once that batch has committed.
    admitted: VecDeque<(u64, Vec<(TxHash, i64)>)>,
    /// Entries the shards hold at most, together (`STATE_CACHE_KEYS`).
    capacity: usize,
    keep_changed: bool,
}

/// Where an event goes: its own shard, plus the counter term's shard for a TripleCreated.
fn route(event: &Event, count: u64) -> (u64, Option<u64>) {
    let term = match &event.kind {
        EventKind::AtomCreated { term_id, .. }
        | EventKind::Deposited { term_id, .. }
        | EventKind::Redeemed { term_id, .. }
        | EventKind::SharePriceChanged { term_id, .. } => term_id,
        EventKind::TripleCreated { term_id, .. } => {
            let own = shard_of(term_id, count);
            let counter = shard_of(&counter_term_id(term_id), count);
            return (own, (counter != own).then_some(counter));
        }
        EventKind::Generic { .. } => &event.meta.transaction_hash,
    };
    (shard_of(term, count), None)
}

impl Shards {
    /// `workers` shards holding at most `capacity` entries together.
    pub fn new(workers: usize, capacity: usize) -> Self {
        let n = workers.max(1) as u64;
        Self {
            seen: Seen::default(),
            states: (0..n).map(|i| State::shard(i, n)).collect(),
            next: 1,
            admitted: VecDeque::new(),
            capacity: capacity.max(1),
            keep_changed: false,
        }
    }

    /// Makes [`fold`](Self::fold) return the changed base rows as values too.
    pub fn keep_changed(mut self) -> Self {
        self.keep_changed = true;
        self
    }

    /// Identities held (those of batches in flight).
    pub fn event_count(&self) -> usize {
        self.seen.len()
    }

    /// Entries held by all shards.
    pub fn cached_keys(&self) -> usize {
        self.states.iter().map(State::cached_keys).sum()
    }

    /// The base tables (atom, triple, position, vault, term) of the entries the shards hold.
    pub fn base_tables(&self) -> crate::domain::Tables {
        let mut all = crate::domain::Tables::default();
        for state in &self.states {
            let t = state.tables();
            all.atom.extend(t.atom);
            all.triple.extend(t.triple);
            all.position.extend(t.position);
            all.vault.extend(t.vault);
            all.term.extend(t.term);
        }
        all
    }

    /// Forgets an event's identity (the store refused the event: it is not part of the state, and
    /// a later delivery must count as new). Only for events with no effect on the base rows.
    pub fn forget(&mut self, transaction_hash: &TxHash, log_index: i64) {
        self.seen.forget(transaction_hash, log_index);
    }

    /// What folding `events` reads that the shards do not hold.
    pub fn needs(&self, events: &[Event]) -> Needs {
        let n = self.states.len() as u64;
        let mut needs = Needs::default();
        let mut asked = std::collections::HashSet::with_capacity(events.len());
        for event in events {
            let (tx, log) = (event.meta.transaction_hash, event.meta.log_index);
            if !self.seen.contains(&tx, log) && asked.insert((tx, log)) {
                needs.identities.push((tx, log));
            }
            let (own, counter) = route(event, n);
            self.states[own as usize].missing(event, &mut needs.keys);
            if let Some(c) = counter {
                self.states[c as usize].missing(event, &mut needs.keys);
            }
        }
        needs
    }

    /// Hands over what [`needs`](Self::needs) asked for: the stored events of the identities (the
    /// event log's, so later deliveries of them are duplicates or conflicts) and the stored rows.
    pub fn seed(&mut self, stored: Vec<Event>, rows: BaseRows) {
        let batch = self.next;
        let mut ids = Vec::with_capacity(stored.len());
        for event in &stored {
            if self.seen.admit(event) == Applied::New {
                ids.push((event.meta.transaction_hash, event.meta.log_index));
            }
        }
        if !ids.is_empty() {
            self.admitted.push_back((batch, ids));
        }
        let n = self.states.len() as u64;
        let mut parts: Vec<BaseRows> = (0..n).map(|_| BaseRows::default()).collect();
        let part = |t: &crate::domain::TermId| shard_of(t, n) as usize;
        for r in rows.atoms {
            parts[part(&r.term_id)].atoms.push(r);
        }
        for r in rows.triples {
            parts[part(&r.term_id)].triples.push(r);
        }
        for r in rows.terms {
            parts[part(&r.id)].terms.push(r);
        }
        for r in rows.vaults {
            parts[part(&r.term_id)].vaults.push(r);
        }
        for r in rows.positions {
            parts[part(&r.term_id)].positions.push(r);
        }
        for (state, part) in self.states.iter_mut().zip(parts) {
            state.seed(part, batch);
        }
    }

    /// Batch `committed` (and every one before it) has committed: their identities are the
    /// event log's now, their entries the stored rows'. Forgets those identities and evicts
    /// entries down to the capacity. Returns the number of entries evicted.
    pub fn release(&mut self, committed: u64) -> usize {
        while self.admitted.front().is_some_and(|(b, _)| *b <= committed) {
            if let Some((_, ids)) = self.admitted.pop_front() {
                for (tx, log) in ids {
                    self.seen.forget(&tx, log);
                }
            }
        }
        let per_shard = (self.capacity / self.states.len()).max(1);
        self.states
            .iter_mut()
            .map(|s| s.evict(committed, per_shard))
            .sum()
    }

    /// Applies `events` (any order) and returns the rows to write. What they read must be held
    /// or seeded first ([`needs`](Self::needs), [`seed`](Self::seed)).
    pub fn fold(&mut self, events: Vec<Event>) -> Folded {
        let batch = self.next;
        self.next += 1;
        let n = self.states.len() as u64;
        let mut per_shard: Vec<Vec<Work>> = (0..n).map(|_| Vec::new()).collect();
        let (mut duplicates, mut conflicts) = (0, 0);
        let mut admitted = Vec::with_capacity(events.len());
        for event in events {
            match self.seen.admit(&event) {
                Applied::New => {
                    admitted.push((event.meta.transaction_hash, event.meta.log_index));
                }
                Applied::Duplicate => {
                    duplicates += 1;
                    continue;
                }
                Applied::Conflict => {
                    conflicts += 1;
                    tracing::warn!(
                        transaction_hash = %event.meta.transaction_hash,
                        log_index = event.meta.log_index,
                        event_type = event.kind.name(),
                        "event identity reused with different content; the first delivery stays"
                    );
                    continue;
                }
            }
            let (own, counter_shard) = route(&event, n);
            if let (Some(shard), EventKind::TripleCreated { term_id, .. }) =
                (counter_shard, &event.kind)
            {
                per_shard[shard as usize].push(Work::Link(*term_id));
            }
            per_shard[own as usize].push(Work::Apply(event));
        }
        match self.admitted.back_mut() {
            Some((b, ids)) if *b == batch => ids.extend(admitted),
            _ => self.admitted.push_back((batch, admitted)),
        }
        let keep = self.keep_changed;
        let results: Vec<Folded> = if self.states.len() == 1 {
            vec![fold_shard(
                &mut self.states[0],
                per_shard.pop().unwrap_or_default(),
                batch,
                keep,
            )]
        } else {
            thread::scope(|scope| {
                let handles: Vec<_> = self
                    .states
                    .iter_mut()
                    .zip(per_shard)
                    .map(|(state, work)| scope.spawn(move || fold_shard(state, work, batch, keep)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let mut folded = merge(results);
        folded.batch = batch;
        folded.duplicates = duplicates;
        folded.conflicts = conflicts;
        folded
    }
}

#[allow(clippy::large_enum_variant)] // events are moved once into their shard's list
enum Work {
    Apply(Event),
    /// TripleCreated of this triple id, for the shard of its counter term.
    Link(crate::domain::TermId),
}

fn fold_shard(state: &mut State, work: Vec<Work>, batch: u64, keep_changed: bool) -> Folded {
    let mut changes = Changes::default();
    let mut new = Vec::new();
    for w in work {
        match w {
            Work::Apply(event) => {
                state.apply_admitted(&event, &mut changes);
                new.push(event);
            }
            Work::Link(pro) => state.link_counter(pro, counter_term_id(&pro), &mut changes),
        }
    }
    state.mark(&changes, batch);
    let new_by_type = count_by_name(&new);
    let new_events = new.len();
    let kept_events = if keep_changed {
        new.clone()
    } else {
        Vec::new()
    };
    let (generic, core): (Vec<Event>, Vec<Event>) = new
        .into_iter()
        .partition(|e| matches!(e.kind, EventKind::Generic { .. }));
    let mut rows = event_rows(&core);
    let changed = state.base_rows(&changes);
    let moved_triples = changes
        .replaced_triples
        .iter()
        .filter_map(|old| {
            let new = changed.triples.iter().find(|n| n.term_id == old.term_id)?;
            let ids = |r: &TripleRow| (r.subject_id, r.predicate_id, r.object_id);
            (ids(new) != ids(old)).then(|| (old.clone(), new.clone()))
        })
        .collect();
    let kept = if keep_changed {
        changed.clone()
    } else {
        BaseRows::default()
    };
    rows.extend(base_rows(changed));
    Folded {
        batch,
        rows,
        changed: kept,
        events: kept_events,
        generic,
        changed_terms: changes.terms.iter().map(|t| t.to_string()).collect(),
        moved_triples,
        new_events,
        new_by_type,
        duplicates: 0,
        conflicts: 0,
    }
}

fn count_by_name(events: &[Event]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for e in events {
        let name = e.kind.name();
        match out.iter_mut().find(|(t, _)| t == name) {
            Some((_, n)) => *n += 1,
            None => out.push((name.to_owned(), 1)),
        }
    }
    out
}

fn merge(results: Vec<Folded>) -> Folded {
    let mut out = Folded::default();
    for r in results {
        out.new_events += r.new_events;
        for (name, n) in r.new_by_type {
            match out.new_by_type.iter_mut().find(|(t, _)| *t == name) {
                Some((_, total)) => *total += n,
                None => out.new_by_type.push((name, n)),
            }
        }
        out.duplicates += r.duplicates;
        out.conflicts += r.conflicts;
        out.changed_terms.extend(r.changed_terms);
        out.moved_triples.extend(r.moved_triples);
        out.generic.extend(r.generic);
        out.changed.atoms.extend(r.changed.atoms);
        out.changed.triples.extend(r.changed.triples);
        out.changed.terms.extend(r.changed.terms);
        out.changed.vaults.extend(r.changed.vaults);
        out.changed.positions.extend(r.changed.positions);
        out.events.extend(r.events);
        for rows in r.rows {
            match out.rows.iter_mut().find(|x| x.table == rows.table) {
                Some(existing) => existing.append(rows),
                None => out.rows.push(rows),
            }
        }
    }
    dedup_transaction_keys(&mut out.rows);
    // Write order: the event log first, then base tables (any order is correct; a fixed one keeps
    // lock order stable).
    out.rows.sort_by_key(|r| {
        TABLE_ORDER
            .iter()
            .position(|t| *t == r.table)
            .unwrap_or(usize::MAX)
    });
    out.changed_terms.sort_unstable();
    out
}

const TABLE_ORDER: [&str; 12] = [
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
    "event_transactions",
    "atom",
    "triple",
    "position",
    "vault",
    "term",
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::domain::properties::{
        first_accepted, shuffled_with_duplicates, tiny_event, tiny_events, with_conflicts,
    };
    use crate::domain::{fold, Tables};
    use crate::fixture::read_events;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// The base tables of `t` (the sharded fold leaves the triple-level ones to analytics).
    fn base(t: Tables) -> Tables {
        Tables {
            atom: t.atom,
            triple: t.triple,
            position: t.position,
            vault: t.vault,
            term: t.term,
            ..Tables::default()
        }
    }

    /// What PostgreSQL holds for the fold: the committed event log (identities) and base rows.
    #[derive(Default)]
    struct Stored {
        events: HashMap<(TxHash, i64), Event>,
        tables: Tables,
    }

    impl Stored {
        /// `store::prior`, in memory.
        fn load(&self, needs: &Needs) -> (Vec<Event>, BaseRows) {
            let stored = needs
                .identities
                .iter()
                .filter_map(|id| self.events.get(id).cloned())
                .collect();
            let t = &self.tables;
            let rows = BaseRows {
                atoms: needs
                    .keys
                    .atoms
                    .iter()
                    .filter_map(|k| t.atom.get(k).cloned())
                    .collect(),
                triples: needs
                    .keys
                    .triples
                    .iter()
                    .filter_map(|k| t.triple.get(k).cloned())
                    .collect(),
                terms: needs
                    .keys
                    .terms
                    .iter()
                    .filter_map(|k| t.term.get(k).cloned())
                    .collect(),
                vaults: t
                    .vault
                    .values()
                    .filter(|v| needs.keys.terms.contains(&v.term_id))
                    .cloned()
                    .collect(),
                positions: needs
                    .keys
                    .positions
                    .iter()
                    .filter_map(|k| t.position.get(k).cloned())
                    .collect(),
            };
            (stored, rows)
        }

        /// The batch transaction: new events and upserts of the changed rows.
        fn commit(&mut self, f: &Folded) {
            for e in &f.events {
                let id = (e.meta.transaction_hash, e.meta.log_index);
                assert!(
                    self.events.insert(id, e.clone()).is_none(),
                    "an identity logged twice"
                );
            }
            let t = &mut self.tables;
            let c = f.changed.clone();
            t.atom.extend(c.atoms.into_iter().map(|r| (r.term_id, r)));
            t.triple
                .extend(c.triples.into_iter().map(|r| (r.term_id, r)));
            t.term.extend(c.terms.into_iter().map(|r| (r.id, r)));
            t.vault
                .extend(c.vaults.into_iter().map(|r| ((r.term_id, r.curve_id), r)));
            t.position.extend(
                c.positions
                    .into_iter()
                    .map(|r| ((r.account_id, r.term_id, r.curve_id), r)),
            );
        }
    }

    /// Prepares one batch as the reader does: release what committed, load what is missing, fold.
    fn prepare(shards: &mut Shards, stored: &Stored, committed: u64, events: Vec<Event>) -> Folded {
        shards.release(committed);
        let needs = shards.needs(&events);
        let (events_stored, rows) = stored.load(&needs);
        shards.seed(events_stored, rows);
        shards.fold(events)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

        /// The live path, incremental: the sharded fold over a cache of at most `capacity`
        /// entries, loading the stored rows of what it lacks, with the next batch prepared
        /// before or after the previous one commits, restarts (an empty cache over the committed
        /// rows) at any batch boundary, any worker count and batch cut, over shuffled, duplicated
        /// and identity-conflicting deliveries: the stored rows equal the reference fold of the
        /// deliveries first accepted, and every identity is logged once.
        #[test]
        fn the_incremental_path_equals_the_reference_fold(
            specs in prop::collection::vec(tiny_event(), 2..50),
            pairs in prop::collection::vec((any::<Index>(), any::<Index>()), 0..12),
            shuffle in prop::collection::vec(any::<Index>(), 120),
            dups in prop::collection::vec(any::<Index>(), 0..20),
            workers in 1usize..6,
            batch in 1usize..25,
            capacity in prop_oneof![1usize..12, Just(1_000_000)],
            crashes in prop::collection::vec(any::<bool>(), 1..8),
            commit_late in prop::collection::vec(any::<bool>(), 1..8),
        ) {
            let all = with_conflicts(&tiny_events(&specs), &pairs);
            let order = shuffled_with_duplicates(all.len(), &shuffle, &dups);
            let delivered: Vec<Event> = order.iter().map(|&i| all[i].clone()).collect();
            let accepted = first_accepted(&delivered);
            let expected = base(fold(accepted.iter().copied()).tables());

            let mut stored = Stored::default();
            let mut shards = Shards::new(workers, capacity).keep_changed();
            let mut committed = 0;
            let mut pending: Option<Folded> = None;
            let (mut new, mut repeated) = (0, 0);
            for (i, chunk) in delivered.chunks(batch).enumerate() {
                let crash = crashes[i % crashes.len()];
                if crash || !commit_late[i % commit_late.len()] {
                    if let Some(f) = pending.take() {
                        stored.commit(&f);
                        committed = f.batch;
                    }
                }
                if crash {
                    shards = Shards::new(workers, capacity).keep_changed();
                    committed = 0;
                }
                let f = prepare(&mut shards, &stored, committed, chunk.to_vec());
                new += f.new_events;
                repeated += f.duplicates + f.conflicts;
                let logged: usize = f.rows.iter().filter(|r| r.table.ends_with("_events")).map(RowSet::len).sum();
                prop_assert_eq!(logged + f.generic.len(), f.new_events);
                // The batch before commits while this one was prepared (or had already).
                if let Some(p) = pending.take() {
                    stored.commit(&p);
                    committed = p.batch;
                }
                pending = Some(f);
            }
            if let Some(f) = pending.take() {
                stored.commit(&f);
            }
            prop_assert_eq!(new, accepted.len());
            prop_assert_eq!(new + repeated, delivered.len());
            prop_assert!(stored.tables == expected, "tables differ: {:?}", stored.tables.differing_tables(&expected));
            if capacity < 1000 {
                // Bounded: what is held beyond the capacity is what batches in flight changed.
                shards.release(u64::MAX);
                let bound = capacity.max(workers); // each shard keeps at least one
                prop_assert!(shards.cached_keys() <= bound, "{} held", shards.cached_keys());
            }
        }
    }

    /// What `store::reorg` selects from the remaining event log, in Rust: `(decisive,
    /// vault_events)` of [`crate::domain::state::recompute_keys`].
    fn decisive_events(remaining: &[Event], keys: &Keys) -> (Vec<Event>, Vec<Event>) {
        let mut decisive = Vec::new();
        let mut newest: BTreeMap<(u8, crate::domain::TermId, primitive_types::U256), &Event> =
            BTreeMap::new();
        fn keep<'e>(
            newest: &mut BTreeMap<(u8, crate::domain::TermId, primitive_types::U256), &'e Event>,
            key: (u8, crate::domain::TermId, primitive_types::U256),
            e: &'e Event,
        ) {
            let slot = newest.entry(key).or_insert(e);
            if e.order() > slot.order() {
                *slot = e;
            }
        }
        let mut keep_newest = |kind: u8, term, curve, e| keep(&mut newest, (kind, term, curve), e);
        let zero = primitive_types::U256::zero();
        for e in remaining {
            match &e.kind {
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
                    if keys.positions.contains(&(*receiver, *term_id, *curve_id)) {
                        decisive.push(e.clone());
                    }
                    if keys.vaults.contains(&(*term_id, *curve_id)) {
                        let kind = if matches!(e.kind, EventKind::Deposited { .. }) {
                            1
                        } else {
                            2
                        };
                        keep_newest(kind, *term_id, *curve_id, e);
                    }
                }
                EventKind::SharePriceChanged {
                    term_id, curve_id, ..
                } if keys.vaults.contains(&(*term_id, *curve_id)) => {
                    keep_newest(0, *term_id, *curve_id, e);
                }
                EventKind::AtomCreated { term_id, .. } if keys.atoms.contains(term_id) => {
                    keep_newest(3, *term_id, zero, e);
                }
                EventKind::TripleCreated { term_id, .. } if keys.triples.contains(term_id) => {
                    keep_newest(4, *term_id, zero, e);
                }
                _ => {}
            }
        }
        let mut vault_events = Vec::new();
        for ((kind, _, _), e) in newest {
            if kind == 1 || kind == 2 {
                vault_events.push(e.clone());
            } else {
                decisive.push(e.clone());
            }
        }
        (decisive, vault_events)
    }

    impl Stored {
        /// `store::reorg`, in memory: the events at or after `fork` leave the event log, and the
        /// rows of the keys they touched are recomputed from their stored rows and the
        /// remaining events that decide them.
        fn reorg(&mut self, fork: i64) {
            let (orphaned, remaining): (Vec<Event>, Vec<Event>) = self
                .events
                .values()
                .cloned()
                .partition(|e| e.meta.block_number >= fork);
            for e in &orphaned {
                self.events
                    .remove(&(e.meta.transaction_hash, e.meta.log_index));
            }
            let keys = Keys::of_events(&orphaned);
            let needs = Needs {
                identities: Vec::new(),
                keys: keys.clone(),
            };
            let (_, prior) = self.load(&needs);
            let (decisive, vault_events) = decisive_events(&remaining, &keys);
            let new = crate::domain::state::recompute_keys(prior, &keys, &decisive, &vault_events);
            let t = &mut self.tables;
            for k in &keys.atoms {
                t.atom.remove(k);
            }
            for k in &keys.triples {
                t.triple.remove(k);
            }
            for k in &keys.terms {
                t.term.remove(k);
            }
            for k in &keys.vaults {
                t.vault.remove(k);
            }
            for k in &keys.positions {
                t.position.remove(k);
            }
            t.atom.extend(new.atoms.into_iter().map(|r| (r.term_id, r)));
            t.triple
                .extend(new.triples.into_iter().map(|r| (r.term_id, r)));
            t.term.extend(new.terms.into_iter().map(|r| (r.id, r)));
            t.vault
                .extend(new.vaults.into_iter().map(|r| ((r.term_id, r.curve_id), r)));
            t.position.extend(
                new.positions
                    .into_iter()
                    .map(|r| ((r.account_id, r.term_id, r.curve_id), r)),
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A reorg at any fork block, recomputing only the keys the orphaned events touched,
        /// followed by a replacement branch (other events under some orphaned identities, and
        /// new ones) through the incremental path: the stored rows equal the reference fold of
        /// the remaining events and the replacements.
        #[test]
        fn a_reorg_then_a_replacement_branch_equals_the_reference_fold(
            specs in prop::collection::vec(tiny_event(), 2..50),
            replacements in prop::collection::vec(tiny_event(), 0..20),
            vault_types in prop::collection::vec(0u8..3, 70),
            fork in 0i64..8,
            workers in 1usize..5,
            batch in 1usize..25,
            capacity in prop_oneof![1usize..12, Just(1_000_000)],
        ) {
            let typed = |mut events: Vec<Event>, offset: usize| {
                for (i, e) in events.iter_mut().enumerate() {
                    let vt = match vault_types[(i + offset) % vault_types.len()] {
                        0 => crate::domain::VaultType::Atom,
                        1 => crate::domain::VaultType::Triple,
                        _ => crate::domain::VaultType::CounterTriple,
                    };
                    match &mut e.kind {
                        EventKind::Deposited { vault_type, .. }
                        | EventKind::Redeemed { vault_type, .. }
                        | EventKind::SharePriceChanged { vault_type, .. } => *vault_type = vt,
                        _ => {}
                    }
                }
                events
            };
            let history = typed(tiny_events(&specs), 0);
            // The replacement branch: at or after the fork, identities of the first events
            // (some orphaned, some not: those are duplicates or conflicts).
            let branch: Vec<Event> = typed(tiny_events(&replacements), 31)
                .into_iter()
                .map(|mut e| {
                    e.meta.block_number = fork + e.meta.block_number % 3;
                    e
                })
                .collect();

            let mut stored = Stored::default();
            let mut shards = Shards::new(workers, capacity).keep_changed();
            for chunk in history.chunks(batch) {
                let f = prepare(&mut shards, &stored, 0, chunk.to_vec());
                stored.commit(&f);
                shards.release(f.batch);
            }
            stored.reorg(fork);
            let remaining: Vec<Event> =
                history.iter().filter(|e| e.meta.block_number < fork).cloned().collect();
            let after_reorg = base(fold(&remaining).tables());
            prop_assert!(stored.tables == after_reorg, "after the reorg: {:?}", stored.tables.differing_tables(&after_reorg));

            // The pipeline restarts after a reorg: an empty cache.
            let mut shards = Shards::new(workers, capacity).keep_changed();
            for chunk in branch.chunks(batch) {
                let f = prepare(&mut shards, &stored, 0, chunk.to_vec());
                stored.commit(&f);
                shards.release(f.batch);
            }
            let all: Vec<Event> = remaining.iter().chain(&branch).cloned().collect();
            let expected = base(fold(first_accepted(&all)).tables());
            prop_assert!(stored.tables == expected, "after the branch: {:?}", stored.tables.differing_tables(&expected));
        }
    }

    #[test]
    fn a_conflicting_identity_in_another_shard_is_applied_once() {
        // Issue 12 fault 1: a Deposited and a SharePriceChanged of other terms under one identity
        // (so routed to different shards) were both applied.
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        let deposit = events
            .iter()
            .find(|e| matches!(e.kind, EventKind::Deposited { .. }))
            .expect("a deposit")
            .clone();
        let mut other = events
            .iter()
            .find(|e| match (&e.kind, &deposit.kind) {
                (
                    EventKind::SharePriceChanged { term_id, .. },
                    EventKind::Deposited { term_id: d, .. },
                ) => shard_of(term_id, 4) != shard_of(d, 4),
                _ => false,
            })
            .expect("a price change of a term in another shard")
            .clone();
        other.meta.transaction_hash = deposit.meta.transaction_hash;
        other.meta.log_index = deposit.meta.log_index;
        let mut shards = Shards::new(4, 1_000_000);
        let f = shards.fold(vec![deposit.clone(), other.clone()]);
        assert_eq!((f.new_events, f.conflicts), (1, 1));
        let tables: Vec<&str> = f.rows.iter().map(|r| r.table).collect();
        assert!(
            tables.contains(&"deposited_events") && !tables.contains(&"share_price_changed_events"),
            "{tables:?}"
        );
        assert_eq!(shards.base_tables(), base(fold([&deposit]).tables()));
        // In a later batch too, while the first is in flight.
        let again = shards.fold(vec![other.clone()]);
        assert_eq!((again.new_events, again.conflicts), (0, 1));
        assert!(again.rows.is_empty());
        // And once it has committed: the identity's stored event decides.
        shards.release(again.batch);
        let needs = shards.needs(std::slice::from_ref(&other));
        assert_eq!(needs.identities.len(), 1, "asked of the event log");
        shards.seed(vec![deposit], BaseRows::default());
        let late = shards.fold(vec![other]);
        assert_eq!((late.new_events, late.conflicts), (0, 1));
    }

    #[test]
    fn eviction_keeps_what_batches_in_flight_changed() {
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        let mut shards = Shards::new(2, 50);
        let first = shards.fold(events[..600].to_vec());
        let held = shards.cached_keys();
        assert!(held > 50);
        // Nothing committed: nothing may go.
        assert_eq!(shards.release(0), 0);
        assert_eq!(shards.cached_keys(), held);
        assert_eq!(shards.event_count(), 600);
        let evicted = shards.release(first.batch);
        assert!(
            evicted > 0 && shards.cached_keys() <= 50,
            "{}",
            shards.cached_keys()
        );
        assert_eq!(
            shards.event_count(),
            0,
            "committed identities are the event log's"
        );
    }

    /// Folds the recorded fixture through `workers` shards, in batches, and returns the base
    /// tables assembled from the shards' row sets.
    fn rows_by_table(workers: usize) -> Vec<(String, usize)> {
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        let mut shards = Shards::new(workers, 1_000_000);
        let mut counts = BTreeMap::<String, usize>::new();
        for batch in events.chunks(700) {
            let f = shards.fold(batch.to_vec());
            for r in f.rows {
                *counts.entry(r.table.to_owned()).or_default() += r.len();
            }
        }
        counts.into_iter().collect()
    }

    #[test]
    fn shards_hold_every_event_once() {
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        for workers in [1, 3, 4] {
            let mut shards = Shards::new(workers, 1_000_000);
            let f = shards.fold(events.clone());
            assert_eq!(
                (f.new_events, shards.event_count()),
                (events.len(), events.len())
            );
            let again = shards.fold(events.clone());
            assert_eq!((again.new_events, again.duplicates), (0, events.len()));
            assert!(
                again.rows.is_empty() && again.generic.is_empty() && again.changed_terms.is_empty()
            );
        }
    }

    #[test]
    fn any_worker_count_writes_the_same_number_of_rows() {
        assert_eq!(rows_by_table(1), rows_by_table(4));
    }

    #[test]
    fn sharded_term_rows_match_the_unsharded_fold() {
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        let whole = fold(&events).tables();
        let mut shards = Shards::new(3, 1_000_000);
        let f = shards.fold(events);
        let term_rows = f
            .rows
            .iter()
            .find(|r| r.table == "term")
            .map_or(0, RowSet::len);
        assert_eq!(
            term_rows,
            whole.term.len(),
            "each term row comes from exactly one shard"
        );
    }
}
