-- tollgate on PostgreSQL, version 10: leases, so that a job of many instances runs on
-- one at a time (the counter raise, retention), taken over when its holder stops
-- renewing; and the registry of running instances (`/health/detailed`, the CLI).
-- Times are PostgreSQL's clock, so instances with skewed clocks agree.
CREATE TABLE IF NOT EXISTS tollgate_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tollgate_instances (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    hostname TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
