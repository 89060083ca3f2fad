-- The writer lease (one row per consumer group): only the holder of the current token reads the
-- input streams and writes. Every batch transaction first re-checks and refreshes its row
-- (holder and token unchanged), so a transaction of an old holder cannot commit once a new
-- holder has taken the lease (the new holder bumped the token). Times are the server's clock.
CREATE TABLE writer_lease (
    consumer_group TEXT PRIMARY KEY,
    holder         TEXT        NOT NULL,
    token          BIGINT      NOT NULL,
    heartbeat_at   TIMESTAMPTZ NOT NULL
);
