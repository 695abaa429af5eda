//! Provider runtime benchmark: one Loop call setup (fresh instance +
//! create-session + 2 × issue-token) on the loopback plugin, on one thread and
//! on two, and on the livekit plugin (HS256 JWTs, no HTTP) on one thread, with
//! the CPU time the runtime charged each call; and the start-up time of a
//! runtime with four plugins and a warm compile cache.
//!
//! Then the same for the plugins in other languages (a whole interpreter per
//! component), when they are built (`scripts/test` builds them into
//! `target/plugin-examples/`): the Python livekit example (componentize-py)
//! and the JavaScript jitsi example (jco with QuickJS-NG, and with
//! StarlingMonkey where that build is there too): their cold compile, a warm
//! start-up, and call setup on one thread and on two, beside loopback.
//!
//! `cargo bench -p loop-server --bench providers`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loop_server::config::{Config, PluginConfig, PluginLimits};
use loop_server::providers::{CallSetupRequest, CallType, ProviderRuntime};
use loop_server::secrets::Secrets;

const WARMUP_CALLS: usize = 2_000;
const MEASURED_CALLS: usize = 20_000;
const STARTUPS: usize = 15;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn plugin(component: PathBuf, generated_secrets: &[&str]) -> PluginConfig {
    PluginConfig {
        component,
        allowed_hosts: Vec::new(),
        allow_private: false,
        limits: PluginLimits::default(),
        generated_secrets: generated_secrets.iter().map(|s| s.to_string()).collect(),
        settings: toml::Table::new(),
    }
}

fn config(data_dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.data_dir = data_dir.to_path_buf();
    let root = workspace();
    config.plugins.insert(
        "loopback".into(),
        plugin(root.join("plugins/loopback/loopback.wasm"), &["secret"]),
    );
    let test_plugin = |name: &str| root.join(format!("tests/plugins/{name}/{name}.wasm"));
    config.plugins.insert(
        "vendor".into(),
        plugin(test_plugin("vendor"), &["api_key", "api_secret"]),
    );
    config.plugins.insert(
        "settings-echo".into(),
        plugin(test_plugin("settings-echo"), &[]),
    );
    let mut livekit = plugin(root.join("plugins/livekit/livekit.wasm"), &[]);
    livekit.settings = toml::from_str(
        "url = \"wss://livekit.example.com\"\napi_key = \"APIbench\"\napi_secret = \"bench-secret-0123456789abcdef\"\n",
    )
    .unwrap();
    config.plugins.insert("livekit".into(), livekit);
    config
}

const JITSI: &str = "base_url = \"https://meet.example.com\"\napp_id = \"loop\"\napp_secret = \"bench-secret-0123456789abcdef\"\n";

/// The examples in other languages, by plugin name, with their settings,
/// where built.
fn interpreter_plugins() -> Vec<(&'static str, PathBuf, &'static str)> {
    let built = workspace().join("target/plugin-examples");
    [
        (
            "python-livekit",
            built.join("python-livekit.wasm"),
            "url = \"wss://livekit.example.com\"\napi_key = \"APIbench\"\napi_secret = \"bench-secret-0123456789abcdef\"\n",
        ),
        ("javascript-jitsi", built.join("javascript-jitsi.wasm"), JITSI),
        // The same plugin on jco's other engine, when built by hand
        // (plugins/examples/javascript-jitsi/README.md), for comparison.
        (
            "javascript-jitsi-starlingmonkey",
            built.join("javascript-jitsi-starlingmonkey.wasm"),
            JITSI,
        ),
    ]
    .into_iter()
    .filter(|(_, path, _)| path.exists())
    .collect()
}

async fn load(config: &Config) -> ProviderRuntime {
    let net = loop_server::net::Net::new(&config.net).unwrap();
    ProviderRuntime::load(config, &Secrets::new(&config.server.data_dir), &net)
        .await
        .unwrap()
}

fn request(i: usize) -> CallSetupRequest {
    CallSetupRequest {
        call_id: format!("call-{i}"),
        call_type: CallType::AudioVideo,
        caller: "alice@example.com".into(),
        callee: "bob@example.com".into(),
        channel: None,
        caller_display_name: "Alice".into(),
        callee_display_name: "Bob".into(),
        token_lifetime_seconds: 3600,
    }
}

/// `count` call setups on `plugin` from each of `threads` tasks on as many
/// threads, after `warmup` each.
fn parallel_calls(
    runtime: &Arc<ProviderRuntime>,
    plugin: &'static str,
    threads: usize,
    warmup: usize,
    count: usize,
) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..threads)
            .map(|_| {
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    calls(&runtime, plugin, warmup).await;
                    calls(&runtime, plugin, count).await
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    })
}

async fn calls(runtime: &ProviderRuntime, plugin: &str, count: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let req = request(i);
        let started = Instant::now();
        runtime.setup_call(plugin, req).await.unwrap();
        times.push(started.elapsed());
    }
    times
}

/// `count` call setups on `plugin` one after the other on `rt`, after
/// `warmup`: their times, and the CPU the runtime charged per call.
fn one_thread(
    rt: &tokio::runtime::Runtime,
    runtime: &ProviderRuntime,
    plugin: &str,
    warmup: usize,
    count: usize,
) {
    rt.block_on(calls(runtime, plugin, warmup));
    let (cpu_before, calls_before) = charged(runtime, plugin);
    let times = rt.block_on(calls(runtime, plugin, count));
    let (cpu_after, calls_after) = charged(runtime, plugin);
    report(&format!("call setup, {plugin}, 1 thread"), times);
    println!(
        "  CPU charged to {plugin} per call: {:.1} µs",
        (cpu_after - cpu_before) as f64 / (calls_after - calls_before) as f64
    );
}

/// The CPU time the runtime charged `plugin` so far, and its calls.
fn charged(runtime: &ProviderRuntime, plugin: &str) -> (u64, u64) {
    let health = runtime.health();
    let plugin = health.iter().find(|h| h.plugin == plugin).unwrap();
    (plugin.cpu_us, plugin.calls)
}

fn report(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{label:<44} n={:<6} median {:>8.1} µs   p99 {:>8.1} µs",
        times.len(),
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());

    // Start-up: the first load compiles and fills the cache; the rest are warm.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cold = Instant::now();
    let runtime = rt.block_on(load(&config));
    println!(
        "cold start-up (compile 4 plugins)             {:>8.1} ms",
        cold.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(runtime.stats().compiled, 4);
    drop(runtime);
    let mut startups = Vec::new();
    for _ in 0..STARTUPS {
        let started = Instant::now();
        let runtime = rt.block_on(load(&config));
        startups.push(started.elapsed());
        assert_eq!(runtime.stats().cache_hits, 4);
    }
    startups.sort();
    println!(
        "warm start-up (4 plugins, cached)  n={STARTUPS:<3}      median {:>8.1} ms   max {:>8.1} ms",
        startups[STARTUPS / 2].as_secs_f64() * 1e3,
        startups[STARTUPS - 1].as_secs_f64() * 1e3
    );

    // One thread.
    let runtime = Arc::new(rt.block_on(load(&config)));
    for plugin in ["loopback", "livekit"] {
        one_thread(&rt, &runtime, plugin, WARMUP_CALLS, MEASURED_CALLS);
    }
    drop(rt);

    // Two threads calling at once.
    let times = parallel_calls(
        &runtime,
        "loopback",
        2,
        WARMUP_CALLS / 2,
        MEASURED_CALLS / 2,
    );
    report("call setup, loopback, 2 threads in parallel", times);
    drop(runtime);

    interpreters();
}

/// Plugins in other languages: each component holds a whole interpreter.
fn interpreters() {
    let plugins = interpreter_plugins();
    if plugins.is_empty() {
        println!("(no plugin examples in target/plugin-examples: scripts/test builds them)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.plugins.insert(
        "loopback".into(),
        plugin(
            workspace().join("plugins/loopback/loopback.wasm"),
            &["secret"],
        ),
    );
    for (name, path, settings) in &plugins {
        let mut example = plugin(path.clone(), &[]);
        example.settings = toml::from_str(settings).unwrap();
        config.plugins.insert(name.to_string(), example);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cold = Instant::now();
    let runtime = rt.block_on(load(&config));
    let serving = cold.elapsed();
    rt.block_on(runtime.ready());
    println!(
        "cold start-up with the examples: serving after {:.1} ms, examples compiled in the background after {:.1} s",
        serving.as_secs_f64() * 1e3,
        cold.elapsed().as_secs_f64()
    );
    drop(runtime);
    let mut startups = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let runtime = rt.block_on(load(&config));
        startups.push(started.elapsed());
        assert_eq!(runtime.stats().compiled, 0, "a warm start compiles nothing");
    }
    startups.sort();
    println!(
        "warm start-up with the examples (cached) n=5  median {:>8.1} ms   max {:>8.1} ms",
        startups[2].as_secs_f64() * 1e3,
        startups[4].as_secs_f64() * 1e3
    );
    let runtime = Arc::new(rt.block_on(load(&config)));
    const INTERPRETER_CALLS: usize = 2_000;
    for (name, _, _) in &plugins {
        one_thread(
            &rt,
            &runtime,
            name,
            INTERPRETER_CALLS / 10,
            INTERPRETER_CALLS,
        );
    }
    drop(rt);
    for &(name, _, _) in &plugins {
        let times = parallel_calls(
            &runtime,
            name,
            2,
            INTERPRETER_CALLS / 20,
            INTERPRETER_CALLS / 2,
        );
        report(&format!("call setup, {name}, 2 threads in parallel"), times);
    }
    let times = parallel_calls(
        &runtime,
        "loopback",
        2,
        WARMUP_CALLS / 2,
        MEASURED_CALLS / 2,
    );
    report("call setup, loopback, 2 threads (same run)", times);
}
