//! Hawk device sessions and BrowserID, black-box against the real binary.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::hawk::{Credentials, Device, Options, send, send_signed, sign};
use common::{ServerOptions, TestServer, client};
use serde_json::{Value, json};

/// Push URLs in these tests point at an origin listed in push.allowed_origins
/// and are never contacted.
const PUSH_ORIGIN: &str = "http://127.0.0.1:9";

fn push_toml() -> String {
    format!("[push]\nallowed_origins = [\"{PUSH_ORIGIN}\"]\n\n")
}

async fn start() -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: push_toml(),
        ..ServerOptions::default()
    })
    .await
}

/// Anonymous registration; returns the session token.
async fn register(server: &TestServer) -> String {
    let body = json!({"simplePushURLs": {"calls": format!("{PUSH_ORIGIN}/calls/1")}});
    Device::register_with(&server.url, body).await.token
}

#[tokio::test]
async fn registration_gives_a_session_usable_with_a_third_party_hawk_client() {
    let server = start().await;
    let token = register(&server).await;
    let creds = Credentials::from_token(&token);
    let http = client();

    // Re-registering with Hawk updates the session; the body hash is checked.
    let body = json!({"simplePushURLs": {"calls": format!("{PUSH_ORIGIN}/calls/2"), "rooms": format!("{PUSH_ORIGIN}/rooms/2")}});
    let response = send(
        &http,
        &creds,
        "POST",
        &server.endpoint("/v0/registration"),
        Some(&body),
    )
    .await;
    response.assert_status(200);
    assert!(
        response.header("hawk-session-token").is_none(),
        "an authenticated registration keeps its session"
    );
    assert_eq!(response.server_authorization_valid, Some(true));

    // The query string is part of what is signed.
    let response = send(
        &http,
        &creds,
        "GET",
        &server.endpoint("/v0/calls?version=0"),
        None,
    )
    .await;
    response.assert_status(200);
    assert_eq!(response.server_authorization_valid, Some(true));
    let signed = sign(
        &creds,
        "GET",
        &server.endpoint("/v0/calls?version=1"),
        Options::default(),
    );
    send_signed(
        &http,
        &creds,
        &signed,
        &server.endpoint("/v0/calls?version=0"),
        None,
    )
    .await
    .assert_unauthorized();

    let response = send(
        &http,
        &creds,
        "DELETE",
        &server.endpoint("/registration"),
        None,
    )
    .await;
    assert_eq!(response.status, 204);
    assert_eq!(response.server_authorization_valid, Some(true));

    // The signer's check can fail: a tampered body does not verify.
    let signed = sign(
        &creds,
        "DELETE",
        &server.endpoint("/registration"),
        Options::default(),
    );
    let response = send_signed(
        &http,
        &creds,
        &signed,
        &server.endpoint("/registration"),
        None,
    )
    .await;
    assert_eq!(response.status, 204);
    let server_authorization = response.header("server-authorization").unwrap();
    assert!(signed.verify_response(&creds, &server_authorization, "", b""));
    assert!(!signed.verify_response(&creds, &server_authorization, "", b"tampered"));

    // Secrets never reach the log.
    let logs = server.logs();
    for secret in [&token, &creds.id, &creds.key] {
        assert!(
            !logs.contains(secret.as_str()),
            "a session secret appears in the server log"
        );
    }
}

/// Hawk's stale-timestamp challenge: `ts` is the server's time and `tsm` is
/// base64(HMAC-SHA256(key, "hawk.1.ts\n<ts>\n")), so only the key holder can
/// trust it.
fn assert_valid_tsm(challenge: &str, creds: &Credentials) {
    use hmac::{Hmac, Mac};
    let field = |name: &str| -> String {
        let start = challenge
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} in {challenge}"))
            + name.len()
            + 2;
        challenge[start..].split('"').next().unwrap().to_string()
    };
    let ts: i64 = field("ts").parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((ts - now).abs() < 3600, "ts is the server's clock");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(creds.key.as_bytes()).unwrap();
    mac.update(format!("hawk.1.ts\n{ts}\n").as_bytes());
    assert_eq!(
        field("tsm"),
        STANDARD.encode(mac.finalize().into_bytes()),
        "{challenge}"
    );
}

/// Installs the Python Hawk libraries if they are missing.
fn ensure_python_hawk() {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import mohawk, requests, requests_hawk"])
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    };
    if !importable() {
        let _ = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "mohawk",
                "requests-hawk",
                "requests",
            ])
            .status();
    }
    assert!(
        importable(),
        "python3 with mohawk and requests-hawk is needed: python3 -m pip install mohawk requests-hawk"
    );
}

#[tokio::test]
async fn python_mohawk_and_requests_hawk_interoperate() {
    ensure_python_hawk();
    let server = start().await;
    let script = common::workspace_root().join("tests/hawk_client.py");
    let url = server.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(url)
            .arg(PUSH_ORIGIN)
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "hawk_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The script derives credentials with requests-hawk; ours must agree.
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let creds = Credentials::from_token(report["token"].as_str().unwrap());
    assert_eq!(report["id"], creds.id);
    assert_eq!(report["key"], creds.key);
    assert_eq!(report["checks"].as_array().unwrap().len(), 6, "{report}");

    // And the session works from Rust too.
    let response = send(
        &client(),
        &creds,
        "DELETE",
        &server.endpoint("/v0/registration"),
        None,
    )
    .await;
    assert_eq!(response.status, 204);
}

#[tokio::test]
async fn bad_hawk_requests_are_refused_with_401_110() {
    let server = start().await;
    let http = client();
    let token = register(&server).await;
    let creds = Credentials::from_token(&token);
    let url = server.endpoint("/registration");

    // Replay: the same header (same nonce) twice.
    let signed = sign(&creds, "DELETE", &url, Options::default());
    assert_eq!(
        send_signed(&http, &creds, &signed, &url, None).await.status,
        204
    );
    send_signed(&http, &creds, &signed, &url, None)
        .await
        .assert_unauthorized();

    // Stale timestamps, either way; the challenge tells the client our time.
    for offset in [-120i64, 120] {
        let ts = if offset < 0 {
            SystemTime::now() - Duration::from_secs(offset.unsigned_abs())
        } else {
            SystemTime::now() + Duration::from_secs(offset as u64)
        };
        let signed = sign(
            &creds,
            "DELETE",
            &url,
            Options {
                ts,
                ..Options::default()
            },
        );
        let response = send_signed(&http, &creds, &signed, &url, None).await;
        response.assert_unauthorized();
        let challenge = response.header("www-authenticate").unwrap();
        assert_valid_tsm(&challenge, &creds);
    }
    // Within the allowed skew is fine.
    let signed = sign(
        &creds,
        "DELETE",
        &url,
        Options {
            ts: SystemTime::now() - Duration::from_secs(30),
            ..Options::default()
        },
    );
    assert_eq!(
        send_signed(&http, &creds, &signed, &url, None).await.status,
        204
    );

    // Bad MAC: the right id with the wrong key.
    let forged = Credentials {
        id: creds.id.clone(),
        key: "0".repeat(64),
    };
    send(&http, &forged, "DELETE", &url, None)
        .await
        .assert_unauthorized();

    // Unknown session.
    let stranger = Credentials::from_token(&hex::encode([42u8; 32]));
    send(&http, &stranger, "DELETE", &url, None)
        .await
        .assert_unauthorized();

    // Signed for another host or path.
    let elsewhere = url.replace("127.0.0.1", "localhost");
    let signed = sign(&creds, "DELETE", &elsewhere, Options::default());
    send_signed(&http, &creds, &signed, &url, None)
        .await
        .assert_unauthorized();
    let signed = sign(
        &creds,
        "DELETE",
        &server.endpoint("/account"),
        Options::default(),
    );
    send_signed(&http, &creds, &signed, &url, None)
        .await
        .assert_unauthorized();

    // Payload hash of one body, another body sent.
    let sent =
        serde_json::to_vec(&json!({"simplePushURL": format!("{PUSH_ORIGIN}/evil")})).unwrap();
    let hashed =
        serde_json::to_vec(&json!({"simplePushURL": format!("{PUSH_ORIGIN}/good")})).unwrap();
    let signed = sign(
        &creds,
        "POST",
        &url,
        Options {
            payload: Some(("application/json", &hashed)),
            ..Options::default()
        },
    );
    send_signed(
        &http,
        &creds,
        &signed,
        &url,
        Some(("application/json", sent.clone())),
    )
    .await
    .assert_unauthorized();

    // A body with no payload hash at all: the MAC would not cover it.
    let signed = sign(&creds, "POST", &url, Options::default());
    let response = send_signed(
        &http,
        &creds,
        &signed,
        &url,
        Some(("application/json", sent)),
    )
    .await;
    response.assert_unauthorized();
    let message = response.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("payload hash is required"), "{message}");

    // Missing or other authorization.
    for authorization in [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Hawk"),
        Some("Hawk id=\"unterminated"),
        // A ts that overflows the clock.
        Some("Hawk id=\"x\", ts=\"18446744073709551615\", nonce=\"n\", mac=\"AAAA\""),
        Some("Bearer x"),
    ] {
        let mut request = http.delete(&url);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Hawk")
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errno"], 110, "{authorization:?}: {body}");
    }

    // None of this broke the session.
    assert_eq!(send(&http, &creds, "DELETE", &url, None).await.status, 204);
}

#[tokio::test]
async fn sessions_survive_a_restart_and_die_with_the_account() {
    let mut server = start().await;
    let http = client();
    let token = register(&server).await;
    let creds = Credentials::from_token(&token);
    server.restart();
    let response = send(
        &http,
        &creds,
        "DELETE",
        &server.endpoint("/registration"),
        None,
    )
    .await;
    assert_eq!(
        response.status, 204,
        "the session and the server secret outlive a restart"
    );

    let response = send(&http, &creds, "DELETE", &server.endpoint("/account"), None).await;
    assert_eq!(response.status, 204);
    assert_eq!(response.server_authorization_valid, Some(true));
    send(
        &http,
        &creds,
        "DELETE",
        &server.endpoint("/registration"),
        None,
    )
    .await
    .assert_unauthorized();
}

// ---------------------------------------------------------------------------
// BrowserID, against a fake verifier that behaves like the real one: it
// checks that the audience it is asked about is the one in the assertion.

const AUDIENCE: &str = "https://loop.example.com";
const ISSUER: &str = "accounts.example.com";

#[derive(Clone, Default)]
struct Verifier {
    requests: Arc<Mutex<Vec<Value>>>,
}

fn jws(claims: &Value) -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A backed assertion whose claims tell the fake verifier what to answer.
fn assertion(email: &str, audience: &str, issuer: &str, okay: bool) -> String {
    let cert = jws(&json!({"iss": issuer, "principal": {"email": email}}));
    format!(
        "{cert}~{}",
        jws(&json!({"aud": audience, "exp": 4102444800000u64, "okay": okay}))
    )
}

async fn verify(State(verifier): State<Verifier>, Json(request): Json<Value>) -> Json<Value> {
    verifier.requests.lock().unwrap().push(request.clone());
    let assertion = request["assertion"].as_str().unwrap_or_default();
    let parts: Vec<&str> = assertion.split('~').collect();
    let decode = |jws: &str| -> Value {
        let payload = jws.split('.').nth(1).unwrap_or_default();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
            .unwrap_or(Value::Null)
    };
    let cert = decode(parts.first().copied().unwrap_or_default());
    let claims = decode(parts.last().copied().unwrap_or_default());
    if claims["aud"] != request["audience"] {
        return Json(json!({"status": "failure", "reason": "audience mismatch"}));
    }
    if claims["okay"] != true {
        return Json(json!({"status": "failure", "reason": "assertion has expired"}));
    }
    Json(json!({
        "status": "okay",
        "email": cert["principal"]["email"],
        "audience": request["audience"],
        "expires": claims["exp"],
        "issuer": cert["iss"],
    }))
}

async fn start_verifier() -> (Verifier, SocketAddr) {
    let verifier = Verifier::default();
    let app = axum::Router::new()
        .route("/v2", post(verify))
        .with_state(verifier.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (verifier, addr)
}

async fn start_with_fxa(verifier_url: &str) -> TestServer {
    let extra_toml = format!(
        "{}[fxa]\nverifier_url = \"{verifier_url}\"\naudiences = [\"{AUDIENCE}\", \"app://loop.example.com\"]\ntrusted_issuers = [\"{ISSUER}\"]\n\n",
        push_toml()
    );
    TestServer::start_with(ServerOptions {
        extra_toml,
        ..ServerOptions::default()
    })
    .await
}

async fn browserid_register(server: &TestServer, assertion: &str) -> reqwest::Response {
    client()
        .post(server.endpoint("/v0/registration"))
        .header("Authorization", format!("BrowserID {assertion}"))
        .json(&json!({"simplePushURL": format!("{PUSH_ORIGIN}/calls/fxa")}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn browserid_logins_of_one_identity_share_a_user() {
    let (verifier, addr) = start_verifier().await;
    let server = start_with_fxa(&format!("http://{addr}/v2")).await;
    let http = client();

    let first = assertion("alice@example.com", AUDIENCE, ISSUER, true);
    let response = browserid_register(&server, &first).await;
    assert_eq!(response.status(), 200);
    let token_a = response.headers()["hawk-session-token"]
        .to_str()
        .unwrap()
        .to_string();
    {
        let requests = verifier.requests.lock().unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0]["audience"], AUDIENCE);
        assert_eq!(requests[0]["assertion"], first.as_str());
    }
    let second = assertion("alice@example.com", "app://loop.example.com", ISSUER, true);
    let response = browserid_register(&server, &second).await;
    assert_eq!(response.status(), 200);
    let token_b = response.headers()["hawk-session-token"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(token_a, token_b);
    let (a, b) = (
        Credentials::from_token(&token_a),
        Credentials::from_token(&token_b),
    );

    // Another identity is another user.
    let response = browserid_register(
        &server,
        &assertion("bob@example.com", AUDIENCE, ISSUER, true),
    )
    .await;
    let bob = Credentials::from_token(response.headers()["hawk-session-token"].to_str().unwrap());

    // Call URLs made on one device are listed on the other.
    let created = send(
        &http,
        &a,
        "POST",
        &server.endpoint("/call-url"),
        Some(&json!({"callerId": "carol"})),
    )
    .await;
    created.assert_status(200);
    assert_eq!(created.server_authorization_valid, Some(true));
    let call_token = created.json()["callToken"].as_str().unwrap().to_string();
    let listed = send(&http, &b, "GET", &server.endpoint("/call-url"), None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.server_authorization_valid, Some(true));
    assert!(
        listed
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|url| url["callToken"] == call_token.as_str())
    );
    let bobs = send(&http, &bob, "GET", &server.endpoint("/call-url"), None).await;
    assert_eq!(bobs.status, 200);
    assert!(bobs.json().as_array().unwrap().is_empty());

    // Deleting the account from one device ends every session of the identity.
    assert_eq!(
        send(&http, &a, "DELETE", &server.endpoint("/account"), None)
            .await
            .status,
        204
    );
    send(&http, &b, "DELETE", &server.endpoint("/registration"), None)
        .await
        .assert_unauthorized();
    assert_eq!(
        send(
            &http,
            &bob,
            "DELETE",
            &server.endpoint("/registration"),
            None
        )
        .await
        .status,
        204
    );

    let logs = server.logs();
    assert!(
        !logs.contains("alice@example.com"),
        "identities are not logged"
    );
    for secret in [&token_a, &token_b, &a.id, &a.key] {
        assert!(
            !logs.contains(secret.as_str()),
            "a session secret appears in the server log"
        );
    }
}

#[tokio::test]
async fn browserid_failures_are_401_110() {
    let (verifier, addr) = start_verifier().await;
    let server = start_with_fxa(&format!("http://{addr}/v2")).await;

    let refused = [
        (
            "verifier failure",
            assertion("a@example.com", AUDIENCE, ISSUER, false),
            true,
        ),
        (
            "untrusted issuer",
            assertion("a@example.com", AUDIENCE, "evil.example.com", true),
            true,
        ),
        (
            "audience not served",
            assertion("a@example.com", "https://evil.example.com", ISSUER, true),
            false,
        ),
        ("not an assertion", "garbage".to_string(), false),
    ];
    for (case, assertion, reaches_verifier) in refused {
        let before = verifier.requests.lock().unwrap().len();
        let response = browserid_register(&server, &assertion).await;
        assert_eq!(response.status(), 401, "{case}");
        assert!(
            response.headers().get("hawk-session-token").is_none(),
            "{case}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errno"], 110, "{case}: {body}");
        let after = verifier.requests.lock().unwrap().len();
        assert_eq!(after > before, reaches_verifier, "{case}");
    }
}

#[tokio::test]
async fn browserid_is_refused_when_off_and_503_when_the_verifier_is_down() {
    let server = start().await;
    let response =
        browserid_register(&server, &assertion("a@example.com", AUDIENCE, ISSUER, true)).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.json::<Value>().await.unwrap()["errno"], 110);

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = start_with_fxa(&format!("http://{closed}/v2")).await;
    let response =
        browserid_register(&server, &assertion("a@example.com", AUDIENCE, ISSUER, true)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.json::<Value>().await.unwrap()["errno"], 201);
}
