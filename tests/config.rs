//! Configuration as an operator meets it: the real binary, a config file,
//! `LOOP_*` overrides, and secrets generated on first run.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer, loopback_wasm};

/// Runs `loop-server --config <file>` with `toml` and expects it to refuse to start.
fn refuse(dir: &Path, toml: &str, env: &[(&str, &str)]) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let mut command = Command::new(common::server_binary());
    command.arg("--config").arg(&path).current_dir(dir);
    for (key, value) in env {
        command.env(key, value);
    }
    let Output {
        status,
        stderr,
        stdout,
    } = command.output().unwrap();
    assert!(
        !status.success(),
        "started with {toml:?}: {}",
        String::from_utf8_lossy(&stdout)
    );
    String::from_utf8_lossy(&stderr).into_owned()
}

fn loopback_table() -> String {
    format!(
        "[plugins.loopback]\ncomponent = {:?}\ngenerated_secrets = [\"secret\"]\n",
        loopback_wasm().display().to_string()
    )
}

/// A config file, environment overrides, and the key the error must name.
type InvalidCase = (String, Vec<(&'static str, &'static str)>, &'static str);

#[test]
fn an_invalid_configuration_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let plugins = loopback_table();
    let cases: Vec<InvalidCase> = vec![
        (
            format!("[server]\nlisten = \"not an address\"\n{plugins}"),
            vec![],
            "server.listen",
        ),
        (
            format!("[server]\nlisten = \"127.0.0.1:0\"\nlistne = 1\n{plugins}"),
            vec![],
            "listne",
        ),
        (
            format!("[calls]\nduration_seconds = \"soon\"\n{plugins}"),
            vec![],
            "calls.duration_seconds",
        ),
        (
            format!("[call_urls]\nweb_app_url = \"https://x/c\"\n{plugins}"),
            vec![],
            "call_urls.web_app_url",
        ),
        (
            format!("[database]\nurl = \"mysql://db\"\n{plugins}"),
            vec![],
            "database.url",
        ),
        (
            format!("[providers]\ndefault = \"nobody\"\n{plugins}"),
            vec![],
            "providers.default",
        ),
        (
            format!("[providers.channels]\nbeta = \"nobody\"\n{plugins}"),
            vec![],
            "providers.channels.beta",
        ),
        (
            format!("[push]\nallowed_origins = [\"not a url\"]\n{plugins}"),
            vec![],
            "push.allowed_origins",
        ),
        (
            format!(
                "[plugins.loopback]\ncomponent = {:?}\nallowed_hosts = [\"ftp://x\"]\n",
                loopback_wasm().display().to_string()
            ),
            vec![],
            "plugins.loopback.allowed_hosts",
        ),
        (
            format!("[server]\nworker_threads = 0\n{plugins}"),
            vec![],
            "server.worker_threads",
        ),
        // The environment overrides the file, and is checked the same way.
        (
            plugins.clone(),
            vec![("LOOP_SERVER__LISTEN", "nowhere")],
            "server.listen",
        ),
        (
            plugins.clone(),
            vec![("LOOP_CALLS__DURATION_SECONDS", "0")],
            "calls.duration_seconds",
        ),
        // Keys that configure nothing, in the file or the environment.
        (
            format!("[ringing]\nseconds = 30\n{plugins}"),
            vec![],
            "ringing",
        ),
        (
            plugins.clone(),
            vec![("LOOP_SERVER__LISTNE", "127.0.0.1:0")],
            "listne",
        ),
        // Secrets of the wrong length or not hex.
        (
            plugins.clone(),
            vec![("LOOP_SECRETS__HAWK_ID_KEY", "abcd")],
            "secrets.hawk_id_key",
        ),
        (
            format!(
                "[secrets]\nhawk_id_key = \"{}\"\n{plugins}",
                "zz".repeat(32)
            ),
            vec![],
            "secrets.hawk_id_key",
        ),
        // A component that is not there is named with its plugin.
        (
            "[plugins.loopback]\ncomponent = \"missing.wasm\"\n".into(),
            vec![],
            "plugins.loopback",
        ),
    ];
    assert_each_refused_naming_its_key(dir, cases, "");
}

/// Each case must be refused at start-up with an error naming its key (and
/// containing `also`). Keys from the environment are echoed in its spelling
/// (SERVER.LISTEN), so the key is looked for case-insensitively.
fn assert_each_refused_naming_its_key(dir: &Path, cases: Vec<InvalidCase>, also: &str) {
    for (toml, env, key) in cases {
        let stderr = refuse(dir, &toml, &env);
        assert!(
            stderr.to_ascii_lowercase().contains(key) && stderr.contains(also),
            "expected {key:?} and {also:?} in the error for {toml:?} {env:?}, got: {stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_named_on_the_command_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(common::server_binary())
        .arg("--config")
        .arg(dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nope.toml"));
}

#[tokio::test]
async fn environment_variables_override_the_file() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![(
            "LOOP_PUSH__SERVER_URI".into(),
            "wss://push.example.net/".into(),
        )],
        ..Default::default()
    })
    .await;
    let body: serde_json::Value = common::client()
        .get(server.endpoint("/push-server-config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["pushServerURI"], "wss://push.example.net/");
}

#[tokio::test]
async fn worker_threads_size_the_runtime() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("LOOP_SERVER__WORKER_THREADS".into(), "3".into())],
        ..Default::default()
    })
    .await;
    // The line comes just after the one TestServer waits for.
    server.wait_for_log("workers=3").await;
}

#[cfg(unix)]
#[tokio::test]
async fn secrets_are_generated_once_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;

    let mut server = TestServer::start().await;
    let secrets = server.dir.join("data/secrets");
    let mut names: Vec<String> = std::fs::read_dir(&secrets)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["hawk-id-hmac", "plugin-cache-mac", "plugin-loopback-secret"]
    );
    let before: Vec<Vec<u8>> = names
        .iter()
        .map(|name| std::fs::read(secrets.join(name)).unwrap())
        .collect();
    for name in &names {
        let mode = std::fs::metadata(secrets.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is readable by others");
    }

    // The folders holding them are the owner's alone.
    for dir in [server.dir.join("data"), secrets.clone()] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{} is open to others", dir.display());
    }

    server.restart();
    let after: Vec<Vec<u8>> = names
        .iter()
        .map(|name| std::fs::read(secrets.join(name)).unwrap())
        .collect();
    assert_eq!(before, after, "a restart must reuse the secrets");

    // No secret ever reaches the log.
    let logs = server.logs();
    for secret in &after {
        let secret = String::from_utf8_lossy(secret);
        assert!(!logs.contains(secret.trim()), "a secret was logged");
    }
    // The committed config holds none.
    let committed = std::fs::read_to_string(common::workspace_root().join("config.toml")).unwrap();
    assert!(
        !committed
            .lines()
            .any(|line| line.trim_start().starts_with("secret"))
    );
}

#[tokio::test]
async fn variables_that_configure_nothing_are_named_in_a_warning() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![
            ("LOOP_RINGING__SECONDS".into(), "30".into()),
            ("LOOP_PUSH_TIMEOUT_MS".into(), "5".into()),
        ],
        ..Default::default()
    })
    .await;
    let logs = server.logs();
    for name in ["LOOP_RINGING__SECONDS", "LOOP_PUSH_TIMEOUT_MS"] {
        assert!(
            logs.lines()
                .any(|line| line.contains("WARN") && line.contains(name)),
            "no warning naming {name}: {logs}"
        );
    }
    // LOOP_LOG and LOOP_CONFIG are ours, and nothing to warn about.
    assert!(!logs.contains("variable=LOOP_LOG"), "{logs}");
}

/// Eight instances starting together on a fresh data directory end with one
/// and the same whole key: a session made through any of them is accepted by
/// every other, which an empty or half-read key would break.
#[tokio::test]
async fn instances_starting_at_once_on_a_fresh_data_directory_share_one_key() {
    let push = FakePush::start().await;
    let servers = TestServer::start_all(ServerOptions {
        processes: 8,
        extra_toml: push.config(2000),
        ..Default::default()
    })
    .await;
    let key = std::fs::read_to_string(servers[0].dir.join("data/secrets/hawk-id-hmac")).unwrap();
    assert_eq!(key.len(), 64, "{key:?}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key:?}");
    for (i, server) in servers.iter().enumerate() {
        let next = &servers[(i + 1) % servers.len()];
        let device = Device::register(&server.url, &push.url("x")).await;
        let response = device.on(&next.url).get("/call-url").await;
        assert_eq!(
            response.status(),
            200,
            "server {i}'s session on the next one"
        );
    }
}

/// Instances that share a database but no data directory (containers) are
/// given the Hawk id key in the environment, and then act as one service.
#[tokio::test]
async fn secrets_given_in_the_environment_replace_generated_ones() {
    let push = FakePush::start().await;
    let key = hex::encode(rand::random::<[u8; 32]>());
    let env = vec![("LOOP_SECRETS__HAWK_ID_KEY".to_string(), key.clone())];
    let a = TestServer::start_with(ServerOptions {
        env: env.clone(),
        extra_toml: push.config(2000),
        ..Default::default()
    })
    .await;
    let b = TestServer::start_with(ServerOptions {
        env,
        extra_toml: push.config(2000),
        database_url: Some(a.database_url.clone()),
        ..Default::default()
    })
    .await;
    assert_ne!(a.dir, b.dir);
    let bob = Device::register(&a.url, &push.url("bob")).await;
    assert_eq!(bob.on(&b.url).get("/call-url").await.status(), 200);
    // The key came from the environment: none was generated, none logged.
    for server in [&a, &b] {
        assert!(!server.dir.join("data/secrets/hawk-id-hmac").exists());
        assert!(!server.logs().contains(&key));
    }

    // Another key, the same database: its sessions are not the others'.
    let c = TestServer::start_with(ServerOptions {
        env: vec![(
            "LOOP_SECRETS__HAWK_ID_KEY".to_string(),
            hex::encode(rand::random::<[u8; 32]>()),
        )],
        database_url: Some(a.database_url.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(bob.on(&c.url).get("/call-url").await.status(), 401);
}

#[test]
fn sqlite_synchronous_is_normal_or_full() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = loopback_table();
    let cases: Vec<InvalidCase> = vec![
        (
            format!("[database]\nsqlite_synchronous = \"off\"\n{plugins}"),
            vec![],
            "database.sqlite_synchronous",
        ),
        (
            plugins.clone(),
            vec![("LOOP_DATABASE__SQLITE_SYNCHRONOUS", "extra")],
            "database.sqlite_synchronous",
        ),
    ];
    // The error lists the accepted values too.
    assert_each_refused_naming_its_key(dir.path(), cases, "normal");
}

#[test]
fn plugin_memory_is_bounded_per_instance_and_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let plugins = loopback_table();
    let cases: Vec<InvalidCase> = vec![
        (
            format!("{plugins}[plugins.loopback.limits]\nmemory_mib = 257\n"),
            vec![],
            "plugins.loopback.limits.memory_mib",
        ),
        (
            format!("{plugins}[plugins.loopback.limits]\nmemory_mib = 0\n"),
            vec![],
            "plugins.loopback.limits.memory_mib",
        ),
        (
            format!("[providers]\nmax_total_memory_mib = 0\n{plugins}"),
            vec![],
            "providers.max_total_memory_mib",
        ),
        (
            format!("[providers]\nmax_total_memory_mib = 1000000\n{plugins}"),
            vec![],
            "providers.max_total_memory_mib",
        ),
        (
            plugins.clone(),
            vec![("LOOP_PROVIDERS__MAX_TOTAL_MEMORY_MIB", "0")],
            "providers.max_total_memory_mib",
        ),
        // One instance larger than the total could never run.
        (
            format!("[providers]\nmax_total_memory_mib = 8\n{plugins}"),
            vec![],
            "plugins.loopback.limits.memory_mib",
        ),
    ];
    assert_each_refused_naming_its_key(dir, cases, "");
}

#[tokio::test]
async fn the_largest_plugin_memory_limit_is_accepted() {
    let server = TestServer::start_with(ServerOptions {
        extra_toml: "[plugins.loopback.limits]\nmemory_mib = 256\n\n[providers]\nmax_total_memory_mib = 256\n".into(),
        ..ServerOptions::default()
    })
    .await;
    let logs = server.wait_for_log("loaded provider plugin").await;
    assert!(logs.contains("provider runtime ready"), "{logs}");
}

#[test]
fn ice_server_urls_and_the_turn_secret_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let plugins = loopback_table();
    let ice = |key: &str, url: &str| format!("[ice]\n{key} = [{url:?}]\n{plugins}");
    let cases: Vec<InvalidCase> = vec![
        (
            ice("stun_urls", "turn:turn.example.com"),
            vec![],
            "ice.stun_urls",
        ),
        (
            ice("stun_urls", "stun:x?transport=udp"),
            vec![],
            "ice.stun_urls",
        ),
        (
            ice("turn_urls", "https://turn.example.com"),
            vec![],
            "ice.turn_urls",
        ),
        (ice("turn_urls", "turn:"), vec![], "ice.turn_urls"),
        (ice("turn_urls", "turn:user@host"), vec![], "ice.turn_urls"),
        (
            ice("turn_urls", "turn:host?transport=sctp"),
            vec![],
            "ice.turn_urls",
        ),
        (
            plugins.clone(),
            vec![("LOOP_ICE__TURN_URLS", "[\"stun:wrong.kind\"]")],
            "ice.turn_urls",
        ),
        (
            plugins.clone(),
            vec![("LOOP_SECRETS__TURN_SECRET", "short-secret")],
            "secrets.turn_secret",
        ),
        (
            format!("[secrets]\nturn_secret = \"with a space in the middle\"\n{plugins}"),
            vec![],
            "secrets.turn_secret",
        ),
    ];
    for (toml, env, key) in cases {
        let stderr = refuse(dir, &toml, &env);
        assert!(
            stderr.to_ascii_lowercase().contains(key),
            "expected {key:?} in the error for {toml:?} {env:?}, got: {stderr}"
        );
        // A secret is never echoed.
        for secret in ["short-secret", "with a space"] {
            assert!(!stderr.contains(secret), "{stderr}");
        }
    }
}

#[test]
fn bad_rate_limit_and_lookup_keys_are_configuration_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = loopback_table();
    let cases: Vec<InvalidCase> = vec![
        (
            format!("[rate_limits]\ncalls_per_ip = {{ per_minute = 0, burst = 5 }}\n{plugins}"),
            vec![],
            "rate_limits.calls_per_ip.per_minute",
        ),
        (
            format!(
                "[rate_limits]\nregistration_per_ip = {{ per_minute = 5, burst = 0 }}\n{plugins}"
            ),
            vec![],
            "rate_limits.registration_per_ip.burst",
        ),
        (
            format!("[rate_limits]\nclient_ip_header = \"X Forwarded\"\n{plugins}"),
            vec![],
            "rate_limits.client_ip_header",
        ),
        (
            format!("[rate_limits]\nper_minute = 5\n{plugins}"),
            vec![],
            "per_minute",
        ),
        (
            format!("[rate_limits]\nmax_tracked_keys = 0\n{plugins}"),
            vec![],
            "rate_limits.max_tracked_keys",
        ),
        (
            format!("[net]\nmax_concurrent_lookups = 0\n{plugins}"),
            vec![],
            "net.max_concurrent_lookups",
        ),
    ];
    assert_each_refused_naming_its_key(dir.path(), cases, "");
}
