//! `POST /registration` (create a device session, or update its push URLs)
//! and `DELETE /registration` (forget this device's push URLs).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{Authenticated, attach_session_token};
use crate::domain::registration::{self, RequestedPushUrl};
use crate::error::{AppError, AppResult, LoopJson};
use crate::limits::ClientIp;
use crate::store::PushTopic;

use super::openapi::{BodyTooLarge, HawkRefused, LoopError, StorageUnavailable, TooManyRequests};
use super::service::Empty;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(register, unregister))
}

/// Every shape Mozilla's server accepts: `simplePushURLs` by topic; for the
/// `calls` topic alone `simplePushURL`, in the body or the query string, and
/// the old `simple_push_url` (still sent by Mozilla's load-test client).
#[derive(Deserialize, Default, ToSchema)]
struct RegistrationBody {
    /// The device's push URLs by topic.
    #[serde(rename = "simplePushURLs", default)]
    simple_push_urls: Option<PushUrls>,
    /// The `calls` push URL (the same as `simplePushURLs.calls`).
    #[serde(rename = "simplePushURL", default)]
    simple_push_url: Option<String>,
    /// The `calls` push URL, under its old name.
    #[serde(rename = "simple_push_url", default)]
    #[schema(deprecated)]
    old_simple_push_url: Option<String>,
}

/// Push URLs must be `https` (or `http` to an allowed host) URLs of the push
/// service; the server refuses others before calling them.
#[derive(Deserialize, Default, ToSchema)]
struct PushUrls {
    /// Pinged when a call comes in.
    #[serde(default)]
    calls: Option<String>,
    /// Kept for clients that register one; Loop has no rooms.
    #[serde(default)]
    rooms: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RegistrationQuery {
    /// The `calls` push URL, as in the body's `simplePushURL`.
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

#[utoipa::path(
    post,
    path = "/registration",
    tag = "sessions",
    summary = "Create a device session, or update its push URLs",
    description = "Without authentication: creates a device session and answers its token in \
        `Hawk-Session-Token`, once (the Hawk id and key derive from it; see the `hawk` \
        security scheme). With Hawk: sets the session's push URLs. The `calls` push URL may \
        come in several fields; they must agree.",
    security((), ("hawk" = [])),
    params(RegistrationQuery),
    request_body(content = Option<RegistrationBody>, description = "Optional: the device's push URLs"),
    responses(
        (status = 200, description = "Registered", body = Empty,
            headers(("Hawk-Session-Token" = String,
                description = "A new session's token (64 hex digits), on unauthenticated requests only"))),
        (status = 400, description = "Malformed JSON (errno 106) or an invalid or disagreeing push URL \
            (107); the message names the field", body = LoopError),
        (status = 401, description = "Invalid Hawk authentication (errno 110)", body = LoopError),
        (status = 406, description = "A body that is not `application/json` (errno 106)", body = LoopError),
        BodyTooLarge,
        TooManyRequests,
        StorageUnavailable,
    ),
)]
async fn register(
    State(state): State<AppState>,
    client: ClientIp,
    authenticated: Option<Authenticated>,
    query: Result<Query<RegistrationQuery>, axum::extract::rejection::QueryRejection>,
    // No body, `null` and `{}` all register without push URLs.
    body: Option<LoopJson<Option<RegistrationBody>>>,
) -> AppResult<Response> {
    // Before any work: a registration may look up host names and create a session.
    state.limits.registration(client)?;
    let Query(query) = query.map_err(|err| AppError::invalid("query", err.body_text()))?;
    let body = body.and_then(|LoopJson(body)| body).unwrap_or_default();
    let requested = requested_urls(body, query)?;
    let session = authenticated.map(|Authenticated { session }| session);
    let new_session = registration::register(&state, session.as_ref(), requested).await?;
    let mut response = (StatusCode::OK, Json(Empty {})).into_response();
    if let Some(new_session) = new_session {
        attach_session_token(&mut response, &new_session.token_hex);
    }
    Ok(response)
}

#[utoipa::path(
    delete,
    path = "/registration",
    tag = "sessions",
    summary = "Forget this device's push URLs",
    description = "The session stays; the device is no longer woken for calls.",
    security(("hawk" = [])),
    responses(
        (status = 204, description = "Forgotten"),
        HawkRefused,
        StorageUnavailable,
    ),
)]
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
