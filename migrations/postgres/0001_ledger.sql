-- The ledger: assets, accounts, striped balances, the journal, pending transfers and failures.
-- Times are microseconds since the Unix epoch (UTC); amounts are integers in the asset's
-- smallest unit. Codes and kinds are the stable numbers of the credex-ledger crate.

CREATE TABLE assets (
    code       TEXT PRIMARY KEY,
    class      SMALLINT NOT NULL CHECK (class IN (0, 1)),   -- 0 credit, 1 token
    closed_at  BIGINT,                                       -- null while the cycle is open
    created_at BIGINT NOT NULL
);

CREATE TABLE accounts (
    id         UUID PRIMARY KEY,
    asset      TEXT NOT NULL REFERENCES assets (code),
    owner_org  UUID,                                         -- null: the provider
    kind       SMALLINT NOT NULL,
    stripes    SMALLINT NOT NULL CHECK (stripes BETWEEN 1 AND 16),
    created_at BIGINT NOT NULL
);

-- One account per owner, kind and asset.
CREATE UNIQUE INDEX accounts_owner_kind_asset
    ON accounts (asset, kind, COALESCE(owner_org, '00000000-0000-0000-0000-000000000000'::uuid));

-- Each account's totals, split over `stripes` rows so that hot accounts take concurrent
-- updates. A single stripe may hold a negative pending total; the sums never do.
CREATE TABLE account_balances (
    account_id      UUID NOT NULL REFERENCES accounts (id),
    slot            SMALLINT NOT NULL,
    debits_pending  BIGINT NOT NULL DEFAULT 0,
    debits_posted   BIGINT NOT NULL DEFAULT 0,
    credits_pending BIGINT NOT NULL DEFAULT 0,
    credits_posted  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, slot),
    -- Each stripe stays within ±(2^63 - 1) / 16, so the sum of an account's (at most 16)
    -- stripes never overflows. The store rebalances stripes when a blind update would cross it.
    CHECK (debits_pending BETWEEN -576460752303423487 AND 576460752303423487),
    CHECK (debits_posted BETWEEN -576460752303423487 AND 576460752303423487),
    CHECK (credits_pending BETWEEN -576460752303423487 AND 576460752303423487),
    CHECK (credits_posted BETWEEN -576460752303423487 AND 576460752303423487)
)
-- Half-empty pages leave room for HOT updates: a balance update then touches no index.
WITH (fillfactor = 50);

-- The journal. Rows are never updated or deleted. Its account columns carry no foreign keys on
-- purpose: a foreign-key check is a query per inserted row that share-locks the account, and
-- every transfer names a hot provider account. The engine refuses unknown accounts, accounts
-- are never deleted, and `credex check` counts journal rows naming a missing account.
CREATE TABLE transfers (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY,
    id                UUID PRIMARY KEY,
    kind              SMALLINT NOT NULL CHECK (kind BETWEEN 0 AND 3),
    debit_account_id  UUID NOT NULL,
    credit_account_id UUID NOT NULL,
    asset             TEXT NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount > 0),
    pending_id        UUID,
    code              SMALLINT NOT NULL,
    timeout_seconds   BIGINT,
    metadata          TEXT NOT NULL,
    linked            BOOLEAN NOT NULL,
    timestamp         BIGINT NOT NULL,
    CHECK (debit_account_id <> credit_account_id)
);
CREATE UNIQUE INDEX transfers_seq ON transfers (seq);
CREATE INDEX transfers_debit ON transfers (debit_account_id, timestamp, seq);
CREATE INDEX transfers_credit ON transfers (credit_account_id, timestamp, seq);

-- Pending transfers and their one resolution (posted, voided or expired).
CREATE TABLE pending_transfers (
    id                UUID PRIMARY KEY,   -- the pending entry's id in `transfers`
    debit_account_id  UUID NOT NULL,
    credit_account_id UUID NOT NULL,
    asset             TEXT NOT NULL,
    amount            BIGINT NOT NULL,
    code              SMALLINT NOT NULL,
    timestamp         BIGINT NOT NULL,
    expires_at        BIGINT,
    state             SMALLINT NOT NULL CHECK (state BETWEEN 0 AND 3),
    resolved_at       BIGINT,
    resolved_by       UUID
);
CREATE INDEX pending_transfers_due ON pending_transfers (expires_at) WHERE state = 0;
CREATE INDEX pending_transfers_debit ON pending_transfers (debit_account_id, timestamp);
CREATE INDEX pending_transfers_credit ON pending_transfers (credit_account_id, timestamp);

-- Ids of transfers that failed against the ledger's state: a failed id stays failed.
CREATE TABLE transfer_failures (
    id        UUID PRIMARY KEY,
    error     TEXT NOT NULL,
    timestamp BIGINT NOT NULL
);
