-- Provider sessions are told when their call ends (WIT 0.2 `end-session`):
-- `channel` is the call's channel, which picks a plugin's per-channel
-- credentials; `session_ended_at` (Unix seconds) is set by the one instance
-- that claims the call's end, so each session is ended once across instances.
-- Calls from before this migration are marked ended: their plugins (0.1)
-- had no end-session.
-- Expand only: new nullable columns.

ALTER TABLE calls ADD COLUMN channel TEXT;
ALTER TABLE calls ADD COLUMN session_ended_at BIGINT;
UPDATE calls SET session_ended_at = 0;
CREATE INDEX calls_session_open ON calls (expires_at) WHERE session_ended_at IS NULL;
