//! Call URLs: the links a callee hands out so that anyone holding one can call them.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::domain::call_urls::{self, CallUrlFields};
use crate::error::{AppResult, LoopJson};
use crate::limits::ClientIp;
use crate::store::Timestamp;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/call-url", get(list).post(create))
        .route("/call-url/{token}", put(update).delete(revoke))
}

/// The body of `POST /call-url` and `PUT /call-url/{token}`: the same fields,
/// required or not depending on the route.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallUrlBody {
    caller_id: Option<String>,
    /// Hours.
    expires_in: Option<u64>,
    issuer: Option<String>,
    subject: Option<String>,
}

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

#[derive(Serialize)]
struct CreatedCallUrl {
    #[serde(rename = "callUrl")]
    call_url: String,
    #[serde(rename = "callToken")]
    call_token: String,
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

#[derive(Serialize)]
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

#[derive(Serialize)]
struct UpdatedCallUrl {
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

async fn create(
    State(state): State<AppState>,
    client: ClientIp,
    Authenticated { session }: Authenticated,
    LoopJson(body): LoopJson<CallUrlBody>,
) -> AppResult<Json<CreatedCallUrl>> {
    state.limits.call_url_creation(client, &session.id_hmac)?;
    let (call_url, link) = call_urls::create(&state, &session.user_id, body.into()).await?;
    Ok(Json(CreatedCallUrl {
        call_url: link,
        call_token: call_url.token,
        expires_at: call_url.expires_at,
    }))
}

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

async fn update(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    Path(token): Path<String>,
    LoopJson(body): LoopJson<CallUrlBody>,
) -> AppResult<Json<UpdatedCallUrl>> {
    let expires_at = call_urls::update(&state, &session.user_id, &token, body.into()).await?;
    Ok(Json(UpdatedCallUrl { expires_at }))
}

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
