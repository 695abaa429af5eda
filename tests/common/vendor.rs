//! What every vendor provider's tests share: the real REST call flow through a
//! server whose `config.toml` picks the vendor's plugin, the vendors' own SDKs
//! (Python, in the virtualenv `scripts/test` makes) to check what the plugin
//! issued, and a place to serve a fake vendor API on 127.0.0.1.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

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
    call_flow_named(server, channel, "alice", "Bob").await
}

/// [`call_flow`] with the call URL's `callerId` and `issuer` given.
pub async fn call_flow_named(
    server: &TestServer,
    channel: Option<&str>,
    caller_id: &str,
    issuer: &str,
) -> VendorCall {
    let device = Device::register_with(&server.url, json!({})).await;
    let created = device
        .send_verified(
            "POST",
            "/call-url",
            Some(&json!({"callerId": caller_id, "issuer": issuer})),
        )
        .await;
    created.assert_status(200);
    let token = created.json()["callToken"].as_str().unwrap().to_owned();
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
    let listed = device.send_verified("GET", "/calls?version=0", None).await;
    listed.assert_status(200);
    let calls = listed.json()["calls"].as_array().unwrap().clone();
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

/// A server whose `config.toml` makes the vendor plugin `name` the default
/// provider (its table from `plugin_toml`), followed by the `extra` tables,
/// with `env` in the server's environment.
pub async fn start(
    name: &str,
    allowed_hosts: &[&str],
    settings: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> TestServer {
    TestServer::start_with(super::ServerOptions {
        loopback: false,
        extra_toml: format!(
            "[providers]\ndefault = {name:?}\n\n{}\n{extra}",
            plugin_toml(name, allowed_hosts, settings)
        ),
        env: env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        ..Default::default()
    })
    .await
}

/// Waits, up to 20 s, until `done` holds: a provider session is ended after
/// the call's answer, so the fake vendor sees it a little later.
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the fake vendor never saw {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The claims of a JWT, unverified: the vendor SDK scripts verify them.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// How a fake vendor API answers, as the test sets it.
#[derive(Clone, Copy, Debug, Default)]
pub enum Answer {
    #[default]
    Ok,
    Status(u16),
    /// Waits this long, then answers like `Ok`.
    Slow(Duration),
}

/// A fake vendor endpoint's answer mode and the requests it has seen.
#[derive(Default)]
pub struct Answering {
    answer: std::sync::Mutex<Answer>,
    requests: std::sync::atomic::AtomicUsize,
}

impl Answering {
    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a request and plays the answer mode: the failure (its status
    /// with `error_body`) the test asked for, or, after any delay, `None`
    /// for the endpoint to answer normally.
    pub async fn begin(&self, error_body: &'static str) -> Option<axum::response::Response> {
        use axum::response::IntoResponse;
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = *self.answer.lock().unwrap();
        match answer {
            Answer::Status(status) => {
                let status = axum::http::StatusCode::from_u16(status).unwrap();
                Some((status, error_body).into_response())
            }
            Answer::Slow(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            Answer::Ok => None,
        }
    }
}

/// Unix time in seconds, for checking the times in tokens.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What a caller got from `POST /calls/{token}`, success or not.
pub struct Attempt {
    pub status: u16,
    pub body: Value,
    pub retry_after: bool,
}

/// Alice calls through a fresh call URL of a fresh device of Bob's; the call
/// may fail.
pub async fn attempt_call(server: &TestServer) -> Attempt {
    attempt_call_on(server, None).await
}

/// [`attempt_call`], asking for `channel` when given.
pub async fn attempt_call_on(server: &TestServer, channel: Option<&str>) -> Attempt {
    let device = Device::register_with(&server.url, json!({})).await;
    let token = device
        .create_call_url(&json!({"callerId": "alice", "issuer": "Bob"}))
        .await["callToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut body = json!({"callType": "audio-video"});
    if let Some(channel) = channel {
        body["channel"] = json!(channel);
    }
    let response = client()
        .post(server.endpoint(&format!("/calls/{token}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    Attempt {
        status,
        body,
        retry_after,
    }
}

/// A provider failure reaches the caller as Loop's JSON error: 503, errno 201
/// (BACKEND), with `Retry-After`.
pub fn assert_provider_error(attempt: &Attempt) {
    let body = &attempt.body;
    assert_eq!(attempt.status, 503, "{body}");
    assert_eq!(body["errno"], 201, "{body}");
    assert_eq!(body["code"], 503, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(attempt.retry_after, "503 comes with Retry-After");
}

/// The call URL owner's user id (the callee's identity): the host does not
/// show it to clients, so the test reads it from the call's row (waiting,
/// bounded, in case the row is still in the server's write batch).
pub async fn call_owner(server: &TestServer, call_id: &str) -> String {
    use sqlx::Connection;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let owner: Option<String> = if super::use_postgres() {
            let mut conn = sqlx::PgConnection::connect(&server.database_url)
                .await
                .unwrap();
            sqlx::query_scalar("SELECT user_id FROM calls WHERE call_id = $1")
                .bind(call_id)
                .fetch_optional(&mut conn)
                .await
                .unwrap()
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&server.database_url)
                .await
                .unwrap();
            sqlx::query_scalar("SELECT user_id FROM calls WHERE call_id = ?1")
                .bind(call_id)
                .fetch_optional(&mut conn)
                .await
                .unwrap()
        };
        if let Some(owner) = owner {
            return owner;
        }
        assert!(Instant::now() < deadline, "no row for call {call_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends `call` as its caller does: hello, then terminate, on the progress socket.
pub async fn hang_up(call: &VendorCall) {
    let mut ws =
        super::ws::WsClient::connect_url(call.caller["progressURL"].as_str().unwrap(), None).await;
    ws.send(json!({
        "messageType": "hello",
        "callId": call.caller["callId"],
        "auth": call.caller["websocketToken"],
    }))
    .await;
    assert_eq!(ws.recv().await["messageType"], "hello");
    ws.send(json!({"messageType": "action", "event": "terminate", "reason": "cancel"}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"messageType": "progress", "state": "terminated", "reason": "cancel"})
    );
    ws.close().await;
}
