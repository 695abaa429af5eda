//! The SQL store: one set of queries over sqlx's `Any` driver, serving SQLite
//! and PostgreSQL alike.
//!
//! Portability rules the queries follow: `$N` placeholders (sqlx-sqlite maps
//! `$N` to the N-th bound value), `ON CONFLICT` upserts, TEXT and 64-bit
//! integers only, and affected-row counts instead of `RETURNING`. The only
//! backend-specific code is connection setup and the migration folders.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Row};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::batch::{Write, WriteBatcher};
use super::{Call, CallUrl, CallUrlUpdate, PushTopic, PushUrl, Session, Store, Timestamp};
use crate::config::Config;

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

/// How long a SQLite writer waits for the write lock before failing with
/// SQLITE_BUSY. Writes are short, so only a stalled disk gets anywhere near it.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// A pooled PostgreSQL connection idle this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(5);

/// Most write rounds running at once on PostgreSQL (see `batch.rs`).
const POSTGRES_WRITE_ROUNDS: usize = 4;

/// How long a request waits for a pooled connection before getting a 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The database `database.url` names, by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn of(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!("database.url: must start with sqlite: or postgres://")
        }
    }
}

/// The `Store`: every statement that writes runs on a writer connection,
/// every read on a reader.
///
/// On PostgreSQL both come from one sqlx pool. On a SQLite file they are
/// connections this store holds for its whole life, outside any sqlx pool:
///
/// - sqlx runs each SQLite connection on its own OS thread, and every
///   statement is a hand-off to that thread and back. A pool adds a second
///   hand-off per statement (it pings each connection it takes back), so
///   holding the connections halves the thread switches, which are most of
///   the CPU a request costs.
/// - Exactly one writer: SQLite lets one connection write at a time, and with
///   several writers the losers sleep in SQLite's busy handler (backing off up
///   to 100 ms) while the lock sits free. With one, writers queue in order on
///   a tokio mutex and each gets the lock the moment it is released. (The
///   busy timeout still covers other processes writing to the same file.)
/// - A few readers, sized to the cores: readers never block in WAL mode, and
///   more threads than cores only queue on the CPU.
///
/// An in-memory SQLite database is one connection (every `:memory:`
/// connection is a separate database), in a pool of one.
pub struct SqlStore {
    connections: Connections,
    backend: Backend,
    /// The hot writes, grouped into rounds; see `batch.rs`.
    batcher: WriteBatcher,
}

enum Connections {
    Pool(AnyPool),
    Held {
        writer: Arc<Mutex<AnyConnection>>,
        readers: Box<[Arc<Mutex<AnyConnection>>]>,
        /// Where the search for a free reader starts, rotating.
        next_reader: AtomicUsize,
        /// Opened on first use only; see `SqlStore::pool`.
        maintenance: AnyPool,
    },
}

/// A connection checked out for one store operation.
pub(super) enum Conn {
    Pooled(PoolConnection<Any>),
    Held(OwnedMutexGuard<AnyConnection>),
}

impl Deref for Conn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Pooled(conn) => conn,
            Conn::Held(conn) => conn,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Pooled(conn) => conn,
            Conn::Held(conn) => conn,
        }
    }
}

/// Waits for a held connection as long as a pool would, then fails the same way.
async fn lock_held(conn: &Arc<Mutex<AnyConnection>>) -> Result<Conn, sqlx::Error> {
    if let Ok(guard) = conn.clone().try_lock_owned() {
        return Ok(Conn::Held(guard));
    }
    tokio::time::timeout(ACQUIRE_TIMEOUT, conn.clone().lock_owned())
        .await
        .map(Conn::Held)
        .map_err(|_| sqlx::Error::PoolTimedOut)
}

/// Where writes run: a connection from the pool, or SQLite's one writer.
#[derive(Clone)]
pub(super) enum WriterHandle {
    Pool(AnyPool),
    Held(Arc<Mutex<AnyConnection>>),
}

fn writer_of(connections: &Connections) -> WriterHandle {
    match connections {
        Connections::Pool(pool) => WriterHandle::Pool(pool.clone()),
        Connections::Held { writer, .. } => WriterHandle::Held(writer.clone()),
    }
}

impl WriterHandle {
    pub(super) async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        match self {
            WriterHandle::Pool(pool) => pool.acquire().await.map(Conn::Pooled),
            WriterHandle::Held(writer) => lock_held(writer).await,
        }
    }
}

impl SqlStore {
    /// A pool on the same database with the same settings, for tests and
    /// maintenance tooling. On a SQLite file it is not the server's own
    /// connections but a separate one, opened on first use.
    pub fn pool(&self) -> &AnyPool {
        match &self.connections {
            Connections::Pool(pool) => pool,
            Connections::Held { maintenance, .. } => maintenance,
        }
    }

    async fn writer(&self) -> Result<Conn, sqlx::Error> {
        writer_of(&self.connections).acquire().await
    }

    async fn reader(&self) -> Result<Conn, sqlx::Error> {
        match &self.connections {
            Connections::Pool(pool) => pool.acquire().await.map(Conn::Pooled),
            Connections::Held {
                readers,
                next_reader,
                ..
            } => {
                let start = next_reader.fetch_add(1, Ordering::Relaxed);
                for i in 0..readers.len() {
                    let reader = &readers[(start + i) % readers.len()];
                    if let Ok(guard) = reader.clone().try_lock_owned() {
                        return Ok(Conn::Held(guard));
                    }
                }
                lock_held(&readers[start % readers.len()]).await
            }
        }
    }
}

/// Opens the database named by `database.url` (creating a SQLite file and its
/// folder if needed), applies pending migrations, and returns the store.
pub async fn connect(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::connect(config).await?))
}

/// Most SQLite reader connections: reads take microseconds, so more threads
/// than cores only queue on the CPU.
const SQLITE_MAX_READERS: usize = 4;

/// SQLite settings every connection gets. WAL (set once on the file by
/// `prepare_sqlite`) plus NORMAL loses nothing when the process dies, only on
/// power loss, and saves an fsync per commit. The busy timeout makes a writer
/// wait for another process's write (several servers on one file) instead of
/// failing. Temporary b-trees (sorts, DISTINCT) stay in memory. `query_only`
/// on readers: a write sent to a reader fails loudly instead of silently
/// contending for the lock.
fn sqlite_pragmas(read_only: bool) -> String {
    let query_only = if read_only { "ON" } else { "OFF" };
    format!(
        "PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
         PRAGMA temp_store = MEMORY; PRAGMA query_only = {query_only}"
    )
}

/// The writer's own settings.
///
/// A page cache bigger than SQLite's 2 MB default: inserts at random keys
/// (sessions, nonces) touch index pages all over the file, and every miss is
/// a read from the OS. Readers keep the default, since SQLite empties a
/// reader's cache whenever another connection has written.
///
/// Checkpoints every 250 WAL pages instead of 1000: the commit that triggers
/// one copies those pages into the database file and fsyncs it while every
/// other write waits, so it sets the write routes' tail latency. Measured on
/// 2 cores (`scripts/bench`): `POST /calls/{token}` p99 10.5–11 ms at 1000,
/// 8–9 ms at 500, 7.4 ms at 250, for about 5% less registration throughput.
const WRITER_PRAGMAS: &str = "PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 250";

async fn open_sqlite(
    options: &AnyConnectOptions,
    read_only: bool,
) -> anyhow::Result<Arc<Mutex<AnyConnection>>> {
    let mut conn = AnyConnection::connect_with(options)
        .await
        .context("database.url: cannot open the SQLite database")?;
    conn.execute(sqlite_pragmas(read_only).as_str()).await?;
    Ok(Arc::new(Mutex::new(conn)))
}

fn sqlite_pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A local file cannot go stale; skip the per-checkout ping.
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(sqlite_pragmas(false).as_str()).await?;
                Ok(())
            })
        })
}

impl SqlStore {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let url = config.database_url();
        let backend = Backend::of(&url)?;
        let max_connections = config.database.max_connections.max(1);
        let any_options = AnyConnectOptions::from_str(&url).context("database.url: invalid URL")?;
        let connections = match backend {
            Backend::Sqlite => {
                let in_memory = prepare_sqlite(&url).await?;
                if in_memory {
                    // Every connection the Any driver opens to `:memory:` is a
                    // new, empty database: keep exactly one, forever.
                    Connections::Pool(
                        sqlite_pool_options()
                            .max_connections(1)
                            .min_connections(1)
                            .idle_timeout(None)
                            .max_lifetime(None)
                            .connect_with(any_options)
                            .await
                            .context("database.url: cannot open the SQLite database")?,
                    )
                } else {
                    let cores = std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2);
                    let count = (max_connections as usize).min(cores.clamp(2, SQLITE_MAX_READERS));
                    let mut readers = Vec::with_capacity(count);
                    for _ in 0..count {
                        readers.push(open_sqlite(&any_options, true).await?);
                    }
                    let writer = open_sqlite(&any_options, false).await?;
                    writer.lock().await.execute(WRITER_PRAGMAS).await?;
                    Connections::Held {
                        writer,
                        readers: readers.into(),
                        next_reader: AtomicUsize::new(0),
                        maintenance: sqlite_pool_options()
                            .max_connections(1)
                            .connect_lazy_with(any_options),
                    }
                }
            }
            Backend::Postgres => Connections::Pool(
                AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // sqlx already pings every connection on release. Pinging again
                    // on every checkout would add a round trip to each query; only
                    // a connection that sat idle (through a server restart, say)
                    // is worth checking first.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IF_IDLE_FOR {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(any_options)
                    .await
                    .context("database.url: cannot connect to PostgreSQL")?,
            ),
        };
        migrate(&mut *writer_of(&connections).acquire().await?, backend).await?;
        // SQLite has one writer; PostgreSQL writers of different rows do not
        // wait for each other, so a few rounds may run at once there.
        let rounds = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => (max_connections as usize / 2).clamp(1, POSTGRES_WRITE_ROUNDS),
        };
        let store = SqlStore {
            batcher: WriteBatcher::start(writer_of(&connections), rounds),
            connections,
            backend,
        };
        let readers = match &store.connections {
            Connections::Pool(pool) => pool.options().get_max_connections() as usize,
            Connections::Held { readers, .. } => readers.len(),
        };
        tracing::info!(backend = ?backend, readers, "database ready");
        Ok(store)
    }
}

/// Creates the SQLite file (and its folder) if missing and switches it to WAL.
/// WAL is a property of the file, so setting it once here covers every pooled
/// connection; doing it per connection would need an exclusive lock each time.
/// Returns whether the database is in memory.
async fn prepare_sqlite(url: &str) -> anyhow::Result<bool> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if in_memory {
        return Ok(true);
    }
    let options =
        SqliteConnectOptions::from_str(url).context("database.url: invalid SQLite URL")?;
    let path = options.get_filename().to_path_buf();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "database.url: cannot create the folder {}",
                parent.display()
            )
        })?;
    }
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS.into()));
    // Switching a new file to WAL needs an exclusive lock, and SQLite answers
    // SQLITE_BUSY at once (without its busy handler) when several processes
    // open a fresh database together; the switch is done by whoever wins, so
    // the others only need to try again.
    let mut attempt = 0;
    let mut conn = loop {
        match options.connect().await {
            Ok(conn) => break conn,
            Err(err) if attempt < 50 && is_sqlite_busy(&err) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "database.url: cannot open the SQLite database {}",
                        path.display()
                    )
                });
            }
        }
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, path = %path.display(), "SQLite database is not in WAL mode");
    }
    conn.close().await?;
    Ok(false)
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6), with or without extended bits.
fn is_sqlite_busy(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    }
}

async fn migrate(conn: &mut AnyConnection, backend: Backend) -> anyhow::Result<()> {
    let mut migrator: Migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    // A newer release may have added migrations this binary does not know.
    // Migrations are kept additive (new tables, indexes, columns with
    // defaults), so an older binary (rolling deploy, rollback) keeps working
    // on the newer schema instead of refusing to start.
    migrator.set_ignore_missing(true);
    // PostgreSQL: sqlx holds an advisory lock while migrating, so processes
    // starting together apply each migration once. SQLite has no such lock: a
    // process that lost the race fails on "table already exists", its
    // transaction rolls back, and the retry sees the migration applied.
    let attempts = if backend == Backend::Sqlite { 5 } else { 1 };
    let mut attempt = 1;
    loop {
        match migrator.run(&mut *conn).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < attempts => {
                tracing::debug!(error = %err, attempt, "migration failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                return Err(anyhow::Error::new(err).context("applying database migrations failed"));
            }
        }
    }
}

fn session_from_row(row: &AnyRow) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id_hmac: row.try_get("id_hmac")?,
        key: row.try_get("key")?,
        user_id: row.try_get("user_id")?,
        expires_at: row.try_get("expires_at")?,
    })
}

pub(super) const CALL_URL_COLUMNS: &str =
    "token, user_id, caller_id, issuer, subject, created_at, expires_at";

fn call_url_from_row(row: &AnyRow) -> Result<CallUrl, sqlx::Error> {
    Ok(CallUrl {
        token: row.try_get("token")?,
        user_id: row.try_get("user_id")?,
        caller_id: row.try_get("caller_id")?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

pub(super) const CALL_COLUMNS: &str = "call_id, user_id, call_token, call_url, url_creation_date, caller_id, call_type, subject, \
     provider, session_id, callee_token, api_key, websocket_token, progress_url, created_at, expires_at";

fn call_from_row(row: &AnyRow) -> Result<Call, sqlx::Error> {
    Ok(Call {
        call_id: row.try_get("call_id")?,
        user_id: row.try_get("user_id")?,
        call_token: row.try_get("call_token")?,
        call_url: row.try_get("call_url")?,
        url_creation_date: row.try_get("url_creation_date")?,
        caller_id: row.try_get("caller_id")?,
        call_type: row.try_get("call_type")?,
        subject: row.try_get("subject")?,
        provider: row.try_get("provider")?,
        session_id: row.try_get("session_id")?,
        callee_token: row.try_get("callee_token")?,
        api_key: row.try_get("api_key")?,
        websocket_token: row.try_get("websocket_token")?,
        progress_url: row.try_get("progress_url")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl SqlStore {
    async fn pause_between_batches(&self) {
        match self.backend {
            Backend::Sqlite => tokio::time::sleep(SQLITE_PURGE_PAUSE).await,
            // Row locks: a batch never blocks writers of live rows.
            Backend::Postgres => tokio::task::yield_now().await,
        }
    }

    /// Runs `sql` (which deletes at most `PURGE_BATCH` rows expired at `now`)
    /// until a batch comes back short; returns the total.
    async fn purge_in_batches(&self, sql: &str, now: Timestamp) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(sql)
                .bind(now)
                .bind(PURGE_BATCH)
                .execute(&mut *self.writer().await?)
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
    async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.reader().await?)
            .await?;
        Ok(())
    }

    async fn create_session(
        &self,
        session: &Session,
        push_urls: &[PushUrl],
    ) -> Result<(), sqlx::Error> {
        self.batcher
            .write(vec![Write::session(session.clone(), push_urls)])
            .await?;
        Ok(())
    }

    async fn session(&self, id_hmac: &str, now: Timestamp) -> Result<Option<Session>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT id_hmac, key, user_id, expires_at FROM sessions WHERE id_hmac = $1 AND expires_at > $2",
        )
        .bind(id_hmac)
        .bind(now)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn touch_session(&self, id_hmac: &str, expires_at: Timestamp) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sessions SET expires_at = $2 WHERE id_hmac = $1")
            .bind(id_hmac)
            .bind(expires_at)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }

    async fn remember_nonce_of_live_session(
        &self,
        id_hmac: &str,
        nonce: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<bool, sqlx::Error> {
        self.batcher
            .write(vec![Write::Nonce {
                id_hmac: id_hmac.into(),
                nonce: nonce.into(),
                expires_at,
                now,
            }])
            .await
    }

    async fn set_push_url(
        &self,
        id_hmac: &str,
        topic: PushTopic,
        url: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "UPDATE sessions SET {} = $2 WHERE id_hmac = $1",
            topic.column()
        ))
        .bind(id_hmac)
        .bind(url)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn delete_push_urls(&self, id_hmac: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sessions SET calls_push_url = NULL, rooms_push_url = NULL WHERE id_hmac = $1",
        )
        .bind(id_hmac)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn push_urls(
        &self,
        user_id: &str,
        topic: PushTopic,
        now: Timestamp,
    ) -> Result<Vec<String>, sqlx::Error> {
        // DISTINCT: a device that registered again under a new session must
        // not be notified twice.
        let column = topic.column();
        sqlx::query_scalar(&format!(
            "SELECT DISTINCT {column} FROM sessions \
             WHERE user_id = $1 AND expires_at > $2 AND {column} IS NOT NULL ORDER BY {column}"
        ))
        .bind(user_id)
        .bind(now)
        .fetch_all(&mut *self.reader().await?)
        .await
    }

    async fn create_call_url(&self, call_url: &CallUrl) -> Result<(), sqlx::Error> {
        self.batcher
            .write(vec![Write::CallUrl(call_url.clone())])
            .await?;
        Ok(())
    }

    async fn call_url(&self, token: &str) -> Result<Option<CallUrl>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {CALL_URL_COLUMNS} FROM call_urls WHERE token = $1"
        ))
        .bind(token)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        row.as_ref().map(call_url_from_row).transpose()
    }

    async fn call_url_with_push_urls(
        &self,
        token: &str,
        topic: PushTopic,
        now: Timestamp,
    ) -> Result<Option<(CallUrl, Vec<String>)>, sqlx::Error> {
        // One row per push URL, or one with a NULL push URL.
        let column = topic.column();
        let rows = sqlx::query(&format!(
            "SELECT u.token, u.user_id, u.caller_id, u.issuer, u.subject, u.created_at, u.expires_at, \
             s.{column} AS push_url FROM call_urls u LEFT JOIN sessions s \
             ON s.user_id = u.user_id AND s.expires_at > $2 AND s.{column} IS NOT NULL \
             WHERE u.token = $1"
        ))
        .bind(token)
        .bind(now)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut push_urls = rows
            .iter()
            .map(|row| row.try_get::<Option<String>, _>("push_url"))
            .filter_map(Result::transpose)
            .collect::<Result<Vec<_>, _>>()?;
        push_urls.sort_unstable();
        push_urls.dedup();
        Ok(Some((call_url_from_row(first)?, push_urls)))
    }

    async fn call_urls(&self, user_id: &str, now: Timestamp) -> Result<Vec<CallUrl>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {CALL_URL_COLUMNS} FROM call_urls WHERE user_id = $1 AND expires_at > $2 \
             ORDER BY created_at, token"
        ))
        .bind(user_id)
        .bind(now)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter().map(call_url_from_row).collect()
    }

    async fn update_call_url(
        &self,
        token: &str,
        user_id: &str,
        update: &CallUrlUpdate,
    ) -> Result<bool, sqlx::Error> {
        // A NULL parameter keeps the column: COALESCE picks the current value.
        let updated = sqlx::query(
            "UPDATE call_urls SET caller_id = COALESCE($3, caller_id), issuer = COALESCE($4, issuer), \
             subject = COALESCE($5, subject), expires_at = COALESCE($6, expires_at) \
             WHERE token = $1 AND user_id = $2",
        )
        .bind(token)
        .bind(user_id)
        .bind(&update.caller_id)
        .bind(&update.issuer)
        .bind(&update.subject)
        .bind(update.expires_at)
        .execute(&mut *self.writer().await?)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn delete_call_url(&self, token: &str, user_id: &str) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM call_urls WHERE token = $1 AND user_id = $2")
            .bind(token)
            .bind(user_id)
            .execute(&mut *self.writer().await?)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn create_call(&self, call: &Call) -> Result<(), sqlx::Error> {
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
    ) -> Result<Vec<Call>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE user_id = $1 AND created_at >= $2 AND expires_at > $3 \
             ORDER BY created_at, call_id"
        ))
        .bind(user_id)
        .bind(version)
        .bind(now)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    async fn delete_user(&self, user_id: &str) -> Result<(), sqlx::Error> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        // Nonces first, while the sessions still name them; push URLs go
        // with their sessions.
        for sql in [
            "DELETE FROM hawk_nonces WHERE id_hmac IN (SELECT id_hmac FROM sessions WHERE user_id = $1)",
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM call_urls WHERE user_id = $1",
            "DELETE FROM calls WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, sqlx::Error> {
        // A session's push URLs go with it; its nonces expire on their own.
        let mut total = self
            .purge_in_batches(
                "DELETE FROM sessions WHERE id_hmac IN (SELECT id_hmac FROM sessions WHERE expires_at <= $1 LIMIT $2)",
                now,
            )
            .await?;
        // `(a, b) IN (SELECT …)` row values: SQLite ≥ 3.15 and PostgreSQL.
        total += self
            .purge_in_batches(
                "DELETE FROM hawk_nonces WHERE (id_hmac, nonce) IN \
                 (SELECT id_hmac, nonce FROM hawk_nonces WHERE expires_at <= $1 LIMIT $2)",
                now,
            )
            .await?;
        total += self
            .purge_in_batches(
                "DELETE FROM call_urls WHERE token IN (SELECT token FROM call_urls WHERE expires_at <= $1 LIMIT $2)",
                now - EXPIRED_CALL_URL_RETENTION_SECONDS,
            )
            .await?;
        total += self
            .purge_in_batches(
                "DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls WHERE expires_at <= $1 LIMIT $2)",
                now,
            )
            .await?;
        Ok(total)
    }
}
