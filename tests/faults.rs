//! Faults under load: the database going away and coming back, a push
//! server that hangs, a vendor API that answers slowly, a plugin that traps,
//! and a full disk under SQLite. Each runs a real server under a small load
//! (a few concurrent tasks on loopback for a few seconds) and checks that
//! failures are fast, clear Loop errors, that the heartbeat names what is
//! failing, that the rest keeps answering, and that nothing acknowledged is
//! lost.
//!
//! The bounds on request times here are bounds against hanging, far above
//! what a healthy request takes, never speed targets (those are benchmarks).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common;
use common::hawk::Device;
use common::private_postgres::PrivatePostgres;
use common::{ServerOptions, TestServer, client};

/// No request may take this long, whatever is failing.
const HANG_BOUND: Duration = Duration::from_secs(3);

/// One request the load made, and how it was answered.
#[derive(Debug, Clone)]
struct Observation {
    route: &'static str,
    started: Instant,
    elapsed: Duration,
    status: u16,
    errno: Option<u64>,
    retry_after: bool,
}

impl Observation {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Loop's answer to a storage outage: 503, errno 201, Retry-After.
    fn is_backend_error(&self) -> bool {
        self.status == 503 && self.errno == Some(201) && self.retry_after
    }
}

/// Sends `request`, bounded well beyond [`HANG_BOUND`] so a hang shows as a
/// slow observation instead of blocking the test; the body as JSON if it is.
async fn observe(
    route: &'static str,
    request: impl Future<Output = Result<reqwest::Response, reqwest::Error>>,
) -> (Observation, Option<reqwest::header::HeaderMap>, Value) {
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(20), request).await;
    let (status, headers, body) = match answered {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (status, Some(headers), body)
        }
        // A dropped connection or no answer at all: status 0.
        Ok(Err(_)) | Err(_) => (0, None, Value::Null),
    };
    let observation = Observation {
        route,
        started,
        elapsed: started.elapsed(),
        status,
        errno: body["errno"].as_u64(),
        retry_after: headers
            .as_ref()
            .is_some_and(|h| h.contains_key("retry-after")),
    };
    (observation, headers, body)
}

/// What the load generator saw acknowledged (2xx), by key.
#[derive(Default)]
struct Acknowledged {
    /// Session tokens.
    sessions: Vec<String>,
    /// (session token, call URL token).
    call_urls: Vec<(String, String)>,
    /// (session token, call URL token, call id).
    calls: Vec<(String, String, String)>,
}

/// One load task: registers a device, makes call URLs with it and places
/// calls through them, over and over until `stop`; records every answer and
/// every acknowledged write.
async fn write_load(base: String, stop: Arc<AtomicBool>) -> (Vec<Observation>, Acknowledged) {
    let http = client();
    let mut seen = Vec::new();
    let mut acked = Acknowledged::default();
    // After a failure, a short pause: the load stays a load, not a spin.
    let pause = || tokio::time::sleep(Duration::from_millis(20));
    while !stop.load(Ordering::SeqCst) {
        let (observation, headers, _) = observe(
            "POST /registration",
            http.post(format!("{base}/registration"))
                .json(&json!({}))
                .send(),
        )
        .await;
        let ok = observation.ok();
        seen.push(observation);
        let Some(session) = headers
            .filter(|_| ok)
            .and_then(|h| h.get("hawk-session-token")?.to_str().ok().map(String::from))
        else {
            pause().await;
            continue;
        };
        acked.sessions.push(session.clone());
        let device = Device::from_token(&base, &session);
        for _ in 0..2 {
            let (observation, _, body) = observe(
                "POST /call-url",
                signed(&device, "/call-url", json!({"callerId": "alice"})),
            )
            .await;
            let ok = observation.ok();
            seen.push(observation);
            let Some(token) = body["callToken"].as_str().filter(|_| ok) else {
                pause().await;
                continue;
            };
            acked.call_urls.push((session.clone(), token.to_string()));
            for _ in 0..2 {
                let (observation, _, body) = observe(
                    "POST /calls/{token}",
                    http.post(format!("{base}/calls/{token}"))
                        .json(&json!({"callType": "audio"}))
                        .send(),
                )
                .await;
                let ok = observation.ok();
                seen.push(observation);
                match body["callId"].as_str().filter(|_| ok) {
                    Some(call_id) => {
                        acked
                            .calls
                            .push((session.clone(), token.to_string(), call_id.into()))
                    }
                    None => pause().await,
                }
            }
        }
    }
    (seen, acked)
}

/// A Hawk-signed POST as a `reqwest` result, for [`observe`].
async fn signed(device: &Device, path: &str, body: Value) -> reqwest::Result<reqwest::Response> {
    Ok(device.post(path, &body).await)
}

/// Polls the heartbeat until it answers 200; how long that took, or `None`
/// after `within`.
async fn wait_until_healthy(server: &TestServer, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        let answered = tokio::time::timeout(HANG_BOUND, server.heartbeat()).await;
        if matches!(answered, Ok((200, _))) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The database restarted under a load of registrations, call URLs and
/// calls.
///
/// A PostgreSQL cluster of the test's own (`common::private_postgres`):
/// restarting the suite's shared server would break every test running
/// beside this one. It is stopped the way `pg_ctlcluster … restart` stops it
/// (`pg_ctl stop -m fast`: sessions ended, clean shutdown), kept down for a
/// few seconds so that the load surely meets the outage, and started again.
///
/// During the outage every write is answered 503 errno 201 with Retry-After,
/// quickly (none waits out the outage); the server needs nobody to recover
/// (its heartbeat turns green within seconds of the database being back);
/// and every write the load saw acknowledged is there afterwards, checked
/// one by one through a freshly started server (nothing served from the old
/// process's memory).
///
/// Runs in the PostgreSQL pass only: the cluster is PostgreSQL's, whatever
/// the pass, and once is enough.
#[tokio::test]
async fn a_postgres_restart_under_load_fails_fast_recovers_and_loses_nothing() {
    if !common::use_postgres() {
        eprintln!("skipped: runs in the PostgreSQL pass (LOOP_TEST_DATABASE=postgres)");
        return;
    }
    let postgres = tokio::task::spawn_blocking(PrivatePostgres::start_new)
        .await
        .unwrap();
    let postgres = Arc::new(postgres);
    let mut server = TestServer::start_with(ServerOptions {
        database_url: Some(postgres.url.clone()),
        // Calls stay listed for the whole check.
        extra_toml: "[calls]\nduration_seconds = 3600\n\n".into(),
        env: common::load_env(),
        ..Default::default()
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(write_load(server.url.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let down = postgres.clone();
    tokio::task::spawn_blocking(move || down.stop())
        .await
        .unwrap();
    let outage_began = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let outage_ended = Instant::now();
    let up = postgres.clone();
    tokio::task::spawn_blocking(move || up.start())
        .await
        .unwrap();
    let back = Instant::now();

    let recovery = wait_until_healthy(&server, Duration::from_secs(10)).await;
    let recovered_at = Instant::now();
    // Some more load on the recovered server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    let mut acked = Acknowledged::default();
    for task in tasks {
        let (observations, a) = task.await.unwrap();
        seen.extend(observations);
        acked.sessions.extend(a.sessions);
        acked.call_urls.extend(a.call_urls);
        acked.calls.extend(a.calls);
    }
    let logs = server.logs();
    assert!(
        recovery.is_some(),
        "the heartbeat is still failing 10 s after the database came back: {:?}\n{logs}",
        server.heartbeat().await
    );
    eprintln!(
        "database back after {:?}; healthy {:?} later; {} requests, {} sessions, {} call URLs, {} calls acknowledged",
        back - outage_began,
        recovery.unwrap(),
        seen.len(),
        acked.sessions.len(),
        acked.call_urls.len(),
        acked.calls.len()
    );

    // Nothing hung, and every failure was Loop's storage error.
    let slow: Vec<_> = seen.iter().filter(|o| o.elapsed > HANG_BOUND).collect();
    assert!(slow.is_empty(), "requests hung: {slow:?}\n{logs}");
    let wrong: Vec<_> = seen
        .iter()
        .filter(|o| !o.ok() && !o.is_backend_error())
        .collect();
    assert!(wrong.is_empty(), "failures that are not 503/201: {wrong:?}");
    // The load met the outage: requests made while the database was down
    // failed, and each kind of write succeeded again after it.
    let during: Vec<_> = seen
        .iter()
        .filter(|o| o.started >= outage_began && o.started + o.elapsed <= outage_ended)
        .collect();
    assert!(
        during.len() >= 10,
        "too few requests during the outage: {during:?}"
    );
    assert!(during.iter().all(|o| o.is_backend_error()), "{during:?}");
    for route in [
        "POST /registration",
        "POST /call-url",
        "POST /calls/{token}",
    ] {
        assert!(
            seen.iter()
                .any(|o| o.route == route && o.ok() && o.started >= recovered_at),
            "no {route} succeeded after recovery"
        );
    }

    // Every acknowledged write, row by row, through a fresh process.
    server.restart();
    let mut call_urls_of: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for (session, token) in &acked.call_urls {
        call_urls_of.entry(session).or_default().push(token);
    }
    let mut calls_of: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for (session, _, call_id) in &acked.calls {
        calls_of.entry(session).or_default().push(call_id);
    }
    for session in &acked.sessions {
        let device = Device::from_token(&server.url, session);
        let response = device.get("/call-url").await;
        assert_eq!(response.status(), 200, "an acknowledged session is gone");
        let listed: Value = response.json().await.unwrap();
        let listed: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["callToken"].as_str())
            .collect();
        for token in call_urls_of.get(session.as_str()).into_iter().flatten() {
            assert!(
                listed.contains(token),
                "an acknowledged call URL is missing"
            );
        }
        let calls: Value = device.get("/calls?version=0").await.json().await.unwrap();
        let calls: Vec<&str> = calls["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["callId"].as_str())
            .collect();
        for call_id in calls_of.get(session.as_str()).into_iter().flatten() {
            assert!(calls.contains(call_id), "an acknowledged call is missing");
        }
    }
    drop(server);
    drop(postgres);
}

/// The routes that do not touch the failing dependency, asked over and over
/// until `stop` by a device of their own: a call URL's info, a new call URL,
/// the call list, and a call through the default provider.
async fn other_routes(base: String, stop: Arc<AtomicBool>) -> Vec<Observation> {
    let http = client();
    let carol = Device::register_with(&base, json!({})).await;
    let token = carol.create_call_url(&json!({"callerId": "dave"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        seen.push(
            observe(
                "GET /calls/{token}",
                http.get(format!("{base}/calls/{token}")).send(),
            )
            .await
            .0,
        );
        seen.push(
            observe(
                "POST /call-url",
                signed(&carol, "/call-url", json!({"callerId": "erin"})),
            )
            .await
            .0,
        );
        seen.push(
            observe("GET /calls?version=0", async {
                Ok(carol.get("/calls?version=0").await)
            })
            .await
            .0,
        );
        seen.push(
            observe(
                "POST /calls/{token}",
                http.post(format!("{base}/calls/{token}"))
                    .json(&json!({"callType": "audio"}))
                    .send(),
            )
            .await
            .0,
        );
    }
    seen
}

/// Calls through `token` with `body`, over and over until `stop`.
async fn call_load(
    base: String,
    token: String,
    body: Value,
    stop: Arc<AtomicBool>,
) -> Vec<Observation> {
    let http = client();
    let mut seen = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let (observation, _, _) = observe(
            "POST /calls/{token} (failing dependency)",
            http.post(format!("{base}/calls/{token}"))
                .json(&body)
                .send(),
        )
        .await;
        seen.push(observation);
    }
    seen
}

/// Runs three tasks calling through `token` with `body` (which reach the
/// failing dependency) beside [`other_routes`] for a few seconds; checks that
/// nothing hung and the other routes all succeeded; returns what the load
/// saw.
async fn under_load(server: &TestServer, token: &str, body: Value) -> Vec<Observation> {
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(call_load(
                server.url.clone(),
                token.to_string(),
                body.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let others = tokio::spawn(other_routes(server.url.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let others = others.await.unwrap();
    let mut seen = Vec::new();
    for task in load {
        seen.extend(task.await.unwrap());
    }
    assert!(others.len() >= 8, "the other routes barely ran: {others:?}");
    let failed: Vec<_> = others
        .iter()
        .filter(|o| !o.ok() || o.elapsed > HANG_BOUND)
        .collect();
    assert!(
        failed.is_empty(),
        "other routes failed or slowed under the fault: {failed:?}\n{}",
        server.logs()
    );
    let hung: Vec<_> = seen.iter().filter(|o| o.elapsed > HANG_BOUND).collect();
    assert!(hung.is_empty(), "requests hung: {hung:?}");
    assert!(seen.len() >= 6, "the load barely ran: {seen:?}");
    seen
}

/// A fresh call URL of a fresh device (registered with `body`).
async fn call_url_of(server: &TestServer, registration: Value) -> String {
    Device::register_with(&server.url, registration)
        .await
        .create_call_url(&json!({"callerId": "alice"}))
        .await["callToken"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A push server that takes pings and never answers, pinged by every call
/// of a load: calls are still answered at once, other routes too, and the
/// heartbeat names the push server's origin as failing (timed out).
#[tokio::test]
async fn a_hanging_push_server_under_load_is_named_and_slows_nothing() {
    let hanging = common::fake_push::FakePush::start().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: hanging.config(500),
        env: common::load_env(),
        ..Default::default()
    })
    .await;
    let token = call_url_of(
        &server,
        json!({"simplePushURLs": {"calls": hanging.hanging_url("bob")}}),
    )
    .await;
    let seen = under_load(&server, &token, json!({"callType": "audio"})).await;
    let failed: Vec<_> = seen.iter().filter(|o| !o.ok()).collect();
    assert!(
        failed.is_empty(),
        "a hanging push server failed calls: {failed:?}"
    );
    assert!(!hanging.pings_for("bob").is_empty());

    let (status, report) = server.heartbeat().await;
    let entry = &report["push_servers"][&hanging.origin];
    assert_eq!(entry["healthy"], false, "{report}");
    assert_eq!(entry["last_failure"], "timed out", "{report}");
    assert!(entry["failures_in_a_row"].as_u64() >= Some(1), "{report}");
    assert_eq!(status, 200, "a push server's failure is not ours: {report}");
    // Origins only: a push URL's path is a capability.
    assert!(!report.to_string().contains("/hang/bob"), "{report}");
}

/// A vendor API that answers more slowly than the plugin waits, on the
/// channel a load calls on: those calls fail with Loop's 503 without
/// hanging, the other routes (calls on the default provider included) keep
/// answering, and the heartbeat names the vendor plugin.
#[tokio::test]
async fn a_slow_vendor_under_load_is_named_and_slows_nothing_else() {
    let vendor = common::vendor::serve(axum::Router::new().route(
        "/v1/sessions",
        axum::routing::post(async || {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"sessionId": "too-late"}))
        }),
    ))
    .await;
    let component = common::workspace_root().join("tests/plugins/vendor/vendor.wasm");
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[providers.channels]\nslow = \"vendor\"\n\n\
             [plugins.vendor]\ncomponent = {component:?}\nallowed_hosts = [{vendor:?}]\nallow_private = true\n\
             [plugins.vendor.limits]\nwall_ms = 2000\n\
             [plugins.vendor.settings]\napi_url = {vendor:?}\napi_key = \"k\"\napi_secret = \"s\"\ntimeout_ms = 500\n\n"
        ),
        env: common::load_env(),
        ..Default::default()
    })
    .await;
    let token = call_url_of(&server, json!({})).await;
    let seen = under_load(
        &server,
        &token,
        json!({"callType": "audio", "channel": "slow"}),
    )
    .await;
    assert_failures_are_backend_errors(&seen);

    let (status, report) = server.heartbeat().await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["providers"], false, "{report}");
    let vendor = &report["plugins"]["vendor"];
    assert!(
        vendor["healthy"] == false || vendor["cooling_down_seconds"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(report["plugins"]["loopback"]["healthy"], true, "{report}");
}

/// A plugin that traps on every call, serving the channel a load calls on:
/// those calls fail with Loop's 503, the other routes keep answering, and
/// the heartbeat names the plugin.
#[tokio::test]
async fn a_trapping_plugin_under_load_is_named_and_slows_nothing_else() {
    let trap = common::workspace_root().join("tests/plugins/trap/trap.wasm");
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[plugins.trap]\ncomponent = {:?}\n\n[providers.channels]\nbroken = \"trap\"\n\n",
            trap.display().to_string()
        ),
        env: common::load_env(),
        ..Default::default()
    })
    .await;
    let token = call_url_of(&server, json!({})).await;
    let seen = under_load(
        &server,
        &token,
        json!({"callType": "audio", "channel": "broken"}),
    )
    .await;
    assert_failures_are_backend_errors(&seen);

    let (status, report) = server.heartbeat().await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["providers"], false, "{report}");
    assert_eq!(report["plugins"]["trap"]["healthy"], false, "{report}");
    assert_eq!(report["plugins"]["loopback"]["healthy"], true, "{report}");
}

/// Every answer of `seen` is Loop's 503/201 with Retry-After, and there is
/// at least one.
fn assert_failures_are_backend_errors(seen: &[Observation]) {
    assert!(!seen.is_empty());
    let wrong: Vec<_> = seen.iter().filter(|o| !o.is_backend_error()).collect();
    assert!(wrong.is_empty(), "not 503/201 with Retry-After: {wrong:?}");
}

/// A small tmpfs mounted on a fresh folder, unmounted (lazily, in case a
/// process still holds a file) when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _folder: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "this test mounts a small tmpfs to fill the disk under SQLite and needs root \
             (CI runs the suite as root)"
        );
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let output = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "mount a tmpfs: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk {
            path,
            _folder: folder,
        }
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(err) => panic!("filling the disk: {err}"),
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// POST /registration; its observation and session token.
async fn register(server: &TestServer) -> (Observation, Option<String>) {
    let (observation, headers, _) = observe(
        "POST /registration",
        client()
            .post(server.endpoint("/registration"))
            .json(&json!({}))
            .send(),
    )
    .await;
    let token = headers
        .filter(|_| observation.ok())
        .and_then(|h| h.get("hawk-session-token")?.to_str().ok().map(String::from));
    (observation, token)
}

/// SQLite on a full disk (a 4 MiB tmpfs filled up): writes fail with Loop's
/// 503 and a log line saying why, reads keep working, and once space is
/// freed writes succeed again, on a database that is not corrupt and holds
/// everything acknowledged. Needs root (for the mount); runs in the SQLite
/// pass only.
#[tokio::test]
async fn a_full_disk_under_sqlite_fails_writes_keeps_reads_and_recovers() {
    if common::use_postgres() {
        eprintln!("skipped: runs in the SQLite pass");
        return;
    }
    let disk = SmallDisk::mount("4m");
    let database = disk.path.join("loop.db");
    let mut server = TestServer::start_with(ServerOptions {
        database_url: Some(format!("sqlite://{}?mode=rwc", database.display())),
        env: common::load_env(),
        ..Default::default()
    })
    .await;
    let http = client();
    let bob = Device::register_with(&server.url, json!({})).await;
    let before = bob.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();

    let filler = disk.fill();
    // Writes fail once SQLite needs a page the disk no longer has.
    let mut refused = None;
    for _ in 0..500 {
        let (observation, _) = register(&server).await;
        assert!(observation.elapsed < HANG_BOUND, "{observation:?}");
        if !observation.ok() {
            refused = Some(observation);
            break;
        }
    }
    let refused = refused.expect("500 registrations on a full disk all succeeded");
    assert!(refused.is_backend_error(), "{refused:?}");
    let logs = server.wait_for_log("database or disk is full").await;
    assert!(logs.contains("storage error"), "{logs}");
    let (observation, _) = register(&server).await;
    assert!(observation.is_backend_error(), "{observation:?}");

    // Reads keep working.
    let info = http
        .get(server.endpoint(&format!("/calls/{before}")))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let (_, report) = server.heartbeat().await;
    assert_eq!(report["storage"], true, "{report}");

    // Space freed: writes succeed again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let (observation, _) = register(&server).await;
    assert!(observation.ok(), "{observation:?}\n{}", server.logs());
    let after = bob.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    common::place_call(
        &http,
        &server.endpoint(&format!("/calls/{after}")),
        &json!({"callType": "audio"}),
    )
    .await;

    // Not corrupt, and both call URLs are there.
    assert!(server.terminate(), "{}", server.logs());
    use sqlx::Connection;
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", database.display()))
            .await
            .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    for token in [&before, &after] {
        let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_urls WHERE token = ?1")
            .bind(token)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(found, 1);
    }
    conn.close().await.unwrap();
    drop(server);
    drop(disk);
}
