//! The Loop user flow end to end over real HTTP, the service endpoints, and how
//! push pings behave when push servers misbehave.

use crate::common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer, call_through_new_url, client, place_call};
use serde_json::{Value, json};

async fn start_with_push(push: &FakePush, timeout_ms: u64) -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: push.config(timeout_ms),
        ..Default::default()
    })
    .await
}

/// A capability token: 16 bytes (128 bits) as unpadded URL-safe base64.
fn assert_random_128_bits(what: &str, token: &str) {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .unwrap_or_else(|err| panic!("{what} {token:?} is not URL-safe base64: {err}"));
    assert_eq!(bytes.len() * 8, 128, "{what} {token:?}");
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The loopback provider's token: `v1.<payload>.<mac>`, payload = role:u8 |
/// expires_at:u64 | len:u16 | session id | len:u16 | identity. Returns
/// (session id, identity).
fn loopback_grant(token: &str) -> (String, String) {
    let mut parts = token.split('.');
    assert_eq!(parts.next(), Some("v1"), "loopback token version: {token}");
    let payload = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    assert!(parts.next().is_some(), "loopback token has a MAC");
    let mut at = 1 + 8;
    let mut field = || {
        let len = u16::from_be_bytes([payload[at], payload[at + 1]]) as usize;
        let value = String::from_utf8(payload[at + 2..at + 2 + len].to_vec()).unwrap();
        at += 2 + len;
        value
    };
    let session_id = field();
    let identity = field();
    (session_id, identity)
}

#[tokio::test]
async fn the_whole_flow_from_registration_to_listing_the_call() {
    let push = FakePush::start().await;
    let server = start_with_push(&push, 5000).await;
    let http = client();

    // 1. Bob's device registers its push URL and gets a session.
    let bob = Device::register(&server.url, &push.url("bob-laptop")).await;

    // 2. Bob asks for a call URL for Alice.
    let created = bob
        .create_call_url(
            &json!({"callerId": "alice@example.com", "issuer": "Bob", "subject": "Dinner?"}),
        )
        .await;
    let token = created["callToken"].as_str().unwrap().to_string();
    assert_random_128_bits("callToken", &token);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "URL-safe: {token}"
    );
    // 3. The URL Bob hands out.
    let call_url = created["callUrl"].as_str().unwrap();
    assert_eq!(call_url, format!("{}/c/{token}", server.url));
    let expires_at = created["expiresAt"].as_i64().unwrap();
    let thirty_days = 720 * 3600;
    assert!(
        (expires_at - now() - thirty_days).abs() < 120,
        "default TTL is 720 h: {expires_at}"
    );

    // Bob sees it in his list.
    let listed: Value = bob.get("/call-url").await.json().await.unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["callToken"], token);
    assert_eq!(listed[0]["callerId"], "alice@example.com");
    assert_eq!(listed[0]["issuer"], "Bob");
    assert_eq!(listed[0]["subject"], "Dinner?");
    assert_eq!(listed[0]["expiresAt"], expires_at);

    // 4. Alice opens it: the server says who she would call.
    let response = http
        .get(server.endpoint(&format!("/calls/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let info: Value = response.json().await.unwrap();
    assert_eq!(info["calleeFriendlyName"], "Bob");
    assert_eq!(info["subject"], "Dinner?");
    let url_creation_date = info["urlCreationDate"].as_i64().unwrap();
    assert!((url_creation_date - now()).abs() < 120);

    // 5-9. Alice calls; the provider issues both tokens; Bob's device is pinged.
    let placed = place_call(
        &http,
        &server.endpoint(&format!("/calls/{token}")),
        &json!({"callType": "audio-video"}),
    )
    .await;
    for field in [
        "callId",
        "websocketToken",
        "sessionId",
        "sessionToken",
        "apiKey",
        "progressURL",
    ] {
        assert!(
            placed[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field} in {placed}"
        );
    }
    // Call ids and websocket tokens are capabilities too. A call id starts
    // with its creation time (milliseconds, 12 hex digits), so that new ids
    // are appended to their index.
    let (millis, random) = placed["callId"].as_str().unwrap().split_at(12);
    let millis = i64::from_str_radix(millis, 16).expect("callId starts with 12 hex digits");
    assert!((millis / 1000 - now()).abs() <= 60, "callId time {millis}");
    assert_random_128_bits("callId's random part", random);
    assert_random_128_bits("websocketToken", placed["websocketToken"].as_str().unwrap());
    let port = server.url.rsplit(':').next().unwrap();
    assert_eq!(
        placed["progressURL"],
        format!("ws://127.0.0.1:{port}/websocket")
    );

    let pings = push.wait_for("bob-laptop", 1).await;
    assert_eq!(pings.len(), 1);
    let version: i64 = pings[0]
        .body
        .strip_prefix("version=")
        .expect("form body version=<ts>")
        .parse()
        .unwrap();
    assert!((version - now()).abs() < 120);
    assert_eq!(
        pings[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );

    // 10. Bob lists his incoming calls since that version.
    let response = bob.get(&format!("/calls?version={version}")).await;
    assert_eq!(response.status(), 200);
    let calls: Value = response.json().await.unwrap();
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call["callId"], placed["callId"]);
    assert_eq!(call["callType"], "audio-video");
    assert_eq!(call["callerId"], "alice@example.com");
    assert_ne!(
        call["websocketToken"], placed["websocketToken"],
        "each side has its own progress token"
    );
    assert_random_128_bits("websocketToken", call["websocketToken"].as_str().unwrap());
    assert_eq!(call["apiKey"], placed["apiKey"]);
    assert_eq!(call["sessionId"], placed["sessionId"]);
    assert_eq!(call["progressURL"], placed["progressURL"]);
    assert_eq!(call["subject"], "Dinner?");
    assert_eq!(call["callUrl"], call_url);
    assert_eq!(call["callToken"], token);
    assert_eq!(call["urlCreationDate"], url_creation_date);
    assert_ne!(
        call["sessionToken"], placed["sessionToken"],
        "each side has its own token"
    );

    // Both tokens grant the same provider session, to the two different sides.
    let (alice_session, alice_identity) = loopback_grant(placed["sessionToken"].as_str().unwrap());
    let (bob_session, bob_identity) = loopback_grant(call["sessionToken"].as_str().unwrap());
    assert_eq!(alice_session, placed["sessionId"].as_str().unwrap());
    assert_eq!(bob_session, alice_session);
    assert_eq!(alice_identity, "alice@example.com");
    assert_ne!(bob_identity, alice_identity);

    // A later version no longer lists it; /v0 serves the same API.
    let later: Value = bob
        .get(&format!("/v0/calls?version={}", version + 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later["calls"].as_array().unwrap().len(), 0);
    let again: Value = bob.get("/v0/calls?version=0").await.json().await.unwrap();
    assert_eq!(again["calls"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn call_urls_can_be_updated_and_revoked_by_their_owner() {
    let push = FakePush::start().await;
    let server = start_with_push(&push, 2000).await;
    let bob = Device::register(&server.url, &push.url("bob")).await;
    let created = bob
        .create_call_url(&json!({"callerId": "alice", "expiresIn": 2}))
        .await;
    let token = created["callToken"].as_str().unwrap();
    let expires_at = created["expiresAt"].as_i64().unwrap();
    assert!((expires_at - now() - 2 * 3600).abs() < 120);

    let response = bob
        .put(
            &format!("/call-url/{token}"),
            &json!({"callerId": "carol", "issuer": "Robert", "expiresIn": 5}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    let new_expiry = updated["expiresAt"].as_i64().unwrap();
    assert!((new_expiry - now() - 5 * 3600).abs() < 120);
    let listed: Value = bob.get("/call-url").await.json().await.unwrap();
    assert_eq!(listed[0]["callerId"], "carol");
    assert_eq!(listed[0]["issuer"], "Robert");
    assert_eq!(listed[0]["expiresAt"], new_expiry);
    let info: Value = client()
        .get(server.endpoint(&format!("/calls/{token}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["calleeFriendlyName"], "Robert");

    let response = bob.delete(&format!("/call-url/{token}")).await;
    assert_eq!(response.status(), 204);
    let listed: Value = bob.get("/call-url").await.json().await.unwrap();
    assert_eq!(listed, json!([]));
    let response = client()
        .get(server.endpoint(&format!("/calls/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errno"], 105);
}

#[tokio::test]
async fn service_endpoints() {
    let server = TestServer::start_with(ServerOptions {
        extra_toml: "[push]\nserver_uri = \"wss://push.test.invalid/\"\n".into(),
        ..Default::default()
    })
    .await;
    let http = client();

    for root in ["/", "/v0", "/v0/"] {
        let response = http.get(server.endpoint(root)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{root}");
        let stamp: i64 = response.headers()["timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((stamp - now()).abs() < 120);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["name"], "loop-server");
        assert_eq!(body["endpoint"], server.url);
        for field in ["description", "version", "homepage"] {
            assert!(
                body[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field} in {body}"
            );
        }
    }

    let (status, report) = server.heartbeat().await;
    assert_eq!(status, 200);
    for part in ["storage", "providers", "push"] {
        assert_eq!(report[part], true, "{part} in {report}");
    }
    let loopback = &report["plugins"]["loopback"];
    assert_eq!(loopback["healthy"], true, "{report}");
    assert_eq!(loopback["cooling_down_seconds"], 0, "{report}");
    assert!(
        loopback["calls"].as_u64().is_some_and(|calls| calls >= 1),
        "describe at load counts: {report}"
    );
    assert!(loopback["busy_ms"].is_u64(), "{report}");

    let response = http
        .get(server.endpoint("/__lbheartbeat__"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));

    let response = http
        .get(server.endpoint("/v0/push-server-config"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"pushServerURI": "wss://push.test.invalid/"})
    );
}

#[tokio::test]
async fn cors_follows_the_allowed_origins() {
    let server = TestServer::start_with(ServerOptions {
        extra_toml: "[cors]\nallowed_origins = [\"https://hello.example\"]\n".into(),
        ..Default::default()
    })
    .await;
    let http = client();
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.endpoint("/registration"))
        .header("origin", "https://hello.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://hello.example"
    );
    assert!(preflight.headers().contains_key("timestamp"));

    let response = http
        .get(server.endpoint("/"))
        .header("origin", "https://hello.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://hello.example"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "hawk-session-token",
        "server-authorization",
        "timestamp",
        "retry-after",
    ] {
        assert!(exposed.contains(header), "{header} exposed: {exposed}");
    }

    let response = http
        .get(server.endpoint("/"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn pings_reach_every_device_and_a_hanging_push_server_does_not_hold_the_call() {
    let push = FakePush::start().await;
    let timeout_ms = 3000;
    let server = start_with_push(&push, timeout_ms).await;
    let http = client();

    // Three callees (anonymous devices are users of their own): one whose push
    // server answers, one whose push server hangs, one whose push server fails.
    let laptop = Device::register(&server.url, &push.url("laptop")).await;
    let token = laptop.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    let phone = Device::register(&server.url, &push.hanging_url("phone")).await;
    let phone_token = phone.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    let tablet = Device::register(&server.url, &push.failing_url("tablet")).await;
    let tablet_token = tablet.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();

    let started = std::time::Instant::now();
    let mut placed = Vec::new();
    for token in [&token, &phone_token, &tablet_token] {
        // Push trouble never fails the call.
        placed.push(
            place_call(
                &http,
                &server.endpoint(&format!("/calls/{token}")),
                &json!({"callType": "audio"}),
            )
            .await,
        );
    }
    // Calls are answered without waiting for push servers: well before the
    // hanging one's ping times out.
    assert!(
        started.elapsed() < std::time::Duration::from_millis(timeout_ms),
        "the calls waited for the pings: {:?}",
        started.elapsed()
    );

    push.wait_for("laptop", 1).await;
    push.wait_for("phone", 1).await;
    push.wait_for("tablet", 1).await;

    // Every call is listed to its callee whatever happened to the ping.
    for (device, call) in [
        (&laptop, &placed[0]),
        (&phone, &placed[1]),
        (&tablet, &placed[2]),
    ] {
        let calls: Value = device.get("/calls?version=0").await.json().await.unwrap();
        assert_eq!(calls["calls"][0]["callId"], call["callId"]);
        assert_eq!(calls["calls"][0]["callType"], "audio");
    }

    // The failures are logged (by origin, never the capability URL) and counted.
    server.wait_for_log("callee notified sent=0 failed=1").await;
    let logs = server.wait_for_log("push failed: timed out").await;
    assert!(
        logs.contains("push failed: refused by the push server"),
        "{logs}"
    );
    assert!(logs.contains("callee notified sent=1 failed=0"), "{logs}");
    assert!(logs.contains("callee notified sent=0 failed=1"), "{logs}");
    assert!(!logs.contains("/hang/phone"), "push URLs are not logged");
}

#[tokio::test]
async fn shutdown_waits_for_the_pings_of_answered_calls() {
    let push = FakePush::start().await;
    let mut server = start_with_push(&push, 1500).await;
    let bob = Device::register(&server.url, &push.hanging_url("bob")).await;
    call_through_new_url(&server, &bob).await;
    push.wait_for("bob", 1).await;
    assert!(server.terminate(), "{}", server.logs());
    // The ping to the hanging push server was still in flight when the call
    // was answered: shutdown waited for its timeout rather than dropping it.
    let logs = server.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(logs.contains("push failed: timed out"), "{logs}");
    assert!(logs.contains("callee notified sent=0 failed=1"), "{logs}");
}

#[tokio::test]
async fn a_device_without_push_url_still_gets_its_calls_listed() {
    let push = FakePush::start().await;
    let server = start_with_push(&push, 2000).await;
    let bob = Device::register(&server.url, &push.url("bob")).await;
    let token = bob.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bob.delete("/registration").await.status(), 204);
    place_call(
        &client(),
        &server.endpoint(&format!("/v0/calls/{token}")),
        &json!({"callType": "audio-video", "subject": "Now?"}),
    )
    .await;
    let calls: Value = bob.get("/calls?version=0").await.json().await.unwrap();
    assert_eq!(calls["calls"][0]["subject"], "Now?");
    assert!(push.pings().is_empty(), "no push URL left to ping");
}
