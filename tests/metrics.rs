//! Operability: Prometheus metrics on their own listener, request ids and
//! JSON logs, against the real server.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fake_push::FakePush;
use common::hawk::Device;
use common::ws::WsClient;
use common::{ServerOptions, TestServer, client, place_call};
use serde_json::{Value, json};

/// One scrape: each sample by metric name and labels.
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    async fn of(server: &TestServer) -> Scrape {
        let url = server.metrics_url.as_deref().expect("a metrics listener");
        let response = client().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Scrape::parse(&response.text().await.unwrap())
    }

    /// The text format: `name{label="value",…} value` per line, `#` comments.
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
                None => (series, BTreeMap::new()),
            };
            samples.insert((name.to_string(), labels), value);
        }
        Scrape(samples)
    }

    /// The sample, or 0 when the series does not exist (yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|(n, _)| n == name)
    }
}

/// `a="x",b="y\"z"`
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => value.push(chars.next().unwrap().1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = &after[end + 1..];
    }
    labels
}

fn requests(method: &str, route: &str, status: &str) -> [(&'static str, String); 3] {
    [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ]
}

/// How much `name{labels}` grew from `before` to `after`.
fn grew(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, String)]) -> f64 {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    after.get(name, &labels) - before.get(name, &labels)
}

async fn metrics_server(push: &FakePush) -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: push.config(2000),
        env: vec![("LOOP_SERVER__METRICS_LISTEN".into(), "127.0.0.1:0".into())],
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn metrics_count_a_call_from_registration_to_its_progress_socket() {
    let push = FakePush::start().await;
    let server = metrics_server(&push).await;
    let start = Scrape::of(&server).await;

    let callee = Device::register(&server.url, &push.url("callee")).await;
    let token = callee.create_call_url(&json!({"callerId": "alice"})).await["callToken"]
        .as_str()
        .unwrap()
        .to_string();
    let placed = place_call(
        &client(),
        &server.endpoint(&format!("/calls/{token}")),
        &json!({"callType": "audio"}),
    )
    .await;
    let pings = push.wait_for("callee", 1).await.len();
    assert_eq!(callee.get("/calls?version=0").await.status(), 200);
    // Pings are counted once their answer is in; the fake server records
    // them before answering.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let placed_scrape = loop {
        let scrape = Scrape::of(&server).await;
        if grew(
            &start,
            &scrape,
            "loop_push_pings_total",
            &[("outcome", "ok".into())],
        ) >= 1.0
            || tokio::time::Instant::now() > deadline
        {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let counted = |method, route, status| {
        grew(
            &start,
            &placed_scrape,
            "loop_http_requests_total",
            &requests(method, route, status),
        )
    };
    assert_eq!(counted("POST", "/registration", "200"), 1.0);
    assert_eq!(counted("POST", "/call-url", "200"), 1.0);
    assert_eq!(counted("POST", "/calls/{token}", "200"), 1.0);
    assert_eq!(counted("GET", "/calls", "200"), 1.0);
    assert_eq!(
        grew(
            &start,
            &placed_scrape,
            "loop_http_request_duration_seconds_count",
            &requests("POST", "/calls/{token}", "200"),
        ),
        1.0
    );
    assert_eq!(
        grew(
            &start,
            &placed_scrape,
            "loop_provider_calls_total",
            &[("plugin", "loopback".into()), ("outcome", "ok".into())],
        ),
        1.0,
        "one setup-call on the loopback plugin"
    );
    assert_eq!(
        grew(
            &start,
            &placed_scrape,
            "loop_provider_call_duration_seconds_count",
            &[("plugin", "loopback".into()), ("outcome", "ok".into())],
        ),
        1.0
    );
    assert_eq!(
        grew(
            &start,
            &placed_scrape,
            "loop_push_pings_total",
            &[("outcome", "ok".into())],
        ),
        pings as f64,
        "every ping the push server got"
    );
    assert_eq!(
        grew(
            &start,
            &placed_scrape,
            "loop_db_statement_duration_seconds_count",
            &[("statement", "batch_insert_calls".into())],
        ),
        1.0,
        "the call's row, written once"
    );
    assert!(
        grew(
            &start,
            &placed_scrape,
            "loop_db_group_commit_batch_size_count",
            &[]
        ) >= 3.0,
        "the session, the call URL and the call each went through a round"
    );
    assert!(placed_scrape.has("loop_db_writer_queue_depth"));
    assert!(
        placed_scrape.get("loop_db_pool_connections", &[("state", "idle")])
            + placed_scrape.get("loop_db_pool_connections", &[("state", "in_use")])
            >= 1.0
    );

    // A progress socket counts while it is open, and not after.
    let mut socket = WsClient::connect(&server, "/websocket").await;
    socket
        .send(json!({
            "messageType": "hello",
            "callId": placed["callId"],
            "auth": placed["websocketToken"],
        }))
        .await;
    assert_eq!(socket.recv().await["messageType"], "hello");
    let open = Scrape::of(&server).await;
    assert_eq!(
        open.get("loop_websockets_open", &[("kind", "progress")]),
        1.0
    );
    assert_eq!(
        grew(
            &start,
            &open,
            "loop_http_requests_total",
            &requests("GET", "/websocket", "101"),
        ),
        1.0
    );
    socket.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = Scrape::of(&server)
            .await
            .get("loop_websockets_open", &[("kind", "progress")]);
        if open == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} progress sockets still counted after the close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The public listener does not serve them.
    let response = client()
        .get(server.endpoint("/__metrics__"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["errno"], 999);
}

#[test]
fn the_scrape_parser_reads_labels_and_escapes() {
    let scrape = Scrape::parse("# HELP x y\nx_total{a=\"1\",b=\"q\\\"r\"} 3\nplain 2.5\n");
    assert_eq!(scrape.get("x_total", &[("a", "1"), ("b", "q\"r")]), 3.0);
    assert_eq!(scrape.get("plain", &[]), 2.5);
    assert_eq!(scrape.get("x_total", &[("a", "1")]), 0.0);
}

async fn json_log_server() -> TestServer {
    TestServer::start_with(ServerOptions {
        env: vec![
            ("LOOP_LOG__FORMAT".into(), "json".into()),
            // Each request's start and end are logged at debug.
            ("LOOP_LOG".into(), "info,loop_server::requests=debug".into()),
        ],
        ..Default::default()
    })
    .await
}

/// The id the server answered `request` with.
async fn answered_id(request: reqwest::RequestBuilder) -> String {
    let response = request.send().await.unwrap();
    response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id in every response")
        .to_str()
        .unwrap()
        .to_string()
}

fn is_generated(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        })
}

/// The log lines whose request span carries `id`.
fn lines_of(logs: &str, id: &str) -> Vec<Value> {
    logs.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"))
        })
        .filter(|line| line["span"]["request_id"] == id)
        .collect()
}

#[tokio::test]
async fn json_logs_carry_each_request_id_which_every_response_echoes() {
    let server = json_log_server().await;
    assert!(server.metrics_url.is_none(), "no metrics unless configured");
    let http = client();

    let response = http
        .get(server.endpoint("/no/such/thing"))
        .header("x-request-id", "test-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "test-abc-123");
    assert_eq!(response.json::<Value>().await.unwrap()["errno"], 999);
    server.wait_for_log("finished processing request").await;
    let logs = server.wait_for_log("test-abc-123").await;
    let lines = lines_of(&logs, "test-abc-123");
    assert!(lines.len() >= 2, "the request's start and end: {logs}");
    for line in &lines {
        assert_eq!(line["span"]["route"], "<unmatched>", "{line}");
        assert_eq!(line["span"]["method"], "GET", "{line}");
    }

    // No id given: one is made up, echoed and logged.
    let generated = answered_id(http.get(server.endpoint("/__heartbeat__"))).await;
    assert!(is_generated(&generated), "{generated:?}");
    let logs = server.wait_for_log(&generated).await;
    assert!(!lines_of(&logs, &generated).is_empty());
    assert_eq!(
        lines_of(&logs, &generated)[0]["span"]["route"],
        "/__heartbeat__"
    );

    // An id that could garble the logs is replaced.
    let too_long = "a".repeat(129);
    for bogus in [
        reqwest::header::HeaderValue::from_static("evil\tid"),
        reqwest::header::HeaderValue::from_static("two words"),
        reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        reqwest::header::HeaderValue::from_str(&too_long).unwrap(),
    ] {
        let answered = answered_id(
            http.get(server.endpoint("/__heartbeat__"))
                .header("x-request-id", bogus.clone()),
        )
        .await;
        assert!(
            is_generated(&answered),
            "{bogus:?} answered as {answered:?}"
        );
    }
    // 128 visible characters are kept.
    let longest = "b".repeat(128);
    let answered = answered_id(
        http.get(server.endpoint("/__heartbeat__"))
            .header("x-request-id", &longest),
    )
    .await;
    assert_eq!(answered, longest);

    // Preflights and errors answer with one too.
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.endpoint("/registration"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-request-id")
        .header("x-request-id", "preflight-1");
    assert_eq!(answered_id(preflight).await, "preflight-1");
    let unauthorized = http
        .get(server.endpoint("/calls"))
        .header("x-request-id", "unauth-1");
    assert_eq!(answered_id(unauthorized).await, "unauth-1");
}
