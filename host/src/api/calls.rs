//! Calls: Alice checks a call URL and calls through it; Bob's devices are woken
//! by push and list the calls waiting for them.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::domain::ice::IceServer;
use crate::domain::{call_urls, calls};
use crate::error::{AppError, AppResult, LoopJson};
use crate::limits::ClientIp;
use crate::providers::CallType;
use crate::store::{Side, Timestamp};

use super::openapi::{BodyTooLarge, HawkRefused, LoopError, StorageUnavailable, TooManyRequests};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show, place))
}

#[derive(Serialize, ToSchema)]
struct CallUrlInfo {
    #[serde(rename = "calleeFriendlyName")]
    callee_friendly_name: Option<String>,
    #[serde(rename = "urlCreationDate")]
    url_creation_date: Timestamp,
    subject: Option<String>,
}

#[derive(Deserialize, ToSchema)]
struct PlaceCall {
    /// Required: "audio" or "audio-video".
    #[serde(rename = "callType")]
    #[schema(pattern = "^(audio|audio-video)$")]
    call_type: Option<String>,
    /// The provider channel to place the call on (a `[providers]` channel);
    /// unset: the default provider.
    channel: Option<String>,
    /// What the call is about.
    subject: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct PlacedCall {
    #[serde(rename = "callId")]
    call_id: String,
    #[serde(rename = "websocketToken")]
    websocket_token: String,
    #[serde(rename = "sessionId")]
    session_id: String,
    #[serde(rename = "sessionToken")]
    session_token: String,
    #[serde(rename = "apiKey")]
    api_key: String,
    #[serde(rename = "progressURL")]
    progress_url: String,
    /// STUN/TURN servers for the caller's side.
    #[serde(rename = "iceServers")]
    ice_servers: Vec<IceServer>,
}

#[derive(Serialize, ToSchema)]
struct IncomingCalls {
    calls: Vec<IncomingCall>,
}

#[derive(Serialize, ToSchema)]
struct IncomingCall {
    #[serde(rename = "callId")]
    call_id: String,
    #[serde(rename = "callType")]
    call_type: String,
    #[serde(rename = "callerId")]
    caller_id: String,
    #[serde(rename = "websocketToken")]
    websocket_token: String,
    #[serde(rename = "apiKey")]
    api_key: String,
    #[serde(rename = "sessionId")]
    session_id: String,
    #[serde(rename = "sessionToken")]
    session_token: String,
    #[serde(rename = "progressURL")]
    progress_url: String,
    subject: Option<String>,
    #[serde(rename = "callUrl")]
    call_url: String,
    #[serde(rename = "callToken")]
    call_token: String,
    #[serde(rename = "urlCreationDate")]
    url_creation_date: Timestamp,
    /// STUN/TURN servers for the callee's side.
    #[serde(rename = "iceServers")]
    ice_servers: Vec<IceServer>,
}

/// `GET /calls/{token}`: who Alice would call. Browsers get the call page.
#[utoipa::path(
    get,
    path = "/calls/{token}",
    operation_id = "call_url_info",
    tag = "calls",
    summary = "Who a call URL calls, or the call page in a browser",
    description = "API clients get who the call URL calls. A browser, whose `Accept` lists \
        `text/html` before `application/json`, gets the call page (as `/c/{token}`), and \
        errors as pages with the same status. The answer varies on `Accept`.",
    params(("token" = String, Path, description = "The call URL's token")),
    responses(
        (status = 200, description = "Who the call URL calls (JSON), or the call page (HTML)",
            content((CallUrlInfo = "application/json"), (String = "text/html"))),
        (status = 404, description = "Unknown or revoked call URL (errno 105)",
            content((LoopError = "application/json"), (String = "text/html"))),
        (status = 410, description = "The call URL has expired (errno 111)",
            content((LoopError = "application/json"), (String = "text/html"))),
        (status = 503, description = "Storage is unavailable (errno 201); `Retry-After` says when to retry",
            content((LoopError = "application/json"), (String = "text/html"))),
    ),
)]
async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut response = if super::pages::wants_html(&headers) {
        super::pages::call_page(&state, &token).await
    } else {
        call_url_info(&state, &token).await
    };
    // The same URL answers JSON or HTML: caches must key on Accept.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

async fn call_url_info(state: &AppState, token: &str) -> Response {
    match call_urls::live(state, token).await {
        Ok(url) => Json(CallUrlInfo {
            callee_friendly_name: url.issuer,
            url_creation_date: url.created_at,
            subject: url.subject,
        })
        .into_response(),
        Err(err) => err.into_response(),
    }
}

/// `callType` as Loop clients spell it.
fn call_type(value: Option<&str>) -> AppResult<CallType> {
    match value {
        None => Err(AppError::missing("callType")),
        Some("audio") => Ok(CallType::Audio),
        Some("audio-video") => Ok(CallType::AudioVideo),
        Some(_) => Err(AppError::invalid(
            "callType",
            "must be \"audio\" or \"audio-video\"",
        )),
    }
}

/// `POST /calls/{token}`: Alice calls the owner of the call URL.
#[utoipa::path(
    post,
    path = "/calls/{token}",
    operation_id = "place_call",
    tag = "calls",
    summary = "Call the owner of a call URL",
    description = "Anyone holding the call URL may call; no authentication. The callee's \
        devices are woken by push, and both sides then follow the call on the progress \
        websocket (`progressURL`).",
    params(("token" = String, Path, description = "The call URL's token")),
    request_body = PlaceCall,
    responses(
        (status = 200, description = "The call, with the caller's side of the provider session",
            body = PlacedCall),
        (status = 400, description = "Malformed JSON (errno 106), an invalid field such as an unknown \
            `callType` or `channel` (107), or `callType` missing (108); the message names the field",
            body = LoopError),
        (status = 404, description = "Unknown or revoked call URL (errno 105)", body = LoopError),
        (status = 406, description = "The body is not `application/json` (errno 106)", body = LoopError),
        (status = 410, description = "The call URL has expired (errno 111)", body = LoopError),
        BodyTooLarge,
        TooManyRequests,
        (status = 503, description = "Storage or the call provider is unavailable (errno 201); \
            `Retry-After` says when to retry", body = LoopError),
    ),
)]
async fn place(
    State(state): State<AppState>,
    client: ClientIp,
    Path(token): Path<String>,
    LoopJson(body): LoopJson<PlaceCall>,
) -> AppResult<Json<PlacedCall>> {
    // Each call rings the callee's devices and runs a provider plugin.
    state.limits.call(client, &token)?;
    let request = calls::CallRequest {
        call_type: call_type(body.call_type.as_deref())?,
        channel: body.channel,
        subject: body.subject,
    };
    let calls::PlacedCall { call, caller_token } = calls::place(&state, &token, request).await?;
    let ice_servers = calls::ice_servers(&state, &call, Side::Caller);
    Ok(Json(PlacedCall {
        call_id: call.call_id,
        websocket_token: call.caller_websocket_token,
        session_id: call.session_id,
        session_token: caller_token,
        api_key: call.api_key,
        progress_url: call.progress_url,
        ice_servers,
    }))
}

/// The longest `Prefer: wait` honoured.
const MAX_WAIT_SECONDS: u64 = 30;

/// `Prefer: wait=N` (RFC 7240), capped at `MAX_WAIT_SECONDS`.
fn preferred_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .find_map(|preference| {
            let (name, value) = preference.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .map(|seconds| seconds.min(MAX_WAIT_SECONDS))
}

/// `GET /calls?version=N`: the calls waiting for this user since version N.
/// With `Prefer: wait=S` (browsers, which have no push), an empty answer
/// waits up to S seconds for a call to be placed.
#[utoipa::path(
    get,
    path = "/calls",
    tag = "calls",
    summary = "The calls waiting for the session's user",
    description = "The calls placed to the user since `version` that are still ringing. \
        With `Prefer: wait=S` (browsers, which have no push) an empty answer waits up to \
        S seconds (at most 30) for a call, and says `Preference-Applied: wait=S`.",
    security(("hawk" = [])),
    params(
        ("version" = i64, Query, description = "Unix time (seconds): calls placed since then"),
        ("Prefer" = Option<String>, Header, description = "`wait=S`: long-poll up to S seconds (at most 30)"),
    ),
    responses(
        (status = 200, description = "The waiting calls", body = IncomingCalls),
        (status = 400, description = "`version` missing (errno 108) or not an integer (107)", body = LoopError),
        HawkRefused,
        StorageUnavailable,
    ),
)]
async fn list(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let version = query
        .get("version")
        .ok_or_else(|| AppError::missing("version"))?;
    let version: Timestamp = version
        .trim()
        .parse()
        .map_err(|_| AppError::invalid("version", "must be an integer timestamp"))?;
    let wait = preferred_wait(&headers);
    let waiting = calls::incoming(
        &state,
        &session.user_id,
        version,
        wait.map(std::time::Duration::from_secs),
    )
    .await?;
    let mut response = Json(IncomingCalls {
        calls: waiting
            .into_iter()
            .map(|call| IncomingCall {
                ice_servers: calls::ice_servers(&state, &call, Side::Callee),
                call_id: call.call_id,
                call_type: call.call_type,
                caller_id: call.caller_id,
                websocket_token: call.callee_websocket_token,
                api_key: call.api_key,
                session_id: call.session_id,
                session_token: call.callee_token,
                progress_url: call.progress_url,
                subject: call.subject,
                call_url: call.call_url,
                call_token: call.call_token,
                url_creation_date: call.url_creation_date,
            })
            .collect(),
    })
    .into_response();
    if let Some(wait) = wait {
        let applied = HeaderValue::from_str(&format!("wait={wait}")).expect("ASCII");
        response.headers_mut().insert("preference-applied", applied);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::preferred_wait;

    #[test]
    fn prefer_wait_is_read_and_capped() {
        let prefer = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", HeaderValue::from_static(value));
            preferred_wait(&headers)
        };
        assert_eq!(prefer("wait=25"), Some(25));
        assert_eq!(prefer("respond-async, wait=5"), Some(5));
        assert_eq!(prefer("wait=3600"), Some(30));
        assert_eq!(prefer("return=minimal"), None);
        assert_eq!(prefer("wait=soon"), None);
        assert_eq!(preferred_wait(&HeaderMap::new()), None);
    }
}

/// Properties of `POST /calls/{token}`'s body and path; the long run is in
/// `proptest_support`.
#[cfg(test)]
mod proptests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::*;
    use crate::api::body_proptests::{body, content_type, post_body};
    use crate::proptest_support::{block_on, config};

    /// The checks `place` makes before it looks the call URL up.
    fn check(body: PlaceCall) -> AppResult<()> {
        call_type(body.call_type.as_deref())?;
        calls::checked_text(body.channel, body.subject)?;
        Ok(())
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn proptest_place_call_bodies_get_loop_answers(
            body in body(&["callType", "channel", "subject"]),
            content_type in content_type(),
        ) {
            post_body(body, content_type, false, check);
        }

        /// Any bytes as the token segment of `/calls/{token}`, percent-encoded
        /// or raw, reach the token check or get a Loop error: 404/105 for an
        /// implausible token, 400 for a segment that is not UTF-8.
        #[test]
        fn proptest_call_tokens_from_any_path_segment(
            segment in prop::collection::vec(any::<u8>(), 0..100),
            raw in any::<bool>(),
        ) {
            let path = if raw {
                let kept: String = segment
                    .iter()
                    .map(|&b| b as char)
                    .filter(|c| c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#' | '%'))
                    .collect();
                format!("/calls/{kept}")
            } else {
                let encoded: String = segment.iter().map(|b| format!("%{b:02X}")).collect();
                format!("/calls/{encoded}")
            };
            let routes = axum::Router::new().route(
                "/calls/{token}",
                axum::routing::get(|Path(token): Path<String>| async move {
                    if call_urls::is_plausible_token(&token) {
                        Ok(StatusCode::OK)
                    } else {
                        Err(call_urls::unknown())
                    }
                }),
            );
            let app = crate::api::with_middleware(routes, tower_http::cors::AllowOrigin::list([]));
            // What no client could send is no input.
            let Ok(request) = Request::get(&path).body(Body::empty()) else {
                return Ok(());
            };
            let (status, answer) = block_on(async move {
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
                (status, body)
            });
            if status == StatusCode::OK {
                return Ok(());
            }
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            let errno = answer["errno"].as_u64();
            prop_assert!(
                matches!((status.as_u16(), errno), (404, Some(105 | 999)) | (400, Some(107))),
                "{} {}", status, answer
            );
        }
    }
}
