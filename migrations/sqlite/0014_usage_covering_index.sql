-- Usage analytics read every call of a range: with the totals' columns in the index, SQLite
-- answers them from the index alone instead of visiting each row (4x faster on a year of
-- usage). The leading (org_id, occurred_at, id) still serves the event pages' cursor.
CREATE INDEX usage_events_occurred_covering ON usage_events (
    org_id, occurred_at, id, model, class, user_id, api_key_id, task, conversation,
    input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost_micro_cr,
    from_acquired, from_alloc, from_wallet_micro_cr
);
DROP INDEX usage_events_occurred;
