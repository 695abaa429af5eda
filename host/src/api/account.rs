//! `DELETE /account`: the user's right to be forgotten.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::error::AppResult;

use super::openapi::{HawkRefused, StorageUnavailable};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(delete_account))
}

/// Forgets the user: every session, push URL, call URL and call.
#[utoipa::path(
    delete,
    path = "/account",
    tag = "sessions",
    summary = "Forget the user",
    description = "Deletes every session, push URL, call URL and call of the session's user; \
        this session's credentials stop working.",
    security(("hawk" = [])),
    responses(
        (status = 204, description = "Forgotten"),
        HawkRefused,
        StorageUnavailable,
    ),
)]
async fn delete_account(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
) -> AppResult<StatusCode> {
    crate::domain::account::delete(&state, &session.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
