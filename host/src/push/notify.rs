//! The pings that wake a callee's devices when a call comes in.
//!
//! A SimplePush URL is woken by `PUT` with the form body `version=<n>`; the
//! device then asks us what changed (`GET /calls?version=n`). Push servers are
//! someone else's machines: a slow or broken one must never fail a call or hold
//! it up longer than `push.timeout_ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::config::Config;

/// Pings in flight at once across the server. Beyond this the push servers are
/// not keeping up, and queueing more would only grow memory.
const MAX_IN_FLIGHT: usize = 1024;

pub struct Push {
    http: reqwest::Client,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
}

/// Totals since start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PushStats {
    /// Pings the push server accepted (2xx).
    pub sent: u64,
    /// Pings refused, unreachable, timed out, or dropped because too many were in flight.
    pub failed: u64,
}

impl Push {
    pub fn new(config: &Config, http: reqwest::Client) -> Self {
        Self {
            http,
            timeout: Duration::from_millis(config.push.timeout_ms.max(1)),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            counters: Arc::default(),
        }
    }

    pub fn stats(&self) -> PushStats {
        PushStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// False while every ping slot is taken: push servers are not keeping up.
    pub fn healthy(&self) -> bool {
        self.in_flight.available_permits() > 0
    }

    /// Pings every URL concurrently with `version=<version>`, each bounded by
    /// `push.timeout_ms`, on a task of their own: the call is answered without
    /// waiting for anyone's push server, and a client that hangs up cancels
    /// nothing. The outcome is counted and logged.
    pub fn notify(&self, urls: Vec<String>, version: i64) {
        if urls.is_empty() {
            return;
        }
        let http = self.http.clone();
        let timeout = self.timeout;
        let counters = self.counters.clone();
        // Slots are taken here, before the task starts, so that `drain` sees
        // every ping the moment its call is answered.
        let pings: Vec<_> = urls
            .into_iter()
            .map(|url| (self.in_flight.clone().try_acquire_owned().ok(), url))
            .collect();
        tokio::spawn(async move {
            let pings = pings.into_iter().map(|(permit, url)| {
                let http = http.clone();
                async move {
                    let Some(_permit) = permit else {
                        tracing::warn!(origin = %origin(&url), "push not sent: too many pings in flight");
                        return false;
                    };
                    ping(&http, &url, version, timeout).await
                }
            });
            let results = join_all(pings).await;
            let sent = results.iter().filter(|ok| **ok).count() as u64;
            let failed = results.len() as u64 - sent;
            counters.sent.fetch_add(sent, Ordering::Relaxed);
            counters.failed.fetch_add(failed, Ordering::Relaxed);
            tracing::debug!(sent, failed, version, "callee notified");
        });
    }

    /// Waits for the pings in flight, at most `push.timeout_ms` (each ping's
    /// own bound): on shutdown, calls already answered still wake their callees.
    pub async fn drain(&self) {
        let all = MAX_IN_FLIGHT as u32;
        let wait = self.in_flight.acquire_many(all);
        if tokio::time::timeout(self.timeout + Duration::from_millis(50), wait)
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

async fn ping(http: &reqwest::Client, url: &str, version: i64, timeout: Duration) -> bool {
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
            true
        }
        Ok(response) => {
            tracing::warn!(%origin, status = response.status().as_u16(), "push failed: refused by the push server");
            false
        }
        Err(err) if err.is_timeout() => {
            tracing::warn!(%origin, timeout_ms = timeout.as_millis() as u64, "push failed: timed out");
            false
        }
        Err(err) => {
            // Display of a reqwest error includes the URL; strip it.
            tracing::warn!(%origin, error = %err.without_url(), "push failed: unreachable");
            false
        }
    }
}

fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => "<invalid url>".into(),
    }
}
