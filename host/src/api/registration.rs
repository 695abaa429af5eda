//! `POST /registration` (create a device session, or update its push URLs)
//! and `DELETE /registration` (forget this device's push URLs).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{Authenticated, attach_session_token};
use crate::error::{AppError, AppResult, LoopJson};
use crate::push::validate_push_url;
use crate::store::{PushTopic, PushUrl};

pub fn routes() -> Router<AppState> {
    Router::new().route("/registration", post(register).delete(unregister))
}

#[derive(Deserialize)]
struct RegistrationBody {
    #[serde(rename = "simplePushURLs", default)]
    simple_push_urls: Option<PushUrls>,
    /// Older clients register one URL, for the `calls` topic.
    #[serde(rename = "simplePushURL", default)]
    simple_push_url: Option<String>,
}

#[derive(Deserialize)]
struct PushUrls {
    #[serde(default)]
    calls: Option<String>,
    #[serde(default)]
    rooms: Option<String>,
}

/// `(topic, field name for errors, url)`
type Registration = Vec<(PushTopic, &'static str, String)>;

fn requested_urls(body: RegistrationBody) -> AppResult<Registration> {
    let mut urls = Vec::new();
    if let Some(PushUrls { calls, rooms }) = body.simple_push_urls {
        if let Some(url) = calls {
            urls.push((PushTopic::Calls, "simplePushURLs.calls", url));
        }
        if let Some(url) = rooms {
            urls.push((PushTopic::Rooms, "simplePushURLs.rooms", url));
        }
    }
    if let Some(url) = body.simple_push_url {
        if urls.iter().any(|(topic, ..)| *topic == PushTopic::Calls) {
            return Err(AppError::invalid(
                "simplePushURL",
                "give the calls URL either as simplePushURL or as simplePushURLs.calls, not both",
            ));
        }
        urls.push((PushTopic::Calls, "simplePushURL", url));
    }
    if urls.is_empty() {
        return Err(AppError::missing("simplePushURLs"));
    }
    Ok(urls)
}

async fn register(
    State(state): State<AppState>,
    authenticated: Option<Authenticated>,
    LoopJson(body): LoopJson<RegistrationBody>,
) -> AppResult<Response> {
    let urls = requested_urls(body)?;
    // Every URL is checked before anything is written: a refused URL leaves
    // neither a session nor a half-updated registration behind.
    let mut validated = Vec::with_capacity(urls.len());
    for (topic, field, url) in urls {
        let url = validate_push_url(&state.config.push, field, &url).await?;
        validated.push((topic, url));
    }
    let push_urls: Vec<PushUrl> = validated
        .into_iter()
        .map(|(topic, url)| PushUrl {
            topic,
            url: url.into(),
        })
        .collect();
    let new_token = match authenticated {
        Some(Authenticated { session }) => {
            state
                .store
                .set_push_urls(&session.id_hmac, &push_urls)
                .await?;
            None
        }
        // A new device: its session and push URLs are stored together.
        None => Some(
            state
                .auth
                .create_session(state.store.as_ref(), None, &push_urls)
                .await?
                .token_hex,
        ),
    };
    let mut response = (StatusCode::OK, Json(serde_json::json!({}))).into_response();
    if let Some(token) = new_token {
        attach_session_token(&mut response, &token);
    }
    Ok(response)
}

async fn unregister(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
) -> AppResult<StatusCode> {
    state.store.delete_push_urls(&session.id_hmac).await?;
    Ok(StatusCode::NO_CONTENT)
}
