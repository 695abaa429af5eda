//! The call-progress websocket without a browser: every rule of Mozilla's
//! protocol, its exact error texts and its timers, against the real server
//! (on the backend `LOOP_TEST_DATABASE` picks), and two instances sharing
//! PostgreSQL acting as one.

use crate::common;

use std::time::{Duration, Instant};

use common::fake_push::FakePush;
use common::hawk::Device;
use common::ws::WsClient;
use common::{ServerOptions, TestServer, client, fresh_postgres_database, place_call};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A client of the progress socket.
struct Ws(WsClient);

impl std::ops::Deref for Ws {
    type Target = WsClient;
    fn deref(&self) -> &WsClient {
        &self.0
    }
}

impl std::ops::DerefMut for Ws {
    fn deref_mut(&mut self) -> &mut WsClient {
        &mut self.0
    }
}

impl Ws {
    async fn connect(server: &TestServer) -> Ws {
        Ws(WsClient::connect(server, "/websocket").await)
    }

    /// `base` is `ws://host:port`; `origin` what the client sends as Origin.
    async fn connect_url(base: &str, origin: Option<&str>) -> Ws {
        Ws(WsClient::connect_url(&format!("{base}/websocket"), origin).await)
    }

    /// Nothing arrives before an echo round trip: proof that no progress
    /// message was sent in between.
    async fn quiet(&mut self) {
        self.send(json!({"messageType": "echo", "echo": "ping"}))
            .await;
        assert_eq!(
            self.recv().await,
            json!({"messageType": "echo", "echo": "ping"})
        );
    }

    async fn hello(&mut self, call_id: &str, auth: &str) -> Value {
        self.send(json!({"messageType": "hello", "callId": call_id, "auth": auth}))
            .await;
        self.recv().await
    }

    async fn act(&mut self, event: &str) {
        self.send(json!({"messageType": "action", "event": event}))
            .await;
    }

    /// Expects an error with exactly `reason`, then the close (1000).
    async fn expect_error(&mut self, reason: &str) {
        assert_eq!(
            self.recv().await,
            json!({"messageType": "error", "reason": reason})
        );
        assert_eq!(self.closed().await, 1000, "closed after {reason:?}");
    }

    async fn close(self) {
        self.0.close().await;
    }
}

fn progress(state: &str) -> Value {
    json!({"messageType": "progress", "state": state})
}

fn progress_because(state: &str, reason: &str) -> Value {
    json!({"messageType": "progress", "state": state, "reason": reason})
}

fn hello_state(state: &str) -> Value {
    json!({"messageType": "hello", "state": state})
}

/// A call from Alice to Bob and both sides' view of it.
struct Call {
    id: String,
    caller_token: String,
    callee_token: String,
    progress_url: String,
}

async fn place(server: &TestServer, bob: &Device) -> Call {
    let placed = common::call_through_new_url(server, bob).await;
    let listed: Value = bob
        .get(&format!("/calls?version={}", 0))
        .await
        .json()
        .await
        .unwrap();
    let incoming = listed["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|call| call["callId"] == placed["callId"])
        .expect("the callee lists the call")
        .clone();
    assert_eq!(incoming["progressURL"], placed["progressURL"]);
    Call {
        id: placed["callId"].as_str().unwrap().into(),
        caller_token: placed["websocketToken"].as_str().unwrap().into(),
        callee_token: incoming["websocketToken"].as_str().unwrap().into(),
        progress_url: placed["progressURL"].as_str().unwrap().into(),
    }
}

struct Setup {
    server: TestServer,
    bob: Device,
    _push: FakePush,
}

async fn setup(progress_toml: &str) -> Setup {
    setup_with_env(progress_toml, Vec::new()).await
}

async fn setup_with_env(progress_toml: &str, env: Vec<(String, String)>) -> Setup {
    let push = FakePush::start().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!("{}\n{progress_toml}", push.config(2000)),
        env,
        ..Default::default()
    })
    .await;
    let bob = Device::register(&server.url, &push.url("bob")).await;
    Setup {
        server,
        bob,
        _push: push,
    }
}

/// Caller and callee sockets of `call`, both said hello, both told alerting.
async fn alerting(server: &TestServer, call: &Call) -> (Ws, Ws) {
    let mut caller = Ws::connect(server).await;
    let mut callee = Ws::connect(server).await;
    assert_eq!(
        caller.hello(&call.id, &call.caller_token).await,
        hello_state("init")
    );
    assert_eq!(
        callee.hello(&call.id, &call.callee_token).await,
        hello_state("init")
    );
    assert_eq!(caller.recv().await, progress("alerting"));
    assert_eq!(callee.recv().await, progress("alerting"));
    (caller, callee)
}

async fn listed_calls(bob: &Device) -> usize {
    let listed: Value = bob.get("/calls?version=0").await.json().await.unwrap();
    listed["calls"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_call_goes_from_init_to_connected_and_then_ends_for_both() {
    let s = setup("").await;
    let call = place(&s.server, &s.bob).await;
    assert_eq!(
        call.progress_url,
        format!("{}/websocket", s.server.url.replacen("http", "ws", 1))
    );
    let (mut caller, mut callee) = alerting(&s.server, &call).await;

    callee.act("accept").await;
    assert_eq!(callee.recv().await, progress("connecting"));
    assert_eq!(caller.recv().await, progress("connecting"));

    caller.act("media-up").await;
    assert_eq!(caller.recv().await, progress("half-connected"));
    assert_eq!(callee.recv().await, progress("half-connected"));
    // The same side again changes nothing and tells nobody.
    caller.act("media-up").await;
    caller.quiet().await;
    callee.quiet().await;

    callee.act("media-up").await;
    assert_eq!(callee.recv().await, progress("connected"));
    assert_eq!(caller.recv().await, progress("connected"));
    assert_eq!(caller.closed().await, 1000);
    assert_eq!(callee.closed().await, 1000);
    assert_eq!(listed_calls(&s.bob).await, 1, "a connected call is live");

    // Later sockets rejoin the live call and can end it; both hear it.
    let mut caller = Ws::connect(&s.server).await;
    let mut callee = Ws::connect(&s.server).await;
    assert_eq!(
        caller.hello(&call.id, &call.caller_token).await,
        hello_state("connected")
    );
    assert_eq!(
        callee.hello(&call.id, &call.callee_token).await,
        hello_state("connected")
    );
    caller
        .send(json!({"messageType": "action", "event": "terminate", "reason": "closed"}))
        .await;
    assert_eq!(
        caller.recv().await,
        progress_because("terminated", "closed")
    );
    assert_eq!(
        callee.recv().await,
        progress_because("terminated", "closed")
    );
    assert_eq!(caller.closed().await, 1000);
    assert_eq!(callee.closed().await, 1000);
    assert_eq!(
        listed_calls(&s.bob).await,
        0,
        "terminated calls are not listed"
    );

    // A hello on a terminated call learns why it ended, and is closed.
    let mut late = Ws::connect(&s.server).await;
    assert_eq!(
        late.hello(&call.id, &call.callee_token).await,
        json!({"messageType": "hello", "state": "terminated", "reason": "closed"})
    );
    assert_eq!(late.closed().await, 1000);
}

#[tokio::test]
async fn a_terminate_reason_reaches_both_sides_unchanged() {
    let s = setup("").await;
    for reason in ["cancel", "busy", "reject", "media-fail", "My-Own-Reason-42"] {
        let call = place(&s.server, &s.bob).await;
        let (mut caller, mut callee) = alerting(&s.server, &call).await;
        callee
            .send(json!({"messageType": "action", "event": "terminate", "reason": reason}))
            .await;
        for side in [&mut callee, &mut caller] {
            assert_eq!(side.recv().await, progress_because("terminated", reason));
            assert_eq!(side.closed().await, 1000);
        }
    }
    // Without a reason, none is made up.
    let call = place(&s.server, &s.bob).await;
    let mut caller = Ws::connect(&s.server).await;
    assert_eq!(
        caller.hello(&call.id, &call.caller_token).await,
        hello_state("init")
    );
    caller.act("terminate").await;
    assert_eq!(caller.recv().await, progress("terminated"));
    assert_eq!(caller.closed().await, 1000);
}

#[tokio::test]
async fn every_malformed_or_hostile_message_gets_its_exact_error_and_a_close() {
    let s = setup("").await;
    let other = place(&s.server, &s.bob).await;
    // Each case on a fresh call: an error closes the socket, and a side's
    // last socket closing ends its call.
    let cases = |call: &Call| -> Vec<(Vec<Value>, &'static str)> {
        vec![
            (vec![json!("not json")], "Malformed message."),
            (vec![json!(3)], "Malformed message."),
            (vec![json!([1, 2])], "Malformed message."),
            (vec![json!({"messageType": "dance"})], "Unknown messageType"),
            (vec![json!({"hello": true})], "Unknown messageType"),
            (
                vec![json!({"messageType": "hello"})],
                "Missing parameters: callId, auth",
            ),
            (
                vec![json!({"messageType": "hello", "callId": call.id})],
                "Missing parameters: auth",
            ),
            (
                vec![json!({"messageType": "hello", "callId": "nope", "auth": call.caller_token})],
                "bad callId",
            ),
            (
                vec![json!({"messageType": "hello", "callId": 42, "auth": call.caller_token})],
                "bad callId",
            ),
            (
                vec![json!({"messageType": "hello", "callId": call.id, "auth": "forged"})],
                "bad authentication",
            ),
            (
                vec![
                    json!({"messageType": "hello", "callId": call.id, "auth": other.caller_token}),
                ],
                "bad authentication",
            ),
            (
                vec![json!({"messageType": "hello", "callId": call.id, "auth": ""})],
                "bad authentication",
            ),
            (
                vec![json!({"messageType": "action", "event": "accept"})],
                "bad authentication",
            ),
            (
                vec![json!({"messageType": "action", "event": "dance"})],
                "dance state is invalid. Should be one of: accept, media-up, terminate",
            ),
            (
                vec![json!({"messageType": "action", "event": 5})],
                "5 state is invalid. Should be one of: accept, media-up, terminate",
            ),
            (
                vec![json!({"messageType": "action"})],
                "Missing parameters: event",
            ),
            (
                vec![
                    json!({"messageType": "hello", "callId": call.id, "auth": call.caller_token}),
                    json!({"messageType": "action", "event": "terminate", "reason": "no way!"}),
                ],
                "Invalid reason: should be alphanumeric",
            ),
            (
                vec![
                    json!({"messageType": "hello", "callId": call.id, "auth": call.caller_token}),
                    json!({"messageType": "action", "event": "terminate", "reason": null}),
                ],
                "Invalid reason: should be alphanumeric",
            ),
            (
                vec![
                    json!({"messageType": "hello", "callId": call.id, "auth": call.caller_token}),
                    json!({"messageType": "action", "event": "media-up"}),
                ],
                "No transition from init state with media-up event.",
            ),
            (
                vec![
                    json!({"messageType": "hello", "callId": call.id, "auth": call.caller_token}),
                    json!({"messageType": "action", "event": "accept"}),
                ],
                "No transition from init state with accept event.",
            ),
        ]
    };
    let count = cases(&other).len();
    for case in 0..count {
        let call = place(&s.server, &s.bob).await;
        let (messages, reason) = cases(&call).swap_remove(case);
        let mut ws = Ws::connect(&s.server).await;
        let last = messages.len() - 1;
        for (i, message) in messages.into_iter().enumerate() {
            match message {
                Value::String(text) => ws.send_text(&text).await,
                other => ws.send(other).await,
            }
            if i < last {
                // A hello before the faulty message.
                assert_eq!(ws.recv().await["messageType"], "hello");
            }
        }
        ws.expect_error(reason).await;
    }

    // An error closed the caller's only socket, and the call with it
    // (Mozilla's rule: a side's last socket closing ends the call).
    let call = place(&s.server, &s.bob).await;
    let mut caller = Ws::connect(&s.server).await;
    caller.hello(&call.id, &call.caller_token).await;
    caller.send_text("{").await;
    caller.expect_error("Malformed message.").await;
    let mut callee = Ws::connect(&s.server).await;
    assert_eq!(
        callee.hello(&call.id, &call.callee_token).await,
        json!({"messageType": "hello", "state": "terminated", "reason": "closed"})
    );

    // Binary frames holding JSON are read too; echo echoes anything.
    let mut ws = Ws::connect(&s.server).await;
    let echo = json!({"messageType": "echo", "echo": {"nested": [1, "two", null]}});
    ws.stream
        .send(Message::Binary(echo.to_string().into_bytes().into()))
        .await
        .unwrap();
    assert_eq!(ws.recv().await, echo);
    ws.close().await;
}

#[tokio::test]
async fn another_callee_device_is_told_answered_elsewhere_and_the_call_goes_on() {
    let s = setup("").await;
    let call = place(&s.server, &s.bob).await;
    let (mut caller, mut phone) = alerting(&s.server, &call).await;
    let mut laptop = Ws::connect(&s.server).await;
    assert_eq!(
        laptop.hello(&call.id, &call.callee_token).await,
        hello_state("alerting"),
        "a later device gets the current state"
    );

    phone.act("accept").await;
    assert_eq!(phone.recv().await, progress("connecting"));
    assert_eq!(caller.recv().await, progress("connecting"));
    assert_eq!(
        laptop.recv().await,
        progress_because("terminated", "answered-elsewhere")
    );
    assert_eq!(laptop.closed().await, 1000);

    // That close did not end the call.
    phone.act("media-up").await;
    assert_eq!(phone.recv().await, progress("half-connected"));
    assert_eq!(caller.recv().await, progress("half-connected"));
    caller.act("media-up").await;
    assert_eq!(caller.recv().await, progress("connected"));
    assert_eq!(phone.recv().await, progress("connected"));
}

#[tokio::test]
async fn the_last_socket_of_a_side_closing_ends_the_call_for_the_other() {
    let s = setup("").await;
    let call = place(&s.server, &s.bob).await;
    let (mut caller, phone) = alerting(&s.server, &call).await;
    let mut laptop = Ws::connect(&s.server).await;
    assert_eq!(
        laptop.hello(&call.id, &call.callee_token).await,
        hello_state("alerting")
    );
    // A socket that never said hello changes nothing.
    Ws::connect(&s.server).await.close().await;
    phone.close().await;
    caller.quiet().await;
    laptop.close().await;
    assert_eq!(
        caller.recv().await,
        progress_because("terminated", "closed")
    );
    assert_eq!(caller.closed().await, 1000);
}

#[tokio::test]
async fn each_timer_ends_its_call_with_timeout() {
    // One timer from the environment, as operators override any key.
    let s = setup_with_env(
        "[progress]\nringing_seconds = 1.5\nconnection_seconds = 1\n",
        vec![("LOOP_PROGRESS__SUPERVISORY_SECONDS".into(), "1".into())],
    )
    .await;

    // Supervisory: the callee never says hello.
    let call = place(&s.server, &s.bob).await;
    let mut caller = Ws::connect(&s.server).await;
    let started = Instant::now();
    assert_eq!(
        caller.hello(&call.id, &call.caller_token).await,
        hello_state("init")
    );
    assert_eq!(
        caller.recv().await,
        progress_because("terminated", "timeout")
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "the supervisory timer from the environment (1 s), not the default (10 s): {waited:?}"
    );
    assert_eq!(caller.closed().await, 1000);

    // Ringing: nobody answers.
    let call = place(&s.server, &s.bob).await;
    let (mut caller, mut callee) = alerting(&s.server, &call).await;
    let started = Instant::now();
    for side in [&mut caller, &mut callee] {
        assert_eq!(side.recv().await, progress_because("terminated", "timeout"));
        assert_eq!(side.closed().await, 1000);
    }
    assert!(started.elapsed() >= Duration::from_millis(1300));

    // Connection: accepted, but media never comes up on both sides.
    let call = place(&s.server, &s.bob).await;
    let (mut caller, mut callee) = alerting(&s.server, &call).await;
    callee.act("accept").await;
    assert_eq!(callee.recv().await, progress("connecting"));
    assert_eq!(caller.recv().await, progress("connecting"));
    caller.act("media-up").await;
    assert_eq!(caller.recv().await, progress("half-connected"));
    assert_eq!(callee.recv().await, progress("half-connected"));
    for side in [&mut caller, &mut callee] {
        assert_eq!(side.recv().await, progress_because("terminated", "timeout"));
        assert_eq!(side.closed().await, 1000);
    }

    // A connected call has no timer running.
    let call = place(&s.server, &s.bob).await;
    let (mut caller, mut callee) = alerting(&s.server, &call).await;
    callee.act("accept").await;
    callee.recv().await;
    caller.recv().await;
    caller.act("media-up").await;
    callee.act("media-up").await;
    assert_eq!(caller.recv().await, progress("half-connected"));
    assert_eq!(caller.recv().await, progress("connected"));
    let mut rejoined = Ws::connect(&s.server).await;
    assert_eq!(
        rejoined.hello(&call.id, &call.caller_token).await,
        hello_state("connected")
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    rejoined.quiet().await;
    assert_eq!(listed_calls(&s.bob).await, 1);
}

#[tokio::test]
async fn the_upgrade_is_accepted_whatever_origin_the_client_sends() {
    let s = setup("").await;
    let base = s.server.url.replacen("http", "ws", 1);
    for origin in [
        format!("{base}/websocket"),
        "https://elsewhere.example".to_string(),
        "null".to_string(),
    ] {
        let mut ws = Ws::connect_url(&base, Some(&origin)).await;
        ws.quiet().await;
        ws.close().await;
    }
    // And under the /v0 prefix Loop clients use.
    let (mut stream, _) = tokio_tungstenite::connect_async(format!("{base}/v0/websocket"))
        .await
        .unwrap();
    stream
        .send(Message::Text(
            json!({"messageType": "echo", "echo": 1}).to_string().into(),
        ))
        .await
        .unwrap();
    let Some(Ok(Message::Text(text))) = stream.next().await else {
        panic!("no echo")
    };
    // Byte for byte what Mozilla's server sends: messageType first.
    assert_eq!(text.as_str(), r#"{"messageType":"echo","echo":1}"#);
}

#[tokio::test]
async fn a_long_poll_of_calls_answers_when_a_call_is_placed() {
    let s = setup("").await;
    let version = loop_now();
    // Nothing placed: the wait runs out and the answer is empty.
    let started = Instant::now();
    let response = s
        .bob
        .get_with_headers(
            &format!("/calls?version={version}"),
            &[("prefer", "wait=1")],
        )
        .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"calls": []}));

    // A call placed while Bob waits answers him at once.
    let poll = {
        let bob = s.bob.on(&s.bob.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = bob
                .get_with_headers(
                    &format!("/calls?version={version}"),
                    &[("prefer", "wait=20")],
                )
                .await;
            (started.elapsed(), response.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let call = place(&s.server, &s.bob).await;
    let (waited, body) = poll.await.unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(body["calls"][0]["callId"], call.id.as_str());
}

fn loop_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Alice follows her call on instance A, Bob on instance B; both share one
/// PostgreSQL. Every transition reaches both, each timer fires once.
#[tokio::test]
async fn caller_and_callee_on_two_instances_sharing_postgres_see_one_call() {
    let push = FakePush::start().await;
    let database = fresh_postgres_database().await;
    let a = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "{}\n[progress]\nsupervisory_seconds = 1\nringing_seconds = 1\nconnection_seconds = 1\n",
            push.config(2000)
        ),
        database_url: Some(database.url.clone()),
        ..Default::default()
    })
    .await;
    let b = a.start_sibling();
    let bob = Device::register(&b.url, &push.url("bob")).await;
    let http = client();

    // Bob long-polls on B; Alice calls through A.
    let version = loop_now();
    let poll = {
        let bob = bob.on(&bob.base);
        tokio::spawn(async move {
            bob.get_with_headers(
                &format!("/calls?version={version}"),
                &[("prefer", "wait=20")],
            )
            .await
            .json::<Value>()
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let token = bob.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    let placed = place_call(
        &http,
        &a.endpoint(&format!("/calls/{token}")),
        &json!({"callType": "audio-video"}),
    )
    .await;
    let listed = poll.await.unwrap();
    let incoming = &listed["calls"][0];
    assert_eq!(incoming["callId"], placed["callId"], "{listed}");
    let call_id = placed["callId"].as_str().unwrap();
    let caller_token = placed["websocketToken"].as_str().unwrap();
    let callee_token = incoming["websocketToken"].as_str().unwrap();

    let mut caller = Ws::connect(&a).await;
    let mut callee = Ws::connect(&b).await;
    assert_eq!(
        caller.hello(call_id, caller_token).await,
        hello_state("init")
    );
    assert_eq!(
        callee.hello(call_id, callee_token).await,
        hello_state("init")
    );
    assert_eq!(caller.recv().await, progress("alerting"));
    assert_eq!(callee.recv().await, progress("alerting"));
    callee.act("accept").await;
    assert_eq!(callee.recv().await, progress("connecting"));
    assert_eq!(caller.recv().await, progress("connecting"));
    caller.act("media-up").await;
    callee.act("media-up").await;
    for side in [&mut caller, &mut callee] {
        assert_eq!(side.recv().await, progress("half-connected"));
        assert_eq!(side.recv().await, progress("connected"));
        assert_eq!(side.closed().await, 1000);
    }

    // A timer with sockets on both instances: both race to fire it, one
    // change wins, and each side is told once.
    let placed = place_call(
        &http,
        &a.endpoint(&format!("/calls/{token}")),
        &json!({"callType": "audio"}),
    )
    .await;
    let call_id = placed["callId"].as_str().unwrap();
    let listed: Value = bob.get("/calls?version=0").await.json().await.unwrap();
    let incoming = listed["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|call| call["callId"] == call_id)
        .unwrap()
        .clone();
    let mut caller = Ws::connect(&a).await;
    let mut callee = Ws::connect(&b).await;
    let mut callee_on_a = Ws::connect(&a).await;
    caller
        .hello(call_id, placed["websocketToken"].as_str().unwrap())
        .await;
    callee
        .hello(call_id, incoming["websocketToken"].as_str().unwrap())
        .await;
    callee_on_a
        .hello(call_id, incoming["websocketToken"].as_str().unwrap())
        .await;
    assert_eq!(caller.recv().await, progress("alerting"));
    assert_eq!(callee.recv().await, progress("alerting"));
    for side in [&mut caller, &mut callee, &mut callee_on_a] {
        assert_eq!(side.recv().await, progress_because("terminated", "timeout"));
        assert_eq!(side.closed().await, 1000);
    }
    // Both instances had a socket whose timer was due; one of them won.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fired = |logs: String| logs.matches("call progress timer fired").count();
    assert_eq!(fired(a.logs()) + fired(b.logs()), 1);
}
