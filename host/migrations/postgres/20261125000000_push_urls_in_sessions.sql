-- A device's push URLs become columns of its session: a registration is then
-- one row written instead of a session row plus push URL rows (five index
-- B-trees touched at random keys down to three), push URLs end with their
-- session, and the topics are Loop's two, `calls` and `rooms`.
-- Users' push URLs are found through sessions_user_id.

ALTER TABLE sessions ADD COLUMN calls_push_url TEXT;
ALTER TABLE sessions ADD COLUMN rooms_push_url TEXT;

UPDATE sessions SET
    calls_push_url = (SELECT url FROM push_urls p WHERE p.id_hmac = sessions.id_hmac AND p.topic = 'calls'),
    rooms_push_url = (SELECT url FROM push_urls p WHERE p.id_hmac = sessions.id_hmac AND p.topic = 'rooms');

DROP TABLE push_urls;
