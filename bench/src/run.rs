//! `loop-bench run`: every route, per backend, on an empty and on a seeded
//! database, each phase with a server, a database and fixtures of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::args::{LoadArgs, ReportArgs, ServerArgs, SigningArgs, absolute, parse_seconds};
use crate::fixtures::{self, Api, CALL_BODY, CALL_URL_BODY, Fixtures};
use crate::report::{self, Dataset, PhaseResult, Route, RouteResult};
use crate::seed::{self, SeedCounts};
use crate::server::{Backend, ConfigInputs, Database, ServerProcess, write_config};
use crate::sink::PushSink;
use crate::wrk::{self, LoadSettings, RouteLoad};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Sqlite,
    Postgres,
    All,
}

/// Hawk timestamps are accepted within ±60 s and the headers are signed just
/// before a run: longer runs would end with stale signatures.
pub(crate) const MAX_DURATION_S: u64 = 45;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Which storage backends to benchmark.
    #[arg(value_enum, default_value = "all")]
    backend: BackendChoice,
    /// Smoke test: 3 s runs, 1 s warm-up and a 10× smaller seeded database.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    load: LoadArgs,
    /// Measured runs of each route (medians reported).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds per run (`15` or `15s`); default 15, or 3 with --quick.
    #[arg(short = 'd', long, value_parser = parse_seconds)]
    duration: Option<u64>,
    /// Unmeasured seconds of load per route before its runs; default 2, or 1 with --quick.
    #[arg(long, value_parser = parse_seconds)]
    warmup: Option<u64>,
    /// Comma-separated subset: registration, call-url, call-info, place-call, list-calls.
    #[arg(long, value_delimiter = ',')]
    routes: Vec<String>,
    /// Skip the seeded-database phase.
    #[arg(long)]
    no_big_db: bool,
    /// Sessions in the seeded database; default 100,000 (10,000 with --quick).
    #[arg(long)]
    seed_sessions: Option<u64>,
    /// Call URLs in the seeded database; default 1,000,000 (100,000 with --quick).
    #[arg(long)]
    seed_call_urls: Option<u64>,
    /// A PostgreSQL database to connect to for CREATE/DROP DATABASE.
    #[arg(
        long,
        env = "LOOP_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// The loopback provider component.
    #[arg(long)]
    plugin: PathBuf,
    /// bench/wrk/loop.lua.
    #[arg(long)]
    lua: PathBuf,
    #[command(flatten)]
    out: ReportArgs,
    /// For the report: the command that was run.
    #[arg(long, default_value = "scripts/bench")]
    command_line: String,
}

/// Everything a phase needs that does not change between phases.
struct Plan {
    settings: LoadSettings,
    duration_s: u64,
    warmup_s: u64,
    runs: usize,
    routes: Vec<Route>,
    seed: SeedCounts,
}

/// Returns whether every run was clean.
pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let duration_s = args.duration.unwrap_or(if args.quick { 3 } else { 15 });
    let warmup_s = args.warmup.unwrap_or(if args.quick { 1 } else { 2 });
    anyhow::ensure!(
        (1..=MAX_DURATION_S).contains(&duration_s),
        "--duration: must be 1 to {MAX_DURATION_S} s (Hawk timestamps are valid for 60 s after signing)"
    );
    anyhow::ensure!(
        warmup_s <= MAX_DURATION_S,
        "--warmup: at most {MAX_DURATION_S} s"
    );
    args.load.check()?;
    anyhow::ensure!(args.runs >= 1, "--runs: at least 1");
    args.signing.check()?;
    for (path, flag) in [
        (&args.server.server_bin, "--server-bin"),
        (&args.plugin, "--plugin"),
        (&args.lua, "--lua"),
    ] {
        anyhow::ensure!(path.is_file(), "{flag}: {} does not exist", path.display());
    }
    let routes = Route::parse_list(&args.routes)?;
    let backends = match args.backend {
        BackendChoice::Sqlite => vec![Backend::Sqlite],
        BackendChoice::Postgres => vec![Backend::Postgres],
        BackendChoice::All => vec![Backend::Sqlite, Backend::Postgres],
    };
    let scale = if args.quick { 10 } else { 1 };
    let plan = Plan {
        settings: args
            .load
            .settings(&args.lua, args.signing.max_signed_rate)?,
        duration_s,
        warmup_s,
        runs: args.runs,
        routes,
        seed: SeedCounts {
            sessions: args.seed_sessions.unwrap_or(100_000 / scale),
            call_urls: args.seed_call_urls.unwrap_or(1_000_000 / scale),
        },
    };
    std::fs::create_dir_all(&args.server.work_dir)?;
    let plugin = absolute(&args.plugin)?;
    let sink = PushSink::start().await.context("starting the push sink")?;

    let mut phases = Vec::new();
    for backend in backends {
        let mut datasets = vec![Dataset::Empty];
        if !args.no_big_db {
            datasets.push(Dataset::Big);
        }
        for dataset in datasets {
            let phase = Phase {
                backend,
                dataset,
                plan: &plan,
                sink: &sink,
                plugin: &plugin,
            };
            let result = phase
                .run(&args)
                .await
                .with_context(|| format!("{} / {dataset:?} database", backend.name()))?;
            phases.push(result);
        }
    }

    let markdown = format!("{}\n{}", header(&args, &plan), report::markdown(&phases));
    println!("\n{markdown}");
    if let Some(path) = &args.out.report {
        update_report(path, &markdown)?;
        println!("results written to {}", path.display());
    }
    Ok(!phases.iter().any(PhaseResult::failed))
}

struct Phase<'a> {
    backend: Backend,
    dataset: Dataset,
    plan: &'a Plan,
    sink: &'a PushSink,
    plugin: &'a Path,
}

impl Phase<'_> {
    fn name(&self) -> String {
        let backend = match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let dataset = match self.dataset {
            Dataset::Empty => "empty",
            Dataset::Big => "big",
        };
        format!("{backend}-{dataset}")
    }

    async fn run(&self, args: &RunArgs) -> anyhow::Result<PhaseResult> {
        let dir = absolute(&args.server.work_dir.join(self.name()))?;
        std::fs::create_dir_all(&dir)?;
        let database = Database::create(
            self.backend,
            &dir,
            &args.server.work_dir,
            &args.postgres_url,
        )
        .await?;
        let outcome = async {
            let config = write_config(&ConfigInputs {
                dir: &dir,
                database_url: database.url(),
                plugin: self.plugin,
                push_origin: &self.sink.origin,
                extra_toml: "",
                rate_limits: true,
            })?;
            let mut server = args.server.start(&config, &dir).await?;
            eprintln!(
                "[{}] loop-server (pid {}) at {}",
                self.name(),
                server.pid,
                server.url
            );
            let result = self.drive(&mut server, database.url(), &dir).await;
            let stopped = server.stop().await;
            let result = result
                .with_context(|| format!("server log: {}", server_log_path(&dir).display()))?;
            stopped?;
            Ok::<_, anyhow::Error>(result)
        }
        .await;
        let dropped = database.drop_database().await;
        let result = outcome?;
        dropped?;
        Ok(result)
    }

    async fn drive(
        &self,
        server: &mut ServerProcess,
        database_url: &str,
        dir: &Path,
    ) -> anyhow::Result<PhaseResult> {
        let name = self.name();
        let seed = match self.dataset {
            Dataset::Empty => None,
            Dataset::Big => {
                eprintln!(
                    "[{name}] seeding {} sessions and {} call URLs",
                    report::thousands(self.plan.seed.sessions as f64),
                    report::thousands(self.plan.seed.call_urls as f64)
                );
                let seeded = seed::seed(database_url, self.plan.seed)
                    .await
                    .context("seeding")?;
                eprintln!("[{name}] seeded in {:.1} s", seeded.seconds);
                Some(seeded)
            }
        };
        let api = Api::new(&server.url, server.port)?;
        let fixtures = fixtures::prepare(&api, self.sink)
            .await
            .context("creating the fixtures through the API")?;
        let malformed_before = self.sink.malformed();
        let mut pushes = 0;
        let registration_body = Api::registration_body(&self.sink.url("bench"));
        let logs = dir.join("wrk");
        std::fs::create_dir_all(&logs)?;

        let mut routes = Vec::new();
        for &route in &self.plan.routes {
            if self.plan.warmup_s > 0 {
                let load = route_load(route, &api, &fixtures, &registration_body)?;
                let log = logs.join(format!("{}-warmup.txt", route.key()));
                let warm = wrk::run(
                    &self.plan.settings,
                    &server.url,
                    server.pid,
                    &load,
                    self.plan.warmup_s,
                    dir,
                    &log,
                )
                .await?;
                if let Some(why) = warm.failure() {
                    eprintln!("[{name}] warning: {} warm-up: {why}", route.label());
                }
                server.ensure_running()?;
            }
            // Pings of measured calls only: let the warm-up's pings land first.
            let counts_pushes = route == Route::PlaceCall;
            if counts_pushes {
                tokio::time::sleep(PUSH_SETTLE).await;
            }
            let pings_before = self.sink.pings();
            let mut runs = Vec::new();
            for i in 0..self.plan.runs {
                let load = route_load(route, &api, &fixtures, &registration_body)?;
                let log = logs.join(format!("{}-{}.txt", route.key(), i + 1));
                let result = wrk::run(
                    &self.plan.settings,
                    &server.url,
                    server.pid,
                    &load,
                    self.plan.duration_s,
                    dir,
                    &log,
                )
                .await?;
                server.ensure_running()?;
                eprintln!(
                    "[{name}] {:<28} run {}/{}: {:>9} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  \
                     server CPU {:>5.0} µs/req  wrk+sink {:.2}  postgres {:.2}  others {:.2} cores{}",
                    route.label(),
                    i + 1,
                    self.plan.runs,
                    report::thousands(result.requests_per_second()),
                    result.p50_us / 1000.0,
                    result.p99_us / 1000.0,
                    result.server_cpu_us_per_request(),
                    result.harness_cores(),
                    result.database_cores(),
                    result.other_cores(),
                    result
                        .failure()
                        .map(|why| format!("  FAILED: {why}"))
                        .unwrap_or_default()
                );
                runs.push(result);
            }
            if counts_pushes {
                tokio::time::sleep(PUSH_SETTLE).await;
                pushes += self.sink.pings() - pings_before;
            }
            routes.push(RouteResult { route, runs });
        }
        let peak_rss_kib = server.peak_rss_kib()?;
        Ok(PhaseResult {
            backend: self.backend,
            dataset: self.dataset,
            seed,
            routes,
            peak_rss_kib,
            pushes,
            malformed_pushes: self.sink.malformed() - malformed_before,
        })
    }
}

/// Pushes run concurrently with the calls, bounded by `push.timeout_ms`; on
/// loopback they land well within this.
const PUSH_SETTLE: Duration = Duration::from_millis(500);

fn server_log_path(dir: &Path) -> PathBuf {
    dir.join("server.log")
}

/// A fresh load (and, for Hawk routes, a fresh signer) for one wrk run.
pub(crate) fn route_load<'a>(
    route: Route,
    api: &Api,
    fixtures: &Fixtures,
    registration_body: &'a str,
) -> anyhow::Result<RouteLoad<'a>> {
    Ok(match route {
        Route::Registration => RouteLoad {
            method: "POST",
            path: "/registration".into(),
            body: Some(registration_body),
            signer: None,
        },
        Route::CreateCallUrl => RouteLoad {
            method: "POST",
            path: "/call-url".into(),
            body: Some(CALL_URL_BODY),
            signer: Some(api.signer(
                &fixtures.creator,
                "POST",
                "/call-url",
                Some(CALL_URL_BODY),
            )?),
        },
        Route::CallUrlInfo => RouteLoad {
            method: "GET",
            path: format!("/calls/{}", fixtures.callee_call_token),
            body: None,
            signer: None,
        },
        Route::PlaceCall => RouteLoad {
            method: "POST",
            path: format!("/calls/{}", fixtures.callee_call_token),
            body: Some(CALL_BODY),
            signer: None,
        },
        Route::ListCalls => RouteLoad {
            method: "GET",
            path: "/calls?version=0".into(),
            body: None,
            signer: Some(api.signer(&fixtures.lister, "GET", "/calls?version=0", None)?),
        },
    })
}

fn header(args: &RunArgs, plan: &Plan) -> String {
    let mut lines = Vec::new();
    lines.push(args.out.command_line(&args.command_line));
    lines.push(format!("Machine: {}.", machine()));
    lines.push(format!(
        "Load: `wrk -t{} -c{} -d{}s --timeout {}s --latency` with bench/wrk/loop.lua, {} unmeasured warm-up second(s) per route, \
         {} measured run(s) per route (medians reported). wrk, the push sink and the server share the machine's cores.",
        plan.settings.threads, plan.settings.connections, plan.duration_s, plan.settings.timeout_s, plan.warmup_s, plan.runs
    ));
    if args.quick {
        lines.push(
            "**Quick mode (smoke test): figures are not comparable with the targets.**".into(),
        );
    }
    lines.push(format!(
        "Fixtures: `GET /calls?version=0` lists a user with {} live calls; `POST /calls/{{token}}` uses the loopback provider \
         and pings the callee's push URL on a local sink; Hawk requests are pre-signed with unique nonces just before each run.",
        fixtures::LISTED_CALLS
    ));
    lines.join("\n") + "\n"
}

/// CPU model, cores, memory and kernel of this machine.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{cpu}, {cores} cores, {memory_gib:.0} GiB RAM, Linux {kernel}")
}

/// [`machine_description`] and the wrk version.
pub(crate) fn machine() -> String {
    let wrk = std::process::Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(|l| l.split(" Copyright").next().unwrap_or(l).to_string())
        })
        .unwrap_or_else(|| "wrk".into());
    format!("{}; {wrk}", machine_description())
}

/// A generated part of a Markdown file, between two marker comments.
pub struct Section {
    /// Written above the markers when the section is added to a file that
    /// does not have it yet; empty for none.
    pub heading: &'static str,
    pub start: &'static str,
    pub end: &'static str,
}

const RESULTS_SECTION: Section = Section {
    heading: "",
    start: "<!-- loop-bench:results:start (generated by scripts/bench; edits here are overwritten) -->",
    end: "<!-- loop-bench:results:end -->",
};

/// Replaces the generated section of `path`, keeping what is written around it.
fn update_report(path: &Path, generated: &str) -> anyhow::Result<()> {
    update_section(path, &RESULTS_SECTION, generated)
}

/// Replaces `section` of `path` with `generated`, keeping what is written
/// around it; a file without the section gets it appended at its end.
pub fn update_section(path: &Path, section: &Section, generated: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".to_string());
    let body = format!(
        "{}\n{}\n{}",
        section.start,
        generated.trim_end(),
        section.end
    );
    let updated = match (existing.find(section.start), existing.find(section.end)) {
        (Some(start), Some(end)) if start < end => {
            format!(
                "{}{body}{}",
                &existing[..start],
                &existing[end + section.end.len()..]
            )
        }
        _ if section.heading.is_empty() => format!("{}\n{body}\n", existing.trim_end()),
        _ => format!("{}\n\n{}\n\n{body}\n", existing.trim_end(), section.heading),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_section_is_replaced_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!(
            "loop-bench-report-{}",
            crate::hawk_sign::random_nonce_prefix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n\nintro\n").unwrap();
        update_report(&path, "first").unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.starts_with("# Benchmarks\n\nintro\n") && first.contains("first"));
        std::fs::write(&path, format!("{first}\nnotes after\n")).unwrap();
        update_report(&path, "second").unwrap();
        let second = std::fs::read_to_string(&path).unwrap();
        assert!(
            second.contains("second")
                && !second.contains("first")
                && second.contains("notes after")
        );
        assert!(second.contains("intro"));
        const OTHER: Section = Section {
            heading: "## Other",
            start: "<!-- other:start -->",
            end: "<!-- other:end -->",
        };
        update_section(&path, &OTHER, "third").unwrap();
        update_section(&path, &OTHER, "fourth").unwrap();
        let third = std::fs::read_to_string(&path).unwrap();
        assert!(third.contains("second") && third.contains("fourth") && !third.contains("third"));
        assert_eq!(third.matches("## Other").count(), 1, "{third}");
        assert!(third.trim_end().ends_with("<!-- other:end -->"), "{third}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
