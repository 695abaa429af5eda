//! The wasmtime engine shared by every plugin: its configuration (fuel for
//! CPU budgets, pooling allocator sized to the configured plugins) and the
//! epoch ticker that makes running plugins yield and enforces wall time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::types::wasm_error;

/// How often the engine's epoch advances. A plugin that keeps running yields
/// to the async executor this often, so one busy plugin cannot starve other
/// requests, and the wall-time deadline is checked at this granularity.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Native stack for wasm frames. C plugins keep their data on a shadow stack in
/// linear memory, so wasm frames stay small.
const MAX_WASM_STACK: usize = 256 * 1024;
/// Fiber stack for one call: wasm frames plus host functions (the HTTP import
/// polls reqwest on this stack).
const ASYNC_STACK: usize = 1024 * 1024;

/// Sizing of the engine-wide instance pool.
pub(crate) struct PoolSize {
    /// Instances that can run at once: bounded by the sum over plugins of
    /// `limits.max_concurrent_calls` and by how many of the smallest plugin
    /// fit in `providers.max_total_memory_mib`.
    pub concurrent_instances: u32,
    /// Largest `limits.memory_mib` of any plugin, in bytes.
    pub max_memory_bytes: u64,
    /// Largest `limits.max_core_instances`, `max_memories`, `max_tables` and
    /// `max_table_elements` of any plugin: every slot fits any plugin.
    pub max_core_instances: u32,
    pub max_memories: u32,
    pub max_tables: u32,
    pub max_table_elements: u32,
}

impl PoolSize {
    /// A pool for one plugin with `limits`.
    pub(crate) fn for_one(limits: &crate::config::PluginLimits) -> Self {
        Self {
            concurrent_instances: 1,
            max_memory_bytes: limits.memory_mib * 1024 * 1024,
            max_core_instances: limits.max_core_instances,
            max_memories: limits.max_memories,
            max_tables: limits.max_tables,
            max_table_elements: limits.max_table_elements,
        }
    }
}
/// Bytes of each linear memory kept resident when a slot is reused: the pages
/// the last call dirtied are found with `PAGEMAP_SCAN` (Linux 6.7 and later)
/// and copied back from the component's memory image, instead of being
/// unmapped and faulted in (and copied on write) again by the next call. A
/// C plugin dirties a few pages; an interpreter (Python, JavaScript) hundreds
/// of its 12 MiB or more, where this takes about a quarter off a call setup
/// (BENCHMARKS.md, "Plugins in other languages").
const MEMORY_KEEP_RESIDENT: usize = 32 * 1024 * 1024;
/// Without `PAGEMAP_SCAN`, the first bytes are restored whether dirtied or
/// not: a C plugin's stack and small heap, so its next call takes no page
/// faults; above this, pages are returned to the OS.
const MEMORY_KEEP_RESIDENT_WITHOUT_PAGEMAP: usize = 1024 * 1024;
const TABLE_KEEP_RESIDENT: usize = 16 * 1024;

pub(crate) fn build_engine(pool: &PoolSize) -> anyhow::Result<Engine> {
    // `Enabled::Yes` fails where the kernel lacks PAGEMAP_SCAN.
    build_engine_with(pool, true).or_else(|_| build_engine_with(pool, false))
}

fn build_engine_with(pool: &PoolSize, pagemap_scan: bool) -> anyhow::Result<Engine> {
    let (pagemap, keep_resident) = if pagemap_scan {
        (wasmtime::Enabled::Yes, MEMORY_KEEP_RESIDENT)
    } else {
        (wasmtime::Enabled::No, MEMORY_KEEP_RESIDENT_WITHOUT_PAGEMAP)
    };
    let instances = pool.concurrent_instances.max(1);
    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(pool.max_core_instances))
        .max_core_instances_per_component(pool.max_core_instances)
        .total_memories(instances.saturating_mul(pool.max_memories))
        .max_memories_per_component(pool.max_memories)
        .max_memories_per_module(1)
        .total_tables(instances.saturating_mul(pool.max_tables))
        .max_tables_per_component(pool.max_tables)
        .max_tables_per_module(1)
        .table_elements(pool.max_table_elements as usize)
        .total_stacks(instances)
        .max_memory_size(usize::try_from(pool.max_memory_bytes).context("memory limit too large")?)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(pagemap);

    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        // CPU budgets are fuel (executed instructions), not time: a plugin is
        // not charged for waiting on a busy core. Epochs only make running
        // code yield and stop it at its wall-time deadline.
        .consume_fuel(true)
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
