//! Every error path of the API: status, errno, the field named, the JSON shape,
//! and the `Timestamp` header on every one of them.

use crate::common;

use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer, client, workspace_root};
use reqwest::Response;
use serde_json::{Value, json};
use sqlx::Connection;

/// Checks Loop's error shape and returns the body.
async fn assert_error(response: Response, status: u16, errno: u16) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    assert!(
        response.headers().contains_key("timestamp"),
        "Timestamp header on errors"
    );
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], status, "{body}");
    assert_eq!(body["errno"], errno, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap()
}

struct Setup {
    server: TestServer,
    _push: FakePush,
    bob: Device,
    token: String,
}

/// A server (purge off, so expired rows stay for 410s) and Bob with one call URL.
async fn setup(extra_toml: &str) -> Setup {
    let push = FakePush::start().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!("{}{extra_toml}", push.config(2000)),
        env: vec![(
            "LOOP_DATABASE__PURGE_INTERVAL_SECONDS".into(),
            "86400".into(),
        )],
        ..Default::default()
    })
    .await;
    let bob = Device::register(&server.url, &push.url("bob")).await;
    let created = bob
        .create_call_url(&json!({"callerId": "alice", "issuer": "Bob"}))
        .await;
    let token = created["callToken"].as_str().unwrap().to_string();
    Setup {
        server,
        _push: push,
        bob,
        token,
    }
}

/// Moves a call URL's expiry into the past, straight in the database: the API
/// rightly refuses TTLs under an hour. Behind the server's back, as another
/// instance would: the server may serve its copy for `CACHE_FRESH_FOR`, so
/// this returns once that has passed.
pub(crate) async fn expire_call_url(database_url: &str, token: &str) {
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 10;
    let affected = if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query("UPDATE call_urls SET expires_at = $1 WHERE token = $2")
            .bind(past)
            .bind(token)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query("UPDATE call_urls SET expires_at = ?1 WHERE token = ?2")
            .bind(past)
            .bind(token)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected()
    };
    assert_eq!(affected, 1);
    tokio::time::sleep(loop_server::store::CACHE_FRESH_FOR).await;
}

/// POSTs `size` bytes of JSON whitespace with `Transfer-Encoding: chunked`
/// (no Content-Length); returns the status and the body.
async fn chunked_post(base: &str, path: &str, size: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 1024];
    for _ in 0..size / 1024 {
        // The server may answer and close before reading everything.
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    // The body may itself be chunked: keep the JSON object only.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) => body[start..=end].to_string(),
        _ => body,
    };
    (status, body)
}

#[tokio::test]
async fn bodies_that_are_too_large_malformed_or_not_json() {
    let s = setup("").await;
    let http = client();
    let call = s.server.endpoint(&format!("/calls/{}", s.token));

    // 413/113 with a Content-Length...
    let big = json!({"callType": "audio", "pad": "x".repeat(20 * 1024)});
    let response = http.post(&call).json(&big).send().await.unwrap();
    assert_error(response, 413, 113).await;
    // ...and streamed without one (chunked), written by hand on a raw socket.
    let (status, body) =
        chunked_post(&s.server.url, &format!("/calls/{}", s.token), 40 * 1024).await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errno"], 113);
    // Also on an authenticated route, where the Hawk layer sees the body first.
    let response = s
        .bob
        .post("/call-url", &json!({"callerId": "x".repeat(20 * 1024)}))
        .await;
    assert_error(response, 413, 113).await;

    // 400/106: malformed JSON.
    let response = http
        .post(&call)
        .header("content-type", "application/json")
        .body("{\"callType\": ")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, 106).await;

    // 406/106: not JSON at all.
    let response = http
        .post(&call)
        .header("content-type", "text/plain")
        .body("callType=audio")
        .send()
        .await
        .unwrap();
    assert_error(response, 406, 106).await;
    let response = http.post(&call).send().await.unwrap();
    assert_error(response, 406, 106).await;
}

#[tokio::test]
async fn invalid_and_missing_parameters_name_the_field() {
    let s = setup("").await;
    let http = client();
    let call = s.server.endpoint(&format!("/calls/{}", s.token));

    // POST /calls/{token}
    for (body, field) in [
        (json!({"callType": 5}), "callType"),
        (json!({"callType": "video"}), "callType"),
        (
            json!({"callType": "audio", "subject": "s".repeat(125)}),
            "subject",
        ),
        (json!({"callType": "audio", "channel": ["a"]}), "channel"),
        (json!(["audio"]), "body"),
    ] {
        let response = http.post(&call).json(&body).send().await.unwrap();
        let error = assert_error(response, 400, 107).await;
        assert!(message(&error).contains(field), "{field} named in {error}");
    }
    let response = http
        .post(&call)
        .json(&json!({"subject": "hi", "unknown": true}))
        .send()
        .await
        .unwrap();
    let error = assert_error(response, 400, 108).await;
    assert!(message(&error).contains("callType"), "{error}");
    // Unknown fields are ignored.
    let response = http
        .post(&call)
        .json(&json!({"callType": "audio", "unknown": {"x": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // POST /call-url
    for (body, field) in [
        (json!({"callerId": 7}), "callerId"),
        (json!({"callerId": "c".repeat(256)}), "callerId"),
        (json!({"callerId": ""}), "callerId"),
        (
            json!({"callerId": "a", "issuer": "i".repeat(256)}),
            "issuer",
        ),
        (
            json!({"callerId": "a", "subject": "s".repeat(125)}),
            "subject",
        ),
        (json!({"callerId": "a", "expiresIn": 0}), "expiresIn"),
        (json!({"callerId": "a", "expiresIn": 721}), "expiresIn"),
        (json!({"callerId": "a", "expiresIn": "soon"}), "expiresIn"),
        (json!({"callerId": "a", "expiresIn": -3}), "expiresIn"),
    ] {
        let response = s.bob.post("/call-url", &body).await;
        let error = assert_error(response, 400, 107).await;
        assert!(message(&error).contains(field), "{field} named in {error}");
    }
    let response = s.bob.post("/call-url", &json!({"issuer": "Bob"})).await;
    let error = assert_error(response, 400, 108).await;
    assert!(message(&error).contains("callerId"), "{error}");
    // The longest accepted values pass.
    let response = s
        .bob
        .post(
            "/call-url",
            &json!({"callerId": "c".repeat(255), "subject": "é".repeat(124), "expiresIn": 720}),
        )
        .await;
    assert_eq!(response.status(), 200);

    // PUT /call-url/{token}
    let response = s
        .bob
        .put(
            &format!("/call-url/{}", s.token),
            &json!({"expiresIn": 9999}),
        )
        .await;
    let error = assert_error(response, 400, 107).await;
    assert!(message(&error).contains("expiresIn"), "{error}");

    // GET /calls?version=
    let response = s.bob.get("/calls").await;
    let error = assert_error(response, 400, 108).await;
    assert!(message(&error).contains("version"), "{error}");
    let response = s.bob.get("/calls?version=yesterday").await;
    let error = assert_error(response, 400, 107).await;
    assert!(message(&error).contains("version"), "{error}");
}

#[tokio::test]
async fn unknown_revoked_expired_and_foreign_call_urls() {
    let s = setup("").await;
    let http = client();

    // 404/105: unknown tokens, including ones that cannot be tokens at all.
    for token in [
        "AAAAAAAAAAAAAAAAAAAAAA",
        "not%20a%20token",
        &"x".repeat(500),
    ] {
        let response = http
            .get(s.server.endpoint(&format!("/calls/{token}")))
            .send()
            .await
            .unwrap();
        assert_error(response, 404, 105).await;
        let response = http
            .post(s.server.endpoint(&format!("/calls/{token}")))
            .json(&json!({"callType": "audio"}))
            .send()
            .await
            .unwrap();
        assert_error(response, 404, 105).await;
        assert_error(s.bob.delete(&format!("/call-url/{token}")).await, 404, 105).await;
        assert_error(
            s.bob
                .put(&format!("/call-url/{token}"), &json!({"issuer": "x"}))
                .await,
            404,
            105,
        )
        .await;
    }

    // 403/110: Carol cannot touch Bob's URL.
    let carol = Device::register_with(
        &s.server.url,
        json!({"simplePushURL": s._push.url("carol")}),
    )
    .await;
    assert_error(
        carol.delete(&format!("/call-url/{}", s.token)).await,
        403,
        110,
    )
    .await;
    assert_error(
        carol
            .put(
                &format!("/call-url/{}", s.token),
                &json!({"issuer": "Carol"}),
            )
            .await,
        403,
        110,
    )
    .await;
    let info = http
        .get(s.server.endpoint(&format!("/calls/{}", s.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        info.json::<Value>().await.unwrap()["calleeFriendlyName"],
        "Bob",
        "unchanged"
    );

    // 401/110: no credentials, or a session the server does not know.
    let response = http
        .get(s.server.endpoint("/call-url"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Hawk");
    assert_error(response, 401, 110).await;
    let stranger = Device::from_token(&s.server.url, &"ab".repeat(32));
    assert_error(stranger.get("/calls?version=0").await, 401, 110).await;

    // 410/111: expired.
    expire_call_url(&s.server.database_url, &s.token).await;
    let response = http
        .get(s.server.endpoint(&format!("/calls/{}", s.token)))
        .send()
        .await
        .unwrap();
    assert_error(response, 410, 111).await;
    let response = http
        .post(s.server.endpoint(&format!("/v0/calls/{}", s.token)))
        .json(&json!({"callType": "audio"}))
        .send()
        .await
        .unwrap();
    assert_error(response, 410, 111).await;
    assert_error(
        s.bob
            .put(&format!("/call-url/{}", s.token), &json!({"issuer": "x"}))
            .await,
        410,
        111,
    )
    .await;
    let listed: Value = s.bob.get("/call-url").await.json().await.unwrap();
    assert_eq!(listed, json!([]), "expired URLs are not listed");
    // The owner can still revoke it; then it is unknown.
    assert_eq!(
        s.bob
            .delete(&format!("/call-url/{}", s.token))
            .await
            .status(),
        204
    );
    let response = http
        .get(s.server.endpoint(&format!("/calls/{}", s.token)))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, 105).await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let s = setup("").await;
    let http = client();
    let call = format!("/calls/{}", s.token);
    for (method, path, status) in [
        (reqwest::Method::GET, "/no/such/route", 404),
        (reqwest::Method::GET, "/v0/nothing", 404),
        (reqwest::Method::DELETE, "/__heartbeat__", 405),
        (reqwest::Method::PATCH, call.as_str(), 405),
    ] {
        let response = http
            .request(method, s.server.endpoint(path))
            .send()
            .await
            .unwrap();
        assert_error(response, status, 999).await;
    }
}

#[tokio::test]
async fn provider_failures_are_503_with_retry_after() {
    let trap = workspace_root().join("tests/plugins/trap/trap.wasm");
    let s = setup(&format!(
        "[plugins.trap]\ncomponent = {:?}\n\n[providers.channels]\nbroken = \"trap\"\n\n",
        trap.display().to_string()
    ))
    .await;
    let http = client();
    let call = s.server.endpoint(&format!("/calls/{}", s.token));
    for _ in 0..3 {
        let response = http
            .post(&call)
            .json(&json!({"callType": "audio", "channel": "broken"}))
            .send()
            .await
            .unwrap();
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after > 0);
        assert_error(response, 503, 201).await;
    }
    let calls: Value = s.bob.get("/calls?version=0").await.json().await.unwrap();
    assert_eq!(calls["calls"], json!([]), "a failed setup stores no call");

    // The heartbeat names the failing part (a channel's provider with no
    // fallback); the default provider still works.
    let (status, report) = s.server.heartbeat().await;
    assert_eq!(status, 503);
    assert_eq!(
        (&report["storage"], &report["providers"], &report["push"]),
        (&json!(true), &json!(false), &json!(true)),
        "{report}"
    );
    assert_eq!(report["plugins"]["trap"]["healthy"], false, "{report}");
    assert_eq!(report["plugins"]["loopback"]["healthy"], true, "{report}");
    let response = http
        .post(&call)
        .json(&json!({"callType": "audio"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn call_pages_escape_user_data_and_explain_dead_links() {
    let s = setup("").await;
    let http = client();
    let evil = s
        .bob
        .create_call_url(&json!({"callerId": "alice", "issuer": "<script>alert(1)</script>\"Bob\"", "subject": "<b>hi</b>"}))
        .await;
    let evil_token = evil["callToken"].as_str().unwrap();
    for path in [format!("/c/{evil_token}"), format!("/v0/c/{evil_token}")] {
        let response = http.get(s.server.endpoint(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains(
                "Do you want to call &lt;script&gt;alert(1)&lt;/script&gt;&quot;Bob&quot;?"
            ),
            "{page}"
        );
        assert!(page.contains("&lt;b&gt;hi&lt;/b&gt;"));
        assert!(!page.contains("<script>alert"), "{page}");
    }
    // A browser asking /calls/{token} gets the same page.
    let response = http
        .get(s.server.endpoint(&format!("/calls/{}", s.token)))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Do you want to call Bob?")
    );
    let script = http
        .get(s.server.endpoint("/static/call.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // Dead links get a readable page with the API's status, not JSON.
    let response = http
        .get(s.server.endpoint("/c/AAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("This link does not work")
    );
    expire_call_url(&s.server.database_url, &s.token).await;
    let response = http
        .get(s.server.endpoint(&format!("/c/{}", s.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 410);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("This link has expired")
    );
}
