//! Property tests of the central claim (SPEC §2): the derived tables are a function of the event
//! set alone — any order, any duplication and any batching give the same rows. Built from domain
//! events alone (no decoder); the same claim over realistic generated histories, which go through
//! the JSON decoder, is tested in `fixture`.

use proptest::prelude::*;
use proptest::sample::Index;

use super::types::{counter_term_id, Address, Bytes32, Event, EventKind, EventMeta, VaultType};
use super::{fold, Changes, State, Tables};

/// Applies `events` in the order given by `order` (indexes, repeats allowed), refreshing the
/// analytics after every `batch` events, as the service does per batch.
pub(crate) fn apply_in_order(events: &[Event], order: &[usize], batch: usize) -> Tables {
    let mut state = State::new();
    let mut changes = Changes::default();
    for (n, &i) in order.iter().enumerate() {
        state.apply(&events[i], &mut changes);
        if (n + 1) % batch == 0 {
            state.refresh_analytics(&mut changes);
        }
    }
    state.refresh_analytics(&mut changes);
    state.tables()
}

/// A shuffled order with some events repeated: `dups` picks indexes to deliver twice.
pub(crate) fn shuffled_with_duplicates(n: usize, seed: &[Index], dups: &[Index]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.extend(dups.iter().map(|d| d.index(n)));
    let len = order.len();
    for (i, s) in seed.iter().enumerate().take(len) {
        order.swap(i % len, s.index(len));
    }
    order
}

/// Hand-rolled events over a tiny universe so that keys collide often: few terms (atoms, a
/// triple, its counter, a triple over the triple), two accounts, two curves; each with its own
/// identity. Times are sometimes absent.
pub(crate) fn tiny_event() -> impl Strategy<Value = (u8, u8, u8, u8, u16, u16, bool)> {
    (
        0u8..6,
        0u8..5,
        0u8..2,
        1u8..3,
        0u16..400,
        0u16..400,
        any::<bool>(),
    )
}

pub(crate) fn tiny_events(specs: &[(u8, u8, u8, u8, u16, u16, bool)]) -> Vec<Event> {
    let atom = |i: u8| Bytes32([0xa0 + i; 32]);
    let t1 = Bytes32([0x71; 32]);
    let t2 = Bytes32([0x72; 32]);
    let terms = [
        atom(0),
        atom(1),
        t1,
        counter_term_id(&t1),
        t2,
        counter_term_id(&t2),
    ];
    specs
        .iter()
        .enumerate()
        .map(|(n, &(kind, term, who, curve, a, b, timed))| {
            let term_id = terms[term as usize];
            let account = Address([0x10 + who; 20]);
            let curve_id = u64::from(curve).into();
            let vault_type = match term {
                0 | 1 => VaultType::Atom,
                2 | 4 => VaultType::Triple,
                _ => VaultType::CounterTriple,
            };
            let kind = match kind {
                0 => EventKind::AtomCreated {
                    creator: account,
                    term_id: atom(term % 2),
                    atom_data: vec![a as u8, b as u8],
                    atom_wallet: account,
                },
                1 => EventKind::TripleCreated {
                    creator: account,
                    term_id: if term % 2 == 0 { t1 } else { t2 },
                    subject_id: if term % 2 == 0 { atom(0) } else { t1 },
                    predicate_id: atom(1),
                    object_id: atom(0),
                },
                2 => EventKind::SharePriceChanged {
                    term_id,
                    curve_id,
                    share_price: (u64::from(a) * 10_000_000_000_000_000).into(),
                    total_assets: a.into(),
                    total_shares: b.into(),
                    vault_type,
                },
                3 | 4 => EventKind::Deposited {
                    sender: account,
                    receiver: account,
                    term_id,
                    curve_id,
                    assets: a.into(),
                    assets_after_fees: a.into(),
                    shares: b.into(),
                    total_shares: b.into(),
                    vault_type,
                },
                _ => EventKind::Redeemed {
                    sender: account,
                    receiver: account,
                    term_id,
                    curve_id,
                    shares: a.into(),
                    total_shares: (b % 3).into(),
                    assets: a.into(),
                    fees: 1.into(),
                    vault_type,
                },
            };
            Event {
                meta: EventMeta {
                    transaction_hash: Bytes32([n as u8; 32]),
                    log_index: n as i64,
                    // Few blocks, so many events share a block and order by log index.
                    block_number: i64::from(b % 7),
                    block_timestamp: timed.then_some(1_700_000_000 + i64::from(b % 7)),
                    block_hash: None,
                    transaction_index: None,
                    address: None,
                    network: None,
                    chain_id: None,
                },
                kind,
            }
        })
        .collect()
}

/// `events` followed by conflicting deliveries: for each `(i, j)`, event `j`'s content under
/// event `i`'s identity (another event type or another term, mostly), so a second delivery of an
/// identity is not the same event.
pub(crate) fn with_conflicts(events: &[Event], pairs: &[(Index, Index)]) -> Vec<Event> {
    let mut out = events.to_vec();
    for (i, j) in pairs {
        let (i, j) = (i.index(events.len()), j.index(events.len()));
        let mut reused = events[j].clone();
        reused.meta.transaction_hash = events[i].meta.transaction_hash;
        reused.meta.log_index = events[i].meta.log_index;
        out.push(reused);
    }
    out
}

/// The first delivery of each identity, in delivery order: what the tables are the fold of.
pub(crate) fn first_accepted(delivered: &[Event]) -> Vec<&Event> {
    let mut first = std::collections::HashSet::new();
    delivered
        .iter()
        .filter(|e| first.insert((e.meta.transaction_hash, e.meta.log_index)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn colliding_keys_any_order_any_duplication(
        specs in prop::collection::vec(tiny_event(), 1..60),
        shuffle in prop::collection::vec(any::<Index>(), 120),
        dups in prop::collection::vec(any::<Index>(), 0..30),
        batch in 1usize..20,
    ) {
        let events = tiny_events(&specs);
        let expected = fold(&events).tables();
        let order = shuffled_with_duplicates(events.len(), &shuffle, &dups);
        let got = apply_in_order(&events, &order, batch);
        prop_assert!(got == expected, "tables differ: {:?}", got.differing_tables(&expected));
    }

    #[test]
    fn conflicting_identities_keep_the_first_delivery(
        specs in prop::collection::vec(tiny_event(), 2..40),
        pairs in prop::collection::vec((any::<Index>(), any::<Index>()), 1..10),
        shuffle in prop::collection::vec(any::<Index>(), 100),
        batch in 1usize..20,
    ) {
        // Whatever the order, the tables are the fold of the deliveries first accepted.
        let all = with_conflicts(&tiny_events(&specs), &pairs);
        let order = shuffled_with_duplicates(all.len(), &shuffle, &[]);
        let delivered: Vec<Event> = order.iter().map(|&i| all[i].clone()).collect();
        let expected = fold(first_accepted(&delivered)).tables();
        let identity: Vec<usize> = (0..delivered.len()).collect();
        let got = apply_in_order(&delivered, &identity, batch);
        prop_assert!(got == expected, "tables differ: {:?}", got.differing_tables(&expected));
    }
}
