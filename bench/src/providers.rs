//! `loop-bench providers`: `POST /calls/{token}` with each provider plugin
//! as `[providers] default`, one release `loop-server` on SQLite per
//! configuration, and how much of the server's time the plugin took.
//!
//! Every configuration gets its server (the generated config of `run`, plus
//! `[providers] default` and the plugin's `[plugins.<name>]` table: what an
//! operator changes in `config.toml` to switch providers) and its fixtures
//! (a registered callee and its call URL, the whole flow checked once). All
//! servers are started first and stay up; the measured runs then go round
//! the configurations in turn, `--runs` times, so that every ratio against
//! loopback compares runs made minutes apart on the same machine.
//!
//! Each measured run is the `place-call` route of `loop-bench run` (same wrk
//! script and body): wrk's req/s and latency, the server's CPU time from
//! `/proc`, and the plugin's counters from `GET /__heartbeat__`
//! (`plugins.<name>.calls`, `cpu_ms` and `busy_ms`, read just before and
//! just after the run). `cpu_ms` is the CPU time of the plugin's calls
//! (instantiation, `create-session`, two `issue-token`s and the host
//! functions they call, RS256 signing included), measured by the server
//! with the thread CPU clock around each poll of the plugin's work; the
//! plugin's share is Δcpu ÷ the server's CPU time over the run. `busy_ms`
//! is their wall time, which under load also counts waiting for a core.
//!
//! The `empty` test plugin (no settings, no host calls, fixed answers) is
//! measured like the others: its CPU per call is the sandbox's own cost, so
//! the report also gives each plugin's share beyond it.
//!
//! A configuration whose `plugins/<name>/<name>.wasm` is missing is
//! reported as skipped; one whose server or fixtures fail is reported as
//! failed (the others still run, and the exit status is 2).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::args::{LoadArgs, ReportArgs, ServerArgs, absolute, parse_seconds};
use crate::fixtures::{self, Api, Fixtures};
use crate::report::{Route, median, ms, thousands};
use crate::server::{Backend, ConfigInputs, Database, ServerProcess, write_config};
use crate::sink::PushSink;
use crate::wrk::{self, LoadSettings, WrkResult};

/// Issue 9's target: the plugin's time under this share of the request's
/// server time, for the providers that sign with a shared secret.
pub const TARGET_PLUGIN_SHARE: f64 = 0.10;

#[derive(clap::Args)]
pub struct ProvidersArgs {
    /// Smoke test: 3 s runs, 1 s warm-up; no report is written.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    load: LoadArgs,
    /// Measured runs of each configuration, taken in turns (medians reported).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds per measured run (`10` or `10s`); default 10, or 3 with --quick.
    #[arg(short = 'd', long, value_parser = parse_seconds)]
    duration: Option<u64>,
    /// Unmeasured seconds of load before each measured run; default 2, or 1 with --quick.
    #[arg(long, value_parser = parse_seconds)]
    warmup: Option<u64>,
    /// Comma-separated subset of the configurations (default: all):
    /// loopback, livekit, twilio, jitsi, opentok, opentok-jwt, vonage, jitsi-jaas, empty.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// The folder holding `<name>/<name>.wasm` for each plugin.
    #[arg(long)]
    plugins_dir: PathBuf,
    /// A PKCS#8 PEM RSA key for the RS256 providers (tests/fixtures/test-rsa-2048.pem).
    #[arg(long)]
    rsa_key: PathBuf,
    /// bench/wrk/loop.lua.
    #[arg(long)]
    lua: PathBuf,
    #[command(flatten)]
    out: ReportArgs,
    /// For the report: the command that was run.
    #[arg(long, default_value = "scripts/bench providers")]
    command_line: String,
}

/// How a configuration's tokens are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Loopback: HMAC-SHA256 tokens of its own, the baseline.
    Baseline,
    /// A shared secret (HS256 JWTs, or OpenTok's HMAC-SHA1 T1 tokens): the
    /// 10% target applies.
    SharedSecret,
    /// RS256 through the host's `crypto.sign`.
    Rs256,
    /// No signing at all: the `empty` test plugin, whose calls cost what the
    /// sandbox costs (a fresh instance, three export calls, teardown).
    Sandbox,
}

/// One provider configuration.
pub struct Case {
    /// Its name in `--only` and in the report.
    pub key: &'static str,
    /// The plugin: `[plugins.<plugin>]`, `<plugins_dir>/<plugin>/<plugin>.wasm`
    /// (`tests/plugins/<plugin>/<plugin>.wasm` beside `plugins_dir` for a test plugin).
    pub plugin: &'static str,
    pub test_plugin: bool,
    pub signing: Signing,
    /// What one `POST /calls/{token}` makes the plugin do.
    pub work: &'static str,
}

pub const CASES: [Case; 9] = [
    Case {
        key: "loopback",
        test_plugin: false,
        plugin: "loopback",
        signing: Signing::Baseline,
        work: "the bundled test provider: an HMAC-SHA256 token per side, no HTTP",
    },
    Case {
        key: "livekit",
        test_plugin: false,
        plugin: "livekit",
        signing: Signing::SharedSecret,
        work: "`create_room = false`: two HS256 access tokens, no HTTP",
    },
    Case {
        key: "twilio",
        test_plugin: false,
        plugin: "twilio",
        signing: Signing::SharedSecret,
        work: "`create_room = false`: two HS256 access tokens, no HTTP",
    },
    Case {
        key: "jitsi",
        test_plugin: false,
        plugin: "jitsi",
        signing: Signing::SharedSecret,
        work: "self-hosted (`app_secret`): two HS256 tokens, no HTTP",
    },
    Case {
        key: "opentok",
        test_plugin: false,
        plugin: "opentok",
        signing: Signing::SharedSecret,
        work: "`media_mode = \"relayed\"`, a pre-created `session_id`, T1 tokens (HMAC-SHA1): two tokens, no HTTP",
    },
    Case {
        key: "opentok-jwt",
        test_plugin: false,
        plugin: "opentok",
        signing: Signing::SharedSecret,
        work: "as `opentok` with `token_format = \"jwt\"`: two HS256 tokens, no HTTP",
    },
    Case {
        key: "vonage",
        test_plugin: false,
        plugin: "vonage",
        signing: Signing::Rs256,
        work: "session created on a local fake Vonage API (RS256 application JWT, one HTTP request), two RS256 tokens",
    },
    Case {
        key: "jitsi-jaas",
        test_plugin: false,
        plugin: "jitsi",
        signing: Signing::Rs256,
        work: "Jitsi as a Service (`kid` + `private_key`): two RS256 tokens, no HTTP",
    },
    Case {
        key: "empty",
        test_plugin: true,
        plugin: "empty",
        signing: Signing::Sandbox,
        work: "the `empty` test plugin: a fixed session and fixed tokens, no settings, no host calls; what the sandbox \
               alone costs per call",
    },
];

impl Case {
    fn find(key: &str) -> anyhow::Result<&'static Case> {
        CASES.iter().find(|case| case.key == key).ok_or_else(|| {
            let keys: Vec<_> = CASES.iter().map(|case| case.key).collect();
            anyhow::anyhow!(
                "--only: unknown configuration {key:?}; they are {}",
                keys.join(", ")
            )
        })
    }

    fn component(&self, plugins_dir: &Path) -> PathBuf {
        let dir = if self.test_plugin {
            plugins_dir
                .parent()
                .unwrap_or(plugins_dir)
                .join("tests/plugins")
        } else {
            plugins_dir.to_path_buf()
        };
        dir.join(self.plugin).join(format!("{}.wasm", self.plugin))
    }

    fn signing_label(&self) -> &'static str {
        match self.signing {
            Signing::Baseline => "HMAC-SHA256 (baseline)",
            Signing::SharedSecret if self.key == "opentok" => "HMAC-SHA1 (T1)",
            Signing::SharedSecret => "HS256",
            Signing::Rs256 => "RS256",
            Signing::Sandbox => "none (the sandbox alone)",
        }
    }

    /// The plugin's `settings` table, and whether it talks to the fake
    /// Vonage API. The secrets are made up for the run.
    fn settings(&self, inputs: &SettingsInputs<'_>) -> (toml::Table, bool) {
        let secret = inputs.secret;
        let mut settings = toml::Table::new();
        let mut set = |key: &str, value: toml::Value| {
            settings.insert(key.to_string(), value);
        };
        let text = |value: &str| toml::Value::String(value.to_string());
        let mut uses_fake = false;
        match self.key {
            "livekit" => {
                set("url", text("wss://livekit.bench.invalid"));
                set("api_key", text("APIloopbench"));
                set("api_secret", text(secret));
                set("create_room", toml::Value::Boolean(false));
            }
            "twilio" => {
                set("account_sid", text(&format!("AC{}", &inputs.ids[..32])));
                set("api_key_sid", text(&format!("SK{}", &inputs.ids[32..])));
                set("api_key_secret", text(&secret[..32]));
                set("create_room", toml::Value::Boolean(false));
            }
            "jitsi" => {
                set("base_url", text("https://meet.bench.invalid"));
                set("app_id", text("loop-bench"));
                set("app_secret", text(secret));
            }
            "opentok" | "opentok-jwt" => {
                set("api_key", text("46000001"));
                set("api_secret", text(&secret[..40]));
                set("media_mode", text("relayed"));
                set("session_id", text("1_MX40NjAwMDAwMX5-bG9vcC1iZW5jaH4"));
                if self.key == "opentok-jwt" {
                    set("token_format", text("jwt"));
                }
            }
            "vonage" => {
                set(
                    "application_id",
                    text("0b5c5f6e-1d2c-4b7a-9e3f-6a1b2c3d4e5f"),
                );
                set("private_key", text(inputs.rsa_pem));
                set("api_url", text(inputs.fake_vonage));
                set("media_mode", text("relayed"));
                uses_fake = true;
            }
            "jitsi-jaas" => {
                let app_id = "vpaas-magic-cookie-0123456789abcdef0123456789abcdef";
                set("base_url", text(&format!("https://8x8.vc/{app_id}")));
                set("app_id", text(app_id));
                set("kid", text(&format!("{app_id}/bench01")));
                set("private_key", text(inputs.rsa_pem));
            }
            _ => {}
        }
        (settings, uses_fake)
    }

    /// What goes into `config.toml` besides the bench's usual config:
    /// `[providers] default` and, for a vendor, its `[plugins.<name>]` table.
    fn config_toml(&self, component: &Path, inputs: &SettingsInputs<'_>) -> anyhow::Result<String> {
        let mut providers = toml::Table::new();
        providers.insert("default".into(), self.plugin.into());
        let mut root = toml::Table::new();
        root.insert("providers".into(), toml::Value::Table(providers));
        if self.plugin != "loopback" {
            let (settings, uses_fake) = self.settings(inputs);
            let mut plugin = toml::Table::new();
            plugin.insert("component".into(), component.display().to_string().into());
            if uses_fake {
                plugin.insert(
                    "allowed_hosts".into(),
                    toml::Value::Array(vec![inputs.fake_vonage.into()]),
                );
                plugin.insert("allow_private".into(), true.into());
            }
            plugin.insert("settings".into(), toml::Value::Table(settings));
            let mut plugins = toml::Table::new();
            plugins.insert(self.plugin.into(), toml::Value::Table(plugin));
            root.insert("plugins".into(), toml::Value::Table(plugins));
        }
        toml::to_string(&root).context("writing the provider's config")
    }
}

struct SettingsInputs<'a> {
    /// 64 random hex digits, made for this run.
    secret: &'a str,
    /// 64 other random hex digits, for identifiers (Twilio's SIDs).
    ids: &'a str,
    rsa_pem: &'a str,
    /// `http://127.0.0.1:PORT`
    fake_vonage: &'a str,
}

/// A stand-in for the Vonage Video API on 127.0.0.1: `POST /session/create`
/// answers a new session id, as Vonage does. It checks nothing (the vendor
/// tests check the application JWT); it counts the sessions it made.
struct FakeVonage {
    origin: String,
    created: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeVonage {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let created = Arc::new(AtomicU64::new(0));
        let router = Router::new()
            .route("/session/create", post(create_session))
            .with_state(created.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                eprintln!("loop-bench: fake Vonage API stopped: {err}");
            }
        });
        Ok(Self {
            origin,
            created,
            task,
        })
    }

    fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }
}

impl Drop for FakeVonage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn create_session(State(created): State<Arc<AtomicU64>>) -> Json<Value> {
    let n = created.fetch_add(1, Ordering::Relaxed);
    Json(json!([{
        "session_id": format!("2_MX4wYjVjNWY2ZX5-bG9vcC1iZW5jaH4-{n}"),
        "application_id": "0b5c5f6e-1d2c-4b7a-9e3f-6a1b2c3d4e5f",
        "create_dt": "Sun Nov 29 22:00:00 PST 2026",
        "media_server_url": ""
    }]))
}

/// A plugin's counters in `GET /__heartbeat__`.
#[derive(Debug, Clone, Copy, Deserialize)]
struct PluginCounters {
    calls: u64,
    busy_ms: u64,
    cpu_ms: u64,
}

#[derive(Deserialize)]
struct Heartbeat {
    #[serde(default)]
    plugins: BTreeMap<String, Value>,
}

async fn plugin_counters(
    http: &reqwest::Client,
    server: &str,
    plugin: &str,
) -> anyhow::Result<PluginCounters> {
    // 503 (a plugin cooling down, say) still carries the report.
    let text = http
        .get(format!("{}/__heartbeat__", server.trim_end_matches('/')))
        .send()
        .await
        .context("GET /__heartbeat__")?
        .text()
        .await?;
    let heartbeat: Heartbeat = serde_json::from_str(&text)
        .with_context(|| format!("GET /__heartbeat__ answered non-JSON: {text}"))?;
    let entry = heartbeat.plugins.get(plugin).with_context(|| {
        format!("GET /__heartbeat__ has no plugins.{plugin} (a host without per-plugin counters?): {text}")
    })?;
    serde_json::from_value(entry.clone()).with_context(|| {
        format!("GET /__heartbeat__: plugins.{plugin} has no calls/busy_ms/cpu_ms: {entry}")
    })
}

/// One measured run of one configuration.
pub struct Measured {
    pub wrk: WrkResult,
    /// Δ`calls` of the plugin over the run (one per placed call).
    pub plugin_calls: u64,
    /// Δ`busy_ms` of the plugin over the run: wall time.
    pub busy_ms: u64,
    /// Δ`cpu_ms` of the plugin over the run.
    pub cpu_ms: u64,
    /// Sessions the fake Vonage API created during the run.
    pub sessions_created: Option<u64>,
}

impl Measured {
    /// Plugin CPU time per plugin call, in microseconds.
    pub fn plugin_us_per_call(&self) -> f64 {
        self.cpu_ms as f64 * 1000.0 / self.plugin_calls.max(1) as f64
    }

    /// Plugin wall time per plugin call, in microseconds.
    pub fn plugin_wall_us_per_call(&self) -> f64 {
        self.busy_ms as f64 * 1000.0 / self.plugin_calls.max(1) as f64
    }

    /// Δcpu ÷ the server's CPU time over the run.
    pub fn plugin_share(&self) -> f64 {
        if self.wrk.cpu.server_s <= 0.0 {
            return f64::NAN;
        }
        self.cpu_ms as f64 / 1000.0 / self.wrk.cpu.server_s
    }
}

pub enum Outcome {
    Skipped(String),
    Failed(String),
    Measured(Vec<Measured>),
}

pub struct CaseResult {
    pub case: &'static Case,
    pub outcome: Outcome,
    /// Errors of measured runs, if any had some.
    pub failures: Vec<String>,
}

/// Medians of a configuration's measured runs.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub server_cpu_us: f64,
    pub plugin_us: f64,
    pub share: f64,
    pub other_cores: f64,
}

impl Figures {
    fn of(runs: &[Measured]) -> Self {
        let m = |f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        Self {
            rps: m(&|r: &Measured| r.wrk.requests_per_second()),
            p50_ms: m(&|r: &Measured| r.wrk.p50_us / 1000.0),
            p99_ms: m(&|r: &Measured| r.wrk.p99_us / 1000.0),
            server_cpu_us: m(&|r: &Measured| r.wrk.server_cpu_us_per_request()),
            plugin_us: m(&Measured::plugin_us_per_call),
            share: m(&Measured::plugin_share),
            other_cores: m(&|r: &Measured| r.wrk.other_cores()),
        }
    }
}

impl CaseResult {
    fn runs(&self) -> Option<&[Measured]> {
        match &self.outcome {
            Outcome::Measured(runs) if !runs.is_empty() => Some(runs),
            _ => None,
        }
    }

    pub fn figures(&self) -> Option<Figures> {
        self.runs().map(Figures::of)
    }

    fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_)) || !self.failures.is_empty()
    }
}

/// A configuration whose server is up, between its measured runs.
struct Live {
    case: &'static Case,
    server: ServerProcess,
    api: Api,
    fixtures: Fixtures,
    dir: PathBuf,
    runs: Vec<Measured>,
    failures: Vec<String>,
}

struct Plan {
    settings: LoadSettings,
    duration_s: u64,
    warmup_s: u64,
    runs: usize,
}

/// Returns whether every configuration that was not skipped ran cleanly.
pub async fn run(args: ProvidersArgs) -> anyhow::Result<bool> {
    let duration_s = args.duration.unwrap_or(if args.quick { 3 } else { 10 });
    let warmup_s = args.warmup.unwrap_or(if args.quick { 1 } else { 2 });
    anyhow::ensure!((1..=120).contains(&duration_s), "--duration: 1 to 120 s");
    anyhow::ensure!(warmup_s <= 60, "--warmup: at most 60 s");
    args.load.check()?;
    anyhow::ensure!(args.runs >= 1, "--runs: at least 1");
    for (path, flag) in [
        (&args.server.server_bin, "--server-bin"),
        (&args.rsa_key, "--rsa-key"),
        (&args.lua, "--lua"),
    ] {
        anyhow::ensure!(path.is_file(), "{flag}: {} does not exist", path.display());
    }
    anyhow::ensure!(
        args.plugins_dir.is_dir(),
        "--plugins-dir: {} is not a folder",
        args.plugins_dir.display()
    );
    let cases: Vec<&'static Case> = if args.only.is_empty() {
        CASES.iter().collect()
    } else {
        args.only
            .iter()
            .map(|key| Case::find(key.trim()))
            .collect::<anyhow::Result<_>>()?
    };
    let plan = Plan {
        // No Hawk route here: nothing is pre-signed.
        settings: args.load.settings(&args.lua, 1)?,
        duration_s,
        warmup_s,
        runs: args.runs,
    };
    std::fs::create_dir_all(&args.server.work_dir)?;
    let plugins_dir = absolute(&args.plugins_dir)?;
    let loopback = CASES[0].component(&plugins_dir);
    anyhow::ensure!(
        loopback.is_file(),
        "{} is missing: every config loads the loopback plugin",
        loopback.display()
    );
    let rsa_pem = std::fs::read_to_string(&args.rsa_key)
        .with_context(|| format!("reading {}", args.rsa_key.display()))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let ids = hex::encode(rand::random::<[u8; 32]>());
    let sink = PushSink::start().await.context("starting the push sink")?;
    let fake = FakeVonage::start()
        .await
        .context("starting the fake Vonage API")?;
    let inputs = SettingsInputs {
        secret: &secret,
        ids: &ids,
        rsa_pem: &rsa_pem,
        fake_vonage: &fake.origin,
    };

    // Every server first, so the measured runs can take turns.
    let mut results: Vec<CaseResult> = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    for case in cases {
        let component = case.component(&plugins_dir);
        if !component.is_file() {
            let why = format!(
                "skipped ({} missing)",
                component
                    .strip_prefix(plugins_dir.parent().unwrap_or(&plugins_dir))
                    .unwrap_or(&component)
                    .display()
            );
            eprintln!("[{}] {why}", case.key);
            results.push(CaseResult {
                case,
                outcome: Outcome::Skipped(why),
                failures: Vec::new(),
            });
            continue;
        }
        match start(case, &component, &inputs, &loopback, &sink, &args).await {
            Ok(up) => live.push(up),
            Err(err) => {
                eprintln!("[{}] FAILED: {err:#}", case.key);
                results.push(CaseResult {
                    case,
                    outcome: Outcome::Failed(format!("{err:#}")),
                    failures: Vec::new(),
                });
            }
        }
    }

    for round in 0..plan.runs {
        for up in live.iter_mut() {
            match measure(up, &plan, &fake, round).await {
                Ok(measured) => {
                    log_run(up.case, &measured, round, plan.runs);
                    if let Some(why) = measured.wrk.failure() {
                        up.failures.push(format!("run {}: {why}", round + 1));
                    }
                    if let Some(created) = measured.sessions_created
                        && created < measured.plugin_calls
                    {
                        up.failures.push(format!(
                            "run {}: the fake Vonage API made {created} sessions for {} calls",
                            round + 1,
                            measured.plugin_calls
                        ));
                    }
                    up.runs.push(measured);
                }
                Err(err) => {
                    let why = format!(
                        "run {}: {err:#} (server log: {})",
                        round + 1,
                        up.dir.join("server.log").display()
                    );
                    eprintln!("[{}] FAILED: {why}", up.case.key);
                    up.failures.push(why);
                }
            }
        }
    }

    for up in live {
        let stopped = up.server.stop().await;
        let mut failures = up.failures;
        if let Err(err) = stopped {
            failures.push(format!("{err:#}"));
        }
        results.push(CaseResult {
            case: up.case,
            outcome: Outcome::Measured(up.runs),
            failures,
        });
    }
    // The configurations' order, whatever happened to each.
    results.sort_by_key(|result| {
        CASES
            .iter()
            .position(|case| case.key == result.case.key)
            .unwrap_or(usize::MAX)
    });

    let markdown = markdown(&results, &plan, &args);
    println!("\n{markdown}");
    if let Some(path) = &args.out.report {
        if args.quick {
            eprintln!("--quick: {} is left as it is", path.display());
        } else {
            crate::run::update_section(path, &PROVIDERS_SECTION, &markdown)?;
            println!("results written to {}", path.display());
        }
    }
    Ok(!results.iter().any(CaseResult::failed))
}

/// Where `--report` puts the results.
const PROVIDERS_SECTION: crate::run::Section = crate::run::Section {
    heading: "## Provider plugins: POST /calls/{token} per provider",
    start: "<!-- loop-bench:providers:start (generated by `scripts/bench providers`; edits here are overwritten) -->",
    end: "<!-- loop-bench:providers:end -->",
};

/// Starts the configuration's server and makes its fixtures.
async fn start(
    case: &'static Case,
    component: &Path,
    inputs: &SettingsInputs<'_>,
    loopback: &Path,
    sink: &PushSink,
    args: &ProvidersArgs,
) -> anyhow::Result<Live> {
    let dir = absolute(&args.server.work_dir.join(format!("provider-{}", case.key)))?;
    std::fs::create_dir_all(&dir)?;
    let database = Database::create(Backend::Sqlite, &dir, &args.server.work_dir, "").await?;
    let extra_toml = case.config_toml(component, inputs)?;
    let config = write_config(&ConfigInputs {
        dir: &dir,
        database_url: database.url(),
        plugin: loopback,
        push_origin: &sink.origin,
        extra_toml: &format!("\n{extra_toml}"),
        rate_limits: true,
    })?;
    let server = args.server.start(&config, &dir).await?;
    eprintln!(
        "[{}] loop-server (pid {}) at {}, provider {}",
        case.key, server.pid, server.url, case.plugin
    );
    let prepared = async {
        let api = Api::new(&server.url, server.port)?;
        let fixtures = fixtures::prepare(&api, sink)
            .await
            .context("creating the fixtures through the API")?;
        // The counters exist before any load is put on it.
        plugin_counters(&reqwest::Client::new(), &server.url, case.plugin).await?;
        Ok::<_, anyhow::Error>((api, fixtures))
    }
    .await;
    match prepared {
        Ok((api, fixtures)) => Ok(Live {
            case,
            server,
            api,
            fixtures,
            dir,
            runs: Vec::new(),
            failures: Vec::new(),
        }),
        Err(err) => {
            let _ = server.stop().await;
            Err(err.context(format!("server log: {}", dir.join("server.log").display())))
        }
    }
}

/// A warm-up, then one measured run with the plugin's counters read around it.
async fn measure(
    up: &mut Live,
    plan: &Plan,
    fake: &FakeVonage,
    round: usize,
) -> anyhow::Result<Measured> {
    let load = crate::run::route_load(Route::PlaceCall, &up.api, &up.fixtures, "")?;
    let logs = up.dir.join("wrk");
    std::fs::create_dir_all(&logs)?;
    if plan.warmup_s > 0 {
        let warm = wrk::run(
            &plan.settings,
            &up.server.url,
            up.server.pid,
            &load,
            plan.warmup_s,
            &up.dir,
            &logs.join(format!("warmup-{}.txt", round + 1)),
        )
        .await?;
        if let Some(why) = warm.failure() {
            eprintln!("[{}] warning: warm-up: {why}", up.case.key);
        }
        up.server.ensure_running()?;
    }
    let http = reqwest::Client::new();
    let created_before = fake.created();
    let before = plugin_counters(&http, &up.server.url, up.case.plugin).await?;
    let result = wrk::run(
        &plan.settings,
        &up.server.url,
        up.server.pid,
        &load,
        plan.duration_s,
        &up.dir,
        &logs.join(format!("run-{}.txt", round + 1)),
    )
    .await?;
    up.server.ensure_running()?;
    let after = plugin_counters(&http, &up.server.url, up.case.plugin).await?;
    let created = fake.created() - created_before;
    Ok(Measured {
        wrk: result,
        plugin_calls: after.calls.saturating_sub(before.calls),
        busy_ms: after.busy_ms.saturating_sub(before.busy_ms),
        cpu_ms: after.cpu_ms.saturating_sub(before.cpu_ms),
        sessions_created: (up.case.key == "vonage").then_some(created),
    })
}

fn log_run(case: &Case, m: &Measured, round: usize, runs: usize) {
    eprintln!(
        "[{}] run {}/{}: {:>7} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server CPU {:>4.0} µs/req  \
         plugin CPU {:>4.0} µs/call ({} calls, {:.1}% of server CPU)  others {:.2} cores{}",
        case.key,
        round + 1,
        runs,
        thousands(m.wrk.requests_per_second()),
        m.wrk.p50_us / 1000.0,
        m.wrk.p99_us / 1000.0,
        m.wrk.server_cpu_us_per_request(),
        m.plugin_us_per_call(),
        thousands(m.plugin_calls as f64),
        m.plugin_share() * 100.0,
        m.wrk.other_cores(),
        m.wrk
            .failure()
            .map(|why| format!("  FAILED: {why}"))
            .unwrap_or_default()
    );
}

fn us(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.0} µs")
    } else {
        "n/a".into()
    }
}

fn signed_us(value: f64) -> String {
    if value.is_finite() {
        format!("{value:+.0} µs")
    } else {
        "n/a".into()
    }
}

fn ratio(value: f64, base: f64) -> String {
    let r = value / base;
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "n/a".into()
    }
}

fn percent(value: f64) -> String {
    if value.is_finite() {
        format!("{:.1}%", value * 100.0)
    } else {
        "n/a".into()
    }
}

fn verdict(result: &CaseResult, figures: &Figures) -> String {
    if result.failed() {
        return "FAILED".into();
    }
    match result.case.signing {
        Signing::SharedSecret if figures.share < TARGET_PLUGIN_SHARE => "met".into(),
        Signing::SharedSecret => "NOT met".into(),
        Signing::Baseline => "(baseline)".into(),
        Signing::Rs256 => "(no target)".into(),
        Signing::Sandbox => "(floor)".into(),
    }
}

fn markdown(results: &[CaseResult], plan: &Plan, args: &ProvidersArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", args.out.command_line(&args.command_line));
    let _ = writeln!(out, "Machine: {}.", crate::run::machine());
    let _ = writeln!(
        out,
        "Load: `wrk -t{} -c{} -d{}s --timeout {}s --latency` on `POST /calls/{{token}}` (the `place-call` route of \
         `scripts/bench`, bench/wrk/loop.lua), {} unmeasured warm-up second(s) before each measured run, {} measured \
         run(s) per configuration taken in turns{}. One release `loop-server` per configuration, on SQLite, with the \
         provider as `[providers] default`; each call also pings the callee's push URL on a local sink.",
        plan.settings.threads,
        plan.settings.connections,
        plan.duration_s,
        plan.settings.timeout_s,
        plan.warmup_s,
        plan.runs,
        if plan.runs > 1 {
            " (medians reported)"
        } else {
            ""
        }
    );
    if args.quick {
        let _ = writeln!(
            out,
            "**Quick mode (smoke test): figures are not comparable with the targets.**"
        );
    }
    let _ = writeln!(
        out,
        "Target (issue 9): the plugin's time under {:.0}% of the request's server time for the providers that sign \
         with a shared secret (HS256, and OpenTok's HMAC-SHA1 T1 tokens); for RS256, what it costs.\n",
        TARGET_PLUGIN_SHARE * 100.0
    );

    let base = results
        .iter()
        .find(|r| r.case.signing == Signing::Baseline)
        .and_then(CaseResult::figures);
    let sandbox = results
        .iter()
        .find(|r| r.case.signing == Signing::Sandbox)
        .and_then(CaseResult::figures);
    let _ = writeln!(out, "### Against loopback, measured in the same run\n");
    if base.is_none() {
        let _ = writeln!(out, "Loopback was not measured in this run: no ratios.\n");
    }
    let _ = writeln!(
        out,
        "| provider | signing | req/s ÷ loopback | server CPU/req ÷ loopback | server CPU/req − loopback's | plugin CPU/call ÷ loopback | plugin share of server CPU | its share beyond the sandbox's (− empty's CPU/call) | target < {:.0}% |",
        TARGET_PLUGIN_SHARE * 100.0
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for result in results {
        let case = result.case;
        match (&result.outcome, result.figures()) {
            (_, Some(f)) => {
                let (r_rps, r_cpu, d_cpu, r_plugin) = match base {
                    Some(b) => (
                        ratio(f.rps, b.rps),
                        ratio(f.server_cpu_us, b.server_cpu_us),
                        signed_us(f.server_cpu_us - b.server_cpu_us),
                        ratio(f.plugin_us, b.plugin_us),
                    ),
                    None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
                };
                let beyond = match sandbox {
                    Some(floor) => percent((f.plugin_us - floor.plugin_us) / f.server_cpu_us),
                    None => "n/a".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {r_rps} | {r_cpu} | {d_cpu} | {r_plugin} | {} | {beyond} | {} |",
                    case.key,
                    case.signing_label(),
                    percent(f.share),
                    verdict(result, &f)
                );
            }
            (Outcome::Skipped(why), None) | (Outcome::Failed(why), None) => {
                let why = why.lines().next().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| {} | {} | {why} | | | | | | |",
                    case.key,
                    case.signing_label()
                );
            }
            (Outcome::Measured(_), None) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | no run completed | | | | | | FAILED |",
                    case.key,
                    case.signing_label()
                );
            }
        }
    }
    out.push('\n');
    rs256_lines(&mut out, results, base);

    let _ = writeln!(out, "### Figures\n");
    let _ = writeln!(
        out,
        "| provider | req/s | p50 | p99 | server CPU/req | plugin CPU/call | plugin share | other procs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for result in results {
        if let Some(f) = result.figures() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} cores |",
                result.case.key,
                thousands(f.rps),
                ms(f.p50_ms),
                ms(f.p99_ms),
                us(f.server_cpu_us),
                us(f.plugin_us),
                percent(f.share),
                f.other_cores
            );
        }
    }
    let _ = writeln!(
        out,
        "\nserver CPU/req: the server process's CPU time over the run (`/proc/<pid>/stat`) ÷ completed requests. \
         plugin CPU/call: Δ`cpu_ms` ÷ Δ`calls` of the plugin in `GET /__heartbeat__`, read just before and after \
         the run (one plugin call per placed call: instantiation, `create-session`, two `issue-token`s and the host \
         functions they call, signing included; the server sums the thread CPU clock over each poll of the plugin's \
         work, and times signing on the blocking pool the same way). plugin share: Δ`cpu_ms` ÷ the server's CPU \
         time over the run. plugin wall/call (per run): Δ`busy_ms` ÷ Δ`calls`, which also counts waiting for a \
         slot, a core or the vendor's API. other procs: cores used by processes other than the server, wrk and the \
         bench (the machine may be shared).\n"
    );

    for result in results {
        let case = result.case;
        let _ = writeln!(
            out,
            "#### {} ({}, plugin `{}`)\n",
            case.key,
            case.signing_label(),
            case.plugin
        );
        let _ = writeln!(out, "{}.", capitalized(case.work));
        match &result.outcome {
            Outcome::Skipped(why) => {
                let _ = writeln!(out, "\n{}.\n", capitalized(why));
                continue;
            }
            Outcome::Failed(why) => {
                let _ = writeln!(
                    out,
                    "\n**Failed**: `{}`\n",
                    why.lines().next().unwrap_or_default()
                );
                continue;
            }
            Outcome::Measured(_) => {}
        }
        let runs = result.runs().unwrap_or_default();
        if case.key == "vonage" {
            let _ = writeln!(
                out,
                "The fake answers `POST /session/create` with a new `[{{\"session_id\": …}}]` and checks no signature (the \
                 vendor tests do that); it runs inside loop-bench, so its CPU is the bench's, not the server's, while the \
                 plugin's wait for it is in the plugin's wall time, not its CPU time. Sessions it created during the measured runs: {}.",
                thousands(runs.iter().filter_map(|r| r.sessions_created).sum::<u64>() as f64)
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "| run | req/s | p50 | p99 | server CPU/req | plugin calls | plugin CPU | plugin CPU/call | plugin wall/call | plugin share | other procs |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, m) in runs.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} ms | {} | {} | {} | {:.2} cores |",
                i + 1,
                thousands(m.wrk.requests_per_second()),
                ms(m.wrk.p50_us / 1000.0),
                ms(m.wrk.p99_us / 1000.0),
                us(m.wrk.server_cpu_us_per_request()),
                thousands(m.plugin_calls as f64),
                thousands(m.cpu_ms as f64),
                us(m.plugin_us_per_call()),
                us(m.plugin_wall_us_per_call()),
                percent(m.plugin_share()),
                m.wrk.other_cores()
            );
        }
        for failure in &result.failures {
            let _ = writeln!(out, "- **failed**: {failure}");
        }
        out.push('\n');
    }
    out
}

/// What RS256 costs, each RS256 configuration against loopback and, when it
/// was measured, against the same plugin signing HS256.
fn rs256_lines(out: &mut String, results: &[CaseResult], base: Option<Figures>) {
    let figures = |key: &str| {
        results
            .iter()
            .find(|r| r.case.key == key)
            .and_then(CaseResult::figures)
    };
    let mut lines = Vec::new();
    if let (Some(jaas), Some(b)) = (figures("jitsi-jaas"), base) {
        lines.push(format!(
            "- **jitsi-jaas** (two RS256 signatures per call, no HTTP): server CPU {}× loopback's per request \
             ({}, about {} of CPU per RS256 signature), {}× loopback's req/s; plugin CPU {} per call \
             ({}× loopback's {}).",
            ratio(jaas.server_cpu_us, b.server_cpu_us),
            signed_us(jaas.server_cpu_us - b.server_cpu_us),
            us((jaas.server_cpu_us - b.server_cpu_us) / 2.0),
            ratio(jaas.rps, b.rps),
            us(jaas.plugin_us),
            ratio(jaas.plugin_us, b.plugin_us),
            us(b.plugin_us)
        ));
    }
    if let (Some(jaas), Some(hs)) = (figures("jitsi-jaas"), figures("jitsi")) {
        lines.push(format!(
            "- **jitsi-jaas vs jitsi** (the same plugin, RS256 instead of HS256): server CPU per request {}× \
             ({}, about {} per RS256 signature over an HS256 one), req/s {}×, plugin CPU per call {}×.",
            ratio(jaas.server_cpu_us, hs.server_cpu_us),
            signed_us(jaas.server_cpu_us - hs.server_cpu_us),
            us((jaas.server_cpu_us - hs.server_cpu_us) / 2.0),
            ratio(jaas.rps, hs.rps),
            ratio(jaas.plugin_us, hs.plugin_us)
        ));
    }
    if let (Some(vonage), Some(b)) = (figures("vonage"), base) {
        lines.push(format!(
            "- **vonage** (three RS256 signatures per call: the application JWT and two tokens, plus a request to the \
             local fake API): server CPU {}× loopback's per request ({}), {}× loopback's req/s; plugin CPU {} \
             per call ({}× loopback's).",
            ratio(vonage.server_cpu_us, b.server_cpu_us),
            signed_us(vonage.server_cpu_us - b.server_cpu_us),
            ratio(vonage.rps, b.rps),
            us(vonage.plugin_us),
            ratio(vonage.plugin_us, b.plugin_us)
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(
            out,
            "What RS256 costs (the RSA signatures run in the host's `crypto.sign`, on tokio's blocking pool, \
             and count in the plugin's CPU):\n\n{}\n",
            lines.join("\n")
        );
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_writes_a_config_the_server_can_parse() {
        let inputs = SettingsInputs {
            secret: &"ab".repeat(32),
            ids: &"cd".repeat(32),
            rsa_pem: "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
            fake_vonage: "http://127.0.0.1:1234",
        };
        let dir = std::env::temp_dir().join(format!(
            "loop-bench-providers-{}",
            crate::hawk_sign::random_nonce_prefix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for case in &CASES {
            let extra = case
                .config_toml(&case.component(Path::new("/plugins")), &inputs)
                .unwrap();
            let path = write_config(&ConfigInputs {
                dir: &dir,
                database_url: "sqlite://x.db",
                plugin: Path::new("/plugins/loopback/loopback.wasm"),
                push_origin: "http://127.0.0.1:1",
                extra_toml: &format!("\n{extra}"),
                rate_limits: true,
            })
            .unwrap();
            let text = std::fs::read_to_string(path).unwrap();
            let parsed: toml::Table =
                toml::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}\n{text}", case.key));
            assert_eq!(
                parsed["providers"]["default"].as_str(),
                Some(case.plugin),
                "{text}"
            );
            let plugins = parsed["plugins"].as_table().unwrap();
            assert!(plugins.contains_key("loopback"), "{text}");
            if case.plugin != "loopback" {
                let plugin = &plugins[case.plugin];
                let folder = if case.test_plugin {
                    "/tests/plugins"
                } else {
                    "/plugins"
                };
                assert_eq!(
                    plugin["component"].as_str(),
                    Some(format!("{folder}/{0}/{0}.wasm", case.plugin).as_str())
                );
                // Only the empty test plugin reads no settings.
                assert_eq!(
                    plugin["settings"].as_table().is_some_and(|s| !s.is_empty()),
                    case.signing != Signing::Sandbox,
                    "{text}"
                );
            }
            if case.key == "vonage" {
                let plugin = &plugins["vonage"];
                assert_eq!(plugin["allow_private"].as_bool(), Some(true));
                assert_eq!(
                    plugin["settings"]["private_key"].as_str(),
                    Some(inputs.rsa_pem)
                );
                assert_eq!(
                    plugin["allowed_hosts"][0].as_str(),
                    Some("http://127.0.0.1:1234")
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_fake_vonage_api_makes_sessions() {
        let fake = FakeVonage::start().await.unwrap();
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/session/create", fake.origin))
            .form(&[("p2p.preference", "enabled")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(answer[0]["session_id"].as_str().is_some(), "{answer}");
        assert_eq!(fake.created(), 1);
    }
}
