//! The call page: what a call URL shows in a browser, so that a link works from
//! day one without the full web app.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::domain::call_urls;
use crate::error::AppError;

const CALL_JS: &str = include_str!("pages/call.js");
const CALL_CSS: &str = include_str!("pages/call.css");

/// Pages carry user data (issuer, subject): nothing may run but our own script,
/// and the page may not be framed (click-jacking a "Call" button).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/c/{token}", get(page))
        .route("/static/call.js", get(script))
        .route("/static/call.css", get(stylesheet))
}

/// True when the client prefers a page to JSON: a browser navigating lists
/// `text/html` first; API clients ask for JSON or anything.
pub fn wants_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    match (accept.find("text/html"), accept.find("application/json")) {
        (Some(html), Some(json)) => html < json,
        (Some(_), None) => true,
        _ => false,
    }
}

async fn page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    call_page(&state, &token).await
}

/// The page for a call URL: "Do you want to call <issuer>?" and a Call button,
/// or a readable page saying why the link does not work, with the API's status.
pub async fn call_page(state: &AppState, token: &str) -> Response {
    match call_urls::live(state, token).await {
        Ok(url) => {
            let callee = url.issuer.as_deref().filter(|name| !name.trim().is_empty());
            let question = match callee {
                Some(name) => format!("Do you want to call {}?", escape(name)),
                None => "Do you want to make this call?".to_string(),
            };
            let subject = url
                .subject
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(|s| format!("<p class=\"subject\">{}</p>\n", escape(s)))
                .unwrap_or_default();
            // Relative, so the page works at /c/, /calls/ and /v0/… and behind a path prefix.
            let call_path = format!("../calls/{token}");
            let body = format!(
                "<h1>{question}</h1>\n{subject}\
                 <form id=\"call-form\" data-call-path=\"{path}\" data-callee=\"{callee}\">\n\
                 <button id=\"call\" type=\"submit\">Call</button>\n\
                 <label><input id=\"audio-only\" type=\"checkbox\"> Audio only</label>\n\
                 </form>\n<p id=\"status\" role=\"status\" aria-live=\"polite\"></p>\n\
                 <script src=\"../static/call.js\"></script>",
                path = escape(&call_path),
                callee = escape(callee.unwrap_or("them")),
            );
            html_response(StatusCode::OK, "Loop call", &body)
        }
        Err(err) => error_page(err),
    }
}

/// The API error as a page: same status and headers (`Retry-After`), readable body.
fn error_page(err: AppError) -> Response {
    let (title, text) = match &err {
        AppError::NotFound(_) => (
            "This link does not work",
            "This call link is not valid, or it has been revoked.",
        ),
        AppError::Expired(_) => (
            "This link has expired",
            "Ask the person who sent it for a new one.",
        ),
        AppError::Backend(_) => (
            "Please try again",
            "The service is busy right now. Try again in a moment.",
        ),
        _ => ("Something went wrong", "The call link could not be opened."),
    };
    let json = err.into_response();
    let status = json.status();
    let mut page = html_response(
        status,
        title,
        &format!("<h1>{}</h1>\n<p>{}</p>", escape(title), escape(text)),
    );
    if let Some(retry_after) = json.headers().get(header::RETRY_AFTER) {
        page.headers_mut()
            .insert(header::RETRY_AFTER, retry_after.clone());
    }
    page
}

fn html_response(status: StatusCode, title: &str, body: &str) -> Response {
    let document = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{}</title>\n<link rel=\"stylesheet\" href=\"../static/call.css\">\n</head>\n<body>\n{body}\n</body>\n</html>\n",
        escape(title)
    );
    let mut response = (status, Html(document)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The URL holds a capability: keep it out of Referer headers and shared caches.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn script() -> impl IntoResponse {
    static_asset("text/javascript; charset=utf-8", CALL_JS)
}

async fn stylesheet() -> impl IntoResponse {
    static_asset("text/css; charset=utf-8", CALL_CSS)
}

fn static_asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// HTML-escapes text for element content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::{escape, wants_html};

    #[test]
    fn browsers_get_pages_and_api_clients_json() {
        let accept = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(value));
            headers
        };
        assert!(wants_html(&accept(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(!wants_html(&accept("application/json, text/html")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn escape_neutralises_markup_and_attribute_breakouts() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(escape("Bob"), "Bob");
    }
}
