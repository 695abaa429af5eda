//! Calls: Alice calls through a call URL (a provider session and tokens are
//! made, the callee's side is stored, the callee's devices are pinged); the
//! callee's devices then list the calls waiting for them.

use std::time::Duration;

use super::call_urls::{self, MAX_SUBJECT_CHARS, optional_text};
use super::ice::IceServer;
use crate::app::AppState;
use crate::error::AppResult;
use crate::providers::{CallSetupRequest, CallType};
use crate::store::{Call, Side, Timestamp};

/// How long provider tokens stay usable. A call is listed for only
/// `calls.duration_seconds`, but the conversation itself may last much longer
/// and clients reconnect with the same token (Mozilla used a day too).
const PROVIDER_TOKEN_LIFETIME_SECONDS: u32 = 24 * 3600;
/// The longest `channel` name accepted.
const MAX_CHANNEL_CHARS: usize = 64;
/// Call ids and websocket tokens: 128 random bits each.
const CALL_TOKEN_BYTES: usize = 16;

/// What the caller asks for.
#[derive(Debug)]
pub struct CallRequest {
    pub call_type: CallType,
    /// Picks the provider (`providers.channels`); none or empty: the default.
    pub channel: Option<String>,
    pub subject: Option<String>,
}

/// What the caller gets: the stored call and the caller's provider token.
pub struct PlacedCall {
    pub call: Call,
    pub caller_token: String,
}

/// Places a call through the call URL `token`.
pub async fn place(state: &AppState, token: &str, request: CallRequest) -> AppResult<PlacedCall> {
    let (channel, subject) = checked_text(request.channel, request.subject)?;
    // Validated again at call time: the URL may have been revoked or have
    // expired since Alice opened it.
    let (url, push_urls) = call_urls::live_with_callee_push_urls(state, token).await?;

    let call_id = super::time_ordered_token(CALL_TOKEN_BYTES);
    let (provider, setup) = state
        .providers()
        .serve_call(CallSetupRequest {
            call_id: call_id.clone(),
            call_type: request.call_type,
            caller: url.caller_id.clone(),
            callee: url.user_id.clone(),
            channel: channel.clone(),
            caller_display_name: url.caller_id.clone(),
            callee_display_name: url.issuer.clone().unwrap_or_default(),
            token_lifetime_seconds: PROVIDER_TOKEN_LIFETIME_SECONDS,
        })
        .await?;

    let now = crate::clock::now();
    let duration = i64::try_from(state.config().calls.duration_seconds).unwrap_or(i64::MAX / 4);
    let call = Call {
        call_id,
        call_url: call_urls::link(state, &url.token),
        user_id: url.user_id,
        call_token: url.token,
        url_creation_date: url.created_at,
        caller_id: url.caller_id,
        call_type: call_type_name(request.call_type).into(),
        subject: subject.or(url.subject),
        channel,
        provider,
        session_id: setup.session_id,
        callee_token: setup.callee_token,
        api_key: setup.api_key,
        caller_websocket_token: super::random_token(CALL_TOKEN_BYTES),
        callee_websocket_token: super::random_token(CALL_TOKEN_BYTES),
        progress_url: state.progress_url.to_string(),
        created_at: now,
        expires_at: now.saturating_add(duration),
    };
    state.store.create_call(&call).await?;

    // The call is stored: a device that misses this ping still finds it when it
    // next lists its calls, so push trouble is logged, not reported to Alice.
    state.push.notify(push_urls, call.created_at);
    // Browsers have no push: their long-polls of `GET /calls` wake up here.
    let bus = state.store.bus().clone();
    let topic = incoming_topic(&call.user_id);
    tokio::spawn(async move {
        if let Err(err) = bus.publish(&topic, "").await {
            tracing::warn!(error = %err, "waking long-polls for a new call failed");
        }
    });

    Ok(PlacedCall {
        call,
        caller_token: setup.caller_token,
    })
}

/// The caller's `channel` (empty means none) and `subject`, checked.
pub(crate) fn checked_text(
    channel: Option<String>,
    subject: Option<String>,
) -> AppResult<(Option<String>, Option<String>)> {
    let channel =
        optional_text("channel", channel, MAX_CHANNEL_CHARS)?.filter(|channel| !channel.is_empty());
    let subject = optional_text("subject", subject, MAX_SUBJECT_CHARS)?;
    Ok((channel, subject))
}

/// Provider sessions the end sweep hands to their plugins per round.
const ENDED_SESSIONS_PER_ROUND: i64 = 100;

/// Tells the call's provider, in the background, that the call `call_id`
/// has just been terminated. Whichever instance claims it first does it.
pub fn end_provider_session(state: &AppState, call_id: &str) {
    let (state, call_id) = (state.clone(), call_id.to_owned());
    tokio::spawn(async move { end_provider_sessions(&state, Some(&call_id)).await });
}

/// Every `database.purge_interval_seconds`, ends the provider sessions of
/// calls that ended without a termination this instance saw: expired
/// unanswered, terminated while the instance that did it went down, or past
/// the retention of unfinished calls.
pub fn spawn_session_end_sweep(state: AppState) -> tokio::task::JoinHandle<()> {
    let interval = Duration::from_secs(state.config().database.purge_interval_seconds.max(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            while end_provider_sessions(&state, None).await == ENDED_SESSIONS_PER_ROUND as usize {}
        }
    })
}

/// Claims ended sessions (one call's, or any) and calls each plugin's
/// `end-session`. Best effort: a failure is logged, never retried, so a
/// vendor that is down cannot pile up work. Returns how many were claimed.
async fn end_provider_sessions(state: &AppState, call_id: Option<&str>) -> usize {
    let ended = match state
        .store
        .claim_ended_sessions(crate::clock::now(), call_id, ENDED_SESSIONS_PER_ROUND)
        .await
    {
        Ok(ended) => ended,
        Err(err) => {
            tracing::warn!(error = %err, "claiming ended provider sessions failed");
            return 0;
        }
    };
    for session in &ended {
        // A failure is already logged by the runtime, with the plugin's name.
        if state
            .providers()
            .end_session(
                &session.provider,
                &session.session_id,
                session.channel.as_deref(),
            )
            .await
            .is_ok()
        {
            tracing::debug!(plugin = %session.provider, "provider session ended");
        }
    }
    ended.len()
}

/// The calls waiting for `user_id` placed at or after `version`. With
/// `wait`, when none is waiting yet, waits up to that long for one to be
/// placed (on any instance) before answering.
pub async fn incoming(
    state: &AppState,
    user_id: &str,
    version: Timestamp,
    wait: Option<Duration>,
) -> AppResult<Vec<Call>> {
    // Subscribed before the read: a call placed between the two still wakes us.
    let mut placed = wait.map(|_| state.store.bus().subscribe(&incoming_topic(user_id)));
    let calls = state
        .store
        .calls(user_id, version, crate::clock::now())
        .await?;
    let (Some(wait), Some(placed)) = (wait, placed.as_mut()) else {
        return Ok(calls);
    };
    if !calls.is_empty() {
        return Ok(calls);
    }
    if tokio::time::timeout(wait, placed.recv()).await.is_err() {
        return Ok(calls);
    }
    Ok(state
        .store
        .calls(user_id, version, crate::clock::now())
        .await?)
}

/// The STUN/TURN servers for one side of `call`: TURN credentials for that
/// side's provider identity, valid as long as the call's provider tokens.
pub fn ice_servers(state: &AppState, call: &Call, side: Side) -> Vec<IceServer> {
    let identity = match side {
        Side::Caller => &call.caller_id,
        Side::Callee => &call.user_id,
    };
    let expires_at = call
        .created_at
        .saturating_add(i64::from(PROVIDER_TOKEN_LIFETIME_SECONDS));
    state.ice.servers(identity, expires_at)
}

/// The bus topic on which a user's new calls are announced.
fn incoming_topic(user_id: &str) -> String {
    format!("calls:{user_id}")
}

fn call_type_name(call_type: CallType) -> &'static str {
    match call_type {
        CallType::Audio => "audio",
        CallType::AudioVideo => "audio-video",
    }
}

/// `ws(s)://<public host>/websocket`: where clients follow a call's progress.
pub(crate) fn progress_url(public_url: &str) -> String {
    match url::Url::parse(public_url) {
        Ok(mut url) => {
            let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
            // http→ws and https→wss are allowed scheme changes for `url`.
            let _ = url.set_scheme(scheme);
            url.set_query(None);
            url.set_fragment(None);
            let base = url.path().trim_end_matches('/').to_string();
            url.set_path(&format!("{base}/websocket"));
            url.to_string()
        }
        Err(_) => format!("{}/websocket", public_url.replacen("http", "ws", 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::progress_url;

    #[test]
    fn progress_url_follows_the_public_scheme_and_path() {
        assert_eq!(
            progress_url("http://127.0.0.1:5000"),
            "ws://127.0.0.1:5000/websocket"
        );
        assert_eq!(
            progress_url("https://loop.example.com"),
            "wss://loop.example.com/websocket"
        );
        assert_eq!(
            progress_url("https://example.com/loop/"),
            "wss://example.com/loop/websocket"
        );
    }
}
