//! The triple-level math of SPEC §2: triple_vault, triple_term, predicate_object and
//! subject_predicate as functions of vault figures and triples.
//!
//! Used twice: by [`State`](super::State) for the in-memory reference result, and by the analytics
//! consumer, which reads vault figures from Postgres. Pair aggregates are maintained
//! incrementally with exact add/remove ([`PairAggregate`]), which is what lets the consumer touch
//! only the pairs of the triples that changed.

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
