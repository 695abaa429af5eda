-- Call progress (the /websocket protocol): each side of a call has its own
-- websocket token, and the call's state lives in its row so that every
-- instance sharing the database sees one state and exactly one of them wins
-- each transition (a compare-and-set on progress_version).
-- Expand only: websocket_token keeps its meaning (the callee's token, which
-- is what earlier releases listed), everything else is new. Calls placed
-- before this migration never had a working progress socket: they start
-- terminated, so they are no longer listed as waiting.

ALTER TABLE calls ADD COLUMN caller_websocket_token TEXT;
-- init, alerting, connecting, half-connected, connected, terminated.
ALTER TABLE calls ADD COLUMN state TEXT NOT NULL DEFAULT 'init';
-- Why a terminated call ended: cancel, timeout, closed, …
ALTER TABLE calls ADD COLUMN reason TEXT;
-- Bit 1: the caller, bit 2: the callee.
ALTER TABLE calls ADD COLUMN hellos BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN media_up BIGINT NOT NULL DEFAULT 0;
-- Progress sockets open per side, on every instance.
ALTER TABLE calls ADD COLUMN caller_sockets BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN callee_sockets BIGINT NOT NULL DEFAULT 0;
-- The socket of the callee device that accepted.
ALTER TABLE calls ADD COLUMN accepted_by TEXT;
-- When the running timer (supervisory, ringing or connection) fires, in Unix
-- milliseconds; NULL when none runs.
ALTER TABLE calls ADD COLUMN timer_at BIGINT;
ALTER TABLE calls ADD COLUMN progress_version BIGINT NOT NULL DEFAULT 0;

UPDATE calls SET state = 'terminated', reason = 'closed';

-- Messages between instances too large for a NOTIFY payload (src/bus.rs).
-- SQLite has a single process and never uses it; it exists there so both
-- backends have one schema.
CREATE TABLE bus_messages (
    id         TEXT    NOT NULL PRIMARY KEY,
    topic      TEXT    NOT NULL,
    message    TEXT    NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX bus_messages_created_at ON bus_messages (created_at);
