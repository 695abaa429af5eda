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

/// Removes every session, push URL, call URL and call of the user: for an
/// FxA user that is every device signed in with that identity.
async fn delete_account(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
) -> AppResult<StatusCode> {
    state.store.delete_user(&session.user_id).await?;
    state.auth.forget_user(&session.user_id);
    Ok(StatusCode::NO_CONTENT)
}
