//! `kill -HUP` reloads `config.toml` while the server serves, tested through
//! the binary: a new provider and plugin, CORS and the push policy take
//! effect in the same process; a broken config is refused naming the key;
//! restart-only settings are reported and left; a call in flight during a
//! provider swap finishes on the provider it started on; a changed rate-limit
//! budget applies at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::fake_push::FakePush;
use crate::common::hawk::Device;
use crate::common::vendor::{attempt_call, call_flow};
use crate::common::{ServerOptions, TestServer, call_through_new_url, client};
use crate::provider_choice::{vendor, vendor_toml};

/// Every line that ends a reload, whether applied or refused.
const RELOAD_DONE: &str = "configuration reload";

/// Rewrites the server's config file with `edit` (which must change it),
/// sends SIGHUP, and waits until the server has logged that reload's end.
/// Returns the log lines of that reload.
async fn reload(server: &TestServer, edit: impl FnOnce(String) -> String) -> String {
    let config = std::fs::read_to_string(&server.config_path).unwrap();
    let edited = edit(config.clone());
    assert_ne!(config, edited, "the edit changes the config");
    std::fs::write(&server.config_path, edited).unwrap();
    signal_and_wait(server).await
}

async fn signal_and_wait(server: &TestServer) -> String {
    let before = server.logs();
    let done = before.matches(RELOAD_DONE).count();
    server.sighup();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let logs = server.logs();
        if logs.matches(RELOAD_DONE).count() > done {
            return logs[before.len()..].to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reload did not finish: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CORS preflight for `POST /registration` from `origin`: the origin the
/// server allows back, if any.
async fn preflight(server: &TestServer, origin: &str) -> Option<String> {
    let response = client()
        .request(reqwest::Method::OPTIONS, server.endpoint("/registration"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|value| value.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_reload_adds_a_plugin_and_swaps_the_default_provider_without_a_restart() {
    let vendor = vendor().await;
    let mut server = TestServer::start().await;
    let pid = server.pid();
    let before = call_flow(&server, None).await;
    assert_eq!(before.caller["apiKey"], "loopback");

    // Requests keep being answered while the reload compiles the new plugin.
    let reloading = Arc::new(AtomicBool::new(true));
    let poller = {
        let (url, reloading) = (server.endpoint("/__lbheartbeat__"), reloading.clone());
        tokio::spawn(async move {
            let (http, mut answered) = (client(), 0);
            while reloading.load(Ordering::SeqCst) {
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                answered += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered
        })
    };
    let logs = reload(&server, |config| {
        format!(
            "{config}\n[providers]\ndefault = \"vendor\"\n\n{}",
            vendor_toml(&vendor.origin, 2000)
        )
    })
    .await;
    reloading.store(false, Ordering::SeqCst);
    assert!(poller.await.unwrap() > 0);
    assert!(
        logs.contains("configuration reloaded changed=plugins.vendor, providers.default"),
        "{logs}"
    );
    assert!(
        logs.contains("plugin=vendor"),
        "the new plugin loads: {logs}"
    );

    let after = call_flow(&server, None).await;
    assert_eq!(after.caller["apiKey"], "vendor-key", "{}", after.caller);
    assert_eq!(after.callee["apiKey"], "vendor-key", "{}", after.callee);
    assert_eq!(vendor.hits.load(Ordering::SeqCst), 1);
    assert_eq!(server.pid(), pid);
    assert!(server.is_running());
    let (status, report) = server.heartbeat().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["plugins"]["vendor"]["state"], "ready", "{report}");
}

#[tokio::test]
async fn a_reload_changes_the_cors_origins() {
    let server = TestServer::start_with(ServerOptions {
        extra_toml: "[cors]\nallowed_origins = [\"https://old.example\"]\n\n".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        preflight(&server, "https://old.example").await.as_deref(),
        Some("https://old.example")
    );
    assert_eq!(preflight(&server, "https://new.example").await, None);

    reload(&server, |config| {
        config.replace("https://old.example", "https://new.example/")
    })
    .await;
    assert_eq!(
        preflight(&server, "https://new.example").await.as_deref(),
        Some("https://new.example")
    );
    assert_eq!(preflight(&server, "https://old.example").await, None);
}

#[tokio::test]
async fn a_reload_changes_the_push_policy() {
    let push = FakePush::start().await;
    let server = TestServer::start().await;
    // The default policy: only public https push URLs.
    let refused = client()
        .post(server.endpoint("/registration"))
        .json(&serde_json::json!({"simplePushURLs": {"calls": push.url("bob")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    let logs = reload(&server, |config| format!("{config}\n{}", push.config(2500))).await;
    assert!(
        logs.contains("changed=push.allowed_origins, push.timeout_ms"),
        "{logs}"
    );
    let bob = Device::register(&server.url, &push.url("bob")).await;
    call_through_new_url(&server, &bob).await;
    let pings = push.wait_for("bob", 1).await;
    assert_eq!(pings[0].kind, "push");
}

#[tokio::test]
async fn a_broken_config_is_refused_naming_the_key_and_the_old_one_keeps_serving() {
    let server = TestServer::start_with(ServerOptions {
        extra_toml: "[cors]\nallowed_origins = [\"https://old.example\"]\n\n".into(),
        ..Default::default()
    })
    .await;
    let original = std::fs::read_to_string(&server.config_path).unwrap();
    let cases = [
        // An unknown key.
        (
            "[cors]\nallowed_origins = [\"https://new.example\"]\nmax_age = 10\n\n",
            "max_age",
        ),
        // An invalid value.
        (
            "[cors]\nallowed_origins = [\"https://new.example\"]\n\n\
             [providers]\ncooldown_seconds = 0\n\n",
            "providers.cooldown_seconds",
        ),
        // A valid file whose new plugin cannot load: nothing of it applies,
        // the CORS change beside it neither.
        (
            "[cors]\nallowed_origins = [\"https://new.example\"]\n\n\
             [plugins.broken]\ncomponent = \"missing.wasm\"\n\n",
            "plugins.broken.component",
        ),
    ];
    for (section, key) in cases {
        let logs = reload(&server, |_| {
            original.replace(
                "[cors]\nallowed_origins = [\"https://old.example\"]\n\n",
                section,
            )
        })
        .await;
        let refusal = logs
            .lines()
            .find(|line| line.contains("configuration reload refused"))
            .unwrap_or_else(|| panic!("{key}: refused: {logs}"));
        assert!(refusal.contains("ERROR"), "{refusal}");
        assert!(refusal.contains(key), "{key} named: {refusal}");
        assert_eq!(
            preflight(&server, "https://old.example").await.as_deref(),
            Some("https://old.example"),
            "{key}"
        );
        assert_eq!(
            preflight(&server, "https://new.example").await,
            None,
            "{key}"
        );
        assert_eq!(attempt_call(&server).await.status, 200, "{key}");
    }

    // Fixed, the same file applies.
    let logs = reload(&server, |_| {
        original.replace("https://old.example", "https://new.example")
    })
    .await;
    assert!(
        logs.contains("configuration reloaded changed=cors.allowed_origins"),
        "{logs}"
    );
    assert!(preflight(&server, "https://new.example").await.is_some());
}

#[tokio::test]
async fn restart_only_settings_are_reported_and_left_as_they_are() {
    let mut server = TestServer::start().await;
    let pid = server.pid();
    let logs = reload(&server, |config| {
        let moved = config
            .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
            .replace(
                "[database]\nurl = ",
                "[database]\nurl = \"sqlite://elsewhere.db\"\n# was ",
            );
        format!("{moved}\n[cors]\nallowed_origins = [\"https://new.example\"]\n")
    })
    .await;
    for key in ["server.listen", "database.url"] {
        let warning = logs
            .lines()
            .find(|line| line.contains(&format!("key={key}")))
            .unwrap_or_else(|| panic!("{key} reported: {logs}"));
        assert!(warning.contains("WARN"), "{warning}");
        assert!(
            warning.contains("cannot change while the server runs"),
            "{warning}"
        );
    }
    // What can change did; the rest is as it was.
    assert!(
        logs.contains("configuration reloaded changed=cors.allowed_origins"),
        "{logs}"
    );
    assert!(preflight(&server, "https://new.example").await.is_some());
    let (status, report) = server.heartbeat().await;
    assert_eq!(
        status, 200,
        "still on the old address and database: {report}"
    );
    assert_eq!(attempt_call(&server).await.status, 200);
    assert!(!server.dir.join("elsewhere.db").exists());
    assert_eq!(server.pid(), pid);
    assert!(server.is_running());
}

#[tokio::test]
async fn a_call_in_flight_during_a_provider_swap_finishes_on_its_provider() {
    let vendor = vendor().await;
    vendor.delay_ms.store(2000, Ordering::SeqCst);
    let server = Arc::new(
        TestServer::start_with(ServerOptions {
            extra_toml: format!(
                "[providers]\ndefault = \"vendor\"\n\n{}",
                vendor_toml(&vendor.origin, 15_000)
            ),
            ..Default::default()
        })
        .await,
    );
    let in_flight = {
        let server = server.clone();
        tokio::spawn(async move { attempt_call(&server).await })
    };
    // The call is at the vendor, which answers in 2 s (the plugin gives up after 3).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while vendor.hits.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the call reached no vendor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let logs = reload(&server, |config| {
        config.replace("default = \"vendor\"", "default = \"loopback\"")
    })
    .await;
    assert!(
        logs.contains("configuration reloaded changed=providers.default"),
        "{logs}"
    );
    assert!(
        !in_flight.is_finished(),
        "the reload did not wait for the call"
    );
    // New calls go to the new default at once.
    let new = attempt_call(&server).await;
    assert_eq!(new.body["apiKey"], "loopback", "{}", new.body);

    let old = in_flight.await.unwrap();
    assert_eq!(old.status, 200, "{}\n{}", old.body, server.logs());
    assert_eq!(old.body["apiKey"], "vendor-key", "{}", old.body);
    assert_eq!(old.body["sessionId"], "vendor-session", "{}", old.body);
}

/// `POST /registration` without credentials from this test: its status.
async fn register_status(server: &TestServer) -> u16 {
    client()
        .post(server.endpoint("/registration"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_reload_changes_the_rate_limits() {
    let server = TestServer::start_with(ServerOptions {
        extra_toml: "[rate_limits]\nregistration_per_ip = { per_minute = 1, burst = 2 }\n\n".into(),
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        assert_eq!(register_status(&server).await, 200);
    }
    assert_eq!(register_status(&server).await, 429);

    let logs = reload(&server, |config| {
        config.replace(
            "registration_per_ip = { per_minute = 1, burst = 2 }",
            "registration_per_ip = { per_minute = 1, burst = 50 }",
        )
    })
    .await;
    assert!(
        logs.contains("configuration reloaded changed=rate_limits.registration_per_ip.burst"),
        "{logs}"
    );
    // A changed budget starts full at its new size.
    for _ in 0..50 {
        assert_eq!(register_status(&server).await, 200);
    }
    assert_eq!(register_status(&server).await, 429);
}
