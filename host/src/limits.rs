//! Rate limits: a token bucket per client address, Hawk session or call URL,
//! with a budget per kind of request (`[rate_limits]` in `config.toml`).
//!
//! The buckets are governor's keyed GCRA limiters, held in this process's
//! memory: every instance counts on its own, on SQLite and on PostgreSQL alike.
//! Counting across instances would cost a database round trip per request,
//! which is what the limits are there to spare; behind a load balancer each
//! instance enforces its share, so a client spread over N instances gets up
//! to N times a budget.
//!
//! Keyed state is bounded: idle keys (whose bucket has refilled) are pruned
//! every [`PRUNE_INTERVAL`], and a budget already tracking `max_tracked_keys`
//! keys checks nothing until the next prune (with a warning), so memory stays
//! bounded whatever a flood of addresses does, without locking every new
//! client out.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::app::AppState;
use crate::config::{Rate, RateLimitsConfig};
use crate::error::{AppError, AppResult};

/// How often idle keys are dropped from every budget.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// Who a per-address budget counts: an IPv4 address, or the /64 network of
/// an IPv6 address, since one IPv6 host usually holds a whole /64 and could
/// otherwise rotate through addresses to dodge its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNet {
    V4([u8; 4]),
    V6Prefix64(u64),
}

impl From<IpAddr> for ClientNet {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => Self::V6Prefix64((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The client's address, as [`Limits::client_ip`] reads it; `None` only
/// where no connection information exists (in-process router tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(state.limits.client(&parts.extensions, &parts.headers))
    }
}

/// One budget: a limiter and the rate it was built with, swapped whole when
/// a reload changes the rate.
struct Budget<K: Hash + Eq + Clone> {
    /// The `[rate_limits]` key, also the metric's `budget` label.
    name: &'static str,
    current: ArcSwap<Bucket<K>>,
    /// Whether the budget was found full since the last prune (warned once).
    full: AtomicBool,
    /// Keys the limiter held when last counted, and tokens taken since: each
    /// take adds at most one key, so their sum bounds the keys held now.
    /// Counting them (every shard of the map, locked in turn) only once that
    /// bound reaches `max_tracked_keys` keeps the count off nearly every
    /// request.
    counted_keys: AtomicUsize,
    takes_since_count: AtomicUsize,
}

struct Bucket<K: Hash + Eq + Clone> {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<K>,
}

fn quota(rate: Rate) -> Quota {
    let per_minute = rate.per_minute.max(1);
    let period = Duration::from_nanos(60_000_000_000 / u64::from(per_minute));
    Quota::with_period(period)
        .expect("a validated per_minute gives a period of at least a microsecond")
        .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN))
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            limiter: DefaultKeyedRateLimiter::dashmap(quota(rate)),
        }
    }
}

/// Whole seconds, at least one: `Retry-After` has no fractions, and 0 would
/// invite an immediate retry that is refused again.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

fn rejected(budget: &'static str, retry_after_seconds: u64) -> AppError {
    metrics::counter!("loop_rate_limit_rejections_total", "budget" => budget).increment(1);
    AppError::TooManyRequests {
        budget,
        retry_after_seconds,
    }
}

impl<K: Hash + Eq + Clone> Budget<K> {
    fn new(name: &'static str, rate: Rate) -> Self {
        Self {
            name,
            current: ArcSwap::from_pointee(Bucket::new(rate)),
            full: AtomicBool::new(false),
            counted_keys: AtomicUsize::new(0),
            takes_since_count: AtomicUsize::new(0),
        }
    }

    /// Whether the limiter may hold `max_keys` keys or more (counted when
    /// the bound says it might).
    fn may_be_full(&self, bucket: &Bucket<K>, max_keys: usize) -> bool {
        let takes = self.takes_since_count.fetch_add(1, Ordering::Relaxed);
        if self.counted_keys.load(Ordering::Relaxed) + takes < max_keys {
            return false;
        }
        self.recount(bucket) >= max_keys
    }

    fn recount(&self, bucket: &Bucket<K>) -> usize {
        // Reset before counting, so a take that lands during the count is
        // counted twice rather than missed; one already past its increment
        // but not yet in the map can still be missed, so a budget may go
        // over its maximum by the takes in flight, a handful of keys.
        self.takes_since_count.store(0, Ordering::Relaxed);
        let keys = bucket.limiter.len();
        self.counted_keys.store(keys, Ordering::Relaxed);
        keys
    }

    /// Takes a token for `key`, or refuses with how long until one is free.
    fn take(&self, key: &K, max_keys: usize) -> AppResult<()> {
        self.try_take(key, max_keys)
            .map_err(|(budget, wait)| rejected(budget, whole_seconds(wait)))
    }

    /// Takes a token for `key`, or says how long until one is free.
    fn try_take(&self, key: &K, max_keys: usize) -> Result<(), (&'static str, Duration)> {
        let bucket = self.current.load();
        if self.may_be_full(&bucket, max_keys) {
            // Every key is in use: refusing would shut out every new client
            // (and governor cannot tell a new key from a known one without
            // adding it), so the budget lets requests through unchecked
            // until the next prune makes room; memory stays bounded.
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    budget = self.name,
                    keys = max_keys,
                    "rate limit budget tracks rate_limits.max_tracked_keys keys; \
                     unchecked until idle ones are pruned"
                );
            }
            return Ok(());
        }
        bucket.limiter.check_key(key).map_err(|not_until| {
            let now = bucket.limiter.clock().now();
            (self.name, not_until.wait_time_from(now))
        })
    }

    /// A bucket whose rate is unchanged keeps its state; a changed rate
    /// starts afresh (every key full).
    fn set_rate(&self, rate: Rate) {
        if self.current.load().rate != rate {
            self.current.store(Arc::new(Bucket::new(rate)));
        }
    }

    fn prune(&self) {
        let bucket = self.current.load();
        bucket.limiter.retain_recent();
        bucket.limiter.shrink_to_fit();
        self.recount(&bucket);
        self.full.store(false, Ordering::Relaxed);
    }
}

/// What a reload may change besides the rates.
struct Settings {
    enabled: bool,
    /// Lower-case header name.
    client_ip_header: Option<String>,
    max_tracked_keys: usize,
}

impl Settings {
    fn from_config(config: &RateLimitsConfig) -> Self {
        Self {
            enabled: config.enabled,
            client_ip_header: config
                .client_ip_header
                .as_deref()
                .map(|header| header.trim().to_ascii_lowercase())
                .filter(|header| !header.is_empty()),
            max_tracked_keys: config.max_tracked_keys,
        }
    }
}

/// Every budget of this instance; built once in `app.rs`, reconfigured on reload.
pub struct Limits {
    settings: ArcSwap<Settings>,
    registration_per_ip: Budget<ClientNet>,
    call_urls_per_session: Budget<String>,
    call_urls_per_ip: Budget<ClientNet>,
    calls_per_call_url: Budget<String>,
    calls_per_ip: Budget<ClientNet>,
    failed_auth_per_ip: Budget<ClientNet>,
    /// Addresses past their failed-authentication budget, until when: their
    /// requests are refused before any credential is checked. Bounded like
    /// the budgets' keys.
    auth_blocked: ArcSwap<quick_cache::sync::Cache<ClientNet, Instant>>,
}

impl Limits {
    pub fn new(config: &RateLimitsConfig) -> Self {
        Self {
            settings: ArcSwap::from_pointee(Settings::from_config(config)),
            registration_per_ip: Budget::new("registration_per_ip", config.registration_per_ip),
            call_urls_per_session: Budget::new(
                "call_urls_per_session",
                config.call_urls_per_session,
            ),
            call_urls_per_ip: Budget::new("call_urls_per_ip", config.call_urls_per_ip),
            calls_per_call_url: Budget::new("calls_per_call_url", config.calls_per_call_url),
            calls_per_ip: Budget::new("calls_per_ip", config.calls_per_ip),
            failed_auth_per_ip: Budget::new("failed_auth_per_ip", config.failed_auth_per_ip),
            auth_blocked: ArcSwap::from_pointee(quick_cache::sync::Cache::new(
                config.max_tracked_keys,
            )),
        }
    }

    /// Applies a reloaded `[rate_limits]`: budgets whose rate is unchanged
    /// keep their buckets (a reload is no way to reset a client's budget);
    /// a changed budget starts with every bucket full.
    pub fn reconfigure(&self, config: &RateLimitsConfig) {
        let old = self.settings.swap(Arc::new(Settings::from_config(config)));
        self.registration_per_ip
            .set_rate(config.registration_per_ip);
        self.call_urls_per_session
            .set_rate(config.call_urls_per_session);
        self.call_urls_per_ip.set_rate(config.call_urls_per_ip);
        self.calls_per_call_url.set_rate(config.calls_per_call_url);
        self.calls_per_ip.set_rate(config.calls_per_ip);
        let failed_auth = self.failed_auth_per_ip.current.load().rate;
        self.failed_auth_per_ip.set_rate(config.failed_auth_per_ip);
        if failed_auth != config.failed_auth_per_ip
            || old.max_tracked_keys != config.max_tracked_keys
        {
            self.auth_blocked
                .store(Arc::new(quick_cache::sync::Cache::new(
                    config.max_tracked_keys,
                )));
        }
    }

    /// Drops idle keys from every budget; run every [`PRUNE_INTERVAL`].
    pub fn prune(&self) {
        self.registration_per_ip.prune();
        self.call_urls_per_session.prune();
        self.call_urls_per_ip.prune();
        self.calls_per_call_url.prune();
        self.calls_per_ip.prune();
        self.failed_auth_per_ip.prune();
        let now = Instant::now();
        self.auth_blocked.load().retain(|_, until| *until > now);
    }

    /// The client's address: the TCP peer's, or with
    /// `rate_limits.client_ip_header` the right-most entry of that header.
    /// Right-most, because that is the one the trusted proxy in front of us
    /// appended; entries to its left came from the client and can say
    /// anything. A missing or malformed entry falls back to the peer.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let settings = self.settings.load();
        let Some(name) = &settings.client_ip_header else {
            return peer;
        };
        headers
            .get_all(name.as_str())
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(parse_forwarded_address)
            .or(peer)
    }

    /// `Some(max_tracked_keys)` while limits are enforced.
    /// The client of a request, from its connection and headers.
    pub fn client(&self, extensions: &Extensions, headers: &HeaderMap) -> ClientIp {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        ClientIp(self.client_ip(peer, headers))
    }

    fn enforced(&self) -> Option<usize> {
        let settings = self.settings.load();
        settings.enabled.then_some(settings.max_tracked_keys)
    }

    /// `POST /registration`.
    pub fn registration(&self, client: ClientIp) -> AppResult<()> {
        let (Some(max_keys), Some(ip)) = (self.enforced(), client.0) else {
            return Ok(());
        };
        self.registration_per_ip
            .take(&ClientNet::from(ip), max_keys)
    }

    /// `POST /call-url`, by the session `session_key` (its id HMAC).
    pub fn call_url_creation(&self, client: ClientIp, session_key: &str) -> AppResult<()> {
        let Some(max_keys) = self.enforced() else {
            return Ok(());
        };
        if let Some(ip) = client.0 {
            self.call_urls_per_ip.take(&ClientNet::from(ip), max_keys)?;
        }
        self.call_urls_per_session
            .take(&session_key.to_owned(), max_keys)
    }

    /// `POST /calls/{token}`: the caller's address first, so that a client
    /// spraying made-up tokens is stopped before it adds a key for each.
    pub fn call(&self, client: ClientIp, call_url_token: &str) -> AppResult<()> {
        let Some(max_keys) = self.enforced() else {
            return Ok(());
        };
        if let Some(ip) = client.0 {
            self.calls_per_ip.take(&ClientNet::from(ip), max_keys)?;
        }
        self.calls_per_call_url
            .take(&call_url_token.to_owned(), max_keys)
    }

    /// Before credentials are checked: refused while this address is past
    /// its failed-authentication budget.
    pub fn authentication_allowed(&self, client: ClientIp) -> AppResult<()> {
        let (Some(_), Some(ip)) = (self.enforced(), client.0) else {
            return Ok(());
        };
        let net = ClientNet::from(ip);
        let blocked = self.auth_blocked.load();
        let Some(until) = blocked.get(&net) else {
            return Ok(());
        };
        let now = Instant::now();
        if until > now {
            return Err(rejected(
                self.failed_auth_per_ip.name,
                whole_seconds(until - now),
            ));
        }
        blocked.remove(&net);
        Ok(())
    }

    /// After credentials were refused: counts the failure, and refuses (in
    /// place of the 401) once the address is past its budget, blocking it
    /// until its bucket has a token again.
    pub fn authentication_failed(&self, client: ClientIp) -> AppResult<()> {
        let (Some(max_keys), Some(ip)) = (self.enforced(), client.0) else {
            return Ok(());
        };
        let net = ClientNet::from(ip);
        self.failed_auth_per_ip
            .try_take(&net, max_keys)
            .map_err(|(budget, wait)| {
                self.auth_blocked.load().insert(net, Instant::now() + wait);
                rejected(budget, whole_seconds(wait))
            })
    }
}

/// One entry of a forwarding header: an address, with or without a port
/// (`203.0.113.7`, `203.0.113.7:4711`, `2001:db8::1`, `[2001:db8::1]:4711`).
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

/// Prunes idle keys every [`PRUNE_INTERVAL`] until aborted.
pub fn spawn_pruner(limits: Arc<Limits>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PRUNE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            limits.prune();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(burst: u32) -> RateLimitsConfig {
        RateLimitsConfig {
            registration_per_ip: Rate::new(1, burst),
            ..RateLimitsConfig::default()
        }
    }

    fn client(ip: &str) -> ClientIp {
        ClientIp(Some(ip.parse().unwrap()))
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_budgets() {
        let limits = Limits::new(&config(1));
        let alice = client("203.0.113.1");
        limits.registration(alice).unwrap();
        assert!(limits.registration(alice).is_err());

        // Same rate, other settings changed: Alice's bucket is still empty.
        limits.reconfigure(&RateLimitsConfig {
            calls_per_ip: Rate::new(7, 7),
            ..config(1)
        });
        assert!(limits.registration(alice).is_err());

        // A new rate starts afresh.
        limits.reconfigure(&config(2));
        limits.registration(alice).unwrap();
        limits.registration(alice).unwrap();
        assert!(limits.registration(alice).is_err());

        // Turned off and on again: still the same buckets.
        limits.reconfigure(&RateLimitsConfig {
            enabled: false,
            ..config(2)
        });
        limits.registration(alice).unwrap();
        limits.reconfigure(&config(2));
        assert!(limits.registration(alice).is_err());
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let net = |ip: &str| ClientNet::from(ip.parse::<IpAddr>().unwrap());
        assert_eq!(
            net("2001:db8:1:2::1"),
            net("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("::ffff:203.0.113.5"), net("203.0.113.5"));
        assert_ne!(net("203.0.113.5"), net("203.0.113.6"));
    }

    #[test]
    fn forwarded_entries_may_carry_ports() {
        for (entry, ip) in [
            (" 203.0.113.7", "203.0.113.7"),
            ("203.0.113.7:4711", "203.0.113.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("\"203.0.113.7\"", "203.0.113.7"),
        ] {
            assert_eq!(
                parse_forwarded_address(entry),
                Some(ip.parse().unwrap()),
                "{entry}"
            );
        }
        for entry in ["", "unknown", "_hidden", "203.0.113"] {
            assert_eq!(parse_forwarded_address(entry), None, "{entry}");
        }
    }

    #[test]
    fn a_full_budget_checks_nothing_until_pruned() {
        let limits = Limits::new(&RateLimitsConfig {
            max_tracked_keys: 2,
            ..config(1)
        });
        limits.registration(client("203.0.113.1")).unwrap();
        limits.registration(client("203.0.113.2")).unwrap();
        // Two keys tracked: a third address is let through, not tracked.
        limits.registration(client("203.0.113.3")).unwrap();
        limits.registration(client("203.0.113.3")).unwrap();
        let tracked = limits.registration_per_ip.current.load().limiter.len();
        assert_eq!(tracked, 2);
    }

    #[test]
    fn keys_are_counted_only_when_the_budget_could_be_full_and_never_exceed_it() {
        let limits = Limits::new(&RateLimitsConfig {
            max_tracked_keys: 50,
            ..config(1)
        });
        let budget = &limits.registration_per_ip;
        let alice = client("203.0.113.1");
        limits.registration(alice).unwrap();
        // Many refused takes by one client: the bound passes the maximum,
        // a count finds one key, and Alice stays refused.
        for _ in 0..200 {
            assert!(limits.registration(alice).is_err());
        }
        assert!(budget.counted_keys.load(Ordering::Relaxed) <= 1);
        assert!(budget.takes_since_count.load(Ordering::Relaxed) < 50);
        // New clients up to the maximum are tracked and limited; past it
        // nothing is added.
        for i in 0..100u8 {
            let _ = limits.registration(client(&format!("198.51.100.{i}")));
        }
        assert_eq!(budget.current.load().limiter.len(), 50);
        assert!(
            budget.full.load(Ordering::Relaxed),
            "found full, and warned"
        );
    }
}
