-- 10: alerts (crates/alerts): rules and channels (JSON bodies written and read only
-- through serde; a channel's secret is sealed with AES-256-GCM, never in clear), the
-- outbox of events, one delivery per event and channel, and every attempt.
-- IF NOT EXISTS throughout: the migration may run after 8 and 9 land, or before.
CREATE TABLE IF NOT EXISTS alert_rules (
    id         TEXT PRIMARY KEY,
    project_id TEXT,
    body       TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS alert_rules_project ON alert_rules (project_id, id);

CREATE TABLE IF NOT EXISTS alert_channels (
    id         TEXT PRIMARY KEY,
    project_id TEXT,
    body       TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS alert_channels_project ON alert_channels (project_id, id);

CREATE TABLE IF NOT EXISTS alert_events (
    id            TEXT PRIMARY KEY,
    project_id    TEXT,
    rule_id       TEXT,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS alert_deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    channel_id       TEXT NOT NULL,
    project_id       TEXT,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    claimed_until_ms INTEGER,
    last_error       TEXT,
    delivered_at_ms  INTEGER,
    created_at_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (status, next_attempt_ms);
CREATE INDEX IF NOT EXISTS alert_deliveries_created ON alert_deliveries (created_at_ms, id);

CREATE TABLE IF NOT EXISTS alert_attempts (
    delivery_id TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    ok          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
) STRICT;
