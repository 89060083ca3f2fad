//! Reading rows out of the fold's state: one row per key (`atom` … `subject_predicate`), every
//! table (`tables`), and the triple-level analytics brought up to date for what changed
//! (`refresh_analytics`).

use super::*;

impl State {
    /// Brings triple_vault, triple_term, predicate_object and subject_predicate up to date for
    /// every triple touched since the last call, recording their keys in `changes`.
    pub fn refresh_analytics(&mut self, changes: &mut Changes) {
        let stale = std::mem::take(&mut self.stale_triples);
        for id in stale {
            self.refresh_triple(id, changes);
        }
    }

    fn refresh_triple(&mut self, id: TermId, changes: &mut Changes) {
        let Some(triple) = self.triples.get(&id).map(|t| &t.row) else {
            return;
        };
        let rows = self.triple_vault_rows_of(triple);
        let now = TripleAnalytics {
            predicate_object: (triple.predicate_id, triple.object_id),
            subject_predicate: (triple.subject_id, triple.predicate_id),
            triple_term: analytics::triple_term_row(id, triple.counter_term_id, &rows),
        };
        changes.triple_analytics.insert(id);
        if let Some(before) = self.triple_analytics.get(&id) {
            let po = self
                .predicate_objects
                .entry(before.predicate_object)
                .or_default();
            po.remove(&before.triple_term);
            let sp = self
                .subject_predicates
                .entry(before.subject_predicate)
                .or_default();
            sp.remove(&before.triple_term);
            changes.predicate_objects.insert(before.predicate_object);
            changes.subject_predicates.insert(before.subject_predicate);
        }
        self.predicate_objects
            .entry(now.predicate_object)
            .or_default()
            .add(&now.triple_term);
        self.subject_predicates
            .entry(now.subject_predicate)
            .or_default()
            .add(&now.triple_term);
        changes.predicate_objects.insert(now.predicate_object);
        changes.subject_predicates.insert(now.subject_predicate);
        self.triple_analytics.insert(id, now);
    }

    fn triple_vault_rows_of(&self, triple: &TripleRow) -> Vec<TripleVaultRow> {
        let figures = |term: &TermId| -> Vec<(U256, VaultFigures)> {
            self.terms
                .get(term)
                .map(|t| t.vaults.iter().map(|(c, v)| (*c, v.figures())).collect())
                .unwrap_or_default()
        };
        analytics::triple_vault_rows(
            triple.term_id,
            triple.counter_term_id,
            &figures(&triple.term_id),
            &figures(&triple.counter_term_id),
        )
    }

    // ---- reading rows ------------------------------------------------------------------------

    pub fn atom(&self, id: &TermId) -> Option<AtomRow> {
        self.atoms.get(id).map(|a| a.row.clone())
    }

    pub fn triple(&self, id: &TermId) -> Option<TripleRow> {
        self.triples.get(id).map(|t| t.row.clone())
    }

    pub fn position(&self, key: &PositionKey) -> Option<PositionRow> {
        self.positions.get(key).map(|p| PositionRow {
            account_id: key.0,
            term_id: key.1,
            curve_id: key.2,
            shares: p.shares,
            total_deposit_assets_after_total_fees: p.deposits,
            total_redeem_assets_for_receiver: p.redeems,
            created_at: p.created_at,
            updated_at: p.updated_at,
            first_at: p.first_at,
            last_at: p.last_at,
        })
    }

    pub fn vault(&self, key: &VaultKey) -> Option<VaultRow> {
        let v = self.terms.get(&key.0)?.vault(&key.1)?;
        Some(VaultRow {
            term_id: key.0,
            curve_id: key.1,
            total_shares: v.total_shares,
            current_share_price: v.share_price,
            total_assets: v.total_assets,
            market_cap: v.market_cap(),
            position_count: v.position_count,
            vault_type: v.vault_type,
            price_at: v.price_at,
            type_at: v.type_at,
        })
    }

    pub fn term(&self, id: &TermId) -> Option<TermRow> {
        let t = self.terms.get(id)?;
        let (term_type, atom_id, triple_id) = if t.is_atom {
            (TermType::Atom, Some(*id), None)
        } else if t.is_triple {
            (TermType::Triple, None, Some(*id))
        } else if let Some(pro) = t.counter_of {
            (TermType::CounterTriple, None, Some(pro))
        } else {
            (TermType::Unknown, None, None)
        };
        Some(TermRow {
            id: *id,
            term_type,
            atom_id,
            triple_id,
            total_assets: math::sum(t.vaults.iter().map(|(_, v)| v.total_assets)),
            total_market_cap: math::sum(t.vaults.iter().map(|(_, v)| v.market_cap())),
            is_atom: t.is_atom,
            is_triple: t.is_triple,
            counter_of: t.counter_of,
        })
    }

    /// triple_vault rows of triple `id` (one per curve), as of the last `refresh_analytics`.
    pub fn triple_vaults(&self, id: &TermId) -> Vec<TripleVaultRow> {
        match (self.triple_analytics.contains_key(id), self.triples.get(id)) {
            (true, Some(t)) => self.triple_vault_rows_of(&t.row),
            _ => Vec::new(),
        }
    }

    pub fn triple_term(&self, id: &TermId) -> Option<TripleTermRow> {
        self.triple_analytics.get(id).map(|a| a.triple_term.clone())
    }

    pub fn predicate_object(&self, key: &PairKey) -> Option<PairRow> {
        self.predicate_objects.get(key).and_then(|a| a.row(*key))
    }

    pub fn subject_predicate(&self, key: &PairKey) -> Option<PairRow> {
        self.subject_predicates.get(key).and_then(|a| a.row(*key))
    }

    /// Every derived table, in key order (analytics as of the last `refresh_analytics`).
    pub fn tables(&self) -> Tables {
        let mut t = Tables::default();
        for id in self.atoms.keys() {
            t.atom.extend(self.atom(id).map(|r| (*id, r)));
        }
        for id in self.triples.keys() {
            t.triple.extend(self.triple(id).map(|r| (*id, r)));
        }
        for key in self.positions.keys() {
            t.position.extend(self.position(key).map(|r| (*key, r)));
        }
        for (id, term) in &self.terms {
            for (curve, _) in &term.vaults {
                let key = (*id, *curve);
                t.vault.extend(self.vault(&key).map(|r| (key, r)));
            }
            t.term.extend(self.term(id).map(|r| (*id, r)));
        }
        for id in self.triple_analytics.keys() {
            for row in self.triple_vaults(id) {
                t.triple_vault.insert((row.term_id, row.curve_id), row);
            }
            t.triple_term.extend(self.triple_term(id).map(|r| (*id, r)));
        }
        for key in self.predicate_objects.keys() {
            t.predicate_object
                .extend(self.predicate_object(key).map(|r| (*key, r)));
        }
        for key in self.subject_predicates.keys() {
            t.subject_predicate
                .extend(self.subject_predicate(key).map(|r| (*key, r)));
        }
        t
    }
}
