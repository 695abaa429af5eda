//! Choosing providers through `config.toml` alone, tested through the binary:
//! fallback when the chosen provider is unavailable or slow, its cool-down
//! (visible in the heartbeat and the log), swapping the provider of a
//! deployment by editing the config and restarting, and plugins built against
//! WIT 0.1.0 serving calls beside 0.2.0 ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::common::vendor::{assert_provider_error, attempt_call, call_flow, serve};
use crate::common::{ServerOptions, TestServer, workspace_root};

/// A vendor API for the `vendor` test plugin that answers `POST /v1/sessions`
/// with the status it is set to (200: a session), after `delay_ms`.
pub(crate) struct Vendor {
    pub origin: String,
    pub status: Arc<AtomicU16>,
    pub delay_ms: Arc<AtomicU16>,
    pub hits: Arc<AtomicUsize>,
}

pub(crate) async fn vendor() -> Vendor {
    let status = Arc::new(AtomicU16::new(200));
    let delay_ms = Arc::new(AtomicU16::new(0));
    let hits = Arc::new(AtomicUsize::new(0));
    let (s, d, h) = (status.clone(), delay_ms.clone(), hits.clone());
    let router = axum::Router::new().route(
        "/v1/sessions",
        axum::routing::post(move || {
            let (s, d, h) = (s.clone(), d.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst).into())).await;
                let status = s.load(Ordering::SeqCst);
                let code = axum::http::StatusCode::from_u16(status).unwrap();
                (code, axum::Json(json!({"sessionId": "vendor-session"})))
            }
        }),
    );
    Vendor {
        origin: serve(router).await,
        status,
        delay_ms,
        hits,
    }
}

/// `[plugins.vendor]` for the `vendor` test plugin (built against WIT 0.1.0).
pub(crate) fn vendor_toml(origin: &str, wall_ms: u64) -> String {
    let component = workspace_root().join("tests/plugins/vendor/vendor.wasm");
    format!(
        "[plugins.vendor]\ncomponent = {component:?}\nallowed_hosts = [{origin:?}]\nallow_private = true\n\
         [plugins.vendor.limits]\nwall_ms = {wall_ms}\n\
         [plugins.vendor.settings]\napi_url = {origin:?}\napi_key = \"vendor-key\"\napi_secret = \"vendor-secret\"\n\n"
    )
}

#[tokio::test]
async fn an_unavailable_provider_falls_back_and_cools_down() {
    let vendor = vendor().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[providers]\ndefault = \"vendor\"\nfallback = [\"loopback\"]\ncooldown_seconds = 2\n\n{}",
            vendor_toml(&vendor.origin, 2000)
        ),
        ..Default::default()
    })
    .await;

    // Healthy: the chosen provider serves.
    let attempt = attempt_call(&server).await;
    let (status, call) = (attempt.status, attempt.body);
    assert_eq!(
        (status, call["apiKey"].as_str()),
        (200, Some("vendor-key")),
        "{call}"
    );

    // The vendor answers 503: the call is served by the fallback, and the
    // vendor cools down.
    vendor.status.store(503, Ordering::SeqCst);
    let attempt = attempt_call(&server).await;
    let (status, call) = (attempt.status, attempt.body);
    assert_eq!(
        (status, call["apiKey"].as_str()),
        (200, Some("loopback")),
        "{call}"
    );
    assert_eq!(vendor.hits.load(Ordering::SeqCst), 2);
    server
        .wait_for_log("provider unavailable: cooling down, fallback serves its calls")
        .await;
    let (status, report) = server.heartbeat().await;
    assert_eq!(status, 200, "the fallback can serve: {report}");
    assert_eq!(report["providers"], true, "{report}");
    let cooling = report["plugins"]["vendor"]["cooling_down_seconds"]
        .as_u64()
        .unwrap();
    assert!((1..=2).contains(&cooling), "{report}");
    assert_eq!(report["plugins"]["loopback"]["cooling_down_seconds"], 0);

    // While it cools down, calls skip it without asking it.
    vendor.status.store(200, Ordering::SeqCst);
    let attempt = attempt_call(&server).await;
    let (_, call) = (attempt.status, attempt.body);
    assert_eq!(call["apiKey"], "loopback", "{call}");
    assert_eq!(vendor.hits.load(Ordering::SeqCst), 2);

    // After the cool-down it serves again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let attempt = attempt_call(&server).await;
    let (_, call) = (attempt.status, attempt.body);
    assert_eq!(call["apiKey"], "vendor-key", "{call}");
    assert_eq!(vendor.hits.load(Ordering::SeqCst), 3);
    let (_, report) = server.heartbeat().await;
    assert_eq!(
        report["plugins"]["vendor"]["cooling_down_seconds"], 0,
        "{report}"
    );
}

#[tokio::test]
async fn a_slow_provider_falls_back_within_its_wall_time() {
    let vendor = vendor().await;
    vendor.delay_ms.store(3000, Ordering::SeqCst);
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[providers]\ndefault = \"vendor\"\nfallback = [\"loopback\"]\n\n{}",
            vendor_toml(&vendor.origin, 300)
        ),
        ..Default::default()
    })
    .await;
    let started = std::time::Instant::now();
    let attempt = attempt_call(&server).await;
    let (status, call) = (attempt.status, attempt.body);
    assert_eq!(
        (status, call["apiKey"].as_str()),
        (200, Some("loopback")),
        "{call}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    server.wait_for_log("timed out").await;
}

#[tokio::test]
async fn without_fallback_an_unavailable_provider_is_a_clear_error() {
    let vendor = vendor().await;
    vendor.status.store(503, Ordering::SeqCst);
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[providers]\ndefault = \"vendor\"\n\n{}",
            vendor_toml(&vendor.origin, 2000)
        ),
        ..Default::default()
    })
    .await;
    assert_provider_error(&attempt_call(&server).await);
    // With nothing to fall back to, the provider is tried on every call.
    attempt_call(&server).await;
    assert_eq!(vendor.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn editing_config_toml_and_restarting_swaps_the_provider() {
    let vendor = vendor().await;
    let mut server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[providers]\ndefault = \"loopback\"\n\n{}",
            vendor_toml(&vendor.origin, 2000)
        ),
        ..Default::default()
    })
    .await;
    let before = call_flow(&server, None).await;
    assert_eq!(before.caller["apiKey"], "loopback");

    let config = std::fs::read_to_string(&server.config_path).unwrap();
    let edited = config.replace("default = \"loopback\"", "default = \"vendor\"");
    assert_ne!(config, edited);
    std::fs::write(&server.config_path, edited).unwrap();
    server.restart();

    let after = call_flow(&server, None).await;
    assert_eq!(after.caller["apiKey"], "vendor-key", "{}", after.caller);
    assert_eq!(after.callee["apiKey"], "vendor-key", "{}", after.callee);
    assert_eq!(after.caller["sessionId"], "vendor-session");
    // Bob's call placed before the swap is still listed as it was.
    let listed = before
        .device
        .on(&server.url)
        .send_verified("GET", "/calls?version=0", None)
        .await;
    listed.assert_status(200);
    assert_eq!(listed.json()["calls"][0]["apiKey"], "loopback");
}

#[tokio::test]
async fn a_plugin_built_for_wit_0_1_serves_calls_beside_0_2_plugins() {
    let legacy = crate::common::loopback_v0_1_wasm();
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[providers]\ndefault = \"legacy\"\nchannels.current = \"loopback\"\n\n\
             [plugins.legacy]\ncomponent = {legacy:?}\ngenerated_secrets = [\"secret\"]\n\n"
        ),
        ..Default::default()
    })
    .await;
    let old = call_flow(&server, None).await;
    let new = call_flow(&server, Some("current")).await;
    for call in [&old.caller, &old.callee, &new.caller, &new.callee] {
        assert_eq!(call["apiKey"], "loopback", "{call}");
    }
    assert_ne!(old.caller["sessionId"], new.caller["sessionId"]);
    let logs = server.logs();
    assert!(logs.contains("provider=loopback version=0.1.0"), "{logs}");
    assert!(logs.contains("provider=loopback version=0.2.0"), "{logs}");
}
