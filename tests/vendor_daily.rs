//! The `daily` provider plugin against a fake Daily REST API on 127.0.0.1:
//! rooms created with the API key as Bearer and the documented body, meeting
//! tokens checked with pyjwt (`tests/vendor_sdks/daily.py`), the room deleted
//! when the call ends (terminated, or expired unanswered), and Daily's 401, 5xx
//! and slow answers turned into clear errors for the caller.

use crate::common;
use crate::common::vendor;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use common::TestServer;
use common::vendor::{
    assert_provider_error, attempt_call, call_flow, call_owner, hang_up, run_sdk, serve, unix_now,
};
use serde_json::{Value, json};

const API_KEY: &str = "daily-test-api-key-5f0c1e9b7a3d2c4e";
const DOMAIN: &str = "acme";
const DOMAIN_ID: &str = "4e0c8a52-7b1d-4f7e-9a44-2d8c3b6f1a90";
/// The host's token lifetime, which is also the room's.
const LIFETIME: u64 = 86400;

/// What the fake does with the next `POST /v1/rooms`.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Creates the room, as Daily does.
    Create,
    /// Answers this status with Daily's error body.
    Status(u16),
    /// Waits this long, then creates the room.
    Slow(Duration),
}

#[derive(Default)]
struct Recorded {
    /// What the next POSTs get (then `Create`).
    script: VecDeque<Answer>,
    /// Every `POST /v1/rooms` body received.
    posts: Vec<Value>,
    /// Rooms created: name and `properties.exp`.
    rooms: Vec<(String, u64)>,
    /// Rooms deleted with `DELETE /v1/rooms/{name}`.
    deleted: Vec<String>,
    /// What the fake refused, and why.
    problems: Vec<String>,
}

/// A fake Daily REST API: `POST /v1/rooms` and `DELETE /v1/rooms/{name}`,
/// checking the Bearer API key and the room body as Daily does.
#[derive(Clone, Default)]
struct FakeDaily(Arc<Mutex<Recorded>>);

impl FakeDaily {
    async fn start() -> (FakeDaily, String) {
        let fake = FakeDaily::default();
        let router = axum::Router::new()
            .route("/v1/rooms", post(create_room))
            .route("/v1/rooms/{name}", delete(delete_room))
            .with_state(fake.clone());
        (fake, serve(router).await)
    }

    fn script(&self, answers: &[Answer]) {
        self.0
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }

    fn posts(&self) -> usize {
        self.0.lock().unwrap().posts.len()
    }

    fn rooms(&self) -> Vec<(String, u64)> {
        self.0.lock().unwrap().rooms.clone()
    }

    fn deleted(&self) -> Vec<String> {
        self.0.lock().unwrap().deleted.clone()
    }

    fn assert_no_problems(&self) {
        let problems = self.0.lock().unwrap().problems.clone();
        assert!(
            problems.is_empty(),
            "the fake Daily API refused: {problems:?}"
        );
    }

    /// Waits (bounded) until the fake has seen `room` deleted.
    async fn wait_for_delete(&self, room: &str, why: &str) {
        vendor::eventually(&format!("{room} deleted after {why}"), || {
            self.deleted().iter().any(|r| r == room)
        })
        .await;
    }
}

fn daily_error(status: u16, error: &str, info: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": error, "info": info})),
    )
}

fn bearer_ok(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {API_KEY}").as_str())
}

/// Daily's checks of a room request, as far as Loop uses them.
fn check_room_body(headers: &HeaderMap, body: &[u8]) -> Result<(String, u64), String> {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some("application/json") {
        return Err(format!("content-type is {content_type:?}"));
    }
    let body: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let fields: Vec<&str> = body
        .as_object()
        .ok_or("not an object")?
        .keys()
        .map(String::as_str)
        .collect();
    if fields != ["name", "privacy", "properties"] {
        return Err(format!("fields are {fields:?}"));
    }
    let name = body["name"].as_str().ok_or("name is not a string")?;
    if !(name.len() == 37
        && name.starts_with("loop-")
        && name[5..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(format!("name {name:?} is not loop-<32 hex digits>"));
    }
    if body["privacy"] != "private" {
        return Err(format!("privacy is {}", body["privacy"]));
    }
    let properties = body["properties"].as_object().ok_or("no properties")?;
    if properties.len() != 2 || properties.get("max_participants") != Some(&json!(2)) {
        return Err(format!("properties are {properties:?}"));
    }
    let exp = properties
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or("properties.exp is not a whole number")?;
    let expected = unix_now() as u64 + LIFETIME;
    if exp.abs_diff(expected) > 60 {
        return Err(format!(
            "properties.exp {exp} is not the tokens' expiry ({expected})"
        ));
    }
    Ok((name.to_owned(), exp))
}

async fn create_room(
    State(fake): State<FakeDaily>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let answer = {
        let mut recorded = fake.0.lock().unwrap();
        recorded
            .posts
            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        recorded.script.pop_front().unwrap_or(Answer::Create)
    };
    match answer {
        Answer::Create => {}
        Answer::Status(status) => {
            let error = if status == 401 {
                "authorization-error"
            } else {
                "server-error"
            };
            return daily_error(status, error, "scripted by the test");
        }
        Answer::Slow(delay) => tokio::time::sleep(delay).await,
    }
    if !bearer_ok(&headers) {
        fake.0
            .lock()
            .unwrap()
            .problems
            .push("wrong or missing Bearer API key".into());
        return daily_error(401, "authorization-error", "Unauthorized");
    }
    match check_room_body(&headers, &body) {
        Ok((name, exp)) => {
            fake.0.lock().unwrap().rooms.push((name.clone(), exp));
            (
                StatusCode::OK,
                Json(json!({
                    "id": "5e3cf703-5547-47d6-a371-37b1f0b4427f",
                    "name": name,
                    "api_created": true,
                    "privacy": "private",
                    "url": format!("https://{DOMAIN}.daily.co/{name}"),
                    "created_at": "2026-12-01T10:00:00.000Z",
                    "config": {"exp": exp, "max_participants": 2}
                })),
            )
        }
        Err(problem) => {
            fake.0.lock().unwrap().problems.push(problem.clone());
            daily_error(400, "invalid-request-error", &problem)
        }
    }
}

async fn delete_room(
    State(fake): State<FakeDaily>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let mut recorded = fake.0.lock().unwrap();
    if !bearer_ok(&headers) {
        recorded
            .problems
            .push("DELETE without the Bearer API key".into());
        return daily_error(401, "authorization-error", "Unauthorized");
    }
    if !recorded.rooms.iter().any(|(room, _)| *room == name) {
        return daily_error(404, "not-found", &format!("room {name} was not found"));
    }
    recorded.deleted.push(name.clone());
    (StatusCode::OK, Json(json!({"deleted": true, "name": name})))
}

/// A server whose `config.toml` picks `daily` for every call, talking to `origin`.
async fn server(origin: &str, settings: &str, extra: &str, env: &[(&str, &str)]) -> TestServer {
    let settings = format!(
        "api_key = {API_KEY:?}\napi_url = {origin:?}\ndomain = {DOMAIN:?}\n\
         domain_id = {DOMAIN_ID:?}\n{settings}"
    );
    vendor::start("daily", &[origin], &settings, extra, env).await
}

#[tokio::test]
async fn daily_rooms_and_meeting_tokens_for_both_sides() {
    let (fake, origin) = FakeDaily::start().await;
    let server = server(&origin, "", "", &[]).await;
    let call = call_flow(&server, None).await;
    fake.assert_no_problems();

    let rooms = fake.rooms();
    assert_eq!(rooms.len(), 1, "one room per call");
    let (room, room_exp) = rooms[0].clone();
    let room_url = format!("https://{DOMAIN}.daily.co/{room}");
    for side in [&call.caller, &call.callee] {
        assert_eq!(
            side["sessionId"],
            room.as_str(),
            "sessionId is the room name"
        );
        assert_eq!(side["apiKey"], room_url.as_str(), "apiKey is the room URL");
    }
    let owner = call_owner(&server, call.caller["callId"].as_str().unwrap()).await;

    let checked = run_sdk(
        "daily.py",
        &json!({
            "api_key": API_KEY,
            "domain_id": DOMAIN_ID,
            "room": room,
            "room_exp": room_exp,
            "tokens": [
                {"token": call.caller["sessionToken"], "identity": "alice", "name": "alice",
                 "owner": false, "lifetime": LIFETIME},
                {"token": call.callee["sessionToken"], "identity": owner, "name": "Bob",
                 "owner": true, "lifetime": LIFETIME},
            ],
        }),
    )
    .await;
    assert_eq!(checked["claims"][0]["o"], false, "the caller is a guest");
    assert_eq!(
        checked["claims"][1]["o"], true,
        "the URL owner owns the room"
    );

    // Nothing was deleted while the call is live; the key never reached the log.
    assert!(fake.deleted().is_empty());
    assert!(
        !server.logs().contains(API_KEY),
        "the API key is not logged"
    );
}

#[tokio::test]
async fn daily_room_is_deleted_when_a_side_terminates() {
    let (fake, origin) = FakeDaily::start().await;
    let server = server(&origin, "", "", &[]).await;
    let call = call_flow(&server, None).await;
    let room = call.caller["sessionId"].as_str().unwrap().to_owned();

    assert!(
        fake.deleted().is_empty(),
        "the room lives while the call does"
    );
    hang_up(&call).await;
    fake.wait_for_delete(&room, "the caller terminated the call")
        .await;
    assert_eq!(fake.deleted(), [room], "deleted once");
    fake.assert_no_problems();
}

#[tokio::test]
async fn daily_room_is_deleted_when_an_unanswered_call_expires() {
    let (fake, origin) = FakeDaily::start().await;
    let server = server(
        &origin,
        "",
        "[calls]\nduration_seconds = 1\n",
        &[("LOOP_DATABASE__PURGE_INTERVAL_SECONDS", "1")],
    )
    .await;
    // Placed only: with calls lasting a second, listing it could race its expiry.
    let placed = attempt_call(&server).await;
    assert_eq!(placed.status, 200, "{}", placed.body);
    let room = placed.body["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(fake.rooms()[0].0, room);
    // Nobody answers, nobody terminates.
    fake.wait_for_delete(&room, "the call expired").await;
    assert_eq!(fake.deleted(), [room], "deleted once");
    fake.assert_no_problems();
}

#[tokio::test]
async fn daily_refused_api_key_is_a_clear_error_and_not_retried() {
    let (fake, origin) = FakeDaily::start().await;
    let server = server(&origin, "", "", &[]).await;
    fake.script(&[Answer::Status(401)]);
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.posts(), 1, "a refused key is not retried");
    let logs = server
        .wait_for_log(
            "the Daily API refused the credentials (check `api_key`) to create the room: HTTP 401",
        )
        .await;
    assert!(logs.contains("misconfigured"), "{logs}");
    assert!(!logs.contains(API_KEY), "the API key is not logged");

    // The next call works: nothing was left broken.
    let call = call_flow(&server, None).await;
    assert_eq!(fake.rooms().len(), 1);
    assert_eq!(call.caller["sessionId"], fake.rooms()[0].0.as_str());
}

#[tokio::test]
async fn daily_server_errors_are_retried_then_unavailable() {
    let (fake, origin) = FakeDaily::start().await;
    let server = server(&origin, "retries = 2\n", "", &[]).await;

    // One 500, then Daily recovers: the retry serves the call.
    fake.script(&[Answer::Status(500)]);
    let call = call_flow(&server, None).await;
    assert_eq!(fake.posts(), 2, "one failure, one retry");
    assert_eq!(call.caller["sessionId"], fake.rooms()[0].0.as_str());

    // Daily keeps failing: 1 + 2 retries, then the caller gets a clear error.
    fake.script(&[Answer::Status(503); 3]);
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert_eq!(fake.posts(), 2 + 3, "three attempts");
    let logs = server
        .wait_for_log("the Daily API is unavailable to create the room: HTTP 503")
        .await;
    assert!(logs.contains("after 3 attempts"), "{logs}");
    fake.assert_no_problems();
}

#[tokio::test]
async fn daily_slow_api_times_out_then_unavailable() {
    let (fake, origin) = FakeDaily::start().await;
    let server = server(&origin, "timeout_ms = 300\nretries = 1\n", "", &[]).await;
    fake.script(&[Answer::Slow(Duration::from_secs(3)); 2]);
    let started = Instant::now();
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timed out rather than waiting for Daily: {:?}",
        started.elapsed()
    );
    assert_eq!(fake.posts(), 2, "one attempt and one retry");
    server
        .wait_for_log("the Daily API did not answer in time")
        .await;
}

#[tokio::test]
async fn daily_missing_settings_are_misconfigured() {
    let (_fake, origin) = FakeDaily::start().await;
    // No domain: the room URL cannot be made.
    let server = vendor::start(
        "daily",
        &[&origin],
        &format!("api_key = {API_KEY:?}\napi_url = {origin:?}\ndomain_id = {DOMAIN_ID:?}\n"),
        "",
        &[],
    )
    .await;
    let attempt = attempt_call(&server).await;
    assert_provider_error(&attempt);
    server.wait_for_log("setting `domain` is not set").await;
}
