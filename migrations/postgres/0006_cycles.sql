-- Model classes, plans' allotments and billing cycles.
--
-- A model class groups models of similar cost; its face value (µCR per 1M tokens) prices its
-- tokens for buybacks and statements. A plan gives every org on it an allotment of tokens per
-- class and cycle. A cycle (a calendar month in UTC, 'YYYY-MM') is opened by issuing every org
-- its plan's allotments and closed by cancelling open listings and expiring what is left; both
-- are jobs that can run again at any point and finish what an interrupted run began, because
-- every transfer they make has an id derived from what it is for (the ledger answers a replay
-- with 'exists').

CREATE TABLE model_classes (
    class                      TEXT PRIMARY KEY,
    face_value_per_1m_micro_cr BIGINT NOT NULL CHECK (face_value_per_1m_micro_cr > 0),
    description                TEXT NOT NULL,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL
);

CREATE TABLE plan_allotments (
    plan             TEXT NOT NULL CHECK (plan IN ('free', 'teams', 'enterprise')),
    class            TEXT NOT NULL REFERENCES model_classes (class),
    tokens_per_cycle BIGINT NOT NULL CHECK (tokens_per_cycle >= 0),
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (plan, class)
);

CREATE TABLE cycles (
    cycle      TEXT PRIMARY KEY,                      -- 'YYYY-MM'
    starts_at  BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    opened_at  BIGINT,                                   -- every org present then was allotted
    closed_at  BIGINT,                                   -- listings cancelled, balances expired
    CHECK (ends_at > starts_at)
);

-- The face value of each class as it was when the cycle opened.
CREATE TABLE cycle_classes (
    cycle                      TEXT NOT NULL REFERENCES cycles (cycle),
    class                      TEXT NOT NULL REFERENCES model_classes (class),
    face_value_per_1m_micro_cr BIGINT NOT NULL CHECK (face_value_per_1m_micro_cr > 0),
    PRIMARY KEY (cycle, class)
);

-- Orgs whose allotments for a cycle are in the ledger (written after the transfers commit;
-- a crash in between only makes the next run ask the ledger again).
CREATE TABLE cycle_allotments (
    cycle      TEXT NOT NULL REFERENCES cycles (cycle),
    org_id     UUID NOT NULL REFERENCES orgs (id),
    allotted_at BIGINT NOT NULL,
    PRIMARY KEY (cycle, org_id)
);
