-- The ledger: assets, accounts, striped balances, the journal, pending transfers and failures.
-- Times are microseconds since the Unix epoch (UTC); amounts are integers in the asset's
-- smallest unit. Codes and kinds are the stable numbers of the credex-ledger crate.
-- UUIDs are 16-byte blobs.

CREATE TABLE assets (
    code       TEXT PRIMARY KEY,
    class      INTEGER NOT NULL CHECK (class IN (0, 1)),
    closed_at  INTEGER,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE accounts (
    id         BLOB PRIMARY KEY,
    asset      TEXT NOT NULL REFERENCES assets (code),
    owner_org  BLOB,
    kind       INTEGER NOT NULL,
    stripes    INTEGER NOT NULL CHECK (stripes BETWEEN 1 AND 16),
    created_at INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX accounts_owner_kind_asset
    ON accounts (asset, kind, COALESCE(owner_org, zeroblob(16)));

CREATE TABLE account_balances (
    account_id      BLOB NOT NULL REFERENCES accounts (id),
    slot            INTEGER NOT NULL,
    debits_pending  INTEGER NOT NULL DEFAULT 0,
    debits_posted   INTEGER NOT NULL DEFAULT 0,
    credits_pending INTEGER NOT NULL DEFAULT 0,
    credits_posted  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, slot),
    -- Each stripe stays within ±(2^63 - 1) / 16, so the sum of an account's (at most 16)
    -- stripes never overflows. The store rebalances stripes when a blind update would cross it.
    CHECK (debits_pending BETWEEN -576460752303423487 AND 576460752303423487),
    CHECK (debits_posted BETWEEN -576460752303423487 AND 576460752303423487),
    CHECK (credits_pending BETWEEN -576460752303423487 AND 576460752303423487),
    CHECK (credits_posted BETWEEN -576460752303423487 AND 576460752303423487)
) STRICT, WITHOUT ROWID;

CREATE TABLE transfers (
    seq               INTEGER PRIMARY KEY,
    id                BLOB NOT NULL UNIQUE,
    kind              INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 3),
    debit_account_id  BLOB NOT NULL,
    credit_account_id BLOB NOT NULL,
    asset             TEXT NOT NULL,
    amount            INTEGER NOT NULL CHECK (amount > 0),
    pending_id        BLOB,
    code              INTEGER NOT NULL,
    timeout_seconds   INTEGER,
    metadata          TEXT NOT NULL,
    linked            INTEGER NOT NULL,
    timestamp         INTEGER NOT NULL,
    CHECK (debit_account_id <> credit_account_id)
) STRICT;
CREATE INDEX transfers_debit ON transfers (debit_account_id, timestamp, seq);
CREATE INDEX transfers_credit ON transfers (credit_account_id, timestamp, seq);

CREATE TABLE pending_transfers (
    id                BLOB PRIMARY KEY,   -- the pending entry's id in `transfers`
    debit_account_id  BLOB NOT NULL,
    credit_account_id BLOB NOT NULL,
    asset             TEXT NOT NULL,
    amount            INTEGER NOT NULL,
    code              INTEGER NOT NULL,
    timestamp         INTEGER NOT NULL,
    expires_at        INTEGER,
    state             INTEGER NOT NULL CHECK (state BETWEEN 0 AND 3),
    resolved_at       INTEGER,
    resolved_by       BLOB
) STRICT;
CREATE INDEX pending_transfers_due ON pending_transfers (expires_at) WHERE state = 0;
CREATE INDEX pending_transfers_debit ON pending_transfers (debit_account_id, timestamp);
CREATE INDEX pending_transfers_credit ON pending_transfers (credit_account_id, timestamp);

CREATE TABLE transfer_failures (
    id        BLOB PRIMARY KEY,
    error     TEXT NOT NULL,
    timestamp INTEGER NOT NULL
) STRICT;
