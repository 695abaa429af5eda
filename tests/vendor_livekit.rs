//! The `livekit` provider plugin, chosen in `config.toml` alone: the full
//! REST call flow, both sides' access tokens checked by the `livekit-api` SDK
//! (its TokenVerifier, and its own AccessToken for the same inputs), and
//! rooms created and deleted on a fake LiveKit room API (Twirp over JSON) that
//! checks what LiveKit checks: an HS256 bearer token signed with the API
//! secret, issued by the API key, granting `roomCreate`.

use crate::common;
use crate::common::vendor;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::vendor::{VendorCall, attempt_call, call_flow, hang_up, jwt_claims, run_sdk, serve};
use serde_json::{Value, json};

pub(crate) const API_KEY: &str = "APIloopTest";
pub(crate) const API_SECRET: &str = "livekit-test-secret-0123456789abcdef";
/// What clients connect to when no room API is involved.
pub(crate) const CLIENT_URL: &str = "wss://livekit.example.test";
/// The lifetime the host asks for (both sides).
const LIFETIME: u64 = 86400;

/// A fake LiveKit room API: what it saw and what it answers.
#[derive(Default)]
struct Fake {
    /// CreateRoom bodies accepted.
    created: Vec<Value>,
    /// Rooms deleted.
    deleted: Vec<String>,
    /// Every bearer token that passed the check.
    bearers: Vec<String>,
    /// Requests received, accepted or not.
    requests: usize,
    /// When set, every request is answered with this status.
    fail_with: Option<u16>,
}

type Shared = Arc<Mutex<Fake>>;

fn twirp_error(status: StatusCode, code: &str, msg: &str) -> Response {
    (status, axum::Json(json!({"code": code, "msg": msg}))).into_response()
}

fn rejection(status: StatusCode, code: &str, msg: &str) -> Box<Response> {
    Box::new(twirp_error(status, code, msg))
}

/// What LiveKit checks of a RoomService request: a JSON body and an access
/// token signed with the secret, issued by the key, that may create rooms.
fn check_request(fake: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Value, Box<Response>> {
    let mut fake = fake.lock().unwrap();
    fake.requests += 1;
    if let Some(status) = fake.fail_with {
        let status = StatusCode::from_u16(status).unwrap();
        let code = if status == StatusCode::UNAUTHORIZED {
            "unauthenticated"
        } else {
            "internal"
        };
        return Err(rejection(status, code, "failing as the test asked"));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(rejection(StatusCode::BAD_REQUEST, "malformed", "not JSON"));
    }
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(rejection(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no bearer token",
        ));
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[API_KEY]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "nbf"]);
    let claims = match jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(API_SECRET.as_bytes()),
        &validation,
    ) {
        Ok(data) => data.claims,
        Err(err) => {
            return Err(rejection(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                &format!("invalid token: {err}"),
            ));
        }
    };
    if claims["video"]["roomCreate"] != json!(true) {
        return Err(rejection(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "roomCreate is not granted",
        ));
    }
    fake.bearers.push(token.to_owned());
    serde_json::from_slice(body)
        .map_err(|_| rejection(StatusCode::BAD_REQUEST, "malformed", "bad JSON"))
}

async fn create_room(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match check_request(&fake, &headers, &body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let Some(name) = request["name"].as_str().filter(|n| !n.is_empty()) else {
        return twirp_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "name is required",
        );
    };
    let answer = json!({
        "sid": "RM_fake",
        "name": name,
        "emptyTimeout": request["empty_timeout"],
        "maxParticipants": request["max_participants"],
        "creationTime": "1",
    });
    fake.lock().unwrap().created.push(request);
    (StatusCode::OK, axum::Json(answer)).into_response()
}

async fn delete_room(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match check_request(&fake, &headers, &body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let room = request["room"].as_str().unwrap_or("").to_owned();
    let mut fake = fake.lock().unwrap();
    if !fake.created.iter().any(|c| c["name"] == room.as_str()) {
        return twirp_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "requested room does not exist",
        );
    }
    fake.deleted.push(room);
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

/// Serves a fake room API; returns its state and its origin.
async fn fake_livekit() -> (Shared, String) {
    let fake = Shared::default();
    let router = Router::new()
        .route("/twirp/livekit.RoomService/CreateRoom", post(create_room))
        .route("/twirp/livekit.RoomService/DeleteRoom", post(delete_room))
        .with_state(fake.clone());
    (fake, serve(router).await)
}

pub(crate) fn settings(url: &str, create_room: bool) -> String {
    format!(
        "url = {url:?}\napi_key = {API_KEY:?}\napi_secret = {API_SECRET:?}\ncreate_room = {create_room}\n"
    )
}

/// Both sides got the same fresh room and the websocket URL, and the SDK
/// accepts both tokens (and any room API tokens) as its own. Returns the room.
pub(crate) async fn check_call(
    call: &VendorCall,
    url: &str,
    service_tokens: Vec<String>,
) -> String {
    let room = call.caller["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(call.callee["sessionId"], room.as_str());
    assert!(
        room.len() == 37 && room.starts_with("loop-"),
        "a generated room name: {room}"
    );
    assert_eq!(call.caller["apiKey"], url);
    assert_eq!(call.callee["apiKey"], url);

    let caller_token = call.caller["sessionToken"].as_str().unwrap();
    let callee_token = call.callee["sessionToken"].as_str().unwrap();
    // The callee is the URL's owner: its identity is the owner's opaque user id.
    let callee_identity = jwt_claims(callee_token)["sub"].as_str().unwrap().to_owned();
    assert!(
        callee_identity.len() == 64 && callee_identity != "alice",
        "the callee's identity is its user id: {callee_identity}"
    );
    let checked = run_sdk(
        "livekit.py",
        &json!({
            "api_key": API_KEY,
            "api_secret": API_SECRET,
            "tokens": [
                {"token": caller_token, "identity": "alice", "name": "alice",
                 "room": room, "lifetime": LIFETIME},
                {"token": callee_token, "identity": callee_identity, "name": "Bob",
                 "room": room, "lifetime": LIFETIME},
            ],
            "service_tokens": service_tokens,
        }),
    )
    .await;
    assert_eq!(checked["claims"].as_array().unwrap().len(), 2);
    room
}

#[tokio::test]
async fn vendor_livekit_tokens_are_the_sdks_own() {
    let server = vendor::start("livekit", &[], &settings(CLIENT_URL, false), "", &[]).await;
    let call = call_flow(&server, None).await;
    check_call(&call, CLIENT_URL, vec![]).await;
    // Two calls, two rooms.
    let again = call_flow(&server, None).await;
    assert_ne!(again.caller["sessionId"], call.caller["sessionId"]);
    // The room is never deleted without create_room (there is no room API to
    // reach: allowed_hosts is empty), and ending the call is not an error.
    hang_up(&call).await;
    let logs = server.logs();
    assert!(!logs.contains(API_SECRET), "the secret is never logged");
}

#[tokio::test]
async fn vendor_livekit_creates_the_room_and_deletes_it_when_the_call_is_terminated() {
    let (fake, origin) = fake_livekit().await;
    // Clients get the websocket URL; the plugin reaches its http origin.
    let url = origin.replacen("http://", "ws://", 1);
    let server = vendor::start(
        "livekit",
        &[origin.as_str()],
        &settings(&url, true),
        "",
        &[],
    )
    .await;
    let call = call_flow(&server, None).await;
    let service_tokens = fake.lock().unwrap().bearers.clone();
    assert_eq!(service_tokens.len(), 1);
    let room = check_call(&call, &url, service_tokens).await;
    assert_eq!(
        fake.lock().unwrap().created,
        vec![json!({"name": room, "empty_timeout": 300, "max_participants": 2})]
    );
    assert!(fake.lock().unwrap().deleted.is_empty());

    hang_up(&call).await;
    vendor::eventually("the room deleted", || {
        !fake.lock().unwrap().deleted.is_empty()
    })
    .await;
    assert_eq!(fake.lock().unwrap().deleted, vec![room]);
    // The DeleteRoom token is what the SDK's RoomService sends too.
    let bearers = fake.lock().unwrap().bearers.clone();
    run_sdk(
        "livekit.py",
        &json!({"api_key": API_KEY, "api_secret": API_SECRET, "tokens": [],
                "service_tokens": bearers}),
    )
    .await;
    assert!(
        !server.logs().contains(API_SECRET),
        "the secret is never logged"
    );
}

#[tokio::test]
async fn vendor_livekit_room_settings_reach_create_room() {
    let (fake, origin) = fake_livekit().await;
    let url = format!("{}/", origin.replacen("http://", "ws://", 1));
    let server = vendor::start(
        "livekit",
        &[origin.as_str()],
        &format!(
            "{}empty_timeout_seconds = 60\nmax_participants = 3\n",
            settings(&url, true)
        ),
        "",
        &[],
    )
    .await;
    let call = call_flow(&server, None).await;
    let created = fake.lock().unwrap().created.clone();
    assert_eq!(
        created,
        vec![json!({"name": call.caller["sessionId"], "empty_timeout": 60, "max_participants": 3})]
    );
}

#[tokio::test]
async fn vendor_livekit_deletes_the_room_of_an_unanswered_call_when_it_expires() {
    let (fake, origin) = fake_livekit().await;
    let url = origin.replacen("http://", "ws://", 1);
    let server = vendor::start(
        "livekit",
        &[origin.as_str()],
        &settings(&url, true),
        "[calls]\nduration_seconds = 1\n\n",
        &[("LOOP_DATABASE__PURGE_INTERVAL_SECONDS", "1")],
    )
    .await;
    let call = call_flow(&server, None).await;
    let room = call.caller["sessionId"].as_str().unwrap().to_owned();
    // Nobody answers, nobody hangs up.
    vendor::eventually("the expired call's room deleted", || {
        !fake.lock().unwrap().deleted.is_empty()
    })
    .await;
    assert_eq!(fake.lock().unwrap().deleted, vec![room]);
}

#[tokio::test]
async fn vendor_livekit_room_api_failures_are_clear_json_errors() {
    let (fake, origin) = fake_livekit().await;
    let url = origin.replacen("http://", "ws://", 1);
    let server = vendor::start(
        "livekit",
        &[origin.as_str()],
        &format!("{}timeout_ms = 1000\n", settings(&url, true)),
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
        .wait_for_log(
            "provider livekit is misconfigured: the LiveKit room API refused the credentials (check `api_key` and `api_secret`) to create the room: HTTP 401",
        )
        .await;

    // The vendor is down: retried (retries = 2), then unavailable.
    {
        let mut fake = fake.lock().unwrap();
        fake.fail_with = Some(503);
        fake.requests = 0;
    }
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errno"], 201, "{body}");
    assert_eq!(fake.lock().unwrap().requests, 3, "1 attempt + 2 retries");
    server
        .wait_for_log(
            "provider livekit is unavailable: the LiveKit room API is unavailable to create the room: HTTP 503",
        )
        .await;

    // Back up: calls go through again.
    fake.lock().unwrap().fail_with = None;
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!(status, 200, "{body}");
    let logs = server.logs();
    assert!(!logs.contains(API_SECRET), "the secret is never logged");
}

#[tokio::test]
async fn vendor_livekit_without_credentials_is_misconfigured() {
    let server = vendor::start(
        "livekit",
        &[],
        &format!("url = {CLIENT_URL:?}\napi_key = {API_KEY:?}\n"),
        "",
        &[],
    )
    .await;
    let attempt = attempt_call(&server).await;
    let (status, body) = (attempt.status, attempt.body);
    assert_eq!((status, body["errno"].clone()), (503, json!(201)), "{body}");
    server
        .wait_for_log("provider livekit is misconfigured: setting `api_secret` is not set")
        .await;
}
