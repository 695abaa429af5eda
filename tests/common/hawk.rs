//! A Loop device for tests: registers, derives its Hawk credentials from the
//! session token the way Loop clients do (HKDF-SHA256), and signs requests
//! with the `hawk` crate.

use hkdf::Hkdf;
use reqwest::{Method, Response};
use serde_json::Value;
use sha2::Sha256;

const SESSION_TOKEN_INFO: &[u8] = b"identity.mozilla.com/picl/v1/sessionToken";

/// A registered device: the session token and the Hawk credentials derived from it.
pub struct Device {
    /// Base URL of the server this device talks to; a sibling server may be swapped in.
    pub base: String,
    /// The hex session token from `Hawk-Session-Token`.
    pub token: String,
    credentials: hawk::Credentials,
    http: reqwest::Client,
}

/// Hawk id and key (both hex) for a hex session token.
pub fn derive(token_hex: &str) -> (String, String) {
    let token = hex::decode(token_hex).expect("session token is hex");
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(None, &token)
        .expand(SESSION_TOKEN_INFO, &mut okm)
        .unwrap();
    (hex::encode(&okm[..32]), hex::encode(&okm[32..]))
}

impl Device {
    /// `POST /registration` with the given body, unauthenticated: a new session.
    pub async fn register_with(base: &str, body: Value) -> Device {
        let http = super::client();
        let response = http
            .post(format!("{base}/registration"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let token = response
            .headers()
            .get("hawk-session-token")
            .map(|value| value.to_str().unwrap().to_string());
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "registration failed: {text}");
        let token = token.expect("Hawk-Session-Token header on a new registration");
        Self::from_token(base, &token)
    }

    /// Registers a device whose `calls` topic pushes to `calls_push_url`.
    pub async fn register(base: &str, calls_push_url: &str) -> Device {
        Self::register_with(
            base,
            serde_json::json!({ "simplePushURLs": { "calls": calls_push_url } }),
        )
        .await
    }

    /// The device for an existing session token (for example after a restart).
    pub fn from_token(base: &str, token: &str) -> Device {
        let (id, key) = derive(token);
        let credentials = hawk::Credentials {
            id,
            key: hawk::Key::new(key.as_bytes(), hawk::DigestAlgorithm::Sha256).unwrap(),
        };
        Device {
            base: base.to_string(),
            token: token.to_string(),
            credentials,
            http: super::client(),
        }
    }

    /// The same session, talking to another server (same database).
    pub fn on(&self, base: &str) -> Device {
        Self::from_token(base, &self.token)
    }

    /// A Hawk-signed request; `body` is sent as JSON and covered by the payload hash.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        let url = url::Url::parse(&format!("{}{}", self.base, path)).unwrap();
        let host = url.host_str().unwrap().to_string();
        let port = url.port_or_known_default().unwrap();
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{}", url.path(), query),
            None => url.path().to_string(),
        };
        let payload = body.map(|body| serde_json::to_vec(body).unwrap());
        let hash = payload.as_ref().map(|payload| {
            hawk::PayloadHasher::hash("application/json", hawk::DigestAlgorithm::Sha256, payload)
                .unwrap()
        });
        let mut builder = hawk::RequestBuilder::new(method.as_str(), &host, port, &path_and_query);
        if let Some(hash) = &hash {
            builder = builder.hash(&hash[..]);
        }
        let header = builder.request().make_header(&self.credentials).unwrap();
        let mut request = self
            .http
            .request(method, url)
            .header("authorization", format!("Hawk {header}"));
        if let Some(payload) = payload {
            request = request
                .header("content-type", "application/json")
                .body(payload);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.send(Method::DELETE, path, None).await
    }

    /// `POST /call-url`; returns `{callUrl, callToken, expiresAt}`.
    pub async fn create_call_url(&self, body: &Value) -> Value {
        let response = self.post("/call-url", body).await;
        let status = response.status();
        let json: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "POST /call-url: {json}");
        json
    }
}
