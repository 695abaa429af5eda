-- An anonymous session is its own user (`user_id = id_hmac`), so the user
-- index held one entry per anonymous session, at a random key, that no
-- query needs: a user's sessions are found by the primary key when the user
-- is anonymous. This partial index holds only sessions of users who may have
-- several (FxA identities, `user_id <> id_hmac`); queries name that condition
-- so both planners use it (src/store/queries.rs, `sessions_of_user`).
--
-- Expand only (README.md, rule 3): during a rolling deploy the previous
-- release still looks sessions up by `user_id = $1` alone, which only the
-- full index serves, so `sessions_user_id_expires_at` stays until a later
-- release drops it. SQLite drops it in this version already (its file).

CREATE INDEX sessions_shared_user_id_expires_at ON sessions (user_id, expires_at)
    WHERE user_id <> id_hmac;
