-- Usage analytics read every call of a range: with the totals' columns included in the index,
-- PostgreSQL answers them by index-only scans instead of visiting each row. The key
-- (org_id, occurred_at, id) still serves the event pages' cursor.
CREATE INDEX usage_events_occurred_covering ON usage_events (org_id, occurred_at, id)
    INCLUDE (model, class, user_id, api_key_id, task, conversation, input_tokens,
             cached_input_tokens, cache_write_tokens, output_tokens, cost_micro_cr,
             from_acquired, from_alloc, from_wallet_micro_cr);
DROP INDEX usage_events_occurred;
