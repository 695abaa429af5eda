-- The signaling relay (GET /signaling): who is present in each provider
-- session, on every instance sharing the database. A session has at most two
-- participants (identities); a row is the socket currently standing for one.
-- Rows are deleted when the socket closes; each instance refreshes seen_at of
-- its rows, so the rows of an instance that died go stale and are swept by
-- the others (src/domain/signaling.rs).
-- Expand only: a new table.

CREATE TABLE signaling_seats (
    session_id  TEXT   NOT NULL,
    identity    TEXT   NOT NULL,
    socket_id   TEXT   NOT NULL,
    instance_id TEXT   NOT NULL,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (session_id, identity)
);
CREATE INDEX signaling_seats_instance ON signaling_seats (instance_id);
CREATE INDEX signaling_seats_seen_at ON signaling_seats (seen_at);
