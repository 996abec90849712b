-- Versions of what usage charging reads before its transaction, so that a process may keep
-- them in memory and still charge exactly: the catalog (the row of the nil org: models,
-- aliases, catalog prices) and each org's own (its custom prices, budgets and accounts). Every
-- change bumps its version in the change's own transaction, by trigger, so no writer can
-- forget; a usage transaction reads both versions with the org's row lock and refuses a
-- decision made on older ones (the process then reads afresh and decides again). A missing
-- row is version 0.
CREATE TABLE usage_versions (
    org_id  UUID PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO usage_versions (org_id, version) VALUES ('00000000-0000-0000-0000-000000000000', 1);

CREATE FUNCTION usage_version_bump(org UUID) RETURNS void LANGUAGE sql AS $$
    INSERT INTO usage_versions (org_id, version) VALUES (org, 1)
    ON CONFLICT (org_id) DO UPDATE SET version = usage_versions.version + 1;
$$;

CREATE FUNCTION usage_version_of_catalog() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM usage_version_bump('00000000-0000-0000-0000-000000000000');
    RETURN NULL;
END;
$$;

-- Row triggers on tables with an `org_id` column.
CREATE FUNCTION usage_version_of_org() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM usage_version_bump(OLD.org_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM usage_version_bump(NEW.org_id);
    END IF;
    RETURN NULL;
END;
$$;

-- Accounts are only ever inserted; the provider's (no owner) are not an org's.
CREATE FUNCTION usage_version_of_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.owner_org IS NOT NULL THEN
        PERFORM usage_version_bump(NEW.owner_org);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER models_usage_version AFTER INSERT OR UPDATE OR DELETE ON models
    FOR EACH STATEMENT EXECUTE FUNCTION usage_version_of_catalog();
CREATE TRIGGER model_aliases_usage_version AFTER INSERT OR UPDATE OR DELETE ON model_aliases
    FOR EACH STATEMENT EXECUTE FUNCTION usage_version_of_catalog();
CREATE TRIGGER model_prices_usage_version AFTER INSERT OR UPDATE OR DELETE ON model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION usage_version_of_catalog();
CREATE TRIGGER org_model_prices_usage_version AFTER INSERT OR UPDATE OR DELETE ON org_model_prices
    FOR EACH ROW EXECUTE FUNCTION usage_version_of_org();
CREATE TRIGGER budgets_usage_version AFTER INSERT OR UPDATE OR DELETE ON budgets
    FOR EACH ROW EXECUTE FUNCTION usage_version_of_org();
CREATE TRIGGER accounts_usage_version AFTER INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION usage_version_of_account();
