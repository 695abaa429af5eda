//! Call URLs: the links a callee hands out so that anyone holding one can call them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::domain::call_urls::{self, CallUrlFields};
use crate::error::{AppResult, LoopJson};
use crate::limits::ClientIp;
use crate::store::Timestamp;

use super::openapi::{BodyTooLarge, HawkRefused, LoopError, StorageUnavailable, TooManyRequests};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update, revoke))
}

/// The body of `POST /call-url` and `PUT /call-url/{token}`: the same fields,
/// required or not depending on the route.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CallUrlBody {
    /// Who the call URL is for, shown to the callee when a call comes
    /// through it. Required by `POST /call-url`: at most 255 characters, not
    /// blank, no control characters (as `issuer` and `subject`).
    #[schema(
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    caller_id: Option<String>,
    /// Hours until the call URL expires, at most `call_urls.max_ttl_hours`
    /// (default `call_urls.default_ttl_hours`).
    #[schema(minimum = 1)]
    expires_in: Option<u64>,
    /// The callee's name, shown to callers; at most 255 characters.
    #[schema(max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    issuer: Option<String>,
    /// What the calls are about; at most 124 characters.
    #[schema(max_length = 124, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    subject: Option<String>,
}

/// `POST /call-url`'s body: a [`CallUrlBody`] whose `callerId` is required.
/// Absent or `null`, the domain answers 400/108 naming it, as before; the
/// document says it is required so that generated clients send it.
#[derive(Deserialize)]
#[serde(transparent)]
struct NewCallUrl(CallUrlBody);

impl utoipa::PartialSchema for NewCallUrl {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::Schema;
        let mut schema = CallUrlBody::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.required.push("callerId".into());
        }
        schema
    }
}

impl ToSchema for NewCallUrl {}

impl From<CallUrlBody> for CallUrlFields {
    fn from(body: CallUrlBody) -> Self {
        Self {
            caller_id: body.caller_id,
            expires_in: body.expires_in,
            issuer: body.issuer,
            subject: body.subject,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct CreatedCallUrl {
    /// The link to hand out (`call_urls.web_app_url`).
    #[serde(rename = "callUrl")]
    call_url: String,
    #[serde(rename = "callToken")]
    call_token: String,
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
struct ListedCallUrl {
    #[serde(rename = "callToken")]
    call_token: String,
    #[serde(rename = "callerId")]
    caller_id: String,
    timestamp: Timestamp,
    issuer: Option<String>,
    subject: Option<String>,
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
struct UpdatedCallUrl {
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

#[utoipa::path(
    post,
    path = "/call-url",
    tag = "call URLs",
    summary = "Create a call URL",
    description = "A new link anyone can call the session's user through, until it expires or is revoked.",
    security(("hawk" = [])),
    request_body = NewCallUrl,
    responses(
        (status = 200, description = "The new call URL", body = CreatedCallUrl,
            links(
                ("CallPage" = (operation_id = "call_page",
                    parameters(("token" = "$response.body#/callToken")))),
                ("CallUrlInfo" = (operation_id = "call_url_info",
                    parameters(("token" = "$response.body#/callToken")))),
                ("PlaceCall" = (operation_id = "place_call",
                    parameters(("token" = "$response.body#/callToken")))),
                ("UpdateCallUrl" = (operation_id = "update_call_url",
                    parameters(("token" = "$response.body#/callToken")))),
                ("RevokeCallUrl" = (operation_id = "revoke_call_url",
                    parameters(("token" = "$response.body#/callToken")))),
            )),
        (status = 400, description = "Malformed JSON (errno 106), an invalid field (107) or \
            `callerId` missing (108); the message names the field", body = LoopError),
        HawkRefused,
        (status = 406, description = "The body is not `application/json` (errno 106)", body = LoopError),
        BodyTooLarge,
        TooManyRequests,
        StorageUnavailable,
    ),
)]
async fn create(
    State(state): State<AppState>,
    client: ClientIp,
    Authenticated { session }: Authenticated,
    LoopJson(NewCallUrl(body)): LoopJson<NewCallUrl>,
) -> AppResult<Json<CreatedCallUrl>> {
    state.limits.call_url_creation(client, &session.id_hmac)?;
    let (call_url, link) = call_urls::create(&state, &session.user_id, body.into()).await?;
    Ok(Json(CreatedCallUrl {
        call_url: link,
        call_token: call_url.token,
        expires_at: call_url.expires_at,
    }))
}

#[utoipa::path(
    get,
    path = "/call-url",
    tag = "call URLs",
    summary = "The session's user's live call URLs",
    security(("hawk" = [])),
    responses(
        (status = 200, description = "Every call URL of the user that has not expired or been revoked",
            body = Vec<ListedCallUrl>),
        HawkRefused,
        StorageUnavailable,
    ),
)]
async fn list(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
) -> AppResult<Json<Vec<ListedCallUrl>>> {
    let urls = call_urls::list(&state, &session.user_id).await?;
    Ok(Json(
        urls.into_iter()
            .map(|url| ListedCallUrl {
                call_token: url.token,
                caller_id: url.caller_id,
                timestamp: url.created_at,
                issuer: url.issuer,
                subject: url.subject,
                expires_at: url.expires_at,
            })
            .collect(),
    ))
}

#[utoipa::path(
    put,
    path = "/call-url/{token}",
    operation_id = "update_call_url",
    tag = "call URLs",
    summary = "Change a call URL",
    description = "Changes the fields given; `expiresIn` counts from now.",
    security(("hawk" = [])),
    params(("token" = String, Path, description = "The call URL's token (`callToken`)")),
    request_body = CallUrlBody,
    responses(
        (status = 200, description = "The call URL's expiry afterwards", body = UpdatedCallUrl),
        (status = 400, description = "Malformed JSON (errno 106) or an invalid field (107); \
            the message names the field", body = LoopError),
        HawkRefused,
        (status = 403, description = "The call URL belongs to someone else (errno 110)", body = LoopError),
        (status = 404, description = "Unknown or revoked call URL (errno 105)", body = LoopError),
        (status = 406, description = "The body is not `application/json` (errno 106)", body = LoopError),
        (status = 410, description = "The call URL has expired (errno 111)", body = LoopError),
        BodyTooLarge,
        StorageUnavailable,
    ),
)]
async fn update(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    Path(token): Path<String>,
    LoopJson(body): LoopJson<CallUrlBody>,
) -> AppResult<Json<UpdatedCallUrl>> {
    let expires_at = call_urls::update(&state, &session.user_id, &token, body.into()).await?;
    Ok(Json(UpdatedCallUrl { expires_at }))
}

#[utoipa::path(
    delete,
    path = "/call-url/{token}",
    operation_id = "revoke_call_url",
    tag = "call URLs",
    summary = "Revoke a call URL",
    description = "It answers 404 (errno 105) from then on.",
    security(("hawk" = [])),
    params(("token" = String, Path, description = "The call URL's token (`callToken`)")),
    responses(
        (status = 204, description = "Revoked"),
        HawkRefused,
        (status = 403, description = "The call URL belongs to someone else (errno 110)", body = LoopError),
        (status = 404, description = "Unknown or already revoked call URL (errno 105)", body = LoopError),
        StorageUnavailable,
    ),
)]
async fn revoke(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    Path(token): Path<String>,
) -> AppResult<StatusCode> {
    call_urls::revoke(&state, &session.user_id, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Properties of the call URL bodies; the long run is in `proptest_support`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::body_proptests::{body, content_type, post_body};
    use crate::error::AppResult;
    use crate::proptest_support::config;

    const FIELDS: &[&str] = &["callerId", "expiresIn", "issuer", "subject"];

    fn create(body: CallUrlBody) -> AppResult<()> {
        CallUrlFields::from(body).check(720, true)
    }

    fn update(body: CallUrlBody) -> AppResult<()> {
        CallUrlFields::from(body).check(720, false)
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn proptest_call_url_bodies_get_loop_answers(
            body in body(FIELDS),
            content_type in content_type(),
            creating in any::<bool>(),
        ) {
            post_body(body, content_type, false, if creating { create } else { update });
        }
    }
}
