-- Identity: orgs (tenants), users, memberships, refresh-token families and tokens, API keys and
-- the audit log. Times are microseconds since the Unix epoch (UTC), as in the ledger. Secrets
-- are never stored: passwords as PHC strings (argon2id), tokens and API keys as SHA-256 hashes.

CREATE TABLE orgs (
    id                 UUID PRIMARY KEY,
    name               TEXT NOT NULL,
    plan               TEXT NOT NULL CHECK (plan IN ('free', 'teams', 'enterprise')),
    verification_level SMALLINT NOT NULL CHECK (verification_level BETWEEN 0 AND 3),
    frozen             BOOLEAN NOT NULL,
    created_at         BIGINT NOT NULL
);

-- E-mail addresses are stored trimmed and lowercased, so this is a case-insensitive key.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin      BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE memberships (
    org_id  UUID NOT NULL REFERENCES orgs (id),
    user_id UUID NOT NULL REFERENCES users (id),
    role    TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- A family is one sign-in: every refresh token rotated from its first one. Revoking it (logout,
-- or reuse of a rotated token) is final: no token of the family rotates again, and none is
-- issued into it. Lock order: the family row, then its tokens.
CREATE TABLE refresh_token_families (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX refresh_token_families_user ON refresh_token_families (user_id);

-- `replaced_by` names the token this one was rotated into (no foreign key: it is set just
-- before that token is inserted, in the same transaction). A token is live while it is not
-- replaced, its family is not revoked and it has not expired.
CREATE TABLE refresh_tokens (
    id          UUID PRIMARY KEY,
    family_id   UUID NOT NULL REFERENCES refresh_token_families (id),
    token_hash  BYTEA NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    replaced_by UUID
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- API keys: `prefix` is the public part of a key, by which it is found; `secret_hash` the
-- SHA-256 of the whole key. Revoked keys stay, with `revoked_at`.
CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    org_id       UUID NOT NULL REFERENCES orgs (id),
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL UNIQUE,
    secret_hash  BYTEA NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes       TEXT NOT NULL,                      -- space-separated: read usage:write market:trade
    created_by   UUID NOT NULL REFERENCES users (id),
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_at, id);

-- The audit log, read in (at, id) order. Append-only: the triggers below refuse every update
-- and delete. No foreign keys: an entry records what was done or attempted, whatever exists.
CREATE TABLE audit_log (
    id       UUID PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor_id UUID,
    org_id   UUID,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    details  TEXT NOT NULL                           -- JSON, at most 4 KiB
);
CREATE INDEX audit_log_at ON audit_log (at, id);
CREATE INDEX audit_log_action ON audit_log (action, at, id);
CREATE INDEX audit_log_actor ON audit_log (actor_id, at, id);
CREATE INDEX audit_log_org ON audit_log (org_id, at, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
