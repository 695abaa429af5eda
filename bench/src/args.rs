//! Options the benchmarks share: the server they start, wrk's load, and what
//! a report says about the run that produced it.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::server::{ServerEnv, ServerProcess};
use crate::wrk::LoadSettings;

/// The server a benchmark starts, and where it keeps its files.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// The release loop-server binary.
    #[arg(long)]
    pub server_bin: PathBuf,
    /// Scratch space: configs, databases, logs, pid files.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// `LOOP_LOG` for the servers; unset keeps the server's default.
    #[arg(long)]
    pub server_log: Option<String>,
}

impl ServerArgs {
    /// Starts the server on `config`, keeping its log in `dir`.
    pub async fn start(&self, config: &Path, dir: &Path) -> anyhow::Result<ServerProcess> {
        self.start_binary(&self.server_bin, config, dir, &[]).await
    }

    /// Starts `bin` (another build of the server) with `env` on top of what it inherits.
    pub async fn start_binary(
        &self,
        bin: &Path,
        config: &Path,
        dir: &Path,
        env: ServerEnv<'_>,
    ) -> anyhow::Result<ServerProcess> {
        ServerProcess::start(
            &absolute(bin)?,
            config,
            dir,
            &self.work_dir,
            self.server_log.as_deref(),
            env,
        )
        .await
    }
}

/// wrk's load, beside each benchmark's own duration, warm-up and number of runs.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// wrk threads.
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: u32,
    /// wrk connections, all threads together.
    #[arg(short = 'c', long, default_value_t = 32)]
    pub connections: u32,
    /// Seconds after which wrk counts a response as a timeout error.
    #[arg(long, default_value_t = 2, value_parser = parse_seconds)]
    pub timeout: u64,
}

impl LoadArgs {
    /// wrk's settings for these options; `max_signed_rate` is 1 where no route is signed.
    pub fn settings(&self, lua: &Path, max_signed_rate: u64) -> anyhow::Result<LoadSettings> {
        Ok(LoadSettings {
            threads: self.threads,
            connections: self.connections,
            timeout_s: self.timeout,
            lua: absolute(lua)?,
            max_signed_rate,
        })
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.threads >= 1 && self.connections >= self.threads,
            "--connections: at least one per thread"
        );
        Ok(())
    }
}

/// Pre-signing of the Hawk routes' headers.
#[derive(clap::Args)]
pub struct SigningArgs {
    /// Pre-signed Hawk headers per second of run; a run that would need more
    /// is reported as failed, never replayed.
    #[arg(long, default_value_t = 40_000)]
    pub max_signed_rate: u64,
}

impl SigningArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_signed_rate >= 1, "--max-signed-rate: at least 1");
        Ok(())
    }
}

/// Where the results go, and the run they came from.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Markdown file whose generated section is replaced with the results.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// For the report: the commit and the date of the run.
    #[arg(long, default_value = "")]
    pub commit: String,
    #[arg(long, default_value = "")]
    pub date: String,
}

impl ReportArgs {
    /// The report's first line: "Command: `…`, run <date> at commit `…`."
    pub fn command_line(&self, command: &str) -> String {
        let mut line = format!("Command: `{command}`");
        if !self.date.is_empty() {
            line.push_str(&format!(", run {}", self.date));
        }
        if !self.commit.is_empty() {
            line.push_str(&format!(" at commit `{}`", self.commit));
        }
        line.push('.');
        line
    }
}

/// A number of seconds, written `15` or `15s`.
pub fn parse_seconds(value: &str) -> Result<u64, String> {
    value
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds (like 15 or 15s)"))
}

/// `path` from the root, for servers and tools that run in other folders.
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
