-- 11: the ledger in commit order, for the usage events sink (tollgate_store::feed).
--
-- `usage.seq` numbers rows in the order their transactions committed: one writer at
-- a time holds SQLite's write lock, and each ledger transaction takes its numbers
-- from `ledger_seq` (the next free one). Rows stored before this migration are
-- numbered in their insertion order (rowid). `event_cursors` keeps each sink's
-- position (every row up to `seq` delivered).
--
-- Applied once, in the transaction that bumps user_version; the statements after the
-- ALTER are written to be harmless if run again.
ALTER TABLE usage ADD COLUMN seq INTEGER;
UPDATE usage SET seq = rowid WHERE seq IS NULL;
CREATE INDEX IF NOT EXISTS usage_seq ON usage (seq);
CREATE TABLE IF NOT EXISTS ledger_seq (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    next INTEGER NOT NULL
) STRICT;
INSERT OR IGNORE INTO ledger_seq (id, next) SELECT 1, COALESCE(MAX(seq), 0) + 1 FROM usage;
UPDATE ledger_seq SET next = MAX(next, (SELECT COALESCE(MAX(seq), 0) + 1 FROM usage)) WHERE id = 1;
CREATE TABLE IF NOT EXISTS event_cursors (
    sink          TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
