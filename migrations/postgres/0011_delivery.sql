-- Delivery of an org's notifications: webhooks it registers, a persistent queue of e-mails and
-- webhook posts retried with backoff, a log of every attempt, the budget alerts' outbox mark,
-- and scheduled report e-mails sent once per period.

-- A URL the org's events are POSTed to, signed with the secret (shown once, at creation).
CREATE TABLE webhooks (
    id          UUID PRIMARY KEY,
    org_id      UUID NOT NULL REFERENCES orgs (id),
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    description TEXT NOT NULL,
    events      TEXT NOT NULL,                -- JSON array of event types; [] means every type
    created_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);
CREATE INDEX webhooks_org ON webhooks (org_id, id) WHERE deleted_at IS NULL;

-- One message to one target: claimed with a lease, attempted, retried with backoff until it is
-- delivered or has failed for good. The same event is queued at most once per target.
CREATE TABLE deliveries (
    id              UUID PRIMARY KEY,
    org_id          UUID NOT NULL REFERENCES orgs (id),
    channel         TEXT NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          TEXT NOT NULL,            -- the e-mail address, or the webhook's id
    webhook_id      UUID REFERENCES webhooks (id),
    event_type      TEXT NOT NULL,
    event_id        UUID NOT NULL,
    payload         TEXT NOT NULL,            -- JSON: the webhook's body, or the e-mail's parts
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    lease_holder    UUID,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT,
    UNIQUE (event_id, channel, target),
    CHECK ((channel = 'webhook') = (webhook_id IS NOT NULL))
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_org ON deliveries (org_id, created_at, id);
CREATE INDEX deliveries_webhook ON deliveries (webhook_id, created_at, id);

-- Every attempt at a delivery, numbered from 1.
CREATE TABLE delivery_attempts (
    delivery_id UUID NOT NULL REFERENCES deliveries (id),
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    started_at  BIGINT NOT NULL,
    duration_us BIGINT NOT NULL CHECK (duration_us >= 0),
    outcome     TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed')),
    status      INTEGER,                      -- the HTTP status or the SMTP reply code
    detail      TEXT,                         -- the error, or the server's reply (bounded)
    PRIMARY KEY (delivery_id, attempt)
);

-- The transactional outbox: an alert is dispatched (its deliveries queued) exactly once. Alerts
-- raised before deliveries existed count as dispatched, so an upgrade sends no old news.
ALTER TABLE budget_alerts ADD COLUMN dispatched_at BIGINT;
UPDATE budget_alerts SET dispatched_at = at;
CREATE INDEX budget_alerts_undispatched ON budget_alerts (at, id) WHERE dispatched_at IS NULL;

-- Scheduled report e-mails: one subscription per org and frequency.
CREATE TABLE report_subscriptions (
    org_id      UUID NOT NULL REFERENCES orgs (id),
    frequency   TEXT NOT NULL CHECK (frequency IN ('daily', 'weekly', 'monthly')),
    recipients  TEXT NOT NULL,                -- JSON array of addresses
    time_zone   TEXT NOT NULL,                -- IANA name: where days, weeks and months start
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    next_due_at BIGINT NOT NULL,             -- the end of the next period to report
    PRIMARY KEY (org_id, frequency)
);
CREATE INDEX report_subscriptions_due ON report_subscriptions (next_due_at);

-- Which period's report was queued: once per org, frequency and period, whatever the processes.
CREATE TABLE reports_sent (
    org_id       UUID NOT NULL REFERENCES orgs (id),
    frequency    TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end   BIGINT NOT NULL,
    event_id     UUID NOT NULL,
    enqueued_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, frequency, period_start)
);
