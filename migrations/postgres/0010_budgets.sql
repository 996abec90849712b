-- Budgets: a limit on what a scope of an org (the whole org, a user, an API key, a task) may
-- spend per period (day, week or month in the budget's time zone, or the billing cycle), with
-- thresholds that alert once per period; a hard budget refuses a charge that would pass it.
CREATE TABLE budgets (
    id             UUID PRIMARY KEY,
    org_id         UUID NOT NULL REFERENCES orgs (id),
    name           TEXT NOT NULL,
    scope_kind     TEXT NOT NULL CHECK (scope_kind IN ('org', 'user', 'api_key', 'task')),
    scope_value    TEXT,                          -- the user, key or task; none for the org
    period         TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', 'cycle')),
    time_zone      TEXT NOT NULL,                 -- IANA name: where a day, week or month starts
    limit_micro_cr BIGINT NOT NULL CHECK (limit_micro_cr > 0),
    thresholds     TEXT NOT NULL,                 -- JSON array of percents, ascending, e.g. [75,90,100]
    hard           BOOLEAN NOT NULL,
    created_at     BIGINT NOT NULL,
    deleted_at     BIGINT,
    CHECK ((scope_kind = 'org') = (scope_value IS NULL))
);
CREATE INDEX budgets_org ON budgets (org_id) WHERE deleted_at IS NULL;

-- What a budget's scope spent in one period (its start, µs), counted at the model's price
-- whatever paid for it. Written only under the org's row lock, by the charge it counts.
CREATE TABLE budget_spend (
    budget_id      UUID NOT NULL REFERENCES budgets (id),
    period_start   BIGINT NOT NULL,
    spent_micro_cr BIGINT NOT NULL CHECK (spent_micro_cr >= 0),
    PRIMARY KEY (budget_id, period_start)
);

-- A threshold crossed: once per (budget, period, threshold).
CREATE TABLE budget_alerts (
    id             UUID PRIMARY KEY,
    budget_id      UUID NOT NULL REFERENCES budgets (id),
    org_id         UUID NOT NULL,
    period_start   BIGINT NOT NULL,
    threshold      INTEGER NOT NULL,
    spent_micro_cr BIGINT NOT NULL,
    limit_micro_cr BIGINT NOT NULL,
    at             BIGINT NOT NULL,
    UNIQUE (budget_id, period_start, threshold)
);
CREATE INDEX budget_alerts_org ON budget_alerts (org_id, at, id);
