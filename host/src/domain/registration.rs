//! Registering a device: a new device gets a Hawk session together with the
//! push URLs that wake it; a registered device replaces its push URLs.

use crate::app::AppState;
use crate::auth::NewSession;
use crate::error::AppResult;
use crate::store::{PushTopic, PushUrl, Session};

/// A push URL as the client gave it, with the request field it came from
/// (named in errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedPushUrl {
    pub topic: PushTopic,
    pub field: &'static str,
    pub url: String,
}

/// Registers the device behind `session`, or a new device when `None`; the
/// new device's session token is returned, to be handed to it once. Every
/// URL is checked before anything is written: a refused URL leaves neither a
/// session nor a half-updated registration behind. No push URL at all is
/// fine (a client without push polls for its calls).
pub async fn register(
    state: &AppState,
    session: Option<&Session>,
    requested: Vec<RequestedPushUrl>,
) -> AppResult<Option<NewSession>> {
    let mut push_urls = Vec::with_capacity(requested.len());
    for RequestedPushUrl { topic, field, url } in requested {
        let url = state.push.rules().validate(&state.net, field, &url).await?;
        push_urls.push(PushUrl {
            topic,
            url: url.into(),
        });
    }
    match session {
        // Topics not given keep their URL, as with Mozilla's server.
        Some(session) => {
            state.store.set_push_urls(session, &push_urls).await?;
            Ok(None)
        }
        None => Ok(Some(
            state
                .auth
                .create_session(state.store.as_ref(), None, &push_urls)
                .await?,
        )),
    }
}

/// Forgets this device's push URLs; its session stays.
pub async fn unregister(state: &AppState, session: &Session) -> AppResult<()> {
    Ok(state.store.delete_push_urls(session).await?)
}
