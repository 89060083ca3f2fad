-- Reorgs (SPEC §5): the notices applied, and the events they took out of the event log.
-- Tables and indexes only: the move and the rebuild of derived rows are done by the service.

-- One row per reorg notice applied. The unique key makes a notice redelivered after its
-- transaction committed (a crash before XACK) a no-op.
CREATE TABLE reorgs (
    id             BIGSERIAL PRIMARY KEY,
    consumer_group TEXT        NOT NULL,
    stream         TEXT        NOT NULL,
    entry_id       TEXT        NOT NULL,
    -- NULL: the notice named no network, so every network was rolled back.
    network        TEXT,
    fork_block     BIGINT      NOT NULL,
    depth          BIGINT,
    events_moved   BIGINT      NOT NULL,
    applied_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (consumer_group, stream, entry_id)
);

-- Audit of orphaned events: each row is an event removed from its event table by a reorg, with
-- the whole stored row as JSONB. An identity may appear once per reorg (orphaned, republished,
-- orphaned again).
CREATE TABLE reorged_events (
    reorg_id         BIGINT      NOT NULL REFERENCES reorgs (id),
    event_table      TEXT        NOT NULL,
    transaction_hash TEXT        NOT NULL,
    log_index        BIGINT      NOT NULL,
    block_number     BIGINT      NOT NULL,
    network          TEXT,
    fork_block       BIGINT      NOT NULL,
    reorged_at       TIMESTAMPTZ NOT NULL,
    event_row        JSONB       NOT NULL,
    PRIMARY KEY (reorg_id, transaction_hash, log_index)
);
-- "Was this event ever orphaned?"
CREATE INDEX reorged_events_identity ON reorged_events (transaction_hash, log_index);
