//! The users and links the routes are driven against, created through the
//! public API the way clients create them.

use anyhow::Context;
use serde_json::{Value, json};

use crate::hawk_sign::{HawkSession, SignedRequest, Signer};
use crate::sink::PushSink;

/// Calls the listing user has: a realistic handful for `GET /calls?version=0`.
pub const LISTED_CALLS: usize = 5;

pub const CALL_URL_BODY: &str = r#"{"callerId":"alice@example.com","issuer":"Bob"}"#;
pub const CALL_BODY: &str = r#"{"callType":"audio-video"}"#;

pub struct Fixtures {
    /// Creates call URLs in the `POST /call-url` route.
    pub creator: HawkSession,
    /// Owns the link that `GET /calls/{token}` and `POST /calls/{token}` hit;
    /// its push URL is on the sink.
    pub callee_call_token: String,
    /// Lists its incoming calls in `GET /calls?version=0`.
    pub lister: HawkSession,
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    port: u16,
}

impl Api {
    pub fn new(base: &str, port: u16) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            port,
        })
    }

    pub fn registration_body(push_url: &str) -> String {
        json!({ "simplePushURLs": { "calls": push_url } }).to_string()
    }

    /// `POST /registration` → the new session.
    pub async fn register(&self, push_url: &str) -> anyhow::Result<HawkSession> {
        let response = self
            .http
            .post(format!("{}/registration", self.base))
            .header("Content-Type", "application/json")
            .body(Self::registration_body(push_url))
            .send()
            .await
            .context("POST /registration")?;
        let status = response.status();
        let token = response
            .headers()
            .get("Hawk-Session-Token")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let body = response.text().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "POST /registration answered {status}: {body}"
        );
        let token =
            token.context("POST /registration answered without a Hawk-Session-Token header")?;
        HawkSession::from_token(&token)
    }

    pub fn signer(
        &self,
        session: &HawkSession,
        method: &str,
        path: &str,
        json_body: Option<&str>,
    ) -> anyhow::Result<Signer> {
        Signer::new(
            session,
            SignedRequest {
                method: method.into(),
                host: "127.0.0.1".into(),
                port: self.port,
                path: path.into(),
                payload: json_body
                    .map(|body| ("application/json".to_string(), body.as_bytes().to_vec())),
            },
        )
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        session: Option<&HawkSession>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        if let Some(session) = session {
            let authorization = self
                .signer(session, method.as_str(), path, body)?
                .make_now()?;
            request = request.header("Authorization", authorization);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "{method} {path} answered {status}: {text}"
        );
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {path} answered non-JSON: {text}"))
    }

    /// `POST /call-url` (Hawk) → the call token.
    pub async fn create_call_url(&self, session: &HawkSession) -> anyhow::Result<String> {
        let created = self
            .send(
                reqwest::Method::POST,
                "/call-url",
                Some(CALL_URL_BODY),
                Some(session),
            )
            .await?;
        created["callToken"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("POST /call-url answered without callToken: {created}"))
    }

    pub async fn place_call(&self, call_token: &str) -> anyhow::Result<Value> {
        self.send(
            reqwest::Method::POST,
            &format!("/calls/{call_token}"),
            Some(CALL_BODY),
            None,
        )
        .await
    }

    pub async fn call_url_info(&self, call_token: &str) -> anyhow::Result<Value> {
        self.send(
            reqwest::Method::GET,
            &format!("/calls/{call_token}"),
            None,
            None,
        )
        .await
    }

    pub async fn list_calls(&self, session: &HawkSession) -> anyhow::Result<Vec<Value>> {
        let listed = self
            .send(
                reqwest::Method::GET,
                "/calls?version=0",
                None,
                Some(session),
            )
            .await?;
        listed["calls"]
            .as_array()
            .cloned()
            .with_context(|| format!("GET /calls answered without calls: {listed}"))
    }
}

/// Registers the three users and checks the whole flow once before any load,
/// so a broken server fails here with a readable message.
pub async fn prepare(api: &Api, sink: &PushSink) -> anyhow::Result<Fixtures> {
    let creator = api.register(&sink.url("creator")).await?;
    api.create_call_url(&creator).await?;

    let callee = api.register(&sink.url("callee")).await?;
    let callee_call_token = api.create_call_url(&callee).await?;
    let info = api.call_url_info(&callee_call_token).await?;
    anyhow::ensure!(
        info.get("calleeFriendlyName").is_some(),
        "GET /calls/{{token}} answered without calleeFriendlyName: {info}"
    );
    let call = api.place_call(&callee_call_token).await?;
    anyhow::ensure!(
        call.get("sessionToken").is_some(),
        "POST /calls/{{token}} answered without sessionToken: {call}"
    );

    let lister = api.register(&sink.url("lister")).await?;
    let lister_call_token = api.create_call_url(&lister).await?;
    for _ in 0..LISTED_CALLS {
        api.place_call(&lister_call_token).await?;
    }
    let calls = api.list_calls(&lister).await?;
    anyhow::ensure!(
        calls.len() == LISTED_CALLS,
        "GET /calls?version=0 listed {} calls, expected the {LISTED_CALLS} just placed",
        calls.len()
    );
    Ok(Fixtures {
        creator,
        callee_call_token,
        lister,
    })
}
