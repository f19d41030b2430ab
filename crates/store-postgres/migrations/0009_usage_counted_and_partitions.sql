-- tollgate on PostgreSQL, version 9: the ledger partitioned by month, and the counted
-- rollup the counter rebuild reads.
--
-- The ledger: `usage` becomes a table partitioned by range of ts_ms, one partition per
-- UTC month (`usage_YYYYMM`, created on demand by tollgate_usage_partition, called by
-- the writer before each batch), so retention drops whole months. A unique index of a
-- partitioned table must hold the partition key, so the ids (replays are ignored by id)
-- move to `usage_ids`, inserted first in the same statement.
--
-- The counted rollup
-- (tollgate_store::totals::CountedSums): counted usage per quarter hour and per what
-- limits look at, written in the ledger's transactions; filled here from the rows stored.
CREATE FUNCTION tollgate_usage_partition(stamps BIGINT[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    stamp BIGINT;
    first TIMESTAMP;
    name TEXT;
BEGIN
    FOREACH stamp IN ARRAY stamps LOOP
        first := date_trunc('month', to_timestamp(stamp / 1000.0) AT TIME ZONE 'UTC');
        name := 'usage_' || to_char(first, 'YYYYMM');
        IF to_regclass(quote_ident(name)) IS NULL THEN
            -- One creator at a time (instances starting a month together).
            PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '.tollgate_usage_partition'));
            -- The name lookup above may read a catalog snapshot from before another
            -- writer's commit: IF NOT EXISTS (and the handler) settle that race.
            BEGIN
                EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF usage FOR VALUES FROM (%s) TO (%s)', name,
                    (extract(epoch FROM first) * 1000)::bigint,
                    (extract(epoch FROM first + interval '1 month') * 1000)::bigint);
            EXCEPTION WHEN duplicate_table THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;
DROP INDEX usage_ts;
DROP INDEX usage_project_ts;
DROP INDEX usage_key_ts;
DROP INDEX usage_anonymous_ts;
ALTER TABLE usage RENAME TO usage_unpartitioned;
CREATE TABLE usage (LIKE usage_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (ts_ms);
CREATE TABLE usage_ids (
    id TEXT COLLATE "C" PRIMARY KEY,
    ts_ms BIGINT NOT NULL
);
SELECT tollgate_usage_partition(ARRAY(
    SELECT MIN(ts_ms) FROM usage_unpartitioned
    GROUP BY date_trunc('month', to_timestamp(ts_ms / 1000.0) AT TIME ZONE 'UTC')));
INSERT INTO usage SELECT * FROM usage_unpartitioned;
INSERT INTO usage_ids (id, ts_ms) SELECT id, ts_ms FROM usage_unpartitioned;
DROP TABLE usage_unpartitioned;
CREATE INDEX usage_ids_ts ON usage_ids (ts_ms, id);
CREATE INDEX usage_ts ON usage (ts_ms, id);
CREATE INDEX usage_project_ts ON usage (project_id, ts_ms, id);
CREATE INDEX usage_key_ts ON usage (key_id, ts_ms, id);
CREATE INDEX usage_anonymous_ts ON usage (project_id, anonymous_id, ts_ms, id) WHERE anonymous_id IS NOT NULL;
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
