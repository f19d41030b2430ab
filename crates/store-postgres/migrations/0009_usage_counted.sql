-- tollgate on PostgreSQL, version 9: the counted rollup the counter rebuild reads
-- (tollgate_store::totals::CountedSums): counted usage per quarter hour and per what
-- limits look at, written in the ledger's transactions; filled here from the rows stored.
CREATE TABLE usage_counted (
    bucket_ms BIGINT NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    PRIMARY KEY (bucket_ms, project_id, key_id, provider, model, endpoint, client_ip, anonymous_id)
);
INSERT INTO usage_counted (bucket_ms, project_id, key_id, provider, model, endpoint, client_ip, anonymous_id,
    requests, prompt_tokens, completion_tokens, cost_micros)
SELECT ts_ms - ts_ms % 900000, project_id, key_id, provider, COALESCE(model, ''), endpoint,
    COALESCE(client_ip, ''), COALESCE(anonymous_id, ''),
    SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_micros)
FROM usage WHERE counted GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
