//! `loop-bench original`: Loop and Mozilla's original loop-server 0.17.8 side
//! by side, and an axum hello-world route as the framework's ceiling, all
//! measured the same way in one run.
//!
//! The original comes from the benchmark kit in
//! `../shared/peers/original-loop-server/` (`install`, `start`, `stop`): Node,
//! Redis, and a fake TokBox and push server (`fake_upstream.py`). The kit's
//! `bench.sh` drives any server that speaks the Loop REST API, so it measures
//! all three: the same wrk Lua scripts, the same pre-signed Hawk headers for
//! `GET /calls?version=0`, the same push URL, the same warm-up and duration,
//! and the server's CPU time per request from `/proc/<pid>/stat`. Loop runs
//! with the bundled loopback provider on SQLite (what the targets are set
//! for) and on PostgreSQL (unless `--no-postgres`); the original asks the
//! fake TokBox for its sessions. The ceiling (`axum-hello`) is measured on
//! `GET /calls/{token}` only.
//!
//! They are measured in turns, `--runs` pairs of original then Loop (then the
//! ceiling), and the report gives the medians and their ratios.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::args::{ReportArgs, ServerArgs, parse_seconds};
use crate::report::{median, thousands};
use crate::server::{Backend, ConfigInputs, Database, write_config};

/// Issue 10's targets.
const TARGET_RPS_RATIO: f64 = 10.0;
const TARGET_CPU_RATIO: f64 = 10.0;
const TARGET_P99_MS: f64 = 10.0;
const TARGET_CEILING_SHARE: f64 = 0.5;

#[derive(clap::Args)]
pub struct OriginalArgs {
    /// Smoke test: 3 s runs, 1 s warm-up, one pair; no report is written.
    #[arg(long)]
    quick: bool,
    /// Back-to-back pairs (original, then Loop, then the ceiling); medians reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// wrk threads.
    #[arg(short = 't', long, default_value_t = 2)]
    threads: u32,
    /// wrk connections, all threads together.
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: u32,
    /// Seconds per measured run (`10` or `10s`); default 10, or 3 with --quick.
    #[arg(short = 'd', long, value_parser = parse_seconds)]
    duration: Option<u64>,
    /// Unmeasured seconds of load before each measured run; default 3, or 1 with --quick.
    #[arg(long, value_parser = parse_seconds)]
    warmup: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
    /// The loopback provider component.
    #[arg(long)]
    plugin: PathBuf,
    /// The original's benchmark kit (`../shared/peers/original-loop-server`).
    #[arg(long)]
    kit: PathBuf,
    /// Where the kit installs the original (its `install` is idempotent).
    #[arg(long)]
    kit_dir: PathBuf,
    /// The `axum-hello` binary built beside loop-bench.
    #[arg(long)]
    hello_bin: PathBuf,
    /// Measure Loop on SQLite only, not on PostgreSQL too.
    #[arg(long)]
    no_postgres: bool,
    /// A PostgreSQL database to connect to for CREATE/DROP DATABASE.
    #[arg(
        long,
        env = "LOOP_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    #[command(flatten)]
    out: ReportArgs,
    /// For the report: the command that was run.
    #[arg(long, default_value = "scripts/bench original")]
    command_line: String,
}

/// The four routes the kit measures, in its order.
const SCENARIOS: [(&str, &str); 4] = [
    ("get_token", "GET /calls/{token}"),
    ("list_calls", "GET /calls?version=0"),
    ("post_call", "POST /calls/{token}"),
    ("register", "POST /registration"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Original,
    Loop(Backend),
    Ceiling,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Original => "original",
            Side::Loop(Backend::Sqlite) => "loop",
            Side::Loop(Backend::Postgres) => "loop-postgres",
            Side::Ceiling => "axum-hello",
        }
    }
}

/// One line of the kit's `summary.jsonl`.
#[derive(Debug, Clone, Deserialize)]
struct Measured {
    scenario: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu_ms_per_req: Option<f64>,
    server_rss_mb_max: f64,
    err_status: u64,
    sock_err: u64,
}

/// One server's runs in one pair.
struct SideRun {
    side: Side,
    measured: Vec<Measured>,
    /// The local PostgreSQL's CPU while the kit ran (warm-ups included), in cores.
    database_cores: f64,
}

struct Pair {
    results: Vec<SideRun>,
}

/// What one run of the comparison does, from the options.
struct Plan {
    duration_s: u64,
    warmup_s: u64,
    pairs: usize,
}

/// A free port on 127.0.0.1 for a server that needs one given.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

async fn run_tool(command: &mut Command, what: &str, log: &Path) -> anyhow::Result<String> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let output = command
        .stdin(Stdio::null())
        .stderr(log_file)
        .output()
        .await
        .with_context(|| format!("{what}: could not start it"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}); see {}",
        output.status,
        log.display()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The axum hello-world server, stopped when dropped.
struct Hello {
    _child: Child,
    pid: u32,
    url: String,
}

impl Hello {
    async fn start(bin: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("axum-hello exited at once")?;
        let stdout = child.stdout.take().context("axum-hello stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("axum-hello did not start within 10 s")??
            .context("axum-hello exited before listening")?;
        let url = line
            .strip_prefix("listening on ")
            .context("axum-hello printed no address")?
            .to_string();
        Ok(Self {
            _child: child,
            pid,
            url,
        })
    }
}

/// Runs the comparison; false when some run had errors (the report is still written).
pub async fn run(args: OriginalArgs) -> anyhow::Result<bool> {
    let args = &args;
    let plan = Plan {
        duration_s: args.duration.unwrap_or(if args.quick { 3 } else { 10 }),
        warmup_s: args.warmup.unwrap_or(if args.quick { 1 } else { 3 }),
        pairs: if args.quick { 1 } else { args.runs },
    };
    anyhow::ensure!(plan.pairs >= 1, "--runs: at least 1");
    anyhow::ensure!(
        (1..=50).contains(&plan.duration_s),
        "--duration: 1 to 50 s (the pre-signed Hawk headers are valid for 60 s)"
    );
    anyhow::ensure!(
        args.threads >= 1 && args.connections >= args.threads,
        "--connections: at least one per thread"
    );
    for (path, flag) in [
        (&args.server.server_bin, "--server-bin"),
        (&args.plugin, "--plugin"),
        (&args.hello_bin, "--hello-bin"),
    ] {
        anyhow::ensure!(path.is_file(), "{flag}: {} does not exist", path.display());
    }
    let kit = std::path::absolute(&args.kit)?;
    anyhow::ensure!(
        kit.join("bench.sh").is_file(),
        "--kit: {} is not the original's benchmark kit (no bench.sh)",
        kit.display()
    );
    std::fs::create_dir_all(&args.server.work_dir)?;
    let work = std::path::absolute(&args.server.work_dir)?;
    let kit_dir = std::path::absolute(&args.kit_dir)?;
    let log = work.join("original.log");

    eprintln!(
        "installing the original (idempotent): {}",
        kit_dir.display()
    );
    run_tool(
        Command::new("bash").arg(kit.join("install")).arg(&kit_dir),
        "the kit's install",
        &log,
    )
    .await?;
    let python = kit_dir.join("venv/bin/python");

    let upstream_port = free_port()?;
    let upstream = format!("http://127.0.0.1:{upstream_port}");
    let original_url = run_tool(
        Command::new("bash")
            .arg(kit.join("start"))
            .arg(&kit_dir)
            .args(["--port", &free_port()?.to_string()])
            .args(["--upstream-port", &upstream_port.to_string()]),
        "the kit's start",
        &log,
    )
    .await?;
    let peer = Peer {
        kit: &kit,
        kit_dir: &kit_dir,
        python: &python,
        upstream: &upstream,
        url: &original_url,
    };
    let outcome = measure(args, &plan, &peer, &work, &log).await;
    let stopped = run_tool(
        Command::new("bash").arg(kit.join("stop")).arg(&kit_dir),
        "the kit's stop",
        &log,
    )
    .await;
    let pairs = outcome?;
    stopped?;

    let markdown = markdown(&pairs, args, &plan);
    println!("{markdown}");
    if let Some(path) = &args.out.report
        && !args.quick
    {
        crate::run::update_section(path, &ORIGINAL_SECTION, &markdown)?;
        eprintln!("results written to {}", path.display());
    }
    let failed = pairs.iter().flat_map(|p| &p.results).any(|run| {
        run.measured
            .iter()
            .any(|m| m.err_status > 0 || m.sock_err > 0)
    });
    Ok(!failed)
}

const ORIGINAL_SECTION: crate::run::Section = crate::run::Section {
    heading: "## Side by side with Mozilla's original loop-server, and axum's ceiling",
    start: "<!-- loop-bench:original:start (generated by `scripts/bench original`; edits here are overwritten) -->",
    end: "<!-- loop-bench:original:end -->",
};

/// The original as the kit runs it.
struct Peer<'a> {
    kit: &'a Path,
    kit_dir: &'a Path,
    /// The kit's virtualenv python (requests, requests-hawk).
    python: &'a Path,
    /// The fake TokBox and push server both servers use.
    upstream: &'a str,
    url: &'a str,
}

async fn measure(
    args: &OriginalArgs,
    plan: &Plan,
    peer: &Peer<'_>,
    work: &Path,
    log: &Path,
) -> anyhow::Result<Vec<Pair>> {
    let Peer {
        kit,
        kit_dir,
        python,
        upstream,
        url: original_url,
    } = *peer;
    let original_pid: u32 = std::fs::read_to_string(kit_dir.join("server.pid"))
        .context("the kit's server.pid")?
        .trim()
        .parse()
        .context("the kit's server.pid")?;

    let backends: &[Backend] = if args.no_postgres {
        &[Backend::Sqlite]
    } else {
        &[Backend::Sqlite, Backend::Postgres]
    };
    let mut servers = Vec::new();
    for &backend in backends {
        let dir = work.join(format!("loop-{}", backend.name().to_lowercase()));
        std::fs::create_dir_all(&dir)?;
        let database = Database::create(backend, &dir, work, &args.postgres_url).await?;
        let config = write_config(&ConfigInputs {
            dir: &dir,
            database_url: database.url(),
            plugin: &std::path::absolute(&args.plugin)?,
            push_origin: upstream,
            extra_toml: "",
            rate_limits: true,
        })?;
        let server = args.server.start(&config, &dir).await?;
        servers.push((backend, server, database));
    }
    let hello = Hello::start(&std::path::absolute(&args.hello_bin)?).await?;

    let Plan {
        duration_s,
        warmup_s,
        pairs,
    } = *plan;
    let mut results = Vec::new();
    for pair in 1..=pairs {
        let mut pair_results = Vec::new();
        let sides = std::iter::once((Side::Original, original_url, original_pid))
            .chain(servers.iter().map(|(backend, server, _)| {
                (Side::Loop(*backend), server.url.as_str(), server.pid)
            }))
            .chain([(Side::Ceiling, hello.url.as_str(), hello.pid)]);
        for (side, url, pid) in sides {
            let token = match side {
                // The ceiling answers any token.
                Side::Ceiling => "ceiling".to_string(),
                _ => {
                    run_tool(
                        Command::new(python).arg(kit.join("flow.py")).args([
                            "--base",
                            url,
                            "--upstream",
                            upstream,
                            "--token-only",
                        ]),
                        "the kit's flow.py --token-only",
                        log,
                    )
                    .await?
                }
            };
            let out = work.join(format!("pair-{pair}")).join(side.name());
            std::fs::create_dir_all(&out)?;
            let scenarios = match side {
                Side::Ceiling => "get_token".to_string(),
                _ => SCENARIOS.map(|(key, _)| key).join(" "),
            };
            eprintln!("pair {pair}/{pairs}: {} ({url})", side.name());
            let database_before = (crate::cpu::postgres_times(), std::time::Instant::now());
            run_tool(
                Command::new("bash")
                    .arg(kit.join("bench.sh"))
                    .arg(url)
                    .arg(&token)
                    .env("THREADS", args.threads.to_string())
                    .env("CONNS", args.connections.to_string())
                    .env("DURATION", format!("{duration_s}s"))
                    .env("WARMUP", format!("{warmup_s}s"))
                    .env("SCENARIOS", scenarios)
                    .env("UPSTREAM", upstream)
                    .env("PYTHON", python)
                    .env("PEER_DIR", kit_dir)
                    .env("SERVER_PID", pid.to_string())
                    .env("OUT", &out),
                "the kit's bench.sh",
                &out.join("bench.log"),
            )
            .await?;
            let database_cores = (crate::cpu::postgres_times() - database_before.0).max(0.0)
                / database_before.1.elapsed().as_secs_f64();
            let summary = std::fs::read_to_string(out.join("summary.jsonl"))
                .with_context(|| format!("{}/summary.jsonl", out.display()))?;
            let measured = summary
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| serde_json::from_str::<Measured>(line).context("summary.jsonl"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for m in &measured {
                eprintln!(
                    "  {:<10} {:>9} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server CPU {:>6.0} µs/req{}",
                    m.scenario,
                    thousands(m.rps),
                    m.p50_ms,
                    m.p99_ms,
                    m.server_cpu_ms_per_req.unwrap_or(f64::NAN) * 1000.0,
                    if m.err_status + m.sock_err > 0 {
                        format!("  ERRORS: {} non-2xx, {} socket", m.err_status, m.sock_err)
                    } else {
                        String::new()
                    }
                );
            }
            pair_results.push(SideRun {
                side,
                measured,
                database_cores,
            });
        }
        results.push(Pair {
            results: pair_results,
        });
    }
    drop(hello);
    for (_, server, database) in servers {
        server.stop().await?;
        database.drop_database().await?;
    }
    Ok(results)
}

/// Medians over the pairs of one side's figure on one scenario.
fn figure(pairs: &[Pair], side: Side, scenario: &str, f: impl Fn(&Measured) -> f64) -> f64 {
    median(
        runs_of(pairs, side)
            .flat_map(|run| run.measured.iter().filter(|m| m.scenario == scenario))
            .map(&f)
            .collect(),
    )
}

/// Median over the pairs of the PostgreSQL CPU while `side` was measured.
fn database_cores(pairs: &[Pair], side: Side) -> f64 {
    median(runs_of(pairs, side).map(|run| run.database_cores).collect())
}

/// `side`'s runs, one per pair.
fn runs_of(pairs: &[Pair], side: Side) -> impl Iterator<Item = &SideRun> {
    pairs
        .iter()
        .flat_map(|pair| &pair.results)
        .filter(move |run| run.side == side)
}

fn cpu_us(m: &Measured) -> f64 {
    m.server_cpu_ms_per_req.unwrap_or(f64::NAN) * 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Loop on `backend` against the original, route by route, with the targets.
fn ratio_table(out: &mut String, pairs: &[Pair], backend: Backend) {
    use std::fmt::Write as _;
    let side = Side::Loop(backend);
    let postgres = backend == Backend::Postgres;
    let _ = writeln!(
        out,
        "| route | req/s: Loop ÷ original | target ≥ {TARGET_RPS_RATIO:.0}× | server CPU/req: original ÷ Loop | target ≥ {TARGET_CPU_RATIO:.0}× | Loop p99 | target ≤ {TARGET_P99_MS:.0} ms |{}",
        if postgres { " PostgreSQL's CPU |" } else { "" }
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---:|---|---:|---|{}",
        if postgres { "---:|" } else { "" }
    );
    for (key, route) in SCENARIOS {
        let rps =
            figure(pairs, side, key, |m| m.rps) / figure(pairs, Side::Original, key, |m| m.rps);
        let cpu = figure(pairs, Side::Original, key, cpu_us) / figure(pairs, side, key, cpu_us);
        let p99 = figure(pairs, side, key, |m| m.p99_ms);
        let _ = writeln!(
            out,
            "| `{route}` | {rps:.1}× | {} | {cpu:.1}× | {} | {p99:.2} ms | {} |{}",
            verdict(rps >= TARGET_RPS_RATIO),
            verdict(cpu >= TARGET_CPU_RATIO),
            verdict(p99 <= TARGET_P99_MS),
            if postgres {
                format!(" {:.2} cores |", database_cores(pairs, side))
            } else {
                String::new()
            }
        );
    }
}

fn markdown(pairs: &[Pair], args: &OriginalArgs, plan: &Plan) -> String {
    let Plan {
        duration_s,
        warmup_s,
        ..
    } = *plan;
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{}", args.out.command_line(&args.command_line));
    let _ = writeln!(out, "Machine: {}.", crate::run::machine_description());
    let _ = writeln!(
        out,
        "Load: the original's kit (`bench.sh`) for all three servers: `wrk -t{} -c{} -d{duration_s}s --latency`, \
         {warmup_s} unmeasured warm-up second(s) before each run, {} back-to-back pair(s) (original, then Loop, then \
         axum-hello) taken in turns, medians reported. Loop: a release `loop-server` with the loopback provider, \
         on SQLite and (`loop-postgres`) on the local PostgreSQL, which shares the machine's cores. The original: \
         loop-server 0.17.8 on Node with Redis and the kit's fake TokBox. Both ping the kit's fake push server \
         on every `POST /calls/{{token}}`.",
        args.threads,
        args.connections,
        pairs.len()
    );
    if args.quick {
        let _ = writeln!(
            out,
            "**Quick mode (smoke test): figures are not comparable with the targets.**"
        );
    }
    let _ = writeln!(out, "\n### Ratios, measured back to back\n");
    ratio_table(&mut out, pairs, Backend::Sqlite);
    let loop_rps = figure(pairs, Side::Loop(Backend::Sqlite), "get_token", |m| m.rps);
    let ceiling_rps = figure(pairs, Side::Ceiling, "get_token", |m| m.rps);
    let share = loop_rps / ceiling_rps;
    let _ = writeln!(
        out,
        "\n`GET /calls/{{token}}` against axum's ceiling (`axum-hello`, the same route answering a constant JSON \
         body): Loop {} req/s ÷ {} req/s = **{:.0}%** (target ≥ {:.0}%: {}).\n",
        thousands(loop_rps),
        thousands(ceiling_rps),
        share * 100.0,
        TARGET_CEILING_SHARE * 100.0,
        verdict(share >= TARGET_CEILING_SHARE)
    );
    let postgres = Side::Loop(Backend::Postgres);
    if figure(pairs, postgres, "get_token", |m| m.rps).is_finite() {
        let _ = writeln!(
            out,
            "The same on PostgreSQL (Loop's server CPU only; PostgreSQL's own processes, on the same 2 cores, \
             are the last column):\n"
        );
        ratio_table(&mut out, pairs, Backend::Postgres);
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "### Figures (medians)\n");
    let _ = writeln!(
        out,
        "| route | server | req/s | p50 | p99 | server CPU/req | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for (key, route) in SCENARIOS {
        for side in [
            Side::Original,
            Side::Loop(Backend::Sqlite),
            postgres,
            Side::Ceiling,
        ] {
            let rps = figure(pairs, side, key, |m| m.rps);
            if !rps.is_finite() {
                continue;
            }
            let _ = writeln!(
                out,
                "| `{route}` | {} | {} | {:.2} ms | {:.2} ms | {:.0} µs | {:.0} MB |",
                side.name(),
                thousands(rps),
                figure(pairs, side, key, |m| m.p50_ms),
                figure(pairs, side, key, |m| m.p99_ms),
                figure(pairs, side, key, cpu_us),
                figure(pairs, side, key, |m| m.server_rss_mb_max)
            );
        }
    }

    let _ = writeln!(out, "\n### Every run\n");
    let _ = writeln!(
        out,
        "| pair | server | route | req/s | p50 | p99 | server CPU/req | errors |"
    );
    let _ = writeln!(out, "|---:|---|---|---:|---:|---:|---:|---:|");
    for (i, pair) in pairs.iter().enumerate() {
        for SideRun { side, measured, .. } in &pair.results {
            for m in measured {
                let route = SCENARIOS
                    .iter()
                    .find(|(key, _)| *key == m.scenario)
                    .map_or(m.scenario.as_str(), |(_, route)| route);
                let _ = writeln!(
                    out,
                    "| {} | {} | `{route}` | {} | {:.2} ms | {:.2} ms | {:.0} µs | {} |",
                    i + 1,
                    side.name(),
                    thousands(m.rps),
                    m.p50_ms,
                    m.p99_ms,
                    cpu_us(m),
                    m.err_status + m.sock_err
                );
            }
        }
    }
    out
}
