//! What a plugin instance can reach: the per-call store data and the host
//! capabilities behind the WIT imports, written once for every WIT version
//! (each `since_v*` module only converts its generated types).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use wasmtime::{ResourceLimiter, UpdateDeadline};

use crate::config::PluginLimits;

/// Log lines one call may write before the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 64;
/// Longest log message kept; the rest is cut.
const MAX_LOG_MESSAGE_BYTES: usize = 2048;
/// Most bytes `random-bytes` hands out at once (the WIT contract's limit).
const MAX_RANDOM_BYTES: u32 = 1024;
/// Table elements any plugin may grow its tables to.
const MAX_TABLE_ELEMENTS: usize = 10_000;

/// Everything about one configured plugin that its instances can see.
pub(crate) struct PluginContext {
    pub name: String,
    /// The plugin's own settings, generated secrets filled in, values in their
    /// TOML spelling. Nothing else from the configuration reaches the plugin.
    pub settings: BTreeMap<String, String>,
    pub allowed_origins: Vec<url::Origin>,
    pub limits: PluginLimits,
    pub http: reqwest::Client,
}

/// Why the host stopped a plugin; recorded before the trap it causes so the
/// error names the limit rather than a generic trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostStop {
    Cpu,
    Memory,
    RandomTooLarge,
}

/// Store data of one plugin instance, which lives for one Loop call.
pub(crate) struct CallState {
    pub plugin: Arc<PluginContext>,
    pub stop: Option<HostStop>,
    /// Wall-clock deadline of the whole call, HTTP included.
    pub wall_deadline: Instant,
    cpu: CpuMeter,
    log_lines: u32,
}

/// Time spent running wasm in the current export call: wall time since the
/// call started minus time spent waiting on host HTTP.
struct CpuMeter {
    budget: Duration,
    started: Instant,
    host_wait: Duration,
}

impl CpuMeter {
    fn remaining(&self) -> Option<Duration> {
        let used = self.started.elapsed().saturating_sub(self.host_wait);
        self.budget.checked_sub(used).filter(|left| !left.is_zero())
    }
}

impl CallState {
    pub fn new(plugin: Arc<PluginContext>, wall_deadline: Instant) -> Self {
        let budget = Duration::from_millis(plugin.limits.cpu_ms);
        Self {
            plugin,
            stop: None,
            wall_deadline,
            cpu: CpuMeter {
                budget,
                started: Instant::now(),
                host_wait: Duration::ZERO,
            },
            log_lines: 0,
        }
    }

    /// Starts the CPU budget of one export call; returns the epoch deadline.
    /// One tick: the deadline callback then runs every tick while wasm runs,
    /// checks the budget and yields to the executor.
    pub fn start_export_call(&mut self) -> u64 {
        self.cpu.started = Instant::now();
        self.cpu.host_wait = Duration::ZERO;
        1
    }

    /// Called by wasmtime when the epoch deadline passes while wasm runs.
    pub fn on_epoch_deadline(&mut self) -> wasmtime::Result<UpdateDeadline> {
        match self.cpu.remaining() {
            // Yield every tick: a long-running plugin shares its executor
            // thread, and the call's wall-time timeout gets a chance to fire.
            Some(_) => Ok(UpdateDeadline::Yield(1)),
            None => {
                self.stop = Some(HostStop::Cpu);
                Err(wasmtime::format_err!(
                    "plugin {} exceeded its CPU budget of {} ms",
                    self.plugin.name,
                    self.plugin.limits.cpu_ms
                ))
            }
        }
    }

    // ---- crypto ----

    pub fn hmac_sha1(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn hmac_sha256(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn sha256(&self, data: &[u8]) -> Vec<u8> {
        Sha256::digest(data).to_vec()
    }

    pub fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        if len > MAX_RANDOM_BYTES {
            self.stop = Some(HostStop::RandomTooLarge);
            wasmtime::bail!(
                "random-bytes: asked for {len} bytes, at most {MAX_RANDOM_BYTES} allowed"
            );
        }
        let mut bytes = vec![0u8; len as usize];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Ok(bytes)
    }

    // ---- clock ----

    pub fn now(&self) -> Duration {
        crate::clock::now_precise()
    }

    // ---- log ----

    pub fn log(&mut self, level: tracing::Level, message: &str) {
        self.log_lines += 1;
        let plugin = self.plugin.name.as_str();
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(target: "loop_server::plugin", plugin, "plugin logs too much; dropping its further lines for this call");
            }
            return;
        }
        let message = sanitize_log(message);
        match level {
            tracing::Level::ERROR => {
                tracing::error!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::TRACE => {
                tracing::trace!(target: "loop_server::plugin", plugin, "{message}")
            }
        }
    }

    // ---- settings ----

    pub fn setting(&self, key: &str) -> Option<String> {
        self.plugin.settings.get(key).cloned()
    }

    pub fn setting_keys(&self) -> Vec<String> {
        self.plugin.settings.keys().cloned().collect()
    }

    // ---- http ----

    /// Sends one request for the plugin, within its allowed origins, its
    /// response size cap and the time left in its wall-time budget.
    pub async fn http_send(&mut self, request: HttpRequest) -> Result<HttpResponse, HttpFailure> {
        let started = Instant::now();
        let result = self.http_send_inner(request).await;
        // Waiting on the network is not CPU time.
        self.cpu.host_wait += started.elapsed();
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

/// One line, bounded length: a plugin cannot forge log lines or flood them.
fn sanitize_log(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_LOG_MESSAGE_BYTES) + 3);
    for ch in message.chars() {
        if out.len() + ch.len_utf8() > MAX_LOG_MESSAGE_BYTES {
            out.push('…');
            break;
        }
        out.push(if ch.is_control() { ' ' } else { ch });
    }
    out
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

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = self.plugin.limits.memory_mib.saturating_mul(1024 * 1024);
        if desired as u64 > limit {
            // A trap rather than a failed `memory.grow`: the plugin hit the
            // operator's cap, and the error should say so.
            self.stop = Some(HostStop::Memory);
            wasmtime::bail!(
                "plugin {} exceeded its memory limit of {} MiB",
                self.plugin.name,
                self.plugin.limits.memory_mib
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
