//! The outermost layer of every route: the request id, the request's log
//! span, the `Timestamp` header and the request metrics, in one hand-written
//! tower service.
//!
//! One service rather than a stack of generic ones (tower-http's trace and
//! request-id layers, `from_fn` middleware) because each of those costs
//! something on every request: `from_fn` clones the whole stack inside it and
//! boxes its future, each layer makes the request's future larger to move,
//! and each takes its own clock readings. On the cheapest routes that was
//! several percent of throughput (BENCHMARKS.md, "Cost of metrics, request ids
//! and rate limits"); here one pair of clock readings serves the metrics and
//! the log line.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::Response;
use tower::{Layer, Service};
use tracing::Span;

use super::{REQUEST_ID_HEADER, TIMESTAMP_HEADER, UNMATCHED_ROUTE};

/// The log target of each request's start and end lines (at debug):
/// `LOOP_LOG=info,loop_server::requests=debug` shows them.
pub const REQUESTS_LOG_TARGET: &str = "loop_server::requests";

/// Longest client request id kept.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Wraps every route in [`RequestContext`].
#[derive(Clone, Copy, Default)]
pub struct RequestContextLayer;

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext { inner }
    }
}

/// Gives each request its id (the client's `X-Request-Id` when sane, else a
/// new UUID) and a log span carrying it, its method and its route template
/// (never the raw path or query: tokens in paths are capabilities), entered
/// whenever the request's future runs; and gives each response that id, the
/// `Timestamp` header (the server's clock, so clients can correct their Hawk
/// timestamps), and its place in the request metrics (by route template,
/// method and status, timed to the response head: a long-poll's wait
/// included, a websocket's life not).
#[derive(Clone)]
pub struct RequestContext<S> {
    inner: S,
}

impl<S> Service<Request> for RequestContext<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RequestContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let span = tracing::info_span!(
            "request",
            method = %method,
            route = route_template(route.as_ref()),
            request_id = request_id.to_str().unwrap_or_default(),
        );
        let inner = {
            let _entered = span.enter();
            tracing::debug!(target: REQUESTS_LOG_TARGET, "started processing request");
            self.inner.call(request)
        };
        RequestContextFuture {
            inner,
            span,
            answer: Some(Answer {
                started,
                request_id,
                method,
                route,
            }),
        }
    }
}

/// What the response gets once the inner service has answered.
struct Answer {
    started: Instant,
    request_id: HeaderValue,
    method: Method,
    route: Option<MatchedPath>,
}

pin_project_lite::pin_project! {
    pub struct RequestContextFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        answer: Option<Answer>,
    }
}

impl<F> Future for RequestContextFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        let answer = this
            .answer
            .take()
            .expect("a request's future is not polled after it answered");
        let took = answer.started.elapsed();
        let status = response.status();
        if status.is_server_error() {
            tracing::error!(
                target: REQUESTS_LOG_TARGET,
                status = status.as_u16(),
                latency_ms = took.as_secs_f64() * 1e3,
                "response failed"
            );
        } else {
            tracing::debug!(
                target: REQUESTS_LOG_TARGET,
                status = status.as_u16(),
                latency_ms = took.as_secs_f64() * 1e3,
                "finished processing request"
            );
        }
        let headers = response.headers_mut();
        headers.insert(
            HeaderName::from_static(REQUEST_ID_HEADER),
            answer.request_id,
        );
        headers.insert(
            HeaderName::from_static(TIMESTAMP_HEADER),
            HeaderValue::from(crate::clock::now()),
        );
        crate::telemetry::record_request(
            &answer.method,
            route_template(answer.route.as_ref()),
            status,
            took,
        );
        Poll::Ready(Ok(response))
    }
}

/// The route the request matched, as its template (`/calls/{token}`): what
/// the span and the metrics name, never the raw path.
fn route_template(route: Option<&MatchedPath>) -> &str {
    route.map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
}

/// The request's id: the client's when it sent exactly one that is short
/// visible ASCII (anything else could forge log lines), else a new UUID v4.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(REQUEST_ID_HEADER).iter();
    if let (Some(id), None) = (sent.next(), sent.next())
        && is_sane(id)
    {
        return id.clone();
    }
    let mut text = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
        .expect("a UUID is a valid header value")
}

fn is_sane(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_BYTES
        && bytes.iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ids: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for id in ids {
            headers.append(REQUEST_ID_HEADER, HeaderValue::from_bytes(id).unwrap());
        }
        headers
    }

    #[test]
    fn a_sane_client_id_is_kept() {
        assert_eq!(request_id(&headers(&[b"abc-123_XYZ"])), "abc-123_XYZ");
    }

    #[test]
    fn insane_or_repeated_ids_are_replaced_by_one_uuid() {
        let long = [b'a'; MAX_REQUEST_ID_BYTES + 1];
        for ids in [
            vec![&b""[..]],
            vec![&b"has space"[..]],
            vec![&b"tab\there"[..]],
            vec![&b"caf\xc3\xa9"[..]],
            vec![&long[..]],
            vec![&b"one"[..], &b"two"[..]],
        ] {
            let id = request_id(&headers(&ids));
            assert!(
                uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok(),
                "{ids:?}"
            );
        }
    }

    #[test]
    fn a_missing_id_is_made_up_afresh_each_time() {
        let id = request_id(&HeaderMap::new());
        assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok());
        assert_ne!(request_id(&HeaderMap::new()), id);
    }
}
