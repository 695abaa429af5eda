//! Opening the database: SQLite's held connections or a PostgreSQL pool,
//! each backend's settings, and the migrations. The queries themselves are
//! in `queries.rs`; this file is the only backend-specific code besides the
//! migration folders.

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::batch::{BatchStats, WriteBatcher};
use super::cache::{Forget, INVALIDATION_TOPIC, ReadCache};
use super::inline_reads::InlineReaders;
use super::reachability::Reachability;
use super::{Backend, SqliteSynchronous, Store, StoreError};
use crate::bus::{Bus, RecvError};
use crate::config::Config;

/// How long a SQLite writer waits for the write lock before failing with
/// SQLITE_BUSY. Writes are short, so only a stalled disk gets anywhere near it.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// A pooled PostgreSQL connection idle this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(5);

/// Most write rounds running at once on PostgreSQL (see `batch.rs`).
const POSTGRES_WRITE_ROUNDS: usize = 4;

/// How long a request waits for a pooled connection before getting a 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

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
/// - The hot reads (a user's calls, a session) skip even those: they run on
///   the requesting thread through connections of their own, with no
///   hand-off at all (`inline_reads.rs`).
///
/// An in-memory SQLite database is one connection (every `:memory:`
/// connection is a separate database), in a pool of one.
pub struct SqlStore {
    connections: Connections,
    pub(super) backend: Backend,
    /// The hot writes, grouped into rounds; see `batch.rs`.
    pub(super) batcher: WriteBatcher,
    /// Messages to this process's and (PostgreSQL) other instances' sockets.
    pub(super) bus: Bus,
    /// Call URLs and push URLs, served without a database round trip; see `cache.rs`.
    pub(super) cache: Arc<ReadCache>,
}

enum Connections {
    /// With PostgreSQL's reachability, to fail fast while it is down.
    Pool(AnyPool, Option<Arc<Reachability>>),
    Held {
        writer: Arc<Mutex<AnyConnection>>,
        readers: Box<[Arc<Mutex<AnyConnection>>]>,
        /// Where the search for a free reader starts, rotating.
        next_reader: AtomicUsize,
        /// Opened on first use only; see `SqlStore::pool`.
        maintenance: AnyPool,
        /// The hot reads' own connections, outside sqlx; see `inline_reads.rs`.
        inline: InlineReaders,
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
async fn lock_held(conn: &Arc<Mutex<AnyConnection>>) -> Result<Conn, StoreError> {
    if let Ok(guard) = conn.clone().try_lock_owned() {
        return Ok(Conn::Held(guard));
    }
    tokio::time::timeout(ACQUIRE_TIMEOUT, conn.clone().lock_owned())
        .await
        .map(Conn::Held)
        .map_err(|_| StoreError::acquiring(sqlx::Error::PoolTimedOut))
}

async fn acquire_pooled(
    pool: &AnyPool,
    reach: Option<&Arc<Reachability>>,
) -> Result<Conn, StoreError> {
    match reach {
        Some(reach) => reach.acquire(pool).await.map(Conn::Pooled),
        None => pool
            .acquire()
            .await
            .map(Conn::Pooled)
            .map_err(StoreError::acquiring),
    }
}

/// Where writes run: a connection from the pool, or SQLite's one writer.
#[derive(Clone)]
pub(super) enum WriterHandle {
    Pool(AnyPool, Option<Arc<Reachability>>),
    Held(Arc<Mutex<AnyConnection>>),
}

fn writer_of(connections: &Connections) -> WriterHandle {
    match connections {
        Connections::Pool(pool, reach) => WriterHandle::Pool(pool.clone(), reach.clone()),
        Connections::Held { writer, .. } => WriterHandle::Held(writer.clone()),
    }
}

impl WriterHandle {
    pub(super) async fn acquire(&self) -> Result<Conn, StoreError> {
        match self {
            WriterHandle::Pool(pool, reach) => acquire_pooled(pool, reach.as_ref()).await,
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
            Connections::Pool(pool, _) => pool,
            Connections::Held { maintenance, .. } => maintenance,
        }
    }

    /// What the group-commit writer has done so far.
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// See [`Store::gauges`].
    pub(super) fn gauges(&self) -> super::StoreGauges {
        let connections = match &self.connections {
            Connections::Pool(pool, _) => {
                let idle = pool.num_idle();
                Some((idle, (pool.size() as usize).saturating_sub(idle)))
            }
            // A held connection is in use while its lock is taken. Probing
            // takes it for an instant, which a request may notice as one busy
            // reader: it then tries the next.
            Connections::Held {
                writer, readers, ..
            } => {
                let all = std::iter::once(writer).chain(readers.iter());
                let idle = all.clone().filter(|conn| conn.try_lock().is_ok()).count();
                Some((idle, all.count() - idle))
            }
        };
        super::StoreGauges {
            connections,
            writer_queue: self.batcher.queued(),
        }
    }

    /// Where the hot reads run without a hand-off: on a SQLite file only.
    pub(super) fn inline_reads(&self) -> Option<&InlineReaders> {
        match &self.connections {
            Connections::Held { inline, .. } => Some(inline),
            Connections::Pool(..) => None,
        }
    }

    pub(super) async fn writer(&self) -> Result<Conn, StoreError> {
        writer_of(&self.connections).acquire().await
    }

    pub(super) async fn reader(&self) -> Result<Conn, StoreError> {
        match &self.connections {
            Connections::Pool(pool, reach) => acquire_pooled(pool, reach.as_ref()).await,
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

/// SQLite settings every connection gets. `synchronous` matters only on a
/// connection that commits (WAL is set once on the file by `prepare_sqlite`):
/// `database.sqlite_synchronous` on the writer (see `SqliteSynchronous`),
/// NORMAL on readers, which never commit. The busy timeout makes a writer
/// wait for another process's write (several servers on one file) instead of
/// failing. Temporary b-trees (sorts, DISTINCT) stay in memory. `query_only`
/// on readers: a write sent to a reader fails loudly instead of silently
/// contending for the lock.
fn sqlite_pragmas(role: SqliteRole) -> String {
    let (synchronous, query_only) = match role {
        SqliteRole::Reader => (SqliteSynchronous::Normal, "ON"),
        SqliteRole::Writer(synchronous) => (synchronous, "OFF"),
    };
    let synchronous = synchronous.pragma_value();
    format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
         PRAGMA temp_store = MEMORY; PRAGMA query_only = {query_only}"
    )
}

/// What a SQLite connection is for.
#[derive(Clone, Copy)]
enum SqliteRole {
    Reader,
    /// Commits, with this durability.
    Writer(SqliteSynchronous),
}

/// The writer's own settings.
///
/// A page cache bigger than SQLite's 2 MB default: inserts at random keys
/// (sessions; nonces are appended, `nonce_ledger.rs`) touch index pages all
/// over the file, and every miss is a read from the OS. Readers keep the
/// default, since SQLite empties a reader's cache whenever another
/// connection has written.
///
/// Checkpoints every 250 WAL pages instead of 1000: the commit that triggers
/// one copies those pages into the database file and fsyncs it while every
/// other write waits, so it sets the write routes' tail latency. Measured on
/// 2 cores (`scripts/bench`): `POST /calls/{token}` p99 10.5–11 ms at 1000,
/// 8–9 ms at 500, 7.4 ms at 250, for about 5% less registration throughput.
const WRITER_PRAGMAS: &str = "PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 250";

async fn open_sqlite(
    options: &AnyConnectOptions,
    role: SqliteRole,
) -> anyhow::Result<Arc<Mutex<AnyConnection>>> {
    let mut conn = AnyConnection::connect_with(options)
        .await
        .context("database.url: cannot open the SQLite database")?;
    conn.execute(sqlite_pragmas(role).as_str()).await?;
    Ok(Arc::new(Mutex::new(conn)))
}

/// A pool of SQLite connections that may write.
fn sqlite_pool_options(synchronous: SqliteSynchronous) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A local file cannot go stale; skip the per-checkout ping.
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                conn.execute(sqlite_pragmas(SqliteRole::Writer(synchronous)).as_str())
                    .await?;
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
        let synchronous = config.database.sqlite_synchronous;
        let connections = match backend {
            Backend::Sqlite => match prepare_sqlite(&url).await? {
                // Every connection the Any driver opens to `:memory:` is a
                // new, empty database: keep exactly one, forever.
                None => Connections::Pool(
                    sqlite_pool_options(synchronous)
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                        .connect_with(any_options)
                        .await
                        .context("database.url: cannot open the SQLite database")?,
                    None,
                ),
                Some(path) => {
                    let cores = std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2);
                    let count = (max_connections as usize).min(cores.clamp(2, SQLITE_MAX_READERS));
                    let mut readers = Vec::with_capacity(count);
                    for _ in 0..count {
                        readers.push(open_sqlite(&any_options, SqliteRole::Reader).await?);
                    }
                    let writer = open_sqlite(&any_options, SqliteRole::Writer(synchronous)).await?;
                    writer.lock().await.execute(WRITER_PRAGMAS).await?;
                    let inline = InlineReaders::open(path)
                        .context("database.url: cannot open the SQLite database for reading")?;
                    Connections::Held {
                        writer,
                        readers: readers.into(),
                        next_reader: AtomicUsize::new(0),
                        maintenance: sqlite_pool_options(synchronous)
                            .max_connections(1)
                            .connect_lazy_with(any_options),
                        inline,
                    }
                }
            },
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
                    .connect_with(any_options.clone())
                    .await
                    .context("database.url: cannot connect to PostgreSQL")?,
                Some(Reachability::new(any_options)),
            ),
        };
        migrate(&mut *writer_of(&connections).acquire().await?, backend).await?;
        // SQLite has one writer; PostgreSQL writers of different rows do not
        // wait for each other, so a few rounds may run at once there.
        let rounds = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => (max_connections as usize / 2).clamp(1, POSTGRES_WRITE_ROUNDS),
        };
        let bus = match (&connections, backend) {
            (Connections::Pool(pool, _), Backend::Postgres) => Bus::postgres(&url, pool.clone())
                .await
                .context("database.url: cannot LISTEN for other instances' messages")?,
            _ => Bus::local(),
        };
        let cache = Arc::new(ReadCache::new());
        if backend == Backend::Postgres {
            follow_other_instances(&bus, &cache);
        }
        let store = SqlStore {
            batcher: WriteBatcher::start(writer_of(&connections), backend, rounds),
            connections,
            backend,
            bus,
            cache,
        };
        let readers = match &store.connections {
            Connections::Pool(pool, _) => pool.options().get_max_connections() as usize,
            Connections::Held { readers, .. } => readers.len(),
        };
        // Read back from the writer, not assumed from the configuration: the
        // log is where an operator checks what a commit survives.
        let sqlite_synchronous = match backend {
            Backend::Sqlite => {
                let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&mut *store.writer().await?)
                    .await?;
                match level {
                    0 => "off",
                    1 => "normal",
                    2 => "full",
                    _ => "extra",
                }
            }
            Backend::Postgres => "n/a",
        };
        tracing::info!(backend = ?backend, readers, sqlite_synchronous = %sqlite_synchronous, "database ready");
        Ok(store)
    }
}

/// Forgets what other instances on the same PostgreSQL database say they
/// changed, and everything when their messages may have been missed.
/// Subscribed before the store is returned, so nothing changed after
/// start-up goes unheard; ends with the store.
fn follow_other_instances(bus: &Bus, cache: &Arc<ReadCache>) {
    let mut invalidations = bus.subscribe(INVALIDATION_TOPIC);
    let cache = Arc::downgrade(cache);
    tokio::spawn(async move {
        loop {
            let received = invalidations.recv().await;
            let Some(cache) = cache.upgrade() else {
                return;
            };
            match received {
                Ok(message) => match Forget::from_message(&message) {
                    Some(what) => cache.forget(&what),
                    None => cache.forget_all(),
                },
                Err(RecvError::Lagged) => cache.forget_all(),
            }
        }
    });
}

/// Creates the SQLite file (and its folder) if missing and switches it to WAL.
/// WAL is a property of the file, so setting it once here covers every pooled
/// connection; doing it per connection would need an exclusive lock each time.
/// Returns the file's path, or `None` for a database in memory.
async fn prepare_sqlite(url: &str) -> anyhow::Result<Option<PathBuf>> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if in_memory {
        return Ok(None);
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
    create_private(&path).with_context(|| {
        format!(
            "database.url: cannot create the SQLite database {}",
            path.display()
        )
    })?;
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
    Ok(Some(path))
}

/// Creates the database file, if missing, readable by its owner only: it
/// holds call URL tokens and callees' provider tokens. SQLite would create it
/// with the umask's mode (usually 0644); it gives the `-wal` and `-shm`
/// files it creates later the main file's mode, so they are private too.
/// An existing file keeps the mode its operator gave it.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        // An empty file is an empty database to SQLite.
        Ok(_) => Ok(()),
        // Already there, or created just now by another process starting.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
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
    refuse_unknown_migrations(conn, &migrator, backend).await?;
    // sqlx refuses them too (a newer process may have migrated since the
    // check above), only naming the version alone.
    migrator.set_ignore_missing(false);
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

/// Refuses a database that holds migrations this binary does not know: a
/// newer release applied them, and whether this binary still works on the
/// schema they left (a new column: yes; a dropped one: no) cannot be told
/// from here. See `migrations/README.md` for how releases stay compatible.
async fn refuse_unknown_migrations(
    conn: &mut AnyConnection,
    migrator: &Migrator,
    backend: Backend,
) -> anyhow::Result<()> {
    // Asked rather than created: creating it here, outside the migrator's
    // lock, races other processes starting on PostgreSQL.
    let exists = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
        }
    };
    let tables: i64 = sqlx::query_scalar(exists)
        .fetch_one(&mut *conn)
        .await
        .context("reading the applied migrations failed")?;
    if tables == 0 {
        return Ok(());
    }
    let known: BTreeSet<i64> = migrator.iter().map(|m| m.version).collect();
    let applied: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .context("reading the applied migrations failed")?;
    let unknown: Vec<String> = applied
        .into_iter()
        .filter(|(version, _)| !known.contains(version))
        .map(|(version, description)| format!("{version} ({description})"))
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "the database has migrations this loop-server does not know, applied by a newer \
         release: {}. Run that release (or newer), or restore a backup taken before it \
         migrated; see migrations/README.md",
        unknown.join(", ")
    );
    Ok(())
}
