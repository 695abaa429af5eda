//! Call URLs: the links a callee hands out so that anyone holding one can call them.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::Authenticated;
use crate::error::{AppError, AppResult, LoopJson};
use crate::store::{CallUrl, CallUrlUpdate, PushTopic, Timestamp};

/// Longest `callerId` and `issuer` accepted, in characters.
pub const MAX_IDENTITY_CHARS: usize = 255;
/// Longest `subject` accepted, in characters (Mozilla's limit).
pub const MAX_SUBJECT_CHARS: usize = 124;
/// Call URL tokens are 16 random bytes: 128 bits, 22 URL-safe base64 characters.
const TOKEN_BYTES: usize = 16;
/// Anything longer cannot be one of our tokens; refused before touching storage.
pub const MAX_TOKEN_CHARS: usize = 64;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/call-url", get(list).post(create))
        .route("/call-url/{token}", put(update).delete(revoke))
}

/// The body of `POST /call-url` and `PUT /call-url/{token}`: the same fields,
/// required or not depending on the route.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallUrlFields {
    caller_id: Option<String>,
    /// Hours.
    expires_in: Option<u64>,
    issuer: Option<String>,
    subject: Option<String>,
}

#[derive(Serialize)]
struct CreatedCallUrl {
    #[serde(rename = "callUrl")]
    call_url: String,
    #[serde(rename = "callToken")]
    call_token: String,
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

#[derive(Serialize)]
struct ListedCallUrl {
    #[serde(rename = "callToken")]
    call_token: String,
    #[serde(rename = "callerId")]
    caller_id: String,
    timestamp: Timestamp,
    issuer: Option<String>,
    subject: Option<String>,
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

#[derive(Serialize)]
struct UpdatedCallUrl {
    #[serde(rename = "expiresAt")]
    expires_at: Timestamp,
}

async fn create(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    LoopJson(body): LoopJson<CallUrlFields>,
) -> AppResult<Json<CreatedCallUrl>> {
    let caller_id = body
        .caller_id
        .ok_or_else(|| AppError::missing("callerId"))?;
    check_text("callerId", &caller_id, MAX_IDENTITY_CHARS, false)?;
    let issuer = optional_text("issuer", body.issuer, MAX_IDENTITY_CHARS)?;
    let subject = optional_text("subject", body.subject, MAX_SUBJECT_CHARS)?;
    let ttl_hours = match body.expires_in {
        Some(hours) => check_ttl(&state, hours)?,
        None => state.config.call_urls.default_ttl_hours,
    };
    let now = crate::clock::now();
    let token = super::random_token(TOKEN_BYTES);
    let call_url = CallUrl {
        token: token.clone(),
        user_id: session.user_id,
        caller_id,
        issuer,
        subject,
        created_at: now,
        expires_at: now + hours_to_seconds(ttl_hours),
    };
    state.store.create_call_url(&call_url).await?;
    Ok(Json(CreatedCallUrl {
        call_url: call_url_for(&state, &token),
        call_token: token,
        expires_at: call_url.expires_at,
    }))
}

async fn list(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
) -> AppResult<Json<Vec<ListedCallUrl>>> {
    let urls = state
        .store
        .call_urls(&session.user_id, crate::clock::now())
        .await?;
    Ok(Json(
        urls.into_iter()
            .map(|url| ListedCallUrl {
                call_token: url.token,
                caller_id: url.caller_id,
                timestamp: url.created_at,
                issuer: url.issuer,
                subject: url.subject,
                expires_at: url.expires_at,
            })
            .collect(),
    ))
}

async fn update(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    Path(token): Path<String>,
    LoopJson(body): LoopJson<CallUrlFields>,
) -> AppResult<Json<UpdatedCallUrl>> {
    let existing = owned_call_url(&state, &token, &session.user_id).await?;
    let now = crate::clock::now();
    if existing.expires_at <= now {
        return Err(AppError::Expired("this call URL has expired".into()));
    }
    if let Some(caller_id) = &body.caller_id {
        check_text("callerId", caller_id, MAX_IDENTITY_CHARS, false)?;
    }
    let update = CallUrlUpdate {
        caller_id: body.caller_id,
        issuer: optional_text("issuer", body.issuer, MAX_IDENTITY_CHARS)?,
        subject: optional_text("subject", body.subject, MAX_SUBJECT_CHARS)?,
        expires_at: match body.expires_in {
            Some(hours) => Some(now + hours_to_seconds(check_ttl(&state, hours)?)),
            None => None,
        },
    };
    let expires_at = update.expires_at.unwrap_or(existing.expires_at);
    if !state
        .store
        .update_call_url(&token, &session.user_id, &update)
        .await?
    {
        // Revoked (or purged) between the read and the write.
        return Err(unknown_call_url());
    }
    Ok(Json(UpdatedCallUrl { expires_at }))
}

async fn revoke(
    State(state): State<AppState>,
    Authenticated { session }: Authenticated,
    Path(token): Path<String>,
) -> AppResult<StatusCode> {
    owned_call_url(&state, &token, &session.user_id).await?;
    if !state
        .store
        .delete_call_url(&token, &session.user_id)
        .await?
    {
        return Err(unknown_call_url());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The call URL behind `token` if `user_id` owns it: 404/105 when unknown,
/// 403/110 when someone else's.
async fn owned_call_url(state: &AppState, token: &str, user_id: &str) -> AppResult<CallUrl> {
    let url = find_call_url(state, token)
        .await?
        .ok_or_else(unknown_call_url)?;
    if url.user_id != user_id {
        return Err(AppError::Forbidden(
            "this call URL belongs to someone else".into(),
        ));
    }
    Ok(url)
}

/// Looks a token up, without asking storage about strings that cannot be tokens.
pub(crate) async fn find_call_url(state: &AppState, token: &str) -> AppResult<Option<CallUrl>> {
    if !is_plausible_token(token) {
        return Ok(None);
    }
    Ok(state.store.call_url(token).await?)
}

/// Tokens we issue are short URL-safe base64; anything else cannot exist and
/// is answered without a database round trip.
fn is_plausible_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The call URL behind `token`, if it can still be called: 404/105 when unknown
/// or revoked, 410/111 when expired.
pub(crate) async fn live_call_url(state: &AppState, token: &str) -> AppResult<CallUrl> {
    let url = find_call_url(state, token)
        .await?
        .ok_or_else(unknown_call_url)?;
    callable(url)
}

/// [`live_call_url`] plus the push URLs that wake its owner's devices for
/// calls, in one database read: what placing a call needs.
pub(crate) async fn live_call_url_and_callee_push_urls(
    state: &AppState,
    token: &str,
) -> AppResult<(CallUrl, Vec<String>)> {
    if !is_plausible_token(token) {
        return Err(unknown_call_url());
    }
    let found = state
        .store
        .call_url_with_push_urls(token, PushTopic::Calls, crate::clock::now())
        .await?;
    let (url, push_urls) = found.ok_or_else(unknown_call_url)?;
    Ok((callable(url)?, push_urls))
}

/// 410/111 for a call URL that has expired.
fn callable(url: CallUrl) -> AppResult<CallUrl> {
    if url.expires_at <= crate::clock::now() {
        return Err(AppError::Expired("this call URL has expired".into()));
    }
    Ok(url)
}

pub(crate) fn unknown_call_url() -> AppError {
    AppError::NotFound("unknown or revoked call URL".into())
}

/// The link handed out for `token`, from `call_urls.web_app_url`.
pub(crate) fn call_url_for(state: &AppState, token: &str) -> String {
    state
        .config
        .call_urls
        .web_app_url
        .replace("{public_url}", &state.public_url)
        .replace("{token}", token)
}

fn check_ttl(state: &AppState, hours: u64) -> AppResult<u64> {
    let max = state.config.call_urls.max_ttl_hours;
    if hours == 0 || hours > max {
        return Err(AppError::invalid(
            "expiresIn",
            format!("must be between 1 and {max} hours"),
        ));
    }
    Ok(hours)
}

fn hours_to_seconds(hours: u64) -> i64 {
    i64::try_from(hours.saturating_mul(3600)).unwrap_or(i64::MAX / 2)
}

/// Length and content checks shared by call URLs and calls; errors name the field.
pub(crate) fn check_text(
    field: &str,
    value: &str,
    max_chars: usize,
    allow_empty: bool,
) -> AppResult<()> {
    if !allow_empty && value.trim().is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(AppError::invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(AppError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub(crate) fn optional_text(
    field: &str,
    value: Option<String>,
    max_chars: usize,
) -> AppResult<Option<String>> {
    match value {
        Some(value) => {
            check_text(field, &value, max_chars, true)?;
            Ok(Some(value))
        }
        None => Ok(None),
    }
}
