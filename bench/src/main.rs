//! `loop-bench`: the load benchmark of `loop-server`, driven by `scripts/bench`.
//!
//! `run` starts the release server per backend and dataset, creates the
//! fixtures through the API, pre-signs Hawk requests, drives each route with
//! wrk (`bench/wrk/loop.lua`) and reports throughput, latency and peak RSS.
//! `progress` benchmarks the call-progress websocket (idle sockets' memory,
//! state-change fan-out latency). `providers` benchmarks `POST /calls/{token}`
//! with each provider plugin and the plugin's share of the server's time.
//! `original` measures Loop and Mozilla's original server back to back, with
//! an axum hello-world route as the framework's ceiling. `overhead` measures
//! the build with metrics, request ids and rate limits against the one before
//! them, back to back.
//! `sign` and `seed` expose the two building blocks for manual runs.

mod args;
mod cpu;
mod fixtures;
mod hawk_sign;
mod original;
mod overhead;
mod progress;
mod providers;
mod report;
mod run;
mod seed;
mod server;
mod sink;
mod wrk;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loop-bench", about = "Load benchmark harness for loop-server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark every route on each backend (what `scripts/bench` runs).
    Run(Box<run::RunArgs>),
    /// Benchmark the call-progress websocket: idle sockets' memory and
    /// state-change fan-out latency (`scripts/bench progress`).
    Progress(Box<progress::ProgressArgs>),
    /// Benchmark `POST /calls/{token}` with each provider plugin as the
    /// default provider, and the plugin's share of the server's time
    /// (`scripts/bench providers`).
    Providers(Box<providers::ProvidersArgs>),
    /// Benchmark Loop and Mozilla's original loop-server back to back on the
    /// four routes the original's kit measures, with an axum hello-world
    /// route as the framework's ceiling (`scripts/bench original`).
    Original(Box<original::OriginalArgs>),
    /// Benchmark the cost of metrics, request ids and rate limits: each
    /// route on the build with them and on the baseline before them, back to
    /// back (`scripts/bench overhead`).
    Overhead(Box<overhead::OverheadArgs>),
    /// Pre-sign Hawk Authorization values for a manual `wrk -s bench/wrk/loop.lua` run.
    Sign(SignArgs),
    /// Bulk-insert sessions and call URLs into a migrated Loop database.
    Seed(SeedArgs),
}

#[derive(clap::Args)]
struct SignArgs {
    /// The session token from `Hawk-Session-Token` (hex).
    #[arg(long, env = "LOOP_BENCH_SESSION_TOKEN", hide_env_values = true)]
    session_token: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Server origin as wrk will reach it, e.g. http://127.0.0.1:5000.
    #[arg(long)]
    server: String,
    /// Path and query, e.g. `/calls?version=0`.
    #[arg(long)]
    path: String,
    /// JSON body (its payload hash is signed).
    #[arg(long)]
    body: Option<String>,
    /// Writes `<prefix>.0` … one file per wrk thread.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Headers per file; each can be sent once.
    #[arg(long, default_value_t = 100_000)]
    per_thread: u64,
}

#[derive(clap::Args)]
struct SeedArgs {
    /// `sqlite://…` or `postgres://…`, already migrated by loop-server.
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    #[arg(long, default_value_t = 1_000_000)]
    call_urls: u64,
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    let url =
        reqwest::Url::parse(&args.server).map_err(|err| anyhow::anyhow!("--server: {err}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--server: no host"))?
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| anyhow::anyhow!("--server: no port"))?;
    let session = hawk_sign::HawkSession::from_token(&args.session_token)?;
    let signer = hawk_sign::Signer::new(
        &session,
        hawk_sign::SignedRequest {
            method: args.method,
            host,
            port,
            path: args.path,
            payload: args
                .body
                .map(|body| ("application/json".to_string(), body.into_bytes())),
        },
    )?;
    for file in hawk_sign::write_signed_files(&signer, &args.out, args.threads, args.per_thread)? {
        println!("{}", file.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Progress(args) => progress::run(*args).await,
        Command::Providers(args) => providers::run(*args).await,
        Command::Original(args) => original::run(*args).await,
        Command::Overhead(args) => overhead::run(*args).await,
        Command::Sign(args) => sign(args).map(|()| true),
        Command::Seed(args) => {
            let counts = seed::SeedCounts {
                sessions: args.sessions,
                call_urls: args.call_urls,
            };
            seed::seed(&args.database_url, counts).await.map(|report| {
                println!(
                    "seeded {} sessions and {} call URLs in {:.1} s",
                    report.counts.sessions, report.counts.call_urls, report.seconds
                );
                true
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Results were reported; some run had errors.
        Ok(false) => ExitCode::from(2),
        Err(err) => {
            eprintln!("loop-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
