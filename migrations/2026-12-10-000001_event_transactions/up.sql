-- The identity probe's index (issue 14). Every transaction the event log holds an event of, keyed
-- by the first 8 bytes of its hash read as a big-endian signed integer. A batch asks this one
-- compact index whether each of its transactions may be stored, and reads the six event tables
-- only for the few that may (a redelivery, a conflict, a transaction cut by a batch boundary),
-- instead of descending all six primary keys for every transaction of every batch — the probe
-- that grew with the history.
--
-- A superset: a key whose events a reorg moved out, or whose generic event PostgreSQL refused,
-- stays, and two transactions may share a key; either costs one needless read of the event
-- tables, never a wrong answer. What must hold is that every stored event's transaction has its
-- key here: the batch transaction writes it with the event.
CREATE TABLE event_transactions (
    hash_prefix BIGINT PRIMARY KEY
);

-- The keys of the events already stored are added by the first writer of this version, under its
-- lease, before its first batch (store::prior::backfill_transaction_keys): a writer of an older
-- version may still hold the lease, and write events without keys, while this migration runs.
CREATE TABLE event_transactions_backfill (
    pending BOOLEAN PRIMARY KEY
);
INSERT INTO event_transactions_backfill (pending) VALUES (true);
