-- Dead letters (SPEC §4): every entry or item the service refused, recorded in the transaction
-- of the batch that refused it, then published once to `<source stream>:dlq`. The unique key
-- makes an entry redelivered after its batch committed (a crash before XACK) add nothing; the
-- service marks a row published once its stream entry exists. Operators can query this table.
CREATE TABLE dead_letters (
    id               BIGSERIAL   PRIMARY KEY,
    consumer_group   TEXT        NOT NULL,
    source_stream    TEXT        NOT NULL,
    source_id        TEXT        NOT NULL,
    -- The item's index in the envelope's event_data; -1 for the whole entry.
    item_index       INTEGER     NOT NULL,
    -- The entry's payload, or an envelope holding just the refused item.
    payload          BYTEA       NOT NULL,
    error            TEXT        NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL,
    published_at     TIMESTAMPTZ,
    UNIQUE (consumer_group, source_stream, source_id, item_index)
);

CREATE INDEX dead_letters_unpublished ON dead_letters (id) WHERE published_at IS NULL;
