-- Loop's schema on SQLite. Timestamps are Unix seconds (INTEGER, read as i64).
-- Keep in step with ../postgres/: the queries in src/store/sql.rs serve both.
-- Small rows keyed by text use WITHOUT ROWID: one B-tree instead of two.

CREATE TABLE sessions (
    id_hmac    TEXT    NOT NULL PRIMARY KEY,
    key        TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE hawk_nonces (
    id_hmac    TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (id_hmac, nonce)
) WITHOUT ROWID;
CREATE INDEX hawk_nonces_expires_at ON hawk_nonces (expires_at);

CREATE TABLE push_urls (
    id_hmac TEXT NOT NULL,
    user_id TEXT NOT NULL,
    topic   TEXT NOT NULL,
    url     TEXT NOT NULL,
    PRIMARY KEY (id_hmac, topic)
) WITHOUT ROWID;
CREATE INDEX push_urls_user_id_topic ON push_urls (user_id, topic);

CREATE TABLE call_urls (
    token      TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    caller_id  TEXT    NOT NULL,
    issuer     TEXT,
    subject    TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX call_urls_user_id_expires_at ON call_urls (user_id, expires_at);
CREATE INDEX call_urls_expires_at ON call_urls (expires_at);

CREATE TABLE calls (
    call_id           TEXT    NOT NULL PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    call_token        TEXT    NOT NULL,
    call_url          TEXT    NOT NULL,
    url_creation_date INTEGER NOT NULL,
    caller_id         TEXT    NOT NULL,
    call_type         TEXT    NOT NULL,
    subject           TEXT,
    provider          TEXT    NOT NULL,
    session_id        TEXT    NOT NULL,
    callee_token      TEXT    NOT NULL,
    api_key           TEXT    NOT NULL,
    websocket_token   TEXT    NOT NULL,
    progress_url      TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL
);
CREATE INDEX calls_user_id_created_at ON calls (user_id, created_at);
CREATE INDEX calls_expires_at ON calls (expires_at);
