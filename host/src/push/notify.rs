//! The pings that wake a callee's devices when a call comes in.
//!
//! A SimplePush URL is woken by `PUT` with the form body `version=<n>`; the
//! device then asks us what changed (`GET /calls?version=n`). Push servers are
//! someone else's machines: a slow or broken one must never fail a call or hold
//! it up longer than `push.timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::join_all;
use tokio::sync::Semaphore;

use super::guard::PushRules;
use crate::config::{Config, PushConfig};
use crate::net::{Net, Policy};

/// Pings in flight at once across the server. Beyond this the push servers are
/// not keeping up, and queueing more would only grow memory.
const MAX_IN_FLIGHT: usize = 1024;

pub struct Push {
    /// `push.*` in force: a reload swaps it, and pings already under way
    /// finish under the one they started with.
    policy: ArcSwap<PushPolicy>,
    in_flight: Arc<Semaphore>,
}

/// What `push.allowed_origins`, `allow_private` and `timeout_ms` make: the
/// rules URLs are held to, the client that resolves under them, the bound
/// of each ping. Built whole, so a reload that cannot build one changes nothing.
pub struct PushPolicy {
    http: reqwest::Client,
    rules: Arc<PushRules>,
    timeout: Duration,
}

impl PushPolicy {
    pub fn new(config: &PushConfig, net: &Net) -> anyhow::Result<Self> {
        Ok(Self {
            http: net.client(Policy::push(config))?,
            rules: Arc::new(PushRules::new(config)),
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        })
    }
}

/// What became of one ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The push server accepted it (2xx).
    Sent,
    /// Not sent: the push policy refuses the URL or the addresses it resolves to.
    Refused,
    /// Refused by the push server, unreachable, timed out, or dropped because
    /// too many were in flight.
    Failed,
}

impl Push {
    pub fn new(config: &Config, net: &Net) -> anyhow::Result<Self> {
        Ok(Self {
            policy: ArcSwap::from_pointee(PushPolicy::new(&config.push, net)?),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// Puts `policy` in force for the pings and registrations that start
    /// from now on.
    pub fn set_policy(&self, policy: PushPolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// The rules push URLs are held to, at registration and at every ping.
    pub fn rules(&self) -> Arc<PushRules> {
        self.policy.load().rules.clone()
    }

    /// False while every ping slot is taken: push servers are not keeping up.
    pub fn healthy(&self) -> bool {
        self.in_flight.available_permits() > 0
    }

    /// Pings every URL concurrently with `version=<version>`, each bounded by
    /// `push.timeout_ms`, on a task of their own: the call is answered without
    /// waiting for anyone's push server, and a client that hangs up cancels
    /// nothing. Each URL is checked against the push policy again first: it
    /// was stored under the configuration of its registration. The outcome
    /// is logged.
    pub fn notify(&self, urls: Vec<String>, version: i64) {
        if urls.is_empty() {
            return;
        }
        let policy = self.policy.load();
        let http = policy.http.clone();
        let rules = policy.rules.clone();
        let timeout = policy.timeout;
        // Slots are taken here, before the task starts, so that `drain` sees
        // every ping the moment its call is answered.
        let pings: Vec<_> = urls
            .into_iter()
            .map(|url| (self.in_flight.clone().try_acquire_owned().ok(), url))
            .collect();
        tokio::spawn(async move {
            let pings = pings.into_iter().map(|(permit, url)| {
                let http = http.clone();
                let rules = rules.clone();
                async move {
                    if let Err(reason) = rules.check(&url) {
                        // The reason names the origin at most.
                        tracing::warn!(origin = %origin(&url), %reason, "push refused: the push policy no longer allows this URL");
                        return Outcome::Refused;
                    }
                    let Some(_permit) = permit else {
                        tracing::warn!(origin = %origin(&url), "push not sent: too many pings in flight");
                        return Outcome::Failed;
                    };
                    ping(&http, &url, version, timeout).await
                }
            });
            let outcomes = join_all(pings).await;
            let count = |outcome| outcomes.iter().filter(|o| **o == outcome).count();
            let (sent, failed, refused) = (
                count(Outcome::Sent),
                count(Outcome::Failed),
                count(Outcome::Refused),
            );
            tracing::debug!(sent, failed, refused, version, "callee notified");
        });
    }

    /// Waits for the pings in flight, at most `push.timeout_ms` (each ping's
    /// own bound): on shutdown, calls already answered still wake their callees.
    pub async fn drain(&self) {
        let all = MAX_IN_FLIGHT as u32;
        let wait = self.in_flight.acquire_many(all);
        let timeout = self.policy.load().timeout;
        if tokio::time::timeout(timeout + Duration::from_millis(50), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                pending = MAX_IN_FLIGHT - self.in_flight.available_permits(),
                "shutting down with pings still in flight"
            );
        }
    }
}

async fn ping(http: &reqwest::Client, url: &str, version: i64, timeout: Duration) -> Outcome {
    // A push URL is a capability for someone's device: log its origin only.
    let origin = origin(url);
    let result = http
        .put(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("version={version}"))
        .timeout(timeout)
        .send()
        .await;
    match result {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(%origin, version, "push sent");
            Outcome::Sent
        }
        Ok(response) => {
            tracing::warn!(%origin, status = response.status().as_u16(), "push failed: refused by the push server");
            Outcome::Failed
        }
        Err(err) if err.is_timeout() => {
            tracing::warn!(%origin, timeout_ms = timeout.as_millis() as u64, "push failed: timed out");
            Outcome::Failed
        }
        Err(err) => match crate::net::refusal(&err) {
            // The name resolved to addresses push may not reach (DNS rebinding).
            Some(refused) => {
                tracing::warn!(%origin, reason = %refused, "push refused: no address the push policy allows");
                Outcome::Refused
            }
            None => {
                // Display of a reqwest error includes the URL; strip it.
                tracing::warn!(%origin, error = %err.without_url(), "push failed: unreachable");
                Outcome::Failed
            }
        },
    }
}

fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => "<invalid url>".into(),
    }
}
