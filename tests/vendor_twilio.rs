//! The `twilio` provider plugin, chosen in `config.toml` alone: the full REST
//! call flow, both sides' access tokens checked with pyjwt and the `twilio`
//! SDK (its decoder, and its own AccessToken + VideoGrant for the same
//! inputs), and rooms created and completed on a fake Twilio Video REST API
//! that checks what Twilio checks: Basic auth with the API key sid and secret,
//! and form-encoded parameters.

use crate::common;
use crate::common::vendor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::vendor::{VendorCall, attempt_call, call_flow, hang_up, jwt_claims, run_sdk, serve};
use serde_json::{Value, json};

const ACCOUNT_SID: &str = "ACtest0123456789abcdef0123456789ab";
const KEY_SID: &str = "SKtest0123456789abcdef0123456789ab";
const KEY_SECRET: &str = "twilio-test-secret-0123456789abcdef";
/// The lifetime the host asks for (both sides), at Twilio's maximum.
const LIFETIME: u64 = 86400;

/// A fake Twilio Video REST API: what it saw and what it answers.
#[derive(Default)]
struct Fake {
    /// Form parameters of every room created.
    created: Vec<HashMap<String, String>>,
    /// Rooms completed (by unique name).
    completed: Vec<String>,
    /// Requests received, accepted or not.
    requests: usize,
    /// When set, every request is answered with this status.
    fail_with: Option<u16>,
    /// When set, every request is answered this late.
    delay: Option<Duration>,
}

type Shared = Arc<Mutex<Fake>>;

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message, "status": status.as_u16()})),
    )
        .into_response()
}

/// What Twilio checks of a request: Basic auth with the API key sid and
/// secret, and a form body. Returns the form's fields.
async fn check_request(
    fake: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HashMap<String, String>, Response> {
    let delay = {
        let mut fake = fake.lock().unwrap();
        fake.requests += 1;
        fake.delay
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let fail_with = fake.lock().unwrap().fail_with;
    if let Some(status) = fail_with {
        return Err(twilio_error(
            StatusCode::from_u16(status).unwrap(),
            20500,
            "failing as the test asked",
        ));
    }
    use base64::Engine;
    let credentials = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    if credentials.as_deref() != Some(&format!("{KEY_SID}:{KEY_SECRET}")) {
        return Err(twilio_error(
            StatusCode::UNAUTHORIZED,
            20003,
            "Authenticate",
        ));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/x-www-form-urlencoded" {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            20001,
            "expected a form body",
        ));
    }
    Ok(url::form_urlencoded::parse(body).into_owned().collect())
}

fn room_json(name: &str, form: &HashMap<String, String>, status: &str) -> Value {
    json!({
        "sid": "RMfake",
        "account_sid": ACCOUNT_SID,
        "unique_name": name,
        "status": status,
        "type": form.get("Type").cloned().unwrap_or_else(|| "group".into()),
        "max_participants": form.get("MaxParticipants").and_then(|m| m.parse::<u32>().ok()),
    })
}

async fn create_room(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match check_request(&fake, &headers, &body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let Some(name) = form.get("UniqueName").filter(|n| !n.is_empty()).cloned() else {
        return twilio_error(StatusCode::BAD_REQUEST, 53100, "UniqueName is required");
    };
    let answer = room_json(&name, &form, "in-progress");
    fake.lock().unwrap().created.push(form);
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn update_room(
    State(fake): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match check_request(&fake, &headers, &body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    if form.get("Status").map(String::as_str) != Some("completed") {
        return twilio_error(StatusCode::BAD_REQUEST, 53105, "Status must be completed");
    }
    let mut fake = fake.lock().unwrap();
    let Some(created) = fake
        .created
        .iter()
        .find(|c| c.get("UniqueName") == Some(&name))
        .cloned()
    else {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    };
    fake.completed.push(name.clone());
    (
        StatusCode::OK,
        axum::Json(room_json(&name, &created, "completed")),
    )
        .into_response()
}

/// Serves a fake Video REST API; returns its state and its origin.
async fn fake_twilio() -> (Shared, String) {
    let fake = Shared::default();
    let router = Router::new()
        .route("/v1/Rooms", post(create_room))
        .route("/v1/Rooms/{name}", post(update_room))
        .with_state(fake.clone());
    (fake, serve(router).await)
}

fn settings(api_url: Option<&str>, create_room: bool) -> String {
    let mut settings = format!(
        "account_sid = {ACCOUNT_SID:?}\napi_key_sid = {KEY_SID:?}\n\
         api_key_secret = {KEY_SECRET:?}\ncreate_room = {create_room}\n"
    );
    if let Some(api_url) = api_url {
        settings.push_str(&format!("api_url = {api_url:?}\n"));
    }
    settings
}

/// Both sides got the same fresh room and the API key sid, and pyjwt and the
/// SDK accept both tokens as the SDK's own. Returns the room.
async fn check_call(call: &VendorCall) -> String {
    let room = call.caller["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(call.callee["sessionId"], room.as_str());
    assert!(
        room.len() == 37 && room.starts_with("loop-"),
        "a generated room name: {room}"
    );
    assert_eq!(call.caller["apiKey"], KEY_SID);
    assert_eq!(call.callee["apiKey"], KEY_SID);

    let caller_token = call.caller["sessionToken"].as_str().unwrap();
    let callee_token = call.callee["sessionToken"].as_str().unwrap();
    // The callee is the URL's owner: its identity is the owner's opaque user id.
    let callee_identity = jwt_claims(callee_token)["grants"]["identity"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        callee_identity.len() == 64 && callee_identity != "alice",
        "the callee's identity is its user id: {callee_identity}"
    );
    let checked = run_sdk(
        "twilio.py",
        &json!({
            "account_sid": ACCOUNT_SID,
            "api_key_sid": KEY_SID,
            "api_key_secret": KEY_SECRET,
            "tokens": [
                {"token": caller_token, "identity": "alice", "room": room, "lifetime": LIFETIME},
                {"token": callee_token, "identity": callee_identity, "room": room,
                 "lifetime": LIFETIME},
            ],
        }),
    )
    .await;
    assert_eq!(checked["claims"].as_array().unwrap().len(), 2);
    room
}

#[tokio::test]
async fn vendor_twilio_tokens_are_the_sdks_own() {
    // No api_url: the default (Twilio's) is never reached without create_room.
    let server = vendor::start("twilio", &[], &settings(None, false), "", &[]).await;
    let call = call_flow(&server, None).await;
    check_call(&call).await;
    let again = call_flow(&server, None).await;
    assert_ne!(again.caller["sessionId"], call.caller["sessionId"]);
    hang_up(&call).await;
    assert!(
        !server.logs().contains(KEY_SECRET),
        "the secret is never logged"
    );
}

#[tokio::test]
async fn vendor_twilio_creates_the_room_and_completes_it_when_the_call_is_terminated() {
    let (fake, origin) = fake_twilio().await;
    let server = vendor::start(
        "twilio",
        &[origin.as_str()],
        &settings(Some(origin.as_str()), true),
        "",
        &[],
    )
    .await;
    let call = call_flow(&server, None).await;
    let room = check_call(&call).await;
    let created = fake.lock().unwrap().created.clone();
    let expected: HashMap<String, String> = [
        ("UniqueName", room.as_str()),
        ("Type", "group"),
        ("MaxParticipants", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(created, vec![expected]);
    assert!(fake.lock().unwrap().completed.is_empty());

    hang_up(&call).await;
    vendor::eventually("the room completed", || {
        !fake.lock().unwrap().completed.is_empty()
    })
    .await;
    assert_eq!(fake.lock().unwrap().completed, vec![room]);
    assert!(
        !server.logs().contains(KEY_SECRET),
        "the secret is never logged"
    );
}

#[tokio::test]
async fn vendor_twilio_room_type_reaches_the_api() {
    let (fake, origin) = fake_twilio().await;
    let server = vendor::start(
        "twilio",
        &[origin.as_str()],
        &format!(
            "{}room_type = \"group-small\"\n",
            settings(Some(format!("{origin}/").as_str()), true)
        ),
        "",
        &[],
    )
    .await;
    call_flow(&server, None).await;
    assert_eq!(fake.lock().unwrap().created[0]["Type"], "group-small");
}

#[tokio::test]
async fn vendor_twilio_completes_the_room_of_an_unanswered_call_when_it_expires() {
    let (fake, origin) = fake_twilio().await;
    let server = vendor::start(
        "twilio",
        &[origin.as_str()],
        &settings(Some(origin.as_str()), true),
        "[calls]\nduration_seconds = 1\n\n",
        &[("LOOP_DATABASE__PURGE_INTERVAL_SECONDS", "1")],
    )
    .await;
    let call = call_flow(&server, None).await;
    let room = call.caller["sessionId"].as_str().unwrap().to_owned();
    // Nobody answers, nobody hangs up.
    vendor::eventually("the expired call's room completed", || {
        !fake.lock().unwrap().completed.is_empty()
    })
    .await;
    assert_eq!(fake.lock().unwrap().completed, vec![room]);
}

#[tokio::test]
async fn vendor_twilio_api_failures_are_clear_json_errors() {
    let (fake, origin) = fake_twilio().await;
    let server = vendor::start(
        "twilio",
        &[origin.as_str()],
        &format!(
            "{}timeout_ms = 300\n",
            settings(Some(origin.as_str()), true)
        ),
        "",
        &[],
    )
    .await;

    // Refused credentials: not retried; the operator must act.
    fake.lock().unwrap().fail_with = Some(401);
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errno"], 201, "{body}");
    assert_eq!(body["code"], 503, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(fake.lock().unwrap().requests, 1, "a 401 is not retried");
    server
        .wait_for_log("provider twilio is misconfigured: the Twilio Video API refused the credentials (check `api_key_sid` and `api_key_secret`) to create the room: HTTP 401")
        .await;

    // The vendor is down: retried (retries = 2), then unavailable.
    {
        let mut fake = fake.lock().unwrap();
        fake.fail_with = Some(500);
        fake.requests = 0;
    }
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errno"], 201, "{body}");
    assert_eq!(fake.lock().unwrap().requests, 3, "1 attempt + 2 retries");
    server
        .wait_for_log("provider twilio is unavailable: the Twilio Video API is unavailable to create the room: HTTP 500")
        .await;

    // Slow answers: each attempt times out (timeout_ms = 300), then unavailable.
    {
        let mut fake = fake.lock().unwrap();
        fake.fail_with = None;
        fake.delay = Some(Duration::from_millis(1500));
        fake.requests = 0;
    }
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!(status, 503, "{body}");
    assert_eq!(fake.lock().unwrap().requests, 3, "1 attempt + 2 retries");
    server
        .wait_for_log("provider twilio is unavailable: the Twilio Video API did not answer in time")
        .await;

    // Back up: calls go through again.
    fake.lock().unwrap().delay = None;
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!(status, 200, "{body}");
    assert!(
        !server.logs().contains(KEY_SECRET),
        "the secret is never logged"
    );
}

#[tokio::test]
async fn vendor_twilio_rejects_an_unknown_room_type() {
    let server = vendor::start(
        "twilio",
        &[],
        &format!("{}room_type = \"huge\"\n", settings(None, false)),
        "",
        &[],
    )
    .await;
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!((status, body["errno"].clone()), (503, json!(201)), "{body}");
    server
        .wait_for_log("provider twilio is misconfigured: setting `room_type` must be")
        .await;
}
