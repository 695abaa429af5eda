//! `DELETE /account`: the user's right to be forgotten.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::delete;

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::error::AppResult;

pub fn routes() -> Router<AppState> {
    Router::new().route("/account", delete(delete_account))
}

/// Forgets the user: every session, push URL, call URL and call.
async fn delete_account(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
) -> AppResult<StatusCode> {
    crate::domain::account::delete(&state, &session.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
