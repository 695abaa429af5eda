//! The `vonage` provider plugin (plugins/vonage/) through the real REST call
//! flow, chosen in `config.toml` alone, against a fake Vonage Video API on
//! 127.0.0.1 that checks the RS256 application JWT as Vonage does; the tokens
//! both sides receive are checked with the `vonage-video` Python SDK
//! (tests/vendor_sdks/vonage.py).

use crate::common::vendor;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::common::vendor::{
    Answer, Answering, assert_provider_error, attempt_call, call_flow, plugin_toml, run_sdk, serve,
    unix_now,
};
use crate::common::{ServerOptions, TestServer, workspace_root};

const APPLICATION_ID: &str = "5d8c7a9e-3f41-4b6a-9c2e-0a1b2c3d4e5f";

fn private_key() -> String {
    std::fs::read_to_string(workspace_root().join("tests/fixtures/test-rsa-2048.pem")).unwrap()
}

fn public_key() -> String {
    std::fs::read_to_string(workspace_root().join("tests/fixtures/test-rsa-2048.pub.pem")).unwrap()
}

/// A fake Vonage Video API: `POST /session/create`, checking the application
/// JWT with the application's public key.
struct FakeVonage {
    origin: String,
    state: Arc<FakeState>,
}

struct FakeState {
    public_key: DecodingKey,
    /// The `p2p.preference` the form body should carry.
    expect_p2p: Mutex<String>,
    /// How `POST /session/create` answers, and how often it was asked.
    answering: Answering,
    problems: Mutex<Vec<String>>,
}

impl FakeVonage {
    async fn start() -> FakeVonage {
        let state = Arc::new(FakeState {
            public_key: DecodingKey::from_rsa_pem(public_key().as_bytes()).unwrap(),
            expect_p2p: Mutex::new("enabled".into()),
            answering: Answering::default(),
            problems: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/session/create", post(create_session))
            .with_state(state.clone());
        FakeVonage {
            origin: serve(router).await,
            state,
        }
    }

    fn answer(&self, answer: Answer) {
        self.state.answering.set(answer);
    }

    fn requests(&self) -> usize {
        self.state.answering.requests()
    }

    fn assert_no_problems(&self) {
        let problems = self.state.problems.lock().unwrap();
        assert!(problems.is_empty(), "the fake Vonage refused: {problems:?}");
    }
}

/// What Vonage checks of a session request.
fn check_request(state: &FakeState, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("accept") != Some("application/json") {
        return Err(format!("Accept is {:?}", header("accept")));
    }
    if !header("content-type").is_some_and(|t| t.starts_with("application/x-www-form-urlencoded")) {
        return Err(format!("Content-Type is {:?}", header("content-type")));
    }
    let jwt = header("authorization")
        .and_then(|auth| auth.strip_prefix("Bearer "))
        .ok_or("no Bearer authorization")?;
    let jwt_header = jsonwebtoken::decode_header(jwt).map_err(|e| format!("JWT header: {e}"))?;
    if jwt_header.alg != Algorithm::RS256 || jwt_header.typ.as_deref() != Some("JWT") {
        return Err(format!("JWT header {jwt_header:?}"));
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "jti"]);
    validation.leeway = 5;
    let claims = jsonwebtoken::decode::<Value>(jwt, &state.public_key, &validation)
        .map_err(|e| format!("the application JWT does not verify: {e}"))?
        .claims;
    if claims["application_id"] != APPLICATION_ID {
        return Err(format!("application_id is {}", claims["application_id"]));
    }
    let jti = claims["jti"].as_str().ok_or("jti is not a string")?;
    if !is_uuid(jti) {
        return Err(format!("jti {jti:?} is not a UUID"));
    }
    let iat = claims["iat"].as_i64().ok_or("iat is not a number")?;
    let exp = claims["exp"].as_i64().ok_or("exp is not a number")?;
    if (iat - unix_now()).abs() > 60 {
        return Err(format!("iat {iat} is not now"));
    }
    if exp != iat + 900 {
        return Err(format!("exp - iat = {} (Vonage's is 900)", exp - iat));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let p2p = state.expect_p2p.lock().unwrap().clone();
    if form.get("p2p.preference") != Some(&p2p) {
        return Err(format!("form {form:?}, expected p2p.preference={p2p}"));
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

async fn create_session(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(failure) = state.answering.begin("{\"title\":\"fake failure\"}").await {
        return failure;
    }
    match check_request(&state, &headers, &body) {
        Ok(()) => {
            let random: [u8; 18] = rand::random();
            let raw = format!(
                "2~{APPLICATION_ID}~~{}~{}~~",
                unix_now() * 1000,
                base64::engine::general_purpose::STANDARD.encode(random)
            );
            let session_id = format!(
                "2_{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
            );
            axum::Json(json!([{
                "session_id": session_id,
                "application_id": APPLICATION_ID,
                "create_dt": "Thu Jan 01 00:00:00 UTC 2026",
                "media_server_url": ""
            }]))
            .into_response()
        }
        Err(problem) => {
            state.problems.lock().unwrap().push(problem);
            (StatusCode::UNAUTHORIZED, "{\"title\":\"invalid token\"}").into_response()
        }
    }
}

/// A server whose default provider is `vonage` with the test key and `settings`.
async fn server(fake: &FakeVonage, settings: &str) -> TestServer {
    let settings = format!(
        "api_url = {:?}\napplication_id = {APPLICATION_ID:?}\nprivate_key = '''\n{}'''\n{settings}",
        fake.origin,
        private_key()
    );
    vendor::start("vonage", &[&fake.origin], &settings, "", &[]).await
}

async fn sdk_check(token: &Value, session_id: &str) -> Value {
    let checked = run_sdk(
        "vonage.py",
        &json!({
            "token": token.as_str().expect("a token string"),
            "application_id": APPLICATION_ID,
            "public_key": public_key(),
            "private_key": private_key(),
            "session_id": session_id,
            "role": "publisher",
        }),
    )
    .await;
    assert_eq!(checked["lifetime"], 86400, "{checked}");
    serde_json::from_str(checked["connection_data"].as_str().unwrap()).unwrap()
}

async fn call_and_check(server: &TestServer) {
    let call = call_flow(server, None).await;
    let session_id = call.caller["sessionId"].as_str().unwrap().to_string();
    assert!(session_id.starts_with("2_"), "{session_id}");
    assert_eq!(call.callee["sessionId"], session_id.as_str());
    assert_eq!(call.caller["apiKey"], APPLICATION_ID);
    assert_eq!(call.callee["apiKey"], APPLICATION_ID);
    let caller = sdk_check(&call.caller["sessionToken"], &session_id).await;
    assert_eq!(caller, json!({"id": "alice", "name": "alice"}));
    let callee = sdk_check(&call.callee["sessionToken"], &session_id).await;
    assert_eq!(callee["name"], "Bob");
    assert!(
        callee["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty() && id != "alice"),
        "{callee}"
    );
}

#[tokio::test]
async fn vonage_tokens_for_both_sides_match_the_sdk() {
    let fake = FakeVonage::start().await;
    let server = server(&fake, "").await;
    call_and_check(&server).await;
    assert_eq!(fake.requests(), 1);
    fake.assert_no_problems();
}

#[tokio::test]
async fn vonage_routed_media_is_asked_for() {
    let fake = FakeVonage::start().await;
    *fake.state.expect_p2p.lock().unwrap() = "disabled".into();
    let server = server(&fake, "media_mode = \"routed\"").await;
    call_and_check(&server).await;
    fake.assert_no_problems();
}

#[tokio::test]
async fn vonage_refusals_retries_and_timeouts() {
    let fake = FakeVonage::start().await;
    let server = server(&fake, "timeout_ms = 300\nretries = 2").await;

    // 401: the application JWT was refused; an operator must act, no retry.
    fake.answer(Answer::Status(401));
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.requests(), 1);
    let logs = server
        .wait_for_log("provider vonage is misconfigured")
        .await;
    assert!(logs.contains("HTTP 401"), "{logs}");

    // 5xx: retried, then unavailable.
    fake.answer(Answer::Status(503));
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.requests(), 4, "one attempt and two retries");
    server.wait_for_log("the Vonage Video API is unavailable to create the session: HTTP 503 (fake failure) (after 3 attempts)").await;

    // Too slow: each attempt times out.
    fake.answer(Answer::Slow(Duration::from_secs(3)));
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.requests(), 7);
    server
        .wait_for_log("the Vonage Video API did not answer in time (after 3 attempts)")
        .await;

    // Back to normal.
    fake.answer(Answer::Ok);
    call_and_check(&server).await;
    fake.assert_no_problems();
    let logs = server.logs();
    assert!(!logs.contains("PRIVATE KEY"), "the key is never logged");
}

#[tokio::test]
async fn vonage_a_key_the_host_cannot_use_is_misconfigured() {
    let fake = FakeVonage::start().await;
    let ec_key =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/test-ec-p256.pem")).unwrap();
    let settings = format!(
        "api_url = {:?}\napplication_id = {APPLICATION_ID:?}\nprivate_key = '''\n{ec_key}'''",
        fake.origin
    );
    let server = TestServer::start_with(ServerOptions {
        loopback: false,
        extra_toml: format!(
            "[providers]\ndefault = \"vonage\"\n\n{}",
            plugin_toml("vonage", &[&fake.origin], &settings)
        ),
        ..Default::default()
    })
    .await;
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.requests(), 0);
    let logs = server
        .wait_for_log("provider vonage is misconfigured")
        .await;
    assert!(logs.contains("private_key"), "{logs}");
}
