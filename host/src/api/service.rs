//! Service endpoints: what this server is, whether it is healthy, and where
//! clients find their push server.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::providers::PluginState;

/// A load balancer polls the heartbeat; a hung database must not hang it.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(home))
        .routes(routes!(heartbeat))
        .routes(routes!(lb_heartbeat))
        .routes(routes!(push_server_config))
}

/// What this server is (`GET /` for API clients).
#[derive(Serialize, ToSchema)]
pub struct ServiceInfo {
    /// "loop-server".
    name: &'static str,
    description: &'static str,
    version: &'static str,
    homepage: String,
    /// The public URL clients reach this server at.
    endpoint: String,
}

/// `{}`: an answer with nothing to say.
#[derive(Serialize, ToSchema)]
pub struct Empty {}

#[derive(Serialize, ToSchema)]
struct PushServerConfig {
    /// The SimplePush server devices register with for their push URLs.
    #[serde(rename = "pushServerURI")]
    push_server_uri: String,
}

/// `/`: Bob's page in a browser, the service description for API clients.
#[utoipa::path(
    get,
    path = "/",
    tag = "service",
    summary = "The service description, or Bob's page in a browser",
    description = "API clients get the service description. A browser, whose `Accept` lists \
        `text/html` before `application/json`, gets the web app's page for a device \
        session (call links, incoming calls). The answer varies on `Accept`.",
    responses(
        (status = 200, description = "The service description (JSON) or the page (HTML)",
            content(
                (ServiceInfo = "application/json"),
                (String = "text/html"),
            )),
    ),
)]
async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut response = if super::pages::wants_html(&headers) {
        super::pages::home_page(&state)
    } else {
        root(State(state)).await.into_response()
    };
    // The same URL answers JSON or HTML: caches must key on Accept.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

pub async fn root(State(state): State<AppState>) -> Json<ServiceInfo> {
    let homepage = [
        option_env!("CARGO_PKG_HOMEPAGE"),
        option_env!("CARGO_PKG_REPOSITORY"),
    ]
    .into_iter()
    .flatten()
    .find(|value| !value.is_empty())
    .map(str::to_string)
    .unwrap_or_else(|| state.public_url.to_string());
    Json(ServiceInfo {
        name: env!("CARGO_PKG_NAME"),
        description: env!("CARGO_PKG_DESCRIPTION"),
        version: env!("CARGO_PKG_VERSION"),
        homepage,
        endpoint: state.public_url.to_string(),
    })
}

#[derive(Serialize, ToSchema)]
struct Heartbeat {
    storage: bool,
    providers: bool,
    push: bool,
    /// Each push server pinged in the last ten minutes, by origin: whether
    /// its pings are failing. A failing push server delays no call (pings
    /// are bounded and sent after the answer), so it leaves the status 200.
    push_servers: BTreeMap<String, crate::push::PushServerHealth>,
    /// Each plugin by its `[plugins.<name>]` key.
    plugins: BTreeMap<String, PluginReport>,
}

#[derive(Serialize, ToSchema)]
struct PluginReport {
    /// "ready", "compiling" (its component is compiled in the background;
    /// calls go to the fallbacks meanwhile) or "failed".
    #[schema(value_type = String, pattern = "^(ready|compiling|failed)$")]
    state: &'static str,
    /// Why it failed to load, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    healthy: bool,
    /// Calls into the plugin since start-up: its describe at load, call
    /// set-ups, token checks and session ends.
    calls: u64,
    /// Wall time those calls took, in milliseconds.
    busy_ms: u64,
    /// CPU time those calls used (instantiation, the plugin's code and the
    /// host functions it called), in milliseconds.
    cpu_ms: u64,
    /// Seconds fallback still skips this plugin; 0 when it serves calls.
    cooling_down_seconds: u64,
}

/// The health of storage, providers and push, for monitoring.
#[utoipa::path(
    get,
    path = "/__heartbeat__",
    tag = "service",
    summary = "Health of storage, provider plugins and push",
    responses(
        (status = 200, description = "Every dependency is healthy", body = Heartbeat),
        (status = 503, description = "Storage, the providers or push is failing: the report says which",
            body = Heartbeat),
    ),
)]
async fn heartbeat(State(state): State<AppState>) -> Response {
    let storage = match tokio::time::timeout(HEARTBEAT_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "heartbeat: storage ping failed");
            false
        }
        Err(_) => {
            tracing::warn!("heartbeat: storage ping timed out");
            false
        }
    };
    // A plugin is unhealthy after several failed calls in a row, and cooling
    // down after it was unavailable. `providers` says whether every call can
    // be served: for the default and each channel, its plugin or a fallback
    // is neither.
    let runtime = state.providers();
    let plugins: BTreeMap<String, PluginReport> = runtime
        .health()
        .into_iter()
        .map(|plugin| {
            let (state, error) = match plugin.state {
                PluginState::Ready => ("ready", None),
                PluginState::Compiling => ("compiling", None),
                PluginState::Failed(error) => ("failed", Some(error)),
            };
            let report = PluginReport {
                state,
                error,
                healthy: plugin.healthy,
                calls: plugin.calls,
                busy_ms: plugin.busy_us / 1000,
                cpu_ms: plugin.cpu_us / 1000,
                cooling_down_seconds: plugin.cooling_down_ms.div_ceil(1000),
            };
            (plugin.plugin, report)
        })
        .collect();
    let failing: Vec<&str> = plugins
        .iter()
        .filter(|(_, report)| {
            !report.healthy || report.cooling_down_seconds > 0 || report.state != "ready"
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if !failing.is_empty() {
        tracing::warn!(plugins = ?failing, "heartbeat: provider plugins failing, cooling down or not loaded yet");
    }
    let providers = runtime.can_serve_every_channel();
    let push = state.push.healthy();
    let push_servers: BTreeMap<_, _> = state
        .push
        .servers()
        .into_iter()
        .map(|server| (server.origin.clone(), server))
        .collect();
    let failing: Vec<&str> = push_servers
        .iter()
        .filter(|(_, server)| !server.healthy)
        .map(|(origin, _)| origin.as_str())
        .collect();
    if !failing.is_empty() {
        tracing::warn!(origins = ?failing, "heartbeat: push servers failing");
    }
    let report = Heartbeat {
        storage,
        providers,
        push,
        push_servers,
        plugins,
    };
    let status = if storage && providers && push {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// The load balancer's check: the process answers. Touches nothing else.
#[utoipa::path(
    get,
    path = "/__lbheartbeat__",
    tag = "service",
    summary = "The process answers (for load balancers)",
    responses((status = 200, description = "Always `{}`", body = Empty)),
)]
async fn lb_heartbeat() -> Json<Empty> {
    Json(Empty {})
}

#[utoipa::path(
    get,
    path = "/push-server-config",
    tag = "service",
    summary = "Where devices get their push URLs",
    responses((status = 200, description = "The push server", body = PushServerConfig)),
)]
async fn push_server_config(State(state): State<AppState>) -> Json<PushServerConfig> {
    Json(PushServerConfig {
        push_server_uri: state.config().push.server_uri.clone(),
    })
}
