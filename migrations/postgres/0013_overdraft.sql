-- Overdraft: an admin may allow an org to spend past its wallet, up to a limit. When the
-- wallet cannot pay a charge, the provider advances the shortfall (`issuance → wallet`, code
-- `overdraft`, linked with the spend) and the org's outstanding overdraft grows; the org pays
-- it by invoice, outside Credex, and an admin records each repayment (idempotent by its id),
-- which lowers what is outstanding. Both figures are read and written only under the org's
-- row lock, by the charge that draws on them.
ALTER TABLE orgs ADD COLUMN overdraft_limit_micro_cr BIGINT NOT NULL DEFAULT 0
    CHECK (overdraft_limit_micro_cr >= 0);
ALTER TABLE orgs ADD COLUMN overdraft_used_micro_cr BIGINT NOT NULL DEFAULT 0
    CHECK (overdraft_used_micro_cr >= 0);

CREATE TABLE overdraft_repayments (
    org_id          UUID NOT NULL REFERENCES orgs (id),
    id              UUID NOT NULL,
    amount_micro_cr BIGINT NOT NULL CHECK (amount_micro_cr > 0),
    reference       TEXT NOT NULL,
    at              BIGINT NOT NULL,
    PRIMARY KEY (org_id, id)
);
