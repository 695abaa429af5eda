//! Failing fast while PostgreSQL is down.
//!
//! sqlx's pool retries a refused connection until the acquire timeout: with
//! the database restarting or gone, every request would wait out
//! `ACQUIRE_TIMEOUT` before its 503, and requests would pile up meanwhile.
//! So a checkout that takes longer than a healthy one does has the database
//! probed with a connection of its own. If the database cannot be reached,
//! the store is marked down: waiting checkouts and every later one fail at
//! once with `StoreError::Unavailable` (503, errno 201), while a background
//! probe retries until the database answers and the store serves again. A
//! checkout slow for another reason (every connection busy under load) finds
//! the database reachable and keeps waiting as before.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::any::AnyConnectOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::watch;

use super::{StoreError, StoreErrorSource};

/// A checkout slower than this has the database probed.
const PROBE_AFTER: Duration = Duration::from_millis(250);

/// Most probes of a reachable database: one a second, whatever the load.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a down database is tried again.
const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// A probe's connection attempt that takes this long counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Reachability {
    options: AnyConnectOptions,
    /// Why the database is down, while it is.
    down: watch::Sender<Option<StoreErrorSource>>,
    /// When the last probe started; `None` before the first.
    last_probe: Mutex<Option<Instant>>,
}

impl Reachability {
    pub fn new(options: AnyConnectOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            down: watch::Sender::new(None),
            last_probe: Mutex::new(None),
        })
    }

    /// A connection from `pool`, or `Unavailable` at once while the database
    /// is known to be down.
    pub async fn acquire(
        self: &Arc<Self>,
        pool: &AnyPool,
    ) -> Result<PoolConnection<Any>, StoreError> {
        if let Some(why) = self.down.borrow().clone() {
            return Err(StoreError::Unavailable(why));
        }
        let checkout = pool.acquire();
        tokio::pin!(checkout);
        if let Ok(done) = tokio::time::timeout(PROBE_AFTER, &mut checkout).await {
            return done.map_err(StoreError::acquiring);
        }
        let mut down = self.down.subscribe();
        self.probe();
        tokio::select! {
            done = &mut checkout => done.map_err(StoreError::acquiring),
            Ok(why) = down.wait_for(Option::is_some) => {
                Err(StoreError::Unavailable(why.clone().expect("waited for Some")))
            }
        }
    }

    /// Starts a probe unless one ran within `PROBE_INTERVAL` or the database
    /// is already known to be down (its own retries are running).
    fn probe(self: &Arc<Self>) {
        {
            let mut last = self.last_probe.lock().unwrap();
            if last.is_some_and(|at| at.elapsed() < PROBE_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Err(why) = this.try_connect().await else {
                return;
            };
            tracing::error!(error = %why, "the database cannot be reached: storage requests fail with 503 until it answers");
            this.down.send_replace(Some(why));
            let started = Instant::now();
            loop {
                tokio::time::sleep(RETRY_INTERVAL).await;
                if this.try_connect().await.is_ok() {
                    break;
                }
            }
            this.down.send_replace(None);
            tracing::warn!(
                down_ms = started.elapsed().as_millis() as u64,
                "the database answers again: storage requests are served"
            );
        });
    }

    /// Opens and closes one connection; why the database is unreachable if
    /// it cannot. Only failures to reach it count: a database that answers
    /// with an error (too many connections, say) is there.
    async fn try_connect(&self) -> Result<(), StoreErrorSource> {
        match tokio::time::timeout(PROBE_TIMEOUT, AnyConnection::connect_with(&self.options)).await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Ok(())
            }
            Ok(Err(err)) => match StoreError::from(err) {
                StoreError::Unavailable(why) => Err(why),
                _ => Ok(()),
            },
            Err(_) => Err(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "connecting took longer than {} ms",
                    PROBE_TIMEOUT.as_millis()
                ),
            ))),
        }
    }
}
