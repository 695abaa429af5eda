//! Call URLs: the links a callee hands out so that anyone holding one can
//! call them. Their owner creates, lists, updates and revokes them; a caller
//! can only use one while it is live.

use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::store::{CallUrl, CallUrlUpdate, PushTopic, Timestamp};

/// Longest `callerId` and `issuer` accepted, in characters.
pub const MAX_IDENTITY_CHARS: usize = 255;
/// Longest `subject` accepted, in characters (Mozilla's limit).
pub const MAX_SUBJECT_CHARS: usize = 124;
/// Call URL tokens are 16 random bytes: 128 bits, 22 URL-safe base64 characters.
pub const TOKEN_BYTES: usize = 16;
/// Anything longer cannot be one of our tokens; refused before touching storage.
pub const MAX_TOKEN_CHARS: usize = 64;

/// What the owner says about a call URL. On creation `caller_id` is required
/// and `None` elsewhere means the default; on update `None` keeps the value.
#[derive(Debug, Default)]
pub struct CallUrlFields {
    pub caller_id: Option<String>,
    /// Hours from now.
    pub expires_in: Option<u64>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
}

/// Creates a call URL owned by `user_id`; returns it and the link to hand out.
pub async fn create(
    state: &AppState,
    user_id: &str,
    fields: CallUrlFields,
) -> AppResult<(CallUrl, String)> {
    let caller_id = fields
        .caller_id
        .ok_or_else(|| AppError::missing("callerId"))?;
    check_text("callerId", &caller_id, MAX_IDENTITY_CHARS, false)?;
    let issuer = optional_text("issuer", fields.issuer, MAX_IDENTITY_CHARS)?;
    let subject = optional_text("subject", fields.subject, MAX_SUBJECT_CHARS)?;
    let ttl_hours = match fields.expires_in {
        Some(hours) => check_ttl(state, hours)?,
        None => state.config().call_urls.default_ttl_hours,
    };
    let now = crate::clock::now();
    let call_url = CallUrl {
        token: super::random_token(TOKEN_BYTES),
        user_id: user_id.to_string(),
        caller_id,
        issuer,
        subject,
        created_at: now,
        expires_at: now + hours_to_seconds(ttl_hours),
    };
    state.store.create_call_url(&call_url).await?;
    let link = link(state, &call_url.token);
    Ok((call_url, link))
}

/// The owner's call URLs that are still live.
pub async fn list(state: &AppState, user_id: &str) -> AppResult<Vec<CallUrl>> {
    Ok(state.store.call_urls(user_id, crate::clock::now()).await?)
}

/// Changes the fields given; returns the call URL's expiry afterwards.
pub async fn update(
    state: &AppState,
    user_id: &str,
    token: &str,
    fields: CallUrlFields,
) -> AppResult<Timestamp> {
    let existing = owned(state, token, user_id).await?;
    let now = crate::clock::now();
    if existing.expires_at <= now {
        return Err(expired());
    }
    if let Some(caller_id) = &fields.caller_id {
        check_text("callerId", caller_id, MAX_IDENTITY_CHARS, false)?;
    }
    let update = CallUrlUpdate {
        caller_id: fields.caller_id,
        issuer: optional_text("issuer", fields.issuer, MAX_IDENTITY_CHARS)?,
        subject: optional_text("subject", fields.subject, MAX_SUBJECT_CHARS)?,
        expires_at: match fields.expires_in {
            Some(hours) => Some(now + hours_to_seconds(check_ttl(state, hours)?)),
            None => None,
        },
    };
    let expires_at = update.expires_at.unwrap_or(existing.expires_at);
    if !state.store.update_call_url(token, user_id, &update).await? {
        // Revoked (or purged) between the read and the write.
        return Err(unknown());
    }
    Ok(expires_at)
}

/// Revokes a call URL: it answers 404 from then on.
pub async fn revoke(state: &AppState, user_id: &str, token: &str) -> AppResult<()> {
    owned(state, token, user_id).await?;
    if !state.store.delete_call_url(token, user_id).await? {
        return Err(unknown());
    }
    Ok(())
}

/// The call URL behind `token`, if it can still be called: 404/105 when
/// unknown or revoked, 410/111 when expired.
pub async fn live(state: &AppState, token: &str) -> AppResult<CallUrl> {
    let url = find(state, token).await?.ok_or_else(unknown)?;
    callable(url)
}

/// [`live`] plus the push URLs that wake its owner's devices for calls, in
/// one database read: what placing a call needs.
pub(crate) async fn live_with_callee_push_urls(
    state: &AppState,
    token: &str,
) -> AppResult<(CallUrl, Vec<String>)> {
    if !is_plausible_token(token) {
        return Err(unknown());
    }
    let found = state
        .store
        .call_url_with_push_urls(token, PushTopic::Calls, crate::clock::now())
        .await?;
    let (url, push_urls) = found.ok_or_else(unknown)?;
    Ok((callable(url)?, push_urls))
}

/// The link handed out for `token`, from `call_urls.web_app_url`.
pub fn link(state: &AppState, token: &str) -> String {
    state
        .config()
        .call_urls
        .web_app_url
        .replace("{public_url}", &state.public_url)
        .replace("{token}", token)
}

/// The call URL behind `token` if `user_id` owns it: 404/105 when unknown,
/// 403/110 when someone else's.
async fn owned(state: &AppState, token: &str, user_id: &str) -> AppResult<CallUrl> {
    let url = find(state, token).await?.ok_or_else(unknown)?;
    if url.user_id != user_id {
        return Err(AppError::Forbidden(
            "this call URL belongs to someone else".into(),
        ));
    }
    Ok(url)
}

/// Looks a token up, without asking storage about strings that cannot be tokens.
async fn find(state: &AppState, token: &str) -> AppResult<Option<CallUrl>> {
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

/// 410/111 for a call URL that has expired.
fn callable(url: CallUrl) -> AppResult<CallUrl> {
    if url.expires_at <= crate::clock::now() {
        return Err(expired());
    }
    Ok(url)
}

fn unknown() -> AppError {
    AppError::NotFound("unknown or revoked call URL".into())
}

fn expired() -> AppError {
    AppError::Expired("this call URL has expired".into())
}

fn check_ttl(state: &AppState, hours: u64) -> AppResult<u64> {
    let max = state.config().call_urls.max_ttl_hours;
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
