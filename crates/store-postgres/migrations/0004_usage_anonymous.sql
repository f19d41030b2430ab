-- An anonymous visitor's records, for attaching them to a key without a scan.
CREATE INDEX usage_anonymous_ts ON usage (project_id, anonymous_id, ts_ms, id) WHERE anonymous_id IS NOT NULL;
