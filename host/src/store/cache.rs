//! What the hottest reads read, kept in memory: call URLs by token and the
//! push URLs that wake a user's devices.
//!
//! Opening a call URL (`GET /calls/{token}`) and calling through it are read
//! far more often than a call URL changes, and on SQLite every read is a hop
//! to sqlx's connection thread and back, which costs more CPU than the rest
//! of the request (BENCHMARKS.md, "Where the time goes"). Served from here,
//! those reads cost a hash lookup.
//!
//! What a reader may see, and why it is enough:
//!
//! - **This instance's own writes, at once.** Every write that changes a
//!   cached value (update, revoke, a user's deletion, a new session or push
//!   URL) forgets it before the write is acknowledged, and a read that raced
//!   with it is not kept (see [`Generation`]).
//! - **Other instances' writes, within [`FRESH_FOR`].** An entry is served
//!   only that long after it was read. On PostgreSQL, revoking, updating or
//!   deleting a call URL also notifies every instance in the same
//!   transaction, so they usually forget it within milliseconds; the
//!   freshness bound is what holds if a notification is lost.
//! - **Expiry, exactly.** A call URL's expiry is checked against the clock
//!   on every use, and cached push URLs are dropped the moment the first of
//!   the sessions they came from expires.
//!
//! Misses are not cached: a token that is not in storage is looked up every
//! time, so a call URL created on another instance is found at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{CallUrl, PushTopic, Timestamp};

/// How long a value read from storage is served without reading it again:
/// the bound on how stale another instance's change can look here.
pub const FRESH_FOR: Duration = Duration::from_millis(500);

/// Entries kept per kind: a few hundred bytes each.
const CAPACITY: usize = 20_000;

/// Topic on the bus where instances tell each other what to forget.
pub(super) const INVALIDATION_TOPIC: &str = "store:forget";

#[derive(Clone)]
struct Entry<T> {
    value: T,
    read_at: Instant,
}

impl<T: Clone> Entry<T> {
    fn fresh(&self) -> Option<T> {
        (self.read_at.elapsed() < FRESH_FOR).then(|| self.value.clone())
    }
}

/// A user's push URLs for one topic, as they were at `as_of`, good until the
/// first of their sessions expires.
#[derive(Clone)]
struct PushUrls {
    urls: Arc<[String]>,
    as_of: Timestamp,
    until: Timestamp,
}

/// Counts the invalidations. A reader notes it before reading storage and
/// keeps what it read only if no invalidation happened meanwhile: otherwise a
/// read that started before a revoke could put the revoked call URL back
/// after the revoke had forgotten it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Generation(u64);

/// What to forget, from this instance's writes or another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Forget {
    CallUrl(String),
    /// A user's push URLs, of every topic.
    PushUrls(String),
    /// Everything cached about a user: their call URLs and push URLs.
    User(String),
}

impl Forget {
    /// Whether other instances are told at once (on PostgreSQL, in the
    /// write's transaction). Push URLs change with every registration: a
    /// notification each would cost every instance more than the cache
    /// saves, so other instances see them once their copy goes stale.
    pub(super) fn is_announced(&self) -> bool {
        !matches!(self, Forget::PushUrls(_))
    }

    pub(super) fn to_message(&self) -> String {
        match self {
            Forget::CallUrl(token) => format!("call-url {token}"),
            Forget::PushUrls(user_id) => format!("push-urls {user_id}"),
            Forget::User(user_id) => format!("user {user_id}"),
        }
    }

    pub(super) fn from_message(message: &str) -> Option<Self> {
        match message.split_once(' ')? {
            ("call-url", token) => Some(Forget::CallUrl(token.to_string())),
            ("push-urls", user_id) => Some(Forget::PushUrls(user_id.to_string())),
            ("user", user_id) => Some(Forget::User(user_id.to_string())),
            _ => None,
        }
    }
}

pub(super) struct ReadCache {
    call_urls: quick_cache::sync::Cache<String, Entry<CallUrl>>,
    push_urls: quick_cache::sync::Cache<(String, PushTopic), Entry<PushUrls>>,
    generation: AtomicU64,
}

impl ReadCache {
    pub(super) fn new() -> Self {
        ReadCache {
            call_urls: quick_cache::sync::Cache::new(CAPACITY),
            push_urls: quick_cache::sync::Cache::new(CAPACITY),
            generation: AtomicU64::new(0),
        }
    }

    pub(super) fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    pub(super) fn call_url(&self, token: &str) -> Option<CallUrl> {
        self.call_urls.get(token)?.fresh()
    }

    /// The user's push URLs for `topic` live at `now`, if known.
    pub(super) fn push_urls(
        &self,
        user_id: &str,
        topic: PushTopic,
        now: Timestamp,
    ) -> Option<Arc<[String]>> {
        let entry = self.push_urls.get(&(user_id.to_string(), topic))?;
        let cached = entry.fresh()?;
        (cached.as_of <= now && now < cached.until).then_some(cached.urls)
    }

    pub(super) fn keep_call_url(&self, read_in: Generation, call_url: &CallUrl) {
        self.keep(
            read_in,
            &self.call_urls,
            call_url.token.clone(),
            call_url.clone(),
        );
    }

    /// Keeps the push URLs read at `now` from sessions of which the first
    /// expires at `until`.
    pub(super) fn keep_push_urls(
        &self,
        read_in: Generation,
        user_id: &str,
        topic: PushTopic,
        urls: &[String],
        now: Timestamp,
        until: Timestamp,
    ) {
        let value = PushUrls {
            urls: urls.into(),
            as_of: now,
            until,
        };
        self.keep(
            read_in,
            &self.push_urls,
            (user_id.to_string(), topic),
            value,
        );
    }

    fn keep<K, T>(
        &self,
        read_in: Generation,
        cache: &quick_cache::sync::Cache<K, Entry<T>>,
        key: K,
        value: T,
    ) where
        K: Eq + std::hash::Hash + Clone,
        T: Clone,
    {
        if self.generation() != read_in {
            return;
        }
        let read_at = Instant::now();
        cache.insert(key.clone(), Entry { value, read_at });
        // An invalidation between the check and the insert may have missed
        // this entry; it bumped the generation before forgetting, so look again.
        if self.generation() != read_in {
            cache.remove(&key);
        }
    }

    pub(super) fn forget(&self, what: &Forget) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        match what {
            Forget::CallUrl(token) => {
                self.call_urls.remove(token.as_str());
            }
            Forget::PushUrls(user_id) => self.forget_push_urls(user_id),
            Forget::User(user_id) => {
                self.call_urls
                    .retain(|_, entry| &entry.value.user_id != user_id);
                self.forget_push_urls(user_id);
            }
        }
    }

    fn forget_push_urls(&self, user_id: &str) {
        for topic in [PushTopic::Calls, PushTopic::Rooms] {
            self.push_urls.remove(&(user_id.to_string(), topic));
        }
    }

    /// Forgets everything: another instance's invalidations may have been missed.
    pub(super) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.call_urls.clear();
        self.push_urls.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_url(token: &str, user_id: &str) -> CallUrl {
        CallUrl {
            token: token.into(),
            user_id: user_id.into(),
            caller_id: "alice".into(),
            issuer: None,
            subject: None,
            created_at: 1,
            expires_at: 2,
        }
    }

    #[test]
    fn a_read_that_raced_with_an_invalidation_is_not_kept() {
        let cache = ReadCache::new();
        let before = cache.generation();
        cache.forget(&Forget::CallUrl("t".into()));
        cache.keep_call_url(before, &call_url("t", "bob"));
        assert!(cache.call_url("t").is_none());
        cache.keep_call_url(cache.generation(), &call_url("t", "bob"));
        assert_eq!(cache.call_url("t").unwrap().user_id, "bob");
    }

    #[test]
    fn forgetting_a_user_forgets_their_call_urls_and_push_urls_only() {
        let cache = ReadCache::new();
        let now = cache.generation();
        cache.keep_call_url(now, &call_url("bob-1", "bob"));
        cache.keep_call_url(now, &call_url("carol-1", "carol"));
        cache.keep_push_urls(now, "bob", PushTopic::Calls, &["u".into()], 10, 20);
        cache.forget(&Forget::User("bob".into()));
        assert!(cache.call_url("bob-1").is_none());
        assert!(cache.push_urls("bob", PushTopic::Calls, 10).is_none());
        assert!(cache.call_url("carol-1").is_some());
    }

    #[test]
    fn push_urls_are_served_only_for_the_times_they_were_read_for() {
        let cache = ReadCache::new();
        cache.keep_push_urls(cache.generation(), "bob", PushTopic::Calls, &[], 10, 20);
        assert!(cache.push_urls("bob", PushTopic::Calls, 9).is_none());
        assert!(cache.push_urls("bob", PushTopic::Calls, 10).is_some());
        assert!(cache.push_urls("bob", PushTopic::Calls, 19).is_some());
        assert!(cache.push_urls("bob", PushTopic::Calls, 20).is_none());
        assert!(cache.push_urls("bob", PushTopic::Rooms, 10).is_none());
    }

    #[test]
    fn messages_between_instances_round_trip() {
        for forget in [
            Forget::CallUrl("abc_-1".into()),
            Forget::PushUrls("fxa:56".into()),
            Forget::User("fxa:12 34".into()),
        ] {
            assert_eq!(Forget::from_message(&forget.to_message()), Some(forget));
        }
        assert_eq!(Forget::from_message("nonsense"), None);
    }
}
