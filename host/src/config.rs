//! The one configuration struct: built-in defaults, then `config.toml`, then
//! `LOOP_*` environment variables (`__` separates nesting levels).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::store::{Backend, SqliteSynchronous};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub call_urls: CallUrlsConfig,
    pub calls: CallsConfig,
    pub ice: IceConfig,
    pub progress: ProgressConfig,
    pub push: PushConfig,
    pub cors: CorsConfig,
    pub fxa: FxaConfig,
    pub net: NetConfig,
    pub rate_limits: RateLimitsConfig,
    pub providers: ProvidersConfig,
    pub plugins: BTreeMap<String, PluginConfig>,
    pub secrets: SecretsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The origin clients reach this server at; `{public_url}` in templates.
    /// Defaults to `http://<listen>`.
    pub public_url: Option<String>,
    /// Where the SQLite database, generated secrets and the compile cache live.
    pub data_dir: PathBuf,
    /// Threads serving requests. Unset: one per core, but one fewer on a
    /// SQLite file, whose writer and readers run on threads of their own
    /// (measured on 2 cores: a sixth more throughput on the write routes).
    pub worker_threads: Option<usize>,
    /// Where Prometheus metrics are served (`/__metrics__`), apart from the
    /// public listener so the internet cannot read them. Unset: no metrics.
    pub metrics_listen: Option<SocketAddr>,
}

/// The log lines on stderr; `LOOP_LOG` filters them (default `info`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line per event, the request's span in front.
    #[default]
    Text,
    /// For collectors: one JSON object per line, with the request's span
    /// (`request_id`, `route`).
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://…`. Defaults to `sqlite://<data_dir>/loop.db`.
    pub url: Option<String>,
    pub max_connections: u32,
    /// How often expired rows are purged.
    pub purge_interval_seconds: u64,
    /// What an acknowledged write survives on SQLite: `normal` (a process
    /// crash) or `full` (a power loss too). See `config.toml`.
    pub sqlite_synchronous: SqliteSynchronous,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a Hawk device session, refreshed on every use.
    pub hawk_session_duration: u64,
    /// Accepted difference between the client's Hawk timestamp and ours.
    pub hawk_clock_skew_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallUrlsConfig {
    /// Template of the URL handed out; `{public_url}` and `{token}` are replaced.
    pub web_app_url: String,
    pub default_ttl_hours: u64,
    pub max_ttl_hours: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// How long a call is listed to the callee after it was placed.
    pub duration_seconds: u64,
}

/// The ICE servers handed to both sides of a call (`iceServers`), for the
/// self-hosted provider's peer-to-peer media.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IceConfig {
    /// STUN servers (`stun:host[:port]`, `stuns:…`), handed out as they are.
    pub stun_urls: Vec<String>,
    /// TURN servers (`turn:host[:port][?transport=udp|tcp]`, `turns:…`) that
    /// take coturn's `use-auth-secret` credentials made with
    /// `secrets.turn_secret`.
    pub turn_urls: Vec<String>,
}

/// The call-progress websocket's timers (Mozilla's `timers`), in seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgressConfig {
    /// Until both sides have said hello.
    pub supervisory_seconds: f64,
    /// While the callee's devices ring (`alerting`).
    pub ringing_seconds: f64,
    /// From `accept` until both sides report media (`connected`).
    pub connection_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Origins (`https://push.example.com`) push URLs may point at. Empty: any
    /// public https origin, never a loopback, private or link-local address.
    /// A listed IP literal is reachable even if private; a listed host name
    /// still only at its public addresses, unless `allow_private`.
    pub allowed_origins: Vec<String>,
    /// Push URLs' host names may resolve to loopback, private and link-local
    /// addresses (a push server on the internal network).
    pub allow_private: bool,
    pub timeout_ms: u64,
    /// Returned by `GET /push-server-config`.
    pub server_uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed by CORS; `*` allows any.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FxaConfig {
    /// BrowserID verifier; BrowserID auth is off when unset.
    pub verifier_url: Option<String>,
    pub audiences: Vec<String>,
    pub trusted_issuers: Vec<String>,
    /// The verifier's host name may resolve to loopback, private and
    /// link-local addresses (an IP literal in `verifier_url` always may).
    pub allow_private: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// The DNS server (`IP` or `IP:PORT`; UDP, then TCP) that resolves the
    /// host names of outbound requests. Unset: the system's configuration
    /// (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolver: Option<String>,
    /// Host name lookups under way at once. One more waits briefly for a
    /// free slot, then fails (503/201 at registration), so names that
    /// resolve slowly cannot pile up lookups without bound.
    pub max_concurrent_lookups: usize,
}

/// Per-client budgets (`[rate_limits]` in `config.toml`), each a token bucket
/// per key, counted by each instance on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    pub enabled: bool,
    /// The header a trusted reverse proxy appends the client's address to
    /// (`X-Forwarded-For`); its right-most entry is the client. Unset: the
    /// TCP peer's address.
    pub client_ip_header: Option<String>,
    /// Keys (client networks, sessions, call URLs) each budget tracks at
    /// most; a new key past this is refused until idle ones are pruned.
    pub max_tracked_keys: usize,
    /// `POST /registration`, per client IP (IPv6: per /64).
    pub registration_per_ip: Rate,
    /// `POST /call-url`, per Hawk session.
    pub call_urls_per_session: Rate,
    /// `POST /call-url`, per client IP.
    pub call_urls_per_ip: Rate,
    /// `POST /calls/{token}`, per call URL: how often one link rings its owner.
    pub calls_per_call_url: Rate,
    /// `POST /calls/{token}`, per client IP.
    pub calls_per_ip: Rate,
    /// Failed Hawk or BrowserID authentications, per client IP; past it every
    /// authenticated request from that IP is refused before it is checked.
    pub failed_auth_per_ip: Rate,
}

/// A token bucket: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_minute: u32, burst: u32) -> Self {
        Self { per_minute, burst }
    }
}

/// Largest `per_minute` of a rate: one request per microsecond.
pub const MAX_RATE_PER_MINUTE: u32 = 60_000_000;
/// Largest `net.max_concurrent_lookups`.
pub const MAX_CONCURRENT_LOOKUPS: usize = 4096;

/// Server secrets given by the operator, each 32 bytes as 64 hex digits, for
/// deployments where instances do not share a data directory (containers,
/// several hosts on one PostgreSQL): usually `LOOP_SECRETS__HAWK_ID_KEY`. A
/// secret left unset is generated into `<data_dir>/secrets/` on first run.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Key of the HMAC that turns Hawk ids into storage keys. Every instance
    /// sharing a database must have the same one.
    pub hawk_id_key: Option<String>,
    /// Key of the MAC that authenticates compiled plugins in the compile
    /// cache (`<data_dir>/plugin-cache/`); each instance may have its own.
    pub plugin_cache_key: Option<String>,
    /// The TURN server's shared secret (coturn's `static-auth-secret`): any
    /// string of at least [`MIN_TURN_SECRET_CHARS`] printable ASCII
    /// characters, used as written, not hex-decoded.
    pub turn_secret: Option<String>,
}

/// The shortest `secrets.turn_secret`: a TURN credential is an HMAC of a
/// known username, so a short secret could be guessed offline from one.
pub const MIN_TURN_SECRET_CHARS: usize = 16;
/// The longest `secrets.turn_secret` (coturn reads at most this much).
pub const MAX_TURN_SECRET_CHARS: usize = 256;

impl SecretsConfig {
    /// The hex secrets (32 bytes each) given, by key; `turn_secret`, which
    /// is text, is not among them.
    pub fn given(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("hawk_id_key", &self.hawk_id_key),
            ("plugin_cache_key", &self.plugin_cache_key),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)))
    }
}

/// Never prints the values: configurations end up in logs and panics.
impl std::fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&str> = self.given().map(|(key, _)| key).collect();
        if self.turn_secret.is_some() {
            keys.push("turn_secret");
        }
        f.debug_struct("SecretsConfig")
            .field("given", &keys)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    /// Plugin used for calls with no channel, or a channel with no route.
    pub default: String,
    /// `channel = "plugin name"`.
    pub channels: BTreeMap<String, String>,
    /// Plugins that serve a call, in this order, when the one chosen for it
    /// (and any before them here) is unavailable: it answered `unavailable`,
    /// ran out of wall time, or is cooling down. Other failures
    /// (misconfigured, rejected, a broken plugin) are not retried elsewhere.
    pub fallback: Vec<String>,
    /// How long a plugin that was unavailable is skipped while a fallback
    /// can serve instead.
    pub cooldown_seconds: u64,
    /// Linear memory all plugin instances together may hold, in MiB. Each
    /// call reserves its plugin's `limits.memory_mib` from this before it
    /// starts and waits (within its wall time) while the total is taken, so
    /// hostile plugins cannot make the host allocate more than this however
    /// many calls run at once.
    pub max_total_memory_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the component, relative to the config file's folder.
    pub component: PathBuf,
    /// Origins (`https://api.vendor.com`, `http://127.0.0.1:8080`) the plugin may reach.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Host names in `allowed_hosts` may resolve to loopback, private and
    /// link-local addresses, for this plugin only.
    #[serde(default)]
    pub allow_private: bool,
    #[serde(default)]
    pub limits: PluginLimits,
    /// Settings keys the host fills with a generated secret (kept in the data
    /// directory) when `settings` does not set them.
    #[serde(default)]
    pub generated_secrets: Vec<String>,
    /// The plugin's own settings, readable only by that plugin.
    #[serde(default)]
    pub settings: toml::Table,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory of one instance, all its memories together, at most
    /// [`MAX_PLUGIN_MEMORY_MIB`].
    pub memory_mib: u64,
    /// Wasm CPU time per export call, metered as wasmtime fuel.
    pub cpu_ms: u64,
    /// Wall time per call, host HTTP included.
    pub wall_ms: u64,
    /// Largest string or list the plugin may return.
    pub max_return_bytes: usize,
    /// Largest HTTP response body handed to the plugin.
    pub max_http_response_bytes: usize,
    /// Call setups running in this plugin at once; more wait for a free slot
    /// (within their wall time). Sizes the instance pool.
    pub max_concurrent_calls: u32,
    /// Core module instances in one instance of the component. A C plugin has
    /// 3 or 4; an interpreter built by componentize-py about 14.
    pub max_core_instances: u32,
    /// Linear memories in one instance of the component.
    pub max_memories: u32,
    /// Tables in one instance of the component.
    pub max_tables: u32,
    /// Elements of any one table: an interpreter's function table has
    /// thousands.
    pub max_table_elements: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 5000).into(),
            public_url: None,
            data_dir: PathBuf::from("data"),
            worker_threads: None,
            metrics_listen: None,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            purge_interval_seconds: 60,
            sqlite_synchronous: SqliteSynchronous::Normal,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hawk_session_duration: 30 * 24 * 3600,
            hawk_clock_skew_seconds: 60,
        }
    }
}

impl Default for CallUrlsConfig {
    fn default() -> Self {
        Self {
            web_app_url: "{public_url}/c/{token}".into(),
            default_ttl_hours: 720,
            max_ttl_hours: 720,
        }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            duration_seconds: 60,
        }
    }
}

impl Default for ProgressConfig {
    fn default() -> Self {
        Self {
            supervisory_seconds: 10.0,
            ringing_seconds: 30.0,
            connection_seconds: 10.0,
        }
    }
}

impl ProgressConfig {
    pub fn supervisory(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.supervisory_seconds)
    }

    pub fn ringing(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.ringing_seconds)
    }

    pub fn connection(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.connection_seconds)
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_private: false,
            timeout_ms: 2000,
            server_uri: "wss://push.services.mozilla.com/".into(),
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            resolver: None,
            max_concurrent_lookups: 64,
        }
    }
}

/// Generous enough for real clients (a household or an office behind one
/// address, a client retrying a few times), tight enough that one address
/// cannot flood storage, providers or someone's devices. See `config.toml`.
impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_ip_header: None,
            max_tracked_keys: 100_000,
            registration_per_ip: Rate::new(60, 120),
            call_urls_per_session: Rate::new(30, 60),
            call_urls_per_ip: Rate::new(120, 240),
            calls_per_call_url: Rate::new(6, 20),
            calls_per_ip: Rate::new(60, 120),
            failed_auth_per_ip: Rate::new(30, 60),
        }
    }
}

impl RateLimitsConfig {
    /// The budgets by key, for validation and for the limiter.
    pub fn rates(&self) -> [(&'static str, Rate); 6] {
        [
            ("registration_per_ip", self.registration_per_ip),
            ("call_urls_per_session", self.call_urls_per_session),
            ("call_urls_per_ip", self.call_urls_per_ip),
            ("calls_per_call_url", self.calls_per_call_url),
            ("calls_per_ip", self.calls_per_ip),
            ("failed_auth_per_ip", self.failed_auth_per_ip),
        ]
    }

    fn check(&self) -> anyhow::Result<()> {
        for (key, rate) in self.rates() {
            anyhow::ensure!(
                (1..=MAX_RATE_PER_MINUTE).contains(&rate.per_minute),
                "rate_limits.{key}.per_minute: must be between 1 and {MAX_RATE_PER_MINUTE}"
            );
            anyhow::ensure!(
                rate.burst >= 1,
                "rate_limits.{key}.burst: must be at least 1"
            );
        }
        anyhow::ensure!(
            self.max_tracked_keys >= 1,
            "rate_limits.max_tracked_keys: must be at least 1"
        );
        if let Some(header) = &self.client_ip_header {
            anyhow::ensure!(
                http::HeaderName::from_bytes(header.trim().as_bytes()).is_ok(),
                "rate_limits.client_ip_header: {header:?} is not a header name like X-Forwarded-For"
            );
        }
        Ok(())
    }
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            default: "loopback".into(),
            channels: BTreeMap::new(),
            fallback: Vec::new(),
            cooldown_seconds: 30,
            // The default plugin's 64 concurrent calls of 16 MiB each.
            max_total_memory_mib: 1024,
        }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_mib: 16,
            cpu_ms: 100,
            wall_ms: 5000,
            max_return_bytes: 64 * 1024,
            max_http_response_bytes: 1024 * 1024,
            max_concurrent_calls: 64,
            max_core_instances: 32,
            max_memories: 4,
            max_tables: 16,
            max_table_elements: 50_000,
        }
    }
}

/// Largest `limits.memory_mib`. Everything a plugin returns is copied out of
/// its linear memory before the host can check its size, so this also bounds
/// what one call can make the host allocate; 256 MiB is far more than a
/// provider that signs tokens and calls one HTTP API needs (the bundled ones
/// run in 16), and every pool slot reserves address space for the largest.
pub const MAX_PLUGIN_MEMORY_MIB: u64 = 256;
/// Bounds of the per-component pool limits: each instance slot of the pool
/// is sized for the largest any plugin asks for.
const MAX_PLUGIN_CORE_INSTANCES: u32 = 256;
const MAX_PLUGIN_MEMORIES: u32 = 16;
const MAX_PLUGIN_TABLES: u32 = 256;
const MAX_PLUGIN_TABLE_ELEMENTS: u32 = 1_000_000;
/// Longest `providers.cooldown_seconds`: a day.
const MAX_PROVIDER_COOLDOWN_SECONDS: u64 = 24 * 3600;
/// Largest `providers.max_total_memory_mib`.
pub const MAX_TOTAL_PLUGIN_MEMORY_MIB: u64 = 64 * 1024;

/// The top-level tables of [`Config`], as `LOOP_<SECTION>__…` variables name them.
const CONFIG_SECTIONS: &[&str] = &[
    "server",
    "database",
    "auth",
    "call_urls",
    "calls",
    "progress",
    "ice",
    "push",
    "cors",
    "fxa",
    "net",
    "rate_limits",
    "providers",
    "plugins",
    "secrets",
    "log",
];

/// `LOOP_*` variables that are not configuration keys but are ours all the same.
const OTHER_LOOP_VARIABLES: &[&str] = &["LOOP_LOG", "LOOP_CONFIG"];

/// The `LOOP_*` variables among `names` that configure nothing: a typo, or
/// a key from another version, would otherwise leave a default in force
/// without a word. Names only: values may be secrets.
fn unknown_loop_variables(names: impl Iterator<Item = std::ffi::OsString>) -> Vec<String> {
    let mut unknown: Vec<String> = names
        .filter_map(|name| name.into_string().ok())
        .filter(|name| !OTHER_LOOP_VARIABLES.contains(&name.as_str()))
        .filter(|name| {
            name.strip_prefix("LOOP_")
                .is_some_and(|key| !names_a_config_section(key))
        })
        .collect();
    unknown.sort();
    unknown
}

/// Whether a `LOOP_`-less variable name (`SERVER__LISTEN`) names a key in
/// one of [`CONFIG_SECTIONS`]. A section alone is no key: `LOOP_LOG` is the
/// log filter, not the `[log]` table.
fn names_a_config_section(key: &str) -> bool {
    let Some((section, _)) = key.split_once("__") else {
        return false;
    };
    CONFIG_SECTIONS.contains(&section.to_ascii_lowercase().as_str())
}

impl Config {
    /// Loads defaults, then `path` (if it exists), then `LOOP_*` variables.
    /// Relative paths in the file are resolved against the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if path.exists() {
            figment = figment.merge(Toml::file(path));
        } else if path != Path::new("config.toml") {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        // Only `LOOP_<SECTION>__…` variables are configuration; others sharing the
        // prefix (LOOP_LOG, LOOP_CONFIG, the test suite's LOOP_TEST_*) are not.
        figment = figment.merge(
            Env::prefixed("LOOP_")
                .filter(|key| names_a_config_section(key.as_str()))
                .split("__"),
        );
        let mut config: Config = figment.extract().map_err(|err| {
            // figment names the key (`server.listen`) and the source in its message.
            anyhow::anyhow!(
                "invalid configuration: {}",
                err.to_string().replace('\n', "; ")
            )
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Warns of each `LOOP_*` variable that configures nothing. Apart from
    /// [`Config::load`], since the log format is only known once it has run.
    pub fn warn_of_unknown_variables() {
        for name in unknown_loop_variables(std::env::vars_os().map(|(name, _)| name)) {
            tracing::warn!(
                variable = %name,
                "ignoring an environment variable that names no configuration key \
                 (configuration variables are LOOP_<SECTION>__<KEY>)"
            );
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.server.data_dir.is_relative() {
            self.server.data_dir = base.join(&self.server.data_dir);
        }
        for plugin in self.plugins.values_mut() {
            if plugin.component.is_relative() {
                plugin.component = base.join(&plugin.component);
            }
        }
    }

    /// Every plugin `[providers]` names (default, channels, fallback) has a
    /// `[plugins.<name>]` table. Part of [`Config::validate`]; the provider
    /// runtime checks it too, for configurations built in code.
    pub fn check_provider_tables(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.plugins.contains_key(&self.providers.default),
            "providers.default: no [plugins.{}] table",
            self.providers.default
        );
        for (channel, plugin) in &self.providers.channels {
            anyhow::ensure!(
                self.plugins.contains_key(plugin),
                "providers.channels.{channel}: no [plugins.{plugin}] table"
            );
        }
        for plugin in &self.providers.fallback {
            anyhow::ensure!(
                self.plugins.contains_key(plugin),
                "providers.fallback: no [plugins.{plugin}] table"
            );
        }
        Ok(())
    }

    /// Checks that cannot be expressed in types; each error names its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.server.public_url {
            let parsed = url::Url::parse(url).context("server.public_url: not a URL")?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "server.public_url: must be an http(s) URL"
            );
        }
        if let Some(url) = &self.database.url {
            Backend::of(url)?;
        }
        if let Some(metrics) = self.server.metrics_listen {
            let listen = self.server.listen;
            anyhow::ensure!(
                metrics.port() == 0 || metrics != listen,
                "server.metrics_listen: must be another address than server.listen ({listen}): \
                 metrics are kept off the public listener"
            );
        }
        anyhow::ensure!(
            self.server.worker_threads != Some(0),
            "server.worker_threads: must be at least 1 (or unset)"
        );
        anyhow::ensure!(
            self.database.max_connections > 0,
            "database.max_connections: must be at least 1"
        );
        anyhow::ensure!(
            self.call_urls.web_app_url.contains("{token}"),
            "call_urls.web_app_url: must contain {{token}}"
        );
        anyhow::ensure!(
            self.call_urls.max_ttl_hours > 0,
            "call_urls.max_ttl_hours: must be at least 1"
        );
        anyhow::ensure!(
            (1..=self.call_urls.max_ttl_hours).contains(&self.call_urls.default_ttl_hours),
            "call_urls.default_ttl_hours: must be between 1 and call_urls.max_ttl_hours"
        );
        anyhow::ensure!(
            self.calls.duration_seconds > 0,
            "calls.duration_seconds: must be at least 1"
        );
        for (key, seconds) in [
            ("supervisory_seconds", self.progress.supervisory_seconds),
            ("ringing_seconds", self.progress.ringing_seconds),
            ("connection_seconds", self.progress.connection_seconds),
        ] {
            anyhow::ensure!(
                seconds > 0.0 && seconds <= 3600.0,
                "progress.{key}: must be more than 0 and at most 3600"
            );
        }
        anyhow::ensure!(
            self.auth.hawk_session_duration > 0,
            "auth.hawk_session_duration: must be at least 1"
        );
        for origin in &self.push.allowed_origins {
            let parsed = url::Url::parse(origin)
                .with_context(|| format!("push.allowed_origins: {origin:?} is not a URL"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "push.allowed_origins: {origin:?} must be http(s)"
            );
        }
        if let Some(url) = &self.fxa.verifier_url {
            url::Url::parse(url).context("fxa.verifier_url: not a URL")?;
        }
        for (key, value) in self.secrets.given() {
            crate::secrets::decode(value.trim()).with_context(|| {
                format!("secrets.{key} (LOOP_SECRETS__{})", key.to_ascii_uppercase())
            })?;
        }
        if let Some(secret) = &self.secrets.turn_secret {
            check_turn_secret(secret)?;
        }
        self.ice.check()?;
        self.net.resolver_addr()?;
        anyhow::ensure!(
            (1..=MAX_CONCURRENT_LOOKUPS).contains(&self.net.max_concurrent_lookups),
            "net.max_concurrent_lookups: must be between 1 and {MAX_CONCURRENT_LOOKUPS}"
        );
        self.rate_limits.check()?;
        self.check_provider_tables()?;
        anyhow::ensure!(
            (1..=MAX_PROVIDER_COOLDOWN_SECONDS).contains(&self.providers.cooldown_seconds),
            "providers.cooldown_seconds: must be between 1 and {MAX_PROVIDER_COOLDOWN_SECONDS}"
        );
        let total_memory = self.providers.max_total_memory_mib;
        anyhow::ensure!(
            (1..=MAX_TOTAL_PLUGIN_MEMORY_MIB).contains(&total_memory),
            "providers.max_total_memory_mib: must be between 1 and {MAX_TOTAL_PLUGIN_MEMORY_MIB}"
        );
        for (name, plugin) in &self.plugins {
            for host in &plugin.allowed_hosts {
                let parsed = url::Url::parse(host).with_context(|| {
                    format!(
                        "plugins.{name}.allowed_hosts: {host:?} is not an origin like https://host"
                    )
                })?;
                anyhow::ensure!(
                    matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some(),
                    "plugins.{name}.allowed_hosts: {host:?} must be an http(s) origin"
                );
            }
            let limits = &plugin.limits;
            anyhow::ensure!(
                limits.cpu_ms >= 1,
                "plugins.{name}.limits.cpu_ms: must be at least 1"
            );
            anyhow::ensure!(
                limits.wall_ms >= 1,
                "plugins.{name}.limits.wall_ms: must be at least 1"
            );
            anyhow::ensure!(
                (1..=MAX_PLUGIN_MEMORY_MIB).contains(&limits.memory_mib),
                "plugins.{name}.limits.memory_mib: must be between 1 and {MAX_PLUGIN_MEMORY_MIB}"
            );
            anyhow::ensure!(
                limits.memory_mib <= total_memory,
                "plugins.{name}.limits.memory_mib: {} is more than providers.max_total_memory_mib ({total_memory}), so no call could ever start",
                limits.memory_mib
            );
            anyhow::ensure!(
                limits.max_return_bytes >= 1,
                "plugins.{name}.limits.max_return_bytes: must be at least 1"
            );
            anyhow::ensure!(
                (1..=4096).contains(&limits.max_concurrent_calls),
                "plugins.{name}.limits.max_concurrent_calls: must be between 1 and 4096"
            );
            for (key, value, max) in [
                (
                    "max_core_instances",
                    limits.max_core_instances,
                    MAX_PLUGIN_CORE_INSTANCES,
                ),
                ("max_memories", limits.max_memories, MAX_PLUGIN_MEMORIES),
                ("max_tables", limits.max_tables, MAX_PLUGIN_TABLES),
                (
                    "max_table_elements",
                    limits.max_table_elements,
                    MAX_PLUGIN_TABLE_ELEMENTS,
                ),
            ] {
                anyhow::ensure!(
                    (1..=max).contains(&value),
                    "plugins.{name}.limits.{key}: must be between 1 and {max}"
                );
            }
        }
        Ok(())
    }

    /// `server.public_url`, or `http://<listen>` when unset. No trailing slash.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.server.listen),
        }
    }

    /// How many threads serve requests; see `server.worker_threads`.
    pub fn worker_threads(&self) -> usize {
        if let Some(threads) = self.server.worker_threads {
            return threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match Backend::of(&self.database_url()) {
            Ok(Backend::Sqlite) => cores.saturating_sub(1).max(1),
            _ => cores,
        }
    }

    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.server.data_dir.join("loop.db").display()
            ),
        }
    }
}

/// `secrets.turn_secret`: never quoted in the error, it is a secret.
fn check_turn_secret(secret: &str) -> anyhow::Result<()> {
    let chars = secret.chars().count();
    anyhow::ensure!(
        (MIN_TURN_SECRET_CHARS..=MAX_TURN_SECRET_CHARS).contains(&chars),
        "secrets.turn_secret (LOOP_SECRETS__TURN_SECRET): must be {MIN_TURN_SECRET_CHARS} to \
         {MAX_TURN_SECRET_CHARS} characters, not {chars}"
    );
    anyhow::ensure!(
        secret.bytes().all(|b| b.is_ascii_graphic()),
        "secrets.turn_secret (LOOP_SECRETS__TURN_SECRET): must be printable ASCII with no spaces \
         (as coturn's static-auth-secret)"
    );
    Ok(())
}

impl IceConfig {
    /// Each URL is an RFC 7064/7065 STUN or TURN URI of its list's kind.
    fn check(&self) -> anyhow::Result<()> {
        for (key, urls, schemes) in [
            ("stun_urls", &self.stun_urls, ["stun", "stuns"]),
            ("turn_urls", &self.turn_urls, ["turn", "turns"]),
        ] {
            for url in urls {
                check_ice_url(url, schemes)
                    .map_err(|why| anyhow::anyhow!("ice.{key}: {url:?} {why}"))?;
            }
        }
        Ok(())
    }
}

/// `scheme:host[:port][?transport=udp|tcp]` (the query for TURN only).
fn check_ice_url(url: &str, schemes: [&str; 2]) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| format!("must start with {}:", schemes[0]))?;
    if !schemes.contains(&scheme) {
        return Err(format!(
            "must start with {}: or {}:",
            schemes[0], schemes[1]
        ));
    }
    let (address, query) = match rest.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (rest, None),
    };
    if let Some(query) = query
        && (!scheme.starts_with("turn") || !matches!(query, "transport=udp" | "transport=tcp"))
    {
        return Err("may only end with ?transport=udp or ?transport=tcp (TURN)".into());
    }
    // `host`, `host:port`, `[v6]` or `[v6]:port`: a URL's authority parses it.
    let parsed = url::Url::parse(&format!("x://{address}"))
        .ok()
        .filter(|parsed| {
            parsed.host().is_some()
                && parsed.username().is_empty()
                && parsed.password().is_none()
                && matches!(parsed.path(), "" | "/")
                && !address.contains(['/', '@', '#'])
        });
    if parsed.is_none() {
        return Err(
            "must name a host and optionally a port, like stun:stun.example.com:3478".into(),
        );
    }
    Ok(())
}

impl NetConfig {
    /// `net.resolver` as an address; port 53 when it names none.
    pub fn resolver_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(text) = &self.resolver else {
            return Ok(None);
        };
        let addr = text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| {
                anyhow::anyhow!(
                    "net.resolver: {text:?} is not a DNS server address like 10.0.0.53 or 127.0.0.1:5353"
                )
            })?;
        Ok(Some(addr))
    }
}
