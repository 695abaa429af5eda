//! Configuration as an operator meets it: the real binary, a config file,
//! `LOOP_*` overrides, and secrets generated on first run.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ServerOptions, TestServer, loopback_wasm};

/// Runs `loop-server --config <file>` with `toml` and expects it to refuse to start.
fn refuse(dir: &Path, toml: &str, env: &[(&str, &str)]) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_loop-server"));
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
        // A component that is not there is named with its plugin.
        (
            "[plugins.loopback]\ncomponent = \"missing.wasm\"\n".into(),
            vec![],
            "plugins.loopback",
        ),
    ];
    for (toml, env, key) in cases {
        let stderr = refuse(dir, &toml, &env);
        // Keys from the environment are echoed in its spelling (SERVER.LISTEN).
        assert!(
            stderr.to_ascii_lowercase().contains(key),
            "expected {key:?} in the error for {toml:?} {env:?}, got: {stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_named_on_the_command_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loop-server"))
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
    for (toml, env, key) in cases {
        let stderr = refuse(dir, &toml, &env);
        assert!(
            stderr.to_ascii_lowercase().contains(key),
            "expected {key:?} in the error for {toml:?} {env:?}, got: {stderr}"
        );
    }
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
