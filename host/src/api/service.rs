//! Service endpoints: what this server is, whether it is healthy, and where
//! clients find their push server.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::app::AppState;
use crate::providers::PluginState;

/// A load balancer polls the heartbeat; a hung database must not hang it.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/__heartbeat__", get(heartbeat))
        .route("/__lbheartbeat__", get(lb_heartbeat))
        .route("/push-server-config", get(push_server_config))
}

/// `/`: Bob's page in a browser, the service description for API clients.
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

pub async fn root(State(state): State<AppState>) -> Json<serde_json::Value> {
    let homepage = [
        option_env!("CARGO_PKG_HOMEPAGE"),
        option_env!("CARGO_PKG_REPOSITORY"),
    ]
    .into_iter()
    .flatten()
    .find(|value| !value.is_empty())
    .map(str::to_string)
    .unwrap_or_else(|| state.public_url.to_string());
    Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "description": env!("CARGO_PKG_DESCRIPTION"),
        "version": env!("CARGO_PKG_VERSION"),
        "homepage": homepage,
        "endpoint": &*state.public_url,
    }))
}

#[derive(Serialize)]
struct Heartbeat {
    storage: bool,
    providers: bool,
    push: bool,
    /// Each plugin by its `[plugins.<name>]` key.
    plugins: BTreeMap<String, PluginReport>,
}

#[derive(Serialize)]
struct PluginReport {
    /// "ready", "compiling" (its component is compiled in the background;
    /// calls go to the fallbacks meanwhile) or "failed".
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
    let report = Heartbeat {
        storage,
        providers,
        push,
        plugins,
    };
    let status = if storage && providers && push {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

async fn lb_heartbeat() -> Json<serde_json::Value> {
    Json(json!({}))
}

async fn push_server_config(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "pushServerURI": state.config().push.server_uri }))
}
