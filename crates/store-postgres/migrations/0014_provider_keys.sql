-- tollgate on PostgreSQL, version 14: bring-your-own provider keys
-- (tollgate_store::provider_keys), one row per project and provider. `sealed_key` is
-- the key sealed with AES-256-GCM under the master key (`v1:<key id>:<base64>`, the
-- project and provider as associated data), never the key in clear; `hint` is its
-- first 3 and last 4 characters.
CREATE TABLE IF NOT EXISTS tollgate_provider_keys (
    project_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    hint TEXT NOT NULL,
    base_url TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (project_id, provider)
);
