-- tollgate on PostgreSQL, version 2 (mirrors the embedded schema's migration 2):
-- - projects.settings: the operator-only project settings as JSON ('{}' reads as the
--   defaults: only the free plan for project tokens, no project limits, no
--   upstream organization or project);
-- - admin tokens get an id (the first 16 hex digits of their hash, which tokens made
--   before this migration get too), a name, the token's first characters, expiry and
--   revocation.

ALTER TABLE projects ADD COLUMN settings JSONB NOT NULL DEFAULT '{}';

ALTER TABLE admin_tokens
    ADD COLUMN id            TEXT COLLATE "C",
    ADD COLUMN name          TEXT,
    ADD COLUMN prefix        TEXT,
    ADD COLUMN expires_at_ms BIGINT,
    ADD COLUMN revoked_at_ms BIGINT;
UPDATE admin_tokens SET id = substr(hash, 1, 16);
ALTER TABLE admin_tokens ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX admin_tokens_id ON admin_tokens (id);
CREATE INDEX admin_tokens_project ON admin_tokens (project_id, id);
