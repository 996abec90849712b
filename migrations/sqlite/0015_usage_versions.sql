-- Versions of what usage charging reads before its transaction, so that a process may keep
-- them in memory and still charge exactly: the catalog (the row of the nil org: models,
-- aliases, catalog prices) and each org's own (its custom prices, budgets and accounts). Every
-- change bumps its version in the change's own transaction, by trigger, so no writer can
-- forget; a usage transaction reads both versions with the org's row lock and refuses a
-- decision made on older ones (the process then reads afresh and decides again). A missing
-- row is version 0.
CREATE TABLE usage_versions (
    org_id  BLOB PRIMARY KEY,
    version INTEGER NOT NULL
) STRICT;
INSERT INTO usage_versions (org_id, version) VALUES (zeroblob(16), 1);

CREATE TRIGGER models_usage_version_insert AFTER INSERT ON models
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER models_usage_version_update AFTER UPDATE ON models
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER models_usage_version_delete AFTER DELETE ON models
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER model_aliases_usage_version_insert AFTER INSERT ON model_aliases
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER model_aliases_usage_version_update AFTER UPDATE ON model_aliases
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER model_aliases_usage_version_delete AFTER DELETE ON model_aliases
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER model_prices_usage_version_insert AFTER INSERT ON model_prices
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER model_prices_usage_version_update AFTER UPDATE ON model_prices
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER model_prices_usage_version_delete AFTER DELETE ON model_prices
BEGIN
    UPDATE usage_versions SET version = version + 1 WHERE org_id = zeroblob(16);
END;

CREATE TRIGGER org_model_prices_usage_version_insert AFTER INSERT ON org_model_prices
BEGIN
    INSERT INTO usage_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;

CREATE TRIGGER org_model_prices_usage_version_update AFTER UPDATE ON org_model_prices
BEGIN
    INSERT INTO usage_versions (org_id, version) VALUES (OLD.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
    INSERT INTO usage_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;

CREATE TRIGGER org_model_prices_usage_version_delete AFTER DELETE ON org_model_prices
BEGIN
    INSERT INTO usage_versions (org_id, version) VALUES (OLD.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;

CREATE TRIGGER budgets_usage_version_insert AFTER INSERT ON budgets
BEGIN
    INSERT INTO usage_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;

CREATE TRIGGER budgets_usage_version_update AFTER UPDATE ON budgets
BEGIN
    INSERT INTO usage_versions (org_id, version) VALUES (OLD.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
    INSERT INTO usage_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;

CREATE TRIGGER budgets_usage_version_delete AFTER DELETE ON budgets
BEGIN
    INSERT INTO usage_versions (org_id, version) VALUES (OLD.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;

-- Accounts are only ever inserted; the provider's (no owner) are not an org's.
CREATE TRIGGER accounts_usage_version AFTER INSERT ON accounts
WHEN NEW.owner_org IS NOT NULL
BEGIN
    INSERT INTO usage_versions (org_id, version) VALUES (NEW.owner_org, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;
