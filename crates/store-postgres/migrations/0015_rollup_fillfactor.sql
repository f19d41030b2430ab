-- tollgate on PostgreSQL, version 15: room in every rollup page for its own updates.
--
-- The rollups are updated in place, constantly (the current hour's rows take every
-- batch's sums). With full pages each update writes the new row version to another
-- page and leaves a dead one behind: at 10 million rows the key projection held 117k
-- live rows in 172 MB (49 MB once rewritten), and the analytics queries read the
-- bloat (the anomalies by key, p99 233 ms against 61 ms rewritten; BENCHMARKS.md).
-- With a fillfactor below 100 an update whose key columns are unchanged (all of
-- them: only sums change) is a HOT update into the same page, whose old versions
-- are pruned by the next access, with or without autovacuum. Applies to pages written
-- from now on; `VACUUM FULL <table>` rewrites an existing bloated table.
ALTER TABLE usage_hourly SET (fillfactor = 70);
ALTER TABLE usage_counted SET (fillfactor = 70);
ALTER TABLE usage_hourly_total SET (fillfactor = 70);
ALTER TABLE usage_hourly_project SET (fillfactor = 70);
ALTER TABLE usage_hourly_model SET (fillfactor = 70);
ALTER TABLE usage_hourly_key SET (fillfactor = 70);
ALTER TABLE usage_hourly_key_detail SET (fillfactor = 70);
ALTER TABLE usage_hourly_endpoint SET (fillfactor = 70);
ALTER TABLE usage_daily_total SET (fillfactor = 70);
ALTER TABLE usage_daily_project SET (fillfactor = 70);
ALTER TABLE usage_daily_model SET (fillfactor = 70);
ALTER TABLE usage_daily_key SET (fillfactor = 70);
ALTER TABLE usage_daily_key_detail SET (fillfactor = 70);
ALTER TABLE usage_daily_endpoint SET (fillfactor = 70);
