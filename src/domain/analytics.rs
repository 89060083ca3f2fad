//! The triple-level math of SPEC §2: triple_vault, triple_term, predicate_object and
//! subject_predicate as functions of vault figures and triples.
//!
//! Used twice: by [`State`](super::State) for the in-memory reference result, and by the analytics
//! consumer, which reads vault figures from Postgres. Pair aggregates are maintained
//! incrementally with exact add/remove ([`PairAggregate`]), which is what lets the consumer touch
//! only the pairs of the triples that changed. Both paths use the same primitive: the consumer
//! loads the stored rows of the pairs it touches into `PairAggregate`s, moves contributions with
//! `remove`/`add`, and writes the absolute rows ([`recompute`]), so live == fold, saturation
//! included.

use std::collections::{BTreeMap, HashMap};

use primitive_types::U256;

use super::math::{self, Total};
use super::rows::{PairKey, PairRow, TripleTermRow, TripleVaultRow};
use super::types::TermId;

/// What the triple-level tables read of one vault.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VaultFigures {
    pub total_shares: U256,
    pub total_assets: U256,
    pub market_cap: U256,
    pub position_count: i64,
}

/// triple_vault rows of triple `term_id` (counter `counter_term_id`): one per curve where the pro
/// or the counter vault exists, each field the sum of the two (a missing vault counts 0).
/// `pro` and `counter` list `(curve_id, figures)`, in any order.
pub fn triple_vault_rows(
    term_id: TermId,
    counter_term_id: TermId,
    pro: &[(U256, VaultFigures)],
    counter: &[(U256, VaultFigures)],
) -> Vec<TripleVaultRow> {
    // A triple has one or two curves: a sorted small vector beats a map.
    let mut by_curve: Vec<(U256, [VaultFigures; 2])> =
        Vec::with_capacity(pro.len() + counter.len());
    for (side, vaults) in [pro, counter].into_iter().enumerate() {
        for (curve, f) in vaults {
            match by_curve.iter_mut().find(|(c, _)| c == curve) {
                Some((_, sides)) => sides[side] = *f,
                None => {
                    let mut sides = [VaultFigures::default(); 2];
                    sides[side] = *f;
                    by_curve.push((*curve, sides));
                }
            }
        }
    }
    by_curve.sort_unstable_by_key(|(c, _)| *c);
    by_curve
        .into_iter()
        .map(|(curve_id, [p, c])| TripleVaultRow {
            term_id,
            counter_term_id,
            curve_id,
            total_shares: p.total_shares.saturating_add(c.total_shares),
            total_assets: p.total_assets.saturating_add(c.total_assets),
            position_count: p.position_count.saturating_add(c.position_count),
            market_cap: p.market_cap.saturating_add(c.market_cap),
        })
        .collect()
}

/// The triple_term row of a triple: sums over its triple_vault rows (zeros when it has none).
pub fn triple_term_row(
    term_id: TermId,
    counter_term_id: TermId,
    vaults: &[TripleVaultRow],
) -> TripleTermRow {
    TripleTermRow {
        term_id,
        counter_term_id,
        total_assets: math::sum(vaults.iter().map(|v| v.total_assets)),
        total_market_cap: math::sum(vaults.iter().map(|v| v.market_cap)),
        total_position_count: vaults
            .iter()
            .fold(0i64, |acc, v| acc.saturating_add(v.position_count)),
    }
}

/// A predicate_object or subject_predicate aggregate, kept exact under add and remove of triples.
///
/// The one primitive of pair aggregates: the fold ([`State`](super::State)) keeps one per pair in
/// memory; the analytics consumer loads the stored row of each pair it touches
/// ([`from_row`](Self::from_row)), moves its triples' contributions with the same
/// [`remove`](Self::remove)/[`add`](Self::add), and stores the [`row`](Self::row) it ends at.
/// The market cap is a [`Total`]: exact in 512 bits, shown saturated (SPEC §2, `math.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PairAggregate {
    pub triple_count: i64,
    pub position_count: i128,
    pub market_cap: Total,
}

impl PairAggregate {
    /// The aggregate a stored row stands for. The market cap resumes from the row's exact sum,
    /// never from its saturated value, so removals after a saturation stay exact.
    pub fn from_row(row: &PairRow) -> Self {
        Self {
            triple_count: row.triple_count,
            position_count: i128::from(row.total_position_count),
            market_cap: Total::from_exact(row.total_market_cap_sum),
        }
    }

    /// Counts a triple whose triple_term is `t` into the pair.
    pub fn add(&mut self, t: &TripleTermRow) {
        self.triple_count = self.triple_count.saturating_add(1);
        self.position_count += i128::from(t.total_position_count);
        self.market_cap.add(t.total_market_cap);
    }

    /// Takes out a triple that was added before with the same `t`.
    pub fn remove(&mut self, t: &TripleTermRow) {
        self.triple_count = self.triple_count.saturating_sub(1);
        self.position_count -= i128::from(t.total_position_count);
        self.market_cap.remove(t.total_market_cap);
    }

    /// The stored row; `None` once no triple is left (the row is deleted). Every field fits its
    /// column: counts are BIGINT (clamped), the market cap is saturated to uint256, and its exact
    /// sum is at most 2⁵¹²−1.
    pub fn row(&self, key: PairKey) -> Option<PairRow> {
        (self.triple_count > 0).then(|| PairRow {
            key,
            triple_count: self.triple_count,
            total_position_count: self
                .position_count
                .clamp(i128::from(i64::MIN), i128::from(i64::MAX))
                as i64,
            total_market_cap: self.market_cap.value(),
            total_market_cap_sum: self.market_cap.exact(),
        })
    }
}

/// A triple as the analytics consumer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TripleKeys {
    pub term_id: TermId,
    pub counter_term_id: TermId,
    pub subject_id: TermId,
    pub predicate_id: TermId,
    pub object_id: TermId,
}

impl TripleKeys {
    /// Its predicate_object key, `(predicate_id, object_id)`.
    pub fn predicate_object(&self) -> PairKey {
        (self.predicate_id, self.object_id)
    }

    /// Its subject_predicate key, `(subject_id, predicate_id)`.
    pub fn subject_predicate(&self) -> PairKey {
        (self.subject_id, self.predicate_id)
    }
}

/// The pair rows `triples` count into: `(predicate_object keys, subject_predicate keys)`, sorted
/// and distinct. The consumer reads the stored rows of exactly these before [`recompute`].
pub fn touched_pairs(triples: &[TripleKeys]) -> (Vec<PairKey>, Vec<PairKey>) {
    let mut po: Vec<PairKey> = triples.iter().map(TripleKeys::predicate_object).collect();
    let mut sp: Vec<PairKey> = triples.iter().map(TripleKeys::subject_predicate).collect();
    for keys in [&mut po, &mut sp] {
        keys.sort_unstable();
        keys.dedup();
    }
    (po, sp)
}

/// A pair row to write: its new absolute value, or `None` to delete it (no triple left).
pub type PairWrite = (PairKey, Option<PairRow>);

/// What one analytics batch writes, computed from what it read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recomputed {
    /// The full triple_vault rows of every affected triple.
    pub triple_vaults: Vec<TripleVaultRow>,
    pub triple_terms: Vec<TripleTermRow>,
    /// The pair rows whose aggregate changed, in key order.
    pub predicate_object: Vec<PairWrite>,
    pub subject_predicate: Vec<PairWrite>,
}

/// The stored pair rows of one pair table, loaded as aggregates; a pair with no row starts empty.
#[derive(Debug, Default)]
struct Pairs(BTreeMap<PairKey, (PairAggregate, PairAggregate)>);

impl Pairs {
    fn load(stored: &[PairRow]) -> Self {
        Self(
            stored
                .iter()
                .map(|r| {
                    let a = PairAggregate::from_row(r);
                    (r.key, (a, a))
                })
                .collect(),
        )
    }

    fn get(&mut self, key: PairKey) -> &mut PairAggregate {
        &mut self.0.entry(key).or_default().1
    }

    /// The pairs whose aggregate moved, as rows to write.
    fn writes(self) -> Vec<PairWrite> {
        self.0
            .into_iter()
            .filter(|(_, (before, after))| before != after)
            .map(|(key, (_, after))| (key, after.row(key)))
            .collect()
    }
}

/// Recomputes the triple-level rows of `triples` (distinct) from the current vault figures, and
/// the pair rows they count into: each stored pair row (`stored_po`, `stored_sp`: the rows of
/// [`touched_pairs`] that exist) is loaded into a [`PairAggregate`], each triple's stored
/// triple_term (`stored`, absent for a new triple) is removed from it and the new one added, and
/// the aggregate's absolute row comes out — the fold's arithmetic, so the result is the fold's
/// whatever the batching. Pairs whose aggregate did not move are left out (a redelivery writes no
/// pair row).
pub fn recompute(
    triples: &[TripleKeys],
    vaults: &HashMap<TermId, Vec<(U256, VaultFigures)>>,
    stored: &HashMap<TermId, TripleTermRow>,
    stored_po: &[PairRow],
    stored_sp: &[PairRow],
) -> Recomputed {
    let mut out = Recomputed::default();
    let (mut po, mut sp) = (Pairs::load(stored_po), Pairs::load(stored_sp));
    let none = Vec::new();
    for t in triples {
        let rows = triple_vault_rows(
            t.term_id,
            t.counter_term_id,
            vaults.get(&t.term_id).unwrap_or(&none),
            vaults.get(&t.counter_term_id).unwrap_or(&none),
        );
        let new = triple_term_row(t.term_id, t.counter_term_id, &rows);
        for agg in [po.get(t.predicate_object()), sp.get(t.subject_predicate())] {
            if let Some(old) = stored.get(&t.term_id) {
                agg.remove(old);
            }
            agg.add(&new);
        }
        out.triple_vaults.extend(rows);
        out.triple_terms.push(new);
    }
    out.predicate_object = po.writes();
    out.subject_predicate = sp.writes();
    out
}

/// The pair rows once triples no longer count where they did: each `(triple, its stored
/// triple_term row)` is removed from the pairs of `triple` (a reorg took its creation out, or
/// left an older one naming other ids). `stored_po` / `stored_sp`: the stored rows of those
/// pairs. Returns the pair writes `(predicate_object, subject_predicate)`.
pub fn withdraw(
    gone: &[(TripleKeys, TripleTermRow)],
    stored_po: &[PairRow],
    stored_sp: &[PairRow],
) -> (Vec<PairWrite>, Vec<PairWrite>) {
    let (mut po, mut sp) = (Pairs::load(stored_po), Pairs::load(stored_sp));
    for (t, row) in gone {
        po.get(t.predicate_object()).remove(row);
        sp.get(t.subject_predicate()).remove(row);
    }
    (po.writes(), sp.writes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::types::Bytes32;
    use primitive_types::U512;

    fn figures(shares: u64, assets: u64, cap: u64, positions: i64) -> VaultFigures {
        VaultFigures {
            total_shares: shares.into(),
            total_assets: assets.into(),
            market_cap: cap.into(),
            position_count: positions,
        }
    }

    const P: Bytes32 = Bytes32([1; 32]);
    const C: Bytes32 = Bytes32([2; 32]);

    #[test]
    fn triple_vault_adds_pro_and_counter_per_curve() {
        let pro = [
            (U256::from(1), figures(10, 20, 30, 2)),
            (U256::from(2), figures(1, 1, 1, 1)),
        ];
        let counter = [
            (U256::from(1), figures(5, 6, 7, 1)),
            (U256::from(3), figures(9, 9, 9, 0)),
        ];
        let rows = triple_vault_rows(P, C, &pro, &counter);
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.curve_id.as_u64(),
                    r.total_shares.as_u64(),
                    r.total_assets.as_u64(),
                    r.market_cap.as_u64(),
                    r.position_count,
                )
            })
            .collect();
        // curve 1: both; curve 2: pro only; curve 3: counter only (missing vault counts 0).
        assert_eq!(
            got,
            vec![(1, 15, 26, 37, 3), (2, 1, 1, 1, 1), (3, 9, 9, 9, 0)]
        );
        assert!(rows
            .iter()
            .all(|r| r.term_id == P && r.counter_term_id == C));
    }

    #[test]
    fn triple_vault_has_no_rows_without_vaults() {
        assert!(triple_vault_rows(P, C, &[], &[]).is_empty());
    }

    #[test]
    fn triple_term_sums_its_vault_rows() {
        let rows = triple_vault_rows(
            P,
            C,
            &[
                (U256::from(1), figures(10, 20, 30, 2)),
                (U256::from(2), figures(1, 2, 3, 4)),
            ],
            &[(U256::from(1), figures(5, 6, 7, 1))],
        );
        let t = triple_term_row(P, C, &rows);
        assert_eq!(t.total_assets, U256::from(28));
        assert_eq!(t.total_market_cap, U256::from(40));
        assert_eq!(t.total_position_count, 7);
        let empty = triple_term_row(P, C, &[]);
        assert_eq!(
            (empty.total_assets, empty.total_position_count),
            (U256::zero(), 0)
        );
    }

    /// A store of pair rows and triple_term rows, written as the consumer writes them.
    #[derive(Default)]
    struct Stored {
        terms: HashMap<TermId, TripleTermRow>,
        po: BTreeMap<PairKey, PairRow>,
        sp: BTreeMap<PairKey, PairRow>,
    }

    impl Stored {
        /// One analytics batch: read what `triples` touch, recompute, write the result.
        fn batch(
            &mut self,
            triples: &[TripleKeys],
            vaults: &HashMap<TermId, Vec<(U256, VaultFigures)>>,
        ) -> Recomputed {
            let (po_keys, sp_keys) = touched_pairs(triples);
            let read = |rows: &BTreeMap<PairKey, PairRow>, keys: &[PairKey]| -> Vec<PairRow> {
                keys.iter().filter_map(|k| rows.get(k).cloned()).collect()
            };
            let r = recompute(
                triples,
                vaults,
                &self.terms,
                &read(&self.po, &po_keys),
                &read(&self.sp, &sp_keys),
            );
            for t in &r.triple_terms {
                self.terms.insert(t.term_id, t.clone());
            }
            for (rows, writes) in [
                (&mut self.po, &r.predicate_object),
                (&mut self.sp, &r.subject_predicate),
            ] {
                for (key, row) in writes {
                    match row {
                        Some(row) => rows.insert(*key, row.clone()),
                        None => rows.remove(key),
                    };
                }
            }
            r
        }
    }

    fn keys(i: u8, subject: u8) -> TripleKeys {
        TripleKeys {
            term_id: Bytes32([0x10 + i; 32]),
            counter_term_id: Bytes32([0x80 + i; 32]),
            subject_id: Bytes32([0x40 + subject; 32]),
            predicate_id: Bytes32([6; 32]),
            object_id: Bytes32([7; 32]),
        }
    }

    #[test]
    fn recompute_writes_absolute_pair_rows_and_skips_unmoved_pairs() {
        let t = keys(0, 0);
        let (po_key, sp_key) = (t.predicate_object(), t.subject_predicate());
        let vaults: HashMap<TermId, Vec<(U256, VaultFigures)>> = [
            (t.term_id, vec![(U256::one(), figures(10, 20, 30, 2))]),
            (t.counter_term_id, vec![(U256::one(), figures(1, 2, 3, 1))]),
        ]
        .into();
        let mut db = Stored::default();
        // New triple: the pairs get a row with its whole contribution.
        let first = db.batch(&[t], &vaults);
        assert_eq!(first.triple_vaults.len(), 1);
        assert_eq!(first.triple_terms[0].total_market_cap, U256::from(33));
        let row = first.predicate_object[0].1.clone().expect("a row");
        assert_eq!(first.predicate_object[0].0, po_key);
        assert_eq!(
            (
                row.triple_count,
                row.total_position_count,
                row.total_market_cap
            ),
            (1, 3, U256::from(33))
        );
        assert_eq!(row.total_market_cap_sum, U512::from(33));
        assert_eq!(first.subject_predicate[0].0, sp_key);
        // Known triple, one vault moved: the new absolute value, not a delta.
        let moved: HashMap<TermId, Vec<(U256, VaultFigures)>> = [
            (t.term_id, vec![(U256::one(), figures(10, 20, 50, 1))]),
            (t.counter_term_id, vec![(U256::one(), figures(1, 2, 3, 1))]),
        ]
        .into();
        let second = db.batch(&[t], &moved);
        let row = second.predicate_object[0].1.clone().expect("a row");
        assert_eq!(
            (
                row.triple_count,
                row.total_position_count,
                row.total_market_cap
            ),
            (1, 2, U256::from(53))
        );
        // Nothing moved: no pair row written at all (redelivery is harmless).
        let same = db.batch(&[t], &moved);
        assert!(same.predicate_object.is_empty() && same.subject_predicate.is_empty());
        assert_eq!(same.triple_terms, second.triple_terms);
    }

    #[test]
    fn pair_rows_loaded_from_storage_follow_the_fold_through_saturation() {
        // Ten triples on one (predicate, object), three subjects; each triple's market cap
        // saturated, then lowered one by one, then one raised again; triples reach the
        // consumer in batches of every size. The stored rows (saturated value + exact sum),
        // loaded and moved batch by batch, must equal the fold's in-memory aggregates.
        let triples: Vec<TripleKeys> = (0..10).map(|i| keys(i, i % 3)).collect();
        let saturated = figures(0, 1, 0, 1);
        let saturated = VaultFigures {
            market_cap: U256::MAX,
            ..saturated
        };
        let mut steps: Vec<(usize, VaultFigures)> = (0..10).map(|i| (i, saturated)).collect();
        steps.extend((1..10).map(|i| (i, figures(5, 5, 5_000, 2))));
        steps.push((0, figures(5, 5, 7, 0)));
        steps.push((4, saturated));
        for batch_size in [1, 2, 3, 7, 30] {
            let mut db = Stored::default();
            let mut caps: Vec<VaultFigures> = vec![VaultFigures::default(); 10];
            // The fold's way: one aggregate per pair, kept in memory, moved triple by triple.
            let mut fold_po = PairAggregate::default();
            let mut fold_sp: BTreeMap<PairKey, PairAggregate> = BTreeMap::new();
            let mut fold_terms: HashMap<TermId, TripleTermRow> = HashMap::new();
            for chunk in steps.chunks(batch_size) {
                let mut touched = Vec::new();
                for &(i, f) in chunk {
                    caps[i] = f;
                    if !touched.contains(&triples[i]) {
                        touched.push(triples[i]);
                    }
                }
                let vaults: HashMap<TermId, Vec<(U256, VaultFigures)>> = triples
                    .iter()
                    .zip(&caps)
                    .map(|(t, f)| (t.term_id, vec![(U256::one(), *f)]))
                    .collect();
                db.batch(&touched, &vaults);
                for t in &touched {
                    let rows =
                        triple_vault_rows(t.term_id, t.counter_term_id, &vaults[&t.term_id], &[]);
                    let now = triple_term_row(t.term_id, t.counter_term_id, &rows);
                    let sp = fold_sp.entry(t.subject_predicate()).or_default();
                    if let Some(before) = fold_terms.get(&t.term_id) {
                        fold_po.remove(before);
                        sp.remove(before);
                    }
                    fold_po.add(&now);
                    sp.add(&now);
                    fold_terms.insert(t.term_id, now);
                }
                let key = triples[0].predicate_object();
                assert_eq!(
                    db.po.get(&key).cloned(),
                    fold_po.row(key),
                    "predicate_object after a batch, batch size {batch_size}"
                );
                let fold_rows: BTreeMap<PairKey, PairRow> = fold_sp
                    .iter()
                    .filter_map(|(k, a)| a.row(*k).map(|r| (*k, r)))
                    .collect();
                assert_eq!(
                    db.sp, fold_rows,
                    "subject_predicate, batch size {batch_size}"
                );
            }
            // The end state: triple 4 saturated again, the rest exact (5,000 each, 7 for triple 0).
            let row = db.po[&triples[0].predicate_object()].clone();
            assert_eq!(row.total_market_cap, U256::MAX);
            assert_eq!(
                row.total_market_cap_sum,
                U512::from(U256::MAX) + U512::from(8 * 5_000 + 7)
            );
            assert_eq!(row.triple_count, 10);
            assert_eq!(db.terms, fold_terms);
        }
    }

    #[test]
    fn pair_aggregate_add_remove_is_exact() {
        let t = |cap: u64, n: i64| TripleTermRow {
            term_id: P,
            counter_term_id: C,
            total_assets: U256::zero(),
            total_market_cap: cap.into(),
            total_position_count: n,
        };
        let mut agg = PairAggregate::default();
        agg.add(&t(100, 3));
        agg.add(&t(50, 1));
        let row = agg.row((P, C)).expect("two triples");
        assert_eq!((row.triple_count, row.total_position_count), (2, 4));
        assert_eq!(row.total_market_cap, U256::from(150));
        agg.remove(&t(100, 3));
        agg.add(&t(120, 5));
        let row = agg.row((P, C)).expect("two triples");
        assert_eq!((row.triple_count, row.total_position_count), (2, 6));
        assert_eq!(row.total_market_cap, U256::from(170));
        agg.remove(&t(120, 5));
        agg.remove(&t(50, 1));
        assert_eq!(agg.row((P, C)), None);
    }
}
