//! A fake SimplePush server on 127.0.0.1:0 that records every PUT it gets.
//!
//! - `PUT /push/{device}` answers 200;
//! - `PUT /fail/{device}` answers 500;
//! - `PUT /hang/{device}` records the ping and never answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// `push`, `fail` or `hang`.
    pub kind: String,
    pub device: String,
    pub content_type: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct Recorder {
    pings: Mutex<Vec<Ping>>,
    arrived: Notify,
}

pub struct FakePush {
    /// `http://127.0.0.1:PORT`, to list in `push.allowed_origins`.
    pub origin: String,
    recorder: Arc<Recorder>,
    server: tokio::task::JoinHandle<()>,
}

impl FakePush {
    pub async fn start() -> FakePush {
        let recorder = Arc::new(Recorder::default());
        let app = Router::new()
            .route("/{kind}/{device}", put(record))
            .with_state(recorder.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakePush {
            origin,
            recorder,
            server,
        }
    }

    /// The push URL of `device` that answers 200.
    pub fn url(&self, device: &str) -> String {
        format!("{}/push/{device}", self.origin)
    }

    pub fn failing_url(&self, device: &str) -> String {
        format!("{}/fail/{device}", self.origin)
    }

    pub fn hanging_url(&self, device: &str) -> String {
        format!("{}/hang/{device}", self.origin)
    }

    /// `[push]` config that trusts this fake server.
    pub fn config(&self, timeout_ms: u64) -> String {
        format!(
            "[push]\nallowed_origins = [{:?}]\ntimeout_ms = {timeout_ms}\n\n",
            self.origin
        )
    }

    pub fn pings(&self) -> Vec<Ping> {
        self.recorder.pings.lock().unwrap().clone()
    }

    pub fn pings_for(&self, device: &str) -> Vec<Ping> {
        self.pings()
            .into_iter()
            .filter(|ping| ping.device == device)
            .collect()
    }

    /// Waits until `device` has had `count` pings; panics after 20 s.
    pub async fn wait_for(&self, device: &str, count: usize) -> Vec<Ping> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let arrived = self.recorder.arrived.notified();
            let pings = self.pings_for(device);
            if pings.len() >= count {
                return pings;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "{device} got {} pings, expected {count}: {:?}",
                    pings.len(),
                    self.pings()
                );
            }
        }
    }
}

impl Drop for FakePush {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(recorder): State<Arc<Recorder>>,
    Path((kind, device)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: String,
) -> StatusCode {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    recorder.pings.lock().unwrap().push(Ping {
        kind: kind.clone(),
        device,
        content_type,
        body,
    });
    recorder.arrived.notify_waiters();
    match kind.as_str() {
        "fail" => StatusCode::INTERNAL_SERVER_ERROR,
        "hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => StatusCode::OK,
    }
}
