-- The event log, the derived tables of SPEC §2, and the consumer's bookkeeping.
-- Tables and indexes only: every derivation is computed in Rust (SPEC §0).
-- ids: '0x' + 64 lowercase hex; addresses: EIP-55; uint256: NUMERIC(78,0).

-- ---- event log: primary key = event identity ----------------------------------------------

CREATE TABLE atom_created_events (
    transaction_hash  TEXT        NOT NULL,
    log_index         BIGINT      NOT NULL,
    block_number      BIGINT      NOT NULL,
    block_hash        TEXT,
    transaction_index BIGINT,
    block_timestamp   TIMESTAMPTZ,
    address           TEXT,
    network           TEXT,
    chain_id          BIGINT,
    creator           TEXT        NOT NULL,
    term_id           TEXT        NOT NULL,
    atom_data         BYTEA       NOT NULL,
    atom_wallet       TEXT        NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);

CREATE TABLE triple_created_events (
    transaction_hash  TEXT        NOT NULL,
    log_index         BIGINT      NOT NULL,
    block_number      BIGINT      NOT NULL,
    block_hash        TEXT,
    transaction_index BIGINT,
    block_timestamp   TIMESTAMPTZ,
    address           TEXT,
    network           TEXT,
    chain_id          BIGINT,
    creator           TEXT        NOT NULL,
    term_id           TEXT        NOT NULL,
    subject_id        TEXT        NOT NULL,
    predicate_id      TEXT        NOT NULL,
    object_id         TEXT        NOT NULL,
    counter_term_id   TEXT        NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);

CREATE TABLE deposited_events (
    transaction_hash  TEXT          NOT NULL,
    log_index         BIGINT        NOT NULL,
    block_number      BIGINT        NOT NULL,
    block_hash        TEXT,
    transaction_index BIGINT,
    block_timestamp   TIMESTAMPTZ,
    address           TEXT,
    network           TEXT,
    chain_id          BIGINT,
    sender            TEXT          NOT NULL,
    receiver          TEXT          NOT NULL,
    term_id           TEXT          NOT NULL,
    curve_id          NUMERIC(78,0) NOT NULL,
    assets            NUMERIC(78,0) NOT NULL,
    assets_after_fees NUMERIC(78,0) NOT NULL,
    shares            NUMERIC(78,0) NOT NULL,
    total_shares      NUMERIC(78,0) NOT NULL,
    vault_type        TEXT          NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);

CREATE TABLE redeemed_events (
    transaction_hash  TEXT          NOT NULL,
    log_index         BIGINT        NOT NULL,
    block_number      BIGINT        NOT NULL,
    block_hash        TEXT,
    transaction_index BIGINT,
    block_timestamp   TIMESTAMPTZ,
    address           TEXT,
    network           TEXT,
    chain_id          BIGINT,
    sender            TEXT          NOT NULL,
    receiver          TEXT          NOT NULL,
    term_id           TEXT          NOT NULL,
    curve_id          NUMERIC(78,0) NOT NULL,
    shares            NUMERIC(78,0) NOT NULL,
    total_shares      NUMERIC(78,0) NOT NULL,
    assets            NUMERIC(78,0) NOT NULL,
    fees              NUMERIC(78,0) NOT NULL,
    vault_type        TEXT          NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);

CREATE TABLE share_price_changed_events (
    transaction_hash  TEXT          NOT NULL,
    log_index         BIGINT        NOT NULL,
    block_number      BIGINT        NOT NULL,
    block_hash        TEXT,
    transaction_index BIGINT,
    block_timestamp   TIMESTAMPTZ,
    address           TEXT,
    network           TEXT,
    chain_id          BIGINT,
    term_id           TEXT          NOT NULL,
    curve_id          NUMERIC(78,0) NOT NULL,
    share_price       NUMERIC(78,0) NOT NULL,
    total_assets      NUMERIC(78,0) NOT NULL,
    total_shares      NUMERIC(78,0) NOT NULL,
    vault_type        TEXT          NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);

CREATE TABLE generic_events (
    transaction_hash  TEXT        NOT NULL,
    log_index         BIGINT      NOT NULL,
    block_number      BIGINT      NOT NULL,
    block_hash        TEXT,
    transaction_index BIGINT,
    block_timestamp   TIMESTAMPTZ,
    address           TEXT,
    network           TEXT,
    chain_id          BIGINT,
    event_name        TEXT        NOT NULL,
    payload           JSONB       NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);

-- Reorgs delete by block_number. Blocks arrive nearly in order, so a BRIN index (a few pages,
-- almost free to maintain) serves the range scan.
CREATE INDEX atom_created_events_block ON atom_created_events USING brin (block_number);
CREATE INDEX triple_created_events_block ON triple_created_events USING brin (block_number);
CREATE INDEX deposited_events_block ON deposited_events USING brin (block_number);
CREATE INDEX redeemed_events_block ON redeemed_events USING brin (block_number);
CREATE INDEX share_price_changed_events_block ON share_price_changed_events USING brin (block_number);
CREATE INDEX generic_events_block ON generic_events USING brin (block_number);

-- ---- base state (committed with the consumer's progress) ----------------------------------
-- Derived rows are rewritten often: fillfactor 70 leaves room on each page for HOT updates.

CREATE TABLE atom (
    term_id          TEXT PRIMARY KEY,
    creator_id       TEXT        NOT NULL,
    wallet_id        TEXT        NOT NULL,
    data             TEXT,
    raw_data         BYTEA       NOT NULL,
    block_number     BIGINT      NOT NULL,
    log_index        BIGINT      NOT NULL,
    transaction_hash TEXT        NOT NULL,
    created_at       TIMESTAMPTZ
) WITH (fillfactor = 70);

CREATE TABLE triple (
    term_id          TEXT PRIMARY KEY,
    counter_term_id  TEXT        NOT NULL,
    creator_id       TEXT        NOT NULL,
    subject_id       TEXT        NOT NULL,
    predicate_id     TEXT        NOT NULL,
    object_id        TEXT        NOT NULL,
    block_number     BIGINT      NOT NULL,
    log_index        BIGINT      NOT NULL,
    transaction_hash TEXT        NOT NULL,
    created_at       TIMESTAMPTZ
) WITH (fillfactor = 70);
CREATE INDEX triple_counter_term ON triple (counter_term_id);
CREATE INDEX triple_subject_predicate ON triple (subject_id, predicate_id);
CREATE INDEX triple_predicate_object ON triple (predicate_id, object_id);

CREATE TABLE position (
    account_id                            TEXT          NOT NULL,
    term_id                               TEXT          NOT NULL,
    curve_id                              NUMERIC(78,0) NOT NULL,
    shares                                NUMERIC(78,0) NOT NULL,
    total_deposit_assets_after_total_fees NUMERIC(78,0) NOT NULL,
    total_redeem_assets_for_receiver      NUMERIC(78,0) NOT NULL,
    created_at                            TIMESTAMPTZ,
    updated_at                            TIMESTAMPTZ,
    PRIMARY KEY (account_id, term_id, curve_id)
) WITH (fillfactor = 70);
CREATE INDEX position_term ON position (term_id, curve_id);

CREATE TABLE vault (
    term_id             TEXT          NOT NULL,
    curve_id            NUMERIC(78,0) NOT NULL,
    total_shares        NUMERIC(78,0) NOT NULL,
    current_share_price NUMERIC(78,0) NOT NULL,
    total_assets        NUMERIC(78,0) NOT NULL,
    market_cap          NUMERIC(78,0) NOT NULL,
    position_count      BIGINT        NOT NULL,
    vault_type          TEXT          NOT NULL,
    PRIMARY KEY (term_id, curve_id)
) WITH (fillfactor = 70);

CREATE TABLE term (
    id               TEXT PRIMARY KEY,
    type             TEXT          NOT NULL,
    atom_id          TEXT,
    triple_id        TEXT,
    total_assets     NUMERIC(78,0) NOT NULL,
    total_market_cap NUMERIC(78,0) NOT NULL
) WITH (fillfactor = 70);

-- ---- analytics (eventually consistent, written by the analytics consumer) ------------------

CREATE TABLE triple_vault (
    term_id         TEXT          NOT NULL,
    counter_term_id TEXT          NOT NULL,
    curve_id        NUMERIC(78,0) NOT NULL,
    total_shares    NUMERIC(78,0) NOT NULL,
    total_assets    NUMERIC(78,0) NOT NULL,
    position_count  BIGINT        NOT NULL,
    market_cap      NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (term_id, counter_term_id, curve_id)
) WITH (fillfactor = 70);

CREATE TABLE triple_term (
    term_id              TEXT          NOT NULL,
    counter_term_id      TEXT          NOT NULL,
    total_assets         NUMERIC(78,0) NOT NULL,
    total_market_cap     NUMERIC(78,0) NOT NULL,
    total_position_count BIGINT        NOT NULL,
    PRIMARY KEY (term_id, counter_term_id)
) WITH (fillfactor = 70);

CREATE TABLE predicate_object (
    predicate_id         TEXT          NOT NULL,
    object_id            TEXT          NOT NULL,
    triple_count         BIGINT        NOT NULL,
    total_position_count BIGINT        NOT NULL,
    total_market_cap     NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (predicate_id, object_id)
) WITH (fillfactor = 70);

CREATE TABLE subject_predicate (
    subject_id           TEXT          NOT NULL,
    predicate_id         TEXT          NOT NULL,
    triple_count         BIGINT        NOT NULL,
    total_position_count BIGINT        NOT NULL,
    total_market_cap     NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (subject_id, predicate_id)
) WITH (fillfactor = 70);

-- ---- bookkeeping ---------------------------------------------------------------------------

-- The last stream entry committed per (consumer group, stream), written in each batch's transaction.
CREATE TABLE sync_progress (
    consumer_group TEXT        NOT NULL,
    stream         TEXT        NOT NULL,
    last_entry_id  TEXT        NOT NULL,
    entries_total  BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_group, stream)
);

-- Transactional outbox: term ids to publish to the term_updates stream, written in the batch's
-- transaction and deleted once published, so a crash between commit and publish loses nothing.
CREATE TABLE term_update_outbox (
    id       BIGSERIAL PRIMARY KEY,
    term_ids TEXT[] NOT NULL
);
