-- Reservations: the worst-case cost of a model call held before the call is made (two-phase).
--
-- A reservation is a linked chain of pending ledger transfers (tokens from `acquired`, then
-- `alloc`, then µCR from the wallet, each into `spent`) with a timeout: pending debits count
-- against the balances they would draw on. Settling posts the real usage (for at most what was
-- held; the rest is released) and records it as a usage event; releasing voids the chain; an
-- unsettled reservation expires at its timeout (the ledger's expiry job voids the chain, and
-- from `expires_at` on it holds nothing against any budget).
--
-- Written only under the org's row lock, like usage, so hard budgets count held amounts
-- exactly. `state` is `pending`, `settled` or `released`; a pending one past `expires_at` is
-- expired.
CREATE TABLE reservations (
    org_id               BLOB NOT NULL REFERENCES orgs (id),
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
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL CHECK (expires_at > created_at),
    user_id              BLOB,
    api_key_id           BLOB,
    task                 TEXT,
    conversation         TEXT,
    fingerprint          BLOB NOT NULL CHECK (length(fingerprint) = 32),
    transfer_ids         TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('pending', 'settled', 'released')),
    resolved_at          INTEGER,
    usage_event_id       BLOB,
    PRIMARY KEY (org_id, id),
    CHECK ((state = 'pending') = (resolved_at IS NULL)),
    CHECK ((state = 'settled') = (usage_event_id IS NOT NULL))
) STRICT;
CREATE INDEX reservations_created ON reservations (org_id, created_at, id);
CREATE INDEX reservations_pending ON reservations (org_id, expires_at) WHERE state = 'pending';

-- What a reservation holds against each budget period it counts in (its worst-case cost).
CREATE TABLE reservation_budgets (
    org_id         BLOB NOT NULL,
    reservation_id BLOB NOT NULL,
    budget_id      BLOB NOT NULL REFERENCES budgets (id),
    period_start   INTEGER NOT NULL,
    amount_micro_cr INTEGER NOT NULL CHECK (amount_micro_cr >= 0),
    PRIMARY KEY (org_id, reservation_id, budget_id),
    FOREIGN KEY (org_id, reservation_id) REFERENCES reservations (org_id, id)
) STRICT;
CREATE INDEX reservation_budgets_budget ON reservation_budgets (budget_id, period_start);
