-- A device's push URLs become columns of its session: a registration is then
-- one row written instead of a session row plus push URL rows (five index
-- B-trees touched at random keys down to three), push URLs end with their
-- session, and the topics are Loop's two, `calls` and `rooms`.
-- Users' push URLs are looked up by user and expiry, so the user index
-- becomes (user_id, expires_at): one index serves both conditions, and no
-- planner (PostgreSQL before its first ANALYZE, measured) ANDs user_id with the
-- expires_at index, which matches nearly every row.

ALTER TABLE sessions ADD COLUMN calls_push_url TEXT;
ALTER TABLE sessions ADD COLUMN rooms_push_url TEXT;

UPDATE sessions SET
    calls_push_url = (SELECT url FROM push_urls p WHERE p.id_hmac = sessions.id_hmac AND p.topic = 'calls'),
    rooms_push_url = (SELECT url FROM push_urls p WHERE p.id_hmac = sessions.id_hmac AND p.topic = 'rooms');

DROP TABLE push_urls;

DROP INDEX sessions_user_id;
CREATE INDEX sessions_user_id_expires_at ON sessions (user_id, expires_at);
