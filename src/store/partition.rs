//! The fold of the whole event log by key range, in bounded memory: what `replay` (and a reorg's
//! rebuild) writes and what `verify` compares with, equal to [`crate::domain::fold`] of every
//! event, row for row.
//!
//! **Ranges.** Term ids are keccak hashes, so their first two bytes are uniform: [`Ranges`] cuts
//! that 16-bit prefix into `count` contiguous ranges: integer bounds on the event tables' key
//! prefix ([`load::event_range_condition`](super::load::event_range_condition)) and text bounds
//! on a derived table's id (`'0x' + 64 lowercase hex`, so byte order is the order of the bounds;
//! see [`load::KeyFilter`](super::load::KeyFilter) for the collation). [`Ranges::for_events`] picks
//! the count from the size of the event log ([`EVENTS_PER_RANGE`] events a range on average:
//! one hot term cannot be split, so a range can hold more).
//!
//! **Base tables** (atom, triple, position, vault, term). A term's rows depend only on the events
//! naming it, plus the TripleCreated of the triple whose counter term it is (that makes it a
//! CounterTriple). For range `i` the engine reads the events whose term is in the range
//! ([`Backend::range_events`]), folds them with [`State::base_only`], marks the counter terms of
//! the range with [`State::link_counter`] (their triples come from [`counter_links`], one read
//! of every triple id before the first range), and keeps the rows whose term is in the range (a
//! TripleCreated of the range also names its counter term, which may live in another range).
//! Generic events touch no derived table. The event log holds one row per identity, so the
//! identities of one range never meet those of another and no whole-history identity set is kept.
//!
//! **Triple-level tables.** A triple's triple_vault and triple_term rows need the vault figures
//! of its pro term (in its range) and of its counter term (usually in another): the engine reads
//! the vault events of those counter terms ([`Backend::vault_events`]: SharePriceChanged,
//! Deposited, Redeemed — all a vault's figures depend on) and folds them apart, then computes the
//! rows with the fold's own primitives ([`analytics::triple_vault_rows`],
//! [`analytics::triple_term_row`]). Each triple is added to its predicate_object and
//! subject_predicate [`PairAggregate`] (exact 512-bit market-cap sums, saturated when shown);
//! those aggregates are the only state kept across ranges (one per pair: at most one per triple),
//! and their rows are handed over after the last range. Figures come from the fold of events,
//! never from stored rows, so `verify` and `replay` share this one path.
//!
//! Memory: one range's events and rows, the counter terms' vault events of its triples, the
//! triple ids (32 bytes each) and the pair aggregates.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use anyhow::{bail, Context};
use diesel_async::AsyncPgConnection;
use primitive_types::U256;

use super::load;
use super::rebuild::{cpu_bound, Progress, Step};
use crate::domain::analytics::{self, PairAggregate, VaultFigures};
use crate::domain::rows::{PairKey, TripleRow, VaultKey, VaultRow};
use crate::domain::types::counter_term_id;
use crate::domain::{Bytes32, Changes, Event, EventKind, State, Tables, TermId};

/// Average events of one range when the engine picks the count itself.
pub const EVENTS_PER_RANGE: u64 = 200_000;

/// The size of the key space ranges cut: the first two bytes of a term id.
const KEY_SPACE: u32 = 1 << 16;

/// A partition of the term ids into `count` contiguous ranges of their first two bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    count: u32,
}

impl Ranges {
    /// `count` ranges, 1 to 65,536.
    pub fn new(count: u32) -> anyhow::Result<Self> {
        if count == 0 || count > KEY_SPACE {
            bail!("the number of key ranges must be 1 to {KEY_SPACE}, not {count}");
        }
        Ok(Self { count })
    }

    /// Enough ranges for `events` events of the derived tables' event types to average at most
    /// [`EVENTS_PER_RANGE`] a range.
    pub fn for_events(events: u64) -> Self {
        let count = events
            .div_ceil(EVENTS_PER_RANGE)
            .clamp(1, u64::from(KEY_SPACE));
        Self {
            count: count as u32,
        }
    }

    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// The range of `term`.
    pub fn of(&self, term: &TermId) -> usize {
        let prefix = u64::from(u16::from_be_bytes([term.0[0], term.0[1]]));
        (prefix * u64::from(self.count) / u64::from(KEY_SPACE)) as usize
    }

    pub fn contains(&self, range: usize, term: &TermId) -> bool {
        self.of(term) == range
    }

    /// The first prefix of range `range` (`KEY_SPACE` past the last one).
    fn start(&self, range: usize) -> u32 {
        let n = u64::from(self.count);
        ((range as u64 * u64::from(KEY_SPACE)).div_ceil(n)) as u32
    }

    /// The smallest term id of range `range` (below [`count`](Self::count)).
    pub fn first_id(&self, range: usize) -> TermId {
        let mut id = [0u8; 32];
        let prefix = self.start(range).min(KEY_SPACE - 1) as u16;
        id[..2].copy_from_slice(&prefix.to_be_bytes());
        Bytes32(id)
    }

    /// Range `range` as bounds on the first two bytes of a term id: `lo <= prefix < hi`, `None`
    /// for no bound (the first range has no lower one, the last no upper one).
    pub fn prefixes(&self, range: usize) -> (Option<u32>, Option<u32>) {
        let lo = (range > 0).then(|| self.start(range));
        let hi = (range + 1 < self.count()).then(|| self.start(range + 1));
        (lo, hi)
    }

    /// Range `range` as text bounds on a term id: `lo <= id < hi`, `None` for no bound (the
    /// first range has no lower one, the last no upper one).
    pub fn bounds(&self, range: usize) -> (Option<String>, Option<String>) {
        let text = |prefix: u32| format!("0x{prefix:04x}");
        let (lo, hi) = self.prefixes(range);
        (lo.map(text), hi.map(text))
    }
}

/// The term an event of the derived tables' types names (`None` for a generic event).
pub fn term_of(event: &Event) -> Option<&TermId> {
    match &event.kind {
        EventKind::AtomCreated { term_id, .. }
        | EventKind::TripleCreated { term_id, .. }
        | EventKind::Deposited { term_id, .. }
        | EventKind::Redeemed { term_id, .. }
        | EventKind::SharePriceChanged { term_id, .. } => Some(term_id),
        EventKind::Generic { .. } => None,
    }
}

/// Whether an event decides vault figures (SharePriceChanged, Deposited, Redeemed).
pub fn is_vault_event(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::SharePriceChanged { .. }
            | EventKind::Deposited { .. }
            | EventKind::Redeemed { .. }
    )
}

/// Where the engine reads the event log and what it does with the rows of each range: the
/// `replay` writer, the `verify` comparer (both over one PostgreSQL transaction), or a test's
/// in-memory log.
pub trait Backend: Send {
    /// The term id of every TripleCreated (repeats allowed).
    fn triple_ids(&mut self) -> impl Future<Output = anyhow::Result<Vec<TermId>>> + Send;

    /// How many events the log holds that touch no derived table (generic events).
    fn other_events(&mut self) -> impl Future<Output = anyhow::Result<usize>> + Send;

    /// The events of the derived tables' types whose term ([`term_of`]) is in range `range`.
    fn range_events(
        &mut self,
        ranges: Ranges,
        range: usize,
    ) -> impl Future<Output = anyhow::Result<Vec<Event>>> + Send;

    /// The vault events ([`is_vault_event`]) of `terms` (sorted, distinct).
    fn vault_events(
        &mut self,
        terms: &[TermId],
    ) -> impl Future<Output = anyhow::Result<Vec<Event>>> + Send;

    /// The rows of range `range`: its base rows and, when the engine computes them, the
    /// triple_vault and triple_term rows of its triples (pair tables empty).
    fn range_rows(
        &mut self,
        ranges: Ranges,
        range: usize,
        rows: Tables,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The predicate_object and subject_predicate rows (every other table empty), after the last
    /// range.
    fn pair_rows(
        &mut self,
        ranges: Ranges,
        rows: Tables,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What `replay` (insert) or `verify` (compare) does with the rows the engine folded, on the
/// connection of the transaction the event log is read in.
pub trait Sink: Send {
    /// See [`Backend::range_rows`].
    fn range_rows(
        &mut self,
        conn: &mut AsyncPgConnection,
        ranges: Ranges,
        range: usize,
        rows: Tables,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// See [`Backend::pair_rows`].
    fn pair_rows(
        &mut self,
        conn: &mut AsyncPgConnection,
        ranges: Ranges,
        rows: Tables,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The [`Backend`] over a PostgreSQL transaction: reads its event log (`store::load`, by key
/// range) and hands the rows to `sink`.
pub struct Stored<'c, S> {
    pub conn: &'c mut AsyncPgConnection,
    /// Generic events in the log (counted once, in the transaction).
    pub generic: u64,
    pub sink: S,
}

impl<S> std::fmt::Debug for Stored<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("generic", &self.generic)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Backend for Stored<'_, S> {
    async fn triple_ids(&mut self) -> anyhow::Result<Vec<TermId>> {
        load::load_triple_ids(self.conn).await
    }

    async fn other_events(&mut self) -> anyhow::Result<usize> {
        usize::try_from(self.generic).context("counting generic events")
    }

    async fn range_events(&mut self, ranges: Ranges, range: usize) -> anyhow::Result<Vec<Event>> {
        load::load_range_events(self.conn, ranges, range).await
    }

    async fn vault_events(&mut self, terms: &[TermId]) -> anyhow::Result<Vec<Event>> {
        load::load_vault_events(self.conn, terms).await
    }

    async fn range_rows(
        &mut self,
        ranges: Ranges,
        range: usize,
        rows: Tables,
    ) -> anyhow::Result<()> {
        self.sink.range_rows(self.conn, ranges, range, rows).await
    }

    async fn pair_rows(&mut self, ranges: Ranges, rows: Tables) -> anyhow::Result<()> {
        self.sink.pair_rows(self.conn, ranges, rows).await
    }
}

/// What to fold.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub ranges: Ranges,
    /// Whether to compute the four triple-level tables (verify leaves them out when it compares
    /// only base tables).
    pub analytics: bool,
}

/// What the engine folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded {
    /// Distinct events in the event log.
    pub events: usize,
    /// Rows of the fold per derived table, in SPEC order.
    pub rows: Vec<(&'static str, usize)>,
}

/// Folds the event log range by range, handing each range's rows to `backend`, then the pair
/// rows (see the module docs).
pub async fn run<B: Backend>(
    backend: &mut B,
    plan: Plan,
    progress: Progress<'_>,
) -> anyhow::Result<Folded> {
    let ranges = plan.ranges;
    let total = ranges.count();
    let links = counter_links(ranges, backend.triple_ids().await?);
    let mut events = backend.other_events().await?;
    let mut counts = Tables::default().row_counts();
    let mut pairs = Pairs::default();
    progress(Step::Range {
        done: 0,
        total,
        events,
    });
    for (range, links) in links.iter().enumerate() {
        let (n, rows) = fold_one(backend, plan, range, links, &mut pairs).await?;
        events += n;
        add_counts(&mut counts, &rows);
        backend.range_rows(ranges, range, rows).await?;
        progress(Step::Range {
            done: range + 1,
            total,
            events,
        });
    }
    if plan.analytics {
        let rows = pairs.into_tables();
        add_counts(&mut counts, &rows);
        progress(Step::Pairs {
            rows: rows.predicate_object.len() + rows.subject_predicate.len(),
        });
        backend.pair_rows(ranges, rows).await?;
    }
    Ok(Folded {
        events,
        rows: counts.to_vec(),
    })
}

/// Range `range`: the number of its events and its rows (base, and triple-level when planned),
/// its triples counted into `pairs`.
async fn fold_one<B: Backend>(
    backend: &mut B,
    plan: Plan,
    range: usize,
    links: &[TermId],
    pairs: &mut Pairs,
) -> anyhow::Result<(usize, Tables)> {
    let ranges = plan.ranges;
    let own = backend.range_events(ranges, range).await?;
    let mut rows = cpu_bound(|| fold_range(ranges, range, &own, links))?;
    let events = own.len();
    drop(own);
    if plan.analytics {
        let counters = outside_counters(ranges, range, &rows);
        let counter_events = backend.vault_events(&counters).await?;
        cpu_bound(|| {
            let figures = counter_figures(&counter_events);
            add_triple_analytics(ranges, range, &mut rows, &figures, pairs);
        });
    }
    Ok((events, rows))
}

fn add_counts(counts: &mut [(&'static str, usize); 9], rows: &Tables) {
    for (c, (_, n)) in counts.iter_mut().zip(rows.row_counts()) {
        c.1 += n;
    }
}

/// For each range, the triples whose counter term is in it (sorted, distinct): what marks its
/// counter terms as such.
pub fn counter_links(ranges: Ranges, mut triples: Vec<TermId>) -> Vec<Vec<TermId>> {
    triples.sort_unstable();
    triples.dedup();
    let mut links = vec![Vec::new(); ranges.count()];
    for pro in triples {
        links[ranges.of(&counter_term_id(&pro))].push(pro);
    }
    links
}

/// An event outside the range it was read for: the store's range filter and [`Ranges::of`]
/// disagree (term ids not in lowercase hex, or a collation that does not order them bytewise).
#[derive(Debug, thiserror::Error)]
#[error(
    "event {tx}:{log} names term {term}, which is in key range {actual}, but was read for key \
     range {expected} of {count}: the database does not order term ids as lowercase hex bytes"
)]
pub struct OutOfRange {
    tx: String,
    log: i64,
    term: String,
    actual: usize,
    expected: usize,
    count: usize,
}

/// The base rows of range `range`: the fold of `events` (the range's events) with the counter
/// terms of `links` marked, keeping only rows whose term is in the range.
pub fn fold_range(
    ranges: Ranges,
    range: usize,
    events: &[Event],
    links: &[TermId],
) -> Result<Tables, OutOfRange> {
    let mut state = State::base_only();
    let mut changes = Changes::default();
    for (n, e) in events.iter().enumerate() {
        if let Some(term) = term_of(e).filter(|t| !ranges.contains(range, t)) {
            return Err(OutOfRange {
                tx: e.meta.transaction_hash.to_string(),
                log: e.meta.log_index,
                term: term.to_string(),
                actual: ranges.of(term),
                expected: range,
                count: ranges.count(),
            });
        }
        state.apply(e, &mut changes);
        if n % 10_000 == 0 {
            // Nobody reads the changed keys of a whole fold: keep memory flat.
            changes.clear();
        }
    }
    for pro in links {
        state.link_counter(*pro, counter_term_id(pro), &mut changes);
    }
    let mut rows = state.tables();
    let keep = |t: &TermId| ranges.contains(range, t);
    rows.atom.retain(|t, _| keep(t));
    rows.triple.retain(|t, _| keep(t));
    rows.position.retain(|k, _| keep(&k.1));
    rows.vault.retain(|k, _| keep(&k.0));
    rows.term.retain(|t, _| keep(t));
    Ok(rows)
}

/// The counter terms of the range's triples that lie in other ranges (sorted, distinct).
pub fn outside_counters(ranges: Ranges, range: usize, rows: &Tables) -> Vec<TermId> {
    let mut out: Vec<TermId> = rows
        .triple
        .values()
        .map(|t| t.counter_term_id)
        .filter(|c| !ranges.contains(range, c))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The vault rows the vault events of some terms fold to.
pub fn counter_figures(events: &[Event]) -> BTreeMap<VaultKey, VaultRow> {
    let mut state = State::base_only();
    let mut changes = Changes::default();
    for e in events.iter().filter(|e| is_vault_event(e)) {
        state.apply(e, &mut changes);
    }
    state.tables().vault
}

/// `(curve, figures)` of every vault of `term` in `vaults`.
fn figures_of(vaults: &BTreeMap<VaultKey, VaultRow>, term: TermId) -> Vec<(U256, VaultFigures)> {
    vaults
        .range((term, U256::zero())..=(term, U256::MAX))
        .map(|(_, v)| {
            (
                v.curve_id,
                VaultFigures {
                    total_shares: v.total_shares,
                    total_assets: v.total_assets,
                    market_cap: v.market_cap,
                    position_count: v.position_count,
                },
            )
        })
        .collect()
}

/// Adds the triple_vault and triple_term rows of the range's triples to `rows` (whose vault rows
/// are the range's; `counters` holds the vaults of counter terms outside the range), and counts
/// each triple into its pairs.
pub fn add_triple_analytics(
    ranges: Ranges,
    range: usize,
    rows: &mut Tables,
    counters: &BTreeMap<VaultKey, VaultRow>,
    pairs: &mut Pairs,
) {
    let Tables {
        triple,
        vault,
        triple_vault,
        triple_term,
        ..
    } = rows;
    for t in triple.values() {
        let counter_vaults = if ranges.contains(range, &t.counter_term_id) {
            &*vault
        } else {
            counters
        };
        let tv = analytics::triple_vault_rows(
            t.term_id,
            t.counter_term_id,
            &figures_of(vault, t.term_id),
            &figures_of(counter_vaults, t.counter_term_id),
        );
        let tt = analytics::triple_term_row(t.term_id, t.counter_term_id, &tv);
        pairs.add(t, &tt);
        triple_vault.extend(tv.into_iter().map(|r| ((r.term_id, r.curve_id), r)));
        triple_term.insert(t.term_id, tt);
    }
}

/// The pair rows of `rows` cut by the range of the first id of their key (predicate_object by
/// predicate, subject_predicate by subject), one [`Tables`] per range, in range order.
pub fn pairs_by_range(ranges: Ranges, rows: Tables) -> Vec<Tables> {
    let Tables {
        mut predicate_object,
        mut subject_predicate,
        ..
    } = rows;
    let mut out = Vec::with_capacity(ranges.count());
    for range in 1..ranges.count() {
        let first = (ranges.first_id(range), Bytes32([0; 32]));
        let po = predicate_object.split_off(&first);
        let sp = subject_predicate.split_off(&first);
        out.push(Tables {
            predicate_object: std::mem::replace(&mut predicate_object, po),
            subject_predicate: std::mem::replace(&mut subject_predicate, sp),
            ..Tables::default()
        });
    }
    out.push(Tables {
        predicate_object,
        subject_predicate,
        ..Tables::default()
    });
    out
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The predicate_object and subject_predicate aggregates of the triples seen so far.
#[derive(Debug, Default)]
pub struct Pairs {
    predicate_object: Map<PairKey, PairAggregate>,
    subject_predicate: Map<PairKey, PairAggregate>,
}

impl Pairs {
    /// Counts triple `t`, whose triple_term row is `tt`, into its two pairs.
    pub fn add(&mut self, t: &TripleRow, tt: &crate::domain::rows::TripleTermRow) {
        self.predicate_object
            .entry((t.predicate_id, t.object_id))
            .or_default()
            .add(tt);
        self.subject_predicate
            .entry((t.subject_id, t.predicate_id))
            .or_default()
            .add(tt);
    }

    /// The pair rows, in key order (every other table empty).
    pub fn into_tables(self) -> Tables {
        let rows = |m: Map<PairKey, PairAggregate>| {
            m.into_iter()
                .filter_map(|(k, a)| a.row(k).map(|r| (k, r)))
                .collect()
        };
        Tables {
            predicate_object: rows(self.predicate_object),
            subject_predicate: rows(self.subject_predicate),
            ..Tables::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::fold;
    use crate::domain::properties::{tiny_event, tiny_events};
    use crate::fixture::read_events;

    /// An event log in memory: each identity once (the first delivery), as the store keeps it.
    /// Collects what the engine hands over into one [`Tables`], checking that every row of a
    /// range has its term in the range and no key comes twice.
    struct Memory {
        events: Vec<Event>,
        got: Tables,
        duplicate_keys: usize,
        ranges_seen: Vec<usize>,
    }

    impl Memory {
        fn new(delivered: &[Event]) -> Self {
            let mut seen = HashSet::new();
            Self {
                events: delivered
                    .iter()
                    .filter(|e| seen.insert(e.id()))
                    .cloned()
                    .collect(),
                got: Tables::default(),
                duplicate_keys: 0,
                ranges_seen: Vec::new(),
            }
        }

        fn merge<K: Ord, V>(
            &mut self,
            into: fn(&mut Tables) -> &mut BTreeMap<K, V>,
            from: BTreeMap<K, V>,
        ) {
            for (k, v) in from {
                if into(&mut self.got).insert(k, v).is_some() {
                    self.duplicate_keys += 1;
                }
            }
        }
    }

    impl Backend for Memory {
        async fn triple_ids(&mut self) -> anyhow::Result<Vec<TermId>> {
            Ok(self
                .events
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::TripleCreated { term_id, .. } => Some(*term_id),
                    _ => None,
                })
                .collect())
        }

        async fn other_events(&mut self) -> anyhow::Result<usize> {
            Ok(self.events.iter().filter(|e| term_of(e).is_none()).count())
        }

        async fn range_events(
            &mut self,
            ranges: Ranges,
            range: usize,
        ) -> anyhow::Result<Vec<Event>> {
            Ok(self
                .events
                .iter()
                .filter(|e| term_of(e).is_some_and(|t| ranges.contains(range, t)))
                .cloned()
                .collect())
        }

        async fn vault_events(&mut self, terms: &[TermId]) -> anyhow::Result<Vec<Event>> {
            Ok(self
                .events
                .iter()
                .filter(|e| {
                    is_vault_event(e) && term_of(e).is_some_and(|t| terms.binary_search(t).is_ok())
                })
                .cloned()
                .collect())
        }

        async fn range_rows(
            &mut self,
            ranges: Ranges,
            range: usize,
            rows: Tables,
        ) -> anyhow::Result<()> {
            self.ranges_seen.push(range);
            let inside = |t: &TermId| ranges.contains(range, t);
            assert!(rows.atom.keys().all(inside));
            assert!(rows.triple.keys().all(inside));
            assert!(rows.position.keys().all(|k| inside(&k.1)));
            assert!(rows.vault.keys().all(|k| inside(&k.0)));
            assert!(rows.term.keys().all(inside));
            assert!(rows.triple_vault.keys().all(|k| inside(&k.0)));
            assert!(rows.triple_term.keys().all(inside));
            assert!(rows.predicate_object.is_empty() && rows.subject_predicate.is_empty());
            let Tables {
                atom,
                triple,
                position,
                vault,
                term,
                triple_vault,
                triple_term,
                ..
            } = rows;
            self.merge(|t| &mut t.atom, atom);
            self.merge(|t| &mut t.triple, triple);
            self.merge(|t| &mut t.position, position);
            self.merge(|t| &mut t.vault, vault);
            self.merge(|t| &mut t.term, term);
            self.merge(|t| &mut t.triple_vault, triple_vault);
            self.merge(|t| &mut t.triple_term, triple_term);
            Ok(())
        }

        async fn pair_rows(&mut self, ranges: Ranges, rows: Tables) -> anyhow::Result<()> {
            // Handed over by range, as verify compares them.
            let pieces = pairs_by_range(ranges, rows);
            assert_eq!(pieces.len(), ranges.count());
            for (range, piece) in pieces.into_iter().enumerate() {
                assert!(piece
                    .predicate_object
                    .keys()
                    .all(|k| ranges.contains(range, &k.0)));
                assert!(piece
                    .subject_predicate
                    .keys()
                    .all(|k| ranges.contains(range, &k.0)));
                self.merge(|t| &mut t.predicate_object, piece.predicate_object);
                self.merge(|t| &mut t.subject_predicate, piece.subject_predicate);
            }
            Ok(())
        }
    }

    /// The engine over `events` in memory with `count` ranges: what it folded and handed over.
    fn run_in_memory(events: &[Event], count: u32) -> (Folded, Tables) {
        let mut memory = Memory::new(events);
        let plan = Plan {
            ranges: Ranges::new(count).expect("valid count"),
            analytics: true,
        };
        let mut steps = Vec::new();
        let folded = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(run(&mut memory, plan, &mut |s| steps.push(s)))
            .expect("in-memory run");
        assert_eq!(memory.duplicate_keys, 0, "a key handed over twice");
        assert_eq!(memory.ranges_seen, (0..count as usize).collect::<Vec<_>>());
        assert!(
            matches!(steps.first(), Some(&Step::Range { done: 0, total, .. }) if total == count as usize)
        );
        assert!(steps.contains(&Step::Range {
            done: count as usize,
            total: count as usize,
            events: folded.events
        }));
        assert!(matches!(steps.last(), Some(Step::Pairs { .. })));
        (folded, memory.got)
    }

    fn assert_equals_the_fold(events: &[Event], count: u32) -> Result<(), TestCaseError> {
        let reference = fold(events);
        let expected = reference.tables();
        let (folded, got) = run_in_memory(events, count);
        prop_assert!(
            got == expected,
            "{count} ranges: tables differ: {:?}",
            got.differing_tables(&expected)
        );
        prop_assert_eq!(folded.events, reference.event_count());
        prop_assert_eq!(folded.rows, expected.row_counts().to_vec());
        Ok(())
    }

    #[test]
    fn recorded_fixture_by_ranges_equals_the_fold() {
        let events =
            read_events(include_str!("../../tests/fixtures/small.jsonl")).expect("fixture");
        for count in [1, 2, 3, 16, 256, 65_536] {
            assert_equals_the_fold(&events, count).expect("equal");
        }
        // Not trivially: every table has rows, and with 16 ranges most triples' counter terms
        // live in another range than the triple.
        let tables = fold(&events).tables();
        assert!(tables.row_counts().iter().all(|(_, n)| *n > 0));
        let r = Ranges::new(16).expect("16");
        let split = tables
            .triple
            .values()
            .filter(|t| r.of(&t.term_id) != r.of(&t.counter_term_id))
            .count();
        assert!(
            split * 2 > tables.triple.len(),
            "{split} of {}",
            tables.triple.len()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn colliding_histories_by_ranges_equal_the_fold(
            specs in prop::collection::vec(tiny_event(), 1..80),
            count in prop::sample::select(vec![1u32, 2, 16, 256]),
        ) {
            assert_equals_the_fold(&tiny_events(&specs), count)?;
        }
    }

    #[test]
    fn ranges_cut_the_prefix_space_into_contiguous_bounds() {
        for count in [1u32, 2, 3, 7, 16, 255, 256, 1000, 65_536] {
            let r = Ranges::new(count).expect("valid");
            let mut last = 0;
            for prefix in 0..=u16::MAX {
                let mut id = [0u8; 32];
                id[..2].copy_from_slice(&prefix.to_be_bytes());
                id[31] = 0xff;
                let term = Bytes32(id);
                let range = r.of(&term);
                assert!(range == last || range == last + 1, "{count}: {prefix:#x}");
                last = range;
                // The text bounds order the id as the SQL filter does (lowercase hex, bytewise).
                let text = term.to_string();
                let (lo, hi) = r.bounds(range);
                assert!(
                    lo.is_none_or(|lo| text.as_str() >= lo.as_str()),
                    "{count}: {text}"
                );
                assert!(
                    hi.is_none_or(|hi| text.as_str() < hi.as_str()),
                    "{count}: {text}"
                );
            }
            assert_eq!(last, count as usize - 1);
            assert_eq!(r.bounds(0).0, None);
            assert_eq!(r.bounds(count as usize - 1).1, None);
        }
        assert_eq!(
            Ranges::new(16).expect("16").bounds(1),
            (Some("0x1000".to_owned()), Some("0x2000".to_owned()))
        );
        assert!(Ranges::new(0).is_err() && Ranges::new(65_537).is_err());
        assert_eq!(Ranges::for_events(0).count(), 1);
        assert_eq!(Ranges::for_events(EVENTS_PER_RANGE * 10 + 1).count(), 11);
    }

    #[test]
    fn an_event_read_for_the_wrong_range_is_refused() {
        let events = tiny_events(&[(2, 0, 0, 1, 5, 5, true)]);
        let r = Ranges::new(256).expect("256");
        let term = term_of(&events[0]).copied().expect("a term");
        let wrong = (r.of(&term) + 1) % 256;
        let e = fold_range(r, wrong, &events, &[]).expect_err("out of range");
        assert!(e.to_string().contains("lowercase hex"), "{e}");
        assert!(fold_range(r, r.of(&term), &events, &[]).is_ok());
    }
}
