//! `POST /registration` (create a device session, or update its push URLs)
//! and `DELETE /registration` (forget this device's push URLs).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{Authenticated, attach_session_token};
use crate::domain::registration::{self, RequestedPushUrl};
use crate::error::{AppError, AppResult, LoopJson};
use crate::limits::ClientIp;
use crate::store::PushTopic;

pub fn routes() -> Router<AppState> {
    Router::new().route("/registration", post(register).delete(unregister))
}

/// Every shape Mozilla's server accepts: `simplePushURLs` by topic; for the
/// `calls` topic alone `simplePushURL`, in the body or the query string, and
/// the old `simple_push_url` (still sent by Mozilla's load-test client).
#[derive(Deserialize, Default)]
struct RegistrationBody {
    #[serde(rename = "simplePushURLs", default)]
    simple_push_urls: Option<PushUrls>,
    #[serde(rename = "simplePushURL", default)]
    simple_push_url: Option<String>,
    #[serde(rename = "simple_push_url", default)]
    old_simple_push_url: Option<String>,
}

#[derive(Deserialize, Default)]
struct PushUrls {
    #[serde(default)]
    calls: Option<String>,
    #[serde(default)]
    rooms: Option<String>,
}

#[derive(Deserialize)]
struct RegistrationQuery {
    #[serde(rename = "simplePushURL")]
    simple_push_url: Option<String>,
}

/// The push URLs asked for. The `calls` URL may come in several fields;
/// they must agree, and the error names them when they do not.
fn requested_urls(
    body: RegistrationBody,
    query: RegistrationQuery,
) -> AppResult<Vec<RequestedPushUrl>> {
    let PushUrls { calls, rooms } = body.simple_push_urls.unwrap_or_default();
    let calls_fields = [
        ("simplePushURL", body.simple_push_url),
        ("simplePushURL (query)", query.simple_push_url),
        ("simple_push_url", body.old_simple_push_url),
        ("simplePushURLs.calls", calls),
    ];
    let mut given = calls_fields
        .into_iter()
        .filter_map(|(field, url)| url.map(|url| (field, url)));
    let mut urls = Vec::new();
    if let Some((field, url)) = given.next() {
        if let Some((other, _)) = given.find(|(_, other_url)| *other_url != url) {
            return Err(AppError::invalid(
                field,
                format!("{field} and {other} give different calls push URLs; give one"),
            ));
        }
        urls.push(RequestedPushUrl {
            topic: PushTopic::Calls,
            field,
            url,
        });
    }
    if let Some(url) = rooms {
        urls.push(RequestedPushUrl {
            topic: PushTopic::Rooms,
            field: "simplePushURLs.rooms",
            url,
        });
    }
    Ok(urls)
}

async fn register(
    State(state): State<AppState>,
    client: ClientIp,
    authenticated: Option<Authenticated>,
    query: Result<Query<RegistrationQuery>, axum::extract::rejection::QueryRejection>,
    body: Option<LoopJson<RegistrationBody>>,
) -> AppResult<Response> {
    // Before any work: a registration may look up host names and create a session.
    state.limits.registration(client)?;
    let Query(query) = query.map_err(|err| AppError::invalid("query", err.body_text()))?;
    let body = body.map(|LoopJson(body)| body).unwrap_or_default();
    let requested = requested_urls(body, query)?;
    let session = authenticated.map(|Authenticated { session }| session);
    let new_session = registration::register(&state, session.as_ref(), requested).await?;
    let mut response = (StatusCode::OK, Json(serde_json::json!({}))).into_response();
    if let Some(new_session) = new_session {
        attach_session_token(&mut response, &new_session.token_hex);
    }
    Ok(response)
}

async fn unregister(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
) -> AppResult<StatusCode> {
    registration::unregister(&state, &session).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Properties of `POST /registration`'s body; the long run is in `proptest_support`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::body_proptests::{body, content_type, post_body};
    use crate::proptest_support::config;

    const FIELDS: &[&str] = &[
        "simplePushURLs",
        "simplePushURLs.calls",
        "simplePushURLs.rooms",
        "simplePushURL",
        "simple_push_url",
    ];

    /// The checks made before any push URL is validated: a body without a
    /// query, and the same body with the `calls` URL also in the query.
    fn check(body: RegistrationBody) -> AppResult<()> {
        let query = RegistrationQuery {
            simple_push_url: body.simple_push_url.clone(),
        };
        let urls = requested_urls(body, query)?;
        assert!(urls.len() <= 2);
        Ok(())
    }

    proptest! {
        #![proptest_config(config(300))]

        /// The body is optional: none at all is fine, and any body sent is
        /// answered like every other route's.
        #[test]
        fn proptest_registration_bodies_get_loop_answers(
            body in body(FIELDS),
            content_type in content_type(),
        ) {
            post_body(body, content_type, true, check);
        }
    }
}
