-- Nothing to do on PostgreSQL. On SQLite this version turns `sessions` and
-- `hawk_nonces` from WITHOUT ROWID tables into rowid tables, so that their
-- expires_at index entries are appended instead of scattered; PostgreSQL's
-- tables are heaps, whose index entries already point at rows by position.
-- The schema (columns, keys, indexes) is the same on both.
SELECT 1;
