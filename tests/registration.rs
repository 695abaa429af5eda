//! `POST/DELETE /registration`, `DELETE /account` and the SSRF guard on push
//! URLs, black-box against the real binary.

use crate::common;

use common::fake_push::FakePush;
use common::hawk::{Credentials, Device, send};
use common::{ServerOptions, TestServer, call_through_new_url, client};
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

/// Every way Mozilla's server takes a registration: `simplePushURLs`,
/// `simplePushURL` in the body or the query string, the old
/// `simple_push_url` (Mozilla's load-test client), and no push URL at all (a
/// browser without push). Each makes a session, and the URL given is the one
/// pinged when the device is called.
#[tokio::test]
async fn every_registration_shape_of_mozillas_server_is_accepted() {
    let push = FakePush::start().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: push.config(2000),
        ..ServerOptions::default()
    })
    .await;
    let http = client();
    let shapes: Vec<(&str, Option<Value>, Option<String>)> = vec![
        (
            "topics",
            Some(json!({"simplePushURLs": {"calls": push.url("topics")}})),
            None,
        ),
        (
            "body",
            Some(json!({"simplePushURL": push.url("body")})),
            None,
        ),
        (
            "old",
            Some(json!({"simple_push_url": push.url("old")})),
            None,
        ),
        ("query", None, Some(push.url("query"))),
        (
            "query-and-body",
            Some(json!({})),
            Some(push.url("query-and-body")),
        ),
        (
            "agreeing",
            Some(
                json!({"simplePushURL": push.url("agreeing"), "simplePushURLs": {"calls": push.url("agreeing")}}),
            ),
            None,
        ),
    ];
    for (device, body, query) in shapes {
        let mut request = http.post(server.endpoint("/registration"));
        if let Some(url) = &query {
            request = request.query(&[("simplePushURL", url)]);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{device}");
        let token = response.headers()["hawk-session-token"]
            .to_str()
            .unwrap()
            .to_string();
        call_through_new_url(&server, &Device::from_token(&server.url, &token)).await;
        push.wait_for(device, 1).await;
    }

    // No push URL at all, with an empty object or no body: a session all the same.
    for body in [
        Some("{}"),
        Some("{\"simplePushURLs\": {}}"),
        Some("{\"unknown\": 1}"),
        None,
    ] {
        let mut request = http.post(server.endpoint("/registration"));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{body:?}");
        let token = response.headers()["hawk-session-token"].to_str().unwrap();
        // The session works: it can make call URLs (and is pinged for none).
        let device = Device::from_token(&server.url, token);
        device.create_call_url(&json!({"callerId": "alice"})).await;
    }
    // A registered device re-registering with nothing keeps its push URL.
    let carol = Device::register(&server.url, &push.url("carol")).await;
    assert_eq!(carol.post("/registration", &json!({})).await.status(), 200);
    call_through_new_url(&server, &carol).await;
    push.wait_for("carol", 1).await;

    // The SSRF guard holds for every shape.
    for (body, query, field) in [
        (
            Some(json!({"simple_push_url": "https://10.0.0.1/"})),
            None,
            "simple_push_url",
        ),
        (
            None,
            Some("https://169.254.169.254/"),
            "simplePushURL (query)",
        ),
    ] {
        let mut request = http.post(server.endpoint("/registration"));
        if let Some(url) = query {
            request = request.query(&[("simplePushURL", url)]);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{field}");
        assert!(response.headers().get("hawk-session-token").is_none());
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["errno"], 107, "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
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
    // Two fields naming different calls URLs: which one was meant?
    let both = json!({"simplePushURL": "http://127.0.0.1:7001/a", "simplePushURLs": {"calls": "http://127.0.0.1:7001/b"}});
    assert_refused(&server, both, "simplePushURLs.calls").await;
    let both = json!({"simple_push_url": "http://127.0.0.1:7001/a", "simplePushURL": "http://127.0.0.1:7001/b"});
    assert_refused(&server, both, "simple_push_url").await;
    // A body that is not JSON, sent without saying so.
    let response = client()
        .post(server.endpoint("/registration"))
        .body("simplePushURL=http://127.0.0.1:7001/a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 406);
    assert_eq!(response.json::<Value>().await.unwrap()["errno"], 106);

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
