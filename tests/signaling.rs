//! The signaling relay (`GET /signaling`) of the self-hosted provider, and
//! the ICE servers handed out with a call: real server, real websockets,
//! real loopback plugin, on the backend `LOOP_TEST_DATABASE` picks, and two
//! instances sharing PostgreSQL acting as one.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::fake_push::FakePush;
use common::hawk::Device;
use common::ws::WsClient;
use common::{ServerOptions, TestServer, fresh_postgres_database};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// The largest message the relay takes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A client of the signaling socket.
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
        Self::connect_path(server, "/signaling").await
    }

    async fn connect_path(server: &TestServer, path: &str) -> Ws {
        Ws(WsClient::connect(server, path).await)
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.stream.next()).await
        {
            if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
                panic!("expected nothing, got {frame:?}");
            }
        }
    }

    /// Expects `{"type":"error","reason":reason}`, then the close; returns
    /// the close code.
    async fn expect_error(&mut self, reason: &str) -> u16 {
        assert_eq!(
            self.recv().await,
            json!({"type": "error", "reason": reason})
        );
        self.closed().await
    }

    async fn join(&mut self, session_id: &str, token: &str) -> Value {
        self.send(json!({"type": "join", "sessionId": session_id, "token": token}))
            .await;
        self.recv().await
    }

    /// A socket that joined; asserts what it was told about the peer.
    async fn joined(server: &TestServer, side: &Side, peer: bool) -> Ws {
        let mut ws = Ws::connect(server).await;
        assert_eq!(
            ws.join(&side.session_id, &side.token).await,
            json!({"type": "joined", "peer": peer})
        );
        ws
    }

    async fn signal(&mut self, data: &Value) {
        self.send(json!({"type": "signal", "data": data})).await;
    }

    async fn close(self) {
        self.0.close().await;
    }
}

fn signal(data: &Value) -> Value {
    json!({"type": "signal", "data": data})
}

/// One side of a call: the provider session and its token.
#[derive(Clone)]
struct Side {
    session_id: String,
    token: String,
    ice_servers: Value,
}

/// Alice's and Bob's sides of one call, as the API hands them out.
struct Call {
    caller: Side,
    callee: Side,
    /// Unix seconds just before and just after the call was placed.
    placed: (i64, i64),
}

async fn place(server: &TestServer, bob: &Device) -> Call {
    let before = now() as i64;
    let placed = common::call_through_new_url(server, bob).await;
    let after = now() as i64;
    let listed: Value = bob.get("/calls?version=0").await.json().await.unwrap();
    let incoming = listed["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|call| call["callId"] == placed["callId"])
        .expect("the callee lists the call")
        .clone();
    assert_eq!(incoming["sessionId"], placed["sessionId"]);
    let side = |call: &Value| Side {
        session_id: call["sessionId"].as_str().unwrap().into(),
        token: call["sessionToken"].as_str().unwrap().into(),
        ice_servers: call["iceServers"].clone(),
    };
    Call {
        caller: side(&placed),
        callee: side(&incoming),
        placed: (before, after),
    }
}

struct Setup {
    server: TestServer,
    bob: Device,
    _push: FakePush,
}

async fn setup_with(extra_toml: &str, env: Vec<(String, String)>) -> Setup {
    let push = FakePush::start().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!("{}\n{extra_toml}", push.config(2000)),
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

async fn setup() -> Setup {
    setup_with("", Vec::new()).await
}

fn offer(sdp: &str) -> Value {
    json!({"description": {"type": "offer", "sdp": sdp}})
}

fn answer(sdp: &str) -> Value {
    json!({"description": {"type": "answer", "sdp": sdp}})
}

fn candidate(n: u32) -> Value {
    json!({"candidate": {
        "candidate": format!("candidate:{n} 1 udp 2122260223 192.0.2.{n} 5{n:04} typ host"),
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": "abcd"
    }})
}

/// An SDP of about `len` bytes (an offer with many candidates is large).
fn sdp_of(len: usize) -> String {
    let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    let mut n = 0;
    while sdp.len() < len {
        n += 1;
        sdp.push_str(&format!(
            "a=candidate:{n} 1 udp 2122260223 198.51.100.{} {} typ host\r\n",
            n % 250,
            10000 + n
        ));
    }
    sdp
}

/// A loopback token signed with the test server's generated plugin secret,
/// in the format `plugins/loopback/loopback.c` documents:
/// `v1.<base64url payload>.<base64url HMAC-SHA256(secret, "v1.<payload>")>`,
/// payload = role u8 | expires_at u64 BE | u16 BE len | session id | u16 BE
/// len | identity. The key is the secret setting's text (64 hex digits).
fn craft_token(server: &TestServer, session_id: &str, identity: &str, expires_at: u64) -> String {
    let secret =
        std::fs::read_to_string(server.dir.join("data/secrets/plugin-loopback-secret")).unwrap();
    let mut payload = vec![0u8]; // publisher
    payload.extend_from_slice(&expires_at.to_be_bytes());
    payload.extend_from_slice(&(session_id.len() as u16).to_be_bytes());
    payload.extend_from_slice(session_id.as_bytes());
    payload.extend_from_slice(&(identity.len() as u16).to_be_bytes());
    payload.extend_from_slice(identity.as_bytes());
    let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(&payload));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.trim().as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn two_participants_exchange_an_offer_an_answer_and_candidates() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;
    assert_eq!(call.caller.session_id, call.callee.session_id);
    let mut alice = Ws::joined(&s.server, &call.caller, false).await;
    // Through /v0 as well.
    let mut bob = Ws::connect_path(&s.server, "/v0/signaling").await;
    assert_eq!(
        bob.join(&call.callee.session_id, &call.callee.token).await,
        json!({"type": "joined", "peer": true})
    );
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));

    let sdp =
        "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AB:CD\r\n";
    alice.signal(&offer(sdp)).await;
    assert_eq!(bob.recv().await, signal(&offer(sdp)));
    bob.signal(&answer("v=0\r\nanswer\r\n")).await;
    assert_eq!(alice.recv().await, signal(&answer("v=0\r\nanswer\r\n")));
    for n in 1..=3 {
        alice.signal(&candidate(n)).await;
        bob.signal(&candidate(10 + n)).await;
    }
    for n in 1..=3 {
        assert_eq!(bob.recv().await, signal(&candidate(n)), "in order");
        assert_eq!(alice.recv().await, signal(&candidate(10 + n)));
    }
    // The end of candidates, both spellings.
    alice.signal(&json!({"candidate": null})).await;
    bob.signal(&json!({"candidate": {}})).await;
    assert_eq!(bob.recv().await, signal(&json!({"candidate": null})));
    assert_eq!(alice.recv().await, signal(&json!({"candidate": {}})));
    // Nobody hears their own signals.
    alice.quiet().await;
    bob.quiet().await;

    // Nothing of it reached the log: no token, no SDP.
    let logs = s.server.logs();
    for secret in [
        call.caller.token.as_str(),
        &call.callee.token,
        "fingerprint",
        "answer",
    ] {
        assert!(!logs.contains(secret), "{secret} was logged");
    }
}

#[tokio::test]
async fn peer_joined_and_peer_left_follow_the_other_side() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;
    let mut alice = Ws::joined(&s.server, &call.caller, false).await;
    let bob = Ws::joined(&s.server, &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));
    bob.close().await;
    assert_eq!(alice.recv().await, json!({"type": "peer-left"}));
    // A signal with nobody there is not queued for later.
    alice.signal(&offer("v=0\r\nlost\r\n")).await;
    let mut bob = Ws::joined(&s.server, &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));
    bob.quiet().await;
    alice.signal(&offer("v=0\r\nfresh\r\n")).await;
    assert_eq!(bob.recv().await, signal(&offer("v=0\r\nfresh\r\n")));
    // Alice goes; Bob hears it and stays.
    alice.close().await;
    assert_eq!(bob.recv().await, json!({"type": "peer-left"}));
}

#[tokio::test]
async fn forged_malformed_foreign_and_other_session_tokens_are_refused() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;
    let other = place(&s.server, &s.bob).await;
    assert_ne!(call.caller.session_id, other.caller.session_id);

    // One character of the MAC changed: the one before the last, which
    // carries six bits of it. (The last carries the MAC's final bits plus
    // padding bits that must be zero, so changing it to 'B' gave a
    // malformed token instead, once in 16 runs.)
    let mut forged: Vec<char> = call.caller.token.chars().collect();
    let at = forged.len() - 2;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    // Another server's token, for its own session: signed with another key.
    let elsewhere = setup().await;
    let foreign = place(&elsewhere.server, &elsewhere.bob).await;

    let cases = [
        (&call.caller.session_id, &forged, "bad token: bad signature"),
        (
            &call.caller.session_id,
            &"nonsense".to_string(),
            "bad token: malformed",
        ),
        (
            &foreign.caller.session_id,
            &foreign.caller.token,
            "bad token: bad signature",
        ),
        (
            &other.caller.session_id,
            &call.caller.token,
            "bad token: wrong session",
        ),
        (
            &call.callee.session_id,
            &other.callee.token,
            "bad token: wrong session",
        ),
    ];
    for (session_id, token, reason) in cases {
        let mut ws = Ws::connect(&s.server).await;
        ws.send(json!({"type": "join", "sessionId": session_id, "token": token}))
            .await;
        assert_eq!(ws.expect_error(reason).await, 1008, "{reason}");
    }
    // The real ones still work.
    Ws::joined(&s.server, &call.caller, false).await;
}

#[tokio::test]
async fn an_expired_token_is_refused_and_a_joined_socket_ends_with_its_token() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;
    let session = &call.caller.session_id;

    // The crafted token is right: one valid for an hour is accepted.
    let valid = craft_token(&s.server, session, "alice", now() + 3600);
    let side = |token: String| Side {
        session_id: session.clone(),
        token,
        ice_servers: Value::Null,
    };
    Ws::joined(&s.server, &side(valid), false)
        .await
        .close()
        .await;

    let expired = craft_token(&s.server, session, "alice", now() - 5);
    let mut ws = Ws::connect(&s.server).await;
    ws.send(json!({"type": "join", "sessionId": session, "token": expired}))
        .await;
    assert_eq!(ws.expect_error("bad token: expired").await, 1008);

    // A token expiring in two seconds joins, then ends with its token.
    let short = craft_token(&s.server, session, "alice", now() + 2);
    let started = Instant::now();
    let mut ws = Ws::joined(&s.server, &side(short), false).await;
    assert_eq!(
        ws.recv_within(Duration::from_secs(10)).await,
        json!({"type": "error", "reason": "token expired"})
    );
    assert_eq!(ws.closed().await, 1000);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_third_participant_is_refused_while_two_are_present() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;
    let mut alice = Ws::joined(&s.server, &call.caller, false).await;
    let bob = Ws::joined(&s.server, &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));

    // A validly signed token of a third identity for the same session.
    let mallory = Side {
        session_id: call.caller.session_id.clone(),
        token: craft_token(&s.server, &call.caller.session_id, "mallory", now() + 3600),
        ice_servers: Value::Null,
    };
    let mut ws = Ws::connect(&s.server).await;
    ws.send(json!({"type": "join", "sessionId": mallory.session_id, "token": mallory.token}))
        .await;
    assert_eq!(ws.expect_error("session full").await, 1008);
    // Neither participant heard of it.
    alice.quiet().await;

    // The seat Bob leaves is free again.
    bob.close().await;
    assert_eq!(alice.recv().await, json!({"type": "peer-left"}));
    Ws::joined(&s.server, &mallory, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));
}

#[tokio::test]
async fn the_same_identity_joining_again_replaces_its_older_socket() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;
    let mut alice = Ws::joined(&s.server, &call.caller, false).await;
    let mut bob = Ws::joined(&s.server, &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));

    // Alice reloads: her new socket takes her seat.
    let mut alice_again = Ws::joined(&s.server, &call.caller, true).await;
    assert_eq!(alice.expect_error("replaced").await, 1000);
    // Bob is told of a new peer (to negotiate afresh), not that one left.
    assert_eq!(bob.recv().await, json!({"type": "peer-joined"}));
    bob.quiet().await;
    bob.signal(&offer("v=0\r\nto the new socket\r\n")).await;
    assert_eq!(
        alice_again.recv().await,
        signal(&offer("v=0\r\nto the new socket\r\n"))
    );
}

#[tokio::test]
async fn oversized_flooding_malformed_and_early_messages_are_refused() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;

    // Anything before the join.
    let mut ws = Ws::connect(&s.server).await;
    ws.signal(&offer("v=0\r\n")).await;
    assert_eq!(ws.expect_error("join first").await, 1008);

    for bad in [
        "{".to_string(),
        "[]".to_string(),
        json!({"type": "hello"}).to_string(),
        json!({"type": "join", "sessionId": call.caller.session_id}).to_string(),
    ] {
        let mut ws = Ws::connect(&s.server).await;
        ws.send_text(&bad).await;
        assert_eq!(ws.expect_error("malformed message").await, 1008, "{bad}");
    }

    let mut alice = Ws::joined(&s.server, &call.caller, false).await;
    let mut bob = Ws::joined(&s.server, &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));

    // A signal that is not a description or a candidate, and a second join.
    alice
        .signal(&json!({"description": {"type": "offer", "sdp": "x", "evil": true}}))
        .await;
    assert_eq!(alice.expect_error("malformed message").await, 1008);
    assert_eq!(bob.recv().await, json!({"type": "peer-left"}));
    let mut alice = Ws::joined(&s.server, &call.caller, true).await;
    assert_eq!(bob.recv().await, json!({"type": "peer-joined"}));
    alice
        .send(json!({"type": "join", "sessionId": call.caller.session_id, "token": call.caller.token}))
        .await;
    assert_eq!(alice.expect_error("already joined").await, 1008);
    assert_eq!(bob.recv().await, json!({"type": "peer-left"}));

    // Exactly 64 KiB is relayed; one byte more is refused.
    let mut alice = Ws::joined(&s.server, &call.caller, true).await;
    assert_eq!(bob.recv().await, json!({"type": "peer-joined"}));
    let envelope = signal(&offer("")).to_string().len();
    let largest = offer(&"a".repeat(MAX_MESSAGE_BYTES - envelope));
    assert_eq!(signal(&largest).to_string().len(), MAX_MESSAGE_BYTES);
    alice.signal(&largest).await;
    assert_eq!(bob.recv().await, signal(&largest));
    let too_large = offer(&"a".repeat(MAX_MESSAGE_BYTES - envelope + 1));
    alice.signal(&too_large).await;
    assert_eq!(alice.expect_error("message too large").await, 1009);
    assert_eq!(bob.recv().await, json!({"type": "peer-left"}));

    // A flood: far more candidates at once than the bucket holds.
    let mut alice = Ws::joined(&s.server, &call.caller, true).await;
    assert_eq!(bob.recv().await, json!({"type": "peer-joined"}));
    for n in 0..200 {
        // The server may close before the last ones are written.
        let message = signal(&candidate(n)).to_string();
        if alice
            .stream
            .send(Message::Text(message.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut relayed = 0;
    loop {
        let message = bob.recv().await;
        if message == json!({"type": "peer-left"}) {
            break;
        }
        assert_eq!(message, signal(&candidate(relayed)));
        relayed += 1;
    }
    assert!((10..200).contains(&relayed), "{relayed} relayed");
    assert_eq!(alice.expect_error("too many messages").await, 1008);
}

#[tokio::test]
async fn two_instances_on_one_postgres_database_relay_between_them() {
    let push = FakePush::start().await;
    let database = fresh_postgres_database().await;
    let servers = TestServer::start_all(ServerOptions {
        processes: 2,
        extra_toml: push.config(2000),
        database_url: Some(database.url.clone()),
        ..Default::default()
    })
    .await;
    let (a, b) = (&servers[0], &servers[1]);
    let bob = Device::register(&a.url, &push.url("bob")).await;
    let call = place(a, &bob).await;

    let mut alice = Ws::joined(a, &call.caller, false).await;
    let mut bob_ws = Ws::joined(b, &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));

    // An offer larger than a NOTIFY payload crosses over whole.
    let big = sdp_of(20_000);
    assert!(big.len() > 8000);
    alice.signal(&offer(&big)).await;
    assert_eq!(bob_ws.recv().await, signal(&offer(&big)));
    bob_ws.signal(&answer("v=0\r\nsmall\r\n")).await;
    assert_eq!(alice.recv().await, signal(&answer("v=0\r\nsmall\r\n")));
    for n in 0..5 {
        bob_ws.signal(&candidate(n)).await;
    }
    for n in 0..5 {
        assert_eq!(alice.recv().await, signal(&candidate(n)), "in order");
    }

    // A third identity is refused on either instance.
    let mallory = craft_token(a, &call.caller.session_id, "mallory", now() + 3600);
    for server in [a, b] {
        let mut ws = Ws::connect(server).await;
        ws.send(json!({"type": "join", "sessionId": call.caller.session_id, "token": mallory}))
            .await;
        assert_eq!(ws.expect_error("session full").await, 1008);
    }

    // Alice rejoins on B: her socket on A is replaced; Bob hears a new peer.
    let mut alice_on_b = Ws::joined(b, &call.caller, true).await;
    assert_eq!(alice.expect_error("replaced").await, 1000);
    assert_eq!(bob_ws.recv().await, json!({"type": "peer-joined"}));
    bob_ws.signal(&offer("v=0\r\nagain\r\n")).await;
    assert_eq!(alice_on_b.recv().await, signal(&offer("v=0\r\nagain\r\n")));

    // Bob leaves B and comes back on A.
    bob_ws.close().await;
    assert_eq!(alice_on_b.recv().await, json!({"type": "peer-left"}));
    let _bob_on_a = Ws::joined(a, &call.callee, true).await;
    assert_eq!(alice_on_b.recv().await, json!({"type": "peer-joined"}));
}

/// A killed instance cannot free its sockets' seats: the survivors sweep
/// them once they go stale and tell the peers.
#[tokio::test]
async fn the_seats_of_a_killed_instance_are_swept_and_the_peer_told() {
    let push = FakePush::start().await;
    let database = fresh_postgres_database().await;
    let mut servers = TestServer::start_all(ServerOptions {
        processes: 2,
        extra_toml: push.config(2000),
        database_url: Some(database.url.clone()),
        ..Default::default()
    })
    .await;
    let bob = Device::register(&servers[0].url, &push.url("bob")).await;
    let call = place(&servers[0], &bob).await;
    let mut alice = Ws::joined(&servers[0], &call.caller, false).await;
    let _bob_ws = Ws::joined(&servers[1], &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));

    let killed = Instant::now();
    servers[1].kill();
    // Stale after 30 s without a refresh, swept on a 10 s heartbeat.
    assert_eq!(
        alice.recv_within(Duration::from_secs(60)).await,
        json!({"type": "peer-left"})
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(20),
        "swept after {:?}, before it was stale",
        killed.elapsed()
    );
    servers[0]
        .wait_for_log("swept the stale seat of a dead instance")
        .await;
    Ws::joined(&servers[0], &call.callee, true).await;
    assert_eq!(alice.recv().await, json!({"type": "peer-joined"}));
}

/// HMAC-SHA1 of `username` under `secret`, base64: coturn's check.
fn turn_credential(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks one side's `iceServers` against `secret`; returns the identity
/// in its TURN username.
fn check_ice_servers(servers: &Value, secret: &str, (before, after): (i64, i64)) -> String {
    let servers = servers.as_array().expect("iceServers is a list");
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(
        servers[0],
        json!({"urls": ["stun:stun.example.com:3478"]}),
        "STUN needs no credentials"
    );
    let turn = &servers[1];
    assert_eq!(
        turn["urls"],
        json!([
            "turn:127.0.0.1:3478?transport=udp",
            "turns:turn.example.com:5349"
        ])
    );
    let username = turn["username"].as_str().unwrap();
    let (expiry, identity) = username.split_once(':').unwrap();
    let expiry: i64 = expiry.parse().unwrap();
    // As long as the call's provider tokens: a day from when it was placed.
    assert!(
        (before + 24 * 3600..=after + 24 * 3600).contains(&expiry),
        "expiry {expiry}, placed between {before} and {after}"
    );
    assert_eq!(turn["credential"], turn_credential(secret, username));
    identity.to_string()
}

const ICE_TOML: &str = "[ice]\nstun_urls = [\"stun:stun.example.com:3478\"]\n\
    turn_urls = [\"turn:127.0.0.1:3478?transport=udp\", \"turns:turn.example.com:5349\"]\n";

#[tokio::test]
async fn each_side_gets_turn_credentials_in_coturns_rest_form() {
    // The operator's secret, as coturn's static-auth-secret (not hex), and
    // the servers, all from the environment as a deployment gives them.
    let secret = "coturn-static-auth-secret/42";
    let s = setup_with(
        "",
        vec![
            ("LOOP_SECRETS__TURN_SECRET".into(), secret.into()),
            (
                "LOOP_ICE__STUN_URLS".into(),
                r#"["stun:stun.example.com:3478"]"#.into(),
            ),
            (
                "LOOP_ICE__TURN_URLS".into(),
                r#"["turn:127.0.0.1:3478?transport=udp", "turns:turn.example.com:5349"]"#.into(),
            ),
        ],
    )
    .await;
    let call = place(&s.server, &s.bob).await;
    let caller = check_ice_servers(&call.caller.ice_servers, secret, call.placed);
    let callee = check_ice_servers(&call.callee.ice_servers, secret, call.placed);
    assert_eq!(
        caller, "alice",
        "the caller's identity is the call URL's callerId"
    );
    assert_ne!(callee, caller, "each side has its own");
    assert!(!s.server.dir.join("data/secrets/turn-secret").exists());
    assert!(!s.server.logs().contains(secret), "the secret was logged");

    // Without one given, a secret is generated; its file's text is the key.
    // The servers from the config file this time.
    let s = setup_with(ICE_TOML, Vec::new()).await;
    let generated = std::fs::read_to_string(s.server.dir.join("data/secrets/turn-secret")).unwrap();
    assert_eq!(generated.len(), 64);
    let call = place(&s.server, &s.bob).await;
    check_ice_servers(&call.caller.ice_servers, &generated, call.placed);
    check_ice_servers(&call.callee.ice_servers, &generated, call.placed);
}

#[tokio::test]
async fn without_ice_servers_configured_the_list_is_empty_and_no_secret_made() {
    let s = setup().await;
    let call = place(&s.server, &s.bob).await;
    assert_eq!(call.caller.ice_servers, json!([]));
    assert_eq!(call.callee.ice_servers, json!([]));
    assert!(!s.server.dir.join("data/secrets/turn-secret").exists());
}
