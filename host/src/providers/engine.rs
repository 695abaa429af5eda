//! The wasmtime engine shared by every plugin: its configuration (pooling
//! allocator sized to the configured plugins), the epoch ticker that enforces
//! CPU budgets, and the on-disk cache of compiled components.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::wasm_error;

/// How often the engine's epoch advances. CPU budgets are checked at this
/// granularity, and a plugin that keeps running yields to the async executor
/// this often, so one busy plugin cannot starve other requests.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Native stack for wasm frames. C plugins keep their data on a shadow stack in
/// linear memory, so wasm frames stay small.
const MAX_WASM_STACK: usize = 256 * 1024;
/// Fiber stack for one call: wasm frames plus host functions (the HTTP import
/// polls reqwest on this stack).
const ASYNC_STACK: usize = 1024 * 1024;

/// Sizing of the engine-wide instance pool.
pub(crate) struct PoolSize {
    /// Sum over plugins of `limits.max_concurrent_calls`.
    pub concurrent_instances: u32,
    /// Largest `limits.memory_mib` of any plugin, in bytes.
    pub max_memory_bytes: u64,
}

/// Components produced by `wit-component` hold a few core modules (the
/// plugin, a shim and a fixup module for indirect lowering); leave headroom.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const TABLES_PER_COMPONENT: u32 = 4;
/// Bytes of each linear memory reset with `memset` (not `madvise`) when a slot
/// is reused: a C plugin's stack and small heap live there, so the next call
/// takes no page faults. Above this, pages are returned to the OS.
const MEMORY_KEEP_RESIDENT: usize = 1024 * 1024;
const TABLE_KEEP_RESIDENT: usize = 16 * 1024;

pub(crate) fn build_engine(pool: &PoolSize) -> anyhow::Result<Engine> {
    let instances = pool.concurrent_instances.max(1);
    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances)
        .max_memories_per_component(1)
        .max_memories_per_module(1)
        .total_tables(instances * TABLES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_tables_per_module(1)
        .table_elements(10_000)
        .total_stacks(instances)
        .max_memory_size(usize::try_from(pool.max_memory_bytes).context("memory limit too large")?)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT);

    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        // A slot is exactly as large as the biggest memory any plugin may have:
        // explicit bounds checks instead of 4 GiB guard reservations keep the
        // pool's address space (and its set-up at start) small.
        .memory_reservation(pool.max_memory_bytes)
        .memory_guard_size(64 * 1024)
        .memory_reservation_for_growth(0)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config).map_err(|err| wasm_error(err).context("configuring the plugin engine"))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                }
            })
            .context("starting the plugin epoch thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a component came to be ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Compiled,
    Cache,
}

/// Compiled components on disk under `<data_dir>/plugin-cache/`.
pub(crate) struct CompileCache {
    dir: PathBuf,
    /// Hex digest of wasmtime's compatibility hash: its version, target,
    /// tunables and features, everything that makes compiled code reusable.
    engine_key: String,
}

impl CompileCache {
    pub(crate) fn new(data_dir: &Path, engine: &Engine) -> Self {
        let mut hasher = DigestHasher(Sha256::new());
        // Includes wasmtime's exact crate version (its `module_version`).
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..12]);
        Self {
            dir: data_dir.join("plugin-cache"),
            engine_key,
        }
    }

    /// The component for `bytes`: from the cache when a compatible compiled
    /// copy exists, else compiled now and stored for the next start.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        source: &Path,
    ) -> anyhow::Result<(Component, Origin)> {
        let digest = hex::encode(Sha256::digest(bytes));
        let path = self.dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        // Read into memory rather than mapping the file: another process
        // replacing or truncating it must not pull code out from under us.
        if let Ok(compiled) = std::fs::read(&path) {
            // SAFETY: the file is one this server wrote into its own data
            // directory (keyed by content hash and engine compatibility), not
            // input from a plugin vendor; wasmtime still checks its header.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => return Ok((component, Origin::Cache)),
                Err(err) => tracing::warn!(
                    path = %path.display(),
                    error = %wasm_error(err),
                    "ignoring an unusable compiled plugin in the cache; recompiling"
                ),
            }
        }
        let compiled = engine.precompile_component(bytes).map_err(|err| {
            wasm_error(err).context(format!("{} is not a valid component", source.display()))
        })?;
        if let Err(err) = self.store(&path, &compiled) {
            // The cache only saves time; a read-only data dir must not stop the server.
            tracing::warn!(path = %path.display(), error = %err, "cannot write the plugin compile cache");
        }
        // SAFETY: `compiled` was produced by `precompile_component` on this engine just above.
        let component = unsafe { Component::deserialize(engine, &compiled) }.map_err(wasm_error)?;
        Ok((component, Origin::Compiled))
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // Write then rename, so a concurrent start never maps a half-written file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, compiled).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
        Ok(())
    }
}

/// Feeds `Hash` implementations into SHA-256, so the cache key is stable
/// across processes (std's `DefaultHasher` is not guaranteed to be).
struct DigestHasher(Sha256);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
