//! What the API acknowledged survives `kill -9` and a restart.

use crate::common;

use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer, client, place_call};
use serde_json::{Value, json};

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let push = FakePush::start().await;
    let mut server = TestServer::start_with(ServerOptions {
        extra_toml: format!("{}[calls]\nduration_seconds = 3600\n\n", push.config(2000)),
        ..Default::default()
    })
    .await;
    let http = client();

    let bob = Device::register(&server.url, &push.url("bob")).await;
    let created = bob
        .create_call_url(&json!({"callerId": "alice", "issuer": "Bob", "subject": "Lunch"}))
        .await;
    let token = created["callToken"].as_str().unwrap().to_string();
    let updated = bob
        .put(&format!("/call-url/{token}"), &json!({"issuer": "Robert"}))
        .await;
    assert_eq!(updated.status(), 200);
    let revoked = bob.create_call_url(&json!({"callerId": "eve"})).await;
    let revoked_token = revoked["callToken"].as_str().unwrap().to_string();
    assert_eq!(
        bob.delete(&format!("/call-url/{revoked_token}"))
            .await
            .status(),
        204
    );
    let placed = place_call(
        &http,
        &server.endpoint(&format!("/calls/{token}")),
        &json!({"callType": "audio"}),
    )
    .await;

    // Pings leave after the answer; this one is not what is tested here.
    push.wait_for("bob", 1).await;
    // No graceful shutdown: SIGKILL right after the last acknowledgement.
    server.kill();
    server.restart();

    // The session, the call URL (with its update), the revocation and the call
    // are all there; the device's Hawk credentials still work.
    let bob = bob.on(&server.url);
    let listed: Value = bob.get("/call-url").await.json().await.unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["callToken"], token);
    assert_eq!(listed[0]["issuer"], "Robert");
    assert_eq!(listed[0]["subject"], "Lunch");
    let response = http
        .get(server.endpoint(&format!("/calls/{revoked_token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let calls: Value = bob.get("/calls?version=0").await.json().await.unwrap();
    assert_eq!(calls["calls"][0]["callId"], placed["callId"]);
    assert_eq!(calls["calls"][0]["sessionId"], placed["sessionId"]);

    // The push registration survived too: a new call pings Bob again.
    place_call(
        &http,
        &server.endpoint(&format!("/calls/{token}")),
        &json!({"callType": "audio-video"}),
    )
    .await;
    push.wait_for("bob", 2).await;
}
