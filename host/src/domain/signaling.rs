//! The signaling relay of providers whose tokens the host checks itself
//! (`verifies_tokens`, e.g. loopback): the two participants of a provider
//! session exchange SDP descriptions and ICE candidates through Loop, on
//! whichever instances their sockets are, and nobody else can join in.
//!
//! - A socket joins with the session id and its side's provider token; the
//!   provider plugin's `verify-token` says who it is (the grant's identity)
//!   and until when.
//! - Presence lives in `signaling_seats` (see `store/signaling.rs`): one seat
//!   per identity, at most two per session. The same identity joining again
//!   takes over its seat, and its older socket is told `replaced`.
//! - Everything a socket must hear goes over the bus topic
//!   `signaling:<sessionId>` as an [`Announced`]: joins and leaves (in commit
//!   order with the seats) and relayed signals. Each socket turns them into
//!   client messages through its [`View`].
//! - Each instance refreshes its sockets' seats every [`HEARTBEAT`]; seats
//!   not refreshed for [`STALE_AFTER_SECONDS`] (their instance died) are
//!   swept by the others, which announce the leave.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::app::AppState;
use crate::providers::ProviderError;
use crate::store::{Announcement, Seat, SeatRow, SeatTaken, Store, StoreError};

/// The largest message a client may send.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How often an instance marks its sockets' seats alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A seat not marked alive for this long belongs to a dead instance.
pub const STALE_AFTER_SECONDS: i64 = 30;
/// Stale seats swept per heartbeat.
const SWEEP_BATCH: i64 = 100;
/// Messages a socket may send at once, then per second.
const MESSAGE_BURST: f64 = 50.0;
const MESSAGES_PER_SECOND: f64 = 10.0;
/// Bytes a socket may send at once (four of the largest messages), then per
/// second: an SDP is a few kilobytes, a candidate a few hundred bytes.
const BYTE_BURST: f64 = 4.0 * MAX_MESSAGE_BYTES as f64;
const BYTES_PER_SECOND: f64 = 64.0 * 1024.0;
/// The longest session id and token a join may carry.
const MAX_FIELD_BYTES: usize = 8 * 1024;
/// Socket and instance ids: unique across instances.
const ID_BYTES: usize = 12;

/// Why a socket is refused or closed; the text is the `reason` the client
/// gets in `{"type":"error","reason":…}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalingError {
    /// The provider refused the token: forged, malformed, for another
    /// session, expired. The provider's short explanation follows, when it
    /// gave one fit to show.
    #[error("bad token{}", .0.as_deref().map(|why| format!(": {why}")).unwrap_or_default())]
    BadToken(Option<String>),
    /// The token expired while the socket was joined.
    #[error("token expired")]
    TokenExpired,
    /// Two other participants hold the session.
    #[error("session full")]
    SessionFull,
    /// The same participant joined again from another socket.
    #[error("replaced")]
    Replaced,
    #[error("message too large")]
    TooLarge,
    #[error("too many messages")]
    TooMany,
    #[error("malformed message")]
    Malformed,
    /// A signal (or anything but a join) before the join.
    #[error("join first")]
    JoinFirst,
    #[error("already joined")]
    AlreadyJoined,
    /// No join within the time allowed.
    #[error("join timeout")]
    JoinTimeout,
    /// The socket fell behind and messages for it were dropped: rejoin.
    #[error("lagged")]
    Lagged,
    /// The socket's seat was swept (its instance lost the database for
    /// longer than [`STALE_AFTER_SECONDS`]): rejoin.
    #[error("presence lost")]
    PresenceLost,
    /// Storage or the provider failed; trying again later may work.
    #[error("unavailable")]
    Unavailable,
}

impl From<StoreError> for SignalingError {
    fn from(err: StoreError) -> Self {
        tracing::warn!(error = %err, "signaling: storage failed");
        SignalingError::Unavailable
    }
}

/// What a client sends, parsed and checked.
#[derive(Debug)]
pub enum Request<'a> {
    Join {
        session_id: String,
        token: String,
    },
    /// `data` is relayed as it came.
    Signal {
        data: &'a RawValue,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
    token: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A signal's `data`: exactly one description or one candidate. Read only
/// to check its shape: it is relayed as it came.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum SignalData {
    Description(Description),
    /// `null` or `{}`: the end of the candidates.
    Candidate(Option<Candidate>),
}

/// Read only to check its shape: it is relayed as it came.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    #[serde(rename = "type")]
    kind: DescriptionType,
    sdp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DescriptionType {
    Offer,
    Answer,
}

/// `RTCIceCandidateInit`. Read only to check its shape.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    candidate: Option<String>,
    #[serde(default)]
    sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    sdp_m_line_index: Option<u16>,
    #[serde(default)]
    username_fragment: Option<String>,
}

/// Parses one client message. Anything but a well-formed `join` or
/// `signal` is [`SignalingError::Malformed`]; size is checked by the caller.
pub fn parse(bytes: &[u8]) -> Result<Request<'_>, SignalingError> {
    let envelope: Envelope<'_> =
        serde_json::from_slice(bytes).map_err(|_| SignalingError::Malformed)?;
    match (
        envelope.kind.as_str(),
        envelope.session_id,
        envelope.token,
        envelope.data,
    ) {
        ("join", Some(session_id), Some(token), None)
            if (1..=MAX_FIELD_BYTES).contains(&session_id.len())
                && (1..=MAX_FIELD_BYTES).contains(&token.len()) =>
        {
            Ok(Request::Join { session_id, token })
        }
        ("signal", None, None, Some(data)) => {
            serde_json::from_str::<SignalData>(data.get())
                .map_err(|_| SignalingError::Malformed)?;
            Ok(Request::Signal { data })
        }
        _ => Err(SignalingError::Malformed),
    }
}

/// One participant, as its token's grant says.
#[derive(Debug, Clone)]
pub struct Participant {
    pub session_id: String,
    pub identity: String,
    /// When the token, and with it the socket, expires (Unix seconds).
    pub expires_at: i64,
}

/// Checks a join's token through the providers that verify tokens.
pub async fn authorize(
    state: &AppState,
    session_id: &str,
    token: &str,
) -> Result<Participant, SignalingError> {
    let mut refusal = None;
    let mut verifiers = 0;
    // One runtime for the whole check, even if a reload swaps it meanwhile.
    let providers = state.providers();
    for provider in providers.token_verifiers() {
        verifiers += 1;
        match providers.verify_token(provider, token, session_id).await {
            Ok(grant) => {
                let now = crate::clock::now();
                let expires_at = i64::try_from(grant.expires_at).unwrap_or(i64::MAX);
                if grant.session_id != session_id {
                    return Err(SignalingError::BadToken(Some("wrong session".into())));
                }
                if expires_at < now {
                    return Err(SignalingError::BadToken(Some("expired".into())));
                }
                return Ok(Participant {
                    session_id: grant.session_id,
                    identity: grant.identity,
                    expires_at,
                });
            }
            Err(ProviderError::Rejected { message, .. }) => {
                refusal.get_or_insert(SignalingError::BadToken(showable(&message)));
            }
            // Already logged by the runtime, with the provider's name.
            Err(_) => {
                refusal = Some(SignalingError::Unavailable);
            }
        }
    }
    if verifiers == 0 {
        tracing::warn!("signaling: no configured provider verifies tokens");
    }
    Err(refusal.unwrap_or(SignalingError::BadToken(None)))
}

/// A provider's refusal, if it is a short plain phrase (`expired`, `wrong
/// session`): a vendor's message may say more than a client should see.
fn showable(message: &str) -> Option<String> {
    let plain = !message.is_empty()
        && message.len() <= 40
        && message
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-');
    plain.then(|| message.to_string())
}

/// The bus topic of a session's signaling.
pub fn topic(session_id: &str) -> String {
    format!("signaling:{session_id}")
}

/// What is announced on `signaling:<sessionId>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Announced<'a> {
    pub kind: Kind,
    /// Whose socket it concerns or comes from.
    pub identity: String,
    pub socket: String,
    /// A relayed signal's `data`, as the client sent it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Joined,
    Left,
    Signal,
}

fn announcement(kind: Kind, identity: &str, socket: &str, data: Option<&RawValue>) -> String {
    serde_json::to_string(&Announced {
        kind,
        identity: identity.to_string(),
        socket: socket.to_string(),
        data,
    })
    .expect("serializable")
}

/// What this instance's signaling sockets share.
pub struct Relay {
    /// This process, in `signaling_seats.instance_id`.
    instance_id: String,
}

impl Default for Relay {
    fn default() -> Self {
        Self::new()
    }
}

impl Relay {
    pub fn new() -> Self {
        Relay {
            instance_id: super::random_token(ID_BYTES),
        }
    }

    /// A fresh socket id, unique across instances.
    pub fn socket_id(&self) -> String {
        super::random_token(ID_BYTES)
    }
}

/// Takes `participant`'s seat for `socket`; the other participant's socket
/// if it is present. The caller subscribed to the session's topic first.
pub async fn join(
    state: &AppState,
    participant: &Participant,
    socket: &str,
) -> Result<Option<String>, SignalingError> {
    let topic = topic(&participant.session_id);
    let joined = announcement(Kind::Joined, &participant.identity, socket, None);
    let now = crate::clock::now();
    let taken = state
        .store
        .take_signaling_seat(
            &Seat {
                session_id: &participant.session_id,
                identity: &participant.identity,
                socket_id: socket,
                instance_id: &state.signaling.instance_id,
            },
            now,
            now - STALE_AFTER_SECONDS,
            Announcement {
                topic: &topic,
                message: &joined,
            },
        )
        .await?;
    match taken {
        SeatTaken::Full => Err(SignalingError::SessionFull),
        SeatTaken::Joined { peer, swept } => {
            for seat in swept {
                tracing::info!("signaling: freed the stale seat of a dead instance");
                announce_left(state.store.as_ref(), &seat).await;
            }
            Ok(peer.map(|peer| peer.socket_id))
        }
    }
}

/// Frees `participant`'s seat if `socket` still holds it.
pub async fn leave(state: &AppState, participant: &Participant, socket: &str) {
    let seat = SeatRow {
        session_id: participant.session_id.clone(),
        identity: participant.identity.clone(),
        socket_id: socket.to_string(),
    };
    let left = announcement(Kind::Left, &seat.identity, &seat.socket_id, None);
    let topic = topic(&seat.session_id);
    let announce = Announcement {
        topic: &topic,
        message: &left,
    };
    if let Err(err) = state
        .store
        .leave_signaling_seat(&seat, None, announce)
        .await
    {
        // The seat goes stale and is swept once this instance stops
        // refreshing it; until then the peer still sees it present.
        tracing::warn!(error = %err, "signaling: freeing a seat failed");
    }
}

/// Relays a signal to the other participant of the session.
pub async fn relay(
    state: &AppState,
    participant: &Participant,
    socket: &str,
    data: &RawValue,
) -> Result<(), SignalingError> {
    let message = announcement(Kind::Signal, &participant.identity, socket, Some(data));
    state
        .store
        .bus()
        .publish(&topic(&participant.session_id), &message)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "signaling: publishing a signal failed");
            SignalingError::Unavailable
        })
}

/// Tells the session that a (stale) seat is gone; it was already freed.
async fn announce_left(store: &dyn Store, seat: &SeatRow) {
    let left = announcement(Kind::Left, &seat.identity, &seat.socket_id, None);
    if let Err(err) = store.bus().publish(&topic(&seat.session_id), &left).await {
        tracing::warn!(error = %err, "signaling: announcing a freed seat failed");
    }
}

/// Keeps this instance's seats alive and frees those of dead instances,
/// every [`HEARTBEAT`].
pub fn spawn_keeper(state: &AppState) -> tokio::task::JoinHandle<()> {
    let store = state.store.clone();
    let instance_id = state.signaling.instance_id.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(HEARTBEAT);
        loop {
            ticker.tick().await;
            let now = crate::clock::now();
            if let Err(err) = store.refresh_signaling_seats(&instance_id, now).await {
                tracing::warn!(error = %err, "signaling: refreshing seats failed");
                continue;
            }
            if let Err(err) = sweep(store.as_ref(), now - STALE_AFTER_SECONDS).await {
                tracing::warn!(error = %err, "signaling: sweeping stale seats failed");
            }
        }
    })
}

/// Frees the seats last refreshed before `stale_before`, announcing each
/// leave to the session.
async fn sweep(store: &dyn Store, stale_before: i64) -> Result<(), StoreError> {
    for seat in store
        .stale_signaling_seats(stale_before, SWEEP_BATCH)
        .await?
    {
        let left = announcement(Kind::Left, &seat.identity, &seat.socket_id, None);
        let topic = topic(&seat.session_id);
        let announce = Announcement {
            topic: &topic,
            message: &left,
        };
        if store
            .leave_signaling_seat(&seat, Some(stale_before), announce)
            .await?
        {
            tracing::info!("signaling: swept the stale seat of a dead instance");
        }
    }
    Ok(())
}

/// What a joined socket knows of its session, and what each announcement
/// means for its client. Pure: the rules of presence are here.
#[derive(Debug)]
pub struct View {
    identity: String,
    socket: String,
    /// The other participant's socket, while present.
    peer: Option<String>,
    /// Whether this socket's own `joined` came by. Announcements before it
    /// were committed before this socket took its seat, so the seats it
    /// read already reflect them: they are history, and ignored.
    seated: bool,
}

/// What to tell the client after an announcement.
#[derive(Debug, PartialEq, Eq)]
pub enum Tell {
    Nothing,
    PeerJoined,
    PeerLeft,
    /// `{"type":"signal","data":…}`, ready to send.
    Signal(String),
    /// Refuse and close.
    Close(SignalingError),
}

impl View {
    pub fn new(participant: &Participant, socket: &str, peer: Option<String>) -> Self {
        View {
            identity: participant.identity.clone(),
            socket: socket.to_string(),
            peer,
            seated: false,
        }
    }

    /// Whether the other participant is present.
    pub fn peer_present(&self) -> bool {
        self.peer.is_some()
    }

    pub fn on(&mut self, announced: &Announced<'_>) -> Tell {
        if announced.socket == self.socket {
            if announced.kind == Kind::Joined {
                self.seated = true;
            } else if announced.kind == Kind::Left && self.seated {
                // Swept by another instance: this socket no longer counts.
                return Tell::Close(SignalingError::PresenceLost);
            }
            return Tell::Nothing;
        }
        if !self.seated {
            return Tell::Nothing;
        }
        let mine = announced.identity == self.identity;
        match (announced.kind, mine) {
            (Kind::Joined, true) => Tell::Close(SignalingError::Replaced),
            (Kind::Joined, false) => {
                self.peer = Some(announced.socket.clone());
                Tell::PeerJoined
            }
            (Kind::Left, false) if self.peer.as_deref() == Some(announced.socket.as_str()) => {
                self.peer = None;
                Tell::PeerLeft
            }
            (Kind::Signal, false) if self.peer.as_deref() == Some(announced.socket.as_str()) => {
                match announced.data {
                    Some(data) => Tell::Signal(signal_message(data)),
                    None => Tell::Nothing,
                }
            }
            _ => Tell::Nothing,
        }
    }
}

/// `{"type":"signal","data":…}` with `data` as it was sent.
fn signal_message(data: &RawValue) -> String {
    format!(r#"{{"type":"signal","data":{}}}"#, data.get())
}

/// A token bucket: `capacity` at once, refilled at `per_second`.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: f64, per_second: f64, now: Instant) -> Self {
        Bucket {
            capacity,
            per_second,
            tokens: capacity,
            at: now,
        }
    }

    fn take(&mut self, amount: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.at = now;
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

/// How much one socket may send: messages and bytes, each a token bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    messages: Bucket,
    bytes: Bucket,
}

impl RateLimit {
    pub fn new(now: Instant) -> Self {
        RateLimit {
            messages: Bucket::new(MESSAGE_BURST, MESSAGES_PER_SECOND, now),
            bytes: Bucket::new(BYTE_BURST, BYTES_PER_SECOND, now),
        }
    }

    /// Counts a message of `len` bytes; false when it is one too many.
    pub fn allow(&mut self, len: usize, now: Instant) -> bool {
        // Both are charged, so a refused message costs the sender too.
        let message = self.messages.take(1.0, now);
        let bytes = self.bytes.take(len as f64, now);
        message && bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced<'a>(
        kind: Kind,
        identity: &str,
        socket: &str,
        data: Option<&'a RawValue>,
    ) -> Announced<'a> {
        Announced {
            kind,
            identity: identity.into(),
            socket: socket.into(),
            data,
        }
    }

    fn alice() -> Participant {
        Participant {
            session_id: "s".into(),
            identity: "alice".into(),
            expires_at: i64::MAX,
        }
    }

    #[test]
    fn joins_and_signals_parse_and_everything_else_is_malformed() {
        assert!(matches!(
            parse(br#"{"type":"join","sessionId":"s","token":"t"}"#),
            Ok(Request::Join { .. })
        ));
        for data in [
            r#"{"description":{"type":"offer","sdp":"v=0\r\n"}}"#,
            r#"{"description":{"type":"answer","sdp":""}}"#,
            r#"{"candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}}"#,
            r#"{"candidate":{"candidate":"","sdpMid":null,"sdpMLineIndex":null}}"#,
            r#"{"candidate":null}"#,
            r#"{"candidate":{}}"#,
        ] {
            let text = format!(r#"{{"type":"signal","data":{data}}}"#);
            match parse(text.as_bytes()) {
                Ok(Request::Signal { data: raw }) => assert_eq!(raw.get(), data),
                other => panic!("{data}: {other:?}"),
            }
        }
        for bad in [
            "",
            "[]",
            "null",
            r#"{"type":"join","sessionId":"s"}"#,
            r#"{"type":"join","sessionId":"","token":"t"}"#,
            r#"{"type":"join","sessionId":"s","token":7}"#,
            r#"{"type":"join","sessionId":"s","token":"t","data":{}}"#,
            r#"{"type":"join","sessionId":"s","token":"t","extra":1}"#,
            r#"{"type":"hello"}"#,
            r#"{"type":"signal"}"#,
            r#"{"type":"signal","data":null}"#,
            r#"{"type":"signal","data":{}}"#,
            r#"{"type":"signal","data":{"description":{"type":"rollback","sdp":""}}}"#,
            r#"{"type":"signal","data":{"description":{"type":"offer"}}}"#,
            r#"{"type":"signal","data":{"description":{"type":"offer","sdp":"x","more":1}}}"#,
            r#"{"type":"signal","data":{"candidate":{"candidate":"c","port":1}}}"#,
            r#"{"type":"signal","data":{"candidate":{"sdpMLineIndex":-1}}}"#,
            r#"{"type":"signal","data":{"candidate":null,"description":{"type":"offer","sdp":""}}}"#,
            r#"{"type":"signal","data":"text"}"#,
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(SignalingError::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_view_follows_its_peer_after_its_own_seat() {
        let mut view = View::new(&alice(), "a1", None);
        // History from before the seat was taken: already in what it read.
        assert_eq!(
            view.on(&announced(Kind::Joined, "bob", "b0", None)),
            Tell::Nothing
        );
        assert_eq!(
            view.on(&announced(Kind::Joined, "alice", "a0", None)),
            Tell::Nothing
        );
        assert_eq!(
            view.on(&announced(Kind::Joined, "alice", "a1", None)),
            Tell::Nothing
        );
        assert!(!view.peer_present());
        let data = RawValue::from_string(r#"{"candidate":null}"#.into()).unwrap();
        assert_eq!(
            view.on(&announced(Kind::Signal, "bob", "b1", Some(&data))),
            Tell::Nothing,
            "nobody is present to send it"
        );
        assert_eq!(
            view.on(&announced(Kind::Joined, "bob", "b1", None)),
            Tell::PeerJoined
        );
        assert_eq!(
            view.on(&announced(Kind::Signal, "bob", "b1", Some(&data))),
            Tell::Signal(r#"{"type":"signal","data":{"candidate":null}}"#.into())
        );
        assert_eq!(
            view.on(&announced(Kind::Signal, "alice", "a1", Some(&data))),
            Tell::Nothing,
            "its own signals are not echoed"
        );
        assert_eq!(
            view.on(&announced(Kind::Left, "bob", "b0", None)),
            Tell::Nothing,
            "an older socket"
        );
        assert_eq!(
            view.on(&announced(Kind::Left, "bob", "b1", None)),
            Tell::PeerLeft
        );
        assert_eq!(
            view.on(&announced(Kind::Left, "bob", "b1", None)),
            Tell::Nothing
        );
        assert_eq!(
            view.on(&announced(Kind::Joined, "alice", "a2", None)),
            Tell::Close(SignalingError::Replaced)
        );
        assert_eq!(
            view.on(&announced(Kind::Left, "alice", "a1", None)),
            Tell::Close(SignalingError::PresenceLost)
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_refill() {
        let start = Instant::now();
        let mut limit = RateLimit::new(start);
        for _ in 0..MESSAGE_BURST as usize {
            assert!(limit.allow(100, start));
        }
        assert!(!limit.allow(100, start));
        let later = start + Duration::from_millis(500);
        assert!(limit.allow(100, later), "five more after half a second");
        let mut bytes = RateLimit::new(start);
        for _ in 0..4 {
            assert!(bytes.allow(MAX_MESSAGE_BYTES, start));
        }
        assert!(
            !bytes.allow(MAX_MESSAGE_BYTES, start),
            "the byte budget is spent"
        );
    }

    #[test]
    fn only_plain_provider_refusals_are_shown() {
        assert_eq!(showable("wrong session").as_deref(), Some("wrong session"));
        assert_eq!(showable("expired").as_deref(), Some("expired"));
        assert_eq!(showable("token abc.def: HMAC mismatch"), None);
        assert_eq!(showable(""), None);
    }
}
