//! `POST/DELETE /registration`, `DELETE /account` and the SSRF guard on push
//! URLs, black-box against the real binary.

use crate::common;

use common::hawk::{Credentials, send};
use common::{ServerOptions, TestServer, client};
use serde_json::{Value, json};

async fn post_registration(server: &TestServer, body: &str) -> (u16, Option<String>, Value) {
    let response = client()
        .post(server.endpoint("/registration"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let token = response
        .headers()
        .get("hawk-session-token")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, token, body)
}

async fn assert_refused(server: &TestServer, body: Value, field: &str) {
    let (status, token, error) = post_registration(server, &body.to_string()).await;
    assert_eq!(status, 400, "{body}: {error}");
    assert_eq!(error["errno"], 107, "{body}: {error}");
    assert!(
        error["message"].as_str().unwrap().contains(field),
        "{body}: {error}"
    );
    assert!(token.is_none(), "a refused registration creates no session");
}

#[tokio::test]
async fn ssrf_guard_refuses_internal_and_non_http_push_urls() {
    // Default configuration: push.allowed_origins is empty.
    let server = TestServer::start().await;
    for url in [
        "http://127.0.0.1/",
        "https://127.0.0.1/",
        "https://10.0.0.1/",
        "https://192.168.1.20:8443/push",
        "https://100.64.0.1/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[fd00::1]/",
        "https://169.254.169.254/latest/meta-data/",
        "https://0.0.0.0/",
        "https://localhost/",
        "https://localhost:5000/push",
        "ftp://push.example.com/",
        "javascript:alert(1)",
        "not-a-url",
        "",
    ] {
        assert_refused(
            &server,
            json!({"simplePushURLs": {"calls": url}}),
            "simplePushURLs.calls",
        )
        .await;
        assert_refused(
            &server,
            json!({"simplePushURLs": {"rooms": url}}),
            "simplePushURLs.rooms",
        )
        .await;
        assert_refused(&server, json!({"simplePushURL": url}), "simplePushURL").await;
    }
    // One bad URL refuses the whole registration.
    assert_refused(
        &server,
        json!({"simplePushURLs": {"calls": "https://10.1.1.1/", "rooms": "https://127.0.0.1/"}}),
        "simplePushURLs",
    )
    .await;
}

#[tokio::test]
async fn listed_origins_are_allowed_even_on_loopback() {
    let extra_toml =
        "[push]\nallowed_origins = [\"http://127.0.0.1:7001\", \"http://localhost:7002\"]\n\n"
            .to_string();
    let server = TestServer::start_with(ServerOptions {
        extra_toml,
        ..ServerOptions::default()
    })
    .await;

    for body in [
        json!({"simplePushURLs": {"calls": "http://127.0.0.1:7001/calls", "rooms": "http://127.0.0.1:7001/rooms"}}),
        json!({"simplePushURL": "http://127.0.0.1:7001/legacy"}),
    ] {
        let (status, token, error) = post_registration(&server, &body.to_string()).await;
        assert_eq!(status, 200, "{body}: {error}");
        assert!(token.is_some_and(|t| t.len() == 64));
    }
    for url in [
        "http://127.0.0.1:7003/",
        "https://127.0.0.1:7001/",
        "http://127.0.0.2:7001/",
        "https://push.example.com/",
        // Listed, but a host name: it may not resolve to loopback without
        // push.allow_private (only IP literals are taken as written).
        "http://localhost:7002/",
    ] {
        assert_refused(
            &server,
            json!({"simplePushURLs": {"calls": url}}),
            "simplePushURLs.calls",
        )
        .await;
    }
}

#[tokio::test]
async fn registration_input_errors() {
    let extra_toml = "[push]\nallowed_origins = [\"http://127.0.0.1:7001\"]\n\n".to_string();
    let server = TestServer::start_with(ServerOptions {
        extra_toml,
        ..ServerOptions::default()
    })
    .await;

    for body in ["{}", "{\"simplePushURLs\": {}}", "{\"unknown\": 1}"] {
        let (status, token, error) = post_registration(&server, body).await;
        assert_eq!(
            (status, error["errno"].as_u64()),
            (400, Some(108)),
            "{body}: {error}"
        );
        assert!(
            error["message"].as_str().unwrap().contains("simplePushURL"),
            "{error}"
        );
        assert!(token.is_none());
    }
    let (status, _, error) = post_registration(&server, "{not json").await;
    assert_eq!(
        (status, error["errno"].as_u64()),
        (400, Some(106)),
        "{error}"
    );
    for body in [
        "{\"simplePushURL\": 5}",
        "{\"simplePushURLs\": \"x\"}",
        "{\"simplePushURLs\": {\"calls\": []}}",
    ] {
        let (status, _, error) = post_registration(&server, body).await;
        assert_eq!(
            (status, error["errno"].as_u64()),
            (400, Some(107)),
            "{body}: {error}"
        );
        assert!(
            error["message"].as_str().unwrap().contains("simplePushURL"),
            "{body}: {error}"
        );
    }
    let both = json!({"simplePushURL": "http://127.0.0.1:7001/a", "simplePushURLs": {"calls": "http://127.0.0.1:7001/b"}});
    assert_refused(&server, both, "simplePushURL").await;

    let huge = json!({"simplePushURL": format!("http://127.0.0.1:7001/{}", "a".repeat(20_000))});
    let (status, _, error) = post_registration(&server, &huge.to_string()).await;
    assert_eq!(
        (status, error["errno"].as_u64()),
        (413, Some(113)),
        "{error}"
    );

    // Unauthenticated DELETEs.
    for path in ["/registration", "/account", "/v0/account"] {
        let response = client().delete(server.endpoint(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Hawk");
        assert_eq!(response.json::<Value>().await.unwrap()["errno"], 110);
    }
}

#[tokio::test]
async fn delete_account_removes_only_that_user() {
    let extra_toml = "[push]\nallowed_origins = [\"http://127.0.0.1:7001\"]\n\n".to_string();
    let server = TestServer::start_with(ServerOptions {
        extra_toml,
        ..ServerOptions::default()
    })
    .await;
    let http = client();
    let body = json!({"simplePushURL": "http://127.0.0.1:7001/x"}).to_string();
    let (_, alice, _) = post_registration(&server, &body).await;
    let (_, bob, _) = post_registration(&server, &body).await;
    let (alice, bob) = (
        Credentials::from_token(&alice.unwrap()),
        Credentials::from_token(&bob.unwrap()),
    );

    let response = send(
        &http,
        &alice,
        "DELETE",
        &server.endpoint("/v0/account"),
        None,
    )
    .await;
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    send(
        &http,
        &alice,
        "DELETE",
        &server.endpoint("/registration"),
        None,
    )
    .await
    .assert_unauthorized();
    let response = send(
        &http,
        &bob,
        "DELETE",
        &server.endpoint("/registration"),
        None,
    )
    .await;
    assert_eq!(response.status, 204, "another user's session is untouched");
}
