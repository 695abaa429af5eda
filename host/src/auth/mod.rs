//! Authentication: Hawk device sessions (Mozilla Loop's scheme, so existing
//! Loop clients and Hawk libraries work unchanged) and optional BrowserID/FxA.
//!
//! A session is born from 32 random bytes handed to the client once, in the
//! `Hawk-Session-Token` header. Both sides derive the Hawk id and key from it
//! with HKDF. The server never keeps the token, and keeps the id only as an
//! HMAC under a server secret: a database dump alone cannot sign requests.

mod browserid;
mod hawk;

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use crate::app::AppState;
use crate::config::Config;
use crate::error::{AppError, AppResult};
use crate::net::Net;
use crate::secrets::{HostSecret, Secrets};
use crate::store::{PushUrl, Session, Store};

pub use self::browserid::BrowserIdVerifier;

/// Response header carrying a new session's token (hex).
pub const SESSION_TOKEN_HEADER: &str = "Hawk-Session-Token";
/// Response header carrying the Hawk response MAC.
pub const SERVER_AUTHORIZATION_HEADER: &str = "Server-Authorization";

/// HKDF `info` of Mozilla's session tokens; clients derive with the same.
const SESSION_TOKEN_INFO: &[u8] = b"identity.mozilla.com/picl/v1/sessionToken";

/// A session's expiry is rewritten only when it is older than this, so that a
/// busy client does not cost a database write per request.
const REFRESH_THRESHOLD_SECONDS: i64 = 3600;

/// Sessions kept in memory per instance (a few hundred bytes each).
const SESSION_CACHE_CAPACITY: usize = 10_000;

type HmacSha256 = Hmac<Sha256>;

/// Everything authentication needs; built once in `app.rs`.
pub struct Auth {
    /// Key of the HMAC that turns Hawk ids (and FxA identities) into storage keys.
    id_secret: Vec<u8>,
    session_duration: i64,
    clock_skew: i64,
    /// Port assumed when the `Host` header has none and no proxy said which
    /// scheme the client used: the default port of the public URL's scheme.
    default_port: u16,
    browserid: Option<BrowserIdVerifier>,
    /// Recently used sessions by `id_hmac`, so that a Hawk request checks its
    /// MAC without a database round trip. Safe to serve stale: a session's key
    /// and user never change, and the nonce is recorded only if the session
    /// still exists and is live in the database (see
    /// `Store::remember_nonce_of_live_session`), so a session deleted or
    /// expired on any instance is refused at once everywhere. The cached
    /// expiry may lag a refresh made by another instance; it only decides
    /// when to refresh, and an entry whose cached expiry has passed is looked
    /// up again.
    sessions: quick_cache::sync::Cache<String, Session>,
}

/// A freshly created session and the token to hand to the client, once.
pub struct NewSession {
    pub token_hex: String,
    pub session: Session,
}

/// The Hawk credentials a session token stands for.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Hex of HKDF bytes 0..32.
    pub id: String,
    /// Hex of HKDF bytes 32..64, used as that ASCII string as the HMAC key.
    pub key: String,
}

/// Derives a session token's Hawk id and key, as every Loop client does.
pub fn derive_credentials(token: &[u8]) -> Credentials {
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(None, token)
        .expand(SESSION_TOKEN_INFO, &mut okm)
        .expect("64 bytes is a valid HKDF-SHA256 output length");
    Credentials {
        id: hex::encode(&okm[..32]),
        key: hex::encode(&okm[32..]),
    }
}

/// The request was authenticated; the handler acts for this session.
///
/// As an extractor it requires authentication (401/110 otherwise);
/// `Option<Authenticated>` accepts anonymous requests too.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub session: Session,
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or_else(|| {
                AppError::Unauthorized("this endpoint requires Hawk authentication".into())
            })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Authenticated>().cloned())
    }
}

impl Auth {
    pub fn new(config: &Config, secrets: &Secrets, net: &Net) -> anyhow::Result<Self> {
        let id_secret = secrets.host(HostSecret::HawkIdKey)?;
        let session_duration = i64::try_from(config.auth.hawk_session_duration)
            .map_err(|_| anyhow::anyhow!("auth.hawk_session_duration: too large"))?;
        let clock_skew = i64::try_from(config.auth.hawk_clock_skew_seconds)
            .map_err(|_| anyhow::anyhow!("auth.hawk_clock_skew_seconds: too large"))?;
        // A Host header without a port means the scheme's default port, and
        // the scheme clients use is the public URL's (a TLS proxy in front).
        let default_port = match config.server.public_url.as_deref().map(url::Url::parse) {
            Some(Ok(url)) if url.scheme() == "https" => 443,
            _ => 80,
        };
        let browserid = BrowserIdVerifier::from_config(&config.fxa, net)?;
        Ok(Self {
            id_secret,
            session_duration,
            clock_skew,
            default_port,
            browserid,
            sessions: quick_cache::sync::Cache::new(SESSION_CACHE_CAPACITY),
        })
    }

    /// A cached session that was live the last time this instance saw it.
    fn cached_session(&self, id_hmac: &str, now: i64) -> Option<Session> {
        self.sessions
            .get(id_hmac)
            .filter(|session| session.expires_at > now)
    }

    fn cache_session(&self, session: &Session) {
        self.sessions
            .insert(session.id_hmac.clone(), session.clone());
    }

    fn forget_session(&self, id_hmac: &str) {
        self.sessions.remove(id_hmac);
    }

    /// Deletes the user's sessions (with everything else the user owns) from
    /// storage, then from this instance's cache. Sessions are only ever
    /// deleted here, so no caller can forget the cache; and a deleted session
    /// cached by another instance is refused there anyway, by the nonce check.
    pub async fn delete_user(&self, store: &dyn Store, user_id: &str) -> AppResult<()> {
        store.delete_user(user_id).await?;
        self.sessions
            .retain(|_, session| session.user_id != user_id);
        Ok(())
    }

    /// HMAC of a Hawk id under the server secret: the session's storage key.
    pub fn id_hmac(&self, id: &str) -> String {
        self.hmac_hex(b"", id.as_bytes())
    }

    /// Storage user id of a verified FxA identity. Keyed, so that emails never
    /// reach the database, and prefixed, so it cannot collide with an id HMAC.
    fn fxa_user_id(&self, identity: &str) -> String {
        format!("fxa:{}", self.hmac_hex(b"fxa-user\n", identity.as_bytes()))
    }

    fn hmac_hex(&self, domain: &[u8], data: &[u8]) -> String {
        let mut mac =
            HmacSha256::new_from_slice(&self.id_secret).expect("HMAC takes keys of any length");
        mac.update(domain);
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Creates and stores a session, with its device's push URLs: anonymous,
    /// or bound to a verified FxA identity (every session of one identity
    /// shares one user).
    pub async fn create_session(
        &self,
        store: &dyn Store,
        identity: Option<&str>,
        push_urls: &[PushUrl],
    ) -> AppResult<NewSession> {
        let mut token = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let credentials = derive_credentials(&token);
        let id_hmac = self.id_hmac(&credentials.id);
        let user_id = match identity {
            Some(identity) => self.fxa_user_id(identity),
            None => id_hmac.clone(),
        };
        let session = Session {
            id_hmac,
            key: credentials.key,
            user_id,
            expires_at: crate::clock::now().saturating_add(self.session_duration),
        };
        store.create_session(&session, push_urls).await?;
        // The client's next request usually comes right away.
        self.cache_session(&session);
        Ok(NewSession {
            token_hex: hex::encode(token),
            session,
        })
    }

    /// Pushes a session's expiry forward when it has gone stale enough to be
    /// worth a write. A failure only shortens the session, so it is logged.
    async fn refresh(&self, store: &dyn Store, session: &Session) {
        let renewed = crate::clock::now().saturating_add(self.session_duration);
        if renewed - session.expires_at > REFRESH_THRESHOLD_SECONDS {
            match store.touch_session(&session.id_hmac, renewed).await {
                Ok(()) => self.cache_session(&Session {
                    expires_at: renewed,
                    ..session.clone()
                }),
                Err(err) => tracing::warn!(error = %err, "refreshing a session's expiry failed"),
            }
        }
    }
}

/// Adds `Hawk-Session-Token` to a response. The router's CORS layer lists it
/// in `Access-Control-Expose-Headers`.
pub fn attach_session_token(response: &mut Response, token_hex: &str) {
    if let Ok(value) = HeaderValue::from_str(token_hex) {
        response.headers_mut().insert(SESSION_TOKEN_HEADER, value);
    }
}

/// Run by [`HawkLayer`] for every request that carries `Authorization`:
/// authenticates `Authorization: Hawk` and `Authorization: BrowserID`
/// requests (inserting [`Authenticated`]) and signs the responses to Hawk
/// requests. Requests without `Authorization` pass the layer by; endpoints
/// that need a session reject them via the extractor.
///
/// An address past `rate_limits.failed_auth_per_ip` gets 429 before its
/// credentials are looked at: a refused credential costs a session lookup
/// (and for BrowserID a call to the verifier).
async fn hawk_middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let client = state.limits.client(request.extensions(), request.headers());
    if let Err(err) = state.limits.authentication_allowed(client) {
        return err.into_response();
    }
    let response = authenticate(&state, request, next).await;
    if response.extensions().get::<Refused>().is_some()
        && let Err(err) = state.limits.authentication_failed(client)
    {
        return err.into_response();
    }
    response
}

/// [`hawk_middleware`] around every route, as a layer whose requests without
/// an `Authorization` header (opened call URLs, pages, registration of a new
/// device) go straight to the route: `from_fn` clones the routes inside it
/// and boxes a future on every request, which cost the cheapest route about
/// 6% of its throughput (BENCHMARKS.md). Requests that carry credentials take
/// the `from_fn` path as before.
#[derive(Clone)]
pub struct HawkLayer {
    state: AppState,
}

impl HawkLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for HawkLayer
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = Hawk<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let authenticated = BoxCloneSyncService::new(
            axum::middleware::from_fn_with_state(self.state.clone(), hawk_middleware)
                .layer(inner.clone()),
        );
        Hawk {
            inner,
            authenticated,
        }
    }
}

/// See [`HawkLayer`].
#[derive(Clone)]
pub struct Hawk<S> {
    inner: S,
    authenticated: BoxCloneSyncService<Request, Response, Infallible>,
}

impl<S> Service<Request> for Hawk<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        std::task::ready!(self.inner.poll_ready(cx))?;
        self.authenticated.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.headers().contains_key(header::AUTHORIZATION) {
            Either::Right(self.authenticated.call(request))
        } else {
            Either::Left(self.inner.call(request))
        }
    }
}

/// Marks the response to a request whose credentials were refused, as
/// opposed to one the handler answered.
#[derive(Clone, Copy)]
struct Refused;

/// The 401 of refused credentials.
fn refused(reason: String) -> Response {
    let mut response = AppError::Unauthorized(reason).into_response();
    response.extensions_mut().insert(Refused);
    response
}

async fn authenticate(state: &AppState, request: Request, next: Next) -> Response {
    let Some(authorization) = request.headers().get(header::AUTHORIZATION) else {
        return next.run(request).await;
    };
    let Ok(authorization) = authorization.to_str() else {
        return refused("malformed Authorization header".into());
    };
    let authorization = authorization.trim();
    let (scheme, params) = authorization.split_once(' ').unwrap_or((authorization, ""));
    if scheme.eq_ignore_ascii_case("hawk") {
        let params = params.to_string();
        hawk::authenticate(state, &params, request, next).await
    } else if scheme.eq_ignore_ascii_case("browserid") {
        let assertion = params.trim().to_string();
        browserid::authenticate(state, &assertion, request, next).await
    } else {
        refused("unsupported authorization scheme; use Hawk".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_mozilla_derivation() {
        // The session token 00 01 … 1f, derived by requests-hawk (the Python
        // client Loop clients used) and by RFC 5869 written out by hand.
        let token: Vec<u8> = (0u8..32).collect();
        let creds = derive_credentials(&token);
        assert_eq!(
            creds.id,
            "5fa7b1a9a3266f052b766e956f525b583607e777f264a5bb67b57ed5e34c2c5c"
        );
        assert_eq!(
            creds.key,
            "4f05fbeb8c81b662f52d5c21595c1033a5126f3b7dabd872c4cfd8298254651c"
        );
    }
}
