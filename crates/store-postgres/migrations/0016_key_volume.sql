-- tollgate on PostgreSQL, version 16: the keys' volumes, a projection of the
-- hourly rollup (crates/analytics/src/projection.rs, kind `key_volume`) per hour and
-- per UTC day: project and key only (no counted flag: half the rows of `usage_*_key`)
-- and no latency histogram (a third of the width). The per-hour key series of the
-- anomalies and the summaries' top keys read it; filled here from the key
-- projections already stored. The index by hour serves the queries over every
-- project (a summary's partial days at the edges of its range). Written so that it
-- can run again (IF NOT EXISTS, ON CONFLICT DO NOTHING).
--
-- The hourly table is partitioned by a hash of the project (16 partitions): the heap
-- is in time order, so without it one project's rows are spread over every page of
-- their hours, and a query of one project's keys over 58 days (the anomalies: 30
-- days and 4 weeks of baseline) read the whole table (19 ms at 10 M rows, against
-- 5 ms for its partition; BENCHMARKS.md). Queries of one project read one partition.
-- Its key leads with the project and the hour (the order rows arrive in), so a
-- project's range is read page after page; one key's hours of a project are a
-- filter on that range (the daily table, which most of a key's queries read, keeps
-- project, key, hour).

CREATE TABLE IF NOT EXISTS usage_hourly_key_volume (
    hour_ms BIGINT NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status_class INTEGER NOT NULL,
    cache TEXT NOT NULL,
    counted BOOLEAN NOT NULL,
    requests BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    potential_cost_micros BIGINT NOT NULL,
    latency_count BIGINT NOT NULL,
    latency_sum_ms BIGINT NOT NULL,
    latency_max_ms BIGINT NOT NULL,
    PRIMARY KEY (project_id, hour_ms, key_id, counted, model, provider, endpoint, status_class, cache)
) PARTITION BY HASH (project_id);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_0 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 0) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_1 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 1) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_2 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 2) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_3 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 3) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_4 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 4) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_5 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 5) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_6 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 6) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_7 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 7) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_8 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 8) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_9 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 9) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_10 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 10) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_11 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 11) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_12 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 12) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_13 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 13) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_14 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 14) WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS usage_hourly_key_volume_15 PARTITION OF usage_hourly_key_volume
    FOR VALUES WITH (MODULUS 16, REMAINDER 15) WITH (fillfactor = 70);
INSERT INTO usage_hourly_key_volume (hour_ms, project_id, key_id, model, provider, endpoint, status_class, cache, counted, requests, input_tokens, output_tokens, cached_tokens, cost_micros, potential_cost_micros, latency_count, latency_sum_ms, latency_max_ms)
SELECT hour_ms, project_id, key_id, '', '', '', 0, 'miss', false,
    CAST(SUM(requests) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT), CAST(SUM(potential_cost_micros) AS BIGINT), CAST(SUM(latency_count) AS BIGINT), CAST(SUM(latency_sum_ms) AS BIGINT), CAST(MAX(latency_max_ms) AS BIGINT)
FROM usage_hourly_key WHERE true GROUP BY hour_ms, project_id, key_id ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS usage_hourly_key_volume_hour ON usage_hourly_key_volume (hour_ms);
CREATE TABLE IF NOT EXISTS usage_daily_key_volume (
    hour_ms BIGINT NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status_class INTEGER NOT NULL,
    cache TEXT NOT NULL,
    counted BOOLEAN NOT NULL,
    requests BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    potential_cost_micros BIGINT NOT NULL,
    latency_count BIGINT NOT NULL,
    latency_sum_ms BIGINT NOT NULL,
    latency_max_ms BIGINT NOT NULL,
    PRIMARY KEY (project_id, key_id, hour_ms, counted, model, provider, endpoint, status_class, cache)
) WITH (fillfactor = 70);
INSERT INTO usage_daily_key_volume (hour_ms, project_id, key_id, model, provider, endpoint, status_class, cache, counted, requests, input_tokens, output_tokens, cached_tokens, cost_micros, potential_cost_micros, latency_count, latency_sum_ms, latency_max_ms)
SELECT hour_ms, project_id, key_id, '', '', '', 0, 'miss', false,
    CAST(SUM(requests) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT), CAST(SUM(potential_cost_micros) AS BIGINT), CAST(SUM(latency_count) AS BIGINT), CAST(SUM(latency_sum_ms) AS BIGINT), CAST(MAX(latency_max_ms) AS BIGINT)
FROM usage_daily_key WHERE true GROUP BY hour_ms, project_id, key_id ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS usage_daily_key_volume_hour ON usage_daily_key_volume (hour_ms);
