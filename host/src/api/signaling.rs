//! `GET /signaling`: the signaling relay of the self-hosted provider. The two
//! participants of a provider session join with their provider token and
//! exchange SDP descriptions and ICE candidates, relayed unchanged to the
//! other one on whichever instance it is.
//!
//! Client → `{"type":"join","sessionId":…,"token":…}`, then
//! `{"type":"signal","data":{"description":…}|{"candidate":…}}`.
//! Server → `{"type":"joined","peer":<bool>}`, `{"type":"peer-joined"}`,
//! `{"type":"peer-left"}`, `{"type":"signal","data":…}`, and
//! `{"type":"error","reason":…}` before it closes the socket.
//!
//! This file is the transport: frames in, checked and parsed, one domain
//! call per message (`domain::signaling`), frames out. The socket is not Hawk
//! authenticated and accepts any `Origin`: the join's token is the
//! authentication, and no cookie is involved. Tokens and SDP are never logged.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use serde_json::json;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::bus::{RecvError, Subscription};
use crate::domain::signaling::{
    self, Announced, MAX_MESSAGE_BYTES, Participant, RateLimit, Request, SignalingError, Tell, View,
};

/// Per-socket buffers; messages larger than this still arrive whole.
const BUFFER_BYTES: usize = 4 * 1024;
/// What the websocket layer reads whole before it gives up on a message.
/// Above [`MAX_MESSAGE_BYTES`], so that a message just over the limit is
/// read to its end and refused in words, with the stream still in step for
/// the closing handshake; a larger one breaks off mid-frame.
const READ_LIMIT_BYTES: usize = 2 * MAX_MESSAGE_BYTES;
/// After its close frame, how long the server reads on, waiting for the
/// client's: closing with unread data would reset the connection and could
/// lose the error message.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// A socket that has not joined by then is closed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the server pings; a client silent for [`IDLE_LIMIT`] is gone
/// (browsers answer pings by themselves).
const PING_INTERVAL: Duration = Duration::from_secs(25);
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// A client that does not take a message in this long is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

#[utoipa::path(
    get,
    path = "/signaling",
    operation_id = "signaling",
    tag = "websockets",
    summary = "Signaling relay websocket of the self-hosted provider",
    description = "The two participants of a self-hosted provider session join with \
        `{\"type\":\"join\",\"sessionId\":…,\"token\":…}` and exchange SDP descriptions and ICE \
        candidates (`{\"type\":\"signal\",\"data\":…}`), relayed unchanged to the other one. \
        Not Hawk authenticated: the join's token is the authentication.",
    responses(
        (status = 101, description = "Switching to the websocket protocol"),
        (status = 400, description = "Not a websocket upgrade request (errno 107)", body = super::openapi::LoopError),
        (status = 426, description = "The connection cannot be upgraded (errno 107)", body = super::openapi::LoopError),
    ),
)]
async fn upgrade(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(READ_LIMIT_BYTES)
        .max_frame_size(READ_LIMIT_BYTES)
        .read_buffer_size(BUFFER_BYTES)
        .write_buffer_size(BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let _open = crate::telemetry::OpenSocket::new("signaling");
            SignalingSocket::new(state, socket).run().await;
        })
}

struct SignalingSocket {
    state: AppState,
    socket: WebSocket,
    id: String,
    limit: RateLimit,
    joined: Option<Joined>,
}

/// A socket that joined its session.
struct Joined {
    participant: Participant,
    session: Subscription,
    view: View,
}

/// What to do after a message.
enum Next {
    Continue,
    /// Send `{"type":"error","reason":…}` and close.
    Refuse(SignalingError),
    /// Close without a word: the client is gone.
    Gone,
}

impl SignalingSocket {
    fn new(state: AppState, socket: WebSocket) -> Self {
        let id = state.signaling.socket_id();
        SignalingSocket {
            state,
            socket,
            id,
            limit: RateLimit::new(std::time::Instant::now()),
            joined: None,
        }
    }

    async fn run(mut self) {
        let join_deadline = Instant::now() + JOIN_TIMEOUT;
        let mut pings = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        let mut heard = Instant::now();
        loop {
            let expiry = self.expiry();
            let next = tokio::select! {
                frame = self.socket.recv() => {
                    heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => self.on_message(text.as_bytes()).await,
                        Some(Ok(Message::Binary(bytes))) => self.on_message(&bytes).await,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Next::Continue,
                        Some(Ok(Message::Close(_))) | None => Next::Gone,
                        Some(Err(err)) if too_large(&err) => Next::Refuse(SignalingError::TooLarge),
                        Some(Err(_)) => Next::Gone,
                    }
                }
                announced = recv_announced(&mut self.joined) => self.on_announced(announced).await,
                _ = expiry => Next::Refuse(SignalingError::TokenExpired),
                _ = tokio::time::sleep_until(join_deadline), if self.joined.is_none() => {
                    Next::Refuse(SignalingError::JoinTimeout)
                }
                _ = pings.tick() => {
                    if heard.elapsed() > IDLE_LIMIT {
                        Next::Gone
                    } else {
                        self.send(Message::Ping(Default::default())).await
                    }
                }
            };
            match next {
                Next::Continue => {}
                Next::Refuse(err) => {
                    tracing::debug!(reason = %err, "signaling: closing a socket");
                    let reason = json!({"type": "error", "reason": err.to_string()});
                    let told = matches!(self.send_text(reason.to_string()).await, Next::Continue);
                    // The peer hears of it now, not after the closing handshake.
                    self.leave().await;
                    if told {
                        self.close(close_code_of(&err)).await;
                    }
                    return;
                }
                Next::Gone => break,
            }
        }
        self.leave().await;
    }

    /// Frees this socket's seat, if it took one and still holds it.
    async fn leave(&mut self) {
        if let Some(joined) = self.joined.take() {
            signaling::leave(&self.state, &joined.participant, &self.id).await;
        }
    }

    /// Sleeps until the joined token expires; never before the join.
    fn expiry(&self) -> impl std::future::Future<Output = ()> + use<> {
        let expires_at = self.joined.as_ref().map(|j| j.participant.expires_at);
        async move {
            match expires_at {
                Some(at) => {
                    let wait = at.saturating_sub(crate::clock::now()).max(0) as u64;
                    // One second past it: a token is valid through its expiry second.
                    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    async fn on_message(&mut self, bytes: &[u8]) -> Next {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Next::Refuse(SignalingError::TooLarge);
        }
        if !self.limit.allow(bytes.len(), std::time::Instant::now()) {
            return Next::Refuse(SignalingError::TooMany);
        }
        let request = match signaling::parse(bytes) {
            Ok(request) => request,
            Err(err) => return Next::Refuse(err),
        };
        match request {
            Request::Join { session_id, token } => {
                if self.joined.is_some() {
                    return Next::Refuse(SignalingError::AlreadyJoined);
                }
                self.join(&session_id, &token).await
            }
            Request::Signal { data } => {
                let Some(joined) = &self.joined else {
                    return Next::Refuse(SignalingError::JoinFirst);
                };
                // Not queued: with nobody to take it, it goes nowhere.
                if !joined.view.peer_present() {
                    return Next::Continue;
                }
                match signaling::relay(&self.state, &joined.participant, &self.id, data).await {
                    Ok(()) => Next::Continue,
                    Err(err) => Next::Refuse(err),
                }
            }
        }
    }

    async fn join(&mut self, session_id: &str, token: &str) -> Next {
        let participant = match signaling::authorize(&self.state, session_id, token).await {
            Ok(participant) => participant,
            Err(err) => return Next::Refuse(err),
        };
        // Subscribed before the seat is taken, so that nothing announced
        // after it is missed.
        let session = self
            .state
            .store
            .bus()
            .subscribe(&signaling::topic(session_id));
        let peer = match signaling::join(&self.state, &participant, &self.id).await {
            Ok(peer) => peer,
            Err(err) => return Next::Refuse(err),
        };
        let view = View::new(&participant, &self.id, peer);
        let peer_present = view.peer_present();
        self.joined = Some(Joined {
            participant,
            session,
            view,
        });
        self.send_text(json!({"type": "joined", "peer": peer_present}).to_string())
            .await
    }

    async fn on_announced(&mut self, announced: Result<crate::bus::Message, RecvError>) -> Next {
        let Some(joined) = &mut self.joined else {
            return Next::Continue;
        };
        let message = match announced {
            Ok(message) => message,
            // Signals for this socket were dropped: only a fresh start helps.
            Err(RecvError::Lagged) => return Next::Refuse(SignalingError::Lagged),
        };
        let announced: Announced<'_> = match serde_json::from_str(&message) {
            Ok(announced) => announced,
            Err(err) => {
                tracing::warn!(error = %err, "signaling: unreadable announcement");
                return Next::Continue;
            }
        };
        match joined.view.on(&announced) {
            Tell::Nothing => Next::Continue,
            Tell::PeerJoined => {
                self.send_text(json!({"type": "peer-joined"}).to_string())
                    .await
            }
            Tell::PeerLeft => {
                self.send_text(json!({"type": "peer-left"}).to_string())
                    .await
            }
            Tell::Signal(text) => self.send_text(text).await,
            Tell::Close(err) => Next::Refuse(err),
        }
    }

    async fn send_text(&mut self, text: String) -> Next {
        self.send(Message::Text(text.into())).await
    }

    async fn send(&mut self, message: Message) -> Next {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(message)).await {
            Ok(Ok(())) => Next::Continue,
            _ => Next::Gone,
        }
    }

    /// Sends a close frame, then reads (and drops) what the client still
    /// sends until its own close frame.
    async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code,
            reason: "".into(),
        };
        let sent =
            tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Close(Some(frame)))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
        })
        .await;
    }
}

/// The next announcement on a joined socket's session; never, before.
async fn recv_announced(joined: &mut Option<Joined>) -> Result<crate::bus::Message, RecvError> {
    match joined {
        Some(joined) => joined.session.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether a receive failed because the client sent more than
/// [`MAX_MESSAGE_BYTES`] (the socket can still say so before closing).
fn too_large(err: &axum::Error) -> bool {
    use std::error::Error;
    err.source()
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|err| matches!(err, tungstenite::Error::Capacity(_)))
}

/// The close code after an error: the reason itself is in the last message.
fn close_code_of(err: &SignalingError) -> u16 {
    match err {
        SignalingError::TooLarge => close_code::SIZE,
        SignalingError::Unavailable | SignalingError::Lagged => close_code::AGAIN,
        SignalingError::Replaced | SignalingError::TokenExpired => close_code::NORMAL,
        _ => close_code::POLICY,
    }
}
