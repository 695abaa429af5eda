//! A PostgreSQL cluster of the test's own, made with Debian's `initdb` and
//! run with `pg_ctl` in a temporary folder, on a free port of 127.0.0.1.
//!
//! For tests that stop or restart the database: the suite's shared server
//! (127.0.0.1:5432) serves every other test running at the same time, so a
//! test may never restart that one. A private cluster takes a few seconds to
//! make; [`PrivatePostgres::stop`] and [`PrivatePostgres::start`] do what
//! `pg_ctlcluster … restart` does (a fast shutdown, then a start), with
//! whatever pause the test wants in between. Dropping it stops the cluster
//! (immediate shutdown) and removes its folder.
//!
//! PostgreSQL refuses to run as root: when the suite runs as root (CI does),
//! the cluster's commands run as the `postgres` user, which owns the folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

pub struct PrivatePostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub url: String,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    folder: TempDir,
}

/// Debian's newest PostgreSQL: `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries in /usr/lib/postgresql (Debian's postgresql package)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/<version>/bin/pg_ctl")
        .1
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free TCP port on 127.0.0.1 (free when asked; PostgreSQL binds it a
/// moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivatePostgres {
    /// Makes and starts a fresh cluster (trust authentication, user
    /// `postgres`); panics with PostgreSQL's output if it cannot.
    pub fn start_new() -> Self {
        let folder = tempfile::tempdir().unwrap();
        let data = folder.path().join("data");
        let log = folder.path().join("postgres.log");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(folder.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster's folder to postgres");
        }
        let bin = postgres_bin();
        let port = free_port();
        let cluster = PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            data,
            log,
            folder,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&cluster.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
            ],
        );
        cluster.start();
        cluster
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=50 -c shared_buffers=16MB",
            self.port,
            path_str(self.folder.path())
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data),
                "-l",
                path_str(&self.log),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// `pg_ctl stop -m fast`, as `pg_ctlcluster … restart` stops: every
    /// session is ended at once, open transactions roll back, and the cluster
    /// shuts down cleanly.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", path_str(&self.data), "-m", "fast", "-w", "stop"],
        );
    }

    /// PostgreSQL's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .current_dir(self.folder.path())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Never panic in drop (a failed test may be unwinding); an
        // immediate stop is enough for a cluster about to be deleted.
        let stopped = self
            .command("pg_ctl")
            .args(["-D", path_str(&self.data), "-m", "immediate", "-w", "stop"])
            .output();
        if let Ok(output) = &stopped
            && !output.status.success()
            && self.data.join("postmaster.pid").exists()
        {
            eprintln!(
                "could not stop the private PostgreSQL in {}: {}",
                self.data.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
