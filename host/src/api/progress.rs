//! `GET /websocket`: Loop's call-progress socket, wire-compatible with
//! Mozilla's server. Both sides of a call (and each of the callee's
//! devices) open one, say hello with the call id and their own websocket
//! token, and then hear the call go through `alerting`, `connecting`,
//! `half-connected`, `connected` or `terminated`.
//!
//! This file is the transport: frames in, JSON parsed, one domain call per
//! message (`domain::progress`), frames out. The socket is not Hawk
//! authenticated and accepts any `Origin`: the hello's token is the
//! authentication, and no cookie is involved.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::bus::{RecvError, Subscription};
use crate::domain::progress::{
    self, Action, Announced, Event, ProtocolError, REASON_ANSWERED_ELSEWHERE,
};
use crate::store::{CallState, Side};

/// Progress messages are a few hundred bytes; anything near this is hostile.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Per-socket buffers. Tens of thousands of sockets sit idle while calls
/// ring, so they are kept small (tungstenite's default is 128 KiB each way).
const BUFFER_BYTES: usize = 4 * 1024;
/// A socket that has not said hello by then is closed: unauthenticated
/// sockets must not pile up.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not take a message in this long is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket ids (`accepted_by`): unique across instances.
const SOCKET_ID_BYTES: usize = 12;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

#[utoipa::path(
    get,
    path = "/websocket",
    operation_id = "websocket",
    tag = "websockets",
    summary = "Call progress websocket",
    description = "Mozilla Loop's call-progress socket. Both sides of a call (and each of the callee's devices) \
        open it, say `hello` with the call id and their own `websocketToken`, and then hear the \
        call go through `alerting`, `connecting`, `half-connected`, `connected` or `terminated`. \
        Not Hawk authenticated: the hello's token is the authentication.",
    responses(
        (status = 101, description = "Switching to the websocket protocol"),
        (status = 400, description = "Not a websocket upgrade request (errno 107)", body = super::openapi::LoopError),
        (status = 426, description = "The connection cannot be upgraded (errno 107)", body = super::openapi::LoopError),
    ),
)]
async fn upgrade(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(BUFFER_BYTES)
        .write_buffer_size(BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let _open = crate::telemetry::OpenSocket::new("progress");
            ProgressSocket::new(state, socket).run().await;
        })
}

/// One client's socket.
struct ProgressSocket {
    state: AppState,
    socket: WebSocket,
    id: String,
    joined: Option<Joined>,
}

/// A socket that said hello.
struct Joined {
    call_id: String,
    side: Side,
    auth: String,
    progress: Subscription,
    /// The last state this socket was told, so none is told twice.
    told: CallState,
    /// The newest progress version seen; older announcements are stale.
    version: i64,
    /// When the call's running timer fires (Unix ms).
    timer_at: Option<i64>,
}

/// What to do with the socket after a message.
enum Next {
    Continue,
    /// Close it with code 1000. `ends_call`: a client-side reason (an error,
    /// for example) that counts as this device leaving; the server closing
    /// it because the call reached its end for this device does not.
    Close {
        ends_call: bool,
    },
}

impl ProgressSocket {
    fn new(state: AppState, socket: WebSocket) -> Self {
        ProgressSocket {
            state,
            socket,
            id: crate::domain::random_token(SOCKET_ID_BYTES),
            joined: None,
        }
    }

    async fn run(mut self) {
        let hello_deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
        let ends_call = loop {
            let timer = self.timer_sleep();
            let next = tokio::select! {
                frame = self.socket.recv() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_message(text.as_bytes()).await,
                    Some(Ok(Message::Binary(bytes))) => self.on_message(&bytes).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Next::Continue,
                    // The client left (closed, reset, or sent a frame too big).
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                },
                announced = recv_progress(&mut self.joined) => self.on_progress(announced).await,
                _ = timer => self.on_timer().await,
                _ = tokio::time::sleep_until(hello_deadline), if self.joined.is_none() => {
                    Next::Close { ends_call: false }
                }
            };
            if let Next::Close { ends_call } = next {
                self.close().await;
                break ends_call;
            }
        };
        if let Some(joined) = self.joined.take() {
            let event = Event::Closed {
                side: joined.side,
                ends_call,
            };
            if let Err(err) = progress::apply(&self.state, &joined.call_id, &event).await {
                tracing::debug!(error = %err, "call progress: recording a closed socket failed");
            }
        }
    }

    /// Sleeps until the call's timer is due; never, when none runs.
    fn timer_sleep(&self) -> impl std::future::Future<Output = ()> + use<> {
        let at = self.joined.as_ref().and_then(|joined| joined.timer_at);
        async move {
            match at {
                Some(at) => {
                    let wait = at.saturating_sub(crate::clock::now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    async fn on_message(&mut self, bytes: &[u8]) -> Next {
        match self.handle(bytes).await {
            Ok(next) => next,
            Err(err) => {
                let error = Outgoing::Error {
                    reason: err.to_string(),
                };
                let _ = self.send(&error).await;
                Next::Close { ends_call: true }
            }
        }
    }

    async fn handle(&mut self, bytes: &[u8]) -> Result<Next, ProtocolError> {
        let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(ProtocolError::Malformed);
        };
        match message.get("messageType").and_then(Value::as_str) {
            Some("hello") => self.hello(&message).await,
            Some("action") => self.action(&message).await,
            Some("echo") => {
                let echo = Outgoing::Echo {
                    echo: message.get("echo"),
                };
                Ok(self.send_or_close(&echo).await)
            }
            _ => Err(ProtocolError::UnknownMessageType),
        }
    }

    async fn hello(&mut self, message: &Map<String, Value>) -> Result<Next, ProtocolError> {
        let missing: Vec<&'static str> = ["callId", "auth"]
            .into_iter()
            .filter(|key| !message.contains_key(*key))
            .collect();
        if !missing.is_empty() {
            return Err(ProtocolError::MissingParameters(missing));
        }
        let call_id = message["callId"].as_str().ok_or(ProtocolError::BadCallId)?;
        let auth = message["auth"]
            .as_str()
            .ok_or(ProtocolError::BadAuthentication)?;
        if let Some(joined) = &self.joined {
            // Saying hello again for the same call answers where it stands;
            // a socket follows one call only.
            if joined.call_id != call_id || joined.auth != auth {
                return Err(ProtocolError::BadAuthentication);
            }
            let current = current(&self.state, call_id).await?;
            let state = current.state().unwrap_or(CallState::Terminated);
            return Ok(self
                .send_or_close(&hello_message(state, current.reason.as_deref()))
                .await);
        }
        let hello = progress::authenticate(&self.state, call_id, auth).await?;
        // Subscribed before the change, so the announcement it causes
        // (alerting, when this is the second side) is not missed.
        let subscription = self.state.store.bus().subscribe(&progress::topic(call_id));
        let change = progress::apply(&self.state, call_id, &Event::Hello(hello.side)).await?;
        let before = change.before;
        if before.state == CallState::Terminated {
            let _ = self
                .send(&hello_message(
                    CallState::Terminated,
                    before.reason.as_deref(),
                ))
                .await;
            return Ok(Next::Close { ends_call: false });
        }
        let timer_at = change
            .after
            .as_ref()
            .map_or(before.timer_at, |after| after.timer_at);
        self.joined = Some(Joined {
            call_id: call_id.to_string(),
            side: hello.side,
            auth: auth.to_string(),
            progress: subscription,
            told: before.state,
            version: before.version,
            timer_at,
        });
        Ok(self
            .send_or_close(&hello_message(before.state, before.reason.as_deref()))
            .await)
    }

    async fn action(&mut self, message: &Map<String, Value>) -> Result<Next, ProtocolError> {
        let event = message
            .get("event")
            .ok_or_else(|| ProtocolError::MissingParameters(vec!["event"]))?;
        let action = event.as_str().and_then(Action::parse).ok_or_else(|| {
            ProtocolError::InvalidEvent(match event {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
        })?;
        let reason = match (action, message.get("reason")) {
            (Action::Terminate, Some(reason)) => {
                let reason = reason.as_str().ok_or(ProtocolError::InvalidReason)?;
                progress::check_reason(reason)?;
                Some(reason)
            }
            _ => None,
        };
        let Some(joined) = &self.joined else {
            return Err(ProtocolError::BadAuthentication);
        };
        let event = Event::Act {
            side: joined.side,
            socket: &self.id,
            action,
            reason,
        };
        let call_id = joined.call_id.clone();
        let change = progress::apply(&self.state, &call_id, &event).await?;
        if change.after.is_none() && change.before.state == CallState::Terminated {
            // Ended meanwhile: this socket may not have been told yet.
            return Ok(self
                .tell(CallState::Terminated, change.before.reason.as_deref())
                .await);
        }
        // A change is announced to every socket of the call, this one
        // included, and told from `on_progress`.
        Ok(Next::Continue)
    }

    async fn on_progress(&mut self, announced: Result<Announced, RecvError>) -> Next {
        let announced = match announced {
            Ok(announced) => announced,
            // Fell behind: what counts is where the call stands now.
            Err(RecvError::Lagged) => {
                let Some(joined) = &self.joined else {
                    return Next::Continue;
                };
                match current(&self.state, &joined.call_id).await {
                    Ok(announced) => announced,
                    Err(_) => return Next::Close { ends_call: true },
                }
            }
        };
        let Some(joined) = &mut self.joined else {
            return Next::Continue;
        };
        if announced.version <= joined.version {
            return Next::Continue;
        }
        joined.version = announced.version;
        joined.timer_at = announced.timer_at;
        let Some(state) = announced.state() else {
            return Next::Continue;
        };
        if state == CallState::Connecting
            && joined.side == Side::Callee
            && announced.accepted_by.as_deref() != Some(self.id.as_str())
        {
            // Another device of the callee picked up: this one stops ringing.
            let _ = self
                .send(&progress_message(
                    CallState::Terminated,
                    Some(REASON_ANSWERED_ELSEWHERE),
                ))
                .await;
            return Next::Close { ends_call: false };
        }
        self.tell(state, announced.reason.as_deref()).await
    }

    /// Sends `state` as progress unless this socket was already told it;
    /// closes after the end states.
    async fn tell(&mut self, state: CallState, reason: Option<&str>) -> Next {
        let Some(joined) = &mut self.joined else {
            return Next::Continue;
        };
        if joined.told != state {
            joined.told = state;
            if self.send(&progress_message(state, reason)).await.is_err() {
                return Next::Close { ends_call: true };
            }
        }
        match state {
            CallState::Connected | CallState::Terminated => Next::Close { ends_call: false },
            _ => Next::Continue,
        }
    }

    async fn on_timer(&mut self) -> Next {
        let Some(joined) = &mut self.joined else {
            return Next::Continue;
        };
        let call_id = joined.call_id.clone();
        match progress::apply(&self.state, &call_id, &Event::Timer).await {
            // Fired here: the announcement tells every socket, this one too.
            Ok(progress::Change { after: Some(_), .. }) => {
                tracing::info!("call progress timer fired");
                Next::Continue
            }
            // Not due (the call moved on), or fired elsewhere: follow the row.
            Ok(progress::Change { before, .. }) => {
                if let Some(joined) = &mut self.joined {
                    joined.timer_at = before.timer_at;
                }
                if before.state == CallState::Terminated {
                    self.tell(CallState::Terminated, before.reason.as_deref())
                        .await
                } else {
                    Next::Continue
                }
            }
            Err(_) => {
                // Storage trouble: try again shortly rather than spin.
                if let Some(joined) = &mut self.joined {
                    joined.timer_at = Some(crate::clock::now_ms() + 1000);
                }
                Next::Continue
            }
        }
    }

    async fn send(&mut self, message: &Outgoing<'_>) -> Result<(), ()> {
        let text = serde_json::to_string(message).expect("serializable");
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(text.into()))).await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn send_or_close(&mut self, message: &Outgoing<'_>) -> Next {
        match self.send(message).await {
            Ok(()) => Next::Continue,
            Err(()) => Next::Close { ends_call: true },
        }
    }

    async fn close(&mut self) {
        let frame = CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        };
        let _ =
            tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Close(Some(frame)))).await;
    }
}

/// Where the call stands now, as an announcement of it would say.
async fn current(state: &AppState, call_id: &str) -> Result<Announced, ProtocolError> {
    let (_, progress) = state
        .store
        .call_progress(call_id)
        .await?
        .ok_or(ProtocolError::BadCallId)?;
    Ok(Announced::of(&progress))
}

/// The next announcement for a joined socket; never, before hello.
async fn recv_progress(joined: &mut Option<Joined>) -> Result<Announced, RecvError> {
    let Some(joined) = joined else {
        return std::future::pending().await;
    };
    loop {
        let message = joined.progress.recv().await?;
        match serde_json::from_str(&message) {
            Ok(announced) => return Ok(announced),
            Err(err) => tracing::warn!(error = %err, "call progress: unreadable announcement"),
        }
    }
}

/// What the server sends: exactly Mozilla's keys, `messageType` first.
#[derive(Serialize)]
#[serde(tag = "messageType", rename_all = "lowercase")]
enum Outgoing<'a> {
    Hello {
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Progress {
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Echo {
        #[serde(skip_serializing_if = "Option::is_none")]
        echo: Option<&'a Value>,
    },
    Error {
        reason: String,
    },
}

fn hello_message(state: CallState, reason: Option<&str>) -> Outgoing<'_> {
    Outgoing::Hello {
        state: state.as_str(),
        reason,
    }
}

fn progress_message(state: CallState, reason: Option<&str>) -> Outgoing<'_> {
    Outgoing::Progress {
        state: state.as_str(),
        reason,
    }
}
