//! Presence in the signaling relay: which socket stands for each of the (at
//! most two) participants of a provider session, shared by every instance.
//!
//! Every change of a session's presence (a join, a leave, a sweep of a dead
//! instance's seat) runs in one transaction that first serializes on the
//! session (PostgreSQL: an advisory lock on it; SQLite: its one writer), and
//! its announcement is published in commit order. So a socket that reads the
//! session's seats while taking its own has seen every change committed
//! before its own announcement, and must act only on those after it.

use sqlx::{AnyConnection, Connection, Row};

use super::{Announcement, Backend, SqlStore, StoreError, Timestamp};
use crate::telemetry::statement;

/// How many identities a session holds.
pub const SEATS_PER_SESSION: usize = 2;

/// A socket taking the seat of `identity` in `session_id`.
#[derive(Debug, Clone, Copy)]
pub struct Seat<'a> {
    pub session_id: &'a str,
    pub identity: &'a str,
    pub socket_id: &'a str,
    /// The instance that refreshes the seat while the socket lives.
    pub instance_id: &'a str,
}

/// A seat as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatRow {
    pub session_id: String,
    pub identity: String,
    pub socket_id: String,
}

/// What taking a seat did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatTaken {
    /// Seated (taking over this identity's seat from an older socket, if it
    /// had one). `peer`: the other participant's seat, if it is taken.
    /// `swept`: stale seats of other identities that were freed on the way.
    Joined {
        peer: Option<SeatRow>,
        swept: Vec<SeatRow>,
    },
    /// Two other identities hold the session.
    Full,
}

impl SqlStore {
    /// Seats `seat`, unless two other live identities hold its session.
    /// Seats last refreshed before `stale_before` count as free. On success,
    /// `announce` is published in commit order.
    pub(super) async fn take_seat(
        &self,
        seat: &Seat<'_>,
        now: Timestamp,
        stale_before: Timestamp,
        announce: Announcement<'_>,
    ) -> Result<SeatTaken, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        self.lock_session(&mut tx, seat.session_id).await?;
        let rows = statement(
            "select_signaling_seats",
            sqlx::query(
                "SELECT identity, socket_id, seen_at FROM signaling_seats WHERE session_id = $1",
            )
            .bind(seat.session_id)
            .fetch_all(&mut *tx),
        )
        .await?;
        let mut mine = false;
        let mut live = Vec::new();
        let mut swept = Vec::new();
        for row in &rows {
            let identity: String = row.try_get("identity")?;
            let seen_at: Timestamp = row.try_get("seen_at")?;
            let other = SeatRow {
                session_id: seat.session_id.to_string(),
                identity,
                socket_id: row.try_get("socket_id")?,
            };
            if other.identity == seat.identity {
                mine = true;
            } else if seen_at < stale_before {
                swept.push(other);
            } else {
                live.push(other);
            }
        }
        if !mine && live.len() >= SEATS_PER_SESSION {
            tx.rollback().await?;
            return Ok(SeatTaken::Full);
        }
        for stale in &swept {
            statement(
                "sweep_signaling_seat",
                sqlx::query("DELETE FROM signaling_seats WHERE session_id = $1 AND identity = $2")
                    .bind(&stale.session_id)
                    .bind(&stale.identity)
                    .execute(&mut *tx),
            )
            .await?;
        }
        let write = if mine {
            "UPDATE signaling_seats SET socket_id = $3, instance_id = $4, seen_at = $5 \
             WHERE session_id = $1 AND identity = $2"
        } else {
            "INSERT INTO signaling_seats (session_id, identity, socket_id, instance_id, seen_at) \
             VALUES ($1, $2, $3, $4, $5)"
        };
        statement(
            "take_signaling_seat",
            sqlx::query(write)
                .bind(seat.session_id)
                .bind(seat.identity)
                .bind(seat.socket_id)
                .bind(seat.instance_id)
                .bind(now)
                .execute(&mut *tx),
        )
        .await?;
        self.commit_announcing(tx, announce).await?;
        Ok(SeatTaken::Joined {
            peer: live.pop(),
            swept,
        })
    }

    /// Frees `seat` if `seat.socket_id` still holds it (and, with
    /// `stale_before`, only if it was last refreshed before then). When it
    /// was freed, `announce` is published in commit order; false otherwise.
    pub(super) async fn leave_seat(
        &self,
        seat: &SeatRow,
        stale_before: Option<Timestamp>,
        announce: Announcement<'_>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        self.lock_session(&mut tx, &seat.session_id).await?;
        let deleted = statement("leave_signaling_seat", sqlx::query(
            "DELETE FROM signaling_seats WHERE session_id = $1 AND identity = $2 AND socket_id = $3 \
             AND seen_at < $4",
        )
        .bind(&seat.session_id)
        .bind(&seat.identity)
        .bind(&seat.socket_id)
        .bind(stale_before.unwrap_or(Timestamp::MAX))
        .execute(&mut *tx))
        .await?
        .rows_affected();
        if deleted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        self.commit_announcing(tx, announce).await?;
        Ok(true)
    }

    /// Marks the seats of `instance_id` as alive at `now`.
    pub(super) async fn refresh_seats(
        &self,
        instance_id: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        Ok(statement(
            "refresh_signaling_seats",
            sqlx::query("UPDATE signaling_seats SET seen_at = $1 WHERE instance_id = $2")
                .bind(now)
                .bind(instance_id)
                .execute(&mut *self.writer().await?),
        )
        .await?
        .rows_affected())
    }

    /// Up to `limit` seats last refreshed before `stale_before`.
    pub(super) async fn stale_seats(
        &self,
        stale_before: Timestamp,
        limit: i64,
    ) -> Result<Vec<SeatRow>, StoreError> {
        let rows = statement("stale_signaling_seats", sqlx::query(
            "SELECT session_id, identity, socket_id FROM signaling_seats WHERE seen_at < $1 LIMIT $2",
        )
        .bind(stale_before)
        .bind(limit)
        .fetch_all(&mut *self.reader().await?))
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                Ok::<_, sqlx::Error>(SeatRow {
                    session_id: row.try_get("session_id")?,
                    identity: row.try_get("identity")?,
                    socket_id: row.try_get("socket_id")?,
                })
            })
            .collect::<Result<_, _>>()?)
    }

    /// Serializes presence changes of one session until the transaction
    /// ends. SQLite needs nothing: its one writer runs one at a time.
    async fn lock_session(
        &self,
        conn: &mut AnyConnection,
        session_id: &str,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            // In a subquery: the Any driver cannot read `void`. A hash
            // collision only serializes two sessions' joins, harmlessly.
            statement("lock_signaling_session", sqlx::query(
                "SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS locked",
            )
            .bind(session_id)
            .fetch_one(&mut *conn))
            .await?;
        }
        Ok(())
    }

    /// Commits `tx`, publishing `announce` in commit order: on PostgreSQL
    /// by NOTIFY inside the transaction, on SQLite right after the commit,
    /// still holding the one writer.
    async fn commit_announcing(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        announce: Announcement<'_>,
    ) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => {
                crate::bus::notify(&mut tx, announce.topic, announce.message).await?;
                tx.commit().await?;
            }
            Backend::Sqlite => {
                tx.commit().await?;
                self.bus.deliver(announce.topic, announce.message.into());
            }
        }
        Ok(())
    }
}
