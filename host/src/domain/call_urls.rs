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

impl CallUrlFields {
    /// Checks every field given, in the order errors are reported;
    /// `creating` requires `callerId`.
    pub(crate) fn check(&self, max_ttl_hours: u64, creating: bool) -> AppResult<()> {
        match &self.caller_id {
            Some(caller_id) => check_text("callerId", caller_id, MAX_IDENTITY_CHARS, false)?,
            None if creating => return Err(AppError::missing("callerId")),
            None => {}
        }
        if let Some(issuer) = &self.issuer {
            check_text("issuer", issuer, MAX_IDENTITY_CHARS, true)?;
        }
        if let Some(subject) = &self.subject {
            check_text("subject", subject, MAX_SUBJECT_CHARS, true)?;
        }
        if let Some(hours) = self.expires_in {
            check_ttl(max_ttl_hours, hours)?;
        }
        Ok(())
    }
}

/// Creates a call URL owned by `user_id`; returns it and the link to hand out.
pub async fn create(
    state: &AppState,
    user_id: &str,
    fields: CallUrlFields,
) -> AppResult<(CallUrl, String)> {
    fields.check(state.config().call_urls.max_ttl_hours, true)?;
    let CallUrlFields {
        caller_id,
        expires_in,
        issuer,
        subject,
    } = fields;
    let caller_id = caller_id.ok_or_else(|| AppError::missing("callerId"))?;
    let ttl_hours = expires_in.unwrap_or(state.config().call_urls.default_ttl_hours);
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
    fields.check(state.config().call_urls.max_ttl_hours, false)?;
    let update = CallUrlUpdate {
        caller_id: fields.caller_id,
        issuer: fields.issuer,
        subject: fields.subject,
        expires_at: fields.expires_in.map(|hours| now + hours_to_seconds(hours)),
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
pub(crate) fn is_plausible_token(token: &str) -> bool {
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

pub(crate) fn unknown() -> AppError {
    AppError::NotFound("unknown or revoked call URL".into())
}

fn expired() -> AppError {
    AppError::Expired("this call URL has expired".into())
}

fn check_ttl(max: u64, hours: u64) -> AppResult<()> {
    if hours == 0 || hours > max {
        return Err(AppError::invalid(
            "expiresIn",
            format!("must be between 1 and {max} hours"),
        ));
    }
    Ok(())
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

/// Properties of call URL tokens and fields; the long run is in `proptest_support`.
#[cfg(test)]
mod proptests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    use super::*;
    use crate::error::Errno;
    use crate::proptest_support::config;

    const MAX_TTL_HOURS: u64 = 720;

    /// Strings around every limit: blank, control characters, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 ]{0,12}",
            "(?s).{0,12}",
            "[ \t]{0,3}",
            (MAX_SUBJECT_CHARS - 2..MAX_SUBJECT_CHARS + 3, "[aé😀]").prop_map(|(n, c)| c.repeat(n)),
            (MAX_IDENTITY_CHARS - 2..MAX_IDENTITY_CHARS + 3, "[aé😀]")
                .prop_map(|(n, c)| c.repeat(n)),
        ]
    }

    fn text_is_valid(value: &str, max_chars: usize, allow_empty: bool) -> bool {
        (allow_empty || !value.trim().is_empty())
            && value.chars().count() <= max_chars
            && !value.chars().any(char::is_control)
    }

    proptest! {
        #![proptest_config(config(1000))]

        /// Tokens the server issues (call URL tokens, call ids, websocket
        /// tokens: every size in use) are plausible and decode back to their bytes.
        #[test]
        fn proptest_call_url_tokens_we_issue_parse_back(bytes in 1usize..=48) {
            let token = crate::domain::random_token(bytes);
            prop_assert!(is_plausible_token(&token), "{}", token);
            let decoded = URL_SAFE_NO_PAD.decode(&token).unwrap();
            prop_assert_eq!(decoded.len(), bytes);
            prop_assert_eq!(URL_SAFE_NO_PAD.encode(decoded), token);
        }

        /// Any string from a path is a plausible token exactly when it is 1 to
        /// 64 characters of the URL-safe base64 alphabet.
        #[test]
        fn proptest_call_url_token_strings_are_refused_unless_plausible(
            token in prop_oneof!["(?s).{0,80}", "[A-Za-z0-9_=+/.-]{0,70}", "[A-Za-z0-9_-]{0,100}"],
        ) {
            let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            let expected = (1..=MAX_TOKEN_CHARS).contains(&token.len()) && token.chars().all(alphabet);
            prop_assert_eq!(is_plausible_token(&token), expected);
        }

        /// A call URL's fields are accepted exactly when each one given is
        /// within its limits, and otherwise refused with 400 naming the first
        /// field at fault (107), or 108 for a missing callerId on creation.
        #[test]
        fn proptest_call_url_fields_are_checked(
            caller_id in prop::option::of(text()),
            issuer in prop::option::of(text()),
            subject in prop::option::of(text()),
            expires_in in prop::option::of(prop_oneof![0u64..=MAX_TTL_HOURS + 2, any::<u64>()]),
            creating in any::<bool>(),
        ) {
            let mut faults = Vec::new();
            match &caller_id {
                None if creating => faults.push("callerId"),
                Some(value) if !text_is_valid(value, MAX_IDENTITY_CHARS, false) => faults.push("callerId"),
                _ => {}
            }
            if issuer.as_deref().is_some_and(|v| !text_is_valid(v, MAX_IDENTITY_CHARS, true)) {
                faults.push("issuer");
            }
            if subject.as_deref().is_some_and(|v| !text_is_valid(v, MAX_SUBJECT_CHARS, true)) {
                faults.push("subject");
            }
            if expires_in.is_some_and(|hours| hours == 0 || hours > MAX_TTL_HOURS) {
                faults.push("expiresIn");
            }
            let missing_caller = caller_id.is_none() && creating;
            let fields = CallUrlFields { caller_id, expires_in, issuer, subject };
            match (fields.check(MAX_TTL_HOURS, creating), faults.first()) {
                (Ok(()), None) => {}
                (Err(err), Some(field)) => {
                    prop_assert_eq!(err.status().as_u16(), 400);
                    if missing_caller {
                        prop_assert_eq!(err.errno(), Errno::MissingParameters);
                        prop_assert_eq!(err.to_string(), "missing callerId");
                    } else {
                        prop_assert_eq!(err.errno(), Errno::InvalidParameters);
                        let prefix = format!("{field}: ");
                        prop_assert!(err.to_string().starts_with(&prefix), "{}", err);
                    }
                }
                (result, faults) => prop_assert!(false, "{:?} but faults {:?}", result, faults),
            }
        }
    }
}
