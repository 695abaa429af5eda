-- An anonymous session is its own user (`user_id = id_hmac`), so the user
-- index held one entry per anonymous session, at a random key, that no
-- query needs: a user's sessions are found by the primary key when the user
-- is anonymous. Nearly every registration is anonymous, and that second
-- random-key B-tree insert was half of SQLite's work per registration
-- (BENCHMARKS.md). The index now holds only sessions of users who may have
-- several (FxA identities, `user_id <> id_hmac`); queries name that condition
-- so both planners use it (src/store/queries.rs, `sessions_of_user`).
--
-- On SQLite the full index goes at once: one process owns the database file,
-- so no older release runs beside this one (an older binary refuses a
-- database migrated past it). PostgreSQL keeps it for now; see its file.

DROP INDEX sessions_user_id_expires_at;
CREATE INDEX sessions_shared_user_id_expires_at ON sessions (user_id, expires_at)
    WHERE user_id <> id_hmac;
