//! Starts the real `loop-server` binary the way a user does (a config file and
//! `--config`), on 127.0.0.1:0, against SQLite or PostgreSQL.
//!
//! `LOOP_TEST_DATABASE=postgres` runs the suite against PostgreSQL
//! (`LOOP_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`);
//! every server gets a fresh database of its own unless a test shares one.
#![allow(dead_code)]

pub mod examples;
pub mod fake_dns;
pub mod fake_push;
pub mod hawk;
pub mod private_postgres;
pub mod vendor;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// Copies the folder `from` into `to` (created), files keeping their modes.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `loop-server` binary under test: `LOOP_TEST_SERVER_BIN` if set, else the
/// one cargo built. Worktrees that share a target directory overwrite each
/// other's `target/debug/loop-server`; the variable pins a build that stays put
/// (its `target/debug/deps/loop_server-<hash>`, which is per worktree).
pub fn server_binary() -> PathBuf {
    std::env::var_os("LOOP_TEST_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_loop-server")))
}

/// The committed loopback component.
pub fn loopback_wasm() -> PathBuf {
    workspace_root().join("plugins/loopback/loopback.wasm")
}

/// The loopback plugin as it was built against WIT 0.1.0, kept to prove that
/// plugins built for 0.1.0 keep working.
pub fn loopback_v0_1_wasm() -> PathBuf {
    workspace_root().join("tests/plugins/loopback-0.1/loopback-0.1.wasm")
}

pub fn use_postgres() -> bool {
    std::env::var("LOOP_TEST_DATABASE")
        .map(|v| v == "postgres")
        .unwrap_or(false)
}

fn postgres_admin_url() -> String {
    std::env::var("LOOP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty PostgreSQL database, dropped when this guard is.
///
/// Drop it after everything that uses it (declare it before the servers, or
/// let the [`TestServer`] that created it own it): the drop ends any
/// connection still open to it.
pub struct PostgresDatabase {
    pub url: String,
    name: String,
}

pub async fn fresh_postgres_database() -> PostgresDatabase {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    let name = format!("loop_test_{}", hex::encode(rand::random::<[u8; 6]>()));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(&admin);
    PostgresDatabase {
        url: format!("{base}/{name}"),
        name,
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, where blocking on a future
        // panics: a thread with a small runtime of its own does the work.
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        // Never panic in drop (it may run while a failed test unwinds); a
        // database left behind is dropped by scripts/test on the next run.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("could not drop test database {}: {err:#}", self.url),
            Err(_) => eprintln!(
                "could not drop test database {}: the dropping thread panicked",
                self.url
            ),
        }
    }
}

/// Where a test server keeps its data: a fresh PostgreSQL database when the
/// suite runs on PostgreSQL, else a SQLite file in the server's folder.
pub struct TestDatabase {
    pub url: String,
    _postgres: Option<PostgresDatabase>,
}

pub async fn test_database(dir: &Path) -> TestDatabase {
    if use_postgres() {
        let postgres = fresh_postgres_database().await;
        TestDatabase {
            url: postgres.url.clone(),
            _postgres: Some(postgres),
        }
    } else {
        TestDatabase {
            url: format!("sqlite://{}?mode=rwc", dir.join("loop.db").display()),
            _postgres: None,
        }
    }
}

pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `http://127.0.0.1:PORT/__metrics__` when `server.metrics_listen` is set.
    pub metrics_url: Option<String>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// The database this server (and its siblings) use.
    pub database_url: String,
    log_path: PathBuf,
    /// Dropped after `Drop` has killed the process: the database first, then
    /// the folder.
    database: Option<TestDatabase>,
    _tempdir: Option<TempDir>,
}

pub struct ServerOptions {
    /// TOML appended to the generated config (sections must not repeat ours).
    pub extra_toml: String,
    /// Whether to write the default `[plugins.loopback]` table.
    pub loopback: bool,
    pub database_url: Option<String>,
    /// Share a data dir (secrets, SQLite file) with another server.
    pub dir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// How many processes [`TestServer::start_all`] launches at once.
    pub processes: usize,
    /// A data folder (secrets, plugin compile cache) copied into the new
    /// server's before it starts: [`examples::warm_data_dir`].
    pub seed_data_dir: Option<PathBuf>,
}

/// Environment for a server under a test's load: every request comes from
/// 127.0.0.1 and a few sessions, so the rate limits' budgets are raised far
/// above what the load sends: `tests/fixtures/rate-limits-under-load.toml`,
/// as the `LOOP_*` variables that set it.
pub fn load_env() -> Vec<(String, String)> {
    fn flatten(name: String, value: &toml::Value, into: &mut Vec<(String, String)>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    flatten(format!("{name}__{}", key.to_uppercase()), value, into);
                }
            }
            toml::Value::String(text) => into.push((name, text.clone())),
            other => into.push((name, other.to_string())),
        }
    }
    let path = workspace_root().join("tests/fixtures/rate-limits-under-load.toml");
    let fixture: toml::Table = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .parse()
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut env = Vec::new();
    for (key, value) in &fixture {
        flatten(format!("LOOP_{}", key.to_uppercase()), value, &mut env);
    }
    env
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            extra_toml: String::new(),
            loopback: true,
            database_url: None,
            dir: None,
            env: Vec::new(),
            processes: 1,
            seed_data_dir: None,
        }
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(options: ServerOptions) -> Self {
        Self::start_all(ServerOptions {
            processes: 1,
            ..options
        })
        .await
        .pop()
        .unwrap()
    }

    /// `options.processes` servers on one config file, data folder and
    /// database, launched at once (the owner of the folder and database last).
    pub async fn start_all(options: ServerOptions) -> Vec<Self> {
        let (tempdir, dir) = match &options.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tempdir = tempfile::tempdir().unwrap();
                let dir = tempdir.path().to_path_buf();
                (Some(tempdir), dir)
            }
        };
        // A database the test passed in is the test's to drop.
        let (database_url, database) = match options.database_url.clone() {
            Some(url) => (url, None),
            None => {
                let database = test_database(&dir).await;
                (database.url.clone(), Some(database))
            }
        };
        if let Some(seed) = &options.seed_data_dir {
            copy_dir(seed, &dir.join("data"));
        }
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[database]\nurl = {:?}\n\n",
            dir.join("data").display().to_string(),
            database_url
        );
        if options.loopback {
            toml.push_str(&format!(
                "[plugins.loopback]\ncomponent = {:?}\ngenerated_secrets = [\"secret\"]\n\n",
                loopback_wasm().display().to_string()
            ));
        }
        toml.push_str(&options.extra_toml);
        let config_path = dir.join(format!(
            "config-{}.toml",
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::write(&config_path, toml).unwrap();
        let count = options.processes.max(1);
        let launched: Vec<Launched> = (0..count)
            .map(|i| {
                let log_path = config_path.with_extension(format!("{i}.log"));
                Launched::new(
                    config_path.clone(),
                    log_path,
                    dir.clone(),
                    database_url.clone(),
                    &options.env,
                )
            })
            .collect();
        let mut servers: Vec<Self> = launched.into_iter().map(Launched::wait).collect();
        // The first server owns the database and the folder, and is dropped last.
        servers[0].database = database;
        servers[0]._tempdir = tempdir;
        servers.rotate_left(1);
        servers
    }

    fn spawn(
        config_path: PathBuf,
        log_path: PathBuf,
        dir: PathBuf,
        database_url: String,
        env: &[(String, String)],
    ) -> Self {
        Launched::new(config_path, log_path, dir, database_url, env).wait()
    }

    /// Another process on the same config file (same database, same secrets).
    pub fn start_sibling(&self) -> Self {
        let log_path = self
            .config_path
            .with_extension(format!("{}.log", hex::encode(rand::random::<[u8; 4]>())));
        Self::spawn(
            self.config_path.clone(),
            log_path,
            self.dir.clone(),
            self.database_url.clone(),
            &[],
        )
    }

    /// `GET /__heartbeat__`: its status and report.
    pub async fn heartbeat(&self) -> (u16, serde_json::Value) {
        let response = client()
            .get(self.endpoint("/__heartbeat__"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The logs once they contain `needle`, for what the server logs after it
    /// has answered (background work). Panics after a generous hang guard.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the logs: {logs}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit; true if it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().is_ok_and(|status| status.success())
    }

    /// The server's process id: the same before and after a reload.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|status| status.is_none())
    }

    /// `kill -HUP`: the server reloads its config file.
    pub fn sighup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same config again after a kill (the port changes).
    pub fn restart(&mut self) {
        self.kill();
        let log_path = self.log_path.clone();
        let fresh = Self::spawn(
            self.config_path.clone(),
            log_path,
            self.dir.clone(),
            self.database_url.clone(),
            &[],
        );
        let mut fresh = std::mem::ManuallyDrop::new(fresh);
        // Take the new child and URL; keep our database and tempdir.
        std::mem::swap(&mut self.child, &mut fresh.child);
        self.url = std::mem::take(&mut fresh.url);
        self.metrics_url = fresh.metrics_url.take();
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

/// A `loop-server` process spawned, not yet known to listen.
struct Launched {
    child: Child,
    /// The listening URL, with the metrics URL printed before it, if any.
    listening: std::sync::mpsc::Receiver<(String, Option<String>)>,
    config_path: PathBuf,
    log_path: PathBuf,
    dir: PathBuf,
    database_url: String,
}

impl Launched {
    fn new(
        config_path: PathBuf,
        log_path: PathBuf,
        dir: PathBuf,
        database_url: String,
        env: &[(String, String)],
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut command = Command::new(server_binary());
        command
            .arg("--config")
            .arg(&config_path)
            .env("LOOP_LOG", "info,loop_server=debug")
            // The suite's own settings are not the server's configuration.
            .env_remove("LOOP_TEST_DATABASE")
            .env_remove("LOOP_TEST_POSTGRES_URL")
            .env_remove("LOOP_TEST_SERVER_BIN")
            .stdout(Stdio::piped())
            .stderr(log)
            .current_dir(&dir);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn loop-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut metrics_url = None;
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("loop-server metrics on ") {
                    metrics_url = Some(url.to_string());
                }
                if let Some(url) = line.strip_prefix("loop-server listening on ") {
                    let _ = tx.send((url.to_string(), metrics_url.take()));
                }
            }
        });
        Self {
            child,
            listening,
            config_path,
            log_path,
            dir,
            database_url,
        }
    }

    /// The server once it listens; panics with its log if it does not.
    fn wait(mut self) -> TestServer {
        let (url, metrics_url) = match self.listening.recv_timeout(Duration::from_secs(60)) {
            Ok(urls) => urls,
            Err(_) => {
                let _ = self.child.kill();
                panic!(
                    "loop-server did not start; its log:\n{}",
                    std::fs::read_to_string(&self.log_path).unwrap_or_default()
                );
            }
        };
        TestServer {
            child: self.child,
            url,
            metrics_url,
            dir: self.dir,
            config_path: self.config_path,
            database_url: self.database_url,
            log_path: self.log_path,
            database: None,
            _tempdir: None,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `POST /calls/{token}` (or `/v0/...`: `url` is the whole URL) as a caller
/// does, without credentials; asserts 200 and returns the call's JSON.
pub async fn place_call(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let response = http.post(url).json(body).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "POST {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("POST {url}: not JSON: {text}"))
}

/// Alice calls `callee` through a fresh call URL of the callee's: the
/// callee's devices are pinged. Returns the call's JSON.
pub async fn call_through_new_url(server: &TestServer, callee: &hawk::Device) -> serde_json::Value {
    let token = callee
        .create_call_url(&serde_json::json!({"callerId": "alice"}))
        .await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    place_call(
        &client(),
        &server.endpoint(&format!("/calls/{token}")),
        &serde_json::json!({"callType": "audio"}),
    )
    .await
}
