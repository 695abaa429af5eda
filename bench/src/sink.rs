//! A stand-in SimplePush server on 127.0.0.1: it answers 200 to every PUT and
//! counts them, so `POST /calls/{token}` exercises the real push path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::put;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct PushCounts {
    /// PUTs with a `version=<n>` form body, as Loop sends them.
    pub pings: AtomicU64,
    /// PUTs with anything else as the body.
    pub malformed: AtomicU64,
}

pub struct PushSink {
    /// `http://127.0.0.1:PORT`, for `push.allowed_origins`.
    pub origin: String,
    pub counts: Arc<PushCounts>,
    task: JoinHandle<()>,
}

impl PushSink {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(PushCounts::default());
        let router = Router::new()
            .route("/push/{*device}", put(ping))
            .with_state(counts.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                eprintln!("loop-bench: push sink stopped: {err}");
            }
        });
        Ok(Self {
            origin,
            counts,
            task,
        })
    }

    /// A push URL on this sink for one device.
    pub fn url(&self, device: &str) -> String {
        format!("{}/push/{device}", self.origin)
    }

    pub fn pings(&self) -> u64 {
        self.counts.pings.load(Ordering::Relaxed)
    }

    pub fn malformed(&self) -> u64 {
        self.counts.malformed.load(Ordering::Relaxed)
    }
}

impl Drop for PushSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ping(State(counts): State<Arc<PushCounts>>, body: Bytes) -> &'static str {
    let well_formed = body
        .strip_prefix(b"version=")
        .is_some_and(|version| !version.is_empty() && version.iter().all(u8::is_ascii_digit));
    if well_formed {
        counts.pings.fetch_add(1, Ordering::Relaxed);
    } else {
        counts.malformed.fetch_add(1, Ordering::Relaxed);
    }
    ""
}
