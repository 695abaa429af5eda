//! Plugins written in other languages: the examples in `plugins/examples/`
//! and the Python sandbox test plugin, built by their toolchains at test time
//! (`scripts/test` runs `scripts/build-plugin-examples`) into
//! `target/plugin-examples/`. Their components hold a whole interpreter and
//! take many seconds to compile, so the suite compiles them once into a data
//! folder whose compile cache every test server starts from.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::OnceCell;

use super::{ServerOptions, TestServer, workspace_root};

/// The built component `name` (`python-livekit`, `javascript-jitsi`,
/// `python-sandbox`).
pub fn component(name: &str) -> PathBuf {
    let path = workspace_root().join(format!("target/plugin-examples/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test builds the plugin examples (or run scripts/build-plugin-examples)",
        path.display()
    );
    path
}

/// `[plugins.<table>]` for the built component `name` with `settings` (TOML lines).
pub fn plugin_toml(table: &str, name: &str, settings: &str) -> String {
    format!(
        "[plugins.{table}]\ncomponent = {:?}\n[plugins.{table}.settings]\n{settings}\n",
        component(name).display().to_string()
    )
}

/// The components [`warm_data_dir`] compiles.
const ALL: &[&str] = &["python-livekit", "javascript-jitsi", "python-sandbox"];

/// A data folder whose compile cache holds every example, for
/// [`ServerOptions::seed_data_dir`]. Kept in `target/` between runs: the
/// cache is keyed by the component's digest and the engine, so a rebuilt
/// example or a new wasmtime is compiled again and stale entries are unused.
pub async fn warm_data_dir() -> PathBuf {
    static WARM: OnceCell<PathBuf> = OnceCell::const_new();
    WARM.get_or_init(|| async {
        let dir = workspace_root().join("target/plugin-examples/warm");
        std::fs::create_dir_all(&dir).unwrap();
        // The config files and logs of earlier runs.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with("config-") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        let tables: String = ALL.iter().map(|name| plugin_toml(name, name, "")).collect();
        // Its own SQLite file in the folder: only the data folder is reused.
        let server = TestServer::start_with(ServerOptions {
            dir: Some(dir.clone()),
            database_url: Some(format!(
                "sqlite://{}?mode=rwc",
                dir.join("warm.db").display()
            )),
            extra_toml: tables,
            ..Default::default()
        })
        .await;
        for name in ALL {
            wait_until_ready(&server, name, Duration::from_secs(300)).await;
        }
        drop(server);
        dir.join("data")
    })
    .await
    .clone()
}

/// The heartbeat's report of `plugin`.
pub async fn plugin_report(server: &TestServer, plugin: &str) -> Value {
    let (_, heartbeat) = server.heartbeat().await;
    heartbeat["plugins"][plugin].clone()
}

/// Waits until the heartbeat reports `plugin` ready; panics if it failed
/// to load or is still compiling after `limit`.
pub async fn wait_until_ready(server: &TestServer, plugin: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let report = plugin_report(server, plugin).await;
        match report["state"].as_str() {
            Some("ready") => return,
            Some("compiling") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => panic!("plugin {plugin} is not ready: {report}\n{}", server.logs()),
        }
    }
}

/// A server whose compile cache already holds every example (so they are
/// ready at once), with `extra_toml`.
pub async fn start_warm(extra_toml: String, loopback: bool) -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml,
        loopback,
        seed_data_dir: Some(warm_data_dir().await),
        ..Default::default()
    })
    .await
}
