//! What operators see of a running server: Prometheus metrics, served on
//! their own listener (`server.metrics_listen`), and the log format (`[log]`).
//!
//! Every module records through the `metrics` facade (`counter!`, …); until
//! a recorder is installed those calls do nothing, so a server without
//! `server.metrics_listen` pays next to nothing for them.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::app::AppState;
use crate::config::LogFormat;

/// The scrape path on the metrics listener.
pub const METRICS_PATH: &str = "/__metrics__";

/// Request latencies, in seconds: from a cached read to a long-poll's wait.
const HTTP_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Provider calls, in seconds: a loopback token takes a millisecond, a vendor
/// API call up to the plugin's wall time (5 s by default).
const PROVIDER_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Database statements, in seconds: SQLite reads take microseconds.
const DB_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Requests per group-commit round (at most 256; see store/batch.rs).
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often histograms are drained when nobody scrapes: the exporter keeps
/// every sample until then.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide recorder, installed the first time a server asks for one
/// (a process may build several servers: the in-process tests).
static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder, once per process, and returns its handle.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = RECORDER.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in [
        ("loop_http_request_duration_seconds", HTTP_SECONDS),
        ("loop_provider_call_duration_seconds", PROVIDER_SECONDS),
        ("loop_db_statement_duration_seconds", DB_SECONDS),
        ("loop_db_group_commit_batch_size", BATCH_SIZES),
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets)?;
    }
    let handle = builder.install_recorder()?;
    describe();
    Ok(RECORDER.get_or_init(|| handle).clone())
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "loop_http_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "loop_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request (to its response head)"
    );
    describe_counter!(
        "loop_provider_calls_total",
        "Provider plugin calls, by plugin and outcome"
    );
    describe_histogram!(
        "loop_provider_call_duration_seconds",
        Unit::Seconds,
        "Provider plugin calls' wall time, waiting for a slot included"
    );
    describe_counter!(
        "loop_push_pings_total",
        "Push pings to callees' devices, by outcome"
    );
    describe_histogram!(
        "loop_db_statement_duration_seconds",
        Unit::Seconds,
        "Database statements' time, by statement"
    );
    describe_gauge!(
        "loop_db_writer_queue_depth",
        "Requests' writes waiting for the next group-commit round"
    );
    describe_gauge!(
        "loop_db_pool_connections",
        "Database connections, by state (idle, in_use)"
    );
    describe_histogram!(
        "loop_db_group_commit_batch_size",
        "Requests whose writes shared one group-commit round"
    );
    describe_gauge!("loop_websockets_open", "Open websockets, by kind");
}

/// Binds `server.metrics_listen`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("server.metrics_listen: cannot bind {addr}: {err}"))
}

/// Serves `GET /__metrics__` on `listener` until the task is aborted, and
/// drains histograms in the background.
pub fn spawn_metrics_server(
    listener: TcpListener,
    handle: PrometheusHandle,
    state: AppState,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let upkeep_handle = handle.clone();
        let upkeep = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                ticks.tick().await;
                upkeep_handle.run_upkeep();
            }
        });
        let router = Router::new()
            .route(METRICS_PATH, get(scrape))
            .with_state((handle, state));
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "the metrics listener failed");
        }
        upkeep.abort();
    })
}

async fn scrape(State((handle, state)): State<(PrometheusHandle, AppState)>) -> Response {
    // Gauges that cost nothing to read are read now rather than kept up to
    // date on every request.
    let gauges = state.store.gauges();
    metrics::gauge!("loop_db_writer_queue_depth").set(gauges.writer_queue as f64);
    if let Some((idle, in_use)) = gauges.connections {
        metrics::gauge!("loop_db_pool_connections", "state" => "idle").set(idle as f64);
        metrics::gauge!("loop_db_pool_connections", "state" => "in_use").set(in_use as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Counts a request: `route` is the route template (never the raw path,
/// whose tokens are capabilities).
pub fn record_request(method: &Method, route: &str, status: StatusCode, took: Duration) {
    let key = (method_name(method), status.as_u16());
    let series = REQUEST_SERIES
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(series) = series.get(route).and_then(|by_answer| by_answer.get(&key)) {
        series.count.increment(1);
        series.latency.record(took);
        return;
    }
    drop(series);
    let labels = [
        ("method", SharedString::const_str(key.0)),
        ("route", SharedString::from_owned(route.to_owned())),
        ("status", status_label(status)),
    ];
    let series = RequestSeries {
        count: metrics::counter!("loop_http_requests_total", &labels),
        latency: metrics::histogram!("loop_http_request_duration_seconds", &labels),
    };
    series.count.increment(1);
    series.latency.record(took);
    REQUEST_SERIES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(route.into())
        .or_default()
        .insert(key, series);
}

/// The request counter and latency histogram of one route template, method
/// and status, registered on first use: a request then costs two map lookups
/// under a read lock, where building and hashing each metric's three-label
/// key cost the cheapest routes a fifth of their throughput. Bounded: route
/// templates, methods and statuses are each a small set.
struct RequestSeries {
    count: metrics::Counter,
    latency: metrics::Histogram,
}

type RequestSeriesByRoute = HashMap<Box<str>, HashMap<(&'static str, u16), RequestSeries>>;

static REQUEST_SERIES: LazyLock<RwLock<RequestSeriesByRoute>> = LazyLock::new(RwLock::default);

/// Methods outside HTTP's own are one label, or clients could add series at will.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// `"100"` to `"999"`, made once, so a request's status label is a borrow.
static STATUS_LABELS: LazyLock<Box<[String]>> =
    LazyLock::new(|| (100..1000).map(|code: u16| code.to_string()).collect());

fn status_label(status: StatusCode) -> SharedString {
    SharedString::const_str(&STATUS_LABELS[usize::from(status.as_u16() - 100)])
}

/// Times one database statement; `statement` names it in the metric.
pub async fn statement<T>(statement: &'static str, run: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = run.await;
    metrics::histogram!("loop_db_statement_duration_seconds", "statement" => statement)
        .record(started.elapsed());
    result
}

/// An open websocket, counted in `loop_websockets_open{kind}` for as long as
/// this lives: held by the socket's task, so every way out of it counts.
pub struct OpenSocket(&'static str);

impl OpenSocket {
    pub fn new(kind: &'static str) -> Self {
        metrics::gauge!("loop_websockets_open", "kind" => kind).increment(1.0);
        OpenSocket(kind)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        metrics::gauge!("loop_websockets_open", "kind" => self.0).decrement(1.0);
    }
}

/// Installs the log subscriber: `LOOP_LOG` filters (default `info`), `format`
/// shapes the lines, on stderr.
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("LOOP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour codes only for a terminal, not for log files and collectors.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line; each carries its request's span (request_id,
        // route) so a collector can group a request's lines.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
