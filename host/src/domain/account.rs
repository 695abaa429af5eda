//! A user's right to be forgotten.

use crate::app::AppState;
use crate::error::AppResult;

/// Removes every session, push URL, call URL and call of the user (for an FxA
/// user, every device signed in with that identity), and drops the user's
/// sessions from this instance's cache with them.
pub async fn delete(state: &AppState, user_id: &str) -> AppResult<()> {
    state.auth.delete_user(state.store.as_ref(), user_id).await
}
