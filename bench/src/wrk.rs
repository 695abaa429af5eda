//! One wrk run of one route, and its result.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::cpu::{CpuSnapshot, CpuUse};
use crate::hawk_sign::{Signer, write_signed_files};

#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub threads: u32,
    pub connections: u32,
    /// wrk's `--timeout`: a slower response counts as a timeout error.
    pub timeout_s: u64,
    pub lua: PathBuf,
    /// Signed headers prepared per second of run, all threads together.
    pub max_signed_rate: u64,
}

/// What wrk sends for one route.
pub struct RouteLoad<'a> {
    pub method: &'a str,
    pub path: String,
    pub body: Option<&'a str>,
    /// Hawk routes: signs each request with a fresh nonce.
    pub signer: Option<Signer>,
}

/// The line printed by `done()` in `bench/wrk/loop.lua`.
#[derive(Debug, Clone, Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Responses with status ≥ 400.
    pub status_errors: u64,
    pub timeouts: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Requests sent unsigned because the pre-signed headers ran out.
    pub exhausted: u64,
    /// Measured around the wrk process, not reported by it.
    #[serde(skip)]
    pub cpu: CpuUse,
}

impl WrkResult {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds()
    }

    fn seconds(&self) -> f64 {
        self.duration_us.max(1) as f64 / 1e6
    }

    /// Server CPU time per completed request, in microseconds.
    pub fn server_cpu_us_per_request(&self) -> f64 {
        self.cpu.server_s * 1e6 / self.requests.max(1) as f64
    }

    /// Cores kept busy by wrk and the push sink.
    pub fn harness_cores(&self) -> f64 {
        self.cpu.harness_s / self.seconds()
    }

    /// Cores kept busy by local PostgreSQL processes.
    pub fn database_cores(&self) -> f64 {
        self.cpu.database_s / self.seconds()
    }

    /// Cores kept busy by processes other than the server, the harness and PostgreSQL.
    pub fn other_cores(&self) -> f64 {
        self.cpu.other_s / self.seconds()
    }

    /// Why this run does not count, if it does not.
    pub fn failure(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if self.exhausted > 0 {
            reasons.push(format!(
                "{} requests found no pre-signed Hawk header left (raise --max-signed-rate)",
                self.exhausted
            ));
        }
        if self.status_errors > 0 {
            reasons.push(format!(
                "{} responses with status >= 400",
                self.status_errors
            ));
        }
        let socket = self.connect_errors + self.read_errors + self.write_errors;
        if socket > 0 {
            reasons.push(format!(
                "socket errors: connect {}, read {}, write {}",
                self.connect_errors, self.read_errors, self.write_errors
            ));
        }
        if self.timeouts > 0 {
            reasons.push(format!("{} timeouts", self.timeouts));
        }
        if self.requests == 0 {
            reasons.push("no request completed".into());
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// Runs wrk against `base_url` for `duration_s`, signing just before it starts.
/// The whole wrk output is kept in `log`.
pub async fn run(
    settings: &LoadSettings,
    base_url: &str,
    server_pid: u32,
    route: &RouteLoad<'_>,
    duration_s: u64,
    scratch: &Path,
    log: &Path,
) -> anyhow::Result<WrkResult> {
    let mut signed_files = Vec::new();
    let mut command = tokio::process::Command::new("wrk");
    command
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{duration_s}s"))
        .arg(format!("--timeout={}s", settings.timeout_s))
        .arg("--latency")
        .arg("-s")
        .arg(&settings.lua)
        .arg(format!("{}{}", base_url.trim_end_matches('/'), route.path))
        .env("LOOP_BENCH_METHOD", route.method)
        .env("LOOP_BENCH_BODY", route.body.unwrap_or(""))
        .env(
            "LOOP_BENCH_CONTENT_TYPE",
            if route.body.is_some() {
                "application/json"
            } else {
                ""
            },
        )
        .env("LOOP_BENCH_SIGNED", "")
        .kill_on_drop(true);
    if let Some(signer) = &route.signer {
        // Signing and loading take a moment each: sign for the whole run
        // plus a margin, timestamped now, right before wrk starts.
        let per_thread =
            (settings.max_signed_rate * (duration_s + 1)).div_ceil(u64::from(settings.threads));
        let prefix = scratch.join("signed");
        let signer_ref = signer;
        signed_files = tokio::task::block_in_place(|| {
            write_signed_files(signer_ref, &prefix, settings.threads, per_thread)
        })?;
        command.env("LOOP_BENCH_SIGNED", &prefix);
    }
    let before = CpuSnapshot::take(server_pid)?;
    let output = command
        .output()
        .await
        .context("running wrk (is it installed?)")?;
    let cpu = CpuSnapshot::take(server_pid)?.since(&before);
    for file in signed_files {
        let _ = std::fs::remove_file(file);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(log, format!("{stdout}\n--- stderr ---\n{stderr}"))
        .with_context(|| format!("writing {}", log.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "wrk failed ({}): {stderr}",
        output.status
    );
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("LOOP_BENCH_RESULT "))
        .with_context(|| {
            format!(
                "wrk printed no result line (see {}): {stderr}",
                log.display()
            )
        })?;
    let mut result: WrkResult =
        serde_json::from_str(line).with_context(|| format!("parsing wrk's result line {line}"))?;
    result.cpu = cpu;
    Ok(result)
}
