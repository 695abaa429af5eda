//! What every vendor provider's tests share: the real REST call flow through a
//! server whose `config.toml` picks the vendor's plugin, the vendors' own SDKs
//! (Python, in the virtualenv `scripts/test` makes) to check what the plugin
//! issued, and a place to serve a fake vendor API on 127.0.0.1.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::hawk::Device;
use super::{TestServer, client, place_call, workspace_root};

/// Both sides of one call placed through the REST API.
pub struct VendorCall {
    /// Alice's answer to `POST /calls/{token}`: `sessionId`, `sessionToken`, `apiKey`, …
    pub caller: Value,
    /// Bob's entry in `GET /calls?version=0`.
    pub callee: Value,
    /// Bob's device, to list calls again or revoke.
    pub device: Device,
}

/// Bob registers, makes a call URL for `alice` with `issuer` "Bob", Alice
/// calls through it (with `channel` when given), and Bob lists his calls.
pub async fn call_flow(server: &TestServer, channel: Option<&str>) -> VendorCall {
    let device = Device::register_with(&server.url, json!({})).await;
    let created = device
        .send(
            reqwest::Method::POST,
            "/call-url",
            Some(&json!({"callerId": "alice", "issuer": "Bob"})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let token = created["callToken"].as_str().unwrap().to_owned();
    let mut body = json!({"callType": "audio-video"});
    if let Some(channel) = channel {
        body["channel"] = json!(channel);
    }
    let caller = place_call(
        &client(),
        &server.endpoint(&format!("/calls/{token}")),
        &body,
    )
    .await;
    let listed = device.get("/calls?version=0").await;
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.unwrap();
    let calls = listed["calls"].as_array().unwrap().clone();
    let callee = calls
        .into_iter()
        .find(|call| call["callId"] == caller["callId"])
        .expect("the callee lists the call");
    VendorCall {
        caller,
        callee,
        device,
    }
}

/// The Python of the virtualenv holding the vendors' SDKs
/// (`LOOP_TEST_VENDOR_PYTHON`, else `target/vendor-sdks/bin/python`).
pub fn sdk_python() -> PathBuf {
    std::env::var_os("LOOP_TEST_VENDOR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/vendor-sdks/bin/python"))
}

/// Runs `tests/vendor_sdks/<script>` with `input` as JSON on stdin and returns
/// the JSON it prints; panics with its stderr when it fails.
pub async fn run_sdk(script: &str, input: &Value) -> Value {
    let python = sdk_python();
    assert!(
        python.exists(),
        "{} is missing: scripts/test makes the vendor SDK virtualenv",
        python.display()
    );
    let path = workspace_root().join("tests/vendor_sdks").join(script);
    let mut child = tokio::process::Command::new(&python)
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", python.display()));
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(input).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the SDK check finishes within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{script} printed no JSON: {stdout}"))
}

/// Serves `router` on a fresh 127.0.0.1 port; returns its origin
/// (`http://127.0.0.1:PORT`). The server lives as long as the test's runtime.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    origin
}

/// The `[plugins.<name>]` table of the vendor plugin `name` built in
/// `plugins/<name>/`, reaching `allowed_hosts`, with `settings` (TOML lines).
pub fn plugin_toml(name: &str, allowed_hosts: &[&str], settings: &str) -> String {
    let component = workspace_root().join(format!("plugins/{name}/{name}.wasm"));
    let hosts: Vec<String> = allowed_hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "[plugins.{name}]\ncomponent = {component:?}\nallowed_hosts = [{}]\nallow_private = true\n\
         [plugins.{name}.settings]\n{settings}\n",
        hosts.join(", ")
    )
}
