//! `Authorization: BrowserID <assertion>` (Firefox Accounts), as Mozilla's
//! loop-server did it: the assertion's own audience must be one we serve
//! (`fxa.audiences`), the remote verifier must say `okay` for that audience,
//! and the issuer it reports must be trusted (`fxa.trusted_issuers`). A
//! verified request gets a new Hawk session bound to the identity, returned
//! in `Hawk-Session-Token` so the client can use Hawk from then on.
//!
//! The audience is read from the assertion rather than from the request's
//! `Host`: behind proxies and with several public names the Host is not what
//! the browser put in the assertion, while the verifier still proves the
//! assertion was made for the audience we send it.

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use super::{Authenticated, attach_session_token};
use crate::app::AppState;
use crate::config::FxaConfig;
use crate::error::AppError;
use crate::net::{Net, Policy};

/// How long the verifier may take before the request fails with 503.
const VERIFIER_TIMEOUT: Duration = Duration::from_secs(10);

/// Real assertions are a few KiB; refuse absurd ones before any work.
const MAX_ASSERTION_LEN: usize = 16 * 1024;

pub struct BrowserIdVerifier {
    verifier_url: String,
    audiences: Vec<String>,
    trusted_issuers: Vec<String>,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct VerifyRequest<'a> {
    audience: &'a str,
    assertion: &'a str,
}

#[derive(Deserialize)]
struct VerifyResponse {
    status: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    aud: String,
}

/// Why an assertion was not accepted.
enum Failure {
    /// The client's fault: 401/110.
    Refused(String),
    /// The verifier failed: 503/201, the client may retry.
    Unavailable(String),
}

impl BrowserIdVerifier {
    /// `None` when `fxa.verifier_url` is unset (BrowserID is off).
    pub fn from_config(config: &FxaConfig, net: &Net) -> anyhow::Result<Option<Self>> {
        let Some(verifier_url) = &config.verifier_url else {
            return Ok(None);
        };
        anyhow::ensure!(
            !config.audiences.is_empty(),
            "fxa.audiences: must list at least one audience when fxa.verifier_url is set"
        );
        anyhow::ensure!(
            !config.trusted_issuers.is_empty(),
            "fxa.trusted_issuers: must list at least one issuer when fxa.verifier_url is set"
        );
        Ok(Some(Self {
            verifier_url: verifier_url.clone(),
            audiences: config.audiences.clone(),
            trusted_issuers: config.trusted_issuers.clone(),
            http: net.client(Policy::verifier(config))?,
        }))
    }

    /// The verified identity (email) behind `assertion`.
    async fn verify(&self, assertion: &str) -> Result<String, Failure> {
        let audience = assertion_audience(assertion)
            .ok_or_else(|| Failure::Refused("the assertion cannot be parsed".into()))?;
        if !self.audiences.iter().any(|allowed| allowed == &audience) {
            return Err(Failure::Refused(
                "the assertion's audience is not served here".into(),
            ));
        }
        let response = self
            .http
            .post(&self.verifier_url)
            .timeout(VERIFIER_TIMEOUT)
            .json(&VerifyRequest {
                audience: &audience,
                assertion,
            })
            .send()
            .await
            .map_err(|err| match crate::net::refusal(&err) {
                Some(refused) => {
                    Failure::Unavailable(format!("BrowserID verifier refused: {refused}"))
                }
                None => Failure::Unavailable(format!("BrowserID verifier unreachable: {err}")),
            })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(Failure::Unavailable(format!(
                "BrowserID verifier answered {status}"
            )));
        }
        let verdict: VerifyResponse = response.json().await.map_err(|err| {
            Failure::Unavailable(format!(
                "BrowserID verifier sent an unreadable answer: {err}"
            ))
        })?;
        if verdict.status != "okay" {
            let reason = verdict.reason.unwrap_or_else(|| "no reason given".into());
            return Err(Failure::Refused(format!(
                "assertion refused by the verifier: {reason}"
            )));
        }
        if verdict
            .audience
            .as_deref()
            .is_some_and(|verified| verified != audience)
        {
            return Err(Failure::Refused(
                "the verifier vouched for another audience".into(),
            ));
        }
        match verdict.issuer {
            Some(issuer) if self.trusted_issuers.contains(&issuer) => {}
            _ => {
                return Err(Failure::Refused(
                    "the assertion's issuer is not trusted".into(),
                ));
            }
        }
        match verdict.email {
            Some(email) if !email.is_empty() => Ok(email),
            _ => Err(Failure::Refused("the verifier returned no identity".into())),
        }
    }
}

/// The `aud` claim of a backed assertion (`cert~…~assertion`, each a JWS):
/// the payload of the last JWS.
fn assertion_audience(assertion: &str) -> Option<String> {
    let identity_assertion = assertion.rsplit('~').next()?;
    let payload = identity_assertion.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| URL_SAFE.decode(payload))
        .ok()?;
    serde_json::from_slice::<AssertionClaims>(&json)
        .ok()
        .map(|claims| claims.aud)
}

pub(super) async fn authenticate(
    state: &AppState,
    assertion: &str,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(verifier) = &state.auth.browserid else {
        return super::refused("BrowserID is not enabled on this server; use Hawk".into());
    };
    if assertion.is_empty()
        || assertion.len() > MAX_ASSERTION_LEN
        || assertion.contains(char::is_whitespace)
    {
        return super::refused("malformed BrowserID assertion".into());
    }
    let identity = match verifier.verify(assertion).await {
        Ok(identity) => identity,
        Err(Failure::Refused(reason)) => {
            tracing::debug!(reason = %reason, "BrowserID authentication failed");
            return super::refused(format!("BrowserID authentication failed: {reason}"));
        }
        Err(Failure::Unavailable(reason)) => {
            tracing::warn!(reason = %reason, "BrowserID verifier failed");
            return AppError::Backend("the identity verifier is unavailable".into())
                .into_response();
        }
    };
    let new_session = match state
        .auth
        .create_session(state.store.as_ref(), Some(&identity), &[])
        .await
    {
        Ok(new_session) => new_session,
        Err(err) => return err.into_response(),
    };
    request.extensions_mut().insert(Authenticated {
        session: new_session.session,
    });
    let mut response = next.run(request).await;
    attach_session_token(&mut response, &new_session.token_hex);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jws(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn audience_comes_from_the_identity_assertion() {
        let cert = jws(r#"{"aud":"not-this-one","principal":{"email":"a@b"}}"#);
        let assertion = format!(
            "{cert}~{}",
            jws(r#"{"aud":"https://loop.example.com","exp":1}"#)
        );
        assert_eq!(
            assertion_audience(&assertion).as_deref(),
            Some("https://loop.example.com")
        );
        assert_eq!(assertion_audience("garbage"), None);
        assert_eq!(assertion_audience("a.!!!.c"), None);
        assert_eq!(assertion_audience(&jws(r#"{"noaud":1}"#)), None);
    }
}
