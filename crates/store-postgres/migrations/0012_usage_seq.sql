-- tollgate on PostgreSQL, version 12: the ledger in commit order, for the usage events
-- sink (tollgate_store::feed).
--
-- `usage_ids.seq` numbers each stored record. A ledger batch takes its numbers with
-- `UPDATE tollgate_ledger_seq SET next = next + n RETURNING` in its own transaction:
-- that row stays locked until the batch commits, so batches commit in the order of
-- their numbers and a reader that has seen up to n never sees a smaller number
-- appear later (a sequence would hand numbers out at insert, not at commit). Rows
-- stored before this migration are numbered by (ts_ms, id). `tollgate_event_cursors`
-- keeps each sink's position (every record up to `seq` delivered).
--
-- Idempotent: every statement may run again without harm.
ALTER TABLE usage_ids ADD COLUMN IF NOT EXISTS seq BIGINT;
WITH base AS (SELECT COALESCE(MAX(seq), 0) AS m FROM usage_ids),
numbered AS (SELECT id, row_number() OVER (ORDER BY ts_ms, id) AS n FROM usage_ids WHERE seq IS NULL)
UPDATE usage_ids SET seq = base.m + numbered.n FROM numbered, base WHERE usage_ids.id = numbered.id;
CREATE INDEX IF NOT EXISTS usage_ids_seq ON usage_ids (seq);
CREATE TABLE IF NOT EXISTS tollgate_ledger_seq (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    next BIGINT NOT NULL
);
INSERT INTO tollgate_ledger_seq (id, next) SELECT 1, COALESCE(MAX(seq), 0) + 1 FROM usage_ids
ON CONFLICT (id) DO UPDATE SET next = GREATEST(tollgate_ledger_seq.next, EXCLUDED.next);
CREATE TABLE IF NOT EXISTS tollgate_event_cursors (
    sink          TEXT PRIMARY KEY,
    seq           BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
