-- Daily totals of each org's calls along one dimension at a time (the UTC day itself, model,
-- class, user, API key, task), kept in the same transaction as the calls: analytics over whole
-- days read these instead of every call. `key` is the group's text as the totals show it
-- ('' for none, and for the `day` dimension).
CREATE TABLE usage_rollups (
    org_id               UUID NOT NULL,
    dimension            TEXT NOT NULL CHECK (dimension IN ('day', 'model', 'class', 'user', 'api_key', 'task')),
    day                  BIGINT NOT NULL,
    key                  TEXT NOT NULL,
    events               BIGINT NOT NULL CHECK (events >= 0),
    input_tokens         BIGINT NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens  BIGINT NOT NULL CHECK (cached_input_tokens >= 0),
    cache_write_tokens   BIGINT NOT NULL CHECK (cache_write_tokens >= 0),
    output_tokens        BIGINT NOT NULL CHECK (output_tokens >= 0),
    cost_micro_cr        BIGINT NOT NULL CHECK (cost_micro_cr >= 0),
    from_acquired        BIGINT NOT NULL CHECK (from_acquired >= 0),
    from_alloc           BIGINT NOT NULL CHECK (from_alloc >= 0),
    from_wallet_micro_cr BIGINT NOT NULL CHECK (from_wallet_micro_cr >= 0),
    PRIMARY KEY (org_id, dimension, day, key)
);

INSERT INTO usage_rollups
SELECT org_id, dimension, day, key, COUNT(*), SUM(input_tokens), SUM(cached_input_tokens),
       SUM(cache_write_tokens), SUM(output_tokens), SUM(cost_micro_cr), SUM(from_acquired),
       SUM(from_alloc), SUM(from_wallet_micro_cr)
FROM (
    SELECT e.*, d.dimension,
           (e.occurred_at / 86400000000) * 86400000000 AS day,
           CASE d.dimension
               WHEN 'day' THEN ''
               WHEN 'model' THEN e.model
               WHEN 'class' THEN e.class
               WHEN 'user' THEN COALESCE(CAST(e.user_id AS TEXT), '')
               WHEN 'api_key' THEN COALESCE(CAST(e.api_key_id AS TEXT), '')
               ELSE COALESCE(e.task, '')
           END AS key
    FROM usage_events e
    CROSS JOIN (VALUES ('day'), ('model'), ('class'), ('user'), ('api_key'), ('task')) AS d (dimension)
) AS expanded
GROUP BY org_id, dimension, day, key;
