-- A plan's time zone for its day and month windows (an IANA name; NULL: the
-- project's, else UTC). Mirrors the embedded schema's migration 5.
ALTER TABLE plans ADD COLUMN time_zone TEXT;
