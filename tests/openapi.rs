//! The OpenAPI document at `/__api__` against the router: every route the
//! router serves is documented, and every documented operation is served
//! (asked over HTTP, at `/` and under `/v0`). The property-based test of the
//! whole API against the document is scripts/api-fuzz (schemathesis).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{TestServer, client};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn served_document(server: &TestServer) -> Value {
    let response = client()
        .get(server.endpoint("/__api__"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{:?}",
        response.headers()
    );
    response.json().await.unwrap()
}

/// (METHOD, path) of every operation in the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// A concrete path for a documented template: parameters get dummy values.
fn concrete(path: &str) -> String {
    path.replace("{token}", "no-such-token")
        .replace("{name}", "app.css")
}

/// Whether the router answered from its fallbacks: no route for the path, or
/// none for the method.
async fn is_fallback(response: reqwest::Response) -> bool {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default();
    (status == 404 && message == "no such resource")
        || (status == 405 && message == "method not allowed on this resource")
}

#[tokio::test]
async fn the_document_and_the_router_list_the_same_routes() {
    let server = TestServer::start().await;
    let document = served_document(&server).await;
    assert_eq!(
        document,
        loop_server::api::document_json(),
        "the served document is the one the code generates"
    );
    let documented = operations(&document);

    let routed: BTreeSet<(String, String)> = loop_server::api::route_table().into_iter().collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "documented but not in the router's table: {unrouted:?}"
    );

    // From the outside: each documented operation reaches a handler, at its
    // path and under /v0.
    let http = client();
    for (method, path) in &documented {
        for prefix in ["", "/v0"] {
            let url = server.endpoint(&format!("{prefix}{}", concrete(path)));
            let response = http
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            assert!(
                !is_fallback(response).await,
                "{method} {prefix}{path} is documented but not served"
            );
        }
    }
    // The probe does tell a fallback.
    let response = http
        .get(server.endpoint("/no-such-route"))
        .send()
        .await
        .unwrap();
    assert!(is_fallback(response).await);
    let response = http
        .patch(server.endpoint("/call-url"))
        .send()
        .await
        .unwrap();
    assert!(is_fallback(response).await);
}

#[tokio::test]
async fn the_document_describes_hawk_and_loop_errors() {
    let server = TestServer::start().await;
    let document = served_document(&server).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let hawk = &document["components"]["securitySchemes"]["hawk"];
    assert_eq!(hawk["type"], "http");
    assert_eq!(hawk["scheme"], "Hawk");
    assert!(
        hawk["description"]
            .as_str()
            .unwrap()
            .contains("Hawk-Session-Token")
    );

    let schemas = &document["components"]["schemas"];
    let error = &schemas["LoopError"];
    for field in ["code", "errno", "error", "message"] {
        assert!(
            error["required"]
                .as_array()
                .unwrap()
                .contains(&Value::from(field)),
            "{error}"
        );
    }
    let errnos: BTreeSet<u64> = schemas["Errno"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("Errno is an enum: {}", schemas["Errno"]))
        .iter()
        .map(|errno| errno.as_u64().unwrap())
        .collect();
    assert_eq!(
        errnos,
        BTreeSet::from([105, 106, 107, 108, 110, 111, 113, 201, 999])
    );

    // Every operation that needs a session says so and documents its 401;
    // every JSON error response is a LoopError, but the heartbeat's 503 (its
    // report, saying what fails).
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let needs_hawk = operation["security"]
                .as_array()
                .is_some_and(|schemes| schemes.iter().all(|scheme| scheme.get("hawk").is_some()));
            if needs_hawk {
                assert!(responses.contains_key("401"), "{method} {path}");
                assert!(responses.contains_key("503"), "{method} {path}");
            }
            for (status, response) in responses {
                if (!status.starts_with('4') && !status.starts_with('5'))
                    || (path == "/__heartbeat__" && status == "503")
                {
                    continue;
                }
                let Some(json) = response["content"].get("application/json") else {
                    continue;
                };
                assert_eq!(
                    json["schema"]["$ref"], "#/components/schemas/LoopError",
                    "{method} {path} {status}"
                );
            }
        }
    }
    for (method, path) in [
        ("post", "/registration"),
        ("post", "/call-url"),
        ("post", "/calls/{token}"),
    ] {
        assert!(
            document["paths"][path][method]["responses"]
                .get("429")
                .is_some(),
            "{method} {path} documents its rate limit"
        );
    }
}
