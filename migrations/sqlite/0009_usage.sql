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
    org_id               BLOB NOT NULL,
    id                   BLOB NOT NULL,
    model                TEXT NOT NULL,
    class                TEXT NOT NULL,
    asset                TEXT NOT NULL,
    input_tokens         INTEGER NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens  INTEGER NOT NULL CHECK (cached_input_tokens >= 0),
    cache_write_tokens   INTEGER NOT NULL CHECK (cache_write_tokens >= 0),
    output_tokens        INTEGER NOT NULL CHECK (output_tokens >= 0),
    cost_micro_cr        INTEGER NOT NULL CHECK (cost_micro_cr >= 0),
    from_acquired        INTEGER NOT NULL CHECK (from_acquired >= 0),
    from_alloc           INTEGER NOT NULL CHECK (from_alloc >= 0),
    from_wallet_micro_cr INTEGER NOT NULL CHECK (from_wallet_micro_cr >= 0),
    price_source         TEXT NOT NULL CHECK (price_source IN ('catalog', 'org')),
    occurred_at          INTEGER NOT NULL,
    recorded_at          INTEGER NOT NULL,
    user_id              BLOB,
    api_key_id           BLOB,
    task                 TEXT,
    conversation         TEXT,
    metadata             TEXT,
    fingerprint          BLOB NOT NULL CHECK (length(fingerprint) = 32),
    transfer_ids         TEXT NOT NULL,
    PRIMARY KEY (org_id, id)
) STRICT;
CREATE INDEX usage_events_occurred ON usage_events (org_id, occurred_at, id);
