-- Usage: every model call an org reports, priced and charged once.
--
-- An event is identified by the org's own id for it: one row, and one charge, per (org, id). A
-- replay of the same event finds its row (the fingerprint is the event as first asked: the same
-- id with another body is refused). The charge's split is recorded with the event: tokens from
-- `acquired`, then from `alloc` of the model's class for the event's cycle, then µCR from the
-- wallet for the rest at the model's price; `transfer_ids` are its linked chain's transfers.
--
-- No foreign keys: this is the hottest insert path, every row is written by one statement of
-- the usage transaction that locked the org's row, and the org id comes from that lock.
CREATE TABLE usage_events (
    org_id               UUID NOT NULL,
    id                   UUID NOT NULL,
    model                TEXT NOT NULL,
    class                TEXT NOT NULL,
    asset                TEXT NOT NULL,
    input_tokens         BIGINT NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens  BIGINT NOT NULL CHECK (cached_input_tokens >= 0),
    cache_write_tokens   BIGINT NOT NULL CHECK (cache_write_tokens >= 0),
    output_tokens        BIGINT NOT NULL CHECK (output_tokens >= 0),
    cost_micro_cr        BIGINT NOT NULL CHECK (cost_micro_cr >= 0),
    from_acquired        BIGINT NOT NULL CHECK (from_acquired >= 0),
    from_alloc           BIGINT NOT NULL CHECK (from_alloc >= 0),
    from_wallet_micro_cr BIGINT NOT NULL CHECK (from_wallet_micro_cr >= 0),
    price_source         TEXT NOT NULL CHECK (price_source IN ('catalog', 'org')),
    occurred_at          BIGINT NOT NULL,
    recorded_at          BIGINT NOT NULL,
    user_id              UUID,
    api_key_id           UUID,
    task                 TEXT,
    conversation         TEXT,
    metadata             TEXT,
    fingerprint          BYTEA NOT NULL CHECK (octet_length(fingerprint) = 32),
    transfer_ids         TEXT NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX usage_events_occurred ON usage_events (org_id, occurred_at, id);
