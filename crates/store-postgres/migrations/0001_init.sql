-- tollgate on PostgreSQL, version 1: the catalog and the usage ledger.
--
-- Mirrors the embedded (SQLite) schema:
-- - secrets are never stored: key_secrets.hash and admin_tokens.hash are the
--   lowercase hex SHA-256 of the key or token;
-- - valid_until_ms is NULL for a current secret, set on a retiring one (rotation
--   grace period);
-- - JSON columns are written and read only by tollgate, through serde;
-- - no foreign keys: stores persist what they are given, the server validates;
-- - ids sort bytewise (COLLATE "C"), as the embedded store and the API's cursors do;
-- - the usage indexes end in id, so newest-first pages ordered by (ts_ms, id) walk an
--   index instead of sorting.

CREATE TABLE projects (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE plans (
    name        TEXT COLLATE "C" PRIMARY KEY,
    description TEXT,
    limits      JSONB NOT NULL
);

CREATE TABLE keys (
    id              TEXT COLLATE "C" PRIMARY KEY,
    project_id      TEXT COLLATE "C" NOT NULL,
    name            TEXT,
    plan            TEXT COLLATE "C" NOT NULL,
    metadata        JSONB NOT NULL,
    limit_overrides JSONB NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT,
    revoked_at_ms   BIGINT,
    version         BIGINT NOT NULL
);
CREATE INDEX keys_project ON keys (project_id, id);
CREATE INDEX keys_plan ON keys (plan);

CREATE TABLE key_secrets (
    hash           TEXT PRIMARY KEY,
    key_id         TEXT COLLATE "C" NOT NULL,
    valid_until_ms BIGINT
);
CREATE INDEX key_secrets_key ON key_secrets (key_id);

CREATE TABLE admin_tokens (
    hash          TEXT PRIMARY KEY,
    project_id    TEXT COLLATE "C",
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE usage (
    id                   TEXT COLLATE "C" PRIMARY KEY,
    ts_ms                BIGINT NOT NULL,
    project_id           TEXT COLLATE "C" NOT NULL,
    key_id               TEXT COLLATE "C" NOT NULL,
    endpoint             TEXT NOT NULL,
    model                TEXT,
    status               INTEGER NOT NULL,
    counted              BOOLEAN NOT NULL,
    requests             BIGINT NOT NULL,
    prompt_tokens        BIGINT NOT NULL,
    completion_tokens    BIGINT NOT NULL,
    cost_micros          BIGINT NOT NULL,
    latency_ms           BIGINT NOT NULL,
    provider             TEXT NOT NULL,
    cached_tokens        BIGINT NOT NULL,
    uncached_cost_micros BIGINT NOT NULL,
    usage_source         TEXT NOT NULL,
    price_version        TEXT,
    client_ip            TEXT,
    anonymous_id         TEXT
);
CREATE INDEX usage_ts ON usage (ts_ms, id);
CREATE INDEX usage_project_ts ON usage (project_id, ts_ms, id);
CREATE INDEX usage_key_ts ON usage (key_id, ts_ms, id);
