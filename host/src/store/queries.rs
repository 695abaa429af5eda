//! The `Store` implementation: one set of queries over sqlx's `Any` driver,
//! serving SQLite and PostgreSQL alike.
//!
//! Portability rules the queries follow: `$N` placeholders (sqlx-sqlite maps
//! `$N` to the N-th bound value), `ON CONFLICT` upserts, TEXT and 64-bit
//! integers only, and affected-row counts instead of `RETURNING` (the
//! group-commit writer's nonce insert is the one exception; see `batch.rs`).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Connection, Row};

use super::batch::Write;
use super::cache::{Forget, INVALIDATION_TOPIC};
use super::{
    Announcement, Backend, Call, CallProgress, CallState, CallUrl, CallUrlUpdate, EndedSession,
    PushTopic, PushUrl, Seat, SeatRow, SeatTaken, Session, SqlStore, Store, StoreError, Timestamp,
};
use crate::telemetry::statement;

/// Rows deleted per statement by `purge_expired`: small enough that SQLite's
/// single write lock is released every few milliseconds even when a million
/// rows have expired at once, so request writers keep flowing.
const PURGE_BATCH: i64 = 1000;

/// Pause between purge batches on SQLite. Writers waiting for the lock poll
/// it from SQLite's busy handler; back-to-back batches would leave them no
/// gap to get in and a big purge could starve them into SQLITE_BUSY.
const SQLITE_PURGE_PAUSE: Duration = Duration::from_millis(10);

/// Expired call URLs are kept this long before the purge deletes them, so that
/// someone opening an old link is told it expired (410) rather than that it
/// never existed (404).
pub const EXPIRED_CALL_URL_RETENTION_SECONDS: Timestamp = 30 * 24 * 3600;

/// SQL matching the rows of `table` (a name or alias of `sessions`) that
/// belong to the user `user_id` (a placeholder or column): exactly
/// `{table}.user_id = {user_id}`, but written so that an anonymous session
/// (its own user, `user_id = id_hmac`) is found by its primary key and only
/// sessions of shared users are in the user index. That index is partial
/// (`user_id <> id_hmac`, migration 20261207000000), so a registration,
/// nearly always anonymous, inserts into one random-key B-tree fewer. Each
/// arm names its index's condition or key, and the arms share no term (which
/// PostgreSQL would factor out of the OR, losing the index in a join), so
/// both planners make it two index lookups.
fn sessions_of_user(table: &str, user_id: &str) -> String {
    format!(
        "(({table}.user_id = {user_id} AND {table}.user_id <> {table}.id_hmac) \
         OR ({table}.id_hmac = {user_id} AND {table}.user_id = {table}.id_hmac))"
    )
}

/// A row read by column name through either binding: sqlx's (both
/// backends) or rusqlite's (SQLite's inline reads, `inline_reads.rs`), so
/// each kind of row has one decoder.
pub(super) trait Columns {
    fn column<T>(&self, name: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any> + rusqlite::types::FromSql;
}

impl Columns for AnyRow {
    fn column<T>(&self, name: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any> + rusqlite::types::FromSql,
    {
        self.try_get(name)
    }
}

/// What a read decodes each of its rows into.
pub(super) trait FromColumns: Sized {
    fn from_columns(row: &impl Columns) -> Result<Self, sqlx::Error>;
}

/// A value bound to a read's `$N` placeholder, in either binding.
#[derive(Clone, Copy)]
pub(super) enum Param<'a> {
    Text(&'a str),
    Int(i64),
}

impl FromColumns for Session {
    fn from_columns(row: &impl Columns) -> Result<Self, sqlx::Error> {
        Ok(Session {
            id_hmac: row.column("id_hmac")?,
            key: row.column("key")?,
            user_id: row.column("user_id")?,
            expires_at: row.column("expires_at")?,
        })
    }
}

pub(super) const CALL_URL_COLUMNS: &str =
    "token, user_id, caller_id, issuer, subject, created_at, expires_at";

impl FromColumns for CallUrl {
    fn from_columns(row: &impl Columns) -> Result<Self, sqlx::Error> {
        Ok(CallUrl {
            token: row.column("token")?,
            user_id: row.column("user_id")?,
            caller_id: row.column("caller_id")?,
            issuer: row.column("issuer")?,
            subject: row.column("subject")?,
            created_at: row.column("created_at")?,
            expires_at: row.column("expires_at")?,
        })
    }
}

pub(super) const CALL_COLUMNS: &str = "call_id, user_id, call_token, call_url, url_creation_date, caller_id, call_type, subject, \
     provider, session_id, callee_token, api_key, websocket_token, progress_url, created_at, expires_at, \
     caller_websocket_token, channel";

/// The progress columns of `calls`, in `progress_from_row` order.
const PROGRESS_COLUMNS: &str = "state, reason, hellos, media_up, caller_sockets, callee_sockets, accepted_by, timer_at, progress_version";

/// How long after its listing expiry a call that never ended is kept:
/// provider tokens live a day, so no conversation outlasts that.
const UNFINISHED_CALL_RETENTION_SECONDS: Timestamp = 24 * 3600;

impl FromColumns for Call {
    fn from_columns(row: &impl Columns) -> Result<Self, sqlx::Error> {
        // In `CALL_COLUMNS` order, which `SqliteRow` reads fastest.
        Ok(Call {
            call_id: row.column("call_id")?,
            user_id: row.column("user_id")?,
            call_token: row.column("call_token")?,
            call_url: row.column("call_url")?,
            url_creation_date: row.column("url_creation_date")?,
            caller_id: row.column("caller_id")?,
            call_type: row.column("call_type")?,
            subject: row.column("subject")?,
            provider: row.column("provider")?,
            session_id: row.column("session_id")?,
            callee_token: row.column("callee_token")?,
            api_key: row.column("api_key")?,
            callee_websocket_token: row.column("websocket_token")?,
            progress_url: row.column("progress_url")?,
            created_at: row.column("created_at")?,
            expires_at: row.column("expires_at")?,
            caller_websocket_token: row
                .column::<Option<String>>("caller_websocket_token")?
                .unwrap_or_default(),
            channel: row.column("channel")?,
        })
    }
}

fn progress_from_row(row: &AnyRow) -> Result<CallProgress, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(CallProgress {
        state: CallState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown call state {state:?}").into(),
        })?,
        reason: row.try_get("reason")?,
        hellos: row.try_get("hellos")?,
        media_up: row.try_get("media_up")?,
        caller_sockets: row.try_get("caller_sockets")?,
        callee_sockets: row.try_get("callee_sockets")?,
        accepted_by: row.try_get("accepted_by")?,
        timer_at: row.try_get("timer_at")?,
        version: row.try_get("progress_version")?,
    })
}

impl SqlStore {
    /// Every row `sql` reads, decoded: run right here on a SQLite file (see
    /// `inline_reads.rs`), else on a sqlx reader connection.
    async fn read_rows<T: FromColumns>(
        &self,
        name: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<T>, StoreError> {
        statement(name, async {
            if let Some(inline) = self.inline_reads() {
                match inline.rows(sql, params) {
                    // A lock to wait for: waited for below, on a reader's thread.
                    Err(StoreError::Timeout(_)) => {}
                    done => return done,
                }
            }
            let mut query = sqlx::query(sql);
            for param in params {
                query = match *param {
                    Param::Text(text) => query.bind(text),
                    Param::Int(int) => query.bind(int),
                };
            }
            let rows = query.fetch_all(&mut *self.reader().await?).await?;
            Ok(rows.iter().map(T::from_columns).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Runs a write that changes what the read cache may hold, and forgets
    /// `what` here and, on PostgreSQL when it is announced, on every other
    /// instance: notified in the same transaction, so they hear of it exactly
    /// when it commits. Forgotten here whatever the outcome, since a failed
    /// commit may still have happened. Returns the rows affected.
    async fn write_forgetting<'q>(
        &self,
        name: &'static str,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        what: Forget,
    ) -> Result<u64, StoreError> {
        let written = async {
            let mut conn = self.writer().await?;
            if self.backend == Backend::Postgres && what.is_announced() {
                let mut tx = conn.begin().await?;
                let affected = statement(name, query.execute(&mut *tx))
                    .await?
                    .rows_affected();
                if affected > 0 {
                    crate::bus::notify(&mut tx, INVALIDATION_TOPIC, &what.to_message()).await?;
                }
                tx.commit().await?;
                Ok(affected)
            } else {
                Ok(statement(name, query.execute(&mut *conn))
                    .await?
                    .rows_affected())
            }
        }
        .await;
        self.cache.forget(&what);
        written
    }

    async fn pause_between_batches(&self) {
        match self.backend {
            Backend::Sqlite => tokio::time::sleep(SQLITE_PURGE_PAUSE).await,
            // Row locks: a batch never blocks writers of live rows.
            Backend::Postgres => tokio::task::yield_now().await,
        }
    }

    /// Runs `sql` (which deletes at most `PURGE_BATCH` rows expired at `now`)
    /// until a batch comes back short; returns the total.
    async fn purge_in_batches(
        &self,
        name: &'static str,
        sql: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = statement(
                name,
                sqlx::query(sql)
                    .bind(now)
                    .bind(PURGE_BATCH)
                    .execute(&mut *self.writer().await?),
            )
            .await?
            .rows_affected();
            total += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(total);
            }
            self.pause_between_batches().await;
        }
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        statement(
            "ping",
            sqlx::query("SELECT 1").execute(&mut *self.reader().await?),
        )
        .await?;
        Ok(())
    }

    async fn create_session(
        &self,
        session: &Session,
        push_urls: &[PushUrl],
    ) -> Result<(), StoreError> {
        let written = self
            .batcher
            .write(vec![Write::session(session.clone(), push_urls)])
            .await;
        // An anonymous session is a user of its own that nobody has read
        // yet; a device joining an FxA user adds to what may be cached.
        if session.user_id != session.id_hmac {
            self.cache
                .forget(&Forget::PushUrls(session.user_id.clone()));
        }
        written?;
        Ok(())
    }

    async fn session(&self, id_hmac: &str, now: Timestamp) -> Result<Option<Session>, StoreError> {
        let sessions = self
            .read_rows(
                "select_session",
                "SELECT id_hmac, key, user_id, expires_at FROM sessions WHERE id_hmac = $1 AND expires_at > $2",
                &[Param::Text(id_hmac), Param::Int(now)],
            )
            .await?;
        Ok(sessions.into_iter().next())
    }

    async fn touch_session(&self, id_hmac: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        statement(
            "touch_session",
            sqlx::query("UPDATE sessions SET expires_at = $2 WHERE id_hmac = $1")
                .bind(id_hmac)
                .bind(expires_at)
                .execute(&mut *self.writer().await?),
        )
        .await?;
        Ok(())
    }

    async fn remember_nonce_of_live_session(
        &self,
        id_hmac: &str,
        nonce: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.batcher
            .write(vec![Write::Nonce {
                id_hmac: id_hmac.into(),
                nonce: nonce.into(),
                expires_at,
                now,
            }])
            .await
    }

    async fn set_push_urls(
        &self,
        session: &Session,
        push_urls: &[PushUrl],
    ) -> Result<(), StoreError> {
        if push_urls.is_empty() {
            return Ok(());
        }
        let url_for = |topic| {
            push_urls
                .iter()
                .rev()
                .find(|p: &&PushUrl| p.topic == topic)
                .map(|p| p.url.as_str())
        };
        // A NULL parameter keeps the column: COALESCE picks the current value.
        let statement = sqlx::query(
            "UPDATE sessions SET calls_push_url = COALESCE($2, calls_push_url), \
             rooms_push_url = COALESCE($3, rooms_push_url) WHERE id_hmac = $1",
        )
        .bind(&session.id_hmac)
        .bind(url_for(PushTopic::Calls))
        .bind(url_for(PushTopic::Rooms));
        self.write_forgetting(
            "update_push_urls",
            statement,
            Forget::PushUrls(session.user_id.clone()),
        )
        .await?;
        Ok(())
    }

    async fn delete_push_urls(&self, session: &Session) -> Result<(), StoreError> {
        let statement = sqlx::query(
            "UPDATE sessions SET calls_push_url = NULL, rooms_push_url = NULL WHERE id_hmac = $1",
        )
        .bind(&session.id_hmac);
        self.write_forgetting(
            "delete_push_urls",
            statement,
            Forget::PushUrls(session.user_id.clone()),
        )
        .await?;
        Ok(())
    }

    async fn push_urls(
        &self,
        user_id: &str,
        topic: PushTopic,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        // DISTINCT: a device that registered again under a new session must
        // not be notified twice.
        let column = topic.column();
        Ok(statement(
            "select_push_urls",
            sqlx::query_scalar(&format!(
                "SELECT DISTINCT {column} FROM sessions \
             WHERE {} AND expires_at > $2 AND {column} IS NOT NULL ORDER BY {column}",
                sessions_of_user("sessions", "$1")
            ))
            .bind(user_id)
            .bind(now)
            .fetch_all(&mut *self.reader().await?),
        )
        .await?)
    }

    async fn create_call_url(&self, call_url: &CallUrl) -> Result<(), StoreError> {
        self.batcher
            .write(vec![Write::CallUrl(call_url.clone())])
            .await?;
        Ok(())
    }

    async fn call_url(&self, token: &str) -> Result<Option<CallUrl>, StoreError> {
        if let Some(cached) = self.cache.call_url(token) {
            return Ok(Some(cached));
        }
        let read_in = self.cache.generation();
        let row = statement(
            "select_call_url",
            sqlx::query(&format!(
                "SELECT {CALL_URL_COLUMNS} FROM call_urls WHERE token = $1"
            ))
            .bind(token)
            .fetch_optional(&mut *self.reader().await?),
        )
        .await?;
        let found = row.as_ref().map(CallUrl::from_columns).transpose()?;
        if let Some(call_url) = &found {
            self.cache.keep_call_url(read_in, call_url);
        }
        Ok(found)
    }

    async fn call_url_with_push_urls(
        &self,
        token: &str,
        topic: PushTopic,
        now: Timestamp,
    ) -> Result<Option<(CallUrl, Vec<String>)>, StoreError> {
        if let Some(call_url) = self.cache.call_url(token)
            && let Some(push_urls) = self.cache.push_urls(&call_url.user_id, topic, now)
        {
            return Ok(Some((call_url, push_urls.to_vec())));
        }
        let read_in = self.cache.generation();
        // One row per push URL, or one with a NULL push URL.
        let column = topic.column();
        let rows = statement("select_call_url_with_push_urls", sqlx::query(&format!(
            "SELECT u.token, u.user_id, u.caller_id, u.issuer, u.subject, u.created_at, u.expires_at, \
             s.{column} AS push_url, s.expires_at AS push_url_expires_at \
             FROM call_urls u LEFT JOIN sessions s \
             ON {} AND s.expires_at > $2 AND s.{column} IS NOT NULL \
             WHERE u.token = $1",
            sessions_of_user("s", "u.user_id")
        ))
        .bind(token)
        .bind(now)
        .fetch_all(&mut *self.reader().await?))
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let call_url = CallUrl::from_columns(first)?;
        let mut push_urls = Vec::with_capacity(rows.len());
        // The set stays right until the first of these sessions expires.
        let mut until = Timestamp::MAX;
        for row in &rows {
            if let Some(url) = row.try_get::<Option<String>, _>("push_url")? {
                push_urls.push(url);
                until = until.min(row.try_get("push_url_expires_at")?);
            }
        }
        push_urls.sort_unstable();
        push_urls.dedup();
        self.cache.keep_call_url(read_in, &call_url);
        self.cache
            .keep_push_urls(read_in, &call_url.user_id, topic, &push_urls, now, until);
        Ok(Some((call_url, push_urls)))
    }

    async fn call_urls(&self, user_id: &str, now: Timestamp) -> Result<Vec<CallUrl>, StoreError> {
        let rows = statement(
            "select_call_urls",
            sqlx::query(&format!(
                "SELECT {CALL_URL_COLUMNS} FROM call_urls WHERE user_id = $1 AND expires_at > $2 \
             ORDER BY created_at, token"
            ))
            .bind(user_id)
            .bind(now)
            .fetch_all(&mut *self.reader().await?),
        )
        .await?;
        Ok(rows
            .iter()
            .map(CallUrl::from_columns)
            .collect::<Result<_, _>>()?)
    }

    async fn update_call_url(
        &self,
        token: &str,
        user_id: &str,
        update: &CallUrlUpdate,
    ) -> Result<bool, StoreError> {
        // A NULL parameter keeps the column: COALESCE picks the current value.
        let statement = sqlx::query(
            "UPDATE call_urls SET caller_id = COALESCE($3, caller_id), issuer = COALESCE($4, issuer), \
             subject = COALESCE($5, subject), expires_at = COALESCE($6, expires_at) \
             WHERE token = $1 AND user_id = $2",
        )
        .bind(token)
        .bind(user_id)
        .bind(&update.caller_id)
        .bind(&update.issuer)
        .bind(&update.subject)
        .bind(update.expires_at);
        let updated = self
            .write_forgetting(
                "update_call_url",
                statement,
                Forget::CallUrl(token.to_string()),
            )
            .await?;
        Ok(updated > 0)
    }

    async fn delete_call_url(&self, token: &str, user_id: &str) -> Result<bool, StoreError> {
        let statement = sqlx::query("DELETE FROM call_urls WHERE token = $1 AND user_id = $2")
            .bind(token)
            .bind(user_id);
        let deleted = self
            .write_forgetting(
                "delete_call_url",
                statement,
                Forget::CallUrl(token.to_string()),
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn create_call(&self, call: &Call) -> Result<(), StoreError> {
        self.batcher
            .write(vec![Write::Call(Box::new(call.clone()))])
            .await?;
        Ok(())
    }

    async fn calls(
        &self,
        user_id: &str,
        version: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<Call>, StoreError> {
        self.read_rows(
            "select_calls",
            &format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE user_id = $1 AND created_at >= $2 AND expires_at > $3 \
                 AND state <> 'terminated' ORDER BY created_at, call_id"
            ),
            &[Param::Text(user_id), Param::Int(version), Param::Int(now)],
        )
        .await
    }

    async fn call_progress(
        &self,
        call_id: &str,
    ) -> Result<Option<(Call, CallProgress)>, StoreError> {
        let row = statement(
            "select_call_progress",
            sqlx::query(&format!(
                "SELECT {CALL_COLUMNS}, {PROGRESS_COLUMNS} FROM calls WHERE call_id = $1"
            ))
            .bind(call_id)
            .fetch_optional(&mut *self.reader().await?),
        )
        .await?;
        Ok(row
            .map(|row| Ok::<_, sqlx::Error>((Call::from_columns(&row)?, progress_from_row(&row)?)))
            .transpose()?)
    }

    async fn update_call_progress(
        &self,
        call_id: &str,
        expected_version: i64,
        progress: &CallProgress,
        announce: Option<Announcement<'_>>,
    ) -> Result<bool, StoreError> {
        let update = sqlx::query(
            "UPDATE calls SET state = $1, reason = $2, hellos = $3, media_up = $4, caller_sockets = $5, \
             callee_sockets = $6, accepted_by = $7, timer_at = $8, progress_version = $9 \
             WHERE call_id = $10 AND progress_version = $11",
        )
        .bind(progress.state.as_str())
        .bind(&progress.reason)
        .bind(progress.hellos)
        .bind(progress.media_up)
        .bind(progress.caller_sockets)
        .bind(progress.callee_sockets)
        .bind(&progress.accepted_by)
        .bind(progress.timer_at)
        .bind(expected_version + 1)
        .bind(call_id)
        .bind(expected_version);
        let mut conn = self.writer().await?;
        match (self.backend, announce) {
            (Backend::Postgres, Some(announce)) => {
                let mut tx = conn.begin().await?;
                if statement("update_call_progress", update.execute(&mut *tx))
                    .await?
                    .rows_affected()
                    == 0
                {
                    return Ok(false);
                }
                crate::bus::notify(&mut tx, announce.topic, announce.message).await?;
                tx.commit().await?;
                Ok(true)
            }
            (_, announce) => {
                if statement("update_call_progress", update.execute(&mut *conn))
                    .await?
                    .rows_affected()
                    == 0
                {
                    return Ok(false);
                }
                // Still holding SQLite's one writer: the next transition of
                // this call cannot commit, let alone be delivered, before this one.
                if let Some(announce) = announce {
                    self.bus.deliver(announce.topic, announce.message.into());
                }
                Ok(true)
            }
        }
    }

    fn gauges(&self) -> super::StoreGauges {
        self.gauges()
    }

    fn bus(&self) -> &crate::bus::Bus {
        &self.bus
    }

    async fn take_signaling_seat(
        &self,
        seat: &Seat<'_>,
        now: Timestamp,
        stale_before: Timestamp,
        announce: Announcement<'_>,
    ) -> Result<SeatTaken, StoreError> {
        self.take_seat(seat, now, stale_before, announce).await
    }

    async fn leave_signaling_seat(
        &self,
        seat: &SeatRow,
        stale_before: Option<Timestamp>,
        announce: Announcement<'_>,
    ) -> Result<bool, StoreError> {
        self.leave_seat(seat, stale_before, announce).await
    }

    async fn refresh_signaling_seats(
        &self,
        instance_id: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.refresh_seats(instance_id, now).await
    }

    async fn stale_signaling_seats(
        &self,
        stale_before: Timestamp,
        limit: i64,
    ) -> Result<Vec<SeatRow>, StoreError> {
        self.stale_seats(stale_before, limit).await
    }

    async fn delete_user(&self, user_id: &str) -> Result<(), StoreError> {
        let forget = Forget::User(user_id.to_string());
        let deleted = async {
            let mut conn = self.writer().await?;
            let mut tx = conn.begin().await?;
            // Nonces first, while the sessions still name them; push URLs go
            // with their sessions.
            let sessions = sessions_of_user("sessions", "$1");
            for sql in [
                format!("DELETE FROM hawk_nonces WHERE id_hmac IN (SELECT id_hmac FROM sessions WHERE {sessions})"),
                format!("DELETE FROM sessions WHERE {sessions}"),
                "DELETE FROM call_urls WHERE user_id = $1".to_string(),
                "DELETE FROM calls WHERE user_id = $1".to_string(),
            ] {
                statement("delete_user", sqlx::query(&sql).bind(user_id).execute(&mut *tx)).await?;
            }
            if self.backend == Backend::Postgres {
                crate::bus::notify(&mut tx, INVALIDATION_TOPIC, &forget.to_message()).await?;
            }
            Ok::<_, StoreError>(tx.commit().await?)
        }
        .await;
        self.cache.forget(&forget);
        deleted
    }

    async fn claim_ended_sessions(
        &self,
        now: Timestamp,
        call_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EndedSession>, StoreError> {
        // `session_ended_at IS NULL` in the outer WHERE too: on PostgreSQL a
        // concurrent claimer re-checks it on the row it waited for, so a
        // session is returned to one instance only.
        let query = match call_id {
            Some(call_id) => sqlx::query(
                "UPDATE calls SET session_ended_at = $1 WHERE call_id = $2 \
                 AND session_ended_at IS NULL AND state = 'terminated' \
                 RETURNING provider, session_id, channel",
            )
            .bind(now)
            .bind(call_id.to_owned()),
            None => sqlx::query(
                "UPDATE calls SET session_ended_at = $1 WHERE session_ended_at IS NULL AND call_id IN \
                 (SELECT call_id FROM calls WHERE session_ended_at IS NULL AND (state = 'terminated' \
                  OR (expires_at <= $1 AND state <> 'connected') OR expires_at <= $2) LIMIT $3) \
                 RETURNING provider, session_id, channel",
            )
            .bind(now)
            .bind(now - UNFINISHED_CALL_RETENTION_SECONDS)
            .bind(limit),
        };
        let rows = statement(
            "claim_ended_sessions",
            query.fetch_all(&mut *self.writer().await?),
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EndedSession {
                    provider: row.try_get("provider")?,
                    session_id: row.try_get("session_id")?,
                    channel: row.try_get("channel")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        // A session's push URLs go with it; its nonces expire on their own.
        let mut total = self
            .purge_in_batches(
                "purge_sessions",
                "DELETE FROM sessions WHERE id_hmac IN (SELECT id_hmac FROM sessions WHERE expires_at <= $1 LIMIT $2)",
                now,
            )
            .await?;
        // SQLite's nonces are keyed by the order they came in (see
        // `nonce_ledger.rs`); PostgreSQL's by (session, nonce), as row values.
        let purge_nonces = match self.backend {
            Backend::Sqlite => {
                "DELETE FROM hawk_nonces WHERE id IN \
                 (SELECT id FROM hawk_nonces WHERE expires_at <= $1 LIMIT $2)"
            }
            Backend::Postgres => {
                "DELETE FROM hawk_nonces WHERE (id_hmac, nonce) IN \
                 (SELECT id_hmac, nonce FROM hawk_nonces WHERE expires_at <= $1 LIMIT $2)"
            }
        };
        total += self
            .purge_in_batches("purge_nonces", purge_nonces, now)
            .await?;
        total += self
            .purge_in_batches(
                "purge_call_urls",
                "DELETE FROM call_urls WHERE token IN (SELECT token FROM call_urls WHERE expires_at <= $1 LIMIT $2)",
                now - EXPIRED_CALL_URL_RETENTION_SECONDS,
            )
            .await?;
        // A call no longer listed may still be in progress (a conversation
        // outlasts its listing); it goes once it has ended, or after a day.
        total += self
            .purge_in_batches(
                "purge_ended_calls",
                "DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls WHERE expires_at <= $1 \
                 AND state = 'terminated' AND session_ended_at IS NOT NULL LIMIT $2)",
                now,
            )
            .await?;
        total += self
            .purge_in_batches(
                "purge_unfinished_calls",
                "DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls WHERE expires_at <= $1 LIMIT $2)",
                now - UNFINISHED_CALL_RETENTION_SECONDS,
            )
            .await?;
        total += self
            .purge_in_batches(
                "purge_bus_messages",
                "DELETE FROM bus_messages WHERE id IN (SELECT id FROM bus_messages WHERE created_at <= $1 LIMIT $2)",
                now - crate::bus::STORED_MESSAGE_SECONDS,
            )
            .await?;
        Ok(total)
    }
}
