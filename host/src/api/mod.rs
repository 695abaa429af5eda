//! The REST API: one module per resource, with the middleware every route shares.
//!
//! Every route is served at `/` and again under `/v0/`, the prefix Loop clients use.

mod account;
#[cfg(test)]
mod body_proptests;
mod call_urls;
mod calls;
mod openapi;
mod pages;
mod progress;
mod registration;
mod request_context;
mod service;
mod signaling;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use tower::{Layer, Service};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::app::{AppState, MAX_BODY_BYTES};
use crate::error::AppError;

pub use self::openapi::document_json;

/// The `Timestamp` response header: the server's clock, so clients can correct
/// their Hawk timestamps.
pub const TIMESTAMP_HEADER: &str = "timestamp";

/// The request id: the client's when it is sane, else one made up; echoed in
/// every response and carried by every log line of the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Headers browsers may read from our responses.
const EXPOSED_HEADERS: [&str; 6] = [
    "hawk-session-token",
    "server-authorization",
    "timestamp",
    "retry-after",
    "preference-applied",
    REQUEST_ID_HEADER,
];

/// Every route with its OpenAPI documentation, at its canonical path.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::skeleton())
        .merge(service::routes())
        .merge(openapi::routes())
        .merge(registration::routes())
        .merge(account::routes())
        .merge(call_urls::routes())
        .merge(calls::routes())
        .merge(pages::routes())
        .merge(progress::routes())
        .merge(signaling::routes())
}

/// The routes as served, at `/` and under `/v0`, without middleware.
fn routes() -> Router<AppState> {
    let api: Router<AppState> = api().into();
    Router::new()
        .merge(api.clone())
        .nest("/v0", api)
        // `nest` maps the nested `/` to `/v0` only; clients also ask for `/v0/`.
        .route("/v0/", get(service::root))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The whole HTTP surface, wired with its middleware.
pub fn router(state: AppState) -> Router {
    // Built once, before the first request asks for it.
    std::sync::LazyLock::force(&openapi::DOCUMENT);
    let routes = routes().layer(crate::auth::HawkLayer::new(state.clone()));
    with_middleware(routes, live_cors_origins(state.clone())).with_state(state)
}

/// `cors.allowed_origins` as it is at each request: a reload changes it
/// without rebuilding the router.
fn live_cors_origins(state: AppState) -> AllowOrigin {
    AllowOrigin::predicate(move |origin, _| {
        cors_allows(&state.config().cors.allowed_origins, origin)
    })
}

/// Whether `origin` is listed (a trailing `/` in the list is ignored), or
/// the list has `*`.
fn cors_allows(allowed_origins: &[String], origin: &HeaderValue) -> bool {
    allowed_origins.iter().any(|allowed| {
        allowed == "*" || allowed.trim_end_matches('/').as_bytes() == origin.as_bytes()
    })
}

/// Every (method, path) the router serves, upper-case methods and canonical
/// paths (a route served under `/v0` is listed once, without the prefix).
/// Read from the router itself, not from the documentation, so that a route
/// added without it shows: `tests/openapi.rs` compares the two.
///
/// axum has no API to list routes; its `Debug` output names each route's
/// path and the methods that have a handler. The unit test below fails if
/// that output changes shape.
pub fn route_table() -> Vec<(String, String)> {
    const METHODS: [&str; 9] = [
        "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
    ];
    let debug = format!("{:?}", routes());
    let path_router = debug
        .split_once("fallback_router:")
        .map_or(debug.as_str(), |(path_router, _)| path_router);
    let Some((endpoints, node)) = path_router.split_once("node: Node") else {
        return Vec::new();
    };
    let paths: std::collections::HashMap<&str, &str> = node
        .split("RouteId(")
        .skip(1)
        .filter_map(|entry| {
            let (id, rest) = entry.split_once(')')?;
            Some((id, rest.split('"').nth(1)?))
        })
        .collect();
    let mut table = std::collections::BTreeSet::new();
    for entry in endpoints.split("RouteId(").skip(1) {
        let Some((id, methods)) = entry.split_once(')') else {
            continue;
        };
        let Some(path) = paths.get(id) else {
            continue;
        };
        let canonical = match path.strip_prefix("/v0") {
            Some("") => "/",
            Some(rest) if rest.starts_with('/') => rest,
            _ => path,
        };
        let handled = |method: &str| {
            methods.contains(&format!(" {method}: "))
                && !methods.contains(&format!(" {method}: None"))
        };
        for method in METHODS {
            // axum answers HEAD with the GET handler when no HEAD is set.
            if handled(method) && !(method == "head" && handled("get")) {
                table.insert((method.to_uppercase(), canonical.to_string()));
            }
        }
    }
    table.into_iter().collect()
}

/// The layers every route shares, outside authentication. Innermost first: the
/// auth layer (added by the caller) sees bodies already bounded in size; panics
/// anywhere below become a JSON 500, and rejections in plain text Loop's JSON
/// errors; CORS answers preflights; the request context (request id, log
/// span, `Timestamp`, metrics) applies to every response, errors and
/// preflights too.
fn with_middleware<S>(routes: Router<S>, cors_origins: AllowOrigin) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(LoopErrorsLayer)
        .layer(cors_layer(cors_origins))
        .layer(request_context::RequestContextLayer)
}

/// The route of requests no route matched.
const UNMATCHED_ROUTE: &str = "<unmatched>";

fn cors_layer(origins: AllowOrigin) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            // `GET /calls` long-polls with `Prefer: wait=N`.
            HeaderName::from_static("prefer"),
            HeaderName::from_static(REQUEST_ID_HEADER),
        ])
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(3600))
}

/// Some rejections come from layers and extractors that know nothing of Loop
/// (the body limit, path and query parsing) and answer in plain text. Clients
/// expect Loop's JSON errors everywhere, so those are rewritten here. HTML
/// pages and our own JSON pass untouched.
///
/// A hand-written layer rather than `from_fn`: `from_fn` clones the routes
/// inside it and boxes a future on every request, which cost the cheapest
/// route about 6% of its throughput (BENCHMARKS.md). Here a good answer
/// costs one check of its status; only a plain-text rejection, whose body is
/// read, takes a boxed future.
#[derive(Clone, Copy, Default)]
struct LoopErrorsLayer;

impl<S> Layer<S> for LoopErrorsLayer {
    type Service = LoopErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoopErrors { inner }
    }
}

#[derive(Clone)]
struct LoopErrors<S> {
    inner: S,
}

impl<S> Service<Request> for LoopErrors<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = LoopErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        LoopErrorsFuture::Answering {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    #[project = LoopErrorsProjection]
    enum LoopErrorsFuture<F> {
        Answering { #[pin] inner: F },
        Rewriting { rewrite: BoxFuture<'static, Response> },
    }
}

impl<F> Future for LoopErrorsFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let LoopErrorsProjection::Answering { inner } = self.as_mut().project() {
            let Ok(response) = std::task::ready!(inner.poll(cx));
            if !is_plain_rejection(&response) {
                return Poll::Ready(Ok(response));
            }
            self.set(LoopErrorsFuture::Rewriting {
                rewrite: Box::pin(loop_error_for(response)),
            });
        }
        match self.project() {
            LoopErrorsProjection::Rewriting { rewrite } => rewrite.as_mut().poll(cx).map(Ok),
            LoopErrorsProjection::Answering { .. } => unreachable!("set to Rewriting above"),
        }
    }
}

/// An error status with a plain-text body (or none): a rejection from a
/// layer or extractor, not one of our answers.
fn is_plain_rejection(response: &Response) -> bool {
    let status = response.status();
    (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_none_or(|value| value.starts_with("text/plain"))
}

/// Loop's JSON error for a plain-text rejection.
async fn loop_error_for(response: Response) -> Response {
    let error = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::TooLarge(MAX_BODY_BYTES),
        StatusCode::NOT_FOUND => return not_found().await,
        StatusCode::UNAUTHORIZED => AppError::Unauthorized(plain_reason(response).await),
        StatusCode::FORBIDDEN => AppError::Forbidden(plain_reason(response).await),
        StatusCode::METHOD_NOT_ALLOWED => return method_not_allowed().await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::NOT_ACCEPTABLE => {
            AppError::NotAcceptable("expected Content-Type: application/json".into())
        }
        status if status.is_client_error() => {
            AppError::invalid("request", plain_reason(response).await)
        }
        status => AppError::Internal(anyhow::anyhow!(
            "{status} from a layer: {}",
            plain_reason(response).await
        )),
    };
    error.into_response()
}

/// The text of a plain rejection (axum's path/query messages name the part).
async fn plain_reason(response: Response) -> String {
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if text.is_empty() {
        "invalid request".into()
    } else {
        text
    }
}

/// No such route. Errno 105 (invalid token) is for tokens that are unknown;
/// a path that is no resource at all is 999, as Mozilla's server answered.
async fn not_found() -> Response {
    undefined_error(StatusCode::NOT_FOUND, "no such resource")
}

async fn method_not_allowed() -> Response {
    undefined_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this resource",
    )
}

/// Loop's error body for statuses that have no errno of their own.
fn undefined_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({
        "code": status.as_u16(),
        "errno": crate::error::Errno::Undefined as u16,
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message,
    });
    (status, axum::Json(body)).into_response()
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    AppError::Internal(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{Request, StatusCode};
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;
    use crate::error::LoopJson;

    fn app() -> Router {
        let routes = Router::new()
            .route("/boom", get(boom))
            .route(
                "/echo",
                post(
                    |LoopJson(value): LoopJson<serde_json::Value>| async move { axum::Json(value) },
                ),
            )
            .route(
                "/number/{n}",
                get(|Path(n): Path<u32>| async move { n.to_string() }),
            )
            .fallback(not_found);
        with_middleware(routes, AllowOrigin::list([]))
    }

    async fn call(
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[test]
    fn the_route_table_lists_what_the_router_serves() {
        let table = route_table();
        let has = |method: &str, path: &str| {
            table
                .iter()
                .any(|(m, p)| m.as_str() == method && p.as_str() == path)
        };
        assert!(has("GET", "/"), "{table:?}");
        assert!(has("GET", "/calls/{token}"), "{table:?}");
        assert!(has("POST", "/calls/{token}"), "{table:?}");
        assert!(has("DELETE", "/call-url/{token}"), "{table:?}");
        assert!(!has("POST", "/"), "{table:?}");
        assert!(
            !table.iter().any(|(_, path)| path.starts_with("/v0")),
            "{table:?}"
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500() {
        let request = Request::get("/boom").body(Body::empty()).unwrap();
        let (status, headers, body) = call(request).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errno"], 999);
        assert_eq!(body["code"], 500);
        assert!(
            !body["message"].as_str().unwrap().contains("boom"),
            "panic details are logged, not shown"
        );
        assert!(headers.contains_key(TIMESTAMP_HEADER));
    }

    #[tokio::test]
    async fn layer_rejections_become_loop_errors() {
        let request = Request::get("/number/not-a-number")
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = call(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errno"], 107);

        let request = Request::post("/echo")
            .header("content-type", "application/json")
            .header("content-length", (MAX_BODY_BYTES + 1).to_string())
            .body(Body::from(vec![b' '; MAX_BODY_BYTES + 1]))
            .unwrap();
        let (status, _, body) = call(request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["errno"], 113);

        let request = Request::get("/nowhere").body(Body::empty()).unwrap();
        let (status, headers, body) = call(request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["errno"], 999);
        assert!(headers.contains_key(TIMESTAMP_HEADER));
    }
}
