//! `loop-bench progress`: the call-progress websocket (`GET /websocket`)
//! under load, against one release `loop-server` on SQLite.
//!
//! 1. **Idle sockets.** `--sockets` progress sockets (half as many calls),
//!    each side having said hello and been told `alerting`, then left idle;
//!    the server's resident memory is read with all of them open.
//! 2. **Fan-out latency.** With those sockets still held, calls go through
//!    the whole sequence (both hellos → `alerting`, accept → `connecting`,
//!    media-up → `half-connected`, media-up → `connected`) at a fixed rate of
//!    state changes per second. The schedule is open-loop: every message has
//!    its time, set in advance, and is sent then whether or not the server
//!    kept up, so a server that falls behind shows as queueing delay and is
//!    not hidden by sending less. For every state-changing message, the time
//!    from writing it until the *other* side is told the new state (the
//!    target) and until the sender is told its own copy go into HDR
//!    histograms; so does the other side's time counted from the scheduled
//!    moment, which adds the client's own lateness (a step whose previous
//!    step's messages came late is sent late, and that shows there).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::args::{ReportArgs, ServerArgs, parse_seconds};
use crate::cpu::{CpuSnapshot, CpuUse};
use crate::fixtures::Api;
use crate::hawk_sign::HawkSession;
use crate::report::{ms, thousands};
use crate::server::{Backend, ConfigInputs, Database, ServerProcess, write_config};
use crate::sink::PushSink;

/// The targets of issue 8 on the 2-core machine.
pub const TARGET_SOCKETS: usize = 10_000;
pub const TARGET_RSS_BYTES: f64 = 200e6;
pub const TARGET_RATE: f64 = 500.0;
pub const TARGET_P99_MS: f64 = 20.0;

/// State changes per driven call: alerting, connecting, half-connected, connected.
const CHANGES_PER_CALL: usize = 4;
/// The server's timers, raised so that no idle call times out during the run.
const TIMER_SECONDS: u32 = 3600;
/// Longest wait for any one expected message before a call counts as failed.
const PATIENCE: Duration = Duration::from_secs(10);
/// Calls set up at once while the idle sockets are opened.
const SETUP_CONCURRENCY: usize = 64;
/// Concurrent `POST /calls/{token}` while calls are placed.
const PLACE_CONCURRENCY: usize = 32;
/// A driven call opens its two sockets this long before its first message.
const CONNECT_LEAD: Duration = Duration::from_millis(500);
/// File descriptors the bench needs besides its websockets.
const SPARE_FDS: u64 = 256;
/// Client buffers, as small as the server's: the bench holds as many sockets.
const CLIENT_BUFFER_BYTES: usize = 4 * 1024;

#[derive(clap::Args)]
pub struct ProgressArgs {
    /// Idle progress sockets held open (two per call, so it must be even);
    /// default 10,000, or 1,000 with --quick.
    #[arg(long)]
    sockets: Option<usize>,
    /// Call state changes per second during the fan-out phase.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds of scheduled state changes (`20` or `20s`); default 20, or 5 with --quick.
    #[arg(short = 'd', long, value_parser = parse_seconds)]
    duration: Option<u64>,
    /// Milliseconds between the steps of one driven call (caller hello, callee
    /// hello, accept, media-up, media-up).
    #[arg(long, default_value_t = 100)]
    step_ms: u64,
    /// Smoke test: 1,000 idle sockets, 5 s of fan-out; no report is written.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// The loopback provider component.
    #[arg(long)]
    plugin: PathBuf,
    #[command(flatten)]
    out: ReportArgs,
    /// For the report: the command that was run.
    #[arg(long, default_value = "scripts/bench progress")]
    command_line: String,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One call as both sides know it.
#[derive(Debug, Clone)]
struct CallTokens {
    id: String,
    caller: String,
    callee: String,
}

/// Returns whether the run was clean (every call went through, no idle
/// socket was disturbed).
pub async fn run(args: ProgressArgs) -> anyhow::Result<bool> {
    let sockets = args
        .sockets
        .unwrap_or(if args.quick { 1_000 } else { TARGET_SOCKETS });
    let duration_s = args.duration.unwrap_or(if args.quick { 5 } else { 20 });
    anyhow::ensure!(
        sockets >= 2 && sockets.is_multiple_of(2),
        "--sockets: an even number, at least 2"
    );
    anyhow::ensure!((1..=60).contains(&duration_s), "--duration: 1 to 60 s");
    anyhow::ensure!(args.rate >= 1, "--rate: at least 1");
    anyhow::ensure!((1..=5_000).contains(&args.step_ms), "--step-ms: 1 to 5000");
    for (path, flag) in [
        (&args.server.server_bin, "--server-bin"),
        (&args.plugin, "--plugin"),
    ] {
        anyhow::ensure!(path.is_file(), "{flag}: {} does not exist", path.display());
    }
    let step = Duration::from_millis(args.step_ms);
    let interval = Duration::from_secs_f64(CHANGES_PER_CALL as f64 / f64::from(args.rate));
    let driven_calls =
        (f64::from(args.rate) * duration_s as f64 / CHANGES_PER_CALL as f64).ceil() as usize;
    // Driven calls open their sockets CONNECT_LEAD ahead and close them after
    // `connected`: at most this many are open at once, with a margin.
    let call_span = CONNECT_LEAD + step * CHANGES_PER_CALL as u32 + Duration::from_secs(1);
    let driven_open = 2 * (call_span.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    let needed_fds = sockets as u64 + driven_open + SPARE_FDS;
    let own_limit = raise_own_open_files_limit(needed_fds)?;

    std::fs::create_dir_all(&args.server.work_dir)?;
    let dir = std::path::absolute(args.server.work_dir.join("progress"))?;
    std::fs::create_dir_all(&dir)?;
    let plugin = std::path::absolute(&args.plugin)?;
    let sink = PushSink::start().await.context("starting the push sink")?;
    let database = Database::create(Backend::Sqlite, &dir, &args.server.work_dir, "").await?;
    let progress_toml = format!(
        "[progress]\nsupervisory_seconds = {TIMER_SECONDS}.0\nringing_seconds = {TIMER_SECONDS}.0\n\
         connection_seconds = {TIMER_SECONDS}.0\n"
    );
    let config = write_config(&ConfigInputs {
        dir: &dir,
        database_url: database.url(),
        plugin: &plugin,
        push_origin: &sink.origin,
        extra_toml: &progress_toml,
        rate_limits: true,
    })?;
    let mut server = args.server.start(&config, &dir).await?;
    eprintln!(
        "[progress] loop-server (pid {}) at {}",
        server.pid, server.url
    );
    let plan = Plan {
        sockets,
        rate: f64::from(args.rate),
        duration_s,
        step,
        interval,
        driven_calls,
        needed_fds,
        own_limit,
    };
    let result = measure(&plan, &mut server, &sink).await;
    let stopped = server.stop().await;
    let result =
        result.with_context(|| format!("server log: {}", dir.join("server.log").display()))?;
    stopped?;

    let summary = result.summary(&plan);
    println!("\n{summary}");
    println!("LOOP_BENCH_PROGRESS {}", result.json(&plan));
    if let Some(path) = &args.out.report {
        if args.quick {
            eprintln!("--quick: {} is left as it is", path.display());
        } else {
            let markdown = result.markdown(&plan, &args);
            crate::run::update_section(path, &PROGRESS_SECTION, &markdown)?;
            println!("results written to {}", path.display());
        }
    }
    Ok(result.clean())
}

/// Where `--report` puts the results.
const PROGRESS_SECTION: crate::run::Section = crate::run::Section {
    heading: "## Call-progress websocket fan-out",
    start: "<!-- loop-bench:progress:start (generated by `scripts/bench progress`; edits here are overwritten) -->",
    end: "<!-- loop-bench:progress:end -->",
};

/// The `workers=N` the server logs when it starts serving.
fn server_workers(log: &std::path::Path) -> Option<u32> {
    let log = std::fs::read_to_string(log).ok()?;
    let line = log.lines().find(|line| line.contains("serving"))?;
    let rest = line
        .split_once("workers=")
        .or_else(|| line.split_once("\"workers\":"))?
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Raises this process's soft open-files limit to its hard one (as the
/// server does) and checks it covers `needed`.
fn raise_own_open_files_limit(needed: u64) -> anyhow::Result<u64> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open files limit")?;
    anyhow::ensure!(
        limit >= needed,
        "this process may open {limit} files but needs {needed} (fewer --sockets, or raise the \
         hard limit: `ulimit -Hn`)"
    );
    Ok(limit)
}

/// The soft open-files limit of a running process.
fn open_files_limit(pid: u32) -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .context("reading /proc/<pid>/limits")?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no \"Max open files\" in /proc/<pid>/limits")?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .context("unreadable \"Max open files\" line")?;
    Ok(if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse()
            .with_context(|| format!("unreadable open files limit {soft:?}"))?
    })
}

struct Plan {
    sockets: usize,
    rate: f64,
    duration_s: u64,
    step: Duration,
    /// Between the starts of two driven calls.
    interval: Duration,
    driven_calls: usize,
    needed_fds: u64,
    own_limit: u64,
}

/// The server's memory at one moment, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl Memory {
    fn read(server: &ServerProcess) -> anyhow::Result<Self> {
        Ok(Memory {
            rss_kib: server.rss_kib()?,
            hwm_kib: server.peak_rss_kib()?,
        })
    }
}

async fn measure(
    plan: &Plan,
    server: &mut ServerProcess,
    sink: &PushSink,
) -> anyhow::Result<ProgressResult> {
    let server_limit = open_files_limit(server.pid)?;
    anyhow::ensure!(
        server_limit >= plan.needed_fds,
        "loop-server may open {server_limit} files but the run needs about {} sockets of it; \
         raise the hard limit (`ulimit -Hn`) or lower --sockets",
        plan.needed_fds
    );
    let api = Api::new(&server.url, server.port)?;
    let ws_url = format!("{}/websocket", server.url.replacen("http", "ws", 1));

    let started = std::time::Instant::now();
    let idle_calls = place_calls(&api, sink, "idle", plan.sockets / 2).await?;
    let driven = place_calls(&api, sink, "driven", plan.driven_calls).await?;
    eprintln!(
        "[progress] placed {} idle and {} driven calls in {:.1} s",
        thousands(idle_calls.len() as f64),
        thousands(driven.len() as f64),
        started.elapsed().as_secs_f64()
    );

    // Let the placement's allocations and pings settle before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Memory::read(server)?;
    let started = std::time::Instant::now();
    let idle = open_idle(&ws_url, idle_calls).await?;
    let open_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "[progress] {} idle sockets at alerting in {open_seconds:.1} s",
        thousands(idle.sockets as f64)
    );
    server.ensure_running()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_idle = Memory::read(server)?;
    eprintln!(
        "[progress] server RSS {:.1} MiB before, {:.1} MiB with them ({:.0} bytes per socket)",
        mib(before.rss_kib),
        mib(with_idle.rss_kib),
        per_socket_bytes(before, with_idle, idle.sockets)
    );

    eprintln!(
        "[progress] driving {} calls: {} state changes/s for {} s",
        thousands(driven.len() as f64),
        plan.rate,
        plan.duration_s
    );
    let cpu_before = CpuSnapshot::take(server.pid)?;
    // Calls pile up if the server falls behind: never more open at once
    // than both processes' open-files limits leave room for.
    let fd_budget = plan.own_limit.min(server_limit);
    let max_open_calls = (fd_budget.saturating_sub(plan.sockets as u64 + SPARE_FDS) / 2).max(1);
    let fanout = drive(plan, &ws_url, driven, max_open_calls as usize).await;
    let cpu = CpuSnapshot::take(server.pid)?.since(&cpu_before);
    server.ensure_running()?;
    let after = Memory::read(server)?;
    let idle_disturbed = idle.disturbed.load(Ordering::Relaxed);
    let idle_still_open = idle.sockets as u64 - idle.closed.load(Ordering::Relaxed);
    idle.release();
    Ok(ProgressResult {
        workers: server_workers(&server.log_path),
        sockets: plan.sockets,
        open_seconds,
        before,
        with_idle,
        after,
        server_limit,
        idle_disturbed,
        idle_still_open,
        fanout,
        cpu,
    })
}

/// Places `count` calls to a fresh user and returns both sides' tokens, the
/// callee's from `GET /calls?version=0` as a client gets them.
async fn place_calls(
    api: &Api,
    sink: &PushSink,
    user: &str,
    count: usize,
) -> anyhow::Result<Vec<CallTokens>> {
    let callee: HawkSession = api.register(&sink.url(user)).await?;
    let token = api.create_call_url(&callee).await?;
    let placed: Vec<anyhow::Result<Value>> = futures::stream::iter(0..count)
        .map(|_| api.place_call(&token))
        .buffer_unordered(PLACE_CONCURRENCY)
        .collect()
        .await;
    let listed = api.list_calls(&callee).await?;
    let callee_tokens: HashMap<&str, &str> = listed
        .iter()
        .filter_map(|call| Some((call["callId"].as_str()?, call["websocketToken"].as_str()?)))
        .collect();
    placed
        .into_iter()
        .map(|placed| {
            let placed = placed?;
            let field = |name: &str| {
                placed[name].as_str().map(str::to_string).with_context(|| {
                    format!("POST /calls/{{token}} answered without {name}: {placed}")
                })
            };
            let id = field("callId")?;
            let caller = field("websocketToken")?;
            let callee = callee_tokens
                .get(id.as_str())
                .with_context(|| format!("GET /calls?version=0 does not list call {id}"))?
                .to_string();
            Ok(CallTokens { id, caller, callee })
        })
        .collect()
}

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_BUFFER_BYTES)
        .write_buffer_size(0);
    let (stream, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .context("websocket upgrade of /websocket")?;
    Ok(stream)
}

async fn send(ws: &mut Ws, message: &Value) -> Result<(), String> {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .map_err(|err| format!("sending {message}: {err}"))
}

fn hello(call: &CallTokens, auth: &str) -> Value {
    json!({"messageType": "hello", "callId": call.id, "auth": auth})
}

fn action(event: &str) -> Value {
    json!({"messageType": "action", "event": event})
}

fn hello_state(state: &str) -> Value {
    json!({"messageType": "hello", "state": state})
}

fn progress(state: &str) -> Value {
    json!({"messageType": "progress", "state": state})
}

/// Waits for the next message, which must be `want`; returns when it came.
async fn expect(ws: &mut Ws, want: &Value) -> Result<Instant, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("no {want} within {} s", PATIENCE.as_secs())),
            Ok(None) => return Err(format!("socket ended while waiting for {want}")),
            Ok(Some(Err(err))) => return Err(format!("waiting for {want}: {err}")),
            Ok(Some(Ok(frame))) => frame,
        };
        let text = match frame {
            Message::Text(text) => text.to_string(),
            Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Message::Close(frame) => {
                return Err(format!("closed ({frame:?}) while waiting for {want}"));
            }
            _ => continue,
        };
        let at = Instant::now();
        return match serde_json::from_str::<Value>(&text) {
            Ok(got) if got == *want => Ok(at),
            _ => Err(format!("expected {want}, got {text}")),
        };
    }
}

/// The idle sockets, each watched by a task that counts anything arriving.
struct IdleSockets {
    sockets: usize,
    watchers: Vec<JoinHandle<()>>,
    /// Messages received (or errors) after the socket went idle.
    disturbed: Arc<AtomicU64>,
    /// Sockets the server closed.
    closed: Arc<AtomicU64>,
}

impl IdleSockets {
    fn release(self) {
        for watcher in self.watchers {
            watcher.abort();
        }
    }
}

/// Both sides of each call say hello and are told `alerting`.
async fn open_idle(url: &str, calls: Vec<CallTokens>) -> anyhow::Result<IdleSockets> {
    let disturbed = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let mut opened = futures::stream::iter(calls)
        .map(|call| async move {
            let (mut caller, mut callee) = tokio::try_join!(connect(url), connect(url))?;
            let steps = async {
                send(&mut caller, &hello(&call, &call.caller)).await?;
                expect(&mut caller, &hello_state("init")).await?;
                send(&mut callee, &hello(&call, &call.callee)).await?;
                expect(&mut callee, &hello_state("init")).await?;
                let alerting = progress("alerting");
                tokio::try_join!(
                    expect(&mut caller, &alerting),
                    expect(&mut callee, &alerting)
                )?;
                Ok::<_, String>(())
            };
            steps
                .await
                .map_err(|why| anyhow::anyhow!("setting up idle call {}: {why}", call.id))?;
            Ok::<_, anyhow::Error>([caller, callee])
        })
        .buffer_unordered(SETUP_CONCURRENCY);
    let mut watchers = Vec::new();
    while let Some(pair) = opened.next().await {
        for mut ws in pair? {
            let disturbed = disturbed.clone();
            let closed = closed.clone();
            watchers.push(tokio::spawn(async move {
                while let Some(frame) = ws.next().await {
                    match frame {
                        Ok(Message::Ping(_) | Message::Pong(_)) => {}
                        _ => {
                            disturbed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                closed.fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    Ok(IdleSockets {
        sockets: watchers.len(),
        watchers,
        disturbed,
        closed,
    })
}

/// The state changes of a driven call, in order, with who causes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The callee's hello (the caller's came one step before).
    Alerting,
    /// The callee's accept.
    Connecting,
    /// The caller's media-up.
    HalfConnected,
    /// The callee's media-up.
    Connected,
}

impl Change {
    const ALL: [Change; CHANGES_PER_CALL] = [
        Change::Alerting,
        Change::Connecting,
        Change::HalfConnected,
        Change::Connected,
    ];

    fn state(self) -> &'static str {
        match self {
            Change::Alerting => "alerting",
            Change::Connecting => "connecting",
            Change::HalfConnected => "half-connected",
            Change::Connected => "connected",
        }
    }

    fn cause(self) -> &'static str {
        match self {
            Change::Alerting => "callee hello",
            Change::Connecting => "callee accept",
            Change::HalfConnected => "caller media-up",
            Change::Connected => "callee media-up",
        }
    }
}

/// What one driven call measured.
#[derive(Debug, Default)]
struct CallOutcome {
    samples: Vec<Sample>,
    /// When each state-changing message actually left, and how late (µs).
    sends: Vec<(Instant, u64)>,
    error: Option<String>,
}

/// One state change of one call.
#[derive(Debug, Clone, Copy)]
struct Sample {
    change: Change,
    /// µs from the message leaving until the other side was told.
    other_us: u64,
    /// µs from the message leaving until the sender was told its own copy.
    own_us: u64,
    /// µs from the message's scheduled time until the other side was told.
    other_scheduled_us: u64,
    /// When both sides had been told.
    told_at: Instant,
}

fn micros(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_micros() as u64
}

/// One call through the whole sequence, each message at `start + k × step`
/// (or as soon after as the previous step's messages have arrived).
async fn drive_call(url: String, call: CallTokens, start: Instant, step: Duration) -> CallOutcome {
    let mut outcome = CallOutcome::default();
    if let Err(why) = drive_steps(&url, &call, start, step, &mut outcome).await {
        outcome.error = Some(format!("call {}: {why}", call.id));
    }
    outcome
}

async fn drive_steps(
    url: &str,
    call: &CallTokens,
    start: Instant,
    step: Duration,
    outcome: &mut CallOutcome,
) -> Result<(), String> {
    let (mut caller, mut callee) =
        tokio::try_join!(connect(url), connect(url)).map_err(|err| format!("{err:#}"))?;
    tokio::time::sleep_until(start).await;
    send(&mut caller, &hello(call, &call.caller)).await?;
    expect(&mut caller, &hello_state("init")).await?;
    for (k, change) in Change::ALL.into_iter().enumerate() {
        let scheduled = start + step * (k as u32 + 1);
        tokio::time::sleep_until(scheduled).await;
        let (sender, other, message) = match change {
            Change::Alerting => (&mut callee, &mut caller, hello(call, &call.callee)),
            Change::Connecting => (&mut callee, &mut caller, action("accept")),
            Change::HalfConnected => (&mut caller, &mut callee, action("media-up")),
            Change::Connected => (&mut callee, &mut caller, action("media-up")),
        };
        let sent = Instant::now();
        send(sender, &message).await?;
        outcome.sends.push((sent, micros(scheduled, sent)));
        let want = progress(change.state());
        let own = async {
            if change == Change::Alerting {
                expect(sender, &hello_state("init")).await?;
            }
            expect(sender, &want).await
        };
        let (other_at, own_at) = tokio::try_join!(expect(other, &want), own)?;
        outcome.samples.push(Sample {
            change,
            other_us: micros(sent, other_at),
            own_us: micros(sent, own_at),
            other_scheduled_us: micros(scheduled, other_at),
            told_at: other_at.max(own_at),
        });
    }
    // The server closes both sockets after `connected`; dropping ours is enough.
    Ok(())
}

/// Latencies in microseconds, 1 µs to 1 minute at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Copy)]
struct Percentiles {
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round3(self.p50_ms),
            "p90_ms": round3(self.p90_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
        })
    }

    fn row(&self) -> String {
        format!(
            "{} | {} | {} | {} | {}",
            thousands(self.count as f64),
            ms(self.p50_ms),
            ms(self.p90_ms),
            ms(self.p99_ms),
            ms(self.max_ms)
        )
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

struct FanOut {
    other: Histogram<u64>,
    own: Histogram<u64>,
    /// The other side's latency counted from the scheduled time instead:
    /// the client's own lateness (timer granularity, a late previous step)
    /// included.
    other_scheduled: Histogram<u64>,
    other_by_change: Vec<(Change, Histogram<u64>)>,
    /// Calls that went through the whole sequence.
    completed_calls: usize,
    /// Calls that waited for others to close because the open-files limits
    /// left no room for their sockets (the server had fallen behind).
    held_back: usize,
    calls: usize,
    errors: Vec<String>,
    /// The steady part of the phase, when every step of the sequence has
    /// calls in it: the state-changing messages sent within it, and the
    /// state changes both sides had been told within it.
    steady: Duration,
    steady_sent: u64,
    steady_told: u64,
    /// Wall time of the phase, CPU snapshots included.
    wall: Duration,
    /// How late a message left compared with its schedule, at worst and p99.
    max_send_lag_ms: f64,
    p99_send_lag_ms: f64,
}

impl FanOut {
    /// State-changing messages sent per second, in the steady part.
    fn sent_rate(&self) -> f64 {
        self.steady_sent as f64 / self.steady.as_secs_f64().max(1e-6)
    }

    /// State changes both sides were told per second, in the steady part.
    fn achieved_rate(&self) -> f64 {
        self.steady_told as f64 / self.steady.as_secs_f64().max(1e-6)
    }
}

/// The fan-out phase: calls started every `plan.interval`, open-loop.
async fn drive(plan: &Plan, url: &str, calls: Vec<CallTokens>, max_open_calls: usize) -> FanOut {
    let began = Instant::now();
    let open_calls = Arc::new(tokio::sync::Semaphore::new(max_open_calls));
    let mut held_back = 0;
    let t0 = began + CONNECT_LEAD + Duration::from_millis(200);
    let mut handles = Vec::with_capacity(calls.len());
    let count = calls.len();
    let plan_step = plan.step;
    for (i, call) in calls.into_iter().enumerate() {
        let start = t0 + plan.interval * i as u32;
        tokio::time::sleep_until(start - CONNECT_LEAD).await;
        let permit = match open_calls.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Out of file descriptors: this call starts late, which its
                // latency from the scheduled time shows.
                held_back += 1;
                open_calls
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let url = url.to_string();
        handles.push(tokio::spawn(async move {
            let outcome = drive_call(url, call, start, plan_step).await;
            drop(permit);
            outcome
        }));
    }
    let mut other = histogram();
    let mut own = histogram();
    let mut other_scheduled = histogram();
    let mut other_by_change: Vec<(Change, Histogram<u64>)> =
        Change::ALL.iter().map(|&c| (c, histogram())).collect();
    let mut lags = histogram();
    let mut errors = Vec::new();
    let mut completed_calls = 0;
    // Call i sends its k-th state change (k = 1..4) at t0 + i·interval + k·step:
    // from the first call's last one to the last call's first one, every k
    // is being sent, at the scheduled rate.
    let steady_start = t0 + plan.step * CHANGES_PER_CALL as u32;
    let steady_end = t0 + plan.interval * count.saturating_sub(1) as u32 + plan.step;
    let (steady_start, steady_end) = if steady_end > steady_start + Duration::from_secs(1) {
        (steady_start, steady_end)
    } else {
        // Too short a run for a steady part: the whole of it.
        (t0, steady_end.max(steady_start) + plan.step)
    };
    let steady = steady_start..steady_end;
    let mut steady_sent = 0;
    let mut steady_told = 0;
    for handle in handles {
        let outcome = match handle.await {
            Ok(outcome) => outcome,
            Err(err) => {
                errors.push(format!("a call's task failed: {err}"));
                continue;
            }
        };
        for sample in &outcome.samples {
            steady_told += u64::from(steady.contains(&sample.told_at));
            let _ = other.record(sample.other_us.max(1));
            let _ = own.record(sample.own_us.max(1));
            let _ = other_scheduled.record(sample.other_scheduled_us.max(1));
            if let Some((_, h)) = other_by_change
                .iter_mut()
                .find(|(c, _)| *c == sample.change)
            {
                let _ = h.record(sample.other_us.max(1));
            }
        }
        for &(at, lag_us) in &outcome.sends {
            steady_sent += u64::from(steady.contains(&at));
            let _ = lags.record(lag_us.max(1));
        }
        match outcome.error {
            Some(error) => errors.push(error),
            None => completed_calls += 1,
        }
    }
    FanOut {
        other,
        own,
        other_scheduled,
        other_by_change,
        completed_calls,
        calls: count,
        errors,
        held_back,
        steady: steady.end - steady.start,
        steady_sent,
        steady_told,
        wall: began.elapsed(),
        max_send_lag_ms: lags.max() as f64 / 1000.0,
        p99_send_lag_ms: lags.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

struct ProgressResult {
    /// The server's tokio worker threads, as it logged them.
    workers: Option<u32>,
    sockets: usize,
    open_seconds: f64,
    before: Memory,
    with_idle: Memory,
    after: Memory,
    server_limit: u64,
    idle_disturbed: u64,
    idle_still_open: u64,
    fanout: FanOut,
    cpu: CpuUse,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn per_socket_bytes(before: Memory, with: Memory, sockets: usize) -> f64 {
    (with.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / sockets.max(1) as f64
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

impl ProgressResult {
    fn clean(&self) -> bool {
        self.fanout.errors.is_empty()
            && self.idle_disturbed == 0
            && self.idle_still_open as usize == self.sockets
    }

    fn bytes_per_socket(&self) -> f64 {
        per_socket_bytes(self.before, self.with_idle, self.sockets)
    }

    /// `None` when the run is not the one the target is set for.
    fn rss_met(&self) -> Option<bool> {
        (self.sockets >= TARGET_SOCKETS)
            .then_some(self.with_idle.rss_kib as f64 * 1024.0 <= TARGET_RSS_BYTES)
    }

    /// Met when the p99 is within the target *and* the rate was kept: every
    /// call went through, none was held back, and both sides were told at
    /// least 98% of the scheduled rate.
    fn p99_met(&self, plan: &Plan) -> Option<bool> {
        let f = &self.fanout;
        (plan.rate >= TARGET_RATE && !f.other.is_empty()).then(|| {
            Percentiles::of(&f.other).p99_ms <= TARGET_P99_MS
                && f.errors.is_empty()
                && f.held_back == 0
                && f.achieved_rate() >= 0.98 * plan.rate
        })
    }

    /// Server CPU per state change, in µs.
    fn server_cpu_us(&self) -> f64 {
        self.cpu.server_s * 1e6 / self.fanout.other.len().max(1) as f64
    }

    fn cores(&self, seconds: f64) -> f64 {
        seconds / self.fanout.wall.as_secs_f64().max(1e-6)
    }

    fn json(&self, plan: &Plan) -> Value {
        let f = &self.fanout;
        json!({
            "bench": "progress",
            "backend": "sqlite",
            "server_workers": self.workers,
            "sockets": self.sockets,
            "calls_idle": self.sockets / 2,
            "open_seconds": round3(self.open_seconds),
            "rss_before_kib": self.before.rss_kib,
            "rss_with_sockets_kib": self.with_idle.rss_kib,
            "hwm_with_sockets_kib": self.with_idle.hwm_kib,
            "rss_after_fanout_kib": self.after.rss_kib,
            "hwm_after_fanout_kib": self.after.hwm_kib,
            "bytes_per_socket": self.bytes_per_socket().round(),
            "rate_target": plan.rate,
            "rate_sent": round3(f.sent_rate()),
            "rate_achieved": round3(f.achieved_rate()),
            "duration_s": plan.duration_s,
            "step_ms": plan.step.as_millis() as u64,
            "calls_driven": f.calls,
            "calls_completed": f.completed_calls,
            "calls_held_back": f.held_back,
            "errors": f.errors.len(),
            "other_side": Percentiles::of(&f.other).json(),
            "own_copy": Percentiles::of(&f.own).json(),
            "other_side_from_schedule": Percentiles::of(&f.other_scheduled).json(),
            "other_side_by_state": f.other_by_change.iter()
                .map(|(c, h)| (c.state().to_string(), Percentiles::of(h).json()))
                .collect::<serde_json::Map<_, _>>(),
            "send_lag_p99_ms": round3(f.p99_send_lag_ms),
            "send_lag_max_ms": round3(f.max_send_lag_ms),
            "server_cpu_us_per_change": self.server_cpu_us().round(),
            "server_cores": round3(self.cores(self.cpu.server_s)),
            "bench_cores": round3(self.cores(self.cpu.harness_s)),
            "other_cores": round3(self.cores(self.cpu.other_s)),
            "idle_disturbed": self.idle_disturbed,
            "idle_still_open": self.idle_still_open,
            "open_files_limit": {"server": self.server_limit, "bench": plan.own_limit},
            "rss_target_met": self.rss_met(),
            "p99_target_met": self.p99_met(plan),
        })
    }

    fn summary(&self, plan: &Plan) -> String {
        let f = &self.fanout;
        let other = Percentiles::of(&f.other);
        let own = Percentiles::of(&f.own);
        let mut out = String::new();
        let _ = writeln!(out, "Call-progress websocket, one loop-server on SQLite");
        let _ = writeln!(
            out,
            "  idle sockets        {} ({} calls at alerting), opened in {:.1} s",
            thousands(self.sockets as f64),
            thousands((self.sockets / 2) as f64),
            self.open_seconds
        );
        let _ = writeln!(
            out,
            "  server RSS          {:.1} MiB before, {:.1} MiB with them (peak {:.1} MiB); {:.1} MB, target ≤ 200 MB: {}",
            mib(self.before.rss_kib),
            mib(self.with_idle.rss_kib),
            mib(self.with_idle.hwm_kib),
            mb(self.with_idle.rss_kib),
            verdict(self.rss_met())
        );
        let _ = writeln!(
            out,
            "  per socket          {:.0} bytes ({:.1} KiB)",
            self.bytes_per_socket(),
            self.bytes_per_socket() / 1024.0
        );
        let _ = writeln!(
            out,
            "  fan-out             {} state changes/s scheduled, {:.0}/s sent, {:.0}/s told to both sides; {} of {} calls completed",
            plan.rate,
            f.sent_rate(),
            f.achieved_rate(),
            thousands(f.completed_calls as f64),
            thousands(f.calls as f64)
        );
        let _ = writeln!(
            out,
            "  other side          p50 {}  p90 {}  p99 {}  max {}  (n = {}); target p99 ≤ {TARGET_P99_MS:.0} ms: {}",
            ms(other.p50_ms),
            ms(other.p90_ms),
            ms(other.p99_ms),
            ms(other.max_ms),
            thousands(other.count as f64),
            verdict(self.p99_met(plan))
        );
        let _ = writeln!(
            out,
            "  sender's own copy   p50 {}  p90 {}  p99 {}  max {}",
            ms(own.p50_ms),
            ms(own.p90_ms),
            ms(own.p99_ms),
            ms(own.max_ms)
        );
        let scheduled = Percentiles::of(&f.other_scheduled);
        let _ = writeln!(
            out,
            "  other side, from the scheduled time (the client's lateness included)\n                      p50 {}  p90 {}  p99 {}  max {}",
            ms(scheduled.p50_ms),
            ms(scheduled.p90_ms),
            ms(scheduled.p99_ms),
            ms(scheduled.max_ms)
        );
        for (change, histogram) in &f.other_by_change {
            let p = Percentiles::of(histogram);
            let _ = writeln!(
                out,
                "    {:<15} ({:<15}) p50 {}  p99 {}  max {}",
                change.state(),
                change.cause(),
                ms(p.p50_ms),
                ms(p.p99_ms),
                ms(p.max_ms)
            );
        }
        let _ = writeln!(
            out,
            "  send lag            p99 {}, max {} behind schedule",
            ms(f.p99_send_lag_ms),
            ms(f.max_send_lag_ms)
        );
        let _ = writeln!(
            out,
            "  CPU                 server {:.2} cores ({:.0} µs per state change), bench {:.2}, other processes {:.2}",
            self.cores(self.cpu.server_s),
            self.server_cpu_us(),
            self.cores(self.cpu.harness_s),
            self.cores(self.cpu.other_s)
        );
        let _ = writeln!(
            out,
            "  after the fan-out   RSS {:.1} MiB, peak {:.1} MiB; idle sockets still open {} of {}, disturbed {}",
            mib(self.after.rss_kib),
            mib(self.after.hwm_kib),
            thousands(self.idle_still_open as f64),
            thousands(self.sockets as f64),
            self.idle_disturbed
        );
        if f.held_back > 0 {
            let _ = writeln!(
                out,
                "  held back           {} calls waited for others to close (open-files limit): the run fell behind",
                thousands(f.held_back as f64)
            );
        }
        for error in f.errors.iter().take(5) {
            let _ = writeln!(out, "  ERROR: {error}");
        }
        if f.errors.len() > 5 {
            let _ = writeln!(out, "  … and {} more errors", f.errors.len() - 5);
        }
        out
    }

    fn markdown(&self, plan: &Plan, args: &ProgressArgs) -> String {
        let f = &self.fanout;
        let other = Percentiles::of(&f.other);
        let mut out = String::new();
        let _ = writeln!(out, "{}", args.out.command_line(&args.command_line));
        let _ = writeln!(out, "Machine: {}.", crate::run::machine_description());
        let _ = writeln!(
            out,
            "Setup: one release `loop-server` on SQLite ({} with the default `server.worker_threads`), \
             `[progress]` timers raised to {TIMER_SECONDS} s so no idle call times out; the bench client \
             (tokio-tungstenite) shares the same cores. Open-files limit: server {}, bench {}.\n",
            match self.workers {
                Some(1) => "1 tokio worker".to_string(),
                Some(n) => format!("{n} tokio workers"),
                None => "tokio workers".to_string(),
            },
            thousands(self.server_limit as f64),
            thousands(plan.own_limit as f64)
        );
        let _ = writeln!(out, "| measure | figure | target | verdict |");
        let _ = writeln!(out, "|---|---:|---|---|");
        let _ = writeln!(
            out,
            "| idle progress sockets (both sides said hello, told `alerting`) | {} ({} calls) | 10,000 | |",
            thousands(self.sockets as f64),
            thousands((self.sockets / 2) as f64)
        );
        let _ = writeln!(
            out,
            "| server RSS before / with them (VmRSS) | {:.1} / {:.1} MiB ({:.1} MB) | ≤ 200 MB | {} |",
            mib(self.before.rss_kib),
            mib(self.with_idle.rss_kib),
            mb(self.with_idle.rss_kib),
            verdict(self.rss_met())
        );
        let _ = writeln!(
            out,
            "| server memory per idle socket | {} bytes | ≤ 20,000 bytes (200 MB / 10,000) | |",
            thousands(self.bytes_per_socket())
        );
        let _ = writeln!(
            out,
            "| peak RSS (VmHWM) with the sockets / after the fan-out | {:.1} / {:.1} MiB | | |",
            mib(self.with_idle.hwm_kib),
            mib(self.after.hwm_kib)
        );
        let _ = writeln!(
            out,
            "| state changes per second: scheduled / sent / told to both sides | {} / {:.0} / {:.0} | 500 | |",
            plan.rate,
            f.sent_rate(),
            f.achieved_rate()
        );
        let _ = writeln!(
            out,
            "| action → other side's progress: p50 / p90 / p99 / max | {} / {} / {} / {} | p99 ≤ 20 ms | {} |",
            ms(other.p50_ms),
            ms(other.p90_ms),
            ms(other.p99_ms),
            ms(other.max_ms),
            verdict(self.p99_met(plan))
        );
        let own = Percentiles::of(&f.own);
        let _ = writeln!(
            out,
            "| action → sender's own copy: p50 / p90 / p99 / max | {} / {} / {} / {} | | |",
            ms(own.p50_ms),
            ms(own.p90_ms),
            ms(own.p99_ms),
            ms(own.max_ms)
        );
        let scheduled = Percentiles::of(&f.other_scheduled);
        let _ = writeln!(
            out,
            "| the same as the first, counted from the action's scheduled time | {} / {} / {} / {} | | |",
            ms(scheduled.p50_ms),
            ms(scheduled.p90_ms),
            ms(scheduled.p99_ms),
            ms(scheduled.max_ms)
        );
        let _ = writeln!(
            out,
            "| calls driven through the whole sequence | {} of {} | all | {} |",
            thousands(f.completed_calls as f64),
            thousands(f.calls as f64),
            if f.errors.is_empty() { "met" } else { "FAILED" }
        );
        let _ = writeln!(
            out,
            "| idle sockets still open and silent after the fan-out | {} of {} ({} disturbed) | all | {} |",
            thousands(self.idle_still_open as f64),
            thousands(self.sockets as f64),
            self.idle_disturbed,
            if self.idle_disturbed == 0 && self.idle_still_open as usize == self.sockets {
                "met"
            } else {
                "FAILED"
            }
        );
        let _ = writeln!(
            out,
            "\nPer state change (latency to the other side, {} driven calls, one every {:.1} ms, steps {} ms apart):\n",
            thousands(f.calls as f64),
            plan.interval.as_secs_f64() * 1000.0,
            plan.step.as_millis()
        );
        let _ = writeln!(out, "| state | caused by | n | p50 | p90 | p99 | max |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        for (change, histogram) in &f.other_by_change {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                change.state(),
                change.cause(),
                Percentiles::of(histogram).row()
            );
        }
        let _ = writeln!(
            out,
            "\nThe schedule is open loop: each message has its time, set in advance, whether or not the server \
             kept up. Latency runs from the moment the message was written to the socket until the other side \
             (or the sender) read the progress message; counted from the scheduled time instead, it also \
             includes the client's own lateness (tokio's 1 ms timer): p99 {} behind schedule, max {}. \
             CPU during the fan-out: server {:.2} cores ({:.0} µs per state change, connection set-up, hellos \
             and closes included), bench client {:.2}, other processes {:.2}.",
            ms(f.p99_send_lag_ms),
            ms(f.max_send_lag_ms),
            self.cores(self.cpu.server_s),
            self.server_cpu_us(),
            self.cores(self.cpu.harness_s),
            self.cores(self.cpu.other_s)
        );
        if f.held_back > 0 {
            let _ = writeln!(
                out,
                "- **{} calls were held back**: the open-files limits left no room for their sockets until \
                 earlier calls closed (the run fell behind its schedule).",
                thousands(f.held_back as f64)
            );
        }
        for error in f.errors.iter().take(5) {
            let _ = writeln!(out, "- **error**: {error}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_worker_count_from_text_and_json_logs() {
        let dir = std::env::temp_dir().join(format!(
            "loop-bench-progress-{}",
            crate::hawk_sign::random_nonce_prefix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text.log");
        std::fs::write(
            &text,
            "2026-11-29T18:48:48Z  INFO loop_server::app: serving addr=127.0.0.1:1 workers=1\n",
        )
        .unwrap();
        assert_eq!(server_workers(&text), Some(1));
        let json = dir.join("json.log");
        std::fs::write(&json, r#"{"fields":{"message":"serving","workers":12}}"#).unwrap();
        assert_eq!(server_workers(&json), Some(12));
        assert_eq!(server_workers(&dir.join("missing.log")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_files_limit_of_this_process() {
        let limit = open_files_limit(std::process::id()).unwrap();
        assert!(limit >= 16, "{limit}");
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.p99_ms - 9.9).abs() < 0.01, "{p:?}");
        assert!((p.max_ms - 10.0).abs() < 0.01, "{p:?}");
    }
}
