-- The model catalog and its dated prices. A price row holds one price schedule entry as JSON
-- (decimal strings in USD per 1M tokens, with long-context tiers; credex-pricing parses it) and
-- the instant it takes effect. Rows are never deleted, and a row is changed only before it
-- takes effect, so the price of any past instant never changes. Org prices are an org's
-- custom prices; they win over the catalog's while one is in force.

CREATE TABLE models (
    id             TEXT PRIMARY KEY,                  -- lowercase
    provider       TEXT NOT NULL,
    class          TEXT NOT NULL,
    context_window BIGINT CHECK (context_window > 0),      -- tokens; unknown for some models
    source         TEXT NOT NULL CHECK (source IN ('builtin', 'admin', 'import')),
    created_at     BIGINT NOT NULL
);

-- Other names of a model. An alias is never a model's id (the store checks).
CREATE TABLE model_aliases (
    alias    TEXT PRIMARY KEY,
    model_id TEXT NOT NULL REFERENCES models (id)
);
CREATE INDEX model_aliases_model ON model_aliases (model_id);

CREATE TABLE model_prices (
    model_id       TEXT NOT NULL REFERENCES models (id),
    effective_from BIGINT NOT NULL,
    price          TEXT NOT NULL,
    recorded_at    BIGINT NOT NULL,
    recorded_by    UUID,                             -- the admin; none for the built-in catalog
    PRIMARY KEY (model_id, effective_from)
);

CREATE TABLE org_model_prices (
    org_id         UUID NOT NULL REFERENCES orgs (id),
    model_id       TEXT NOT NULL REFERENCES models (id),
    effective_from BIGINT NOT NULL,
    price          TEXT NOT NULL,
    recorded_at    BIGINT NOT NULL,
    recorded_by    UUID,
    PRIMARY KEY (org_id, model_id, effective_from)
);
