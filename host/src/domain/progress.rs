//! Call progress: where a call stands between Alice's `POST /calls/{token}`
//! and the two browsers talking (Mozilla's `/websocket` protocol), shared by
//! every instance on one database.
//!
//! The state lives in the call's row. Every change is a compare-and-set on
//! its version: an instance reads the row, [`decide`]s the next one, and
//! writes it only if nobody else wrote first (else it reads again). So two
//! instances can race on one call (Alice's terminate on A, Bob's accept on
//! B, a timer on both) and exactly one change wins each step. A change of
//! state is announced on the bus topic `progress:<callId>` in commit order,
//! and every socket of the call, on every instance, turns it into a
//! `progress` message.

use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::config::ProgressConfig;
use crate::store::{Announcement, Call, CallProgress, CallState, Side, StoreError};

/// Compare-and-set attempts before a change is given up as contended.
const MAX_ATTEMPTS: usize = 32;

/// Reasons Loop itself gives when it ends a call.
pub const REASON_TIMEOUT: &str = "timeout";
pub const REASON_CLOSED: &str = "closed";
pub const REASON_ANSWERED_ELSEWHERE: &str = "answered-elsewhere";

/// The longest reason a client may give.
const MAX_REASON_CHARS: usize = 64;

/// Why a progress message was refused. The texts are Mozilla's, byte for
/// byte: clients match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad authentication")]
    BadAuthentication,
    #[error("bad callId")]
    BadCallId,
    #[error("Missing parameters: {}", .0.join(", "))]
    MissingParameters(Vec<&'static str>),
    #[error("Malformed message.")]
    Malformed,
    #[error("Unknown messageType")]
    UnknownMessageType,
    #[error("No transition from {} state with {} event.", .state.as_str(), .event.as_str())]
    NoTransition { state: CallState, event: Action },
    #[error("{0} state is invalid. Should be one of: accept, media-up, terminate")]
    InvalidEvent(String),
    #[error("Invalid reason: should be alphanumeric")]
    InvalidReason,
    /// Storage failed or a change could not win its compare-and-set.
    #[error("Service Unavailable")]
    Unavailable,
}

impl From<StoreError> for ProtocolError {
    fn from(err: StoreError) -> Self {
        tracing::warn!(error = %err, "call progress: storage failed");
        ProtocolError::Unavailable
    }
}

/// What a client asks of a call once it has said hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    MediaUp,
    Terminate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::MediaUp => "media-up",
            Action::Terminate => "terminate",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "accept" => Action::Accept,
            "media-up" => Action::MediaUp,
            "terminate" => Action::Terminate,
            _ => return None,
        })
    }
}

/// Checks a client's termination reason: Mozilla's alphabet, bounded.
pub fn check_reason(reason: &str) -> Result<(), ProtocolError> {
    let valid = !reason.is_empty()
        && reason.len() <= MAX_REASON_CHARS
        && reason
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ProtocolError::InvalidReason)
    }
}

/// Something that may change a call's progress.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A socket of `side` said hello.
    Hello(Side),
    /// A socket of `side` asked for `action`; `socket` names it.
    Act {
        side: Side,
        socket: &'a str,
        action: Action,
        reason: Option<&'a str>,
    },
    /// A socket of `side` that had said hello closed. `ends_call` is false
    /// when the server itself closed it because the call reached an end
    /// state for that socket (connected, answered elsewhere).
    Closed { side: Side, ends_call: bool },
    /// A socket's timer went off at `now_ms`.
    Timer,
}

/// The next progress after `event`, or `None` when nothing changes. Pure:
/// every rule of the protocol's state machine is here.
pub fn decide(
    current: &CallProgress,
    event: &Event<'_>,
    timers: &ProgressConfig,
    now_ms: i64,
) -> Result<Option<CallProgress>, ProtocolError> {
    let mut next = current.clone();
    let after = |duration: std::time::Duration| now_ms.saturating_add(duration.as_millis() as i64);
    match *event {
        Event::Hello(side) => {
            if current.state == CallState::Terminated {
                return Ok(None);
            }
            *next.sockets_mut(side) += 1;
            if current.hellos & side.bit() == 0 {
                next.hellos |= side.bit();
                if current.state == CallState::Init {
                    if next.hellos == Side::Caller.bit() | Side::Callee.bit() {
                        next.state = CallState::Alerting;
                        next.timer_at = Some(after(timers.ringing()));
                    } else {
                        next.timer_at = Some(after(timers.supervisory()));
                    }
                }
            }
        }
        Event::Act {
            side,
            socket,
            action,
            reason,
        } => {
            let no_transition = ProtocolError::NoTransition {
                state: current.state,
                event: action,
            };
            match action {
                Action::Terminate => {
                    if current.state == CallState::Terminated {
                        return Ok(None);
                    }
                    terminate(&mut next, reason.map(str::to_string));
                }
                Action::Accept => {
                    if current.state != CallState::Alerting || side != Side::Callee {
                        return Err(no_transition);
                    }
                    next.state = CallState::Connecting;
                    next.accepted_by = Some(socket.to_string());
                    next.timer_at = Some(after(timers.connection()));
                }
                Action::MediaUp => match current.state {
                    CallState::Connecting => {
                        next.state = CallState::HalfConnected;
                        next.media_up |= side.bit();
                    }
                    CallState::HalfConnected if current.media_up & side.bit() != 0 => {
                        return Ok(None);
                    }
                    CallState::HalfConnected => {
                        next.state = CallState::Connected;
                        next.media_up |= side.bit();
                        next.timer_at = None;
                    }
                    _ => return Err(no_transition),
                },
            }
        }
        Event::Closed { side, ends_call } => {
            let sockets = next.sockets_mut(side);
            *sockets = (*sockets - 1).max(0);
            // Once connected, the call no longer depends on its progress
            // sockets: the server itself closes them at `connected` (as
            // Mozilla's did), and a page that rejoined and then reloads
            // must not hang up. Hanging up is then `terminate`.
            let ends = !matches!(current.state, CallState::Terminated | CallState::Connected);
            if ends_call && *sockets == 0 && ends {
                terminate(&mut next, Some(REASON_CLOSED.into()));
            }
        }
        Event::Timer => {
            let due = current.timer_at.is_some_and(|at| at <= now_ms);
            if !due || matches!(current.state, CallState::Connected | CallState::Terminated) {
                return Ok(None);
            }
            terminate(&mut next, Some(REASON_TIMEOUT.into()));
        }
    }
    Ok((next != *current).then_some(next))
}

fn terminate(progress: &mut CallProgress, reason: Option<String>) {
    progress.state = CallState::Terminated;
    progress.reason = reason;
    progress.timer_at = None;
}

/// What is announced on `progress:<callId>` when a call's state changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Announced {
    pub version: i64,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_at: Option<i64>,
}

impl Announced {
    /// What is announced when `progress` is written.
    pub fn of(progress: &CallProgress) -> Self {
        Announced {
            version: progress.version,
            state: progress.state.as_str().into(),
            reason: progress.reason.clone(),
            accepted_by: progress.accepted_by.clone(),
            timer_at: progress.timer_at,
        }
    }

    pub fn state(&self) -> Option<CallState> {
        CallState::parse(&self.state)
    }
}

/// The bus topic of a call's progress.
pub fn topic(call_id: &str) -> String {
    format!("progress:{call_id}")
}

/// A change that was made: the progress it was made from and the one written.
#[derive(Debug, Clone)]
pub struct Change {
    pub before: CallProgress,
    /// `None` when the event changed nothing.
    pub after: Option<CallProgress>,
}

/// Applies `event` to the call's progress until it wins its compare-and-set.
/// A change of state is announced to every socket of the call.
pub async fn apply(
    state: &AppState,
    call_id: &str,
    event: &Event<'_>,
) -> Result<Change, ProtocolError> {
    let topic = topic(call_id);
    for _ in 0..MAX_ATTEMPTS {
        let Some((_, before)) = state.store.call_progress(call_id).await? else {
            return Err(ProtocolError::BadCallId);
        };
        let now_ms = crate::clock::now_ms();
        let Some(mut after) = decide(&before, event, &state.config().progress, now_ms)? else {
            return Ok(Change {
                before,
                after: None,
            });
        };
        after.version = before.version + 1;
        let announced = (after.state != before.state)
            .then(|| serde_json::to_string(&Announced::of(&after)).expect("serializable"));
        let announce = announced.as_deref().map(|message| Announcement {
            topic: &topic,
            message,
        });
        if state
            .store
            .update_call_progress(call_id, before.version, &after, announce)
            .await?
        {
            if after.state == CallState::Terminated && before.state != CallState::Terminated {
                super::calls::end_provider_session(state, call_id);
            }
            return Ok(Change {
                before,
                after: Some(after),
            });
        }
        tokio::task::yield_now().await;
    }
    tracing::warn!("call progress: gave up on a contended change");
    Err(ProtocolError::Unavailable)
}

/// Who a hello authenticates: the call, the side its token is for.
pub struct Hello {
    pub call: Call,
    pub side: Side,
}

/// Checks a hello's `callId` and `auth` against the stored call.
pub async fn authenticate(
    state: &AppState,
    call_id: &str,
    auth: &str,
) -> Result<Hello, ProtocolError> {
    let Some((call, _)) = state.store.call_progress(call_id).await? else {
        return Err(ProtocolError::BadCallId);
    };
    let side = if matches_token(&call.callee_websocket_token, auth) {
        Side::Callee
    } else if matches_token(&call.caller_websocket_token, auth) {
        Side::Caller
    } else {
        return Err(ProtocolError::BadAuthentication);
    };
    Ok(Hello { call, side })
}

/// Constant-time comparison; an empty stored token (calls placed before
/// progress existed have no caller token) matches nothing.
fn matches_token(stored: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    !stored.is_empty() && bool::from(stored.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers() -> ProgressConfig {
        ProgressConfig {
            supervisory_seconds: 10.0,
            ringing_seconds: 30.0,
            connection_seconds: 10.0,
        }
    }

    fn fresh() -> CallProgress {
        CallProgress {
            state: CallState::Init,
            reason: None,
            hellos: 0,
            media_up: 0,
            caller_sockets: 0,
            callee_sockets: 0,
            accepted_by: None,
            timer_at: None,
            version: 0,
        }
    }

    fn step(progress: &CallProgress, event: Event<'_>, now: i64) -> CallProgress {
        decide(progress, &event, &timers(), now)
            .unwrap()
            .unwrap_or_else(|| progress.clone())
    }

    fn act(side: Side, action: Action) -> Event<'static> {
        Event::Act {
            side,
            socket: "s1",
            action,
            reason: None,
        }
    }

    #[test]
    fn the_full_sequence_with_its_timers() {
        let p = step(&fresh(), Event::Hello(Side::Caller), 1000);
        assert_eq!(p.state, CallState::Init);
        assert_eq!(p.timer_at, Some(11_000), "supervisory");
        let p = step(&p, Event::Hello(Side::Callee), 2000);
        assert_eq!(p.state, CallState::Alerting);
        assert_eq!(p.timer_at, Some(32_000), "ringing");
        let p = step(&p, act(Side::Callee, Action::Accept), 3000);
        assert_eq!(p.state, CallState::Connecting);
        assert_eq!(p.accepted_by.as_deref(), Some("s1"));
        assert_eq!(p.timer_at, Some(13_000), "connection");
        let p = step(&p, act(Side::Caller, Action::MediaUp), 4000);
        assert_eq!(p.state, CallState::HalfConnected);
        assert_eq!(
            decide(&p, &act(Side::Caller, Action::MediaUp), &timers(), 4100).unwrap(),
            None,
            "a repeated media-up from the same side is ignored"
        );
        let p = step(&p, act(Side::Callee, Action::MediaUp), 5000);
        assert_eq!(p.state, CallState::Connected);
        assert_eq!(p.timer_at, None);
        assert_eq!(
            decide(&p, &Event::Timer, &timers(), 1_000_000).unwrap(),
            None,
            "no timer runs on a connected call"
        );
    }

    #[test]
    fn refused_transitions_name_the_state_and_event() {
        let p = step(&fresh(), Event::Hello(Side::Caller), 0);
        let err = decide(&p, &act(Side::Caller, Action::MediaUp), &timers(), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "No transition from init state with media-up event."
        );
        let p = step(&p, Event::Hello(Side::Callee), 0);
        let err = decide(&p, &act(Side::Caller, Action::Accept), &timers(), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "No transition from alerting state with accept event.",
            "only the callee accepts"
        );
    }

    #[test]
    fn timers_fire_once_and_only_when_due() {
        let p = step(&fresh(), Event::Hello(Side::Caller), 0);
        assert_eq!(decide(&p, &Event::Timer, &timers(), 9_999).unwrap(), None);
        let ended = step(&p, Event::Timer, 10_000);
        assert_eq!(ended.state, CallState::Terminated);
        assert_eq!(ended.reason.as_deref(), Some("timeout"));
        assert_eq!(
            decide(&ended, &Event::Timer, &timers(), 20_000).unwrap(),
            None
        );
    }

    #[test]
    fn the_last_socket_of_a_side_ends_the_call_unless_the_server_closed_it() {
        let p = step(&fresh(), Event::Hello(Side::Caller), 0);
        let p = step(&p, Event::Hello(Side::Callee), 0);
        let p = step(&p, Event::Hello(Side::Callee), 0);
        assert_eq!(p.callee_sockets, 2);
        let p = step(
            &p,
            Event::Closed {
                side: Side::Callee,
                ends_call: true,
            },
            0,
        );
        assert_eq!(p.state, CallState::Alerting, "another callee device rings");
        let quiet = step(
            &p,
            Event::Closed {
                side: Side::Callee,
                ends_call: false,
            },
            0,
        );
        assert_eq!(quiet.state, CallState::Alerting);
        let ended = step(
            &p,
            Event::Closed {
                side: Side::Callee,
                ends_call: true,
            },
            0,
        );
        assert_eq!(ended.state, CallState::Terminated);
        assert_eq!(ended.reason.as_deref(), Some("closed"));
    }

    #[test]
    fn a_connected_call_outlives_its_rejoined_sockets() {
        let mut p = step(&fresh(), Event::Hello(Side::Caller), 0);
        p = step(&p, Event::Hello(Side::Callee), 0);
        p = step(&p, act(Side::Callee, Action::Accept), 0);
        p = step(&p, act(Side::Caller, Action::MediaUp), 0);
        p = step(&p, act(Side::Callee, Action::MediaUp), 0);
        for side in [Side::Caller, Side::Callee] {
            p = step(
                &p,
                Event::Closed {
                    side,
                    ends_call: false,
                },
                0,
            );
        }
        // A reloaded page says hello again, then reloads once more.
        p = step(&p, Event::Hello(Side::Callee), 0);
        p = step(
            &p,
            Event::Closed {
                side: Side::Callee,
                ends_call: true,
            },
            0,
        );
        assert_eq!(p.state, CallState::Connected);
        assert_eq!(p.callee_sockets, 0);
    }

    #[test]
    fn terminate_keeps_the_reason_and_a_terminated_call_stays_so() {
        let p = step(&fresh(), Event::Hello(Side::Caller), 0);
        let ended = step(
            &p,
            Event::Act {
                side: Side::Caller,
                socket: "s",
                action: Action::Terminate,
                reason: Some("cancel"),
            },
            0,
        );
        assert_eq!(ended.reason.as_deref(), Some("cancel"));
        assert_eq!(
            decide(&ended, &Event::Hello(Side::Callee), &timers(), 0).unwrap(),
            None
        );
    }

    #[test]
    fn reasons_follow_mozillas_alphabet() {
        for good in ["cancel", "media-fail", "A1-b2"] {
            assert!(check_reason(good).is_ok(), "{good}");
        }
        for bad in ["", "no way", "x;y", "ünï", &"a".repeat(65)] {
            assert_eq!(
                check_reason(bad),
                Err(ProtocolError::InvalidReason),
                "{bad}"
            );
        }
    }
}
