-- Daily totals of each org's calls along one dimension at a time (the UTC day itself, model,
-- class, user, API key, task), kept in the same transaction as the calls: analytics over whole
-- days read these instead of every call. `key` is the group's text as the totals show it
-- ('' for none, and for the `day` dimension).
CREATE TABLE usage_rollups (
    org_id               BLOB NOT NULL,
    dimension            TEXT NOT NULL CHECK (dimension IN ('day', 'model', 'class', 'user', 'api_key', 'task')),
    day                  INTEGER NOT NULL,
    key                  TEXT NOT NULL,
    events               INTEGER NOT NULL CHECK (events >= 0),
    input_tokens         INTEGER NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens  INTEGER NOT NULL CHECK (cached_input_tokens >= 0),
    cache_write_tokens   INTEGER NOT NULL CHECK (cache_write_tokens >= 0),
    output_tokens        INTEGER NOT NULL CHECK (output_tokens >= 0),
    cost_micro_cr        INTEGER NOT NULL CHECK (cost_micro_cr >= 0),
    from_acquired        INTEGER NOT NULL CHECK (from_acquired >= 0),
    from_alloc           INTEGER NOT NULL CHECK (from_alloc >= 0),
    from_wallet_micro_cr INTEGER NOT NULL CHECK (from_wallet_micro_cr >= 0),
    PRIMARY KEY (org_id, dimension, day, key)
) STRICT, WITHOUT ROWID;

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
               WHEN 'user' THEN CASE WHEN e.user_id IS NULL THEN '' ELSE
                   lower(substr(hex(e.user_id), 1, 8) || '-' || substr(hex(e.user_id), 9, 4) || '-' ||
                   substr(hex(e.user_id), 13, 4) || '-' || substr(hex(e.user_id), 17, 4) || '-' ||
                   substr(hex(e.user_id), 21)) END
               WHEN 'api_key' THEN CASE WHEN e.api_key_id IS NULL THEN '' ELSE
                   lower(substr(hex(e.api_key_id), 1, 8) || '-' || substr(hex(e.api_key_id), 9, 4) || '-' ||
                   substr(hex(e.api_key_id), 13, 4) || '-' || substr(hex(e.api_key_id), 17, 4) || '-' ||
                   substr(hex(e.api_key_id), 21)) END
               ELSE COALESCE(e.task, '')
           END AS key
    FROM usage_events e
    CROSS JOIN (SELECT 'day' AS dimension UNION ALL SELECT 'model' UNION ALL SELECT 'class'
                UNION ALL SELECT 'user' UNION ALL SELECT 'api_key' UNION ALL SELECT 'task') d
)
GROUP BY org_id, dimension, day, key;
