//! `GET /__api__`: the OpenAPI 3.1 document of the whole HTTP surface,
//! generated from the handlers' `#[utoipa::path]` annotations. utoipa-axum
//! registers each route and its documentation from one declaration
//! (`routes!` in each module), so a handler cannot be served undocumented
//! through them; `tests/openapi.rs` checks the router and the document
//! against each other from the outside as well.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::Errno;

/// Loop's error body, as the document names it.
pub type LoopError = crate::error::ErrorBody;

/// The error answers many routes share, each stated once here and listed
/// by type in the routes' `responses(...)`.
///
/// 401: refused Hawk credentials, or none where a session is needed.
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "No valid Hawk authentication (errno 110)")]
pub(super) struct HawkRefused(#[allow(dead_code)] LoopError);

/// 413: a request body over [`crate::app::MAX_BODY_BYTES`].
#[derive(utoipa::IntoResponses)]
#[response(status = 413, description = "The body is over 16 KiB (errno 113)")]
pub(super) struct BodyTooLarge(#[allow(dead_code)] LoopError);

/// 429: past a `[rate_limits]` budget.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "Too many requests (errno 999); `Retry-After` says when to retry"
)]
pub(super) struct TooManyRequests(#[allow(dead_code)] LoopError);

/// 503: storage unreachable or failing.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "Storage is unavailable (errno 201); `Retry-After` says when to retry"
)]
pub(super) struct StorageUnavailable(#[allow(dead_code)] LoopError);

const DESCRIPTION: &str = "\
Loop: one-click WebRTC calls, following Mozilla's Loop server REST API.

Every route is served at the path given here and again under `/v0` (the prefix \
Loop clients use): `POST /v0/call-url` is `POST /call-url`. The two servers listed \
say the same.

Errors are Loop's JSON body `{code, errno, error, message}` (`LoopError`) with \
Mozilla's errno numbers: 105 unknown token, 106 malformed JSON or not JSON, \
107 invalid parameter, 108 missing parameter, 110 invalid authentication, \
111 expired, 113 request too large, 201 storage or a provider unavailable \
(503 with `Retry-After`), 999 anything else (unknown route, method not allowed, \
too many requests, internal error). Every response carries a `Timestamp` header: \
the server's clock (Unix seconds), to correct Hawk timestamps.";

const HAWK_DESCRIPTION: &str = "\
Hawk (`Authorization: Hawk id=…, ts=…, nonce=…, hash=…, mac=…`) with device \
sessions, as Mozilla's Loop server. An unauthenticated `POST /registration` \
creates a session and answers its token in the `Hawk-Session-Token` response \
header (64 hex digits), once. The client derives the Hawk credentials from \
it: HKDF-SHA256 of the token's 32 bytes, no salt, info \
`identity.mozilla.com/picl/v1/sessionToken`, 64 bytes; the id is the hex of \
bytes 0..32, the key the hex of bytes 32..64 (its ASCII string is the HMAC \
key), algorithm sha256. A request with a body must include its payload \
`hash`. Timestamps may be off by `auth.hawk_clock_skew_seconds`; a nonce is \
accepted once. Responses to Hawk requests carry `Server-Authorization`. A \
session lasts `auth.hawk_session_duration`, refreshed on use, until \
`DELETE /account`.";

#[derive(OpenApi)]
#[openapi(
    info(title = "Loop"),
    components(schemas(LoopError, Errno)),
    tags(
        (name = "service", description = "What this server is and whether it is healthy"),
        (name = "sessions", description = "Device sessions and their push URLs"),
        (name = "call URLs", description = "The links a callee hands out"),
        (name = "calls", description = "Calling through a call URL; the calls waiting for a callee"),
        (name = "pages", description = "The web app"),
        (name = "websockets", description = "Call progress and the self-hosted provider's signaling"),
    )
)]
struct ApiDoc;

/// The document's skeleton, which the routes' documentation is merged into.
pub(super) fn skeleton() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(document))
}

/// The document, serialised once: `router()` forces it at start-up.
pub(super) static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string(&document_json()).expect("a JSON value serialises"));

/// The whole document as JSON.
pub fn document_json() -> Value {
    let mut openapi = super::api().into_openapi();
    openapi.info.version = env!("CARGO_PKG_VERSION").into();
    openapi.info.description = Some(DESCRIPTION.into());
    openapi.servers = Some(vec![
        utoipa::openapi::Server::new("/"),
        utoipa::openapi::ServerBuilder::new()
            .url("/v0")
            .description(Some("The same routes under Loop clients' prefix"))
            .build(),
    ]);
    let mut document = serde_json::to_value(&openapi).expect("the document serialises");
    camel_case_links(&mut document);
    // utoipa's HTTP schemes are a closed list without Hawk.
    document["components"]["securitySchemes"]["hawk"] = json!({
        "type": "http",
        "scheme": "Hawk",
        "description": HAWK_DESCRIPTION,
    });
    document
}

/// utoipa 5 writes Link objects' fields in snake case (`operation_id`);
/// OpenAPI spells them `operationId`, `operationRef` and `requestBody`.
fn camel_case_links(document: &mut Value) {
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) else {
            continue;
        };
        for link in links.values_mut().filter_map(Value::as_object_mut) {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.into(), value);
                }
            }
        }
    }
}

#[utoipa::path(
    get,
    path = "/__api__",
    tag = "service",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json",
        body = Object)),
)]
async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}
