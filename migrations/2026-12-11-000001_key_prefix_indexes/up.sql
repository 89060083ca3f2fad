-- The event log's key indexes (issue 14), on eight-byte integers instead of the ids' text.
--
-- A reorg reads the remaining events of the keys its orphaned events touched, and `replay` and
-- `verify` read the event log by key range; the indexes of `fold_continuation` served both,
-- keyed by the 66-character term id (and the 42-character receiver): about 100 bytes an entry,
-- inserted at a random place for every event. At 10 M events they no longer fit the memory of a
-- small machine, and keeping them cost the sync about a fifth of its rate.
--
-- These are keyed by the first 60 bits of the id (and of the receiver), as a positive BIGINT in
-- the ids' order (store::tables::events::key_prefix_sql; the same in Rust, key_prefix): 16 to 24
-- bytes an entry (the event log's indexes at 10 M events: 1,745 MiB instead of 2,683). A query
-- names the expression, to use the index, and the whole key, since two ids may share a prefix.
-- The expression is immutable, and every stored id and address is checked hex (the decoder
-- refuses any other). On a database of 10 M events this migration takes about 13 s.
DROP INDEX deposited_events_position;
DROP INDEX redeemed_events_position;
DROP INDEX deposited_events_vault;
DROP INDEX redeemed_events_vault;
DROP INDEX share_price_changed_events_vault;
DROP INDEX atom_created_events_term;
DROP INDEX triple_created_events_term;

-- Every event of a position: its term and its receiver.
CREATE INDEX deposited_events_position ON deposited_events
    ((('x' || substr(term_id, 3, 15))::bit(60)::bigint), (('x' || substr(receiver, 3, 15))::bit(60)::bigint));
CREATE INDEX redeemed_events_position ON redeemed_events
    ((('x' || substr(term_id, 3, 15))::bit(60)::bigint), (('x' || substr(receiver, 3, 15))::bit(60)::bigint));
-- The newest event of a vault (its curve is checked on the row), and a key range.
CREATE INDEX deposited_events_vault ON deposited_events
    ((('x' || substr(term_id, 3, 15))::bit(60)::bigint), block_number);
CREATE INDEX redeemed_events_vault ON redeemed_events
    ((('x' || substr(term_id, 3, 15))::bit(60)::bigint), block_number);
CREATE INDEX share_price_changed_events_vault ON share_price_changed_events
    ((('x' || substr(term_id, 3, 15))::bit(60)::bigint), block_number);
-- The newest creation of an atom or a triple (a term has one, or a few redelivered), and a key
-- range.
CREATE INDEX atom_created_events_term ON atom_created_events
    ((('x' || substr(term_id, 3, 15))::bit(60)::bigint));
CREATE INDEX triple_created_events_term ON triple_created_events
    ((('x' || substr(term_id, 3, 15))::bit(60)::bigint));
