//! `loop-bench overhead`: what metrics, request ids and rate limits cost.
//!
//! Issue 12 allows them at most 5% of throughput on any route, measured with
//! and without them back to back in one run. "Without" is the server built
//! from the commit before that work (`--baseline-bin`); "with" is the
//! current build (`--server-bin`) with its metrics listener on and scraped
//! once a second while under load, and rate limits on with budgets no run
//! reaches (request ids are always on). Per route, `--runs` pairs, the
//! order alternating (without then with, with then without, …) so that
//! neither build always runs on a warmer or busier machine; every run gets a
//! fresh server, SQLite database and fixtures, and a warm-up of its own. The
//! report gives each build's median req/s and p99, and the median of the
//! per-pair ratios.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::args::{LoadArgs, ReportArgs, ServerArgs, SigningArgs, absolute, parse_seconds};
use crate::fixtures::{self, Api};
use crate::report::{Route, median, ms, thousands};
use crate::run::{MAX_DURATION_S, Section, route_load, update_section};
use crate::server::{Backend, ConfigInputs, Database, ServerProcess, write_config};
use crate::sink::PushSink;
use crate::wrk::{self, LoadSettings, WrkResult};

/// Issue 12: "with" keeps at least this share of "without"'s req/s.
const TARGET_RATIO: f64 = 0.95;

/// What the "with" server gets on top of the environment both servers
/// inherit. The baseline never gets these: it predates the keys, and a key a
/// known section does not have (`server.metrics_listen`) stops it at start.
///
/// Rate limits are in the "with" server's config file (high budgets,
/// `ConfigInputs::rate_limits`), which the baseline's never has.
pub const FEATURE_ENV: &[(&str, &str)] = &[("LOOP_SERVER__METRICS_LISTEN", "127.0.0.1:0")];

/// [`FEATURE_ENV`] set, or every name in it kept out of what the server inherits.
fn server_env(features: bool) -> Vec<(&'static str, Option<&'static str>)> {
    FEATURE_ENV
        .iter()
        .map(|&(name, value)| (name, features.then_some(value)))
        .collect()
}

/// The line the "with" server prints once its metrics listener is bound,
/// followed by the endpoint's URL.
const METRICS_LINE: &str = "loop-server metrics on ";
/// How long after its API listener the server may take to announce metrics.
const METRICS_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// A scrape must carry the request counter (the metric names every helper
/// shares): a listener that answers without it is not measuring anything.
const REQUEST_METRIC: &str = "loop_http_requests_total";
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct OverheadArgs {
    /// Smoke test: 3 s runs, 1 s warm-up, one pair per route; no report is written.
    #[arg(long)]
    quick: bool,
    /// The server built from the commit before the metrics, request ids and
    /// rate limits (`--server-bin` is the build with them).
    #[arg(long)]
    baseline_bin: PathBuf,
    /// For the report: the commit the baseline was built from.
    #[arg(long, default_value = "")]
    baseline_commit: String,
    /// Harness check (A/A): start the "with" server like the baseline, with
    /// no feature environment and no scraping, e.g. to see that two builds
    /// of one commit give ratios of about 1.
    #[arg(long, hide = true)]
    no_features: bool,
    #[command(flatten)]
    load: LoadArgs,
    /// Back-to-back pairs per route (medians reported); default 3, or 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds per measured run (`10` or `10s`); default 10, or 3 with --quick.
    #[arg(short = 'd', long, value_parser = parse_seconds)]
    duration: Option<u64>,
    /// Unmeasured seconds of load before each measured run; default 2, or 1 with --quick.
    #[arg(long, value_parser = parse_seconds)]
    warmup: Option<u64>,
    /// Comma-separated subset: registration, call-url, call-info, place-call, list-calls.
    #[arg(long, value_delimiter = ',')]
    routes: Vec<String>,
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
    #[arg(long, default_value = "scripts/bench overhead")]
    command_line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Without,
    With,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Without => "without",
            Side::With => "with",
        }
    }
}

/// The order of pair `index` (from 0): without first in even pairs.
fn order(index: usize) -> [Side; 2] {
    if index.is_multiple_of(2) {
        [Side::Without, Side::With]
    } else {
        [Side::With, Side::Without]
    }
}

struct Plan {
    settings: LoadSettings,
    duration_s: u64,
    warmup_s: u64,
    pairs: usize,
    routes: Vec<Route>,
    plugin: PathBuf,
    baseline_bin: PathBuf,
}

struct Measured {
    wrk: WrkResult,
    /// Scrapes answered during the measured run; None when not scraped.
    scrapes: Option<u64>,
}

struct Pair {
    with_first: bool,
    without: Measured,
    with: Measured,
}

impl Pair {
    fn ratio(&self) -> f64 {
        self.with.wrk.requests_per_second() / self.without.wrk.requests_per_second()
    }

    fn failures(&self) -> Vec<String> {
        [&self.without, &self.with]
            .into_iter()
            .zip([Side::Without, Side::With])
            .filter_map(|(m, side)| m.wrk.failure().map(|why| format!("{}: {why}", side.name())))
            .collect()
    }
}

struct RouteResult {
    route: Route,
    pairs: Vec<Pair>,
}

impl RouteResult {
    fn figure(&self, side: Side, f: impl Fn(&WrkResult) -> f64) -> f64 {
        median(
            self.pairs
                .iter()
                .map(|pair| match side {
                    Side::Without => f(&pair.without.wrk),
                    Side::With => f(&pair.with.wrk),
                })
                .collect(),
        )
    }

    fn ratio(&self) -> f64 {
        median(self.pairs.iter().map(Pair::ratio).collect())
    }

    fn failed(&self) -> bool {
        self.pairs.iter().any(|pair| !pair.failures().is_empty())
    }
}

/// Runs the comparison; false when some run had errors (the report is still written).
pub async fn run(args: OverheadArgs) -> anyhow::Result<bool> {
    let duration_s = args.duration.unwrap_or(if args.quick { 3 } else { 10 });
    let warmup_s = args.warmup.unwrap_or(if args.quick { 1 } else { 2 });
    let pairs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
    anyhow::ensure!(pairs >= 1, "--runs: at least 1");
    anyhow::ensure!(
        (1..=MAX_DURATION_S).contains(&duration_s),
        "--duration: must be 1 to {MAX_DURATION_S} s (Hawk timestamps are valid for 60 s after signing)"
    );
    anyhow::ensure!(
        warmup_s <= MAX_DURATION_S,
        "--warmup: at most {MAX_DURATION_S} s"
    );
    args.load.check()?;
    args.signing.check()?;
    for (path, flag) in [
        (&args.server.server_bin, "--server-bin"),
        (&args.baseline_bin, "--baseline-bin"),
        (&args.plugin, "--plugin"),
        (&args.lua, "--lua"),
    ] {
        anyhow::ensure!(path.is_file(), "{flag}: {} does not exist", path.display());
    }
    let plan = Plan {
        settings: args
            .load
            .settings(&args.lua, args.signing.max_signed_rate)?,
        duration_s,
        warmup_s,
        pairs,
        routes: Route::parse_list(&args.routes)?,
        plugin: absolute(&args.plugin)?,
        baseline_bin: absolute(&args.baseline_bin)?,
    };
    std::fs::create_dir_all(&args.server.work_dir)?;
    let sink = PushSink::start().await.context("starting the push sink")?;

    let mut results = Vec::new();
    for &route in &plan.routes {
        let mut pairs = Vec::new();
        for index in 0..plan.pairs {
            let [first, second] = order(index);
            let a = measure(&args, &plan, &sink, route, index, first).await?;
            let b = measure(&args, &plan, &sink, route, index, second).await?;
            let (without, with) = if first == Side::Without {
                (a, b)
            } else {
                (b, a)
            };
            let pair = Pair {
                with_first: first == Side::With,
                without,
                with,
            };
            eprintln!(
                "[{}] pair {}/{}: with ÷ without = {:.3}",
                route.key(),
                index + 1,
                plan.pairs,
                pair.ratio()
            );
            pairs.push(pair);
        }
        results.push(RouteResult { route, pairs });
    }

    let markdown = markdown(&results, &args, &plan);
    println!("\n{markdown}");
    if let Some(path) = &args.out.report {
        if args.quick || args.no_features {
            eprintln!(
                "{}: {} is left as it is",
                if args.quick {
                    "--quick"
                } else {
                    "--no-features"
                },
                path.display()
            );
        } else {
            update_section(path, &OVERHEAD_SECTION, &markdown)?;
            println!("results written to {}", path.display());
        }
    }
    Ok(!results.iter().any(RouteResult::failed))
}

/// Where `--report` puts the results.
const OVERHEAD_SECTION: Section = Section {
    heading: "## Cost of metrics, request ids and rate limits",
    start: "<!-- loop-bench:overhead:start (generated by `scripts/bench overhead`; edits here are overwritten) -->",
    end: "<!-- loop-bench:overhead:end -->",
};

/// One run of `route` on a fresh server of `side`: fixtures, a warm-up, then
/// the measured run (scraped, for "with").
async fn measure(
    args: &OverheadArgs,
    plan: &Plan,
    sink: &PushSink,
    route: Route,
    index: usize,
    side: Side,
) -> anyhow::Result<Measured> {
    let measured = measure_on_fresh_server(args, plan, sink, route, index, side)
        .await
        .with_context(|| format!("{}, pair {}, {}", route.label(), index + 1, side.name()))?;
    log_run(route, index, plan.pairs, side, &measured);
    Ok(measured)
}

async fn measure_on_fresh_server(
    args: &OverheadArgs,
    plan: &Plan,
    sink: &PushSink,
    route: Route,
    index: usize,
    side: Side,
) -> anyhow::Result<Measured> {
    let dir = absolute(&args.server.work_dir.join(format!(
        "{}-{}-{}",
        route.key(),
        index + 1,
        side.name()
    )))?;
    std::fs::create_dir_all(&dir)?;
    let database = Database::create(Backend::Sqlite, &dir, &args.server.work_dir, "").await?;
    let config = write_config(&ConfigInputs {
        dir: &dir,
        database_url: database.url(),
        plugin: &plan.plugin,
        push_origin: &sink.origin,
        extra_toml: "",
        rate_limits: side == Side::With && !args.no_features,
    })?;
    let features = side == Side::With && !args.no_features;
    let env = server_env(features);
    let bin = match side {
        Side::Without => &plan.baseline_bin,
        Side::With => &args.server.server_bin,
    };
    let mut server = args.server.start_binary(bin, &config, &dir, &env).await?;
    let measured = drive(&mut server, plan, sink, route, &dir, features).await;
    let stopped = server.stop().await;
    let measured =
        measured.with_context(|| format!("server log: {}", dir.join("server.log").display()))?;
    stopped?;
    database.drop_database().await?;
    Ok(measured)
}

async fn drive(
    server: &mut ServerProcess,
    plan: &Plan,
    sink: &PushSink,
    route: Route,
    dir: &Path,
    scraped: bool,
) -> anyhow::Result<Measured> {
    let metrics_url = if scraped {
        Some(
            server
                .stdout_line(METRICS_LINE, METRICS_LINE_TIMEOUT)
                .await?,
        )
    } else {
        None
    };
    let api = Api::new(&server.url, server.port)?;
    let fixtures = fixtures::prepare(&api, sink)
        .await
        .context("creating the fixtures through the API")?;
    let registration_body = Api::registration_body(&sink.url("bench"));
    if plan.warmup_s > 0 {
        let load = route_load(route, &api, &fixtures, &registration_body)?;
        let warm = wrk::run(
            &plan.settings,
            &server.url,
            server.pid,
            &load,
            plan.warmup_s,
            dir,
            &dir.join("wrk-warmup.txt"),
        )
        .await?;
        if let Some(why) = warm.failure() {
            eprintln!("[{}] warning: warm-up: {why}", route.key());
        }
        server.ensure_running()?;
    }
    let load = route_load(route, &api, &fixtures, &registration_body)?;
    let scraper = metrics_url.map(Scraper::start);
    let result = wrk::run(
        &plan.settings,
        &server.url,
        server.pid,
        &load,
        plan.duration_s,
        dir,
        &dir.join("wrk.txt"),
    )
    .await;
    let scrapes = match scraper {
        Some(scraper) => Some(scraper.stop().await?),
        None => None,
    };
    let wrk = result?;
    server.ensure_running()?;
    Ok(Measured { wrk, scrapes })
}

/// GETs the metrics endpoint once a second, as a Prometheus server would,
/// until stopped.
struct Scraper {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<u64>>,
}

impl Scraper {
    fn start(url: String) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?;
            let mut every = tokio::time::interval(SCRAPE_INTERVAL);
            let mut scrapes = 0;
            loop {
                tokio::select! {
                    _ = &mut stopped => return Ok(scrapes),
                    _ = every.tick() => {
                        scrape(&http, &url).await?;
                        scrapes += 1;
                    }
                }
            }
        });
        Self { stop, task }
    }

    /// The scrapes answered; an error if any failed.
    async fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(());
        self.task.await.context("the metrics scraper")?
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("scraping {url}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("scraping {url}"))?;
    anyhow::ensure!(status.is_success(), "scraping {url}: {status}");
    anyhow::ensure!(
        body.contains(REQUEST_METRIC),
        "scraping {url}: no {REQUEST_METRIC} in the {} bytes answered",
        body.len()
    );
    Ok(())
}

fn log_run(route: Route, index: usize, pairs: usize, side: Side, m: &Measured) {
    eprintln!(
        "[{}] pair {}/{} {:<7}: {:>9} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  server CPU {:>5.0} µs/req{}{}",
        route.key(),
        index + 1,
        pairs,
        side.name(),
        thousands(m.wrk.requests_per_second()),
        m.wrk.p50_us / 1000.0,
        m.wrk.p99_us / 1000.0,
        m.wrk.server_cpu_us_per_request(),
        m.scrapes
            .map(|n| format!("  {n} scrapes"))
            .unwrap_or_default(),
        m.wrk
            .failure()
            .map(|why| format!("  FAILED: {why}"))
            .unwrap_or_default()
    );
}

fn markdown(results: &[RouteResult], args: &OverheadArgs, plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{}", args.out.command_line(&args.command_line));
    let _ = writeln!(out, "Machine: {}.", crate::run::machine());
    let baseline = if args.baseline_commit.is_empty() {
        format!("`{}`", args.baseline_bin.display())
    } else {
        format!("commit `{}`", args.baseline_commit)
    };
    let _ = writeln!(
        out,
        "Load: `wrk -t{} -c{} -d{}s --timeout {}s --latency` with bench/wrk/loop.lua; per route {} pair(s) of runs, \
         the order alternating (without first in odd pairs), each run on a fresh server, SQLite database and fixtures \
         after {} unmeasured warm-up second(s). Without: the release server built from {baseline}. With: the release \
         server built from this run's commit, with {}.",
        plan.settings.threads,
        plan.settings.connections,
        plan.duration_s,
        plan.settings.timeout_s,
        plan.pairs,
        plan.warmup_s,
        if args.no_features {
            "**no feature environment and no scraping (`--no-features`, a check of the harness)**"
                .to_string()
        } else {
            format!(
                "{} and its metrics endpoint scraped once a second during each measured run",
                FEATURE_ENV
                    .iter()
                    .map(|(name, value)| format!("`{name}={value}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if args.quick {
        let _ = writeln!(
            out,
            "**Quick mode (smoke test): figures are not comparable with the target.**"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| route | req/s without | req/s with | with ÷ without (median of pairs) | target ≥ {TARGET_RATIO:.2} | p99 without | p99 with | server CPU/req without | with |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for result in results {
        let ratio = result.ratio();
        let verdict = if result.failed() {
            "FAILED"
        } else if ratio >= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        };
        let p99 = |side| ms(result.figure(side, |w| w.p99_us / 1000.0));
        let cpu = |side| {
            format!(
                "{:.0} µs",
                result.figure(side, WrkResult::server_cpu_us_per_request)
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio:.3} | {verdict} | {} | {} | {} | {} |",
            result.route.label(),
            thousands(result.figure(Side::Without, WrkResult::requests_per_second)),
            thousands(result.figure(Side::With, WrkResult::requests_per_second)),
            p99(Side::Without),
            p99(Side::With),
            cpu(Side::Without),
            cpu(Side::With),
        );
    }
    let _ = writeln!(out, "\n### Every pair\n");
    let _ = writeln!(
        out,
        "| route | pair | order | req/s without | req/s with | ratio | p99 without | p99 with | scrapes |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for result in results {
        for (i, pair) in result.pairs.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.3} | {} | {} | {} |",
                result.route.label(),
                i + 1,
                if pair.with_first {
                    "with, without"
                } else {
                    "without, with"
                },
                thousands(pair.without.wrk.requests_per_second()),
                thousands(pair.with.wrk.requests_per_second()),
                pair.ratio(),
                ms(pair.without.wrk.p99_us / 1000.0),
                ms(pair.with.wrk.p99_us / 1000.0),
                pair.with
                    .scrapes
                    .map_or_else(|| "-".to_string(), |n| n.to_string())
            );
        }
    }
    for result in results {
        for (i, pair) in result.pairs.iter().enumerate() {
            for failure in pair.failures() {
                let _ = writeln!(
                    out,
                    "- **{}, pair {} failed**: {failure}",
                    result.route.label(),
                    i + 1
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_alternate_their_order() {
        assert_eq!(order(0), [Side::Without, Side::With]);
        assert_eq!(order(1), [Side::With, Side::Without]);
        assert_eq!(order(2), [Side::Without, Side::With]);
    }

    #[test]
    fn only_the_with_server_gets_the_feature_environment() {
        let with = server_env(true);
        assert!(with.contains(&("LOOP_SERVER__METRICS_LISTEN", Some("127.0.0.1:0"))));
        assert!(with.iter().all(|(_, value)| value.is_some()));
        // The baseline would refuse `server.metrics_listen`: each name is
        // removed from what it inherits, even if the harness's caller set it.
        let without = server_env(false);
        assert_eq!(without.len(), FEATURE_ENV.len());
        assert!(without.iter().all(|(_, value)| value.is_none()));
    }
}
