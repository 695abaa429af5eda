//! The REST API: one module per resource. STUB.

use axum::Router;

use crate::app::AppState;

pub fn router(state: AppState) -> Router {
    Router::new().with_state(state)
}
