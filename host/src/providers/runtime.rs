//! [`ProviderRuntime`]: loads every configured plugin at start-up and serves
//! the server's calls through them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::cache::{CompileCache, Origin};
use super::engine::{self, EpochTicker, PoolSize};
use super::instance::{Plugin, describe};
use super::state::PluginContext;
use super::types::{
    CallSetup, CallSetupRequest, Grant, PluginHealth, PluginState, ProviderError, ProviderInfo,
    Role, RuntimeStats, SessionRequest, TokenRequest,
};
use super::versions::{self, Linkers};
use crate::config::{Config, PluginConfig, PluginLimits};
use crate::net::{Net, Policy};
use crate::secrets::{HostSecret, Secrets};

/// Longest token `verify_token` passes to a plugin; longer ones are refused.
const MAX_VERIFY_TOKEN_BYTES: usize = 8 * 1024;
/// A plugin is reported unhealthy after this many failed calls in a row.
const UNHEALTHY_AFTER_FAILURES: u64 = 3;

/// Components at least this large (an interpreter: componentize-py's Python
/// is about 18 MB and takes 10-15 s to compile here, jco's QuickJS 1.7 MB and
/// 1.5 s) compile in the background when the compile cache has no copy, so
/// the server starts serving at once; their plugins are not ready until then.
/// Smaller ones (C plugins are about 50 KB and compile in tens of milliseconds)
/// load before the server starts, so a broken one stops the start.
pub(crate) const BACKGROUND_COMPILE_BYTES: usize = 1024 * 1024;

/// Every configured plugin, ready to serve calls or still loading.
pub struct ProviderRuntime {
    engine: Engine,
    plugins: BTreeMap<String, Arc<PluginSlot>>,
    default: String,
    channels: BTreeMap<String, String>,
    /// `providers.fallback`, in order.
    fallback: Vec<String>,
    cooldown_ms: u64,
    stats: Arc<Mutex<RuntimeStats>>,
    // Last: stops the epoch thread once everything above is gone.
    _ticker: EpochTicker,
}

impl ProviderRuntime {
    /// Compiles (or loads from the compile cache), links and describes every
    /// configured plugin. Fails, naming the plugin, if any cannot be used;
    /// a big component that is not in the compile cache is compiled in the
    /// background instead, and its plugin serves once that is done
    /// ([`BACKGROUND_COMPILE_BYTES`]).
    pub async fn load(config: &Config, secrets: &Secrets, net: &Net) -> anyhow::Result<Self> {
        let started = Instant::now();
        let limits = || config.plugins.values().map(|plugin| &plugin.limits);
        let total_memory_mib = config.providers.max_total_memory_mib;
        let smallest_mib = limits().map(|l| l.memory_mib).min().unwrap_or(1).max(1);
        let largest = |field: fn(&PluginLimits) -> u32| limits().map(field).max().unwrap_or(1);
        let pool = PoolSize {
            // No more instances can hold memory at once than fit in the total.
            concurrent_instances: limits()
                .map(|l| u64::from(l.max_concurrent_calls))
                .sum::<u64>()
                .min(total_memory_mib / smallest_mib)
                .try_into()
                .unwrap_or(u32::MAX),
            max_memory_bytes: limits().map(|l| l.memory_mib).max().unwrap_or(1) * 1024 * 1024,
            max_core_instances: largest(|l| l.max_core_instances),
            max_memories: largest(|l| l.max_memories),
            max_tables: largest(|l| l.max_tables),
            max_table_elements: largest(|l| l.max_table_elements),
        };
        let memory = Arc::new(Semaphore::new(
            usize::try_from(total_memory_mib).context("providers.max_total_memory_mib")?,
        ));
        let engine = engine::build_engine(&pool)?;
        let ticker = EpochTicker::start(&engine)?;
        let mac_key = secrets
            .host(HostSecret::PluginCacheKey)
            .context("the plugin compile cache's MAC key")?;
        let cache = Arc::new(CompileCache::new(&config.server.data_dir, &engine, mac_key));
        let loader = Arc::new(Loader {
            engine: engine.clone(),
            linkers: Linkers::new(&engine)?,
            memory,
            stats: Arc::new(Mutex::new(RuntimeStats::default())),
        });

        // One compile per distinct component, however many plugins use it.
        let mut components: HashMap<[u8; 32], Component> = HashMap::new();
        // Big uncached components, each compiled once in the background for
        // all the plugins that use it.
        let mut background: HashMap<[u8; 32], Background> = HashMap::new();
        let mut plugins = BTreeMap::new();
        for (name, plugin_config) in &config.plugins {
            let path = &plugin_config.component;
            let bytes = tokio::fs::read(path).await.with_context(|| {
                format!("plugins.{name}.component: cannot read {}", path.display())
            })?;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let context = plugin_context(name, plugin_config, secrets, net)?;
            let slot = Arc::new(PluginSlot::default());
            plugins.insert(name.clone(), slot.clone());
            if let Some(job) = background.get_mut(&digest) {
                job.plugins.push((slot, context));
                continue;
            }
            let component = match components.get(&digest) {
                Some(component) => component.clone(),
                None => {
                    let looked_up = {
                        let (engine, cache) = (engine.clone(), cache.clone());
                        tokio::task::spawn_blocking(move || cache.lookup(&engine, &digest))
                            .await
                            .context("the plugin cache panicked")?
                    };
                    let component = match looked_up {
                        Ok(component) => {
                            loader.stats.lock().expect("stats lock").cache_hits += 1;
                            tracing::info!(plugin = %name, component = %path.display(), "loaded plugin from cache");
                            component
                        }
                        Err(origin) if bytes.len() >= BACKGROUND_COMPILE_BYTES => {
                            tracing::info!(
                                plugin = %name,
                                component = %path.display(),
                                bytes = bytes.len(),
                                "compiling a big plugin component in the background; its plugin serves once it is ready"
                            );
                            background.insert(
                                digest,
                                Background {
                                    bytes,
                                    origin,
                                    path: path.clone(),
                                    plugins: vec![(slot, context)],
                                },
                            );
                            continue;
                        }
                        Err(origin) => {
                            let component = {
                                let (engine, cache, path) =
                                    (engine.clone(), cache.clone(), path.clone());
                                tokio::task::spawn_blocking(move || {
                                    cache.compile(&engine, &bytes, &digest, &path)
                                })
                                .await
                                .context("the plugin compiler panicked")?
                                .with_context(|| format!("plugins.{name}.component"))?
                            };
                            loader.count_compiled(origin);
                            tracing::info!(plugin = %name, component = %path.display(), "compiled plugin");
                            component
                        }
                    };
                    components.insert(digest, component.clone());
                    component
                }
            };
            let plugin = loader
                .link_and_describe(&component, context)
                .await
                .with_context(|| format!("plugins.{name}: {}", path.display()))?;
            slot.set(Ok(plugin));
        }
        config.check_provider_tables()?;
        for (digest, job) in background {
            tokio::spawn(
                loader
                    .clone()
                    .load_in_background(cache.clone(), digest, job),
            );
        }
        let stats = *loader.stats.lock().expect("stats lock");
        tracing::info!(
            plugins = plugins.len(),
            compiled = stats.compiled,
            cache_hits = stats.cache_hits,
            cache_rejected = stats.cache_rejected,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provider runtime ready"
        );
        Ok(Self {
            engine,
            plugins,
            default: config.providers.default.clone(),
            channels: config.providers.channels.clone(),
            fallback: config.providers.fallback.clone(),
            cooldown_ms: config.providers.cooldown_seconds.saturating_mul(1000),
            stats: loader.stats.clone(),
            _ticker: ticker,
        })
    }

    /// Waits until no plugin is still compiling in the background.
    pub async fn ready(&self) {
        for slot in self.plugins.values() {
            slot.loaded().await;
        }
    }

    /// The plugin that serves calls from `channel`.
    pub fn provider_for(&self, channel: Option<&str>) -> &str {
        channel
            .and_then(|channel| self.channels.get(channel))
            .unwrap_or(&self.default)
    }

    /// Sets up a call on the plugin for its channel, or, when that one is
    /// unavailable (it says so, or runs out of wall time), on the next of
    /// `providers.fallback` that is. A plugin found unavailable is skipped for
    /// `providers.cooldown_seconds` while another can serve; when all are
    /// cooling down they are tried anyway, in the same order. Returns the
    /// plugin that served the call with its setup.
    pub async fn serve_call(
        &self,
        request: CallSetupRequest,
    ) -> Result<(String, CallSetup), ProviderError> {
        let chosen = self.provider_for(request.channel.as_deref());
        let mut candidates: Vec<&str> = vec![chosen];
        for name in &self.fallback {
            if !candidates.contains(&name.as_str()) {
                candidates.push(name);
            }
        }
        let now_ms = crate::clock::now_ms().max(0) as u64;
        // Plugins still loading are tried last, with those cooling down:
        // they answer `unavailable` at once.
        let (ready, cooling): (Vec<&str>, Vec<&str>) = candidates.iter().partition(|name| {
            self.plugins[**name]
                .plugin()
                .is_some_and(|plugin| !plugin.is_cooling_down(now_ms))
        });
        let mut last_error = None;
        for name in ready.into_iter().chain(cooling) {
            if let Some(previous) = &last_error {
                tracing::warn!(plugin = %name, error = %previous, "serving the call through a fallback provider");
            }
            match self.setup_call(name, request.clone()).await {
                Ok(setup) => return Ok((name.to_owned(), setup)),
                Err(err) if err.is_unavailable() => {
                    if let (true, Some(plugin)) =
                        (candidates.len() > 1, self.plugins[name].plugin())
                    {
                        let until = crate::clock::now_ms().max(0) as u64 + self.cooldown_ms;
                        if plugin.cooling_until_ms.swap(until, Ordering::Relaxed) <= now_ms {
                            tracing::warn!(
                                plugin = %name,
                                cooldown_seconds = self.cooldown_ms / 1000,
                                "provider unavailable: cooling down, fallback serves its calls"
                            );
                        }
                    }
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error.expect("at least the chosen provider was tried"))
    }

    /// Creates a provider session and one token per side, in one fresh
    /// instance of the plugin `provider`, without fallback.
    pub async fn setup_call(
        &self,
        provider: &str,
        request: CallSetupRequest,
    ) -> Result<CallSetup, ProviderError> {
        let plugin = self.plugin(provider)?;
        plugin
            .run(&self.engine, "setup-call", async |call| {
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
                        channel: request.channel.as_deref(),
                    })
                    .await?;
                let callee_token = call
                    .issue_token(&TokenRequest {
                        session_id: &session.session_id,
                        role: Role::Publisher,
                        identity: &request.callee,
                        display_name: &request.callee_display_name,
                        lifetime_seconds: request.token_lifetime_seconds,
                        channel: request.channel.as_deref(),
                    })
                    .await?;
                Ok(CallSetup {
                    session_id: session.session_id,
                    api_key: session.api_key,
                    caller_token,
                    callee_token,
                })
            })
            .await
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
        plugin
            .run(&self.engine, "verify-token", async |call| {
                call.verify_token(token, session_id).await
            })
            .await
    }

    /// Tells `provider` that the call on `session_id` has ended, so it can
    /// close what it opened for it (a vendor room). Plugins built for WIT
    /// 0.1.0 have no `end-session`; for them this does nothing.
    pub async fn end_session(
        &self,
        provider: &str,
        session_id: &str,
        channel: Option<&str>,
    ) -> Result<(), ProviderError> {
        let plugin = self.plugin(provider)?;
        plugin
            .run(&self.engine, "end-session", async |call| {
                call.end_session(session_id, channel).await
            })
            .await
    }

    /// The plugins whose tokens the host checks itself (`verifies_tokens`),
    /// by `[plugins.<name>]` key.
    /// Plugins still loading are left out until they are ready.
    pub fn token_verifiers(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .filter(|(_, slot)| {
                slot.plugin()
                    .is_some_and(|plugin| plugin.info.verifies_tokens)
            })
            .map(|(name, _)| name.as_str())
    }

    /// What each plugin said about itself at load, by `[plugins.<name>]` key;
    /// `None` while it is still loading.
    pub fn describe(&self, plugin: &str) -> Option<&ProviderInfo> {
        self.plugins
            .get(plugin)
            .and_then(|slot| slot.plugin())
            .map(|plugin| &plugin.info)
    }

    /// Per-plugin call counts and health, for the heartbeat.
    pub fn health(&self) -> Vec<PluginHealth> {
        let now_ms = crate::clock::now_ms().max(0) as u64;
        self.plugins
            .iter()
            .map(|(name, slot)| {
                let plugin = match slot.state.get() {
                    Some(Ok(plugin)) => plugin,
                    not_ready => {
                        let state = match not_ready {
                            Some(Err(error)) => PluginState::Failed(error.clone()),
                            _ => PluginState::Compiling,
                        };
                        return PluginHealth::not_ready(name, state);
                    }
                };
                let consecutive_failures = plugin.consecutive_failures.load(Ordering::Relaxed);
                let cooling_until_ms = plugin.cooling_until_ms.load(Ordering::Relaxed);
                PluginHealth {
                    cooling_down_ms: cooling_until_ms.saturating_sub(now_ms),
                    plugin: name.clone(),
                    state: PluginState::Ready,
                    info: plugin.info.clone(),
                    calls: plugin.calls.load(Ordering::Relaxed),
                    failures: plugin.failures.load(Ordering::Relaxed),
                    consecutive_failures,
                    busy_us: plugin.busy_ns.load(Ordering::Relaxed) / 1000,
                    cpu_us: plugin.cpu_ns.load(Ordering::Relaxed) / 1000,
                    healthy: consecutive_failures < UNHEALTHY_AFTER_FAILURES,
                }
            })
            .collect()
    }

    /// Whether every call can be served: for the default provider and for
    /// each channel's, that plugin or one of the fallbacks is loaded, healthy
    /// and not cooling down. A channel whose provider is failing or still
    /// compiling with no fallback left makes this false, so the heartbeat
    /// names it.
    pub fn can_serve_every_channel(&self) -> bool {
        let now_ms = crate::clock::now_ms().max(0) as u64;
        let serves = |name: &String| {
            self.plugins
                .get(name)
                .and_then(|slot| slot.plugin())
                .is_some_and(|plugin| {
                    plugin.consecutive_failures.load(Ordering::Relaxed) < UNHEALTHY_AFTER_FAILURES
                        && !plugin.is_cooling_down(now_ms)
                })
        };
        let fallback_serves = self.fallback.iter().any(serves);
        std::iter::once(&self.default)
            .chain(self.channels.values())
            .all(|chosen| serves(chosen) || fallback_serves)
    }

    /// How this runtime's components became ready (compiled or cached), so
    /// far: background compiles count once they finish.
    pub fn stats(&self) -> RuntimeStats {
        *self.stats.lock().expect("stats lock")
    }

    fn plugin(&self, name: &str) -> Result<&Plugin, ProviderError> {
        let slot = self
            .plugins
            .get(name)
            .ok_or_else(|| ProviderError::Unknown(name.to_owned()))?;
        match slot.state.get() {
            Some(Ok(plugin)) => Ok(plugin),
            // Another provider (a fallback) may serve meanwhile.
            None => Err(ProviderError::Unavailable {
                provider: name.to_owned(),
                message: "its component is still compiling".into(),
            }),
            Some(Err(error)) => Err(ProviderError::Plugin {
                provider: name.to_owned(),
                message: format!("could not be loaded: {error}"),
            }),
        }
    }
}

/// One configured plugin: loaded, or still compiling in the background, or
/// failed to load there (the error, for the heartbeat and the calls it refuses).
#[derive(Default)]
struct PluginSlot {
    state: OnceLock<Result<Plugin, String>>,
    loaded: Notify,
}

impl PluginSlot {
    fn plugin(&self) -> Option<&Plugin> {
        self.state.get().and_then(|state| state.as_ref().ok())
    }

    fn set(&self, state: Result<Plugin, String>) {
        // Each slot is filled once, by the load or by its background job.
        let _ = self.state.set(state);
        self.loaded.notify_waiters();
    }

    async fn loaded(&self) {
        loop {
            let notified = self.loaded.notified();
            if self.state.get().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// What loading a component into plugins needs, shared with background jobs.
struct Loader {
    engine: Engine,
    linkers: Linkers,
    memory: Arc<Semaphore>,
    stats: Arc<Mutex<RuntimeStats>>,
}

/// A big component compiled in the background, and the plugins waiting for it.
struct Background {
    bytes: Vec<u8>,
    origin: Origin,
    path: PathBuf,
    plugins: Vec<(Arc<PluginSlot>, PluginContext)>,
}

impl Loader {
    fn count_compiled(&self, origin: Origin) {
        let mut stats = self.stats.lock().expect("stats lock");
        stats.compiled += 1;
        if origin == Origin::Recompiled {
            stats.cache_rejected += 1;
        }
    }

    /// Links `component` against the version it was built for and asks it to
    /// describe itself.
    async fn link_and_describe(
        &self,
        component: &Component,
        context: PluginContext,
    ) -> anyhow::Result<Plugin> {
        let name = context.name.clone();
        let (_, pre) = versions::link(&self.engine, &self.linkers, component)
            .context("not a loopcall:provider plugin")?;
        let mut plugin = Plugin::new(context, pre, self.memory.clone());
        plugin.info = describe(&self.engine, &plugin)
            .await
            .map_err(|err| anyhow::anyhow!("describe failed: {err}"))?;
        tracing::info!(
            plugin = %name,
            provider = %plugin.info.name,
            version = %plugin.info.version,
            verifies_tokens = plugin.info.verifies_tokens,
            "loaded provider plugin"
        );
        Ok(plugin)
    }

    async fn load_in_background(
        self: Arc<Self>,
        cache: Arc<CompileCache>,
        digest: [u8; 32],
        job: Background,
    ) {
        let started = Instant::now();
        let Background {
            bytes,
            origin,
            path,
            plugins,
        } = job;
        let compiled = {
            let (engine, path) = (self.engine.clone(), path.clone());
            tokio::task::spawn_blocking(move || cache.compile(&engine, &bytes, &digest, &path))
                .await
                .map_err(|_| anyhow::anyhow!("the plugin compiler panicked"))
                .and_then(|compiled| compiled)
        };
        if compiled.is_ok() {
            self.count_compiled(origin);
        }
        for (slot, context) in plugins {
            let name = context.name.clone();
            let loaded = match &compiled {
                Ok(component) => self.link_and_describe(component, context).await,
                Err(err) => Err(anyhow::anyhow!("{err:#}")),
            };
            match loaded {
                Ok(plugin) => {
                    tracing::info!(
                        plugin = %name,
                        component = %path.display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "compiled plugin in the background; it serves calls now"
                    );
                    slot.set(Ok(plugin));
                }
                Err(err) => {
                    let error = format!("{}: {err:#}", path.display());
                    tracing::error!(plugin = %name, error = %error, "plugin failed to load; it serves no calls");
                    slot.set(Err(error));
                }
            }
        }
    }
}

/// The plugin's settings as it will see them: its own table, plus generated
/// secrets for keys the operator left unset.
fn plugin_context(
    name: &str,
    config: &PluginConfig,
    secrets: &Secrets,
    net: &Net,
) -> anyhow::Result<PluginContext> {
    let mut settings = BTreeMap::new();
    flatten_settings("", &config.settings, &mut settings);
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
        http: net.client(Policy::plugin(name, config))?,
        signing_keys: Default::default(),
    })
}

/// A settings table as the plugin reads it: nested tables become dotted keys
/// (`channels.beta.api_key`), other values their TOML spelling (strings
/// unquoted), so no plugin needs a TOML parser.
fn flatten_settings(prefix: &str, table: &toml::value::Table, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let key = format!("{prefix}{key}");
        match value {
            toml::Value::Table(nested) => flatten_settings(&format!("{key}."), nested, out),
            toml::Value::String(text) => {
                out.insert(key, text.clone());
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}
