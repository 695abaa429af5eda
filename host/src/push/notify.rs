//! The pings that wake a callee's devices when a call comes in.
//!
//! A SimplePush URL is woken by `PUT` with the form body `version=<n>`; the
//! device then asks us what changed (`GET /calls?version=n`). Push servers are
//! someone else's machines: a slow or broken one must never fail a call or hold
//! it up longer than `push.timeout_ms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Kept across reloads: a push server's record does not depend on the policy.
    servers: Arc<Mutex<HashMap<String, ServerRecord>>>,
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

/// Push servers the heartbeat reports: those pinged within this window...
const SERVER_REPORT_WINDOW: Duration = Duration::from_secs(600);
/// ...at most this many, the most recently pinged: with `push.allowed_origins`
/// empty, clients choose the origins, and memory must not grow with them.
const MAX_SERVERS_REPORTED: usize = 32;

/// How the pings to one push server's origin have gone lately.
#[derive(Debug, Clone, Copy)]
struct ServerRecord {
    last_ping: Instant,
    /// Pings failed since the last one the server accepted.
    failures_in_a_row: u64,
    /// Why the last failed ping failed.
    last_failure: Option<&'static str>,
}

/// A push server's origin (never a push URL's path, which is a capability)
/// and how its recent pings went, for the heartbeat.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PushServerHealth {
    #[serde(skip)]
    pub origin: String,
    /// False while its pings fail: since the last accepted one, at least one failed.
    pub healthy: bool,
    pub failures_in_a_row: u64,
    /// "timed out", "refused" (a non-2xx answer) or "unreachable".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<&'static str>,
    pub seconds_since_last_ping: u64,
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
            servers: Arc::default(),
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

    /// The push servers pinged lately, by origin.
    pub fn servers(&self) -> Vec<PushServerHealth> {
        let servers = self.servers.lock().unwrap();
        servers
            .iter()
            .filter(|(_, record)| record.last_ping.elapsed() < SERVER_REPORT_WINDOW)
            .map(|(origin, record)| PushServerHealth {
                origin: origin.clone(),
                healthy: record.failures_in_a_row == 0,
                failures_in_a_row: record.failures_in_a_row,
                last_failure: record.last_failure,
                seconds_since_last_ping: record.last_ping.elapsed().as_secs(),
            })
            .collect()
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
        let servers = self.servers.clone();
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
                let servers = servers.clone();
                async move {
                    // Parsed once here, for the check, the logs and the request.
                    let url = match rules.check(&url) {
                        Ok(parsed) => parsed,
                        Err(reason) => {
                            // The reason names the origin at most.
                            tracing::warn!(origin = %origin(&url), %reason, "push refused: the push policy no longer allows this URL");
                            return counted(Outcome::Refused, "refused");
                        }
                    };
                    let origin = url.origin().ascii_serialization();
                    let Some(_permit) = permit else {
                        tracing::warn!(%origin, "push not sent: too many pings in flight");
                        return counted(Outcome::Failed, "busy");
                    };
                    let (outcome, failure) = ping(&http, url, &origin, version, timeout).await;
                    record(&servers, origin, failure);
                    outcome
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

/// Notes a ping's result against its origin (`failure`: why it failed).
fn record(
    servers: &Mutex<HashMap<String, ServerRecord>>,
    origin: String,
    failure: Option<&'static str>,
) {
    let mut servers = servers.lock().unwrap();
    if !servers.contains_key(&origin) && servers.len() >= MAX_SERVERS_REPORTED {
        let stalest = servers
            .iter()
            .min_by_key(|(_, record)| record.last_ping)
            .map(|(origin, _)| origin.clone());
        if let Some(stalest) = stalest {
            servers.remove(&stalest);
        }
    }
    let record = servers.entry(origin).or_insert(ServerRecord {
        last_ping: Instant::now(),
        failures_in_a_row: 0,
        last_failure: None,
    });
    record.last_ping = Instant::now();
    match failure {
        None => record.failures_in_a_row = 0,
        Some(why) => {
            record.failures_in_a_row += 1;
            record.last_failure = Some(why);
        }
    }
}

/// The outcome, and for a failed ping why it failed. A push URL is a
/// capability for someone's device: only its `origin` is logged.
async fn ping(
    http: &reqwest::Client,
    url: url::Url,
    origin: &str,
    version: i64,
    timeout: Duration,
) -> (Outcome, Option<&'static str>) {
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
            (counted(Outcome::Sent, "ok"), None)
        }
        Ok(response) => {
            let status = response.status();
            tracing::warn!(%origin, status = status.as_u16(), "push failed: refused by the push server");
            // The push server no longer knows the device's endpoint.
            let gone = matches!(status.as_u16(), 404 | 410);
            (
                counted(Outcome::Failed, if gone { "gone" } else { "error" }),
                Some("refused"),
            )
        }
        Err(err) if err.is_timeout() => {
            tracing::warn!(%origin, timeout_ms = timeout.as_millis() as u64, "push failed: timed out");
            (counted(Outcome::Failed, "timeout"), Some("timed out"))
        }
        Err(err) => match crate::net::refusal(&err) {
            // The name resolved to addresses push may not reach (DNS rebinding).
            Some(refused) => {
                tracing::warn!(%origin, reason = %refused, "push refused: no address the push policy allows");
                (counted(Outcome::Refused, "refused"), Some("unreachable"))
            }
            None => {
                // Display of a reqwest error includes the URL; strip it.
                tracing::warn!(%origin, error = %err.without_url(), "push failed: unreachable");
                (counted(Outcome::Failed, "error"), Some("unreachable"))
            }
        },
    }
}

/// `outcome`, counted in `loop_push_pings_total` as `label`: finer than
/// [`Outcome`] (a timeout, a push server that forgot the device).
fn counted(outcome: Outcome, label: &'static str) -> Outcome {
    metrics::counter!("loop_push_pings_total", "outcome" => label).increment(1);
    outcome
}

fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => "<invalid url>".into(),
    }
}
