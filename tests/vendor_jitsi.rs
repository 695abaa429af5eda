//! The `jitsi` provider plugin: tokens for a self-hosted Jitsi Meet (HS256,
//! prosody token authentication) and for Jitsi as a Service (RS256 with the
//! JaaS key, signed by the host), issued through the real call flow and
//! checked with pyjwt (`tests/vendor_sdks/jitsi.py`); both modes at once, or
//! neither, are refused as misconfigured.

use crate::common;
use crate::common::vendor;
use crate::common::vendor::call_owner;

use common::vendor::{call_flow, run_sdk};
use common::{TestServer, client, workspace_root};
use serde_json::{Value, json};

pub(crate) const SELF_HOSTED_URL: &str = "https://meet.example.com";
pub(crate) const SELF_HOSTED_APP_ID: &str = "loop-test-app";
pub(crate) const APP_SECRET: &str = "jitsi-test-app-secret-0b9e2d7c4a1f";

const JAAS_APP_ID: &str = "vpaas-magic-cookie-1fc542a3e4414a44b2611668195e2bfe";
const JAAS_URL: &str = "https://8x8.vc/vpaas-magic-cookie-1fc542a3e4414a44b2611668195e2bfe";
const LIFETIME: u64 = 86400;

fn jaas_kid() -> String {
    format!("{JAAS_APP_ID}/4f4910")
}

fn private_key() -> String {
    std::fs::read_to_string(workspace_root().join("tests/fixtures/test-rsa-2048.pem")).unwrap()
}

/// A server whose `config.toml` picks `jitsi` for every call; `extra` follows
/// the plugin's settings table (nested tables, say).
async fn server(settings: &str, extra: &str) -> TestServer {
    vendor::start("jitsi", &[], settings, extra, &[]).await
}

fn jaas_settings() -> String {
    format!(
        "base_url = {JAAS_URL:?}\napp_id = {JAAS_APP_ID:?}\nkid = {:?}\nprivate_key = {:?}\n",
        jaas_kid(),
        private_key()
    )
}

/// Both sides of one call through `server`; checks what both sides share and
/// returns the call with the room name and the callee's identity.
pub(crate) async fn call(
    server: &TestServer,
    base_url: &str,
) -> (common::vendor::VendorCall, String, String) {
    let call = call_flow(server, None).await;
    let room = call.caller["sessionId"].as_str().unwrap().to_owned();
    assert!(
        room.len() == 37
            && room.starts_with("loop-")
            && room[5..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "the session id is a generated room name: {room}"
    );
    for side in [&call.caller, &call.callee] {
        assert_eq!(side["sessionId"], room.as_str());
        assert_eq!(side["apiKey"], base_url, "apiKey is the meeting base URL");
    }
    let owner = call_owner(server, call.caller["callId"].as_str().unwrap()).await;
    (call, room, owner)
}

pub(crate) fn tokens(call: &common::vendor::VendorCall, room: &str, owner: &str) -> Value {
    json!([
        {"token": call.caller["sessionToken"], "identity": "alice", "name": "alice",
         "moderator": false, "room": room, "lifetime": LIFETIME},
        {"token": call.callee["sessionToken"], "identity": owner, "name": "Bob",
         "moderator": true, "room": room, "lifetime": LIFETIME},
    ])
}

#[tokio::test]
async fn jitsi_self_hosted_tokens_for_both_sides() {
    let server = server(
        &format!(
            "base_url = {SELF_HOSTED_URL:?}\napp_id = {SELF_HOSTED_APP_ID:?}\n\
             app_secret = {APP_SECRET:?}\n"
        ),
        "",
    )
    .await;
    let (call, room, owner) = call(&server, SELF_HOSTED_URL).await;
    let checked = run_sdk(
        "jitsi.py",
        &json!({
            "mode": "hs256",
            "app_id": SELF_HOSTED_APP_ID,
            // `domain` is not set: the host of base_url.
            "domain": "meet.example.com",
            "app_secret": APP_SECRET,
            "tokens": tokens(&call, &room, &owner),
        }),
    )
    .await;
    assert_eq!(checked["claims"][0]["context"]["user"]["moderator"], false);
    assert_eq!(checked["claims"][1]["context"]["user"]["moderator"], true);
    assert!(
        !server.logs().contains(APP_SECRET),
        "the secret is not logged"
    );
}

#[tokio::test]
async fn jitsi_self_hosted_domain_setting_is_the_subject() {
    let server = server(
        &format!(
            "base_url = \"https://meet.example.com:8443/\"\napp_id = {SELF_HOSTED_APP_ID:?}\n\
             app_secret = {APP_SECRET:?}\ndomain = \"xmpp.example.com\"\n"
        ),
        "",
    )
    .await;
    // The trailing slash is not part of the base URL clients get.
    let (call, room, owner) = call(&server, "https://meet.example.com:8443").await;
    run_sdk(
        "jitsi.py",
        &json!({
            "mode": "hs256",
            "app_id": SELF_HOSTED_APP_ID,
            "domain": "xmpp.example.com",
            "app_secret": APP_SECRET,
            "tokens": tokens(&call, &room, &owner),
        }),
    )
    .await;
}

#[tokio::test]
async fn jitsi_jaas_tokens_for_both_sides() {
    // Features come from a nested settings table (dotted keys in the plugin).
    let server = server(
        &jaas_settings(),
        "[plugins.jitsi.settings.features]\nrecording = true\ntranscription = false\n",
    )
    .await;
    let (call, room, owner) = call(&server, JAAS_URL).await;
    let checked = run_sdk(
        "jitsi.py",
        &json!({
            "mode": "jaas",
            "app_id": JAAS_APP_ID,
            "domain": "8x8.vc",
            "kid": jaas_kid(),
            "public_key_pem": workspace_root().join("tests/fixtures/test-rsa-2048.pub.pem"),
            "features": {"recording": true},
            "tokens": tokens(&call, &room, &owner),
        }),
    )
    .await;
    assert_eq!(
        checked["claims"][0]["context"]["user"]["moderator"],
        "false"
    );
    assert_eq!(checked["claims"][1]["context"]["user"]["moderator"], "true");
    assert!(
        !server.logs().contains("PRIVATE KEY"),
        "the private key is not logged"
    );
}

/// `POST /calls/{token}` on a misconfigured server: 503 / errno 201 for the
/// caller, and `needle` (the plugin's explanation) in the server's log.
async fn refused(server: &TestServer, needle: &str) {
    let device = common::hawk::Device::register_with(&server.url, json!({})).await;
    let created = device
        .create_call_url(&json!({"callerId": "alice", "issuer": "Bob"}))
        .await;
    let token = created["callToken"].as_str().unwrap();
    let response = client()
        .post(server.endpoint(&format!("/calls/{token}")))
        .json(&json!({"callType": "audio-video"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errno"], 201, "{body}");
    let logs = server.wait_for_log(needle).await;
    assert!(logs.contains("misconfigured"), "{logs}");
}

#[tokio::test]
async fn jitsi_needs_exactly_one_signing_mode() {
    let both = server(
        &format!("{}app_secret = {APP_SECRET:?}\n", jaas_settings()),
        "",
    )
    .await;
    refused(
        &both,
        "set either `app_secret` (self-hosted Jitsi Meet) or `kid`",
    )
    .await;

    let neither = server(
        &format!("base_url = {SELF_HOSTED_URL:?}\napp_id = {SELF_HOSTED_APP_ID:?}\n"),
        "",
    )
    .await;
    refused(
        &neither,
        "set `app_secret` (self-hosted Jitsi Meet) or `kid` and",
    )
    .await;

    let kid_only = server(
        &format!(
            "base_url = {JAAS_URL:?}\napp_id = {JAAS_APP_ID:?}\nkid = {:?}\n",
            jaas_kid()
        ),
        "",
    )
    .await;
    refused(&kid_only, "setting `private_key` is not set").await;

    // A kid of another AppID is caught before any client sees a token.
    let wrong_kid = server(
        &format!(
            "base_url = {JAAS_URL:?}\napp_id = {JAAS_APP_ID:?}\nkid = \"vpaas-magic-cookie-other/4f4910\"\n\
             private_key = {:?}\n",
            private_key()
        ),
        "",
    )
    .await;
    refused(&wrong_kid, "setting `kid` must be the full JaaS key id").await;

    // A key the host cannot sign with is named, never shown.
    let bad_key = server(
        &format!(
            "base_url = {JAAS_URL:?}\napp_id = {JAAS_APP_ID:?}\nkid = {:?}\n\
             private_key = \"-----BEGIN PRIVATE KEY-----\\nnot a key\\n-----END PRIVATE KEY-----\\n\"\n",
            jaas_kid()
        ),
        "",
    )
    .await;
    refused(&bad_key, "setting `private_key`: ").await;
}
