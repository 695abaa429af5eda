//! The `opentok` provider plugin (plugins/opentok/) through the real REST call
//! flow, chosen in `config.toml` alone, against a fake OpenTok REST API on
//! 127.0.0.1 that checks what OpenTok checks; the tokens both sides receive
//! are checked by the `opentok` Python SDK (tests/vendor_sdks/opentok.py).

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

use crate::common::TestServer;
use crate::common::vendor::{
    Answer, Answering, assert_provider_error, attempt_call, call_flow, run_sdk, serve, unix_now,
};

const KEY: &str = "46100001";
const SECRET: &str = "opentok-test-secret-0123456789abcdef";
const BETA_KEY: &str = "46100002";
const BETA_SECRET: &str = "opentok-beta-secret-fedcba9876543210";

/// A fake OpenTok REST API: `POST /session/create` with the checks OpenTok
/// makes, answering `[{"session_id": ...}]` with a session id of OpenTok's
/// shape (the SDK reads the API key back out of it).
struct FakeOpenTok {
    origin: String,
    state: Arc<FakeState>,
}

struct FakeState {
    /// API key → secret of every project the fake knows.
    projects: HashMap<String, String>,
    /// The form body OpenTok should receive: `p2p.preference`, `archiveMode`.
    expect_form: Mutex<(String, String)>,
    /// How `POST /session/create` answers, and how often it was asked.
    answering: Answering,
    /// The API key (JWT `iss`) of every request that passed the checks.
    projects_seen: Mutex<Vec<String>>,
    /// What a check refused; a test passes only with none.
    problems: Mutex<Vec<String>>,
}

impl FakeOpenTok {
    async fn start() -> FakeOpenTok {
        let state = Arc::new(FakeState {
            projects: HashMap::from([
                (KEY.to_string(), SECRET.to_string()),
                (BETA_KEY.to_string(), BETA_SECRET.to_string()),
            ]),
            expect_form: Mutex::new(("enabled".into(), "manual".into())),
            answering: Answering::default(),
            projects_seen: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/session/create", post(create_session))
            .with_state(state.clone());
        FakeOpenTok {
            origin: serve(router).await,
            state,
        }
    }

    fn answer(&self, answer: Answer) {
        self.state.answering.set(answer);
    }

    fn expect_form(&self, p2p: &str, archive: &str) {
        *self.state.expect_form.lock().unwrap() = (p2p.into(), archive.into());
    }

    fn requests(&self) -> usize {
        self.state.answering.requests()
    }

    fn projects_seen(&self) -> Vec<String> {
        self.state.projects_seen.lock().unwrap().clone()
    }

    fn assert_no_problems(&self) {
        let problems = self.state.problems.lock().unwrap();
        assert!(
            problems.is_empty(),
            "the fake OpenTok refused: {problems:?}"
        );
    }
}

/// A session id as OpenTok spells them: "1_" and the unpadded base64url of
/// "1~<api key>~~<ms>~<random>~~".
fn opentok_session_id(api_key: &str) -> String {
    let random: [u8; 18] = rand::random();
    let random = base64::engine::general_purpose::STANDARD.encode(random);
    let millis = unix_now() * 1000;
    let raw = format!("1~{api_key}~~{millis}~{random}~~");
    format!(
        "1_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// What OpenTok checks of a session request; the API key that made it.
fn check_request(state: &FakeState, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("accept") != Some("application/json") {
        return Err(format!("Accept is {:?}", header("accept")));
    }
    if !header("content-type").is_some_and(|t| t.starts_with("application/x-www-form-urlencoded")) {
        return Err(format!("Content-Type is {:?}", header("content-type")));
    }
    let auth = header("x-opentok-auth").ok_or("no X-OPENTOK-AUTH")?;
    let jwt_header = jsonwebtoken::decode_header(auth).map_err(|e| format!("JWT header: {e}"))?;
    if jwt_header.alg != Algorithm::HS256 {
        return Err(format!("JWT alg {:?}", jwt_header.alg));
    }
    // The issuer names the project whose secret signs the JWT.
    let mut unverified = Validation::new(Algorithm::HS256);
    unverified.insecure_disable_signature_validation();
    unverified.required_spec_claims.clear();
    unverified.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(auth, &DecodingKey::from_secret(b""), &unverified)
        .map_err(|e| format!("JWT: {e}"))?
        .claims;
    let iss = claims["iss"].as_str().ok_or("no iss")?.to_string();
    let secret = state
        .projects
        .get(&iss)
        .ok_or_else(|| format!("unknown API key {iss}"))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 5;
    let claims = jsonwebtoken::decode::<Value>(
        auth,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| format!("JWT does not verify with {iss}'s secret: {e}"))?
    .claims;
    if claims["ist"] != "project" {
        return Err(format!("ist is {}", claims["ist"]));
    }
    let iat = claims["iat"].as_i64().ok_or("iat is not a number")?;
    let exp = claims["exp"].as_i64().ok_or("exp is not a number")?;
    if (iat - unix_now()).abs() > 60 {
        return Err(format!("iat {iat} is not now"));
    }
    if exp <= iat || exp - iat > 300 {
        return Err(format!("exp - iat = {} (at most 300)", exp - iat));
    }
    if claims["jti"].as_str().is_none_or(|jti| jti.is_empty()) {
        return Err(format!("jti is {}", claims["jti"]));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let (p2p, archive) = state.expect_form.lock().unwrap().clone();
    if form.get("p2p.preference") != Some(&p2p) || form.get("archiveMode") != Some(&archive) {
        return Err(format!(
            "form {form:?}, expected p2p.preference={p2p} archiveMode={archive}"
        ));
    }
    Ok(iss)
}

async fn create_session(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(failure) = state
        .answering
        .begin("{\"code\":-1,\"message\":\"fake failure\"}")
        .await
    {
        return failure;
    }
    match check_request(&state, &headers, &body) {
        Ok(api_key) => {
            state.projects_seen.lock().unwrap().push(api_key.clone());
            let session_id = opentok_session_id(&api_key);
            axum::Json(json!([{
                "session_id": session_id,
                "project_id": api_key,
                "partner_id": api_key,
                "create_dt": "Thu Jan 01 00:00:00 PST 2026",
                "media_server_url": ""
            }]))
            .into_response()
        }
        Err(problem) => {
            state.problems.lock().unwrap().push(problem);
            (
                StatusCode::FORBIDDEN,
                "{\"code\":-1,\"message\":\"invalid\"}",
            )
                .into_response()
        }
    }
}

/// A server whose default provider is `opentok` with `settings`.
async fn server(fake: &FakeOpenTok, settings: &str) -> TestServer {
    let settings = format!(
        "api_url = {:?}\napi_key = {KEY:?}\napi_secret = {SECRET:?}\n{settings}",
        fake.origin
    );
    vendor::start("opentok", &[&fake.origin], &settings, "", &[]).await
}

/// Checks one side's token with the SDK; returns its connection data.
async fn sdk_check(
    token: &Value,
    session_id: &str,
    key: &str,
    secret: &str,
    format: &str,
) -> Value {
    let checked = run_sdk(
        "opentok.py",
        &json!({
            "token": token.as_str().expect("a token string"),
            "api_key": key,
            "api_secret": secret,
            "session_id": session_id,
            "role": "publisher",
            "format": format,
        }),
    )
    .await;
    assert_eq!(checked["format"], format);
    assert_eq!(checked["lifetime"], 86400, "{checked}");
    serde_json::from_str(checked["connection_data"].as_str().unwrap()).unwrap()
}

/// A whole call: both sides' tokens pass the SDK's checks with `key`'s
/// secret, carry who they are, and the session is the one the fake made.
async fn call_and_check(
    server: &TestServer,
    channel: Option<&str>,
    key: &str,
    secret: &str,
    format: &str,
) {
    let call = call_flow(server, channel).await;
    let session_id = call.caller["sessionId"].as_str().unwrap().to_string();
    assert_eq!(call.callee["sessionId"], session_id.as_str());
    assert_eq!(call.caller["apiKey"], key);
    assert_eq!(call.callee["apiKey"], key);
    let caller = sdk_check(
        &call.caller["sessionToken"],
        &session_id,
        key,
        secret,
        format,
    )
    .await;
    assert_eq!(caller, json!({"id": "alice", "name": "alice"}));
    let callee = sdk_check(
        &call.callee["sessionToken"],
        &session_id,
        key,
        secret,
        format,
    )
    .await;
    assert_eq!(callee["name"], "Bob");
    assert!(
        callee["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty() && id != "alice"),
        "{callee}"
    );
}

#[tokio::test]
async fn opentok_t1_tokens_for_both_sides_match_the_sdk() {
    let fake = FakeOpenTok::start().await;
    let server = server(&fake, "").await;
    call_and_check(&server, None, KEY, SECRET, "t1").await;
    assert_eq!(fake.requests(), 1);
    assert_eq!(fake.projects_seen(), [KEY]);
    fake.assert_no_problems();
}

#[tokio::test]
async fn opentok_jwt_tokens_and_a_routed_always_archived_session() {
    let fake = FakeOpenTok::start().await;
    fake.expect_form("disabled", "always");
    let server = server(
        &fake,
        "token_format = \"jwt\"\nmedia_mode = \"routed\"\narchive_mode = \"always\"",
    )
    .await;
    call_and_check(&server, None, KEY, SECRET, "jwt").await;
    assert_eq!(fake.requests(), 1);
    fake.assert_no_problems();
}

#[tokio::test]
async fn opentok_signs_with_the_channels_credentials() {
    let fake = FakeOpenTok::start().await;
    let server = server(
        &fake,
        &format!(
            "channels.beta.api_key = {BETA_KEY:?}\nchannels.beta.api_secret = {BETA_SECRET:?}"
        ),
    )
    .await;
    call_and_check(&server, Some("beta"), BETA_KEY, BETA_SECRET, "t1").await;
    // A channel without a table of its own uses the default project.
    call_and_check(&server, Some("gamma"), KEY, SECRET, "t1").await;
    call_and_check(&server, None, KEY, SECRET, "t1").await;
    assert_eq!(fake.projects_seen(), [BETA_KEY, KEY, KEY]);
    fake.assert_no_problems();
}

#[tokio::test]
async fn opentok_uses_a_pre_created_session_without_calling_the_api() {
    let fake = FakeOpenTok::start().await;
    let session_id = opentok_session_id(KEY);
    let server = server(&fake, &format!("session_id = {session_id:?}")).await;
    call_and_check(&server, None, KEY, SECRET, "t1").await;
    let call = call_flow(&server, None).await;
    assert_eq!(call.caller["sessionId"], session_id.as_str());
    assert_eq!(fake.requests(), 0);
}

#[tokio::test]
async fn opentok_refused_credentials_are_misconfigured_and_not_retried() {
    let fake = FakeOpenTok::start().await;
    fake.answer(Answer::Status(401));
    let server = server(&fake, "").await;
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.requests(), 1, "a 401 is not retried");
    let logs = server
        .wait_for_log("provider opentok is misconfigured")
        .await;
    assert!(logs.contains("HTTP 401"), "{logs}");
    assert!(!logs.contains(SECRET), "the secret is never logged");
}

#[tokio::test]
async fn opentok_server_errors_are_retried_then_unavailable() {
    let fake = FakeOpenTok::start().await;
    fake.answer(Answer::Status(500));
    let server = server(&fake, "retries = 2").await;
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.requests(), 3, "one attempt and two retries");
    let logs = server.wait_for_log("provider opentok is unavailable").await;
    assert!(logs.contains("the OpenTok API is unavailable to create the session: HTTP 500 (fake failure) (after 3 attempts)"), "{logs}");

    // Once OpenTok is back, calls go through again.
    fake.answer(Answer::Ok);
    call_and_check(&server, None, KEY, SECRET, "t1").await;
    assert_eq!(fake.requests(), 4);
    fake.assert_no_problems();
}

#[tokio::test]
async fn opentok_slow_answers_time_out() {
    let fake = FakeOpenTok::start().await;
    fake.answer(Answer::Slow(Duration::from_secs(3)));
    let server = server(&fake, "timeout_ms = 300\nretries = 1").await;
    let started = std::time::Instant::now();
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.requests(), 2);
    let logs = server.wait_for_log("provider opentok is unavailable").await;
    assert!(
        logs.contains("the OpenTok API did not answer in time (after 2 attempts)"),
        "{logs}"
    );
}

#[tokio::test]
async fn opentok_always_archiving_needs_routed_media() {
    let fake = FakeOpenTok::start().await;
    let server = server(&fake, "archive_mode = \"always\"").await;
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.requests(), 0);
    server
        .wait_for_log("provider opentok is misconfigured")
        .await;
}
