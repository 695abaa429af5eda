//! The provider plugin runtime (wasmtime, component model). STUB: being built.

use std::path::Path;

use crate::config::Config;
use crate::error::AppError;
use crate::secrets::Secrets;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Audio,
    AudioVideo,
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

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider} is misconfigured: {message}")]
    Misconfigured { provider: String, message: String },
    #[error("provider {provider} is unavailable: {message}")]
    Unavailable { provider: String, message: String },
    #[error("provider {provider} rejected the request: {message}")]
    Rejected { provider: String, message: String },
    #[error("provider {provider} failed: {message}")]
    Plugin { provider: String, message: String },
    #[error("no provider named {0}")]
    Unknown(String),
}

impl From<ProviderError> for AppError {
    fn from(err: ProviderError) -> Self {
        tracing::warn!(error = %err, "provider error");
        AppError::Backend("the call provider is unavailable".into())
    }
}

pub struct ProviderRuntime {}

impl ProviderRuntime {
    pub async fn load(_config: &Config, _secrets: &Secrets, _http: reqwest::Client) -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// The plugin that serves calls from `channel`.
    pub fn provider_for(&self, _channel: Option<&str>) -> &str {
        "loopback"
    }

    pub async fn setup_call(&self, provider: &str, _request: CallSetupRequest) -> Result<CallSetup, ProviderError> {
        Err(ProviderError::Unknown(provider.into()))
    }
}

pub fn check_component(_path: &Path) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
