//! Recomputing the keys a reorg touched (pure): take out what the orphaned events gave them
//! (`State::retract`), replay the remaining events that decide them, settle
//! ([`recompute_keys`]). The fold's own code, so a reorg gives what the fold of the remaining
//! events gives.

use super::*;

impl State {
    /// Reorg, step 1: with the stored rows of the keys the orphaned events touched loaded
    /// ([`seed`](Self::seed)), takes out of them what events of those keys contributed: the
    /// touched positions (and their share of their vault's `position_count`), the touched
    /// vaults' newest fields, the touched atoms and triples and the term flags they set.
    /// Step 2 replays the remaining events that decide those fields ([`apply`](Self::apply) for
    /// every remaining event of a touched position, the newest SharePriceChanged of a touched
    /// vault, the newest AtomCreated / TripleCreated of a touched atom / triple;
    /// [`note_vault_event`](Self::note_vault_event) for the newest Deposited and Redeemed of a
    /// touched vault); step 3 is [`settle`](Self::settle). The rows of `keys` are then those of
    /// the fold of the remaining events.
    pub fn retract(&mut self, keys: &Keys) {
        for key in &keys.positions {
            if let Some(p) = self.positions.remove(key) {
                if !p.shares.is_zero() {
                    if let Some(v) = self
                        .terms
                        .get_mut(&key.1)
                        .and_then(|t| t.vaults.iter_mut().find(|(c, _)| *c == key.2))
                    {
                        v.1.position_count -= 1;
                    }
                }
            }
        }
        for (term_id, curve) in &keys.vaults {
            if let Some((_, v)) = self
                .terms
                .get_mut(term_id)
                .and_then(|t| t.vaults.iter_mut().find(|(c, _)| c == curve))
            {
                v.price_at = None;
                v.total_shares = U256::zero();
                v.share_price = U256::zero();
                v.total_assets = U256::zero();
                v.type_at = NO_EVIDENCE;
            }
        }
        for id in &keys.atoms {
            self.atoms.remove(id);
            if let Some(t) = self.terms.get_mut(id) {
                t.is_atom = false;
            }
        }
        for id in &keys.triples {
            self.triples.remove(id);
            if let Some(t) = self.terms.get_mut(id) {
                t.is_triple = false;
            }
            if let Some(t) = self.terms.get_mut(&counter_term_id(id)) {
                t.counter_of = None;
            }
        }
    }

    /// Reorg, step 2 for a Deposited or Redeemed that is not of a touched position: only its
    /// part in its vault's `vault_type` (the newest event of the key names it).
    pub fn note_vault_event(&mut self, event: &Event) {
        if let EventKind::Deposited {
            term_id,
            curve_id,
            vault_type,
            ..
        }
        | EventKind::Redeemed {
            term_id,
            curve_id,
            vault_type,
            ..
        }
        | EventKind::SharePriceChanged {
            term_id,
            curve_id,
            vault_type,
            ..
        } = &event.kind
        {
            self.terms.entry(*term_id).or_default().vault_mut(
                *curve_id,
                event.order(),
                *vault_type,
            );
        }
    }

    /// Reorg, step 3: drops the touched vaults no remaining event names, then the touched terms
    /// nothing names any more.
    pub fn settle(&mut self, keys: &Keys) {
        for (term_id, curve) in &keys.vaults {
            if let Some(t) = self.terms.get_mut(term_id) {
                t.vaults
                    .retain(|(c, v)| !(c == curve && v.type_at == NO_EVIDENCE));
            }
        }
        for id in &keys.terms {
            let unnamed = self.terms.get(id).is_some_and(|t| {
                !t.is_atom && !t.is_triple && t.counter_of.is_none() && t.vaults.is_empty()
            });
            if unnamed {
                self.terms.remove(id);
            }
        }
    }
}

/// The rows of `keys` once the events a reorg orphaned are gone (pure): their stored rows
/// (`prior`: every key of `keys`, terms with all their vaults), minus what the touched keys got
/// from events ([`State::retract`]), plus the remaining events that decide them — `decisive`:
/// every remaining event of each touched position, the newest SharePriceChanged of each touched
/// vault, the newest AtomCreated / TripleCreated of each touched atom / triple; `vault_events`:
/// the newest Deposited and Redeemed of each touched vault. What the fold of all remaining
/// events would give for those keys; a key missing from the result has no row any more.
pub fn recompute_keys(
    prior: BaseRows,
    keys: &Keys,
    decisive: &[Event],
    vault_events: &[Event],
) -> BaseRows {
    let mut state = State::base_only();
    state.seed(prior, 0);
    state.retract(keys);
    let mut changes = Changes::default();
    for e in decisive {
        state.apply(e, &mut changes);
    }
    for e in vault_events {
        state.note_vault_event(e);
    }
    state.settle(keys);
    BaseRows {
        atoms: keys.atoms.iter().filter_map(|k| state.atom(k)).collect(),
        triples: keys
            .triples
            .iter()
            .filter_map(|k| state.triple(k))
            .collect(),
        terms: keys.terms.iter().filter_map(|k| state.term(k)).collect(),
        vaults: keys.vaults.iter().filter_map(|k| state.vault(k)).collect(),
        positions: keys
            .positions
            .iter()
            .filter_map(|k| state.position(k))
            .collect(),
    }
}
