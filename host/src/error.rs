//! The one place where failures become HTTP responses.
//!
//! Every error a client sees is Loop's `{code, errno, error, message}` body, with
//! the errno numbers of Mozilla's Loop server so existing clients understand them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// Loop's errno numbers (a subset of Mozilla's loop-server `errors.js`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[repr(u16)]
pub enum Errno {
    InvalidToken = 105,
    BadJson = 106,
    InvalidParameters = 107,
    MissingParameters = 108,
    InvalidAuthToken = 110,
    Expired = 111,
    RequestTooLarge = 113,
    Backend = 201,
    Undefined = 999,
}

/// How long a client should wait before retrying after a backend failure.
pub const RETRY_AFTER_SECONDS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A token (call URL token, call id) that is unknown or revoked.
    #[error("{0}")]
    NotFound(String),
    /// Malformed JSON, or a body that is not JSON at all.
    #[error("{0}")]
    BadJson(String),
    /// JSON whose content type is not acceptable.
    #[error("{0}")]
    NotAcceptable(String),
    /// A field with a wrong type or value; the message names the field.
    #[error("{field}: {reason}")]
    InvalidParameter { field: String, reason: String },
    /// A required field is absent; the message names the field.
    #[error("missing {0}")]
    MissingParameter(String),
    /// Authentication failed (401, with `WWW-Authenticate: Hawk`).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed to touch this resource.
    #[error("{0}")]
    Forbidden(String),
    /// The resource existed but has expired.
    #[error("{0}")]
    Expired(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// A rate limit (`rate_limits.<budget>`) refused the request: 429 with
    /// `Retry-After`. Errno 999: Mozilla's server has no errno for it (its
    /// 429s came from the load balancer in front, with only Retry-After), and
    /// its 121 (CLIENT_REACHED_CAPACITY) means a full room, not too many requests.
    #[error("too many requests (rate_limits.{budget}); retry after {retry_after_seconds} s")]
    TooManyRequests {
        budget: &'static str,
        retry_after_seconds: u64,
    },
    /// Storage, provider or another dependency failed; the client may retry.
    #[error("{0}")]
    Backend(String),
    /// A bug or an unexpected state. The detail is logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Loop's error body, `LoopError` in the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LoopError)]
pub struct ErrorBody {
    /// The HTTP status, repeated.
    code: u16,
    #[schema(value_type = Errno)]
    errno: u16,
    /// The status's reason phrase ("Bad Request").
    error: &'static str,
    /// What went wrong, for the developer; names the field when one is at fault.
    message: String,
}

impl AppError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn missing(field: impl Into<String>) -> Self {
        Self::MissingParameter(field.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadJson(_) | Self::InvalidParameter { .. } | Self::MissingParameter(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Expired(_) => StatusCode::GONE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn errno(&self) -> Errno {
        match self {
            Self::NotFound(_) => Errno::InvalidToken,
            Self::BadJson(_) | Self::NotAcceptable(_) => Errno::BadJson,
            Self::InvalidParameter { .. } => Errno::InvalidParameters,
            Self::MissingParameter(_) => Errno::MissingParameters,
            Self::Unauthorized(_) | Self::Forbidden(_) => Errno::InvalidAuthToken,
            Self::Expired(_) => Errno::Expired,
            Self::TooLarge(_) => Errno::RequestTooLarge,
            Self::Backend(_) => Errno::Backend,
            Self::TooManyRequests { .. } | Self::Internal(_) => Errno::Undefined,
        }
    }
}

/// Every storage failure is a 503 with errno 201 and Retry-After, as Mozilla's
/// server answers any storage error: the client can do nothing but retry,
/// and a clash on a random key does go away when it retries with fresh keys.
/// The kind (unavailable, timeout, conflict, other) goes to the log, where it
/// tells an outage from a bug.
impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "storage error");
        Self::Backend("storage is unavailable".into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(err) = &self {
            tracing::error!(error = ?err, "internal error");
        }
        let body = ErrorBody {
            code: status.as_u16(),
            errno: self.errno() as u16,
            error: status.canonical_reason().unwrap_or("Error"),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Hawk"));
            }
            Self::Backend(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            Self::TooManyRequests {
                retry_after_seconds,
                ..
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_seconds.max(1)),
                );
            }
            _ => {}
        }
        response
    }
}

/// `Json<T>` whose rejections are Loop errors: malformed JSON is 400/106, a wrong
/// content type 406/106, a field of the wrong type 400/107 naming the field, an
/// oversized body 413/113.
pub struct LoopJson<T>(pub T);

impl<S, T> FromRequest<S> for LoopJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match <Json<T> as FromRequest<S>>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// An optional JSON body: a request with no body at all is `None`; a body
/// must be JSON, with the same errors as [`LoopJson`].
impl<S, T> OptionalFromRequest<S> for LoopJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            return <Self as FromRequest<S>>::from_request(req, state)
                .await
                .map(Some);
        }
        let body = <Bytes as FromRequest<S>>::from_request(req, state)
            .await
            .map_err(|err| {
                if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::TooLarge(crate::app::MAX_BODY_BYTES)
                } else {
                    AppError::BadJson(err.body_text())
                }
            })?;
        if body.is_empty() {
            Ok(None)
        } else {
            Err(AppError::NotAcceptable(
                "expected Content-Type: application/json".into(),
            ))
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::JsonDataError(err) => {
            // serde's message reads like "field: invalid type ..."; keep its path.
            let detail = std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_else(|| err.body_text());
            data_error(&detail)
        }
        JsonRejection::JsonSyntaxError(err) => {
            AppError::BadJson(format!("malformed JSON: {}", err.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => {
            AppError::NotAcceptable("expected Content-Type: application/json".into())
        }
        JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::TooLarge(crate::app::MAX_BODY_BYTES)
        }
        other => AppError::BadJson(other.body_text()),
    }
}

/// Turns serde_path_to_error's "path: message" (axum's `Json` uses it) into a
/// Loop error naming the field: a missing field is 400/108, anything else
/// (wrong type, unknown enum variant, a body that is not an object) 400/107.
fn data_error(detail: &str) -> AppError {
    let (path, message) = match detail.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => (path.trim(), message.trim()),
        _ => (".", detail.trim()),
    };
    // Strip serde_json's " at line 1 column 15": the field name says where.
    let message = message.split(" at line ").next().unwrap_or(message);
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let field = if path == "." {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        return AppError::missing(field);
    }
    let field = if path == "." { "body" } else { path };
    AppError::invalid(field, message)
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_name_the_field() {
        let err = data_error(
            "callerId: invalid type: integer `5`, expected a string at line 1 column 14",
        );
        assert_eq!(err.errno(), Errno::InvalidParameters);
        assert_eq!(
            err.to_string(),
            "callerId: invalid type: integer `5`, expected a string"
        );
        let err = data_error("missing field `callType` at line 1 column 2");
        assert_eq!(err.errno(), Errno::MissingParameters);
        assert_eq!(err.to_string(), "missing callType");
        let err = data_error("simplePushURLs: missing field `calls` at line 1 column 20");
        assert_eq!(err.to_string(), "missing simplePushURLs.calls");
        let err = data_error("invalid type: sequence, expected struct X at line 1 column 0");
        assert_eq!(
            err.to_string(),
            "body: invalid type: sequence, expected struct X"
        );
    }
}
