//! `loop-server plugins check FILE.wasm`: what a vendor runs on a freshly
//! built component before shipping it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::engine::{self, EpochTicker, PoolSize};
use super::instance::{Plugin, describe};
use super::state::PluginContext;
use super::types::wasm_error;
use super::versions::{self, Linkers, VERSIONS};
use crate::config::PluginLimits;

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

async fn check_component_inner(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let limits = PluginLimits::default();
    let limits_memory_mib = usize::try_from(limits.memory_mib)?;
    let engine = engine::build_engine(&PoolSize::for_one(&limits))?;
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
    let linkers = Linkers::new(&engine)?;
    let supported: Vec<&str> = VERSIONS.iter().map(|version| version.world).collect();
    let (version, pre) = versions::link(&engine, &linkers, &component).with_context(|| {
        format!(
            "{} does not implement a supported world ({})",
            path.display(),
            supported.join(", ")
        )
    })?;
    // Described with no settings, no HTTP and default limits, as a first run would.
    let context = PluginContext {
        name: "check".into(),
        settings: BTreeMap::new(),
        allowed_origins: Vec::new(),
        limits: limits.clone(),
        http: crate::net::Net::new(&Default::default())?
            .client(crate::net::Policy::new("plugins.check", false))?,
        signing_keys: Default::default(),
    };
    let memory = Arc::new(Semaphore::new(limits_memory_mib));
    let plugin = Plugin::new(context, pre, memory);
    let info = describe(&engine, &plugin)
        .await
        .map_err(|err| anyhow::anyhow!("describe failed: {err}"))?;
    let grants = versions::wasi_grants(&engine, &component);
    if !grants.is_empty() {
        println!("WASI granted (locked down, the same for every plugin):");
        for (name, how) in grants {
            println!("  {name}: {how}");
        }
    }
    println!(
        "targets: loopcall:provider@{} (world {})",
        version.version, version.world
    );
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
