//! Live configuration reload: on `SIGHUP` the server reads its config file
//! again (with the same `LOOP_*` overrides) and puts in force what can change
//! while it serves: providers and plugins, CORS, the push policy, call URL,
//! call and progress timings. What cannot (the listen address, the data
//! directory, the database, secrets, authentication, ICE, the resolver) is
//! named in a warning and left as it is until a restart.
//!
//! A reload is all or nothing: the new configuration is checked, and every
//! part that changes (a new provider runtime with its plugins compiled and
//! described, a new push client) is built while the old ones keep serving;
//! only then is everything swapped in. A configuration that fails to load, or
//! a plugin that fails to load, leaves the running one in force, with an
//! error naming the key. Requests in flight keep what they started with: a
//! call being set up finishes on the provider runtime it started on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use crate::app::AppState;
use crate::config::Config;
use crate::providers::{PluginState, ProviderRuntime};
use crate::push::PushPolicy;
use crate::secrets::Secrets;

/// Reloads `path` on every `SIGHUP`, one reload at a time: a signal that
/// arrives during a reload starts another once it is done. The handler is
/// installed before this returns, so a `SIGHUP` from then on can no longer
/// end the process.
#[cfg(unix)]
pub fn spawn_on_sighup(
    state: AppState,
    path: PathBuf,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reload(&state, &path).await;
        }
    }))
}

/// Reads `path` again and applies what can change live; returns whether the
/// new configuration is in force. Everything it does is logged.
pub async fn reload(state: &AppState, path: &Path) -> bool {
    tracing::info!(config = %path.display(), "reloading the configuration");
    match apply(state, path).await {
        Ok(()) => true,
        Err(err) => {
            // The error names the key (Config::load's and the plugins' do).
            tracing::error!(
                config = %path.display(),
                error = %format!("{err:#}").replace('\n', "; "),
                "configuration reload refused; the running configuration keeps serving"
            );
            false
        }
    }
}

async fn apply(state: &AppState, path: &Path) -> anyhow::Result<()> {
    // Config::load falls back to the defaults without a file; a reload
    // reads a file, so one that vanished is a mistake, not "back to defaults".
    anyhow::ensure!(
        path.exists(),
        "config file {} does not exist",
        path.display()
    );
    let mut new = Config::load(path)?;
    let running = state.config.load_full();
    let changed = changed_keys(&running, &new)?;
    keep_restart_only(&mut new, &running);
    let applied = changed_keys(&running, &new)?;
    for key in changed.iter().filter(|key| !applied.contains(key)) {
        tracing::warn!(
            key = %key,
            "{key} changed in the configuration but cannot change while the server runs; \
             it is left as it is until a restart"
        );
    }
    if applied.is_empty() {
        tracing::info!("configuration reloaded: nothing to change live");
        return Ok(());
    }
    let touches = |section: &str| {
        applied
            .iter()
            .any(|key| key.split('.').next() == Some(section))
    };

    let providers = if touches("providers") || touches("plugins") {
        Some(load_providers(state, &new).await?)
    } else {
        None
    };
    let push = if touches("push") {
        Some(PushPolicy::new(&new.push, &state.net).context("push")?)
    } else {
        None
    };
    // Nothing can fail from here on: the reload applies whole.
    if let Some(runtime) = providers {
        // Calls in flight hold the old runtime and finish on it; it is
        // dropped (its epoch thread stopped) after the last of them.
        state.providers.store(Arc::new(runtime));
    }
    if let Some(policy) = push {
        state.push.set_policy(policy);
    }
    // Buckets of budgets whose rate is unchanged keep their counts.
    state.limits.reconfigure(&new.rate_limits);
    state.config.store(Arc::new(new));
    // Key names only: values may be secrets (plugin settings).
    tracing::info!(changed = %applied.join(", "), "configuration reloaded");
    Ok(())
}

/// A provider runtime for `config`, every plugin loaded: a big component is
/// compiled in the background while the running runtime keeps serving, and
/// swapped in only once it is ready, so no call sees it compiling.
async fn load_providers(state: &AppState, config: &Config) -> anyhow::Result<ProviderRuntime> {
    // The same secrets as at start-up: `[secrets]` and the data directory
    // are restart-only, and plugins' generated secrets live on disk.
    let secrets = Secrets::from_config(config)?;
    let runtime = ProviderRuntime::load(config, &secrets, &state.net).await?;
    runtime.ready().await;
    for plugin in runtime.health() {
        if let PluginState::Failed(error) = plugin.state {
            anyhow::bail!("plugins.{}: {error}", plugin.plugin);
        }
    }
    Ok(runtime)
}

/// Sets the sections that cannot change while the server runs back to the
/// running ones. Destructured in full, so a section added to [`Config`]
/// cannot be forgotten here: it must be put on one side or the other.
fn keep_restart_only(new: &mut Config, running: &Config) {
    let Config {
        // Bound once, or built into what serves (the store, the runtime's
        // worker threads, Hawk and BrowserID checks, TURN credentials, the
        // outbound clients' resolver).
        server,
        database,
        auth,
        ice,
        fxa,
        net,
        secrets,
        // The log subscriber is installed once, at start-up.
        log,
        // Read at each use, or swapped by `apply`.
        rate_limits: _,
        call_urls: _,
        calls: _,
        progress: _,
        push: _,
        cors: _,
        providers: _,
        plugins: _,
    } = new;
    *server = running.server.clone();
    *database = running.database.clone();
    *auth = running.auth.clone();
    *ice = running.ice.clone();
    *fxa = running.fxa.clone();
    *net = running.net.clone();
    *secrets = running.secrets.clone();
    *log = running.log.clone();
}

/// The dotted keys (`cors.allowed_origins`, `plugins.vendor`) whose values
/// differ; a table present on one side only is one key. Names, never values.
fn changed_keys(old: &Config, new: &Config) -> anyhow::Result<Vec<String>> {
    let old = serde_json::to_value(old).context("comparing configurations")?;
    let new = serde_json::to_value(new).context("comparing configurations")?;
    let mut changed = Vec::new();
    compare("", &old, &new, &mut changed);
    Ok(changed)
}

fn compare(key: &str, old: &Value, new: &Value, changed: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for name in keys {
                let path = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                match (old.get(name), new.get(name)) {
                    (Some(old), Some(new)) => compare(&path, old, new, changed),
                    _ => changed.push(path),
                }
            }
        }
        (old, new) if old != new => changed.push(key.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_by_key_and_restart_only_ones_are_kept() {
        let running = Config::default();
        let mut new = Config::default();
        new.cors.allowed_origins = vec!["https://a.example".into()];
        new.server.listen = ([127, 0, 0, 1], 6000).into();
        new.secrets.hawk_id_key = Some("00".repeat(32));
        new.plugins.insert(
            "vendor".into(),
            toml::from_str("component = \"vendor.wasm\"").unwrap(),
        );
        let changed = changed_keys(&running, &new).unwrap();
        assert_eq!(
            changed,
            [
                "cors.allowed_origins",
                "plugins.vendor",
                "secrets.hawk_id_key",
                "server.listen"
            ]
        );
        keep_restart_only(&mut new, &running);
        assert_eq!(
            changed_keys(&running, &new).unwrap(),
            ["cors.allowed_origins", "plugins.vendor"]
        );
        assert_eq!(new.server.listen, running.server.listen);
    }
}
