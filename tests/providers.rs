//! The provider plugin runtime with real components: the committed loopback
//! provider and the hostile test plugins under tests/plugins/, driven through
//! the library API and through the real binary.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::response::IntoResponse;
use loop_server::config::{Config, PluginConfig, PluginLimits};
use loop_server::error::AppError;
use loop_server::providers::{CallSetupRequest, CallType, ProviderError, ProviderRuntime, Role};
use loop_server::secrets::Secrets;

fn test_plugin(name: &str) -> PathBuf {
    common::workspace_root().join(format!("tests/plugins/{name}/{name}.wasm"))
}

/// A plugin table with no settings, hosts or secrets and the default limits.
pub(crate) fn plugin(component: PathBuf) -> PluginConfig {
    PluginConfig {
        component,
        allowed_hosts: Vec::new(),
        allow_private: false,
        limits: PluginLimits::default(),
        generated_secrets: Vec::new(),
        settings: toml::Table::new(),
    }
}

pub(crate) fn loopback() -> PluginConfig {
    PluginConfig {
        generated_secrets: vec!["secret".into()],
        ..plugin(common::loopback_wasm())
    }
}

pub(crate) fn config(data_dir: &Path, plugins: Vec<(&str, PluginConfig)>) -> Config {
    let mut config = Config::default();
    config.server.data_dir = data_dir.to_path_buf();
    for (name, plugin) in plugins {
        config.plugins.insert(name.into(), plugin);
    }
    config
}

/// The runtime as the server loads it, with the server's outbound clients.
pub(crate) async fn load(config: &Config) -> anyhow::Result<ProviderRuntime> {
    let net = loop_server::net::Net::new(&config.net)?;
    ProviderRuntime::load(config, &Secrets::new(&config.server.data_dir), &net).await
}

/// A call setup between Alice and Bob, as the server asks for one.
pub(crate) fn call_setup(id: &str) -> CallSetupRequest {
    CallSetupRequest {
        call_id: id.into(),
        call_type: CallType::AudioVideo,
        caller: "alice@example.com".into(),
        callee: "bob@example.com".into(),
        channel: None,
        caller_display_name: "Alice".into(),
        callee_display_name: "Bob".into(),
        token_lifetime_seconds: 3600,
    }
}

fn plugin_message(err: &ProviderError) -> &str {
    match err {
        ProviderError::Plugin { message, .. } | ProviderError::TimedOut { message, .. } => message,
        other => panic!("expected a plugin failure, got {other:?}"),
    }
}

#[tokio::test]
async fn loopback_issues_sessions_and_tokens_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), vec![("loopback", loopback())]);
    let runtime = load(&config).await.unwrap();
    assert_eq!(runtime.provider_for(None), "loopback");
    let info = runtime.describe("loopback").unwrap();
    assert_eq!(info.name, "loopback");
    assert!(info.verifies_tokens);

    let setup = runtime
        .setup_call("loopback", call_setup("call-1"))
        .await
        .unwrap();
    assert!(
        setup.session_id.len() >= 20,
        "session id {:?} is too short to be unguessable",
        setup.session_id
    );
    assert_eq!(setup.api_key, "loopback");
    assert_ne!(setup.caller_token, setup.callee_token);

    let now = loop_server::clock::now() as u64;
    let grant = runtime
        .verify_token("loopback", &setup.caller_token, &setup.session_id)
        .await
        .unwrap();
    assert_eq!(grant.session_id, setup.session_id);
    assert_eq!(grant.identity, "alice@example.com");
    assert_eq!(grant.role, Role::Publisher);
    assert!(
        (now + 3590..=now + 3610).contains(&grant.expires_at),
        "expires_at {}",
        grant.expires_at
    );
    let grant = runtime
        .verify_token("loopback", &setup.callee_token, &setup.session_id)
        .await
        .unwrap();
    assert_eq!(grant.identity, "bob@example.com");

    // Fresh instance per call: two calls never share a session id.
    let other = runtime
        .setup_call("loopback", call_setup("call-2"))
        .await
        .unwrap();
    assert_ne!(other.session_id, setup.session_id);

    // A token for another session is refused.
    let err = runtime
        .verify_token("loopback", &setup.caller_token, &other.session_id)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");

    // Any tampered character is refused.
    let token = setup.caller_token.clone();
    for position in [3, token.len() / 2, token.len() - 2] {
        let mut bytes = token.clone().into_bytes();
        bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        let err = runtime
            .verify_token("loopback", &tampered, &setup.session_id)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Rejected { .. }),
            "tampered at {position}: {err:?}"
        );
    }
    let err = runtime
        .verify_token("loopback", "garbage", &setup.session_id)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");

    // An expired token is refused.
    let short = CallSetupRequest {
        token_lifetime_seconds: 1,
        ..call_setup("call-3")
    };
    let setup3 = runtime.setup_call("loopback", short).await.unwrap();
    runtime
        .verify_token("loopback", &setup3.caller_token, &setup3.session_id)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let err = runtime
        .verify_token("loopback", &setup3.caller_token, &setup3.session_id)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");

    // The generated secret is kept in the data dir: a restart verifies old tokens.
    assert!(dir.path().join("secrets/plugin-loopback-secret").exists());
    drop(runtime);
    let restarted = load(&config).await.unwrap();
    restarted
        .verify_token("loopback", &setup.caller_token, &setup.session_id)
        .await
        .unwrap();

    // A different secret does not verify them.
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = load(&self::config(
        other_dir.path(),
        vec![("loopback", loopback())],
    ))
    .await
    .unwrap();
    let err = stranger
        .verify_token("loopback", &setup.caller_token, &setup.session_id)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
}

#[tokio::test]
async fn loopback_without_a_secret_is_misconfigured() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        vec![("loopback", plugin(common::loopback_wasm()))],
    );
    let runtime = load(&config).await.unwrap();
    let err = runtime
        .setup_call("loopback", call_setup("call-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Misconfigured { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("secret"), "{err}");
}

/// Runs `hostile` alongside a stream of loopback calls that must all succeed.
async fn hostile_call_fails(runtime: &Arc<ProviderRuntime>, hostile: &str) -> ProviderError {
    let mut well_behaved = Vec::new();
    for i in 0..8 {
        let runtime = runtime.clone();
        well_behaved.push(tokio::spawn(async move {
            for j in 0..10 {
                runtime
                    .setup_call("loopback", call_setup(&format!("good-{i}-{j}")))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    let err = runtime
        .setup_call(hostile, call_setup("hostile"))
        .await
        .unwrap_err();
    for task in well_behaved {
        task.await
            .expect("loopback calls keep succeeding next to a hostile plugin");
    }
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_give_provider_errors_while_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut huge = plugin(test_plugin("huge"));
    // Room for its 10 MiB string, so the host's return-size check is what stops it.
    huge.limits.memory_mib = 64;
    let config = config(
        dir.path(),
        vec![
            ("loopback", loopback()),
            ("spin", plugin(test_plugin("spin"))),
            ("hog", plugin(test_plugin("hog"))),
            ("trap", plugin(test_plugin("trap"))),
            ("huge", huge),
        ],
    );
    let runtime = Arc::new(load(&config).await.unwrap());

    let err = hostile_call_fails(&runtime, "spin").await;
    assert!(
        plugin_message(&err).contains("CPU budget of 100 ms"),
        "{err}"
    );
    let err = hostile_call_fails(&runtime, "hog").await;
    assert!(
        plugin_message(&err).contains("memory limit of 16 MiB"),
        "{err}"
    );
    let err = hostile_call_fails(&runtime, "trap").await;
    assert!(plugin_message(&err).contains("unreachable"), "{err}");
    let err = hostile_call_fails(&runtime, "huge").await;
    assert!(
        plugin_message(&err).contains("session id of 10485760 bytes"),
        "{err}"
    );

    // Clients see 503 / errno 201 with Retry-After.
    let response = AppError::from(err).into_response();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["errno"], 201);

    // The runtime is healthy for loopback and keeps counting the failures.
    runtime
        .setup_call("loopback", call_setup("after"))
        .await
        .unwrap();
    let health = runtime.health();
    let spin = health.iter().find(|h| h.plugin == "spin").unwrap();
    assert_eq!((spin.failures, spin.consecutive_failures), (1, 1));
    let good = health.iter().find(|h| h.plugin == "loopback").unwrap();
    assert_eq!(good.failures, 0);
    assert!(good.healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_cpu_budget_and_wall_time_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut spin = plugin(test_plugin("spin"));
    spin.limits.cpu_ms = 20;
    let mut slow = plugin(test_plugin("spin"));
    slow.limits.cpu_ms = 10_000;
    slow.limits.wall_ms = 50;
    let config = config(
        dir.path(),
        vec![("loopback", loopback()), ("spin", spin), ("slow", slow)],
    );
    let runtime = load(&config).await.unwrap();
    let err = runtime
        .setup_call("spin", call_setup("c"))
        .await
        .unwrap_err();
    assert!(
        plugin_message(&err).contains("CPU budget of 20 ms"),
        "{err}"
    );
    let err = runtime
        .setup_call("slow", call_setup("c"))
        .await
        .unwrap_err();
    assert!(
        plugin_message(&err).contains("wall-time budget of 50 ms"),
        "{err}"
    );
}

/// A real HTTP server on 127.0.0.1 standing in for a vendor API; counts the
/// requests that reach it.
async fn fake_vendor() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::{get, post};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let (h1, h2) = (hits.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/secret",
            get(move || async move {
                h1.fetch_add(1, Ordering::SeqCst);
                "snooped-body"
            }),
        )
        .route(
            "/v1/sessions",
            post(move || async move {
                h2.fetch_add(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({"sessionId": "vendor-session-1"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn http_reaches_only_allowed_origins() {
    use std::sync::atomic::Ordering;
    let (origin, hits) = fake_vendor().await;
    let dir = tempfile::tempdir().unwrap();
    let target = toml::Value::String(format!("{origin}/secret"));
    let mut allowed = plugin(test_plugin("snoop"));
    allowed.allowed_hosts = vec![origin.clone()];
    allowed.settings.insert("target".into(), target.clone());
    let mut denied = plugin(test_plugin("snoop"));
    denied.settings.insert("target".into(), target.clone());
    // Same host, another port: not the same origin.
    let mut other_port = plugin(test_plugin("snoop"));
    other_port.allowed_hosts = vec!["http://127.0.0.1:1".into()];
    other_port.settings.insert("target".into(), target);
    let config = config(
        dir.path(),
        vec![
            ("loopback", loopback()),
            ("allowed", allowed),
            ("denied", denied),
            ("other-port", other_port),
        ],
    );
    let runtime = load(&config).await.unwrap();

    for name in ["denied", "other-port"] {
        let err = runtime.setup_call(name, call_setup("c")).await.unwrap_err();
        match &err {
            ProviderError::Unavailable { message, .. } => {
                assert!(
                    message.contains("denied") && message.contains("allowed_hosts"),
                    "{message}"
                )
            }
            other => panic!("{name}: expected the host's denial, got {other:?}"),
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a denied request must not reach the server"
    );

    // snoop's create-session succeeds with the body; its issue-token then refuses.
    let err = runtime
        .setup_call("allowed", call_setup("c"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected { message, .. } if message.contains("issues no tokens")),
        "{err:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn vendor_plugin_creates_sessions_over_http() {
    let (origin, hits) = fake_vendor().await;
    let dir = tempfile::tempdir().unwrap();
    let mut vendor = plugin(test_plugin("vendor"));
    vendor.allowed_hosts = vec![origin.clone()];
    vendor
        .settings
        .insert("api_url".into(), toml::Value::String(origin));
    vendor.settings.insert("api_key".into(), "key-1".into());
    vendor.generated_secrets = vec!["api_secret".into()];
    let config = config(
        dir.path(),
        vec![("loopback", loopback()), ("vendor", vendor)],
    );
    let runtime = load(&config).await.unwrap();
    let setup = runtime.setup_call("vendor", call_setup("c")).await.unwrap();
    assert_eq!(setup.session_id, "vendor-session-1");
    assert_eq!(setup.api_key, "key-1");
    assert!(
        setup.caller_token.starts_with("vt1."),
        "{}",
        setup.caller_token
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn nested_settings_tables_reach_plugins_as_dotted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut echo = plugin(test_plugin("settings-echo"));
    let nested: toml::Table = toml::from_str(
        "api_key = \"top\"\n[channels.beta]\napi_key = \"beta-key\"\nlimits = [1, 2]\n\
         [channels.beta.deep]\nflag = true\n",
    )
    .unwrap();
    echo.settings = nested;
    let config = config(dir.path(), vec![("loopback", loopback()), ("echo", echo)]);
    let runtime = load(&config).await.unwrap();
    let ask = |identity: &str| CallSetupRequest {
        caller: identity.into(),
        callee: identity.into(),
        ..call_setup("c")
    };
    let seen = runtime
        .setup_call("echo", ask("channels.beta.api_key"))
        .await
        .unwrap();
    // keys() lists the dotted names, get() reads them; arrays keep their TOML spelling.
    assert_eq!(
        seen.session_id,
        "api_key=top;channels.beta.api_key=beta-key;channels.beta.deep.flag=true;channels.beta.limits=[1, 2]"
    );
    assert_eq!(seen.caller_token, "beta-key");
}

#[tokio::test]
async fn plugins_see_their_own_settings_and_never_another_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = plugin(test_plugin("settings-echo"));
    a.settings.insert("color".into(), "red".into());
    a.settings.insert("count".into(), toml::Value::Integer(42));
    a.settings
        .insert("enabled".into(), toml::Value::Boolean(true));
    a.generated_secrets = vec!["key".into()];
    let mut b = plugin(test_plugin("settings-echo"));
    b.settings.insert("color".into(), "blue".into());
    b.settings.insert("only_b".into(), "b-secret".into());
    b.generated_secrets = vec!["key".into()];
    let config = config(
        dir.path(),
        vec![("loopback", loopback()), ("echo-a", a), ("echo-b", b)],
    );
    let runtime = load(&config).await.unwrap();

    let ask = |caller: &str, callee: &str| CallSetupRequest {
        caller: caller.into(),
        callee: callee.into(),
        ..call_setup("c")
    };
    let seen_a = runtime
        .setup_call("echo-a", ask("color", "color"))
        .await
        .unwrap()
        .session_id;
    let seen_b = runtime
        .setup_call("echo-b", ask("color", "color"))
        .await
        .unwrap()
        .session_id;
    let parse = |seen: &str| -> std::collections::BTreeMap<String, String> {
        seen.split(';')
            .map(|kv| kv.split_once('=').unwrap())
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    };
    let (a, b) = (parse(&seen_a), parse(&seen_b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        ["color", "count", "enabled", "key"]
    );
    assert_eq!(
        (
            a["color"].as_str(),
            a["count"].as_str(),
            a["enabled"].as_str()
        ),
        ("red", "42", "true")
    );
    assert_eq!(b.keys().collect::<Vec<_>>(), ["color", "key", "only_b"]);
    assert_eq!(b["color"], "blue");
    // Each gets its own generated secret, and neither sees loopback's.
    assert_eq!(a["key"].len(), 64);
    assert_ne!(a["key"], b["key"]);
    assert!(!seen_a.contains("secret=") && !seen_b.contains("secret="));

    // Asking by name does not reach another table either.
    let err = runtime
        .setup_call("echo-a", ask("color", "only_b"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    let err = runtime
        .setup_call("echo-a", ask("color", "secret"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    let ok = ask("color", "count");
    let setup = runtime.setup_call("echo-a", ok).await.unwrap();
    assert_eq!(
        (setup.caller_token.as_str(), setup.callee_token.as_str()),
        ("red", "42")
    );
}

#[tokio::test]
async fn a_warm_compile_cache_restart_does_not_recompile() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        vec![
            ("loopback", loopback()),
            ("trap", plugin(test_plugin("trap"))),
            // The same component twice is compiled once.
            ("trap-again", plugin(test_plugin("trap"))),
        ],
    );
    let cold = load(&config).await.unwrap();
    assert_eq!(counts(&cold), (2, 0, 0));
    drop(cold);
    // Files with a valid MAC load without compiling.
    let warm = load(&config).await.unwrap();
    assert_eq!(counts(&warm), (0, 2, 0));
    warm.setup_call("loopback", call_setup("c")).await.unwrap();

    // A damaged cache entry is recompiled, not trusted.
    for entry in std::fs::read_dir(dir.path().join("plugin-cache")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a compiled component").unwrap();
    }
    drop(warm);
    let repaired = load(&config).await.unwrap();
    assert_eq!(counts(&repaired), (2, 0, 2));
    repaired
        .setup_call("loopback", call_setup("c"))
        .await
        .unwrap();
}

/// (compiled, cache hits, cache entries rejected) of a runtime's start.
fn counts(runtime: &ProviderRuntime) -> (u64, u64, u64) {
    let stats = runtime.stats();
    (stats.compiled, stats.cache_hits, stats.cache_rejected)
}

/// The compile cache file of `component` (named by the component's SHA-256).
fn cache_file(data_dir: &Path, component: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(component).unwrap()));
    let matching: Vec<PathBuf> = std::fs::read_dir(data_dir.join("plugin-cache"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with(&digest) && name.ends_with(".cwasm")
        })
        .collect();
    assert_eq!(matching.len(), 1, "{matching:?}");
    matching.into_iter().next().unwrap()
}

#[tokio::test]
async fn compiled_code_in_the_cache_is_loaded_only_with_the_servers_mac() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        vec![
            ("loopback", loopback()),
            ("trap", plugin(test_plugin("trap"))),
        ],
    );
    drop(load(&config).await.unwrap());
    // Owner-only: other local users can neither read nor plant compiled code.
    let cache = dir.path().join("plugin-cache");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let loopback_file = cache_file(dir.path(), &common::loopback_wasm());
    let trap_file = cache_file(dir.path(), &test_plugin("trap"));

    // One flipped byte anywhere (here in the middle of the compiled code).
    let mut bytes = std::fs::read(&loopback_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&loopback_file, &bytes).unwrap();
    let runtime = load(&config).await.unwrap();
    assert_eq!(counts(&runtime), (1, 1, 1));
    runtime
        .setup_call("loopback", call_setup("c"))
        .await
        .unwrap();
    drop(runtime);
    // The rejected file was replaced by an authentic one.
    assert_eq!(mode(&loopback_file), 0o600);
    let runtime = load(&config).await.unwrap();
    assert_eq!(counts(&runtime), (0, 2, 0));
    drop(runtime);

    // Authentic compiled code for another component, planted under trap's
    // name: wasmtime would accept it (same engine), and the trap plugin would
    // run loopback's code. The MAC covers the name, so it is refused.
    std::fs::copy(&loopback_file, &trap_file).unwrap();
    let runtime = load(&config).await.unwrap();
    assert_eq!(counts(&runtime), (1, 1, 1));
    let err = runtime
        .setup_call("trap", call_setup("c"))
        .await
        .unwrap_err();
    assert!(plugin_message(&err).contains("unreachable"), "{err}");
    drop(runtime);

    // A FIFO planted under its name is refused (reading it would block the
    // start for ever) and replaced.
    std::fs::remove_file(&trap_file).unwrap();
    let fifo = std::ffi::CString::new(trap_file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let loaded = tokio::time::timeout(std::time::Duration::from_secs(30), load(&config)).await;
    let Ok(runtime) = loaded else {
        // Unblock the stuck reader so this failure is reported, not hung.
        drop(std::fs::OpenOptions::new().write(true).open(&trap_file));
        panic!("a planted FIFO blocked the start");
    };
    let runtime = runtime.unwrap();
    assert_eq!(counts(&runtime), (1, 1, 1));
    drop(runtime);
    assert!(std::fs::metadata(&trap_file).unwrap().is_file());

    // Compiled code from a server with another secret is refused too.
    let secret = dir.path().join("secrets/plugin-cache-mac");
    std::fs::remove_file(&secret).unwrap();
    let runtime = load(&config).await.unwrap();
    assert_eq!(counts(&runtime), (2, 0, 2));
    runtime
        .setup_call("loopback", call_setup("c"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_server_logs_compiled_then_cached_across_a_restart() {
    let mut server = common::TestServer::start().await;
    let logs = server.logs();
    assert!(logs.contains("compiled plugin"), "{logs}");
    assert!(!logs.contains("loaded plugin from cache"), "{logs}");
    server.restart();
    let logs = server.logs();
    assert_eq!(logs.matches("compiled plugin").count(), 1, "{logs}");
    assert!(logs.contains("loaded plugin from cache"), "{logs}");
    assert!(logs.contains("loaded provider plugin"), "{logs}");
    assert!(!logs.contains("failed its integrity check"), "{logs}");

    // One byte of the compiled code changed on disk: recompiled, with a warning.
    let cache = server.dir.join("data/plugin-cache");
    let file = std::fs::read_dir(&cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&file, &bytes).unwrap();
    server.restart();
    let logs = server.logs();
    assert!(logs.contains("failed its integrity check"), "{logs}");
    assert_eq!(logs.matches("compiled plugin").count(), 2, "{logs}");
    // ... and the recompiled plugin answered `describe` at start-up.
    assert_eq!(logs.matches("loaded provider plugin").count(), 3, "{logs}");
}

/// No exports, and WASI imports Loop does not grant: outbound HTTP outside
/// the `http` import's allowlist, and a WASI version the host does not link.
const NO_EXPORTS: &str = r#"
(component
  (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func))))
  (import "wasi:cli/environment@0.3.0" (instance (export "get-arguments" (func (result (list string))))))
)"#;

const MISSING_FUNCTIONS: &str = r#"
(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (instance $e (export "describe" (func $f)))
  (export "loopcall:provider/provider@0.1.0" (instance $e))
)"#;

const WRONG_SIGNATURES: &str = r#"
(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (instance $e
    (export "describe" (func $f))
    (export "create-session" (func $f))
    (export "issue-token" (func $f))
    (export "verify-token" (func $f)))
  (export "loopcall:provider/provider@0.1.0" (instance $e))
)"#;

fn write_component(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn components_that_do_not_implement_the_world_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "no-exports",
            NO_EXPORTS,
            vec![
                "does not export loopcall:provider/provider@0.1.0",
                "it imports wasi:http/outgoing-handler@0.2.0, which Loop does not grant to plugins",
                "it imports wasi:cli/environment@0.3.0, which Loop does not grant to plugins",
                "outbound HTTP goes through loopcall:provider/http",
            ],
        ),
        (
            "missing",
            MISSING_FUNCTIONS,
            vec!["lacks the function(s) create-session, issue-token, verify-token"],
        ),
        (
            "wrong",
            WRONG_SIGNATURES,
            vec!["loopcall:provider/provider@0.1.0#describe has the wrong signature"],
        ),
    ];
    for (name, wat, expected) in cases {
        let path = write_component(dir.path(), name, wat);
        let config = config(
            dir.path(),
            vec![("loopback", loopback()), (name, plugin(path))],
        );
        let err = format!("{:#}", load(&config).await.err().expect("refused"));
        assert!(err.contains(&format!("plugins.{name}")), "{err}");
        for expected in expected {
            assert!(err.contains(expected), "{name}: {err}");
        }
    }
    // Not a component at all.
    let path = dir.path().join("junk.wasm");
    std::fs::write(&path, b"\0asm junk").unwrap();
    let config = config(
        dir.path(),
        vec![("loopback", loopback()), ("junk", plugin(path))],
    );
    let err = format!("{:#}", load(&config).await.err().expect("refused"));
    assert!(
        err.contains("plugins.junk.component") && err.contains("not a valid component"),
        "{err}"
    );
}

#[test]
fn plugins_check_validates_and_lists_imports_and_exports() {
    let run = |path: &Path| {
        std::process::Command::new(common::server_binary())
            .args(["plugins", "check"])
            .arg(path)
            .env("LOOP_LOG", "warn")
            .output()
            .unwrap()
    };
    let output = run(&common::loopback_wasm());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("loopcall:provider/crypto@0.2.0: hmac-sha256, random-bytes"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "loopcall:provider/provider@0.2.0: describe, create-session, issue-token, verify-token, end-session"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("targets: loopcall:provider@0.2.0"),
        "{stdout}"
    );
    assert!(stdout.contains("provider: loopback 0.2.0"), "{stdout}");

    // A plugin built against 0.1.0 says so.
    let output = run(&common::loopback_v0_1_wasm());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("targets: loopcall:provider@0.1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("provider: loopback 0.1.0"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let output = run(&write_component(dir.path(), "missing", MISSING_FUNCTIONS));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("lacks the function(s) create-session"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("loopcall:provider/provider@0.1.0: describe"),
        "{stdout}"
    );

    let output = run(&dir.path().join("absent.wasm"));
    assert!(!output.status.success());
}

/// Busy-loop processes that keep every core saturated until dropped.
struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self(
            (0..cores + 1)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_budgets_charge_work_not_waiting_for_a_busy_core() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback export needs a small fraction of 2 ms of CPU, but under
    // contention it often waits longer than that for a core (or, after a
    // yield, for its executor thread); only a meter of CPU work lets it pass.
    let mut good = loopback();
    good.limits.cpu_ms = 2;
    let mut spin = plugin(test_plugin("spin"));
    spin.limits.cpu_ms = 2;
    let config = config(dir.path(), vec![("loopback", good), ("spin", spin)]);
    let runtime = Arc::new(load(&config).await.unwrap());

    let hogs = CpuHogs::start();
    let mut tasks = Vec::new();
    for task in 0..20 {
        let runtime = runtime.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..50 {
                if let Err(err) = runtime
                    .setup_call("loopback", call_setup(&format!("busy-{task}-{i}")))
                    .await
                {
                    failures.push(err.to_string());
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    let err = runtime
        .setup_call("spin", call_setup("spin"))
        .await
        .unwrap_err();
    drop(hogs);

    assert!(
        failures.is_empty(),
        "{} of 1000 loopback calls failed under CPU contention, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert!(plugin_message(&err).contains("CPU budget of 2 ms"), "{err}");
    let health = runtime.health();
    let good = health.iter().find(|h| h.plugin == "loopback").unwrap();
    assert_eq!((good.calls, good.failures, good.healthy), (1001, 0, true));
}

#[tokio::test]
async fn each_plugin_is_charged_the_cpu_time_its_calls_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut spin = plugin(test_plugin("spin"));
    spin.limits.cpu_ms = 30;
    let jitsi = |settings: String| PluginConfig {
        settings: toml::from_str(&settings).unwrap(),
        ..plugin(common::workspace_root().join("plugins/jitsi/jitsi.wasm"))
    };
    let hs256 = jitsi(
        "base_url = \"https://meet.example.com\"\napp_id = \"loop\"\napp_secret = \"s3cret\"\n"
            .into(),
    );
    let private_key =
        std::fs::read_to_string(common::workspace_root().join("tests/fixtures/test-rsa-2048.pem"))
            .unwrap();
    let rs256 = jitsi(format!(
        "base_url = \"https://8x8.vc/vpaas-magic-cookie-1\"\napp_id = \"vpaas-magic-cookie-1\"\n\
         kid = \"vpaas-magic-cookie-1/4f4910\"\nprivate_key = {private_key:?}\n"
    ));
    let config = config(
        dir.path(),
        vec![
            ("loopback", loopback()),
            ("spin", spin),
            ("hs256", hs256),
            ("rs256", rs256),
        ],
    );
    let runtime = load(&config).await.unwrap();
    let cpu_us = |name: &str| {
        let health = runtime.health();
        let plugin = health.iter().find(|h| h.plugin == name).unwrap();
        (plugin.calls, plugin.cpu_us, plugin.busy_us)
    };

    // Guest code, measured on the executor thread that polls it: spin runs
    // until its budget of 30 ms of fuel is spent, which takes at least 15 ms
    // of CPU on any core less than twice as fast as the reference one.
    let (_, spin_before, _) = cpu_us("spin");
    runtime
        .setup_call("spin", call_setup("spin"))
        .await
        .unwrap_err();
    let (_, spin_after, spin_busy) = cpu_us("spin");
    let spin_cpu = spin_after - spin_before;
    assert!(spin_cpu >= 15_000, "spin was charged {spin_cpu} µs");
    assert!(
        spin_after <= spin_busy,
        "CPU {spin_after} µs > wall {spin_busy} µs"
    );

    // Host imports on the blocking pool: an RS256 signature costs about a
    // millisecond where an HMAC costs a microsecond, and both tokens of a
    // JaaS call are RS256, so its calls are charged far more than the same
    // plugin's HS256 calls.
    let calls = 5;
    let mut per_call = Vec::new();
    for name in ["hs256", "rs256"] {
        let (calls_before, cpu_before, _) = cpu_us(name);
        for i in 0..calls {
            runtime
                .setup_call(name, call_setup(&format!("{name}-{i}")))
                .await
                .unwrap();
        }
        let (calls_after, cpu_after, _) = cpu_us(name);
        assert_eq!(calls_after - calls_before, calls);
        per_call.push((cpu_after - cpu_before) / calls);
    }
    let (hs256_us, rs256_us) = (per_call[0], per_call[1]);
    assert!(hs256_us > 0, "HS256 calls were charged nothing");
    assert!(
        rs256_us > 3 * hs256_us,
        "an RS256 call was charged {rs256_us} µs, an HS256 call {hs256_us} µs"
    );
}

/// How much CPU time the `spin` plugin gets for a given `cpu_ms`: the
/// calibration behind `FUEL_PER_CPU_MS` (src/providers/state.rs). Run it on an
/// idle machine:
/// `cargo test -p loop-server --test suite providers::calibrate_fuel -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
fn calibrate_fuel() {
    fn thread_cpu() -> std::time::Duration {
        std::time::Duration::from_nanos(loop_server::clock::thread_cpu_ns())
    }
    // One thread runs the plugin, so its CPU clock is the plugin's CPU time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut spin = plugin(test_plugin("spin"));
        spin.limits.wall_ms = 60_000;
        let mut plugins = vec![("loopback", loopback())];
        for cpu_ms in [50, 200, 1000] {
            let mut spin = spin.clone();
            spin.limits.cpu_ms = cpu_ms;
            plugins.push((
                ["spin-50", "spin-200", "spin-1000"][plugins.len() - 1],
                spin,
            ));
        }
        let config = config(dir.path(), plugins);
        let providers = load(&config).await.unwrap();
        for (name, cpu_ms) in [("spin-50", 50), ("spin-200", 200), ("spin-1000", 1000)] {
            let before = thread_cpu();
            let err = providers
                .setup_call(name, call_setup("c"))
                .await
                .unwrap_err();
            let used = thread_cpu() - before;
            println!(
                "cpu_ms = {cpu_ms}: spin ran {:.1} ms of CPU ({:.2}x the budget): {err}",
                used.as_secs_f64() * 1000.0,
                used.as_secs_f64() * 1000.0 / cpu_ms as f64
            );
        }
    });
}

/// A vendor API whose one endpoint answers after `delay`, recording the most
/// requests it ever had in flight at once.
async fn slow_vendor(delay: std::time::Duration) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get({
            let most = most.clone();
            move || async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                "slow-session"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_plugin_memory_bounds_the_calls_in_flight() {
    let (origin, most) = slow_vendor(std::time::Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut snoop = plugin(test_plugin("snoop"));
    snoop.allowed_hosts = vec![origin.clone()];
    snoop.settings.insert(
        "target".into(),
        toml::Value::String(format!("{origin}/slow")),
    );
    snoop.limits.memory_mib = 16;
    snoop.limits.max_concurrent_calls = 64;
    let mut config = config(dir.path(), vec![("loopback", loopback()), ("snoop", snoop)]);
    // Room for two 16 MiB instances at a time.
    config.providers.max_total_memory_mib = 32;
    let runtime = Arc::new(load(&config).await.unwrap());

    let calls: Vec<_> = (0..8)
        .map(|i| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                runtime
                    .setup_call("snoop", call_setup(&format!("m-{i}")))
                    .await
            })
        })
        .collect();
    for call in calls {
        // snoop's create-session fetched the page; its issue-token then refuses.
        let err = call.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, ProviderError::Rejected { message, .. } if message.contains("issues no tokens")),
            "every call runs, in turn: {err:?}"
        );
    }
    assert_eq!(
        most.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "instances in flight at once"
    );
}
