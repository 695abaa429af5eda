-- Hawk nonces are appended in the order they come in, and the server checks
-- them for replays in memory (src/store/nonce_ledger.rs) instead of through
-- a unique index on (id_hmac, nonce). That key is random: every nonce landed
-- on a random leaf page of the index, so every group commit wrote one 4 KB
-- WAL frame per nonce and left that many pages for the next checkpoint to
-- copy and sync, a third of the server's CPU on an authenticated listing
-- (BENCHMARKS.md). Appended, a round's nonces share a page or two.
--
-- `id` only grows (AUTOINCREMENT: never reused, even after the newest rows
-- are deleted), which is what lets a process tell the rows it has read from
-- those it has not. Rows keep their session and nonce, so that the server
-- reads them back into memory when it starts and an account's nonces go
-- with it. PostgreSQL keeps its unique key (its file).

CREATE TABLE hawk_nonces_appended (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    id_hmac    TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
INSERT INTO hawk_nonces_appended (id_hmac, nonce, expires_at)
    SELECT id_hmac, nonce, expires_at FROM hawk_nonces ORDER BY expires_at;
DROP TABLE hawk_nonces;
ALTER TABLE hawk_nonces_appended RENAME TO hawk_nonces;
CREATE INDEX hawk_nonces_expires_at ON hawk_nonces (expires_at);
