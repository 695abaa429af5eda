//! The web app: Alice's page at `/c/{token}` (call the owner of a link) and
//! Bob's at `/` (a device session in the browser: call links, incoming calls).
//!
//! Every file is embedded in the binary; pages carry a strict
//! Content-Security-Policy (our own scripts and styles only, connections to
//! this server only) so they work offline and nothing else can run in them.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::domain::call_urls;
use crate::error::AppError;

use super::openapi::LoopError;

const LAYOUT: &str = include_str!("pages/layout.html");
const CALLER_BODY: &str = include_str!("pages/caller.html");
const CALLEE_BODY: &str = include_str!("pages/callee.html");
const CALL_VIEW: &str = include_str!("pages/call-view.html");

/// The static files, by the name they are served at under `static/`.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        (
            "app.css",
            "text/css; charset=utf-8",
            include_str!("pages/app.css"),
        ),
        ("hawk.js", JS, include_str!("pages/hawk.js")),
        ("call.js", JS, include_str!("pages/call.js")),
        ("caller.js", JS, include_str!("pages/caller.js")),
        ("callee.js", JS, include_str!("pages/callee.js")),
    ]
    .into_iter()
    .map(|(name, content_type, body)| Asset {
        name,
        content_type,
        body,
        etag: format!("\"{}\"", hex::encode(&Sha256::digest(body)[..12])),
    })
    .collect()
});

const JS: &str = "text/javascript; charset=utf-8";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    etag: String,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(asset))
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

#[utoipa::path(
    get,
    path = "/c/{token}",
    operation_id = "call_page",
    tag = "pages",
    summary = "The call page of a call URL (HTML)",
    description = "\"Do you want to call …?\" with \"Call with video\" and \"Audio only\": \
        the link `call_urls.web_app_url` hands out. A link that does not work gets a page \
        saying why, with the API's status.",
    params(("token" = String, Path, description = "The call URL's token")),
    responses(
        (status = 200, description = "The call page", content_type = "text/html", body = String),
        (status = 404, description = "Unknown or revoked call URL", content_type = "text/html", body = String),
        (status = 410, description = "The call URL has expired", content_type = "text/html", body = String),
        (status = 503, description = "Storage is unavailable; `Retry-After` says when to retry",
            content_type = "text/html", body = String),
    ),
)]
async fn page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    call_page(&state, &token).await
}

/// Bob's page (`/` in a browser): his device session, his call links, his
/// incoming calls. Everything it shows comes from the API, in the browser.
pub fn home_page(state: &AppState) -> Response {
    let body = fill(
        CALLEE_BODY,
        &[
            ("call_view", CALL_VIEW),
            ("base", ""),
            ("script", "callee.js"),
        ],
    );
    html_response(state, StatusCode::OK, "Loop", "", &body)
}

/// The page for a call URL: "Do you want to call <issuer>?" with "Call with
/// video" and "Audio only", or a readable page saying why the link does not
/// work, with the API's status.
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
                .map(|s| format!("<p class=\"subject\">{}</p>", escape(s)))
                .unwrap_or_default();
            // Relative, so the page works at /c/, /calls/ and /v0/… and behind a path prefix.
            let call_path = escape(&format!("../calls/{token}"));
            let callee = escape(callee.unwrap_or("them"));
            let body = fill(
                CALLER_BODY,
                &[
                    ("question", &question),
                    ("subject", &subject),
                    ("call_path", &call_path),
                    ("callee", &callee),
                    ("call_view", CALL_VIEW),
                    ("base", "../"),
                    ("script", "caller.js"),
                ],
            );
            html_response(state, StatusCode::OK, "Loop call", "../", &body)
        }
        Err(err) => error_page(state, err),
    }
}

/// The API error as a page: same status and headers (`Retry-After`), readable body.
fn error_page(state: &AppState, err: AppError) -> Response {
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
        state,
        status,
        title,
        "../",
        &format!(
            "<main class=\"notice\">\n<p class=\"brand\">Loop</p>\n<h1>{}</h1>\n<p>{}</p>\n</main>",
            escape(title),
            escape(text)
        ),
    );
    if let Some(retry_after) = json.headers().get(header::RETRY_AFTER) {
        page.headers_mut()
            .insert(header::RETRY_AFTER, retry_after.clone());
    }
    page
}

/// Pages carry user data (issuer, subject): nothing may run but our own
/// scripts, nothing may be loaded from elsewhere, and the page may not be
/// framed (click-jacking a "Call" button). Connections go to this server
/// only: its own origin, and the websocket origin of its public URL (the
/// progress and signaling sockets, which may be reached under another name
/// than the page). Media elements show MediaStreams.
fn content_security_policy(public_url: &str) -> String {
    let websocket_origin = url::Url::parse(public_url)
        .ok()
        .filter(|url| url.has_host())
        .map(|url| {
            let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
            let origin = url.origin().ascii_serialization();
            let rest = origin.split_once("://").map_or("", |(_, rest)| rest);
            format!(" {scheme}://{rest}")
        })
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; \
         connect-src 'self'{websocket_origin}; img-src 'self' data:; \
         media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

fn html_response(
    state: &AppState,
    status: StatusCode,
    title: &str,
    base: &str,
    body: &str,
) -> Response {
    let document = fill(
        LAYOUT,
        &[("title", &escape(title)), ("base", base), ("body", body)],
    );
    let mut response = (status, Html(document)).into_response();
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&state.public_url)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The URL holds a capability: keep it out of Referer headers and shared caches.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Camera and microphone for this origin only.
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
    );
    response
}

/// A static file; revalidated on every use (`no-cache` with an ETag), so a
/// page never runs scripts of another release.
#[utoipa::path(
    get,
    path = "/static/{name}",
    tag = "pages",
    summary = "The web app's scripts and style sheet",
    params(
        ("name" = String, Path, description = "app.css, hawk.js, call.js, caller.js or callee.js"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of a copy the client has"),
    ),
    responses(
        (status = 200, description = "The file, with its ETag",
            content((String = "text/css"), (String = "text/javascript"))),
        (status = 304, description = "The client's copy (`If-None-Match`) is current"),
        (status = 404, description = "No such file (errno 105)", body = LoopError),
    ),
)]
async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|asset| asset.name == name) else {
        return AppError::NotFound("no such file".into()).into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == asset.etag));
    let common = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    if fresh {
        return (
            StatusCode::NOT_MODIFIED,
            common,
            [(header::ETAG, asset.etag.clone())],
        )
            .into_response();
    }
    (
        common,
        [
            (header::CONTENT_TYPE, asset.content_type.to_string()),
            (header::ETAG, asset.etag.clone()),
        ],
        asset.body,
    )
        .into_response()
}

/// Replaces each `{{name}}` of `template` with its value, in one pass: a value
/// is never searched for placeholders itself.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| {
            let name = &after[..end];
            values
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (end, *value))
        }) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
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

    use super::{ASSETS, CALL_VIEW, content_security_policy, escape, fill, wants_html};

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

    #[test]
    fn fill_replaces_once_and_never_inside_values() {
        assert_eq!(
            fill(
                "<h1>{{a}}</h1>{{b}}{{unknown}}{{",
                &[("a", "{{b}}"), ("b", "x")]
            ),
            "<h1>{{b}}</h1>x{{unknown}}{{"
        );
    }

    #[test]
    fn the_policy_allows_the_public_websocket_origin_only() {
        let csp = content_security_policy("https://loop.example.com/base");
        assert!(
            csp.contains("connect-src 'self' wss://loop.example.com;"),
            "{csp}"
        );
        let csp = content_security_policy("http://127.0.0.1:5000");
        assert!(
            csp.contains("connect-src 'self' ws://127.0.0.1:5000;"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"));
    }

    #[test]
    fn pages_have_no_inline_script_or_style() {
        let pages = [
            super::LAYOUT,
            super::CALLER_BODY,
            super::CALLEE_BODY,
            CALL_VIEW,
        ];
        for page in pages {
            assert!(!page.contains("style="), "{page}");
            assert!(!page.contains("<style"), "{page}");
            let handler = page.split(" on").skip(1).any(|rest| {
                let name_end = rest.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(0);
                name_end > 0 && rest[name_end..].starts_with('=')
            });
            assert!(!handler, "no event handler attributes: {page}");
            for script in page.split("<script").skip(1) {
                assert!(script.trim_start().starts_with("type=\"module\" src="));
            }
        }
        assert_eq!(ASSETS.len(), 5);
    }
}
