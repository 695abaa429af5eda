//! Rate limits, black-box: the real server with small budgets, each refused
//! request a 429 with `Retry-After` and Loop's error body.

use crate::common;

use std::time::Duration;

use common::hawk::{Credentials, Device, send};
use common::{ServerOptions, TestServer, client, place_call};
use serde_json::{Value, json};

/// A server whose `[rate_limits]` is the defaults with `budgets` (TOML lines)
/// on top.
async fn start(budgets: &str) -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: format!("[rate_limits]\n{budgets}\n"),
        ..ServerOptions::default()
    })
    .await
}

/// An anonymous `POST /registration` (a new session, no push URL), with
/// extra headers: its status, `Retry-After` and body.
async fn register(server: &TestServer, headers: &[(&str, &str)]) -> (u16, Option<u64>, Value) {
    let mut request = client()
        .post(server.endpoint("/registration"))
        .json(&json!({}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.send().await.unwrap()).await
}

async fn answer(response: reqwest::Response) -> (u16, Option<u64>, Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().parse().expect("whole seconds"));
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Asserts a rate-limit refusal naming `budget`; returns its `Retry-After`.
fn assert_limited(answer: &(u16, Option<u64>, Value), budget: &str) -> u64 {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["code"], 429, "{body}");
    assert_eq!(body["errno"], 999, "{body}");
    assert_eq!(body["error"], "Too Many Requests", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("rate_limits.{budget}")),
        "{message}"
    );
    let retry_after = retry_after.expect("Retry-After on a 429");
    assert!(retry_after >= 1, "{retry_after}");
    retry_after
}

#[tokio::test]
async fn registrations_past_the_budget_of_an_address_are_429_and_a_forged_header_does_not_help() {
    let server = start("registration_per_ip = { per_minute = 1, burst = 2 }").await;
    for _ in 0..2 {
        assert_eq!(register(&server, &[]).await.0, 200);
    }
    let refused = register(&server, &[]).await;
    let retry_after = assert_limited(&refused, "registration_per_ip");
    // One token a minute: the wait is most of a minute, in whole seconds.
    assert!((2..=60).contains(&retry_after), "{retry_after}");

    // No trusted proxy configured: the header is the client's to forge, and
    // is ignored.
    for forged in ["203.0.113.9", "198.51.100.1, 203.0.113.10"] {
        let refused = register(&server, &[("X-Forwarded-For", forged)]).await;
        assert_limited(&refused, "registration_per_ip");
    }
    // Other routes are not charged to this budget.
    let (status, _) = server.heartbeat().await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_right_most_forwarded_address_is_the_client() {
    let server = start(
        "client_ip_header = \"X-Forwarded-For\"\n\
         registration_per_ip = { per_minute = 1, burst = 1 }",
    )
    .await;
    let xff = |value: &'static str| [("X-Forwarded-For", value)];
    // The proxy appended 203.0.113.7; what the client wrote before it is not
    // the key.
    assert_eq!(
        register(&server, &xff("10.1.1.1, 203.0.113.7")).await.0,
        200
    );
    assert_limited(
        &register(&server, &xff("10.9.9.9, 203.0.113.7")).await,
        "registration_per_ip",
    );
    // Headers repeated: the last one's right-most entry.
    let mut request = client()
        .post(server.endpoint("/registration"))
        .json(&json!({}));
    request = request
        .header("X-Forwarded-For", "198.51.100.1")
        .header("X-Forwarded-For", "203.0.113.7");
    assert_limited(
        &answer(request.send().await.unwrap()).await,
        "registration_per_ip",
    );
    // Another client behind the proxy has a budget of its own.
    assert_eq!(register(&server, &xff("203.0.113.8")).await.0, 200);
    // IPv6 clients count per /64: another address of the same /64 shares
    // the budget, another /64 does not.
    assert_eq!(register(&server, &xff("2001:db8:0:1::1")).await.0, 200);
    assert_limited(
        &register(&server, &xff("2001:db8:0:1:ffff::2")).await,
        "registration_per_ip",
    );
    assert_eq!(
        register(&server, &xff("[2001:db8:0:2::1]:4711")).await.0,
        200
    );
    // No header, or a malformed entry: the TCP peer (127.0.0.1) is the key.
    assert_eq!(register(&server, &[]).await.0, 200);
    assert_limited(
        &register(&server, &xff("203.0.113.9, not-an-address")).await,
        "registration_per_ip",
    );
}

#[tokio::test]
async fn a_call_url_rings_its_owner_only_so_often_while_others_still_work() {
    let server = start("calls_per_call_url = { per_minute = 1, burst = 2 }").await;
    let bob = Device::register_with(&server.url, json!({})).await;
    let mut urls = Vec::new();
    for _ in 0..2 {
        let token = bob.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
            .as_str()
            .unwrap()
            .to_string();
        urls.push(server.endpoint(&format!("/calls/{token}")));
    }
    let body = json!({"callType": "audio"});
    let http = client();
    for _ in 0..2 {
        place_call(&http, &urls[0], &body).await;
    }
    let refused = answer(http.post(&urls[0]).json(&body).send().await.unwrap()).await;
    assert_limited(&refused, "calls_per_call_url");
    // The v0 path is the same call URL.
    let v0 = urls[0].replace("/calls/", "/v0/calls/");
    let refused = answer(http.post(&v0).json(&body).send().await.unwrap()).await;
    assert_limited(&refused, "calls_per_call_url");
    // Looking the call URL up is not calling through it.
    assert_eq!(http.get(&urls[0]).send().await.unwrap().status(), 200);
    // Bob's other link still rings him.
    place_call(&http, &urls[1], &body).await;
}

#[tokio::test]
async fn call_url_creation_is_limited_per_session() {
    let server = start("call_urls_per_session = { per_minute = 1, burst = 2 }").await;
    let bob = Device::register_with(&server.url, json!({})).await;
    let carol = Device::register_with(&server.url, json!({})).await;
    for _ in 0..2 {
        bob.create_call_url(&json!({"callerId": "alice"})).await;
    }
    let refused = bob
        .send_verified("POST", "/call-url", Some(&json!({"callerId": "alice"})))
        .await;
    let answer = (
        refused.status,
        refused.header("retry-after").map(|v| v.parse().unwrap()),
        refused.json(),
    );
    assert_limited(&answer, "call_urls_per_session");
    // Another session, from the same address, is not held back.
    carol.create_call_url(&json!({"callerId": "alice"})).await;
    // Bob's other requests go on.
    assert_eq!(bob.get("/call-url").await.status(), 200);
}

#[tokio::test]
async fn failed_authentications_block_an_address_until_its_bucket_refills() {
    // A token every 3 s, three at most.
    let server = start("failed_auth_per_ip = { per_minute = 20, burst = 3 }").await;
    let bob = Device::register_with(&server.url, json!({})).await;
    let forged = Credentials {
        id: bob.credentials.id.clone(),
        key: "0".repeat(64),
    };
    let http = client();
    let url = server.endpoint("/call-url");
    for _ in 0..3 {
        send(&http, &forged, "GET", &url, None)
            .await
            .assert_unauthorized();
    }
    let refused = send(&http, &forged, "GET", &url, None).await;
    let answer = (
        refused.status,
        refused.header("retry-after").map(|v| v.parse().unwrap()),
        refused.json(),
    );
    let retry_after = assert_limited(&answer, "failed_auth_per_ip");

    // Blocked before the check: even Bob's genuine request from this address.
    let blocked = bob.send_verified("GET", "/call-url", None).await;
    assert_eq!(
        blocked.status,
        429,
        "{}",
        String::from_utf8_lossy(&blocked.body)
    );
    // Requests without credentials are not authentication attempts.
    assert_eq!(register(&server, &[]).await.0, 200);

    // Once Retry-After has passed, the address may try again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    bob.send_verified("GET", "/call-url", None)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn limits_can_be_turned_off() {
    let server = start(
        "enabled = false\n\
         registration_per_ip = { per_minute = 1, burst = 1 }",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(register(&server, &[]).await.0, 200);
    }
}
