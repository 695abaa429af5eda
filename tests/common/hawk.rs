//! The suite's Hawk client, built on the third-party `hawk` crate (not on the
//! server's code): derives credentials from a `Hawk-Session-Token` as Loop
//! clients do (HKDF-SHA256), signs requests and checks the server's
//! `Server-Authorization`.
//!
//! Two levels: [`sign`], [`send_signed`] and [`HawkResponse`] let a test forge,
//! replay and verify exactly what goes over the wire; [`Device`] is a
//! registered client for tests that only need to talk to the API.

use std::time::{Duration, SystemTime};

use ::hawk::{Header, Key, PayloadHasher, RequestBuilder, SHA256};
use hkdf::Hkdf;
use reqwest::{Method, Response};
use serde_json::Value;
use sha2::Sha256;

/// No request of the suite should take this long; a hang fails instead of blocking.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Credentials {
    /// Hex Hawk id.
    pub id: String,
    /// Hex Hawk key (its ASCII bytes are the key, as Loop clients use it).
    pub key: String,
}

impl Credentials {
    /// HKDF-SHA256(token, no salt, info "identity.mozilla.com/picl/v1/sessionToken"), 64 bytes.
    pub fn from_token(token_hex: &str) -> Self {
        let token = hex::decode(token_hex).expect("session token is hex");
        let mut okm = [0u8; 64];
        Hkdf::<Sha256>::new(None, &token)
            .expand(b"identity.mozilla.com/picl/v1/sessionToken", &mut okm)
            .unwrap();
        Self {
            id: hex::encode(&okm[..32]),
            key: hex::encode(&okm[32..]),
        }
    }

    fn hawk(&self) -> ::hawk::Credentials {
        ::hawk::Credentials {
            id: self.id.clone(),
            key: Key::new(self.key.as_bytes(), SHA256).unwrap(),
        }
    }
}

/// Everything needed to check the response to a signed request.
pub struct Signed {
    pub authorization: String,
    header: Header,
    method: String,
    host: String,
    port: u16,
    path: String,
}

pub struct Options<'a> {
    pub ts: SystemTime,
    pub nonce: Option<&'a str>,
    /// Hash the body (`Some(content type, body)`) into the header.
    pub payload: Option<(&'a str, &'a [u8])>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            ts: SystemTime::now(),
            nonce: None,
            payload: None,
        }
    }
}

pub fn sign(creds: &Credentials, method: &str, url: &str, options: Options<'_>) -> Signed {
    let parsed = url::Url::parse(url).unwrap();
    let host = parsed.host_str().unwrap().to_string();
    let port = parsed.port_or_known_default().unwrap();
    let path = match parsed.query() {
        Some(query) => format!("{}?{}", parsed.path(), query),
        None => parsed.path().to_string(),
    };
    let hash = options
        .payload
        .map(|(content_type, body)| PayloadHasher::hash(content_type, SHA256, body).unwrap());
    let request = RequestBuilder::new(method, &host, port, &path)
        .hash(hash.as_deref())
        .request();
    let nonce = options
        .nonce
        .map(str::to_string)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()));
    let header = request
        .make_header_full(&creds.hawk(), options.ts, nonce)
        .unwrap();
    Signed {
        authorization: format!("Hawk {header}"),
        header,
        method: method.to_string(),
        host,
        port,
        path,
    }
}

impl Signed {
    /// Whether `Server-Authorization` authenticates this response body.
    pub fn verify_response(
        &self,
        creds: &Credentials,
        server_authorization: &str,
        content_type: &str,
        body: &[u8],
    ) -> bool {
        let Some(value) = server_authorization.strip_prefix("Hawk ") else {
            return false;
        };
        let Ok(response_header) = value.parse::<Header>() else {
            return false;
        };
        let hash = PayloadHasher::hash(media_type(content_type), SHA256, body).unwrap();
        let request =
            RequestBuilder::new(&self.method, &self.host, self.port, &self.path).request();
        let response = request
            .make_response_builder(&self.header)
            .hash(&hash[..])
            .response();
        response.validate_header(&response_header, &creds.hawk().key)
    }

    /// The request this header was made for, with the header and body.
    fn request(
        &self,
        http: &reqwest::Client,
        url: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> reqwest::RequestBuilder {
        let method = Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut request = http
            .request(method, url)
            .header("Authorization", &self.authorization)
            .timeout(REQUEST_TIMEOUT);
        if let Some((content_type, body)) = body {
            request = request.header("Content-Type", content_type).body(body);
        }
        request
    }
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub struct HawkResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
    /// `Some(valid)` when the response carried `Server-Authorization`.
    pub server_authorization_valid: Option<bool>,
}

impl HawkResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Asserts the status, showing the body when it differs.
    pub fn assert_status(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
    }

    /// Asserts a Loop error `{code, errno, …}`.
    pub fn assert_error(&self, status: u16, errno: u64) {
        self.assert_status(status);
        let body = self.json();
        assert_eq!(body["code"], status, "{body}");
        assert_eq!(body["errno"], errno, "{body}");
    }

    /// Asserts 401/110 with `WWW-Authenticate: Hawk…`.
    pub fn assert_unauthorized(&self) {
        self.assert_error(401, 110);
        let challenge = self
            .header("www-authenticate")
            .expect("WWW-Authenticate header");
        assert!(challenge.starts_with("Hawk"), "{challenge}");
        assert!(self.header("server-authorization").is_none());
    }
}

/// Sends a signed request (JSON body hashed into the header when given).
pub async fn send(
    client: &reqwest::Client,
    creds: &Credentials,
    method: &str,
    url: &str,
    json: Option<&Value>,
) -> HawkResponse {
    let body = json.map(|value| serde_json::to_vec(value).unwrap());
    let options = Options {
        payload: body.as_deref().map(|b| ("application/json", b)),
        ..Options::default()
    };
    let signed = sign(creds, method, url, options);
    send_signed(
        client,
        creds,
        &signed,
        url,
        body.map(|b| ("application/json", b)),
    )
    .await
}

/// Sends a request with a prepared `Authorization` header and body.
pub async fn send_signed(
    client: &reqwest::Client,
    creds: &Credentials,
    signed: &Signed,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> HawkResponse {
    let response = signed.request(client, url, body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    let server_authorization_valid = headers.get("server-authorization").map(|value| {
        let content_type = headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("");
        signed.verify_response(creds, value.to_str().unwrap(), content_type, &body)
    });
    HawkResponse {
        status,
        headers,
        body,
        server_authorization_valid,
    }
}

/// A registered device: the session token and the Hawk credentials derived from it.
pub struct Device {
    /// Base URL of the server this device talks to; a sibling server may be swapped in.
    pub base: String,
    /// The hex session token from `Hawk-Session-Token`.
    pub token: String,
    pub credentials: Credentials,
    http: reqwest::Client,
}

impl Device {
    /// `POST /registration` with the given body, unauthenticated: a new session.
    pub async fn register_with(base: &str, body: Value) -> Device {
        let response = super::client()
            .post(format!("{base}/registration"))
            .json(&body)
            .timeout(REQUEST_TIMEOUT)
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
        assert!(
            token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "a session token is 32 bytes of hex: {token}"
        );
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
        Device {
            base: base.to_string(),
            token: token.to_string(),
            credentials: Credentials::from_token(token),
            http: super::client(),
        }
    }

    /// The same session, talking to another server (same database).
    pub fn on(&self, base: &str) -> Device {
        Self::from_token(base, &self.token)
    }

    /// A Hawk-signed request; `body` is sent as JSON and covered by the payload hash.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        let url = format!("{}{}", self.base, path);
        let payload = body.map(|body| serde_json::to_vec(body).unwrap());
        let options = Options {
            payload: payload.as_deref().map(|p| ("application/json", p)),
            ..Options::default()
        };
        let signed = sign(&self.credentials, method.as_str(), &url, options);
        signed
            .request(&self.http, &url, payload.map(|p| ("application/json", p)))
            .send()
            .await
            .unwrap()
    }

    /// The same request, answered as a [`HawkResponse`] whose
    /// `Server-Authorization` has been checked.
    pub async fn send_verified(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> HawkResponse {
        send(
            &self.http,
            &self.credentials,
            method,
            &format!("{}{}", self.base, path),
            body,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path, None).await
    }

    /// A signed GET with extra request headers (`Prefer: wait=N`, …).
    pub async fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let url = format!("{}{}", self.base, path);
        let signed = sign(&self.credentials, "GET", &url, Options::default());
        let mut request = signed.request(&self.http, &url, None);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
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

    /// `POST /call-url`; returns `{callUrl, callToken, expiresAt}` after checking
    /// the response's `Server-Authorization`.
    pub async fn create_call_url(&self, body: &Value) -> Value {
        let response = self.send_verified("POST", "/call-url", Some(body)).await;
        response.assert_status(200);
        assert_eq!(
            response.server_authorization_valid,
            Some(true),
            "POST /call-url is answered with a valid Server-Authorization"
        );
        response.json()
    }
}
