//! A websocket client for the tests of the server's sockets (`/websocket`,
//! `/signaling`): JSON text frames in and out, every wait bounded.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::TestServer;

pub type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Long enough for any message on a loaded machine; short enough to fail fast.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct WsClient {
    pub stream: Stream,
}

impl WsClient {
    /// The socket at `path` of `server`.
    pub async fn connect(server: &TestServer, path: &str) -> WsClient {
        Self::connect_url(
            &format!("{}{path}", server.url.replacen("http", "ws", 1)),
            None,
        )
        .await
    }

    /// The socket at `url`, sending `origin` as its Origin when given.
    pub async fn connect_url(url: &str, origin: Option<&str>) -> WsClient {
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket upgrade");
        assert_eq!(response.status(), 101);
        WsClient { stream }
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next JSON message; panics on close or silence.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(PATIENCE).await
    }

    pub async fn recv_within(&mut self, patience: Duration) -> Value {
        // One deadline for all frames: the server's pings must not extend it.
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a message in time")
                .expect("the socket is open")
                .expect("a frame");
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Binary(bytes) => return serde_json::from_slice(&bytes).unwrap(),
                Message::Close(frame) => panic!("closed instead of a message: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Waits for the server's close; returns its code (1006 when the
    /// connection just ended). Panics on a message.
    pub async fn closed(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("closed in time");
            match frame {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                }
                Some(Ok(Message::Text(text))) => panic!("a message instead of close: {text}"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return 1006,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
