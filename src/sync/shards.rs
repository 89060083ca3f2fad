//! The fold, sharded by term across `WORKERS` threads.
//!
//! Base rows of a term (its position, vault and term rows) depend only on events of that term, so
//! each shard owns a slice of the term space and folds its events alone, without locks. The one
//! cross-term effect, TripleCreated naming a counter term, is sent to the counter term's shard as
//! a link. Any `WORKERS` value gives the same rows: the shards partition the keys.
//!
//! Identities are checked once, for the whole batch, before the work is split: [`Shards`] keeps
//! the one [`Seen`] of the fold, so a second delivery of an identity is a duplicate or a conflict
//! whichever shard its term would route it to.

use std::thread;

use crate::domain::identity::Seen;
use crate::domain::state::shard_of;
use crate::domain::types::counter_term_id;
use crate::domain::{Applied, Changes, Event, EventKind, State};
use crate::store::rows::{base_rows, event_rows};
use crate::store::rowset::RowSet;

/// The rows one batch writes, and what it did.
#[derive(Debug, Default)]
pub struct Folded {
    /// Event log rows of the new core events, then the changed base rows, merged across shards.
    pub rows: Vec<RowSet>,
    /// The new generic events (their rows are written apart: see `store::BatchWrite`).
    pub generic: Vec<Event>,
    /// Ids of terms whose term or vault rows changed.
    pub changed_terms: Vec<String>,
    pub new_events: usize,
    /// New events per event name, for the metrics.
    pub new_by_type: Vec<(String, u64)>,
    pub duplicates: usize,
    pub conflicts: usize,
}

#[derive(Debug)]
pub struct Shards {
    /// Every identity of the fold, checked before events are routed to their shard.
    seen: Seen,
    states: Vec<State>,
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
    pub fn new(workers: usize) -> Self {
        let n = workers.max(1) as u64;
        Self {
            seen: Seen::default(),
            states: (0..n).map(|i| State::shard(i, n)).collect(),
        }
    }

    /// Number of distinct events held.
    pub fn event_count(&self) -> usize {
        self.seen.len()
    }

    /// The base tables (atom, triple, position, vault, term) the shards hold together.
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
    pub fn forget(&mut self, transaction_hash: &crate::domain::types::TxHash, log_index: i64) {
        self.seen.forget(transaction_hash, log_index);
    }

    /// Applies `events` (any order) and returns the rows to write.
    pub fn fold(&mut self, events: Vec<Event>) -> Folded {
        let n = self.states.len() as u64;
        let mut per_shard: Vec<Vec<Work>> = (0..n).map(|_| Vec::new()).collect();
        let (mut duplicates, mut conflicts) = (0, 0);
        for event in events {
            match self.seen.admit(&event) {
                Applied::New => {}
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
        let results: Vec<Folded> = if self.states.len() == 1 {
            vec![fold_shard(
                &mut self.states[0],
                per_shard.pop().unwrap_or_default(),
            )]
        } else {
            thread::scope(|scope| {
                let handles: Vec<_> = self
                    .states
                    .iter_mut()
                    .zip(per_shard)
                    .map(|(state, work)| scope.spawn(move || fold_shard(state, work)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let mut folded = merge(results);
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

fn fold_shard(state: &mut State, work: Vec<Work>) -> Folded {
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
    let new_by_type = count_by_name(&new);
    let new_events = new.len();
    let (generic, core): (Vec<Event>, Vec<Event>) = new
        .into_iter()
        .partition(|e| matches!(e.kind, EventKind::Generic { .. }));
    let mut rows = event_rows(&core);
    rows.extend(base_rows(state, &changes));
    Folded {
        rows,
        generic,
        changed_terms: changes.terms.iter().map(|t| t.to_string()).collect(),
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
        out.generic.extend(r.generic);
        for rows in r.rows {
            match out.rows.iter_mut().find(|x| x.table == rows.table) {
                Some(existing) => existing.append(rows),
                None => out.rows.push(rows),
            }
        }
    }
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

const TABLE_ORDER: [&str; 11] = [
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
    "atom",
    "triple",
    "position",
    "vault",
    "term",
];

#[cfg(test)]
mod tests {
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// The live path: the sharded fold, any worker count, any batch cut, over shuffled,
        /// duplicated and identity-conflicting deliveries, equals the reference fold of the
        /// deliveries first accepted.
        #[test]
        fn sharded_fold_equals_the_reference_fold(
            specs in prop::collection::vec(tiny_event(), 2..50),
            pairs in prop::collection::vec((any::<Index>(), any::<Index>()), 0..12),
            shuffle in prop::collection::vec(any::<Index>(), 120),
            dups in prop::collection::vec(any::<Index>(), 0..20),
            workers in 1usize..6,
            batch in 1usize..25,
        ) {
            let all = with_conflicts(&tiny_events(&specs), &pairs);
            let order = shuffled_with_duplicates(all.len(), &shuffle, &dups);
            let delivered: Vec<Event> = order.iter().map(|&i| all[i].clone()).collect();
            let accepted = first_accepted(&delivered);
            let expected = base(fold(accepted.iter().copied()).tables());
            let mut shards = Shards::new(workers);
            let (mut new, mut repeated) = (0, 0);
            for chunk in delivered.chunks(batch) {
                let f = shards.fold(chunk.to_vec());
                new += f.new_events;
                repeated += f.duplicates + f.conflicts;
                // The event log gets one row per identity: the new events of the batch.
                let logged: usize = f.rows.iter().filter(|r| r.table.ends_with("_events")).map(RowSet::len).sum();
                prop_assert_eq!(logged + f.generic.len(), f.new_events);
            }
            prop_assert_eq!(new, accepted.len());
            prop_assert_eq!(new + repeated, delivered.len());
            let got = shards.base_tables();
            prop_assert!(got == expected, "tables differ: {:?}", got.differing_tables(&expected));
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
        let mut shards = Shards::new(4);
        let f = shards.fold(vec![deposit.clone(), other.clone()]);
        assert_eq!((f.new_events, f.conflicts), (1, 1));
        let tables: Vec<&str> = f.rows.iter().map(|r| r.table).collect();
        assert!(
            tables.contains(&"deposited_events") && !tables.contains(&"share_price_changed_events"),
            "{tables:?}"
        );
        assert_eq!(shards.base_tables(), base(fold([&deposit]).tables()));
        // In a later batch too.
        let again = shards.fold(vec![other]);
        assert_eq!((again.new_events, again.conflicts), (0, 1));
        assert!(again.rows.is_empty());
    }

    /// Folds the recorded fixture through `workers` shards, in batches, and returns the base
    /// tables assembled from the shards' row sets.
    fn rows_by_table(workers: usize) -> Vec<(String, usize)> {
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        let mut shards = Shards::new(workers);
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
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
            let mut shards = Shards::new(workers);
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
        let mut shards = Shards::new(3);
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
