//! SQLite reads run on the requesting thread, with no hand-off.
//!
//! Why: sqlx drives each SQLite connection from a thread of its own, so every
//! statement is a message to that thread, a wake-up of it, and a wake-up of
//! the tokio worker when the rows come back. On two cores those thread
//! switches cost more than the read: the authenticated listing
//! (`GET /calls?version=0`) made 2.3 context switches per request, against
//! 0.7 for a registration whose write shares a group-commit round
//! (BENCHMARKS.md). A point or range read of indexed rows in WAL mode takes
//! a few microseconds and never waits for the writer, so it is cheaper to run
//! it right here, as one would compute an HMAC, than to hand it off.
//!
//! Only the reads on the hot paths come here (a user's calls, a session on a
//! cache miss); every other statement, and every write, still goes through
//! sqlx. The connections are rusqlite's over the same SQLite library sqlx
//! links (one `libsqlite3-sys`), opened on the same file, read-only
//! (`query_only`), and kept in a small free list: a read takes one, runs to
//! completion without awaiting, and puts it back, so there are never more
//! than there are threads reading at once.
//!
//! A read here never waits for a lock: the connections have no busy timeout.
//! In WAL mode a reader meets a lock only in rare moments (another process
//! recovering the file after a crash, or opening it while the last one
//! closes); SQLite then answers SQLITE_BUSY at once, and the caller runs the
//! read on a sqlx reader instead, whose thread may wait. Sleeping in the busy
//! handler here would stall every request on this worker.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::{FromSql, ToSql, ToSqlOutput};
use rusqlite::{Connection, OpenFlags, Statement};

use super::StoreError;
use super::queries::{Columns, FromColumns, Param};

/// Most idle connections kept; more are opened if more threads read at once,
/// and closed when they come back to a full list.
const MAX_IDLE: usize = 8;

pub(super) struct InlineReaders {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl InlineReaders {
    /// Opens one connection to `path` at once, so a file that cannot be read
    /// fails start-up rather than the first request.
    pub fn open(path: PathBuf) -> Result<Self, StoreError> {
        let readers = InlineReaders {
            path,
            idle: Mutex::new(Vec::new()),
        };
        let first = readers.connect()?;
        readers.put_back(first);
        Ok(readers)
    }

    /// Runs `read` on an idle connection (opening one if none is idle). A
    /// read that would have to wait for a lock fails at once with
    /// [`StoreError::Timeout`].
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let result = read(&conn);
        self.put_back(conn);
        result
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// The readers' settings of `connection.rs` (`sqlite_pragmas`) but the
    /// busy timeout (see above): temporary B-trees in memory, and no writes.
    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA query_only = ON")?;
        Ok(conn)
    }

    /// Every row `sql` reads with `params`, decoded.
    pub fn rows<T: FromColumns>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<T>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(sql)?;
            bind_numbered(&mut statement, params)?;
            let mut rows = statement.raw_query();
            let mut decoded = Vec::new();
            while let Some(row) = rows.next()? {
                decoded.push(T::from_columns(&SqliteRow::new(row))?);
            }
            Ok(decoded)
        })
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Param::Text(text) => text.to_sql(),
            Param::Int(int) => int.to_sql(),
        }
    }
}

/// rusqlite's row, whose lookup by name compares every column's name in
/// turn. The decoders ask for columns in the order they are selected, so the
/// column after the last one read is tried first, and all of them only when
/// it is not the one.
struct SqliteRow<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    next: Cell<usize>,
}

impl<'a, 'r> SqliteRow<'a, 'r> {
    fn new(row: &'a rusqlite::Row<'r>) -> Self {
        SqliteRow {
            row,
            next: Cell::new(0),
        }
    }
}

impl Columns for SqliteRow<'_, '_> {
    fn column<T>(&self, name: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any> + FromSql,
    {
        let decode_error = |err: rusqlite::Error| sqlx::Error::ColumnDecode {
            index: name.into(),
            source: Box::new(err),
        };
        let statement = self.row.as_ref();
        let guess = self.next.get();
        let index = match statement.column_name(guess) {
            Ok(found) if found == name => guess,
            _ => statement.column_index(name).map_err(decode_error)?,
        };
        self.next.set(index + 1);
        self.row.get(index).map_err(decode_error)
    }
}

/// Binds `values` to a statement written with sqlx's `$N` placeholders, the
/// N-th value to `$N` wherever it appears (SQLite itself numbers named
/// parameters in order of first appearance, which is not always N).
fn bind_numbered(statement: &mut Statement<'_>, values: &[impl ToSql]) -> rusqlite::Result<()> {
    for index in 1..=statement.parameter_count() {
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|number| number.parse::<usize>().ok())
            .filter(|number| (1..=values.len()).contains(number))
            .ok_or(rusqlite::Error::InvalidParameterCount(index, values.len()))?;
        statement.raw_bind_parameter(index, &values[number - 1])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rusqlite::Connection;

    use super::{InlineReaders, bind_numbered};
    use crate::store::StoreError;

    #[test]
    fn placeholders_get_their_numbered_value_wherever_they_appear() {
        let conn = Connection::open_in_memory().unwrap();
        let mut statement = conn.prepare("SELECT $2 || $1 || $2 || $3").unwrap();
        bind_numbered(&mut statement, &["a", "b", "c"]).unwrap();
        let joined: String = statement
            .raw_query()
            .next()
            .unwrap()
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(joined, "babc");

        let mut statement = conn.prepare("SELECT $1, $4").unwrap();
        assert!(bind_numbered(&mut statement, &["a", "b"]).is_err());
        let mut statement = conn.prepare("SELECT ?").unwrap();
        assert!(bind_numbered(&mut statement, &["a"]).is_err());
    }

    /// A read that meets a lock answers at once, so the caller can take the
    /// read to a thread that may wait, instead of sleeping on this one.
    #[test]
    fn a_read_that_meets_a_lock_fails_at_once_as_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loop.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        let readers = InlineReaders::open(path).unwrap();
        let count = |readers: &InlineReaders| {
            readers.read(|conn| {
                Ok(conn.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0))?)
            })
        };
        assert_eq!(count(&readers).unwrap(), 1);

        // In exclusive locking mode, a WAL database's writer keeps every
        // other connection out until it closes.
        drop(readers);
        holder
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT;")
            .unwrap();
        let readers = InlineReaders::open(dir.path().join("loop.db")).unwrap();
        let started = Instant::now();
        let result = count(&readers);
        assert!(matches!(result, Err(StoreError::Timeout(_))), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        drop(holder);
        assert_eq!(count(&readers).unwrap(), 2);
    }
}
