//! The provider API the rest of the server sees, whatever WIT version a plugin
//! was built against, and the internal request/answer types each `since_v*`
//! module converts its generated bindings to and from.

use crate::error::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Audio,
    AudioVideo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
    Moderator,
}

/// Everything one Loop call needs from its provider, done in one plugin instance.
#[derive(Debug, Clone)]
pub struct CallSetupRequest {
    pub call_id: String,
    pub call_type: CallType,
    /// Caller's identity (the call URL's callerId).
    pub caller: String,
    /// Callee's identity (the call URL owner).
    pub callee: String,
    pub channel: Option<String>,
    pub caller_display_name: String,
    pub callee_display_name: String,
    pub token_lifetime_seconds: u32,
}

#[derive(Debug, Clone)]
pub struct CallSetup {
    pub session_id: String,
    pub api_key: String,
    pub caller_token: String,
    pub callee_token: String,
}

/// What a plugin says about itself (`describe`), asked once at load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderInfo {
    pub name: String,
    pub version: String,
    pub call_types: Vec<CallType>,
    pub roles: Vec<Role>,
    /// The host serves this provider's signaling and checks tokens through it.
    pub verifies_tokens: bool,
}

/// What a valid token grants (`verify_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub session_id: String,
    pub role: Role,
    pub identity: String,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider} is misconfigured: {message}")]
    Misconfigured { provider: String, message: String },
    #[error("provider {provider} is unavailable: {message}")]
    Unavailable { provider: String, message: String },
    #[error("provider {provider} rejected the request: {message}")]
    Rejected { provider: String, message: String },
    /// Out of wall time: usually a slow vendor, so treated as unavailable.
    #[error("provider {provider} timed out: {message}")]
    TimedOut { provider: String, message: String },
    #[error("provider {provider} failed: {message}")]
    Plugin { provider: String, message: String },
    #[error("no provider named {0}")]
    Unknown(String),
}

impl ProviderError {
    /// The provider may serve again later; another provider may serve now.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ProviderError::Unavailable { .. } | ProviderError::TimedOut { .. }
        )
    }
}

impl From<ProviderError> for AppError {
    fn from(err: ProviderError) -> Self {
        tracing::warn!(error = %err, "provider error");
        AppError::Backend("the call provider is unavailable".into())
    }
}

/// Counters about how components became ready, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled by this runtime (cold or rejected cache entry).
    pub compiled: u64,
    /// Components loaded from the on-disk compile cache.
    pub cache_hits: u64,
    /// Cache entries refused (failed MAC, or unusable) and recompiled;
    /// included in `compiled`.
    pub cache_rejected: u64,
}

/// One plugin's state for the heartbeat.
#[derive(Debug, Clone)]
pub struct PluginHealth {
    /// The `[plugins.<name>]` key.
    pub plugin: String,
    pub state: PluginState,
    pub info: ProviderInfo,
    pub calls: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    /// Wall time spent in its calls since start-up, in microseconds.
    pub busy_us: u64,
    /// CPU time its calls used since start-up, in microseconds.
    pub cpu_us: u64,
    /// False after several failed calls in a row, until one succeeds.
    pub healthy: bool,
    /// How much longer fallback skips this plugin (it was unavailable); 0
    /// when it is not cooling down.
    pub cooling_down_ms: u64,
}

/// Whether a plugin can serve calls yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    Ready,
    /// Its component is being compiled in the background.
    Compiling,
    /// Its component could not be compiled, linked or described (the reason).
    Failed(String),
}

impl PluginHealth {
    /// A plugin that is not loaded: no calls, no provider info yet.
    pub(crate) fn not_ready(plugin: &str, state: PluginState) -> Self {
        Self {
            healthy: !matches!(state, PluginState::Failed(_)),
            plugin: plugin.to_owned(),
            state,
            info: ProviderInfo::default(),
            calls: 0,
            failures: 0,
            consecutive_failures: 0,
            busy_us: 0,
            cpu_us: 0,
            cooling_down_ms: 0,
        }
    }
}

/// An error the plugin reported itself (the WIT `provider-error`).
#[derive(Debug)]
pub(crate) enum GuestError {
    Misconfigured(String),
    Unavailable(String),
    Rejected(String),
}

/// Arguments of `create-session`, borrowed from the caller's request.
pub(crate) struct SessionRequest<'a> {
    pub call_id: &'a str,
    pub call_type: CallType,
    pub caller: &'a str,
    pub callee: &'a str,
    pub channel: Option<&'a str>,
}

pub(crate) struct Session {
    pub session_id: String,
    pub api_key: String,
}

pub(crate) struct TokenRequest<'a> {
    pub session_id: &'a str,
    pub role: Role,
    pub identity: &'a str,
    pub display_name: &'a str,
    pub lifetime_seconds: u32,
    pub channel: Option<&'a str>,
}

/// wasmtime's error type, as the `anyhow` error the rest of the host uses.
pub(crate) fn wasm_error(err: wasmtime::Error) -> anyhow::Error {
    let mut message = String::new();
    for cause in err.chain() {
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&cause.to_string());
    }
    anyhow::anyhow!(message)
}
