//! What a storage failure means to its caller, without sqlx in sight.

use std::sync::Arc;

use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// The database's own error, kept for the log. Shared so one failure can be
/// answered to every request of a write round (see `batch.rs`).
pub type StoreErrorSource = Arc<dyn std::error::Error + Send + Sync>;

/// A storage failure, sorted by what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or cannot serve: connection refused
    /// or lost, server shutting down or out of disk, a read-only replica
    /// after a failover, SQLite failing to read or write its file. Nothing
    /// is wrong with the request; the same request may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] StoreErrorSource),
    /// The database did not answer in time: no free connection, or a lock
    /// (SQLite's write lock, a PostgreSQL lock or statement timeout) held
    /// for too long. Usually overload; retrying later may succeed.
    #[error("the database did not answer in time: {0}")]
    Timeout(#[source] StoreErrorSource),
    /// The row clashes with one already stored (a duplicate key). Our keys
    /// are random, so a clash means a collision or a replayed write: the
    /// same row will clash again, a freshly generated one will not.
    #[error("the row conflicts with a stored one: {0}")]
    Conflict(#[source] StoreErrorSource),
    /// Anything else: a statement the database rejects, a row that does not
    /// decode, a corrupt file. A bug or a schema mismatch, not load, so
    /// retrying does not help.
    #[error("database error: {0}")]
    Other(#[source] StoreErrorSource),
}

impl StoreError {
    /// A failure to get a connection at all. Whatever the database said (a
    /// missing database, refused credentials, "not accepting connections"),
    /// no statement ran, and to the request the database is unavailable.
    pub(super) fn acquiring(err: sqlx::Error) -> Self {
        match Self::from(err) {
            timeout @ StoreError::Timeout(_) => timeout,
            StoreError::Unavailable(source)
            | StoreError::Conflict(source)
            | StoreError::Other(source) => StoreError::Unavailable(source),
        }
    }

    /// Whether the same request may succeed later without any change.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

/// Which kind a database error is, before it is wrapped.
#[derive(Clone, Copy)]
enum Kind {
    Unavailable,
    Timeout,
    Conflict,
    Other,
}

impl Kind {
    fn error(self, source: StoreErrorSource) -> StoreError {
        match self {
            Kind::Unavailable => StoreError::Unavailable(source),
            Kind::Timeout => StoreError::Timeout(source),
            Kind::Conflict => StoreError::Conflict(source),
            Kind::Other => StoreError::Other(source),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        let kind = kind_of(&err);
        kind.error(Arc::new(err))
    }
}

fn kind_of(err: &sqlx::Error) -> Kind {
    match err {
        sqlx::Error::PoolTimedOut => Kind::Timeout,
        // A broken or closed connection, or the store shutting down.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Kind::Unavailable,
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                Kind::Conflict
            } else if db.try_downcast_ref::<SqliteError>().is_some() {
                sqlite_kind(db.code().as_deref())
            } else if let Some(postgres) = db.try_downcast_ref::<PgDatabaseError>() {
                postgres_kind(postgres.code())
            } else {
                Kind::Other
            }
        }
        _ => Kind::Other,
    }
}

/// The same sorting for SQLite's own errors, from the inline reads.
impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        let kind = match &err {
            rusqlite::Error::SqliteFailure(failure, _) => sqlite_code_kind(failure.extended_code),
            _ => Kind::Other,
        };
        kind.error(Arc::new(err))
    }
}

/// SQLite's extended result code, as a decimal string.
fn sqlite_kind(code: Option<&str>) -> Kind {
    match code.and_then(|code| code.parse::<i32>().ok()) {
        Some(code) => sqlite_code_kind(code),
        None => Kind::Other,
    }
}

fn sqlite_code_kind(code: i32) -> Kind {
    match code & 0xff {
        // BUSY, LOCKED: another connection held the lock past busy_timeout.
        5 | 6 => Kind::Timeout,
        // NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
        7 | 8 | 10 | 13 | 14 | 15 => Kind::Unavailable,
        _ => Kind::Other,
    }
}

/// PostgreSQL's SQLSTATE.
fn postgres_kind(code: &str) -> Kind {
    match code {
        // query_canceled (statement_timeout), lock_not_available (lock_timeout).
        "57014" | "55P03" => Kind::Timeout,
        // admin/crash shutdown, cannot connect now; read-only transaction
        // (a standby after a failover); serialization failure, deadlock:
        // all go away on their own.
        "57P01" | "57P02" | "57P03" | "25006" | "40001" | "40P01" => Kind::Unavailable,
        // Connection exceptions, insufficient resources (disk full, out of
        // memory, too many connections), system errors (I/O).
        _ if code.starts_with("08") || code.starts_with("53") || code.starts_with("58") => {
            Kind::Unavailable
        }
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes_are_sorted_by_what_a_retry_does() {
        assert!(matches!(sqlite_kind(Some("5")), Kind::Timeout));
        // SQLITE_BUSY_SNAPSHOT: extended bits do not change the kind.
        assert!(matches!(sqlite_kind(Some("517")), Kind::Timeout));
        assert!(matches!(sqlite_kind(Some("13")), Kind::Unavailable));
        assert!(matches!(sqlite_kind(Some("266")), Kind::Unavailable));
        // SQLITE_CONSTRAINT_NOTNULL is a bug, not a clash.
        assert!(matches!(sqlite_kind(Some("1299")), Kind::Other));
        assert!(matches!(sqlite_kind(Some("1")), Kind::Other));
        assert!(matches!(sqlite_kind(None), Kind::Other));
    }

    #[test]
    fn postgres_codes_are_sorted_by_what_a_retry_does() {
        assert!(matches!(postgres_kind("57014"), Kind::Timeout));
        assert!(matches!(postgres_kind("08006"), Kind::Unavailable));
        assert!(matches!(postgres_kind("53100"), Kind::Unavailable));
        assert!(matches!(postgres_kind("57P01"), Kind::Unavailable));
        assert!(matches!(postgres_kind("42P01"), Kind::Other));
        assert!(matches!(postgres_kind("23502"), Kind::Other));
    }

    #[test]
    fn connection_failures_are_unavailable_or_timeouts() {
        assert!(matches!(
            StoreError::acquiring(sqlx::Error::PoolTimedOut),
            StoreError::Timeout(_)
        ));
        assert!(matches!(
            StoreError::acquiring(sqlx::Error::RowNotFound),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolClosed),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::Other(_)
        ));
    }
}
