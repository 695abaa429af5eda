//! Two `loop-server` processes on one PostgreSQL database act as one service:
//! a session, call URL or call made through one is seen through the other.

use crate::common;

use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer, client, fresh_postgres_database, place_call};
use serde_json::{Value, json};

#[tokio::test]
async fn two_servers_on_one_postgres_database_are_one_service() {
    let push = FakePush::start().await;
    let (_database, a, b) = two_servers(&push).await;
    assert_ne!(a.url, b.url);
    let http = client();

    // Bob registers on A and creates a call URL on A.
    let bob_on_a = Device::register(&a.url, &push.url("bob")).await;
    let created = bob_on_a
        .create_call_url(&json!({"callerId": "alice", "issuer": "Bob"}))
        .await;
    let token = created["callToken"].as_str().unwrap();

    // Alice opens it and calls through B.
    let info: Value = http
        .get(b.endpoint(&format!("/calls/{token}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["calleeFriendlyName"], "Bob");
    let placed = place_call(
        &http,
        &b.endpoint(&format!("/v0/calls/{token}")),
        &json!({"callType": "audio-video"}),
    )
    .await;

    // B pinged the push URL Bob registered on A.
    let pings = push.wait_for("bob", 1).await;
    let version = pings[0].body.strip_prefix("version=").unwrap().to_string();

    // Bob lists the call on A.
    let calls: Value = bob_on_a
        .get(&format!("/calls?version={version}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(calls["calls"].as_array().unwrap().len(), 1, "{calls}");
    assert_eq!(calls["calls"][0]["callId"], placed["callId"]);
    assert_eq!(calls["calls"][0]["sessionId"], placed["sessionId"]);
    assert_eq!(calls["calls"][0]["apiKey"], placed["apiKey"]);

    // His session works on B too, and a revocation on B is seen on A.
    let bob_on_b = bob_on_a.on(&b.url);
    let listed: Value = bob_on_b.get("/call-url").await.json().await.unwrap();
    assert_eq!(listed[0]["callToken"], token);
    assert_eq!(
        bob_on_b
            .delete(&format!("/call-url/{token}"))
            .await
            .status(),
        204
    );
    let response = http
        .get(a.endpoint(&format!("/calls/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// Each instance serves call URLs from memory, yet a change made through one
/// is seen through the other within a second (and at once through the one
/// that made it): a revoked call URL, an updated one, and a deleted
/// account's call URLs and sessions.
#[tokio::test]
async fn what_one_instance_changes_the_other_sees_within_a_second() {
    let push = FakePush::start().await;
    let (_database, a, b) = two_servers(&push).await;
    let http = client();
    let bob_on_a = Device::register(&a.url, &push.url("bob")).await;
    let bob_on_b = bob_on_a.on(&b.url);
    let mut tokens = Vec::new();
    for issuer in ["Bob", "Robert"] {
        let created = bob_on_a
            .create_call_url(&json!({"callerId": "alice", "issuer": issuer}))
            .await;
        tokens.push(created["callToken"].as_str().unwrap().to_string());
    }
    let [revoked, updated] = [&tokens[0], &tokens[1]];
    let info = async |server: &TestServer, token: &str| {
        let response = http
            .get(server.endpoint(&format!("/calls/{token}")))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body)
    };
    // Both instances hold both call URLs, and Bob's session, in memory now.
    for server in [&a, &b] {
        for token in &tokens {
            assert_eq!(info(server, token).await.0, 200);
        }
    }
    assert_eq!(bob_on_a.get("/call-url").await.status(), 200);
    assert_eq!(bob_on_b.get("/call-url").await.status(), 200);
    // Revoked on B: refused by B at once, by A within a second.
    assert_eq!(
        bob_on_b
            .delete(&format!("/call-url/{revoked}"))
            .await
            .status(),
        204
    );
    assert_eq!(info(&b, revoked).await.0, 404);
    within_a_second("the revocation, on A", async || {
        info(&a, revoked).await.0 == 404
    })
    .await;

    // Updated on A: A answers the new name at once, B within a second.
    assert_eq!(
        bob_on_a
            .put(&format!("/call-url/{updated}"), &json!({"issuer": "Bobby"}))
            .await
            .status(),
        200
    );
    assert_eq!(info(&a, updated).await.1["calleeFriendlyName"], "Bobby");
    within_a_second("the update, on B", async || {
        info(&b, updated).await.1["calleeFriendlyName"] == "Bobby"
    })
    .await;

    // The account deleted on B: its call URL and session stop working on A.
    assert_eq!(bob_on_b.delete("/account").await.status(), 204);
    assert_eq!(info(&b, updated).await.0, 404);
    within_a_second("the deleted account's call URL, on A", async || {
        info(&a, updated).await.0 == 404
    })
    .await;
    assert_eq!(bob_on_a.get("/call-url").await.status(), 401);
}

/// Two servers on a fresh PostgreSQL database whatever LOOP_TEST_DATABASE
/// says (sharing is the point), pinging `push`. The database comes first so
/// that the caller drops it after the servers.
async fn two_servers(push: &FakePush) -> (common::PostgresDatabase, TestServer, TestServer) {
    let database = fresh_postgres_database().await;
    let a = TestServer::start_with(ServerOptions {
        extra_toml: push.config(2000),
        database_url: Some(database.url.clone()),
        ..Default::default()
    })
    .await;
    let b = a.start_sibling();
    (database, a, b)
}

/// Polls `seen` until it is true; fails if that takes a second or more.
async fn within_a_second(what: &str, mut seen: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !seen().await {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{what}: still not seen after a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
