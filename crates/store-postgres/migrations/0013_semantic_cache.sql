-- tollgate on PostgreSQL, version 13: the semantic cache's entries, shared by the
-- instances (each keeps its own in-memory index, loaded from here at start and kept
-- current by change notices and a periodic catch-up; docs/caching.md). One row per
-- project and exact key of the request that stored it. Vectors as REAL[] (no
-- extension needed). `stored_ms` is PostgreSQL's clock at the write, which catch-ups
-- read by, so instances with skewed clocks agree.
CREATE TABLE IF NOT EXISTS tollgate_semantic_cache (
    project_id TEXT NOT NULL,
    key BYTEA NOT NULL,
    partition_key BYTEA NOT NULL,
    vector REAL[] NOT NULL,
    entry BYTEA NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    stored_ms BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX IF NOT EXISTS tollgate_semantic_cache_stored ON tollgate_semantic_cache (stored_ms);
CREATE INDEX IF NOT EXISTS tollgate_semantic_cache_expires ON tollgate_semantic_cache (expires_ms);
