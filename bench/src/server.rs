//! The server under test: a generated config, the release binary started the
//! way an operator starts it, and the database it uses.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A database of its own for one benchmark phase.
pub enum Database {
    Sqlite {
        url: String,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
}

impl Database {
    /// A SQLite file in `dir`, or a freshly created PostgreSQL database whose
    /// name is appended to `<work_dir>/postgres-databases` so that
    /// `scripts/bench` can drop it even if this process dies.
    pub async fn create(
        backend: Backend,
        dir: &Path,
        work_dir: &Path,
        postgres_admin_url: &str,
    ) -> anyhow::Result<Self> {
        match backend {
            Backend::Sqlite => Ok(Database::Sqlite {
                url: format!("sqlite://{}?mode=rwc", dir.join("loop.db").display()),
            }),
            Backend::Postgres => {
                let name = format!(
                    "loop_bench_{}",
                    crate::hawk_sign::random_nonce_prefix().to_lowercase()
                );
                let mut conn = sqlx::PgConnection::connect(postgres_admin_url)
                    .await
                    .with_context(|| format!("connecting to PostgreSQL at {postgres_admin_url}"))?;
                let record = work_dir.join("postgres-databases");
                let mut names = std::fs::read_to_string(&record).unwrap_or_default();
                names.push_str(&name);
                names.push('\n');
                std::fs::write(&record, names)
                    .with_context(|| format!("writing {}", record.display()))?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .context("CREATE DATABASE")?;
                let base = postgres_admin_url
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .unwrap_or(postgres_admin_url);
                Ok(Database::Postgres {
                    url: format!("{base}/{name}"),
                    admin_url: postgres_admin_url.to_string(),
                    name,
                })
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Database::Sqlite { url } | Database::Postgres { url, .. } => url,
        }
    }

    /// Drops a PostgreSQL database (the server must be stopped or it is
    /// disconnected); SQLite files go with the work directory.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        if let Database::Postgres {
            admin_url, name, ..
        } = self
        {
            let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .with_context(|| format!("dropping database {name}"))?;
        }
        Ok(())
    }
}

pub struct ConfigInputs<'a> {
    pub dir: &'a Path,
    pub database_url: &'a str,
    pub plugin: &'a Path,
    pub push_origin: &'a str,
    /// Appended to the config (whole sections).
    pub extra_toml: &'a str,
    /// Write the `[rate_limits]` section (high budgets). Off only for a
    /// server built before the section existed, which refuses it.
    pub rate_limits: bool,
}

/// Budgets far above what wrk sends from its one address and session.
const HIGH_RATE_LIMITS: &str = include_str!("../../tests/fixtures/rate-limits-under-load.toml");

/// The config an operator would write for this host, plus what the bench
/// needs: the sink's origin allowed for push URLs, calls kept listed for
/// the whole run so that the listing user keeps its few calls, and rate
/// limits on (their checks are part of what is measured) but set far above
/// what wrk sends from its one address, so that none triggers.
pub fn write_config(inputs: &ConfigInputs<'_>) -> anyhow::Result<PathBuf> {
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:0"
data_dir = {data_dir:?}

[database]
url = {database_url:?}

[calls]
duration_seconds = 86400

{rate_limits}
[push]
allowed_origins = [{push_origin:?}]

[plugins.loopback]
component = {plugin:?}
generated_secrets = ["secret"]
{extra_toml}"#,
        data_dir = inputs.dir.join("data").display().to_string(),
        database_url = inputs.database_url,
        push_origin = inputs.push_origin,
        plugin = inputs.plugin.display().to_string(),
        extra_toml = inputs.extra_toml,
        rate_limits = if inputs.rate_limits {
            HIGH_RATE_LIMITS
        } else {
            ""
        },
    );
    let path = inputs.dir.join("config.toml");
    std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// How a server's environment differs from the harness's own: `Some` sets
/// the variable, `None` keeps it out of what the server inherits.
pub type ServerEnv<'a> = &'a [(&'a str, Option<&'a str>)];

pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    pub log_path: PathBuf,
    pid_file: PathBuf,
    /// Every line the server printed so far; closed when it exits.
    stdout: watch::Receiver<Vec<String>>,
}

impl ServerProcess {
    /// Starts `bin --config config`, logging to `<dir>/server.log`, and waits
    /// for the line announcing the bound address. The pid goes into
    /// `<work_dir>/server.<pid>.pid` for `scripts/bench`'s exit trap.
    pub async fn start(
        bin: &Path,
        config: &Path,
        dir: &Path,
        work_dir: &Path,
        log_filter: Option<&str>,
        env: ServerEnv<'_>,
    ) -> anyhow::Result<Self> {
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(bin);
        command
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        // The harness's own settings are not the server's configuration (the
        // server would name them in a warning).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LOOP_BENCH_") {
                command.env_remove(name);
            }
        }
        if let Some(filter) = log_filter {
            command.env("LOOP_LOG", filter);
        }
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("server exited at once")?;
        let pid_file = work_dir.join(format!("server.{pid}.pid"));
        std::fs::write(&pid_file, pid.to_string())?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (printed, stdout) = watch::channel(Vec::new());
        // The first start compiles the plugin; give it time.
        let announced = tokio::time::timeout(Duration::from_secs(180), async {
            while let Some(line) = lines.next_line().await? {
                let url = line
                    .strip_prefix("loop-server listening on ")
                    .map(|url| url.trim().to_string());
                printed.send_modify(|printed| printed.push(line));
                if url.is_some() {
                    return Ok::<_, std::io::Error>(url);
                }
            }
            Ok(None)
        })
        .await;
        let url = match announced {
            Ok(Ok(Some(url))) => url,
            outcome => {
                let _ = child.kill().await;
                let _ = std::fs::remove_file(&pid_file);
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let why = match outcome {
                    Err(_) => "did not announce its address within 180 s".to_string(),
                    Ok(Err(err)) => format!("stdout failed: {err}"),
                    _ => "exited before listening".to_string(),
                };
                anyhow::bail!(
                    "loop-server {why}; the end of {}:\n{}",
                    log_path.display(),
                    tail.join("\n")
                );
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                printed.send_modify(|printed| printed.push(line));
            }
        });
        let port = url
            .rsplit_once(':')
            .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
            .with_context(|| format!("no port in announced address {url}"))?;
        Ok(Self {
            child,
            pid,
            url,
            port,
            log_path,
            pid_file,
            stdout,
        })
    }

    /// What follows `prefix` on the first line of the server's stdout that
    /// starts with it, waiting up to `timeout` for that line.
    pub async fn stdout_line(&self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let find = |printed: &[String]| {
            printed
                .iter()
                .find_map(|line| line.strip_prefix(prefix))
                .map(|rest| rest.trim().to_string())
        };
        let mut stdout = self.stdout.clone();
        let found = tokio::time::timeout(timeout, stdout.wait_for(|p| find(p).is_some())).await;
        let why = match found {
            Ok(Ok(printed)) => return find(&printed).context("the line went missing"),
            Ok(Err(_)) => "exited",
            Err(_) => "is still running",
        };
        anyhow::bail!(
            "loop-server printed no `{prefix}…` line within {} s (it {why}); it printed {:?}",
            timeout.as_secs(),
            *self.stdout.borrow()
        )
    }

    /// Peak resident set size since start (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmHWM:")
    }

    /// Resident set size now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmRSS:")
    }

    /// Fails if the server died (for example, crashed under load).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "loop-server exited during the benchmark ({status}); see {}",
                self.log_path.display()
            );
        }
        Ok(())
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("stopping loop-server")?;
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(())
    }
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/<pid>/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
