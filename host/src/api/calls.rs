//! Calls: Alice checks a call URL and calls through it; Bob's devices are woken
//! by push and list the calls waiting for them.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::call_urls::{
    MAX_SUBJECT_CHARS, live_call_url, live_call_url_and_callee_push_urls, optional_text,
};
use crate::app::AppState;
use crate::auth::Authenticated;
use crate::error::{AppError, AppResult, LoopJson};
use crate::providers::{CallSetupRequest, CallType};
use crate::store::{Call, Timestamp};

/// How long provider tokens stay usable. A call is listed for only
/// `calls.duration_seconds`, but the conversation itself may last much longer
/// and clients reconnect with the same token (Mozilla used a day too).
const PROVIDER_TOKEN_LIFETIME_SECONDS: u32 = 24 * 3600;
/// The longest `channel` name accepted.
const MAX_CHANNEL_CHARS: usize = 64;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/calls", get(list))
        .route("/calls/{token}", get(show).post(place))
}

#[derive(Serialize)]
struct CallUrlInfo {
    #[serde(rename = "calleeFriendlyName")]
    callee_friendly_name: Option<String>,
    #[serde(rename = "urlCreationDate")]
    url_creation_date: Timestamp,
    subject: Option<String>,
}

#[derive(Deserialize)]
struct PlaceCall {
    #[serde(rename = "callType")]
    call_type: Option<String>,
    channel: Option<String>,
    subject: Option<String>,
}

#[derive(Serialize)]
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
}

#[derive(Serialize)]
struct IncomingCalls {
    calls: Vec<IncomingCall>,
}

#[derive(Serialize)]
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
}

/// `GET /calls/{token}`: who Alice would call. Browsers get the call page.
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
    match live_call_url(state, token).await {
        Ok(url) => Json(CallUrlInfo {
            callee_friendly_name: url.issuer,
            url_creation_date: url.created_at,
            subject: url.subject,
        })
        .into_response(),
        Err(err) => err.into_response(),
    }
}

/// `POST /calls/{token}`: Alice calls the owner of the call URL.
async fn place(
    State(state): State<AppState>,
    Path(token): Path<String>,
    LoopJson(body): LoopJson<PlaceCall>,
) -> AppResult<Json<PlacedCall>> {
    let call_type = match body.call_type.as_deref() {
        None => return Err(AppError::missing("callType")),
        Some("audio") => CallType::Audio,
        Some("audio-video") => CallType::AudioVideo,
        Some(_) => {
            return Err(AppError::invalid(
                "callType",
                "must be \"audio\" or \"audio-video\"",
            ));
        }
    };
    let channel =
        optional_text("channel", body.channel, MAX_CHANNEL_CHARS)?.filter(|c| !c.is_empty());
    let subject = optional_text("subject", body.subject, MAX_SUBJECT_CHARS)?;
    // Validated again at call time: the URL may have been revoked or have
    // expired since Alice opened it.
    let (url, push_urls) = live_call_url_and_callee_push_urls(&state, &token).await?;

    let call_id = super::random_token(16);
    let provider = state.providers.provider_for(channel.as_deref()).to_string();
    let setup = state
        .providers
        .setup_call(
            &provider,
            CallSetupRequest {
                call_id: call_id.clone(),
                call_type,
                caller: url.caller_id.clone(),
                callee: url.user_id.clone(),
                channel: channel.clone(),
                caller_display_name: url.caller_id.clone(),
                callee_display_name: url.issuer.clone().unwrap_or_default(),
                token_lifetime_seconds: PROVIDER_TOKEN_LIFETIME_SECONDS,
            },
        )
        .await?;

    let now = crate::clock::now();
    let duration = i64::try_from(state.config.calls.duration_seconds).unwrap_or(i64::MAX / 4);
    let call = Call {
        call_id: call_id.clone(),
        user_id: url.user_id.clone(),
        call_token: url.token.clone(),
        call_url: super::call_urls::call_url_for(&state, &url.token),
        url_creation_date: url.created_at,
        caller_id: url.caller_id.clone(),
        call_type: call_type_name(call_type).into(),
        subject: subject.or(url.subject),
        provider,
        session_id: setup.session_id.clone(),
        callee_token: setup.callee_token,
        api_key: setup.api_key.clone(),
        websocket_token: super::random_token(16),
        progress_url: progress_url(&state.public_url),
        created_at: now,
        expires_at: now.saturating_add(duration),
    };
    state.store.create_call(&call).await?;

    // The call is stored: a device that misses this ping still finds it when it
    // next lists its calls, so push trouble is logged, not reported to Alice.
    state.push.notify(push_urls, call.created_at);

    Ok(Json(PlacedCall {
        call_id,
        websocket_token: call.websocket_token,
        session_id: setup.session_id,
        session_token: setup.caller_token,
        api_key: setup.api_key,
        progress_url: call.progress_url,
    }))
}

/// `GET /calls?version=N`: the calls waiting for this user since version N.
async fn list(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> AppResult<Json<IncomingCalls>> {
    let version = query
        .get("version")
        .ok_or_else(|| AppError::missing("version"))?;
    let version: Timestamp = version
        .trim()
        .parse()
        .map_err(|_| AppError::invalid("version", "must be an integer timestamp"))?;
    let calls = state
        .store
        .calls(&session.user_id, version, crate::clock::now())
        .await?;
    Ok(Json(IncomingCalls {
        calls: calls
            .into_iter()
            .map(|call| IncomingCall {
                call_id: call.call_id,
                call_type: call.call_type,
                caller_id: call.caller_id,
                websocket_token: call.websocket_token,
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
    }))
}

fn call_type_name(call_type: CallType) -> &'static str {
    match call_type {
        CallType::Audio => "audio",
        CallType::AudioVideo => "audio-video",
    }
}

/// `ws(s)://<public host>/websocket`: where clients follow a call's progress.
fn progress_url(public_url: &str) -> String {
    match url::Url::parse(public_url) {
        Ok(mut url) => {
            let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
            // http→ws and https→wss are allowed scheme changes for `url`.
            let _ = url.set_scheme(scheme);
            url.set_query(None);
            url.set_fragment(None);
            let base = url.path().trim_end_matches('/').to_string();
            url.set_path(&format!("{base}/websocket"));
            url.to_string()
        }
        Err(_) => format!("{}/websocket", public_url.replacen("http", "ws", 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::progress_url;

    #[test]
    fn progress_url_follows_the_public_scheme_and_path() {
        assert_eq!(
            progress_url("http://127.0.0.1:5000"),
            "ws://127.0.0.1:5000/websocket"
        );
        assert_eq!(
            progress_url("https://loop.example.com"),
            "wss://loop.example.com/websocket"
        );
        assert_eq!(
            progress_url("https://example.com/loop/"),
            "wss://example.com/loop/websocket"
        );
    }
}
