//! The triple-level math of SPEC §2: triple_vault, triple_term, predicate_object and
//! subject_predicate as functions of vault figures and triples.
//!
//! Used twice: by [`State`](super::State) for the in-memory reference result, and by the analytics
//! consumer, which reads vault figures from Postgres. Pair aggregates are maintained
//! incrementally with exact add/remove ([`PairAggregate`]), which is what lets the consumer touch
//! only the pairs of the triples that changed.

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
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PairAggregate {
    pub triple_count: i64,
    pub position_count: i128,
    pub market_cap: Total,
}

impl PairAggregate {
    /// Counts a triple whose triple_term is `t` into the pair.
    pub fn add(&mut self, t: &TripleTermRow) {
        self.triple_count += 1;
        self.position_count += i128::from(t.total_position_count);
        self.market_cap.add(t.total_market_cap);
    }

    /// Takes out a triple that was added before with the same `t`.
    pub fn remove(&mut self, t: &TripleTermRow) {
        self.triple_count -= 1;
        self.position_count -= i128::from(t.total_position_count);
        self.market_cap.remove(t.total_market_cap);
    }

    /// The stored row; `None` once no triple is left (the row is deleted).
    pub fn row(&self, key: PairKey) -> Option<PairRow> {
        (self.triple_count > 0).then(|| PairRow {
            key,
            triple_count: self.triple_count,
            total_position_count: i64::try_from(self.position_count).unwrap_or(i64::MAX),
            total_market_cap: self.market_cap.value(),
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

/// A change to one pair aggregate: counts to add (negative to take away) and market cap to add
/// and to take away (kept apart: uint256 has no sign).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairDelta {
    pub triple_count: i64,
    pub position_count: i64,
    pub market_cap_add: U256,
    pub market_cap_sub: U256,
}

impl PairDelta {
    fn add(&mut self, t: &TripleTermRow, sign: i64) {
        self.triple_count += sign;
        self.position_count += sign * t.total_position_count;
        if sign > 0 {
            self.market_cap_add = self.market_cap_add.saturating_add(t.total_market_cap);
        } else {
            self.market_cap_sub = self.market_cap_sub.saturating_add(t.total_market_cap);
        }
    }

    /// Whether applying it changes nothing.
    pub fn is_zero(&self) -> bool {
        self.triple_count == 0
            && self.position_count == 0
            && self.market_cap_add == self.market_cap_sub
    }
}

/// What one analytics batch writes, computed from what it read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recomputed {
    /// The full triple_vault rows of every affected triple.
    pub triple_vaults: Vec<TripleVaultRow>,
    pub triple_terms: Vec<TripleTermRow>,
    pub predicate_object: Vec<(PairKey, PairDelta)>,
    pub subject_predicate: Vec<(PairKey, PairDelta)>,
}

/// Recomputes the triple-level rows of `triples` from the current vault figures, and the pair
/// deltas that move each triple's contribution from its stored triple_term (`stored`, absent for
/// a new triple) to the new one. Incremental and exact: a pair aggregate only ever gains and loses
/// whole triple contributions.
pub fn recompute(
    triples: &[TripleKeys],
    vaults: &HashMap<TermId, Vec<(U256, VaultFigures)>>,
    stored: &HashMap<TermId, TripleTermRow>,
) -> Recomputed {
    let mut out = Recomputed::default();
    let mut po: BTreeMap<PairKey, PairDelta> = BTreeMap::new();
    let mut sp: BTreeMap<PairKey, PairDelta> = BTreeMap::new();
    let none = Vec::new();
    for t in triples {
        let rows = triple_vault_rows(
            t.term_id,
            t.counter_term_id,
            vaults.get(&t.term_id).unwrap_or(&none),
            vaults.get(&t.counter_term_id).unwrap_or(&none),
        );
        let new = triple_term_row(t.term_id, t.counter_term_id, &rows);
        let (po_key, sp_key) = (
            (t.predicate_id, t.object_id),
            (t.subject_id, t.predicate_id),
        );
        if let Some(old) = stored.get(&t.term_id) {
            po.entry(po_key).or_default().add(old, -1);
            sp.entry(sp_key).or_default().add(old, -1);
        }
        po.entry(po_key).or_default().add(&new, 1);
        sp.entry(sp_key).or_default().add(&new, 1);
        out.triple_vaults.extend(rows);
        out.triple_terms.push(new);
    }
    out.predicate_object = po.into_iter().filter(|(_, d)| !d.is_zero()).collect();
    out.subject_predicate = sp.into_iter().filter(|(_, d)| !d.is_zero()).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::types::Bytes32;

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

    #[test]
    fn recompute_moves_only_the_change_into_the_pairs() {
        let (s, p, o) = (Bytes32([5; 32]), Bytes32([6; 32]), Bytes32([7; 32]));
        let t = TripleKeys {
            term_id: P,
            counter_term_id: C,
            subject_id: s,
            predicate_id: p,
            object_id: o,
        };
        let vaults: HashMap<TermId, Vec<(U256, VaultFigures)>> = [
            (P, vec![(U256::one(), figures(10, 20, 30, 2))]),
            (C, vec![(U256::one(), figures(1, 2, 3, 1))]),
        ]
        .into();
        // New triple: the pairs gain one triple with its whole contribution.
        let first = recompute(&[t], &vaults, &HashMap::new());
        assert_eq!(first.triple_vaults.len(), 1);
        assert_eq!(first.triple_terms[0].total_market_cap, U256::from(33));
        let d = &first.predicate_object[0];
        assert_eq!(
            (
                d.0,
                d.1.triple_count,
                d.1.position_count,
                d.1.market_cap_add
            ),
            ((p, o), 1, 3, U256::from(33))
        );
        assert_eq!(first.subject_predicate[0].0, (s, p));
        // Known triple, one vault moved: the pairs get the difference only.
        let stored: HashMap<TermId, TripleTermRow> = [(P, first.triple_terms[0].clone())].into();
        let moved: HashMap<TermId, Vec<(U256, VaultFigures)>> = [
            (P, vec![(U256::one(), figures(10, 20, 50, 1))]),
            (C, vec![(U256::one(), figures(1, 2, 3, 1))]),
        ]
        .into();
        let second = recompute(&[t], &moved, &stored);
        let d = &second.predicate_object[0].1;
        assert_eq!((d.triple_count, d.position_count), (0, -1));
        assert_eq!(
            (d.market_cap_add, d.market_cap_sub),
            (U256::from(53), U256::from(33))
        );
        // Nothing moved: no pair delta at all (redelivery is harmless).
        let same = recompute(&[t], &vaults, &stored);
        assert!(same.predicate_object.is_empty() && same.subject_predicate.is_empty());
        assert_eq!(same.triple_terms, first.triple_terms);
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
