//! Messages between the sockets and requests of every instance serving one
//! database: a call's progress, a user's new calls, a provider session's
//! signaling.
//!
//! A message is published on a topic (`progress:<callId>`, …) and reaches
//! every subscriber of that topic, in this process and, on PostgreSQL, in
//! every process sharing the database. With SQLite there is one process, so
//! delivery is in-process only. On PostgreSQL every message goes through
//! `NOTIFY` on one channel, even to subscribers in the publishing process:
//! every instance then sees the messages of a topic in the same order, the
//! order in which the transactions that published them committed.
//!
//! `NOTIFY` payloads are limited to 8000 bytes; a larger message (an SDP
//! offer can be) is stored in `bus_messages` and only its key is notified.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::broadcast;

/// The PostgreSQL channel every instance listens on.
pub(crate) const CHANNEL: &str = "loop_bus";
/// The largest message sent inline in a notification; the topic, a newline
/// and the message must stay under PostgreSQL's 8000-byte payload limit.
const MAX_INLINE_BYTES: usize = 7000;
/// Messages a slow subscriber may fall behind before it is told it lagged.
const SUBSCRIBER_BACKLOG: usize = 64;
/// How long a stored large message is kept for listeners to read.
pub(crate) const STORED_MESSAGE_SECONDS: i64 = 60;
/// Marks a notification that carries a `bus_messages` key, not a message.
const STORED_PREFIX: char = '@';

/// A message on a topic; cheap to clone into many subscribers.
pub type Message = Arc<str>;

#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    topics: Mutex<HashMap<String, broadcast::Sender<Message>>>,
    /// Set on PostgreSQL: where messages are published.
    postgres: Option<AnyPool>,
}

/// Why `Subscription::recv` returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Messages may have been missed: the subscriber fell behind, or the
    /// connection to other instances was lost for a while. Re-read from the
    /// database whatever the subscription follows.
    Lagged,
}

/// Delivered to every subscriber after the PostgreSQL listener lost its
/// connection; `recv` turns it into `RecvError::Lagged`.
static RESYNC: std::sync::LazyLock<Message> = std::sync::LazyLock::new(|| Arc::from(""));

/// Messages published on one topic from the moment of subscribing.
/// Dropping it unsubscribes.
pub struct Subscription {
    topic: String,
    receiver: broadcast::Receiver<Message>,
    bus: Arc<Inner>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<Message, RecvError> {
        match self.receiver.recv().await {
            Ok(message) if Arc::ptr_eq(&message, &RESYNC) => Err(RecvError::Lagged),
            Ok(message) => Ok(message),
            Err(broadcast::error::RecvError::Lagged(_)) => Err(RecvError::Lagged),
            // The sender lives in the map until the last subscriber is gone.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.bus.topics.lock().unwrap_or_else(|e| e.into_inner());
        // This subscription's receiver is still alive here, hence `<= 1`.
        if topics
            .get(&self.topic)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            topics.remove(&self.topic);
        }
    }
}

impl Bus {
    /// A bus for one process (SQLite).
    pub fn local() -> Self {
        Bus {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                postgres: None,
            }),
        }
    }

    /// A bus across every instance on the PostgreSQL at `url`: listens before
    /// returning, so nothing published after start-up is missed.
    pub(crate) async fn postgres(url: &str, pool: AnyPool) -> anyhow::Result<Self> {
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        let bus = Bus {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                postgres: Some(pool),
            }),
        };
        tokio::spawn(listen(listener, bus.clone()));
        Ok(bus)
    }

    pub fn subscribe(&self, topic: &str) -> Subscription {
        let mut topics = self.inner.topics.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = topics
            .entry(topic.to_string())
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_BACKLOG).0)
            .subscribe();
        Subscription {
            topic: topic.to_string(),
            receiver,
            bus: self.inner.clone(),
        }
    }

    /// How many topics have subscribers in this process.
    pub fn topics(&self) -> usize {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Publishes `message` on `topic` to every instance.
    pub async fn publish(&self, topic: &str, message: &str) -> anyhow::Result<()> {
        match &self.inner.postgres {
            None => {
                self.deliver(topic, message.into());
                Ok(())
            }
            Some(pool) => {
                let mut conn = pool.acquire().await?;
                Ok(notify(&mut conn, topic, message).await?)
            }
        }
    }

    /// Hands a message to this process's subscribers of `topic`.
    pub(crate) fn deliver(&self, topic: &str, message: Message) {
        let topics = self.inner.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = topics.get(topic) {
            // No receiver left is not an error: it is being dropped.
            let _ = sender.send(message);
        }
    }

    /// Tells every subscriber it may have missed messages.
    fn resync_all(&self) {
        let topics = self.inner.topics.lock().unwrap_or_else(|e| e.into_inner());
        for sender in topics.values() {
            let _ = sender.send(RESYNC.clone());
        }
    }

    fn has_subscribers(&self, topic: &str) -> bool {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(topic)
    }
}

/// Publishes on PostgreSQL through `conn`: inside a transaction, the message
/// is sent when (and only if) the transaction commits.
pub(crate) async fn notify(
    conn: &mut AnyConnection,
    topic: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    let payload = if topic.len() + message.len() < MAX_INLINE_BYTES {
        format!("{topic}\n{message}")
    } else {
        let key = crate::domain::random_token(16);
        sqlx::query(
            "INSERT INTO bus_messages (id, topic, message, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key)
        .bind(topic)
        .bind(message)
        .bind(crate::clock::now())
        .execute(&mut *conn)
        .await?;
        format!("{STORED_PREFIX}{key}\n{topic}")
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Receives every notification and hands it to this process's subscribers.
/// When the connection is lost, sqlx reconnects and listens again; what was
/// published meanwhile is lost, so every subscriber is then told it may have
/// missed messages and re-reads the state it follows from the database.
async fn listen(mut listener: PgListener, bus: Bus) {
    loop {
        let notification = match listener.try_recv().await {
            Ok(Some(notification)) => notification,
            Ok(None) => {
                tracing::warn!("bus: the PostgreSQL listener lost its connection and reconnected");
                bus.resync_all();
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, "bus: PostgreSQL listener failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                bus.resync_all();
                continue;
            }
        };
        let Some((head, rest)) = notification.payload().split_once('\n') else {
            continue;
        };
        if let Some(key) = head.strip_prefix(STORED_PREFIX) {
            let topic = rest;
            if !bus.has_subscribers(topic) {
                continue;
            }
            match stored_message(&bus, key).await {
                Ok(Some(message)) => bus.deliver(topic, message.into()),
                Ok(None) => tracing::warn!(topic, "bus: stored message already purged"),
                Err(err) => tracing::warn!(error = %err, "bus: reading a stored message failed"),
            }
        } else {
            bus.deliver(head, rest.into());
        }
    }
}

async fn stored_message(bus: &Bus, key: &str) -> anyhow::Result<Option<String>> {
    let Some(pool) = &bus.inner.postgres else {
        return Ok(None);
    };
    Ok(
        sqlx::query_scalar("SELECT message FROM bus_messages WHERE id = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_their_topic_only_and_leave_no_trace() {
        let bus = Bus::local();
        let mut a = bus.subscribe("progress:a");
        let mut a2 = bus.subscribe("progress:a");
        let mut b = bus.subscribe("progress:b");
        bus.publish("progress:a", "one").await.unwrap();
        bus.publish("progress:nobody", "lost").await.unwrap();
        assert_eq!(&*a.recv().await.unwrap(), "one");
        assert_eq!(&*a2.recv().await.unwrap(), "one");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.recv())
                .await
                .is_err()
        );
        drop(a);
        assert_eq!(bus.topics(), 2);
        drop(a2);
        drop(b);
        assert_eq!(bus.topics(), 0);
    }
}
