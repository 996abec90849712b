-- Secrets every process of one deployment must share, made once by whichever process starts
-- first (for example the key that signs access tokens, when none is configured).
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
