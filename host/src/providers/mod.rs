//! The provider plugin runtime: WebAssembly components (wasmtime, component
//! model) that create provider sessions and issue tokens for Loop calls.
//!
//! Every configured `[plugins.<name>]` component is compiled once per process
//! (or loaded from the compile cache in the data directory), checked against
//! the `loop:provider` world, pre-linked, and asked to `describe` itself. Each
//! call setup then gets a fresh instance from the pooling allocator, runs
//! `create-session` and two `issue-token`s in it, and throws it away, so
//! nothing leaks from one call into the next. Memory, CPU, wall time, return
//! sizes and HTTP are bounded per plugin; a plugin that breaks any of these is
//! a provider error for that call only.

mod engine;
mod host;
mod since_v0_1_0;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use self::engine::{CompileCache, EpochTicker, Origin, PoolSize};
use self::host::{CallState, HostStop, PluginContext};
use crate::config::{Config, PluginConfig, PluginLimits};
use crate::error::AppError;
use crate::secrets::Secrets;

/// Longest token `verify_token` passes to a plugin; longer ones are refused.
const MAX_VERIFY_TOKEN_BYTES: usize = 8 * 1024;
/// Longest message from a plugin's own error kept in logs and errors.
const MAX_GUEST_MESSAGE_BYTES: usize = 512;
/// A plugin is reported unhealthy after this many failed calls in a row.
const UNHEALTHY_AFTER_FAILURES: u64 = 3;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Counters about how components became ready, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled by this runtime (cold compile cache).
    pub compiled: u64,
    /// Components loaded from the on-disk compile cache.
    pub cache_hits: u64,
}

/// One plugin's state for the heartbeat.
#[derive(Debug, Clone)]
pub struct PluginHealth {
    /// The `[plugins.<name>]` key.
    pub plugin: String,
    pub info: ProviderInfo,
    pub calls: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    /// False after several failed calls in a row, until one succeeds.
    pub healthy: bool,
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
}

/// Why a plugin call did not produce a result.
#[derive(Debug)]
enum Failure {
    Guest(GuestError),
    Stopped(HostStop),
    WallTime,
    Oversized { what: &'static str, len: usize },
    Invalid(String),
    Wasm(String),
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

/// A linked component of one supported WIT version.
enum VersionedPre {
    V0_1(since_v0_1_0::Pre),
}

enum VersionedInstance {
    V0_1(since_v0_1_0::Instance),
}

impl VersionedInstance {
    async fn describe(&self, store: &mut Store<CallState>) -> wasmtime::Result<ProviderInfo> {
        match self {
            Self::V0_1(instance) => instance.describe(store).await,
        }
    }

    async fn create_session(
        &self,
        store: &mut Store<CallState>,
        request: &SessionRequest<'_>,
    ) -> wasmtime::Result<Result<Session, GuestError>> {
        match self {
            Self::V0_1(instance) => instance.create_session(store, request).await,
        }
    }

    async fn issue_token(
        &self,
        store: &mut Store<CallState>,
        request: &TokenRequest<'_>,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        match self {
            Self::V0_1(instance) => instance.issue_token(store, request).await,
        }
    }

    async fn verify_token(
        &self,
        store: &mut Store<CallState>,
        token: &str,
        session_id: &str,
    ) -> wasmtime::Result<Result<Grant, GuestError>> {
        match self {
            Self::V0_1(instance) => instance.verify_token(store, token, session_id).await,
        }
    }
}

struct Plugin {
    context: Arc<PluginContext>,
    pre: VersionedPre,
    info: ProviderInfo,
    /// Bounds this plugin's concurrent instances to its share of the pool.
    slots: Semaphore,
    calls: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
}

/// One live plugin instance and the store it runs in.
struct Call<'p> {
    plugin: &'p Plugin,
    store: Store<CallState>,
    instance: VersionedInstance,
}

impl Plugin {
    fn new(context: PluginContext, pre: VersionedPre) -> Self {
        let slots = Semaphore::new(context.limits.max_concurrent_calls as usize);
        Self {
            context: Arc::new(context),
            pre,
            // Filled by `describe` right after linking.
            info: ProviderInfo {
                name: String::new(),
                version: String::new(),
                call_types: Vec::new(),
                roles: Vec::new(),
                verifies_tokens: false,
            },
            slots,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
        }
    }

    fn name(&self) -> &str {
        &self.context.name
    }

    fn limits(&self) -> &PluginLimits {
        &self.context.limits
    }

    fn wall_time(&self) -> Duration {
        Duration::from_millis(self.limits().wall_ms)
    }

    async fn instantiate(
        &self,
        engine: &Engine,
        wall_deadline: Instant,
    ) -> Result<Call<'_>, Failure> {
        let mut store = Store::new(engine, CallState::new(self.context.clone(), wall_deadline));
        store.limiter(|state| state);
        store.epoch_deadline_callback(|mut ctx| ctx.data_mut().on_epoch_deadline());
        // Start functions run during instantiation and count against the first budget.
        let deadline = store.data_mut().start_export_call();
        store.set_epoch_deadline(deadline);
        let instance = match &self.pre {
            VersionedPre::V0_1(pre) => pre
                .instantiate(&mut store)
                .await
                .map(VersionedInstance::V0_1),
        };
        match instance {
            Ok(instance) => Ok(Call {
                plugin: self,
                store,
                instance,
            }),
            Err(err) => Err(classify(&store, err)),
        }
    }

    fn check_size(&self, what: &'static str, len: usize) -> Result<(), Failure> {
        if len > self.limits().max_return_bytes {
            Err(Failure::Oversized { what, len })
        } else {
            Ok(())
        }
    }

    /// A string an export returned: within the size limit, free of control
    /// characters (it reaches clients and logs), and not empty when `required`.
    fn check_returned(
        &self,
        export: &str,
        what: &'static str,
        value: &str,
        required: bool,
    ) -> Result<(), Failure> {
        self.check_size(what, value.len())?;
        if required && value.is_empty() {
            return Err(Failure::Invalid(format!(
                "{export} returned an empty {what}"
            )));
        }
        check_text(what, value)
    }

    /// Records the outcome of one call and turns a failure into the caller's error.
    fn finish<T>(&self, operation: &str, result: Result<T, Failure>) -> Result<T, ProviderError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let failure = match result {
            Ok(value) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                return Ok(value);
            }
            Err(failure) => failure,
        };
        let provider = self.name().to_owned();
        let limits = self.limits();
        let error = match failure {
            Failure::Guest(GuestError::Misconfigured(message)) => ProviderError::Misconfigured {
                provider,
                message: truncate(message),
            },
            Failure::Guest(GuestError::Unavailable(message)) => ProviderError::Unavailable {
                provider,
                message: truncate(message),
            },
            Failure::Guest(GuestError::Rejected(message)) => ProviderError::Rejected {
                provider,
                message: truncate(message),
            },
            Failure::Stopped(HostStop::Cpu) => ProviderError::Plugin {
                provider,
                message: format!("exceeded its CPU budget of {} ms", limits.cpu_ms),
            },
            Failure::Stopped(HostStop::Memory) => ProviderError::Plugin {
                provider,
                message: format!("exceeded its memory limit of {} MiB", limits.memory_mib),
            },
            Failure::Stopped(HostStop::RandomTooLarge) => ProviderError::Plugin {
                provider,
                message: "asked for more than 1024 random bytes".into(),
            },
            Failure::WallTime => ProviderError::Plugin {
                provider,
                message: format!("exceeded its wall-time budget of {} ms", limits.wall_ms),
            },
            Failure::Oversized { what, len } => ProviderError::Plugin {
                provider,
                message: format!(
                    "returned a {what} of {len} bytes, more than the {} allowed",
                    limits.max_return_bytes
                ),
            },
            Failure::Invalid(message) => ProviderError::Plugin { provider, message },
            Failure::Wasm(message) => ProviderError::Plugin {
                provider,
                message: truncate(message),
            },
        };
        // A rejected token is the client's fault, not the plugin's.
        if matches!(error, ProviderError::Rejected { .. }) {
            tracing::debug!(plugin = %self.name(), operation, error = %error, "provider rejected a request");
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = %self.name(), operation, error = %error, "provider plugin call failed");
        }
        Err(error)
    }
}

impl Call<'_> {
    /// Starts the CPU budget of the next export call.
    fn start_export_call(&mut self) {
        let deadline = self.store.data_mut().start_export_call();
        self.store.set_epoch_deadline(deadline);
    }

    async fn describe(&mut self) -> Result<ProviderInfo, Failure> {
        self.start_export_call();
        let info = self
            .instance
            .describe(&mut self.store)
            .await
            .map_err(|err| classify(&self.store, err))?;
        self.plugin
            .check_size("describe name", info.name.len() + info.version.len())?;
        if info.name.trim().is_empty() {
            return Err(Failure::Invalid(
                "describe returned an empty provider name".into(),
            ));
        }
        check_text("provider name", &info.name)?;
        check_text("provider version", &info.version)?;
        Ok(info)
    }

    async fn create_session(&mut self, request: &SessionRequest<'_>) -> Result<Session, Failure> {
        self.start_export_call();
        let session = self
            .instance
            .create_session(&mut self.store, request)
            .await
            .map_err(|err| classify(&self.store, err))?
            .map_err(Failure::Guest)?;
        self.plugin
            .check_returned("create-session", "session id", &session.session_id, true)?;
        self.plugin
            .check_returned("create-session", "api key", &session.api_key, false)?;
        Ok(session)
    }

    async fn issue_token(&mut self, request: &TokenRequest<'_>) -> Result<String, Failure> {
        self.start_export_call();
        let token = self
            .instance
            .issue_token(&mut self.store, request)
            .await
            .map_err(|err| classify(&self.store, err))?
            .map_err(Failure::Guest)?;
        self.plugin
            .check_returned("issue-token", "token", &token, true)?;
        Ok(token)
    }

    async fn verify_token(&mut self, token: &str, session_id: &str) -> Result<Grant, Failure> {
        self.start_export_call();
        let grant = self
            .instance
            .verify_token(&mut self.store, token, session_id)
            .await
            .map_err(|err| classify(&self.store, err))?
            .map_err(Failure::Guest)?;
        self.plugin
            .check_size("grant", grant.session_id.len() + grant.identity.len())?;
        // The host, not the plugin, has the last word on what a token is for.
        if grant.session_id != session_id {
            return Err(Failure::Guest(GuestError::Rejected(
                "the token belongs to another session".into(),
            )));
        }
        if grant.expires_at < crate::clock::now().max(0) as u64 {
            return Err(Failure::Guest(GuestError::Rejected(
                "the token has expired".into(),
            )));
        }
        Ok(grant)
    }
}

/// What went wrong inside wasm: a limit the host enforced, or a trap or
/// malformed value from the plugin itself.
fn classify(store: &Store<CallState>, err: wasmtime::Error) -> Failure {
    if let Some(stop) = store.data().stop {
        return Failure::Stopped(stop);
    }
    Failure::Wasm(format!("{:#}", wasm_error(err)))
}

/// Values handed to clients and logs: no control characters.
fn check_text(what: &str, value: &str) -> Result<(), Failure> {
    if value.chars().any(char::is_control) {
        return Err(Failure::Invalid(format!(
            "returned a {what} with control characters"
        )));
    }
    Ok(())
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_GUEST_MESSAGE_BYTES {
        let mut end = MAX_GUEST_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
        .chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

pub struct ProviderRuntime {
    engine: Engine,
    plugins: BTreeMap<String, Plugin>,
    default: String,
    channels: BTreeMap<String, String>,
    stats: RuntimeStats,
    // Last: stops the epoch thread once everything above is gone.
    _ticker: EpochTicker,
}

impl ProviderRuntime {
    /// Compiles (or loads from the compile cache), links and describes every
    /// configured plugin. Fails, naming the plugin, if any cannot be used.
    pub async fn load(
        config: &Config,
        secrets: &Secrets,
        net: &crate::net::Net,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let pool = PoolSize {
            concurrent_instances: config
                .plugins
                .values()
                .map(|p| p.limits.max_concurrent_calls)
                .sum(),
            max_memory_bytes: config
                .plugins
                .values()
                .map(|p| p.limits.memory_mib)
                .max()
                .unwrap_or(16)
                * 1024
                * 1024,
        };
        let engine = engine::build_engine(&pool)?;
        let ticker = EpochTicker::start(&engine)?;
        let cache = Arc::new(CompileCache::new(&config.server.data_dir, &engine));
        let mut linker = Linker::new(&engine);
        since_v0_1_0::add_to_linker(&mut linker)?;

        let mut stats = RuntimeStats::default();
        // One compile per distinct component, however many plugins use it.
        let mut components: HashMap<[u8; 32], Component> = HashMap::new();
        let mut plugins = BTreeMap::new();
        for (name, plugin_config) in &config.plugins {
            let path = &plugin_config.component;
            let bytes = tokio::fs::read(path).await.with_context(|| {
                format!("plugins.{name}.component: cannot read {}", path.display())
            })?;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let component = match components.get(&digest) {
                Some(component) => component.clone(),
                None => {
                    let (component, origin) = {
                        let (engine, cache, path) = (engine.clone(), cache.clone(), path.clone());
                        tokio::task::spawn_blocking(move || cache.load(&engine, &bytes, &path))
                            .await
                            .context("the plugin compiler panicked")?
                            .with_context(|| format!("plugins.{name}.component"))?
                    };
                    match origin {
                        Origin::Compiled => {
                            stats.compiled += 1;
                            tracing::info!(plugin = %name, component = %path.display(), "compiled plugin");
                        }
                        Origin::Cache => {
                            stats.cache_hits += 1;
                            tracing::info!(plugin = %name, component = %path.display(), "loaded plugin from cache");
                        }
                    }
                    components.insert(digest, component.clone());
                    component
                }
            };
            let context = plugin_context(name, plugin_config, secrets, net)?;
            let pre = link(&engine, &linker, &component).with_context(|| {
                format!(
                    "plugins.{name}: {} is not a loop:provider plugin",
                    path.display()
                )
            })?;
            let mut plugin = Plugin::new(context, pre);
            plugin.info = describe(&engine, &plugin)
                .await
                .map_err(|err| anyhow::anyhow!("plugins.{name}: describe failed: {err}"))?;
            tracing::info!(
                plugin = %name,
                provider = %plugin.info.name,
                version = %plugin.info.version,
                verifies_tokens = plugin.info.verifies_tokens,
                "loaded provider plugin"
            );
            plugins.insert(name.clone(), plugin);
        }
        anyhow::ensure!(
            plugins.contains_key(&config.providers.default),
            "providers.default: no [plugins.{}] table",
            config.providers.default
        );
        for (channel, plugin) in &config.providers.channels {
            anyhow::ensure!(
                plugins.contains_key(plugin),
                "providers.channels.{channel}: no [plugins.{plugin}] table"
            );
        }
        tracing::info!(
            plugins = plugins.len(),
            compiled = stats.compiled,
            cache_hits = stats.cache_hits,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provider runtime ready"
        );
        Ok(Self {
            engine,
            plugins,
            default: config.providers.default.clone(),
            channels: config.providers.channels.clone(),
            stats,
            _ticker: ticker,
        })
    }

    /// The plugin that serves calls from `channel`.
    pub fn provider_for(&self, channel: Option<&str>) -> &str {
        channel
            .and_then(|channel| self.channels.get(channel))
            .unwrap_or(&self.default)
    }

    /// Creates a provider session and one token per side, in one fresh instance.
    pub async fn setup_call(
        &self,
        provider: &str,
        request: CallSetupRequest,
    ) -> Result<CallSetup, ProviderError> {
        let plugin = self.plugin(provider)?;
        let wall = plugin.wall_time();
        let wall_deadline = Instant::now() + wall;
        let work = async {
            let _slot = plugin
                .slots
                .acquire()
                .await
                .map_err(|_| Failure::WallTime)?;
            let mut call = plugin.instantiate(&self.engine, wall_deadline).await?;
            let session = call
                .create_session(&SessionRequest {
                    call_id: &request.call_id,
                    call_type: request.call_type,
                    caller: &request.caller,
                    callee: &request.callee,
                    channel: request.channel.as_deref(),
                })
                .await?;
            let caller_token = call
                .issue_token(&TokenRequest {
                    session_id: &session.session_id,
                    role: Role::Publisher,
                    identity: &request.caller,
                    display_name: &request.caller_display_name,
                    lifetime_seconds: request.token_lifetime_seconds,
                })
                .await?;
            let callee_token = call
                .issue_token(&TokenRequest {
                    session_id: &session.session_id,
                    role: Role::Publisher,
                    identity: &request.callee,
                    display_name: &request.callee_display_name,
                    lifetime_seconds: request.token_lifetime_seconds,
                })
                .await?;
            Ok(CallSetup {
                session_id: session.session_id,
                api_key: session.api_key,
                caller_token,
                callee_token,
            })
        };
        let result = tokio::time::timeout(wall, work)
            .await
            .unwrap_or(Err(Failure::WallTime));
        plugin.finish("setup-call", result)
    }

    /// Checks a token for `session_id` through the provider that issued it.
    /// A forged, expired or other-session token is `ProviderError::Rejected`.
    pub async fn verify_token(
        &self,
        provider: &str,
        token: &str,
        session_id: &str,
    ) -> Result<Grant, ProviderError> {
        let plugin = self.plugin(provider)?;
        if !plugin.info.verifies_tokens {
            return Err(ProviderError::Rejected {
                provider: provider.to_owned(),
                message: "this provider does not verify tokens".into(),
            });
        }
        if token.len() > MAX_VERIFY_TOKEN_BYTES || session_id.len() > MAX_VERIFY_TOKEN_BYTES {
            return Err(ProviderError::Rejected {
                provider: provider.to_owned(),
                message: "token too long".into(),
            });
        }
        let wall = plugin.wall_time();
        let wall_deadline = Instant::now() + wall;
        let work = async {
            let _slot = plugin
                .slots
                .acquire()
                .await
                .map_err(|_| Failure::WallTime)?;
            let mut call = plugin.instantiate(&self.engine, wall_deadline).await?;
            call.verify_token(token, session_id).await
        };
        let result = tokio::time::timeout(wall, work)
            .await
            .unwrap_or(Err(Failure::WallTime));
        plugin.finish("verify-token", result)
    }

    /// What each plugin said about itself at load, by `[plugins.<name>]` key.
    pub fn describe(&self, plugin: &str) -> Option<&ProviderInfo> {
        self.plugins.get(plugin).map(|plugin| &plugin.info)
    }

    /// The configured plugin names.
    pub fn plugins(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }

    /// Per-plugin call counts and health, for the heartbeat.
    pub fn health(&self) -> Vec<PluginHealth> {
        self.plugins
            .iter()
            .map(|(name, plugin)| {
                let consecutive_failures = plugin.consecutive_failures.load(Ordering::Relaxed);
                PluginHealth {
                    plugin: name.clone(),
                    info: plugin.info.clone(),
                    calls: plugin.calls.load(Ordering::Relaxed),
                    failures: plugin.failures.load(Ordering::Relaxed),
                    consecutive_failures,
                    healthy: consecutive_failures < UNHEALTHY_AFTER_FAILURES,
                }
            })
            .collect()
    }

    /// How this runtime's components became ready (compiled or cached).
    pub fn stats(&self) -> RuntimeStats {
        self.stats
    }

    fn plugin(&self, name: &str) -> Result<&Plugin, ProviderError> {
        self.plugins
            .get(name)
            .ok_or_else(|| ProviderError::Unknown(name.to_owned()))
    }
}

async fn describe(engine: &Engine, plugin: &Plugin) -> Result<ProviderInfo, ProviderError> {
    let wall = plugin.wall_time();
    let work = async {
        let mut call = plugin.instantiate(engine, Instant::now() + wall).await?;
        call.describe().await
    };
    let result = tokio::time::timeout(wall, work)
        .await
        .unwrap_or(Err(Failure::WallTime));
    plugin.finish("describe", result)
}

/// The plugin's settings as it will see them: its own table, plus generated
/// secrets for keys the operator left unset.
fn plugin_context(
    name: &str,
    config: &PluginConfig,
    secrets: &Secrets,
    net: &crate::net::Net,
) -> anyhow::Result<PluginContext> {
    let mut settings = BTreeMap::new();
    for (key, value) in &config.settings {
        let value = match value {
            toml::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        settings.insert(key.clone(), value);
    }
    for key in &config.generated_secrets {
        if !settings.contains_key(key) {
            let secret = secrets
                .get_or_create(&format!("plugin-{name}-{key}"))
                .with_context(|| format!("plugins.{name}.generated_secrets: {key}"))?;
            settings.insert(key.clone(), hex::encode(secret));
        }
    }
    let allowed_origins = config
        .allowed_hosts
        .iter()
        .map(|host| {
            url::Url::parse(host)
                .map(|url| url.origin())
                .with_context(|| format!("plugins.{name}.allowed_hosts: {host:?} is not an origin"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(PluginContext {
        name: name.to_owned(),
        settings,
        allowed_origins,
        limits: config.limits.clone(),
        http: net.client(crate::net::Policy::plugin(name, config))?,
    })
}

/// Checks the component against a supported world and links it.
fn link(
    engine: &Engine,
    linker: &Linker<CallState>,
    component: &Component,
) -> anyhow::Result<VersionedPre> {
    let component_type = component.component_type();
    // Every problem at once, so a vendor fixes them in one round.
    let mut problems = Vec::new();
    let exports: Vec<&str> = component_type
        .exports(engine)
        .map(|(name, _)| name)
        .collect();
    if !exports.contains(&since_v0_1_0::EXPORT) {
        match exports
            .iter()
            .find(|name| name.starts_with("loop:provider/provider@"))
        {
            Some(other) => problems.push(format!(
                "it exports {other}, a version this server does not support (supported: {})",
                since_v0_1_0::EXPORT
            )),
            None => problems.push(format!(
                "it does not export {} (its exports: {})",
                since_v0_1_0::EXPORT,
                if exports.is_empty() {
                    "none".to_owned()
                } else {
                    exports.join(", ")
                }
            )),
        }
    } else if let Some(ComponentItem::ComponentInstance(export)) = component_type
        .get_export(engine, since_v0_1_0::EXPORT)
        .map(|item| item.ty)
    {
        let present: Vec<&str> = export.exports(engine).map(|(name, _)| name).collect();
        let missing: Vec<&str> = since_v0_1_0::EXPORT_FUNCTIONS
            .iter()
            .copied()
            .filter(|name| !present.contains(name))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "its export {} lacks the function(s) {}",
                since_v0_1_0::EXPORT,
                missing.join(", ")
            ));
        }
    }
    for (name, _) in component_type.imports(engine) {
        if !since_v0_1_0::IMPORTS.contains(&name) {
            problems.push(format!(
                "it imports {name}, which the host does not provide (a provider may import only {})",
                since_v0_1_0::IMPORTS.join(", ")
            ));
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    let pre = linker.instantiate_pre(component).map_err(|err| {
        wasm_error(err).context("its imports do not match the loop:provider@0.1.0 world")
    })?;
    Ok(VersionedPre::V0_1(since_v0_1_0::Pre::new(pre)?))
}

/// `loop-server plugins check FILE.wasm`: validates a component against the
/// provider world, runs its `describe`, and prints what it imports and exports.
pub fn check_component(path: &Path) -> anyhow::Result<()> {
    let path = path.to_path_buf();
    // Our caller may already be inside a tokio runtime; describe needs its own.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(check_component_inner(&path))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the plugin check panicked"))?
}

async fn check_component_inner(path: &PathBuf) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let limits = PluginLimits::default();
    let engine = engine::build_engine(&PoolSize {
        concurrent_instances: 1,
        max_memory_bytes: limits.memory_mib * 1024 * 1024,
    })?;
    let _ticker = EpochTicker::start(&engine)?;
    let component = Component::new(&engine, &bytes).map_err(|err| {
        wasm_error(err).context(format!(
            "{} is not a valid WebAssembly component",
            path.display()
        ))
    })?;
    println!("{}: {} bytes", path.display(), bytes.len());
    let component_type = component.component_type();
    println!("imports:");
    for (name, item) in component_type.imports(&engine) {
        println!("  {name}{}", item_functions(&engine, &item.ty));
    }
    println!("exports:");
    for (name, item) in component_type.exports(&engine) {
        println!("  {name}{}", item_functions(&engine, &item.ty));
    }
    let mut linker = Linker::new(&engine);
    since_v0_1_0::add_to_linker(&mut linker)?;
    let pre = link(&engine, &linker, &component).with_context(|| {
        format!(
            "{} does not implement the loop:provider@0.1.0 world",
            path.display()
        )
    })?;
    // Described with no settings, no HTTP and default limits, as a first run would.
    let context = PluginContext {
        name: "check".into(),
        settings: BTreeMap::new(),
        allowed_origins: Vec::new(),
        limits,
        http: crate::net::Net::new(&Default::default())?
            .client(crate::net::Policy::new("plugins.check", false))?,
    };
    let plugin = Plugin::new(context, pre);
    let info = describe(&engine, &plugin)
        .await
        .map_err(|err| anyhow::anyhow!("describe failed: {err}"))?;
    println!("world: loop:provider/plugin@0.1.0");
    println!(
        "provider: {} {} (call types: {:?}; roles: {:?}; verifies tokens: {})",
        info.name, info.version, info.call_types, info.roles, info.verifies_tokens
    );
    println!("ok");
    Ok(())
}

fn item_functions(engine: &Engine, item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentInstance(instance) => {
            let names: Vec<&str> = instance
                .exports(engine)
                .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
                .map(|(name, _)| name)
                .collect();
            if names.is_empty() {
                String::new()
            } else {
                format!(": {}", names.join(", "))
            }
        }
        ComponentItem::ComponentFunc(_) => " (function)".into(),
        _ => String::new(),
    }
}
