-- Idempotency keys of requests that move value. A request's key is unique within its scope
-- (the org it acts on, or the platform); its fingerprint (SHA-256 of method, path and body)
-- tells a replay from a different request under the same key. While the first request runs
-- the row is in progress (state 0); then it holds the answer to replay (state 1). Rows are kept
-- for at least 24 hours (the purge job removes older ones).
CREATE TABLE idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    state       INTEGER NOT NULL CHECK (state IN (0, 1)),
    status      INTEGER,
    body        TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
