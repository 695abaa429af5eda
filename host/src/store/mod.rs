//! Storage: one small trait, one SQL implementation that serves SQLite and
//! PostgreSQL with the same queries, the backend chosen from the URL scheme.
//!
//! - `connection.rs`: opening SQLite or PostgreSQL, their settings, migrations.
//! - `queries.rs`: the `Store` implementation, one set of queries for both.
//! - `batch.rs`: the group-commit writer behind the hot writes.
//! - `cache.rs`: call URLs and push URLs kept in memory for the hot reads.
//! - `inline_reads.rs`: SQLite's other hot reads, run without a thread hand-off.
//! - `error.rs`: [`StoreError`], what a failure means to the caller.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

mod batch;
mod cache;
mod connection;
mod error;
mod inline_reads;
mod nonce_ledger;
mod queries;
mod reachability;
mod signaling;

pub use batch::BatchStats;
pub use cache::FRESH_FOR as CACHE_FRESH_FOR;
pub use connection::{SqlStore, connect};
pub use error::{StoreError, StoreErrorSource};
pub use queries::EXPIRED_CALL_URL_RETENTION_SECONDS;
pub use signaling::{SEATS_PER_SESSION, Seat, SeatRow, SeatTaken};

/// The database `database.url` names, by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn of(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!("database.url: must start with sqlite: or postgres://")
        }
    }
}

/// `database.sqlite_synchronous`: when a SQLite commit is acknowledged,
/// what it survives. The database is in WAL mode either way and is never
/// corrupted by a crash; the choice is only how recent the last committed
/// writes are after one. See `config.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Commits reach the OS, not the disk: they survive the process
    /// crashing, but a power loss or OS crash may lose the last ones.
    #[default]
    Normal,
    /// Every commit is fsynced before it is acknowledged: it survives a
    /// power loss too, for one fsync per write round.
    Full,
}

impl SqliteSynchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            SqliteSynchronous::Normal => "NORMAL",
            SqliteSynchronous::Full => "FULL",
        }
    }
}

/// Unix seconds; every timestamp in storage uses it.
pub type Timestamp = i64;

/// A Hawk device session. The Hawk id itself is never stored: `id_hmac` is an
/// HMAC of it under a server secret, so a database dump cannot be used to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id_hmac: String,
    /// The Hawk key (hex), needed to check request MACs.
    pub key: String,
    /// The user the session belongs to: a verified FxA identity, or the
    /// session's own `id_hmac` for anonymous devices.
    pub user_id: String,
    pub expires_at: Timestamp,
}

/// What a push wakes a device for. Loop has two topics; each session holds
/// at most one push URL per topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushTopic {
    /// Incoming calls.
    Calls,
    /// Room activity.
    Rooms,
}

impl PushTopic {
    /// The `sessions` column holding this topic's push URL.
    pub(crate) fn column(self) -> &'static str {
        match self {
            PushTopic::Calls => "calls_push_url",
            PushTopic::Rooms => "rooms_push_url",
        }
    }
}

/// Where to wake a session's device for `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushUrl {
    pub topic: PushTopic,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallUrl {
    pub token: String,
    /// Owner (callee).
    pub user_id: String,
    /// Who the link is for.
    pub caller_id: String,
    /// Owner's display name.
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Fields of a call URL a `PUT /call-url/{token}` may change; `None` keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallUrlUpdate {
    pub caller_id: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// A call placed through a call URL, kept for the callee to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub call_id: String,
    /// The callee.
    pub user_id: String,
    pub call_token: String,
    pub call_url: String,
    pub url_creation_date: Timestamp,
    pub caller_id: String,
    pub call_type: String,
    pub subject: Option<String>,
    /// The channel the caller named, which chose the provider.
    pub channel: Option<String>,
    pub provider: String,
    pub session_id: String,
    /// The callee's provider token.
    pub callee_token: String,
    pub api_key: String,
    /// What authenticates the caller's progress sockets.
    pub caller_websocket_token: String,
    /// What authenticates the callee's progress sockets (column `websocket_token`).
    pub callee_websocket_token: String,
    pub progress_url: String,
    /// The call's version: clients list calls with `version` ≥ N.
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A provider session whose call has ended, for the plugin's `end-session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    pub provider: String,
    pub session_id: String,
    pub channel: Option<String>,
}

/// A call's state in the progress protocol, as it is sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallState {
    Init,
    Alerting,
    Connecting,
    HalfConnected,
    Connected,
    Terminated,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Init => "init",
            CallState::Alerting => "alerting",
            CallState::Connecting => "connecting",
            CallState::HalfConnected => "half-connected",
            CallState::Connected => "connected",
            CallState::Terminated => "terminated",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "init" => CallState::Init,
            "alerting" => CallState::Alerting,
            "connecting" => CallState::Connecting,
            "half-connected" => CallState::HalfConnected,
            "connected" => CallState::Connected,
            "terminated" => CallState::Terminated,
            _ => return None,
        })
    }
}

/// The two sides of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    /// This side's bit in `CallProgress::hellos` and `media_up`.
    pub fn bit(self) -> i64 {
        match self {
            Side::Caller => 1,
            Side::Callee => 2,
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

/// Where a call stands in the progress protocol; the row every instance
/// reads and compare-and-sets (`version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallProgress {
    pub state: CallState,
    /// Why a terminated call ended.
    pub reason: Option<String>,
    /// The sides (`Side::bit`) that have said hello.
    pub hellos: i64,
    /// The sides that have sent `media-up`.
    pub media_up: i64,
    pub caller_sockets: i64,
    pub callee_sockets: i64,
    /// The socket of the callee device that accepted.
    pub accepted_by: Option<String>,
    /// When the running timer fires, Unix milliseconds.
    pub timer_at: Option<i64>,
    pub version: i64,
}

impl CallProgress {
    pub fn sockets(&self, side: Side) -> i64 {
        match side {
            Side::Caller => self.caller_sockets,
            Side::Callee => self.callee_sockets,
        }
    }

    pub fn sockets_mut(&mut self, side: Side) -> &mut i64 {
        match side {
            Side::Caller => &mut self.caller_sockets,
            Side::Callee => &mut self.callee_sockets,
        }
    }
}

/// A message published on the bus when a compare-and-set commits.
#[derive(Debug, Clone, Copy)]
pub struct Announcement<'a> {
    pub topic: &'a str,
    pub message: &'a str,
}

/// What [`Store::gauges`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreGauges {
    /// Connections idle and in use, where the backend keeps a set of them.
    pub connections: Option<(usize, usize)>,
    /// Requests' writes waiting for the next group-commit round.
    pub writer_queue: usize,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for `/__heartbeat__`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new session together with its device's push URLs.
    async fn create_session(
        &self,
        session: &Session,
        push_urls: &[PushUrl],
    ) -> Result<(), StoreError>;
    /// A live (not expired at `now`) session.
    async fn session(&self, id_hmac: &str, now: Timestamp) -> Result<Option<Session>, StoreError>;
    async fn touch_session(&self, id_hmac: &str, expires_at: Timestamp) -> Result<(), StoreError>;
    /// Records a Hawk nonce for a session only if the session exists and is
    /// live at `now`, in one statement; false if the nonce was already seen (a
    /// replay) or the session is gone. Lets Hawk check a session's key from a
    /// local cache and still see its deletion or expiry, exactly, on this and
    /// every other instance sharing the database.
    async fn remember_nonce_of_live_session(
        &self,
        id_hmac: &str,
        nonce: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Replaces this session's push URLs for the topics in `push_urls` (the
    /// last one per topic wins), in one statement; a topic not given keeps
    /// its URL. That is Mozilla's semantics (its Redis storage `HMSET`s the
    /// given topics): a device re-registering only `calls` is still woken
    /// for `rooms`. `DELETE /registration` is how a device forgets them.
    async fn set_push_urls(
        &self,
        session: &Session,
        push_urls: &[PushUrl],
    ) -> Result<(), StoreError>;
    /// Forgets every push URL of this session.
    async fn delete_push_urls(&self, session: &Session) -> Result<(), StoreError>;
    /// The push URLs for `topic` of the user's sessions live at `now`, each
    /// once, in order.
    async fn push_urls(
        &self,
        user_id: &str,
        topic: PushTopic,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError>;

    async fn create_call_url(&self, call_url: &CallUrl) -> Result<(), StoreError>;
    /// The call URL whatever its expiry (the API tells expired from unknown).
    async fn call_url(&self, token: &str) -> Result<Option<CallUrl>, StoreError>;
    /// The call URL (whatever its expiry) with the `topic` push URLs of its
    /// owner's sessions live at `now`, as `push_urls` lists them, in one read.
    async fn call_url_with_push_urls(
        &self,
        token: &str,
        topic: PushTopic,
        now: Timestamp,
    ) -> Result<Option<(CallUrl, Vec<String>)>, StoreError>;
    async fn call_urls(&self, user_id: &str, now: Timestamp) -> Result<Vec<CallUrl>, StoreError>;
    /// Updates an owner's call URL; false if no such token for that owner.
    async fn update_call_url(
        &self,
        token: &str,
        user_id: &str,
        update: &CallUrlUpdate,
    ) -> Result<bool, StoreError>;
    /// Revokes a call URL; false if no such token for that owner.
    async fn delete_call_url(&self, token: &str, user_id: &str) -> Result<bool, StoreError>;

    async fn create_call(&self, call: &Call) -> Result<(), StoreError>;
    /// Calls of `user_id` with `created_at >= version` that have not expired
    /// at `now` and are not terminated.
    async fn calls(
        &self,
        user_id: &str,
        version: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<Call>, StoreError>;

    /// A call with its progress, whatever its state or expiry.
    async fn call_progress(
        &self,
        call_id: &str,
    ) -> Result<Option<(Call, CallProgress)>, StoreError>;
    /// Writes `progress` (with version `expected_version + 1`) if the call's
    /// progress is still at `expected_version`; false if another writer got
    /// there first or the call is gone. When it is written, `announce` is
    /// published on the bus in commit order: on PostgreSQL by `NOTIFY` in the
    /// same transaction, on SQLite before the writer is released.
    async fn update_call_progress(
        &self,
        call_id: &str,
        expected_version: i64,
        progress: &CallProgress,
        announce: Option<Announcement<'_>>,
    ) -> Result<bool, StoreError>;

    /// Messages between requests and sockets of every instance on this database.
    fn bus(&self) -> &crate::bus::Bus;

    /// The connections' and the writer queue's state now, for metrics.
    fn gauges(&self) -> StoreGauges;

    /// Seats `seat` in its provider session's signaling, taking over its
    /// identity's seat from an older socket, unless two other identities
    /// whose seats were refreshed at or after `stale_before` hold the
    /// session. `announce` is published in commit order when seated.
    async fn take_signaling_seat(
        &self,
        seat: &Seat<'_>,
        now: Timestamp,
        stale_before: Timestamp,
        announce: Announcement<'_>,
    ) -> Result<SeatTaken, StoreError>;
    /// Frees `seat` if its socket still holds it (and, with `stale_before`,
    /// was last refreshed before then); `announce` is published in commit
    /// order when it was freed.
    async fn leave_signaling_seat(
        &self,
        seat: &SeatRow,
        stale_before: Option<Timestamp>,
        announce: Announcement<'_>,
    ) -> Result<bool, StoreError>;
    /// Marks the seats of `instance_id`'s sockets alive at `now`.
    async fn refresh_signaling_seats(
        &self,
        instance_id: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError>;
    /// Up to `limit` seats last refreshed before `stale_before`.
    async fn stale_signaling_seats(
        &self,
        stale_before: Timestamp,
        limit: i64,
    ) -> Result<Vec<SeatRow>, StoreError>;

    /// Deletes the user's sessions, push URLs, call URLs and calls.
    async fn delete_user(&self, user_id: &str) -> Result<(), StoreError>;
    /// Claims up to `limit` provider sessions whose call has ended at `now`
    /// (terminated, or listed no longer and never answered, or past the
    /// retention of unfinished calls), or only the call `call_id`'s: marks
    /// them ended and returns them. Each session is claimed once across
    /// every instance sharing the database.
    async fn claim_ended_sessions(
        &self,
        now: Timestamp,
        call_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EndedSession>, StoreError>;
    /// Removes rows expired at `now`; returns how many.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;
}

/// Purges expired rows every `database.purge_interval_seconds`.
pub fn spawn_purge(
    store: std::sync::Arc<dyn Store>,
    config: &crate::config::Config,
) -> tokio::task::JoinHandle<()> {
    let interval = std::time::Duration::from_secs(config.database.purge_interval_seconds.max(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            match store.purge_expired(crate::clock::now()).await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "purged expired rows"),
                Err(err) => tracing::warn!(error = %err, "purging expired rows failed"),
            }
        }
    })
}
