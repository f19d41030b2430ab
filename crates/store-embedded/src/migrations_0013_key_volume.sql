-- tollgate embedded (SQLite), version 13: the keys' volumes, a projection of the
-- hourly rollup (crates/analytics/src/projection.rs, kind `key_volume`) per hour and
-- per UTC day: project and key only (no counted flag: half the rows of `usage_*_key`)
-- and no latency histogram (a third of the width). The per-hour key series of the
-- anomalies and the summaries' top keys read it; filled here from the key
-- projections already stored. The index by hour serves the queries over every
-- project (a summary's partial days at the edges of its range). Written so that it
-- can run again (IF NOT EXISTS, ON CONFLICT DO NOTHING).

CREATE TABLE IF NOT EXISTS usage_hourly_key_volume (
    hour_ms INTEGER NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status_class INTEGER NOT NULL,
    cache TEXT NOT NULL,
    counted INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    potential_cost_micros INTEGER NOT NULL,
    latency_count INTEGER NOT NULL,
    latency_sum_ms INTEGER NOT NULL,
    latency_max_ms INTEGER NOT NULL,
    PRIMARY KEY (project_id, key_id, hour_ms, counted, model, provider, endpoint, status_class, cache)
) STRICT, WITHOUT ROWID;
INSERT INTO usage_hourly_key_volume (hour_ms, project_id, key_id, model, provider, endpoint, status_class, cache, counted, requests, input_tokens, output_tokens, cached_tokens, cost_micros, potential_cost_micros, latency_count, latency_sum_ms, latency_max_ms)
SELECT hour_ms, project_id, key_id, '', '', '', 0, 'miss', 0,
    SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cost_micros), SUM(potential_cost_micros), SUM(latency_count), SUM(latency_sum_ms), MAX(latency_max_ms)
FROM usage_hourly_key WHERE true GROUP BY hour_ms, project_id, key_id ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS usage_hourly_key_volume_hour ON usage_hourly_key_volume (hour_ms);
CREATE TABLE IF NOT EXISTS usage_daily_key_volume (
    hour_ms INTEGER NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status_class INTEGER NOT NULL,
    cache TEXT NOT NULL,
    counted INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    potential_cost_micros INTEGER NOT NULL,
    latency_count INTEGER NOT NULL,
    latency_sum_ms INTEGER NOT NULL,
    latency_max_ms INTEGER NOT NULL,
    PRIMARY KEY (project_id, key_id, hour_ms, counted, model, provider, endpoint, status_class, cache)
) STRICT, WITHOUT ROWID;
INSERT INTO usage_daily_key_volume (hour_ms, project_id, key_id, model, provider, endpoint, status_class, cache, counted, requests, input_tokens, output_tokens, cached_tokens, cost_micros, potential_cost_micros, latency_count, latency_sum_ms, latency_max_ms)
SELECT hour_ms, project_id, key_id, '', '', '', 0, 'miss', 0,
    SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cost_micros), SUM(potential_cost_micros), SUM(latency_count), SUM(latency_sum_ms), MAX(latency_max_ms)
FROM usage_daily_key WHERE true GROUP BY hour_ms, project_id, key_id ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS usage_daily_key_volume_hour ON usage_daily_key_volume (hour_ms);
