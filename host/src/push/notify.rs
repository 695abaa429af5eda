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

    /// Pings every URL concurrently with `version=<version>` and returns what
    /// happened once all are done or `push.timeout_ms` has passed, whichever is
    /// first. Never fails. The pings run on their own task, so a client that
    /// hangs up does not cancel them.
    pub async fn notify(&self, urls: Vec<String>, version: i64) -> PushStats {
        if urls.is_empty() {
            return PushStats::default();
        }
        let count = urls.len() as u64;
        let http = self.http.clone();
        let timeout = self.timeout;
        let in_flight = self.in_flight.clone();
        let counters = self.counters.clone();
        let task = tokio::spawn(async move {
            let pings = urls.into_iter().map(|url| {
                let http = http.clone();
                let in_flight = in_flight.clone();
                async move {
                    let Ok(_permit) = in_flight.try_acquire_owned() else {
                        tracing::warn!(origin = %origin(&url), "push not sent: too many pings in flight");
                        return false;
                    };
                    ping(&http, &url, version, timeout).await
                }
            });
            let results = join_all(pings).await;
            let sent = results.iter().filter(|ok| **ok).count() as u64;
            counters.sent.fetch_add(sent, Ordering::Relaxed);
            counters
                .failed
                .fetch_add(results.len() as u64 - sent, Ordering::Relaxed);
            PushStats {
                sent,
                failed: results.len() as u64 - sent,
            }
        });
        // Each ping is bounded by the same timeout; the margin covers scheduling only.
        match tokio::time::timeout(timeout + Duration::from_millis(50), task).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "push task failed");
                self.counters.failed.fetch_add(count, Ordering::Relaxed);
                PushStats {
                    sent: 0,
                    failed: count,
                }
            }
            // The task still finishes and counts its own results.
            Err(_) => PushStats {
                sent: 0,
                failed: count,
            },
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
