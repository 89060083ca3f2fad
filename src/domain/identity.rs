//! Event identity (SPEC §1): `(transaction_hash, log_index)`. [`Seen`] admits each identity once:
//! the first delivery is [`Applied::New`], a later one with the same content a
//! [`Applied::Duplicate`], a later one with other content (another term, another event type) a
//! [`Applied::Conflict`] — the first accepted stays.
//!
//! **Architecture Invariant:** one `Seen` decides for a whole fold. The sharded fold of the
//! `sync` service checks every identity against it *before* it splits events by term, so two
//! deliveries of one identity that would land in different shards are still one event, whatever
//! `WORKERS` is and wherever batches are cut.

use std::collections::HashMap;
use std::hash::BuildHasher;

use super::types::{Event, TxHash};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What admitting (or applying) an event did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Applied {
    /// A new identity: the event is part of the state now.
    New,
    /// The same identity with the same content was applied before: nothing changed.
    Duplicate,
    /// The same identity with different content was applied before: the first stays.
    Conflict,
}

/// Identity → content fingerprint of every event admitted, grouped by transaction: the events of
/// one transaction arrive together, so one probe of the map serves them all, and the map holds
/// one entry per transaction rather than per event.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    by_tx: Map<TxHash, Logs>,
    len: usize,
    conflicts: u64,
}

impl Seen {
    /// Admits `event`'s identity if it is new; otherwise says whether this delivery repeats the
    /// first one or conflicts with it (and counts the conflict).
    pub fn admit(&mut self, event: &Event) -> Applied {
        let fingerprint = fingerprint(event);
        let logs = self.by_tx.entry(event.meta.transaction_hash).or_default();
        match logs.insert(event.meta.log_index, fingerprint) {
            None => {
                self.len += 1;
                Applied::New
            }
            Some(first) if first == fingerprint => Applied::Duplicate,
            Some(_) => {
                self.conflicts += 1;
                Applied::Conflict
            }
        }
    }

    /// Whether the identity was admitted (and not forgotten since).
    pub fn contains(&self, transaction_hash: &TxHash, log_index: i64) -> bool {
        self.by_tx
            .get(transaction_hash)
            .is_some_and(|logs| match logs {
                Logs::Few(list) => list.iter().any(|(i, _)| *i == log_index),
                Logs::Many(map) => map.contains_key(&log_index),
            })
    }

    /// Forgets an identity admitted before (its event was refused by the store, so a later
    /// delivery must be new again).
    pub fn forget(&mut self, transaction_hash: &TxHash, log_index: i64) {
        let Some(logs) = self.by_tx.get_mut(transaction_hash) else {
            return;
        };
        if logs.remove(log_index) {
            self.len -= 1;
            if logs.is_empty() {
                self.by_tx.remove(transaction_hash);
            }
        }
    }

    /// Number of identities admitted.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of conflicting deliveries seen.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }
}

/// The log indexes seen in one transaction, with their content fingerprints. A transaction emits a
/// handful of logs, searched linearly; one with very many (only hostile input) moves to a map so
/// a flood of logs under one transaction hash cannot make the fold quadratic.
#[derive(Clone, Debug)]
enum Logs {
    Few(Vec<(i64, u64)>),
    Many(Map<i64, u64>),
}

impl Default for Logs {
    fn default() -> Self {
        Logs::Few(Vec::new())
    }
}

/// Log indexes under one transaction hash kept in a list; more move to a map.
pub(crate) const FEW_LOGS: usize = 32;

impl Logs {
    const FEW: usize = FEW_LOGS;

    /// Removes `log_index`; whether it was there.
    fn remove(&mut self, log_index: i64) -> bool {
        match self {
            Logs::Few(list) => {
                let before = list.len();
                list.retain(|(i, _)| *i != log_index);
                list.len() != before
            }
            Logs::Many(map) => map.remove(&log_index).is_some(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Logs::Few(list) => list.is_empty(),
            Logs::Many(map) => map.is_empty(),
        }
    }

    /// Records `log_index` with `fingerprint` unless it is there; returns the fingerprint
    /// recorded first when it was.
    fn insert(&mut self, log_index: i64, fingerprint: u64) -> Option<u64> {
        match self {
            Logs::Few(list) => {
                if let Some(&(_, first)) = list.iter().find(|(i, _)| *i == log_index) {
                    return Some(first);
                }
                if list.len() < Self::FEW {
                    list.push((log_index, fingerprint));
                } else {
                    let mut map: Map<i64, u64> = list.drain(..).collect();
                    map.insert(log_index, fingerprint);
                    *self = Logs::Many(map);
                }
                None
            }
            Logs::Many(map) => match map.entry(log_index) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(fingerprint);
                    None
                }
            },
        }
    }
}

/// A content fingerprint of an event, for telling a redelivery from a conflicting reuse of an
/// identity. Fixed seed: the same event always has the same fingerprint.
fn fingerprint(event: &Event) -> u64 {
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::types::{Bytes32, EventKind, EventMeta};

    fn event(log_index: i64, name: &str) -> Event {
        Event {
            meta: EventMeta {
                transaction_hash: Bytes32([7; 32]),
                log_index,
                block_number: 1,
                block_timestamp: None,
                block_hash: None,
                transaction_index: None,
                address: None,
                network: None,
                chain_id: None,
            },
            kind: EventKind::Generic {
                event_name: name.to_owned(),
                payload: "{}".to_owned(),
            },
        }
    }

    #[test]
    fn first_delivery_is_new_repeat_duplicate_other_content_conflict() {
        let mut seen = Seen::default();
        assert_eq!(seen.admit(&event(1, "A")), Applied::New);
        assert_eq!(seen.admit(&event(1, "A")), Applied::Duplicate);
        assert_eq!(seen.admit(&event(1, "B")), Applied::Conflict);
        assert_eq!(seen.admit(&event(2, "B")), Applied::New);
        assert_eq!((seen.len(), seen.conflicts()), (2, 1));
    }

    #[test]
    fn a_forgotten_identity_is_new_again() {
        let mut seen = Seen::default();
        for log in 0..(FEW_LOGS as i64 + 5) {
            seen.admit(&event(log, "A"));
        }
        seen.forget(&Bytes32([7; 32]), 3);
        seen.forget(&Bytes32([7; 32]), 3);
        seen.forget(&Bytes32([9; 32]), 3);
        assert_eq!(seen.len(), FEW_LOGS + 4);
        assert_eq!(seen.admit(&event(3, "B")), Applied::New);
        let mut one = Seen::default();
        one.admit(&event(0, "A"));
        one.forget(&Bytes32([7; 32]), 0);
        assert!(one.is_empty());
        assert_eq!(one.admit(&event(0, "B")), Applied::New);
    }
}
