-- Issue 14: the state the fold continues from lives in the base rows, so the service loads only
-- the keys a batch touches instead of folding the whole event log at every start.
--
-- position: the chain order (block, log index, transaction hash) of the key's oldest and newest
-- event; vault: that of its newest SharePriceChanged (NULL while there is none) and of its newest
-- event of any kind (the one `vault_type` is from); term: what its type is derived from.
-- Tables, columns and indexes only; every value is computed by the fold in Rust.
ALTER TABLE position
    ADD COLUMN first_block_number     BIGINT,
    ADD COLUMN first_log_index        BIGINT,
    ADD COLUMN first_transaction_hash TEXT,
    ADD COLUMN last_block_number      BIGINT,
    ADD COLUMN last_log_index         BIGINT,
    ADD COLUMN last_transaction_hash  TEXT;
ALTER TABLE vault
    ADD COLUMN price_block_number     BIGINT,
    ADD COLUMN price_log_index        BIGINT,
    ADD COLUMN price_transaction_hash TEXT,
    ADD COLUMN type_block_number      BIGINT,
    ADD COLUMN type_log_index         BIGINT,
    ADD COLUMN type_transaction_hash  TEXT;
ALTER TABLE term
    ADD COLUMN is_atom    BOOLEAN,
    ADD COLUMN is_triple  BOOLEAN,
    ADD COLUMN counter_of TEXT;

-- Rows written before this migration lack those columns: the service rebuilds the base tables
-- once from the event log (the `replay` fold) before it writes, and then deletes this row.
CREATE TABLE fold_upgrade (
    pending BOOLEAN PRIMARY KEY
);
INSERT INTO fold_upgrade (pending) SELECT true WHERE EXISTS (SELECT 1 FROM term);

-- The batch's position lookup goes by the primary key; the old (term_id, curve_id) index let the
-- planner pick it for that lookup and filter a hot vault's positions one by one. With the account
-- in it, it still serves "the positions of a vault" and is exact for the lookup too.
DROP INDEX position_term;
CREATE INDEX position_vault ON position (term_id, curve_id, account_id);

-- A reorg reads and moves the events at or after its fork block: a B-tree on block_number finds
-- them in a few reads (the BRIN indexes were skipped by the planner for a seq scan of the whole
-- table, which grew with the history).
DROP INDEX atom_created_events_block;
DROP INDEX triple_created_events_block;
DROP INDEX deposited_events_block;
DROP INDEX redeemed_events_block;
DROP INDEX share_price_changed_events_block;
DROP INDEX generic_events_block;
CREATE INDEX atom_created_events_block ON atom_created_events (block_number);
CREATE INDEX triple_created_events_block ON triple_created_events (block_number);
CREATE INDEX deposited_events_block ON deposited_events (block_number);
CREATE INDEX redeemed_events_block ON redeemed_events (block_number);
CREATE INDEX share_price_changed_events_block ON share_price_changed_events (block_number);
CREATE INDEX generic_events_block ON generic_events (block_number);

-- A reorg recomputes only the keys its orphaned events touched, from their remaining events:
-- every event of a touched position, the newest event of each kind of a touched vault, the
-- newest creation of a touched atom or triple. These indexes make each of those a few reads.
CREATE INDEX deposited_events_position ON deposited_events (term_id, receiver, curve_id);
CREATE INDEX redeemed_events_position ON redeemed_events (term_id, receiver, curve_id);
CREATE INDEX deposited_events_vault ON deposited_events (term_id, curve_id, block_number, log_index);
CREATE INDEX redeemed_events_vault ON redeemed_events (term_id, curve_id, block_number, log_index);
CREATE INDEX share_price_changed_events_vault ON share_price_changed_events (term_id, curve_id, block_number, log_index);
CREATE INDEX atom_created_events_term ON atom_created_events (term_id, block_number, log_index);
CREATE INDEX triple_created_events_term ON triple_created_events (term_id, block_number, log_index);
