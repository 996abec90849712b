-- Fraud review, price alerts and the market's selling policy.
--
-- A review flag says why an org's trading needs an admin's look (selling most of its allotment
-- cycle after cycle with little use, repeated trades with the same org, a cluster of new orgs
-- sharing an e-mail domain or an address block). An org with an open flag cannot trade until
-- an admin clears it. A flag is raised once per (org, kind, subject): cleared, it stays cleared.
CREATE TABLE review_flags (
    id         UUID PRIMARY KEY,
    org_id     UUID NOT NULL REFERENCES orgs (id),
    kind       TEXT NOT NULL CHECK (kind IN ('sells_allotment', 'repeated_counterparty',
                                             'shared_email_domain', 'shared_address_block')),
    subject    TEXT NOT NULL,                     -- what it is about: a cycle, an org, a domain
    reason     TEXT NOT NULL,                     -- the explanation shown to admins and the org
    details    TEXT NOT NULL,                     -- JSON: the figures behind it
    raised_at  BIGINT NOT NULL,
    cleared_at BIGINT,
    cleared_by UUID REFERENCES users (id),
    note       TEXT,                              -- the admin's note when clearing
    UNIQUE (org_id, kind, subject)
);
CREATE INDEX review_flags_open ON review_flags (org_id) WHERE cleared_at IS NULL;
CREATE INDEX review_flags_raised ON review_flags (raised_at);

-- The address blocks (IPv4 /24, IPv6 /48) an org's members signed in from, first and last seen.
CREATE TABLE org_addresses (
    org_id     UUID NOT NULL REFERENCES orgs (id),
    block      TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    PRIMARY KEY (org_id, block)
);
CREATE INDEX org_addresses_block ON org_addresses (block);

-- An org's request to be told when a market's best price falls to a level or below: by e-mail
-- or by a signed webhook, once (then it is spent), unless cancelled first.
CREATE TABLE price_alerts (
    id                      UUID PRIMARY KEY,
    org_id                  UUID NOT NULL REFERENCES orgs (id),
    asset                   TEXT NOT NULL REFERENCES markets (asset),
    below_per_1m_micro_cr   BIGINT NOT NULL CHECK (below_per_1m_micro_cr > 0),
    channel                 TEXT NOT NULL CHECK (channel IN ('email', 'webhook')),
    target                  TEXT NOT NULL,    -- the address or the URL
    secret                  TEXT,             -- signs webhook deliveries
    created_at              BIGINT NOT NULL,
    state                   TEXT NOT NULL CHECK (state IN ('active', 'delivered', 'cancelled', 'failed')),
    triggered_at            BIGINT,
    triggered_price         BIGINT,
    attempts                BIGINT NOT NULL DEFAULT 0,
    last_error              TEXT,
    next_attempt_at         BIGINT,
    finished_at             BIGINT,
    CHECK ((channel = 'webhook') = (secret IS NOT NULL))
);
CREATE INDEX price_alerts_org ON price_alerts (org_id, created_at);
CREATE INDEX price_alerts_active ON price_alerts (asset) WHERE state = 'active';

-- Who may sell on the market (verification, age, plan, cap), as admins set it: one row, read
-- by every market transaction; none means the configuration's defaults.
CREATE TABLE market_policy (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    policy     TEXT NOT NULL,                     -- JSON
    updated_at BIGINT NOT NULL,
    updated_by UUID REFERENCES users (id)
);
