//! Checking Hawk-signed requests and signing their responses, with the `hawk`
//! crate doing the header parsing and MACs.
//!
//! Check order follows the reference Hawk server: session lookup, MAC, payload
//! hash, timestamp, nonce. The nonce is recorded only once everything else
//! passed, so unauthenticated traffic cannot fill the nonce table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::hawk::{Header, Key, PayloadHasher, RequestBuilder, SHA256};
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Request};
use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Authenticated, SERVER_AUTHORIZATION_HEADER};
use crate::app::{AppState, MAX_BODY_BYTES};
use crate::error::AppError;

/// Hawk libraries use 6–32 character nonces; anything far longer is abuse of
/// the nonce table.
const MAX_NONCE_LEN: usize = 128;

/// Sessions we issue have 64-hex-digit ids; other ids cannot exist, so they
/// are refused without a database round trip.
fn is_session_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn unauthorized(reason: &str) -> Response {
    tracing::debug!(reason, "Hawk authentication failed");
    super::refused(format!("Hawk authentication failed: {reason}"))
}

/// The `hawk` crate turns `ts` into a `SystemTime` by addition, which panics
/// on overflow; so `ts` values are checked first, walking the header the way
/// that parser does (`attr="value"` pairs, separators optional). Twelve digits
/// reach the year 33658.
fn timestamps_are_sane(params: &str) -> bool {
    let mut rest = params;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some(eq) = rest.find('=') else {
            return true; // the parser refuses it
        };
        let attr = rest[..eq].trim();
        let Some(quoted) = rest[eq + 1..].trim_start().strip_prefix('"') else {
            return true;
        };
        let Some(end) = quoted.find('"') else {
            return true;
        };
        let value = &quoted[..end];
        if attr == "ts" && !(value.len() <= 12 && value.bytes().all(|b| b.is_ascii_digit())) {
            return false;
        }
        rest = &quoted[end + 1..];
    }
}

/// A Hawk header with everything a check needs, before any lookup.
struct Claim {
    header: Header,
    id: String,
    ts: SystemTime,
    nonce: String,
}

/// Parses the parameters of `Authorization: Hawk ...`; the error is the
/// reason told to the client. Ids that cannot be one of our sessions are
/// refused here, without a database round trip.
fn parse_claim(params: &str) -> Result<Claim, &'static str> {
    if !timestamps_are_sane(params) {
        return Err("invalid ts");
    }
    let Ok(header) = params.parse::<Header>() else {
        return Err("malformed Hawk Authorization header");
    };
    let (Some(id), Some(ts), Some(nonce), Some(_)) = (
        header.id.clone(),
        header.ts,
        header.nonce.clone(),
        header.mac.as_ref(),
    ) else {
        return Err("the header needs id, ts, nonce and mac");
    };
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return Err("invalid nonce");
    }
    if !is_session_id(&id) {
        return Err("unknown or expired session");
    }
    Ok(Claim {
        header,
        id,
        ts,
        nonce,
    })
}

/// What the client signed: method, host and port of its request, and the
/// request target (path and query) exactly as sent.
struct Signed {
    method: String,
    host: String,
    port: u16,
    path: String,
}

impl Signed {
    fn from_parts(parts: &Parts, default_port: u16) -> Option<Self> {
        let authority = match parts.headers.get(header::HOST) {
            Some(host) => host.to_str().ok()?.parse::<Authority>().ok()?,
            // HTTP/2 carries it in the URI instead.
            None => parts.uri.authority()?.clone(),
        };
        let port = match authority.port_u16() {
            Some(port) => port,
            None => match forwarded_proto(&parts.headers) {
                Some("https") => 443,
                Some("http") => 80,
                _ => default_port,
            },
        };
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map(|original| &original.0)
            .unwrap_or(&parts.uri);
        let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        Some(Self {
            method: parts.method.as_str().to_string(),
            host: authority.host().to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }
}

/// The scheme a TLS-terminating proxy says the client used.
fn forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-forwarded-proto")?.to_str().ok()?;
    Some(value.split(',').next()?.trim())
}

/// Hawk hashes the media type only: lower case, parameters dropped.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

pub(super) async fn authenticate(
    state: &AppState,
    params: &str,
    request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    let Claim {
        header: hawk_header,
        id,
        ts,
        nonce,
    } = match parse_claim(params) {
        Ok(claim) => claim,
        Err(reason) => return unauthorized(reason),
    };
    let now = crate::clock::now();
    let id_hmac = auth.id_hmac(&id);
    let session = match auth.cached_session(&id_hmac, now) {
        Some(session) => session,
        None => match state.store.session(&id_hmac, now).await {
            Ok(Some(session)) => {
                auth.cache_session(&session);
                session
            }
            Ok(None) => return unauthorized("unknown or expired session"),
            Err(err) => return AppError::from(err).into_response(),
        },
    };
    let key = match Key::new(session.key.as_bytes(), SHA256) {
        Ok(key) => key,
        Err(err) => {
            return AppError::Internal(anyhow::anyhow!("cannot build a Hawk key: {err}"))
                .into_response();
        }
    };

    let (parts, body) = request.into_parts();
    let Some(signed) = Signed::from_parts(&parts, auth.default_port) else {
        return unauthorized("the request has no valid Host header");
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => return AppError::TooLarge(MAX_BODY_BYTES).into_response(),
    };

    // The MAC covers the hash the client sent; the hash is then held against
    // the body. Timestamp checking is ours (below) so a stale but genuine
    // request can be told the server's time.
    let hawk_request =
        RequestBuilder::new(&signed.method, &signed.host, signed.port, &signed.path).request();
    if !hawk_request.validate_header(&hawk_header, &key, Duration::MAX) {
        return unauthorized("invalid MAC");
    }
    // Without a hash the MAC covers none of the body, so anyone who sees one
    // signed request could replay its header with a body of their own (a push
    // URL, a callerId). A body is only accepted when it is signed; an empty
    // body may go unhashed, as Hawk clients sign GETs and DELETEs.
    match &hawk_header.hash {
        Some(sent_hash) => {
            let computed = match PayloadHasher::hash(media_type(&parts.headers), SHA256, &body) {
                Ok(hash) => hash,
                Err(err) => {
                    return AppError::Internal(anyhow::anyhow!("payload hash: {err}"))
                        .into_response();
                }
            };
            if &computed != sent_hash {
                return unauthorized("the payload hash does not match the body");
            }
        }
        None if !body.is_empty() => {
            return unauthorized(
                "the payload hash is required: sign the request body with the hash attribute",
            );
        }
        None => {}
    }
    let ts = ts
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .min(i64::MAX as u64) as i64;
    if (ts - now).abs() > auth.clock_skew {
        return stale_timestamp(&key, now);
    }
    // A nonce must be remembered for as long as its timestamp stays acceptable.
    let nonce_expiry = ts
        .max(now)
        .saturating_add(auth.clock_skew)
        .saturating_add(1);
    // Also re-checks, atomically, that the (possibly cached) session still
    // exists and is live.
    match state
        .store
        .remember_nonce_of_live_session(&session.id_hmac, &nonce, nonce_expiry, now)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            // A replay, or a session deleted or expired since it was cached:
            // rare, so the extra lookup to tell which costs nothing.
            return match state.store.session(&session.id_hmac, now).await {
                Ok(Some(_)) => unauthorized("nonce already used (replay)"),
                Ok(None) => {
                    auth.forget_session(&session.id_hmac);
                    unauthorized("unknown or expired session")
                }
                Err(err) => AppError::from(err).into_response(),
            };
        }
        Err(err) => return AppError::from(err).into_response(),
    }
    auth.refresh(state.store.as_ref(), &session).await;

    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(Authenticated { session });
    let response = next.run(request).await;
    sign_response(response, &hawk_header, &signed, &key).await
}

/// 401 telling the client our time, authenticated with its key (Hawk's `tsm`),
/// so a client with a wrong clock can correct its offset and retry.
fn stale_timestamp(key: &Key, now: i64) -> Response {
    let mut response = unauthorized("stale timestamp");
    if let Ok(tsm) = key.sign(format!("hawk.1.ts\n{now}\n").as_bytes()) {
        let value = format!(
            "Hawk ts=\"{now}\", tsm=\"{}\", error=\"Stale timestamp\"",
            STANDARD.encode(tsm)
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// Adds `Server-Authorization` with a MAC over the request's ts and nonce and
/// a hash of the response payload, so the client can trust the answer.
async fn sign_response(
    response: Response,
    hawk_header: &Header,
    signed: &Signed,
    key: &Key,
) -> Response {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(err) => {
            return AppError::Internal(anyhow::anyhow!("reading the response body: {err}"))
                .into_response();
        }
    };
    let hash = match PayloadHasher::hash(media_type(&parts.headers), SHA256, &body) {
        Ok(hash) => hash,
        Err(err) => {
            return AppError::Internal(anyhow::anyhow!("response payload hash: {err}"))
                .into_response();
        }
    };
    let hawk_request =
        RequestBuilder::new(&signed.method, &signed.host, signed.port, &signed.path).request();
    let server_header = hawk_request
        .make_response_builder(hawk_header)
        .hash(&hash[..])
        .response()
        .make_header(key);
    match server_header.map(|h| HeaderValue::from_str(&format!("Hawk {h}"))) {
        Ok(Ok(value)) => {
            parts.headers.insert(SERVER_AUTHORIZATION_HEADER, value);
        }
        _ => {
            return AppError::Internal(anyhow::anyhow!("cannot sign the response")).into_response();
        }
    }
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_drops_parameters_and_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(media_type(&headers), "application/json");
        assert_eq!(media_type(&HeaderMap::new()), "");
    }

    #[test]
    fn overflowing_timestamps_are_caught_before_parsing() {
        for params in [
            r#"id="a", ts="18446744073709551615", nonce="n", mac="AAAA""#,
            r#"id="a"ts="9999999999999", nonce="n""#,
            r#"ts = "1234567890123""#,
        ] {
            assert!(!timestamps_are_sane(params), "{params}");
        }
        for params in [
            r#"id="a", ts="1700000000", nonce="n", mac="AAAA""#,
            "",
            "garbage",
            r#"ext="ts=1""#,
        ] {
            assert!(timestamps_are_sane(params), "{params}");
        }
        // What passes the check parses without panicking.
        assert!(
            r#"id="a", ts="999999999999", nonce="n", mac="AAAA""#
                .parse::<Header>()
                .is_ok()
        );
    }

    #[test]
    fn session_ids_are_64_hex_digits() {
        assert!(is_session_id(&"a1".repeat(32)));
        assert!(!is_session_id("abc"));
        assert!(!is_session_id(&"zz".repeat(32)));
    }

    #[test]
    fn signed_host_and_port_come_from_the_host_header() {
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/v0/registration?x=1")
            .header(header::HOST, "Loop.Example.com")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let signed = Signed::from_parts(&parts, 80).unwrap();
        assert_eq!(
            (signed.host.as_str(), signed.port, signed.path.as_str()),
            ("loop.example.com", 443, "/v0/registration?x=1")
        );

        let request = axum::http::Request::builder()
            .uri("/")
            .header(header::HOST, "127.0.0.1:5123")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let signed = Signed::from_parts(&parts, 80).unwrap();
        assert_eq!((signed.host.as_str(), signed.port), ("127.0.0.1", 5123));
    }
}

/// Properties of the Hawk header parser; the long run is in `proptest_support`.
#[cfg(test)]
mod proptests {
    use ::hawk::Credentials;
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    /// Attribute names Hawk knows, and a few it does not.
    fn attribute() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec!["id", "ts", "nonce", "mac", "hash", "ext", "app", "dlg"])
                .prop_map(String::from),
            1 => "[a-z ]{0,6}",
        ]
    }

    /// Values of every shape a parser meets: timestamps of any length, signs,
    /// session-id and base64 shapes, anything but a quote.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{0,40}",
            "[+-]?[0-9]{1,14}",
            "[0-9a-f]{64}",
            "[A-Za-z0-9+/=]{0,64}",
            "[^\"]{0,40}",
        ]
    }

    fn separator() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", ",", ", ", " ", ",,", "\t", " , ", "\u{3000}"])
    }

    /// `attr="value"` pairs with odd separators and, now and then, a quote
    /// or an `=` missing.
    fn attribute_soup() -> impl Strategy<Value = String> {
        let pair = (
            attribute(),
            separator(),
            prop::bool::weighted(0.95),
            value(),
            prop::bool::weighted(0.95),
            separator(),
        );
        prop::collection::vec(pair, 0..10).prop_map(|pairs| {
            let mut params = String::new();
            for (attr, space, equals, value, closed, after) in pairs {
                params.push_str(&attr);
                params.push_str(space);
                if equals {
                    params.push('=');
                }
                params.push('"');
                params.push_str(&value);
                if closed {
                    params.push('"');
                }
                params.push_str(after);
            }
            params
        })
    }

    /// What `authenticate` relies on once a header is accepted.
    fn assert_claim_invariants(claim: &Claim) {
        assert!(is_session_id(&claim.id));
        assert!(!claim.nonce.is_empty() && claim.nonce.len() <= MAX_NONCE_LEN);
        assert!(claim.header.mac.is_some());
        assert_eq!(claim.header.id.as_deref(), Some(claim.id.as_str()));
        let secs = claim.ts.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs <= 999_999_999_999);
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn proptest_hawk_any_params_are_parsed_or_refused(params in "(?s).{0,600}") {
            if let Ok(claim) = parse_claim(&params) {
                assert_claim_invariants(&claim);
            }
        }

        #[test]
        fn proptest_hawk_attribute_soup_is_parsed_or_refused(params in attribute_soup()) {
            if let Ok(claim) = parse_claim(&params) {
                assert_claim_invariants(&claim);
            }
        }

        /// Timestamps of any length: twelve digits at most are accepted, the
        /// rest refused before the `hawk` crate (which would overflow) sees them.
        #[test]
        fn proptest_hawk_timestamps_of_any_length(ts in "[0-9]{0,40}", id in "[0-9a-f]{64}") {
            let params = format!(r#"id="{id}", ts="{ts}", nonce="n", mac="AAAA""#);
            match parse_claim(&params) {
                Ok(claim) => {
                    prop_assert!(!ts.is_empty() && ts.len() <= 12);
                    let secs = claim.ts.duration_since(UNIX_EPOCH).unwrap().as_secs();
                    prop_assert_eq!(secs, ts.parse::<u64>().unwrap());
                }
                Err(reason) if ts.len() > 12 => prop_assert_eq!(reason, "invalid ts"),
                Err(reason) => {
                    prop_assert!(ts.is_empty());
                    prop_assert_eq!(reason, "malformed Hawk Authorization header");
                }
            }
        }

        /// A header made by the `hawk` crate, as clients make them, parses back
        /// to the same fields, and its MAC checks against the request it signs
        /// and no other.
        #[test]
        fn proptest_hawk_signed_headers_round_trip(
            token in prop::array::uniform32(any::<u8>()),
            method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
            host in "[a-z0-9.-]{1,40}",
            port in any::<u16>(),
            path in "/[!-~]{0,200}",
            ts in 0u64..=999_999_999_999,
            nonce in "[^\"]{1,64}",
            ext in prop::option::of("[^\"]{0,64}"),
            payload in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
        ) {
            let derived = crate::auth::derive_credentials(&token);
            let credentials = Credentials {
                id: derived.id.clone(),
                key: Key::new(derived.key.as_bytes(), SHA256).unwrap(),
            };
            let hash = payload
                .map(|body| PayloadHasher::hash("application/json", SHA256, &body).unwrap());
            let header = RequestBuilder::new(method, &host, port, &path)
                .hash(hash.as_deref())
                .ext(ext.as_deref())
                .request()
                .make_header_full(&credentials, UNIX_EPOCH + Duration::from_secs(ts), nonce.clone())
                .unwrap();

            let claim = match parse_claim(&header.to_string()) {
                Ok(claim) => claim,
                Err(reason) => {
                    prop_assert!(nonce.len() > MAX_NONCE_LEN, "refused: {}", reason);
                    prop_assert_eq!(reason, "invalid nonce");
                    return Ok(());
                }
            };
            prop_assert_eq!(&claim.header, &header);
            prop_assert_eq!(&claim.id, &derived.id);
            prop_assert_eq!(&claim.nonce, &nonce);
            prop_assert_eq!(claim.ts, UNIX_EPOCH + Duration::from_secs(ts));

            let signed = RequestBuilder::new(method, &host, port, &path).request();
            prop_assert!(signed.validate_header(&claim.header, &credentials.key, Duration::MAX));
            let elsewhere = format!("{path}x");
            let other_path = RequestBuilder::new(method, &host, port, &elsewhere).request();
            prop_assert!(!other_path.validate_header(&claim.header, &credentials.key, Duration::MAX));
            let other_key = Key::new(crate::auth::derive_credentials(&[0; 32]).key.as_bytes(), SHA256).unwrap();
            if token != [0; 32] {
                prop_assert!(!signed.validate_header(&claim.header, &other_key, Duration::MAX));
            }
        }

        /// Whatever `Host` and `X-Forwarded-Proto` say, the signed host and
        /// port come out or the request is refused; the host is lower case.
        #[test]
        fn proptest_hawk_signed_host_from_any_host_header(
            host in prop::collection::vec(any::<u8>(), 0..80),
            proto in prop::option::of(prop::collection::vec(any::<u8>(), 0..12)),
        ) {
            let (Ok(host), proto) = (HeaderValue::from_bytes(&host), proto) else {
                return Ok(());
            };
            let mut request = axum::http::Request::builder().uri("/calls?version=0");
            request = request.header(header::HOST, host);
            if let Some(proto) = proto.and_then(|p| HeaderValue::from_bytes(&p).ok()) {
                request = request.header("x-forwarded-proto", proto);
            }
            let (parts, ()) = request.body(()).unwrap().into_parts();
            if let Some(signed) = Signed::from_parts(&parts, 80) {
                prop_assert_eq!(signed.host.to_ascii_lowercase(), signed.host.clone());
                prop_assert_eq!(signed.path.as_str(), "/calls?version=0");
            }
        }
    }
}
