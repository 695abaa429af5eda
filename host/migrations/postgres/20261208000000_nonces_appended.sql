-- On SQLite, Hawk nonces become a table appended to in arrival order, checked
-- for replays in the memory of the one process that owns the file. Several
-- PostgreSQL instances accept nonces at once, and the database is the one
-- place that sees them all, so here `hawk_nonces` keeps its unique key
-- (id_hmac, nonce), which refuses a replay to whichever instance it goes.
SELECT 1;
