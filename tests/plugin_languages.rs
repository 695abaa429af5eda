//! Provider plugins written in other languages and built by their own
//! toolchains: the Python livekit example (componentize-py), the JavaScript
//! jitsi example (jco with QuickJS-NG), and a Python plugin that tries to leave
//! its sandbox. Each component holds a whole interpreter; the Python ones
//! import WASI.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::examples::{
    plugin_report, plugin_toml, start_warm, wait_until_ready, warm_data_dir,
};
use crate::common::vendor::{
    Attempt, attempt_call, attempt_call_on, call_flow, call_flow_named, call_owner, run_sdk,
};
use crate::common::{ServerOptions, TestServer};
use crate::{vendor_jitsi, vendor_livekit};

#[tokio::test]
async fn python_livekit_example_serves_the_call_flow_with_the_sdks_tokens() {
    let settings = vendor_livekit::settings(vendor_livekit::CLIENT_URL, false);
    let server = start_warm(
        format!(
            "[providers]\ndefault = \"livekit\"\n\n{}",
            plugin_toml("livekit", "python-livekit", &settings)
        ),
        false,
    )
    .await;
    let call = call_flow(&server, None).await;
    vendor_livekit::check_call(&call, vendor_livekit::CLIENT_URL, vec![]).await;
    let again = call_flow(&server, None).await;
    assert_ne!(again.caller["sessionId"], call.caller["sessionId"]);
    let report = plugin_report(&server, "livekit").await;
    assert_eq!(report["state"], "ready");
    assert!(
        !server.logs().contains(vendor_livekit::API_SECRET),
        "the secret is never logged"
    );
}

/// A server whose every call goes to the JavaScript jitsi example, with
/// `settings` (TOML lines).
async fn javascript_jitsi(settings: &str) -> TestServer {
    start_warm(
        format!(
            "[providers]\ndefault = \"jitsi\"\n\n{}",
            plugin_toml("jitsi", "javascript-jitsi", settings)
        ),
        false,
    )
    .await
}

/// `tokens` (as `tests/vendor_sdks/jitsi.py` takes them) checked with pyjwt
/// against the self-hosted settings; their claims.
async fn self_hosted_claims(tokens: Value) -> Value {
    let checked = run_sdk(
        "jitsi.py",
        &json!({
            "mode": "hs256",
            "app_id": vendor_jitsi::SELF_HOSTED_APP_ID,
            "domain": "meet.example.com",
            "app_secret": vendor_jitsi::APP_SECRET,
            "tokens": tokens,
        }),
    )
    .await;
    checked["claims"].clone()
}

#[tokio::test]
async fn javascript_jitsi_example_serves_the_call_flow_with_tokens_pyjwt_accepts() {
    let account = format!(
        "base_url = {:?}\napp_id = {:?}\n",
        vendor_jitsi::SELF_HOSTED_URL,
        vendor_jitsi::SELF_HOSTED_APP_ID,
    );
    let server = javascript_jitsi(&format!(
        "{account}app_secret = {:?}\n",
        vendor_jitsi::APP_SECRET
    ))
    .await;
    let (call, room, owner) = vendor_jitsi::call(&server, vendor_jitsi::SELF_HOSTED_URL).await;
    let claims = self_hosted_claims(vendor_jitsi::tokens(&call, &room, &owner)).await;
    assert_eq!(claims[0]["context"]["user"]["moderator"], false);
    assert_eq!(claims[1]["context"]["user"]["moderator"], true);

    // Names beyond ASCII reach the claims intact: the plugin encodes UTF-8
    // itself (two-, three- and four-byte characters).
    let (caller_id, issuer) = ("zoë ∑ 🦊", "Bób");
    let call = call_flow_named(&server, None, caller_id, issuer).await;
    let room = call.caller["sessionId"].as_str().unwrap();
    let owner = call_owner(&server, call.caller["callId"].as_str().unwrap()).await;
    let claims = self_hosted_claims(json!([
        {"token": call.caller["sessionToken"], "identity": caller_id, "name": caller_id,
         "moderator": false, "room": room, "lifetime": 86400},
        {"token": call.callee["sessionToken"], "identity": owner, "name": issuer,
         "moderator": true, "room": room, "lifetime": 86400},
    ]))
    .await;
    assert_eq!(claims[0]["context"]["user"]["name"], caller_id);
    assert!(!server.logs().contains(vendor_jitsi::APP_SECRET));

    // A thrown provider-error value is the export's `err`, not a trap: the
    // call fails as misconfigured, with the plugin's message naming the
    // setting.
    let server = javascript_jitsi(&account).await;
    let refused = attempt_call(&server).await;
    assert_eq!(
        (refused.status, refused.body["errno"].clone()),
        (503, json!(201)),
        "{}",
        refused.body
    );
    server
        .wait_for_log("provider jitsi is misconfigured: setting `app_secret` is not set")
        .await;
}

/// What the sandbox plugin tries (its `attempt` setting), and what the
/// server's log must then say about the refused call.
const ESCAPES: &[(&str, &[&str])] = &[
    ("file", &["rejected the request: blocked: "]),
    (
        "env",
        &["rejected the request: blocked: os.environ is empty"],
    ),
    ("socket", &["rejected the request: blocked: "]),
    ("loop", &["exceeded its CPU budget of 100 ms"]),
    // WASI 0.2's exit carries only success or failure: sys.exit(3) is status 1.
    (
        "exit",
        &["called wasi:cli/exit (status 1) instead of returning"],
    ),
    ("memory", &["exceeded its memory limit of 16 MiB"]),
];

/// A canary in the server's own environment: no plugin may read it.
const CANARY: &str = "canary-5d1f0c2e-not-for-plugins";

#[tokio::test]
async fn a_python_plugin_cannot_read_files_or_the_environment_open_sockets_or_run_forever() {
    // One table per attempt, each serving a channel of its name.
    let mut toml = String::from("[providers]\ndefault = \"loopback\"\n[providers.channels]\n");
    for (attempt, _) in ESCAPES
        .iter()
        .chain(&[("none", &[][..]), ("print", &[][..])])
    {
        toml.push_str(&format!("{attempt} = \"sandbox-{attempt}\"\n"));
    }
    for (attempt, _) in ESCAPES
        .iter()
        .chain(&[("none", &[][..]), ("print", &[][..])])
    {
        toml.push_str(&plugin_toml(
            &format!("sandbox-{attempt}"),
            "python-sandbox",
            &format!("attempt = {attempt:?}"),
        ));
        toml.push_str(&format!(
            "[plugins.sandbox-{attempt}.limits]\nmemory_mib = 16\ncpu_ms = 100\n"
        ));
    }
    let server = TestServer::start_with(ServerOptions {
        extra_toml: toml,
        seed_data_dir: Some(warm_data_dir().await),
        env: vec![("LOOP_TEST_CANARY".into(), CANARY.into())],
        ..Default::default()
    })
    .await;

    for (attempt, expected) in ESCAPES {
        let refused = attempt_channel(&server, attempt).await;
        assert_eq!(
            (refused.status, refused.body["errno"].as_u64()),
            (503, Some(201)),
            "{attempt}: {}",
            refused.body
        );
        let logs = server.logs();
        for needle in *expected {
            assert!(
                logs.contains(&format!("sandbox-{attempt}")) && logs.contains(needle),
                "{attempt}: no {needle:?} in the logs:\n{logs}"
            );
        }
        // The server and the sandbox stay up: the next call is served.
        let served = attempt_channel(&server, "none").await;
        assert_eq!(served.status, 200, "after {attempt}: {}", served.body);
        assert_eq!(served.body["apiKey"], "sandbox");
    }
    let logs = server.logs();
    assert!(!logs.contains("ESCAPED"), "nothing escaped:\n{logs}");
    assert!(!logs.contains(CANARY) && !logs.contains("root:x:0"));

    // 10 MiB to stdout and stderr: the call succeeds, its output reaches the
    // log under the plugin's name, and only 16 KiB of it.
    let printed = attempt_channel(&server, "print").await;
    assert_eq!(printed.status, 200, "{}", printed.body);
    let logs = server.logs();
    let lines = logs
        .lines()
        .filter(|line| line.contains("sandbox-print") && line.contains(&"x".repeat(1023)))
        .count();
    assert!((1..=16).contains(&lines), "{lines} lines of output logged");
    assert!(
        logs.contains("plugin writes too much output; dropping the rest for this call"),
        "{logs}"
    );
}

/// `POST /calls/{token}` on a new call URL, on `channel`.
async fn attempt_channel(server: &TestServer, channel: &str) -> Attempt {
    attempt_call_on(server, Some(channel)).await
}

#[tokio::test]
async fn a_big_component_compiles_in_the_background_while_the_fallback_serves() {
    // A fresh data folder: nothing compiled yet.
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[providers]\ndefault = \"sandbox\"\nfallback = [\"loopback\"]\n\n{}",
            plugin_toml("sandbox", "python-sandbox", "attempt = \"none\"")
        ),
        ..Default::default()
    })
    .await;
    // The server listens before the component is compiled, says so, and
    // serves calls through the fallback meanwhile.
    let report = plugin_report(&server, "sandbox").await;
    assert_eq!(report["state"], "compiling", "{report}");
    let (status, _) = server.heartbeat().await;
    assert_eq!(status, 200, "the fallback serves every call");
    let served = attempt_call(&server).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_ne!(served.body["apiKey"], "sandbox", "served by the fallback");
    assert!(
        server
            .logs()
            .contains("compiling a big plugin component in the background")
    );

    wait_until_ready(&server, "sandbox", Duration::from_secs(300)).await;
    let served = attempt_call(&server).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(
        served.body["apiKey"], "sandbox",
        "served by the plugin itself"
    );
    // The next start finds it in the compile cache: ready at once.
    let mut server = server;
    server.restart();
    let report = plugin_report(&server, "sandbox").await;
    assert_eq!(report["state"], "ready", "{report}");
}

#[test]
fn plugins_check_lists_the_wasi_a_python_plugin_would_be_granted() {
    let output = std::process::Command::new(crate::common::server_binary())
        .args(["plugins", "check"])
        .arg(crate::common::examples::component("python-sandbox"))
        .env("LOOP_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "WASI granted (locked down, the same for every plugin):",
        "wasi:filesystem/preopens@0.2.9: no directories",
        "wasi:sockets/tcp-create-socket@0.2.9: TCP refused",
        "wasi:cli/environment@0.2.9: no variables, no arguments, no working directory",
        "wasi:cli/stdout@0.2.9: into the host's log under the plugin's name, bounded",
        "provider: sandbox",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}
