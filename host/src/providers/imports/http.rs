//! `http`: outbound requests, only to the plugin's allowed origins, bounded in
//! size and by the call's wall time.

use std::time::{Duration, Instant};

use crate::providers::state::CallState;

impl CallState {
    /// Sends one request for the plugin, within its allowed origins, its
    /// response size cap and the time left in its wall-time budget.
    pub async fn http_send(&mut self, request: HttpRequest) -> Result<HttpResponse, HttpFailure> {
        let result = self.http_send_inner(request).await;
        if let Err(failure) = &result {
            tracing::debug!(plugin = %self.plugin.name, error = ?failure, "plugin HTTP request failed");
        }
        result
    }

    async fn http_send_inner(&self, request: HttpRequest) -> Result<HttpResponse, HttpFailure> {
        let url = url::Url::parse(&request.url)
            .map_err(|err| HttpFailure::InvalidRequest(format!("not an absolute URL: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpFailure::Denied(format!(
                "scheme {} is not http(s)",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HttpFailure::InvalidRequest(
                "credentials in the URL are not allowed".into(),
            ));
        }
        let origin = url.origin();
        if !self.plugin.allowed_origins.contains(&origin) {
            return Err(HttpFailure::Denied(format!(
                "{} is not in plugins.{}.allowed_hosts",
                origin.ascii_serialization(),
                self.plugin.name
            )));
        }
        let left = self.wall_deadline.saturating_duration_since(Instant::now());
        let timeout = match request.timeout_ms {
            Some(ms) => left.min(Duration::from_millis(ms.into())),
            None => left,
        };
        if timeout.is_zero() {
            return Err(HttpFailure::Timeout);
        }
        let mut builder = self.plugin.http.request(request.method, url.clone());
        for (name, value) in &request.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpFailure::InvalidRequest(format!("bad header name {name:?}")))?;
            // The origin check above is the plugin's boundary; a Host header
            // would let it address another virtual host behind that origin.
            if name == http::header::HOST {
                return Err(HttpFailure::InvalidRequest(
                    "the Host header is set by the host".into(),
                ));
            }
            let value = http::HeaderValue::from_str(value)
                .map_err(|_| HttpFailure::InvalidRequest(format!("bad value for header {name}")))?;
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let max = self.plugin.limits.max_http_response_bytes;
        let exchange = async {
            // The shared client never follows redirects: a 3xx goes back to the
            // plugin as is, so a redirect cannot lead it outside its origins.
            let mut response = builder.send().await.map_err(transport_failure)?;
            if response
                .content_length()
                .is_some_and(|len| len > max as u64)
            {
                return Err(HttpFailure::TooLarge);
            }
            let status = response.status().as_u16();
            let mut size = 0usize;
            let mut headers = Vec::with_capacity(response.headers().len());
            for (name, value) in response.headers() {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                size += name.as_str().len() + value.len();
                headers.push((name.as_str().to_owned(), value));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
                if size + body.len() + chunk.len() > max {
                    return Err(HttpFailure::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            if size + body.len() > max {
                return Err(HttpFailure::TooLarge);
            }
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        };
        let result = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(HttpFailure::Timeout));
        if let Ok(response) = &result {
            tracing::debug!(
                plugin = %self.plugin.name,
                origin = %origin.ascii_serialization(),
                path = url.path(),
                status = response.status,
                "plugin HTTP request"
            );
        }
        result
    }
}

fn transport_failure(err: reqwest::Error) -> HttpFailure {
    if err.is_timeout() {
        HttpFailure::Timeout
    } else if err.is_builder() {
        HttpFailure::InvalidRequest(err.to_string())
    } else {
        // Without the URL: its query may carry credentials.
        HttpFailure::Transport(err.without_url().to_string())
    }
}

pub(crate) struct HttpRequest {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: Option<u32>,
}

pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum HttpFailure {
    Denied(String),
    Timeout,
    TooLarge,
    Transport(String),
    InvalidRequest(String),
}
