//! The outbound network policy, black-box: the real binary resolving host
//! names through a fake DNS server on 127.0.0.1 (`net.resolver`), so that a
//! public-looking name can be pointed at a loopback address at will.

use crate::common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::providers::{self, call_setup};
use common::fake_dns::FakeDns;
use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer, call_through_new_url, client};
use loop_server::config::PluginConfig;
use serde_json::{Value, json};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// A public address the fake DNS hands out while a name should look public.
/// Nothing ever connects to it: every connection resolves afresh.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 4);

/// `http://<name>:<port of the fake push server>`
fn origin_on(name: &str, push: &FakePush) -> String {
    let port = push.origin.rsplit(':').next().unwrap();
    format!("http://{name}:{port}")
}

async fn start(dns: &FakeDns, push_toml: &str) -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: format!("{}{push_toml}", dns.config()),
        ..ServerOptions::default()
    })
    .await
}

async fn register(server: &TestServer, push_url: &str) -> (u16, Value) {
    let response = client()
        .post(server.endpoint("/registration"))
        .json(&json!({"simplePushURLs": {"calls": push_url}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn assert_refused_as_private(server: &TestServer, push_url: &str) {
    let (status, error) = register(server, push_url).await;
    assert_eq!((status, &error["errno"]), (400, &json!(107)), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("simplePushURLs.calls:") && message.contains("push.allow_private"),
        "{message}"
    );
}

#[tokio::test]
async fn a_name_rebound_to_loopback_is_refused_at_registration_and_at_ping_time() {
    let (dns, push) = (FakeDns::start().await, FakePush::start().await);
    let name = "push.example.test";
    let origin = origin_on(name, &push);
    let server = start(&dns, &format!("[push]\nallowed_origins = [{origin:?}]\n\n")).await;
    let url = format!("{origin}/push/bob");

    // Listed by the operator, but a host name: its loopback answer is refused.
    dns.set(name, &[LOOPBACK]);
    assert_refused_as_private(&server, &url).await;
    // One private answer among public ones is enough.
    dns.set(name, &[PUBLIC, LOOPBACK]);
    assert_refused_as_private(&server, &url).await;

    // Public at registration, loopback at ping time: DNS rebinding.
    dns.set(name, &[PUBLIC]);
    let bob = Device::register(&server.url, &url).await;
    dns.set(name, &[LOOPBACK]);
    let asked = dns.queries_for(name);
    call_through_new_url(&server, &bob).await;
    let logs = server
        .wait_for_log("callee notified sent=0 failed=0 refused=1")
        .await;
    assert!(
        logs.contains("push refused: no address the push policy allows"),
        "{logs}"
    );
    assert!(dns.queries_for(name) > asked, "the ping resolved afresh");
    assert!(push.pings().is_empty(), "{:?}", push.pings());
    assert!(!logs.contains("/push/bob"), "push URLs are not logged");
}

#[tokio::test]
async fn allow_private_lets_push_names_resolve_to_private_addresses() {
    let (dns, push) = (FakeDns::start().await, FakePush::start().await);
    let name = "push.internal.test";
    let origin = origin_on(name, &push);
    let server = start(
        &dns,
        &format!("[push]\nallowed_origins = [{origin:?}]\nallow_private = true\n\n"),
    )
    .await;
    dns.set(name, &[LOOPBACK]);
    let bob = Device::register(&server.url, &format!("{origin}/push/bob")).await;
    call_through_new_url(&server, &bob).await;
    let pings = push.wait_for("bob", 1).await;
    assert_eq!(pings[0].kind, "push");
}

#[tokio::test]
async fn a_stored_push_url_is_not_pinged_once_its_origin_is_no_longer_allowed() {
    let push = FakePush::start().await;
    let mut server = TestServer::start_with(ServerOptions {
        extra_toml: push.config(2000),
        ..ServerOptions::default()
    })
    .await;
    let bob = Device::register(&server.url, &format!("{}/push/bob?t=SECRET", push.origin)).await;

    // The operator removes the origin; the URL stays stored.
    let config = std::fs::read_to_string(&server.config_path).unwrap();
    let tightened = config.replace(
        &format!("allowed_origins = [{:?}]", push.origin),
        "allowed_origins = [\"https://push.example.com\"]",
    );
    assert_ne!(config, tightened);
    std::fs::write(&server.config_path, tightened).unwrap();
    server.restart();

    call_through_new_url(&server, &bob.on(&server.url)).await;
    let logs = server
        .wait_for_log("callee notified sent=0 failed=0 refused=1")
        .await;
    assert!(
        logs.contains("push refused: the push policy no longer allows this URL"),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("origin={}", push.origin)),
        "the origin is logged: {logs}"
    );
    assert!(
        !logs.contains("SECRET"),
        "the path and query are not: {logs}"
    );
    assert!(push.pings().is_empty(), "{:?}", push.pings());
}

/// A vendor API on 127.0.0.1 that counts its `POST /v1/sessions`.
async fn fake_vendor() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/v1/sessions",
        axum::routing::post(move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"sessionId": "vendor-session-1"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

fn vendor(origin: &str, allow_private: bool) -> PluginConfig {
    let mut settings = toml::Table::new();
    settings.insert("api_url".into(), origin.into());
    settings.insert("api_key".into(), "key-1".into());
    PluginConfig {
        allowed_hosts: vec![origin.to_string()],
        allow_private,
        generated_secrets: vec!["api_secret".into()],
        settings,
        ..providers::plugin(common::workspace_root().join("tests/plugins/vendor/vendor.wasm"))
    }
}

#[tokio::test]
async fn a_name_trusted_for_one_use_is_not_trusted_for_another() {
    let dns = FakeDns::start().await;
    let name = "vendor.example.test";
    dns.set(name, &[LOOPBACK]);
    let (port, hits) = fake_vendor().await;
    let origin = format!("http://{name}:{port}");

    // Plugins: only the one with allow_private reaches the loopback answer.
    let dir = tempfile::tempdir().unwrap();
    let mut config = providers::config(
        dir.path(),
        vec![
            ("loopback", providers::loopback()),
            ("trusted", vendor(&origin, true)),
            ("untrusted", vendor(&origin, false)),
        ],
    );
    config.net.resolver = Some(dns.addr.clone());
    let runtime = providers::load(&config).await.unwrap();
    runtime
        .setup_call("untrusted", call_setup("c"))
        .await
        .unwrap_err();
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "plugins.untrusted got through"
    );
    let setup = runtime
        .setup_call("trusted", call_setup("c"))
        .await
        .unwrap();
    assert_eq!(setup.session_id, "vendor-session-1");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Push, in a server whose plugin trusts the name: push URLs on it are
    // still refused, at registration and at ping time.
    let push = FakePush::start().await;
    let push_origin = origin_on(name, &push);
    let plugin = format!(
        "[plugins.vendor]\ncomponent = {:?}\nallowed_hosts = [{push_origin:?}]\nallow_private = true\n\n",
        common::workspace_root()
            .join("tests/plugins/vendor/vendor.wasm")
            .display()
            .to_string()
    );
    let server = start(
        &dns,
        &format!("[push]\nallowed_origins = [{push_origin:?}]\n\n{plugin}"),
    )
    .await;
    let url = format!("{push_origin}/push/bob");
    assert_refused_as_private(&server, &url).await;

    dns.set(name, &[PUBLIC]);
    let bob = Device::register(&server.url, &url).await;
    dns.set(name, &[LOOPBACK]);
    call_through_new_url(&server, &bob).await;
    server
        .wait_for_log("callee notified sent=0 failed=0 refused=1")
        .await;
    assert!(push.pings().is_empty(), "{:?}", push.pings());
}

#[tokio::test]
async fn the_verifier_reaches_a_private_address_only_with_fxa_allow_private() {
    use base64::Engine;
    let dns = FakeDns::start().await;
    let name = "verifier.example.test";
    dns.set(name, &[LOOPBACK]);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/v2",
        axum::routing::post(move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"status": "failure", "reason": "test verifier"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let audience = "https://loop.example.test";
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"aud": audience}).to_string());
    let assertion = format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln");
    for (allow_private, status) in [(false, 503), (true, 401)] {
        let fxa = format!(
            "[fxa]\nverifier_url = \"http://{name}:{port}/v2\"\naudiences = [{audience:?}]\n\
             trusted_issuers = [\"issuer.example.test\"]\nallow_private = {allow_private}\n\n"
        );
        let server = start(&dns, &fxa).await;
        let response = client()
            .post(server.endpoint("/v0/registration"))
            .header("Authorization", format!("BrowserID {assertion}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            status,
            "fxa.allow_private = {allow_private}"
        );
        let reached = usize::from(allow_private);
        assert_eq!(hits.load(Ordering::SeqCst), reached);
        if !allow_private {
            let logs = server.wait_for_log("BrowserID verifier refused").await;
            assert!(logs.contains("fxa.allow_private is off"), "{logs}");
        }
    }
}

/// Two lookup slots, two lookups hanging on a DNS server that never
/// answers: other registrations go on, a third lookup is refused at once
/// (503/201, to retry) rather than queueing behind them, and the slots come
/// back when the hanging lookups time out.
#[tokio::test]
async fn hanging_name_lookups_are_bounded_and_hold_up_no_other_registration() {
    let (dns, push) = (FakeDns::start().await, FakePush::start().await);
    let (slow, fast) = ("slow.example.test", "fast.example.test");
    dns.silence(slow);
    dns.set(fast, &[PUBLIC]);
    let (slow_origin, fast_origin) = (origin_on(slow, &push), origin_on(fast, &push));
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[net]\nresolver = {:?}\nmax_concurrent_lookups = 2\n\n\
             [push]\nallowed_origins = [{slow_origin:?}, {fast_origin:?}, {:?}]\n\n",
            dns.addr, push.origin
        ),
        ..ServerOptions::default()
    })
    .await;
    let server = Arc::new(server);

    let hanging: Vec<_> = (0..2)
        .map(|i| {
            let server = server.clone();
            let url = format!("{slow_origin}/push/{i}");
            tokio::spawn(async move { register(&server, &url).await })
        })
        .collect();
    // Both lookups have reached the DNS server (a hang guard, not a timing).
    for _ in 0..500 {
        if dns.queries_for(slow) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(dns.queries_for(slow) >= 2, "the slow lookups never started");

    // A push URL needing no lookup, and no push URL at all: served.
    let (status, error) = register(&server, &format!("{}/push/literal", push.origin)).await;
    assert_eq!(status, 200, "{error}");
    let (status, error) = {
        let response = client()
            .post(server.endpoint("/registration"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(status, 200, "{error}");

    // A third lookup: no slot, refused without waiting for the hanging ones.
    let response = client()
        .post(server.endpoint("/registration"))
        .json(&json!({"simplePushURLs": {"calls": format!("{fast_origin}/push/fast")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["errno"], 201, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("net.max_concurrent_lookups"),
        "{error}"
    );
    assert!(
        hanging.iter().all(|lookup| !lookup.is_finished()),
        "refused only after the hanging lookups ended"
    );
    assert_eq!(dns.queries_for(fast), 0, "the third name was not looked up");

    // The hanging lookups time out; their slots serve the next one.
    for lookup in hanging {
        let (status, error) = lookup.await.unwrap();
        assert_eq!((status, &error["errno"]), (400, &json!(107)), "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("does not resolve"),
            "{error}"
        );
    }
    let (status, error) = register(&server, &format!("{fast_origin}/push/fast")).await;
    assert_eq!(status, 200, "{error}");
}

#[test]
fn bad_net_keys_are_configuration_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = format!(
        "[plugins.loopback]\ncomponent = {:?}\ngenerated_secrets = [\"secret\"]\n",
        common::loopback_wasm().display().to_string()
    );
    for (toml, key) in [
        ("[net]\nresolver = \"dns.example.com\"\n", "net.resolver"),
        ("[net]\nresolvers = \"127.0.0.1\"\n", "resolvers"),
        ("[push]\nallow_private = \"yes\"\n", "push.allow_private"),
        ("[fxa]\nallow_private = 1\n", "fxa.allow_private"),
    ] {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("{toml}{plugin}")).unwrap();
        let output = std::process::Command::new(common::server_binary())
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{toml}");
        assert!(stderr.contains(key), "{toml}: {stderr}");
    }
}
