//! What one plugin instance runs with: the plugin's context shared by all its
//! instances, the per-call store data, and the limits enforced from inside
//! wasmtime (fuel for CPU, epochs for yielding and the wall-time deadline,
//! the resource limiter for memory and tables).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::{ResourceLimiter, UpdateDeadline};

use super::imports::log::LogBudget;
use crate::config::PluginLimits;

/// Fuel one millisecond of `limits.cpu_ms` buys.
///
/// wasmtime charges one unit per executed wasm operator (control markers like
/// `block`/`end`/`nop` are free), so fuel counts guest work, not time: a
/// plugin waiting for a core under CPU contention, or for the host's HTTP,
/// is not charged. Calibration (`cargo test -p loop-server --test suite
/// providers::calibrate_fuel -- --ignored --nocapture`): on the reference
/// machine (x86-64, shared 2-core VM) the `spin` plugin's tight loop, about the
/// fastest code per operator there is, runs 5.5 million operators per CPU ms.
/// The constant is rounded up to about twice that, the conservative side for
/// well-behaved plugins: one is not stopped before it had `cpu_ms` of CPU on
/// a core up to ~1.8 times as fast, and the tight loop gets ~1.8 × `cpu_ms` here
/// (slower code, with more memory traffic and calls, gets more), which is
/// still a bound on CPU, the point of the limit.
pub(crate) const FUEL_PER_CPU_MS: u64 = 10_000_000;

/// The fuel budget of one export call.
pub(crate) fn fuel_budget(limits: &PluginLimits) -> u64 {
    limits.cpu_ms.saturating_mul(FUEL_PER_CPU_MS)
}

/// Everything about one configured plugin that its instances can see.
pub(crate) struct PluginContext {
    pub name: String,
    /// The plugin's own settings, generated secrets filled in, values in their
    /// TOML spelling. Nothing else from the configuration reaches the plugin.
    pub settings: BTreeMap<String, String>,
    pub allowed_origins: Vec<url::Origin>,
    pub limits: PluginLimits,
    pub http: reqwest::Client,
    /// Private keys `crypto.sign` has parsed, so one key is parsed once.
    pub signing_keys: super::imports::crypto::SigningKeys,
}

/// Why the host stopped a plugin; recorded before the trap it causes so the
/// error names the limit rather than a generic trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostStop {
    Cpu,
    WallTime,
    Memory,
    RandomTooLarge,
}

/// Store data of one plugin instance, which lives for one Loop call.
pub(crate) struct CallState {
    pub plugin: Arc<PluginContext>,
    pub stop: Option<HostStop>,
    /// Wall-clock deadline of the whole call, HTTP included.
    pub wall_deadline: Instant,
    pub log: LogBudget,
    /// CPU time host imports spent for this instance on other threads
    /// (`crypto.sign` runs on the blocking pool), in nanoseconds.
    pub offloaded_cpu_ns: u64,
    /// WASI for plugins that import it, made on first use.
    pub wasi: Option<Box<super::imports::wasi::WasiState>>,
    /// Bytes of all the instance's linear memories together: `memory_mib`
    /// bounds their sum, so a component of several memories (jco's QuickJS
    /// has 3) gets no more than one of a single memory, and a call never
    /// holds more than the `memory_mib` it reserved from
    /// `providers.max_total_memory_mib`.
    memory_bytes: u64,
    /// The growth last allowed, taken back if the memory could not grow.
    last_growth: u64,
}

impl CallState {
    pub fn new(plugin: Arc<PluginContext>, wall_deadline: Instant) -> Self {
        Self {
            plugin,
            stop: None,
            wall_deadline,
            log: LogBudget::default(),
            offloaded_cpu_ns: 0,
            wasi: None,
            memory_bytes: 0,
            last_growth: 0,
        }
    }

    /// Called by wasmtime every epoch tick while wasm runs. CPU is metered by
    /// fuel; the tick only stops a call past its wall-time deadline and
    /// otherwise yields, so a long-running plugin shares its executor thread.
    pub fn on_epoch_deadline(&mut self) -> wasmtime::Result<UpdateDeadline> {
        if Instant::now() >= self.wall_deadline {
            self.stop = Some(HostStop::WallTime);
            return Err(wasmtime::format_err!(
                "plugin {} exceeded its wall-time budget of {} ms",
                self.plugin.name,
                self.plugin.limits.wall_ms
            ));
        }
        Ok(UpdateDeadline::Yield(1))
    }
}

impl ResourceLimiter for CallState {
    /// Also called for each memory as the instance is created (from 0 to its
    /// initial size), so the sum covers every page an instance holds.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = self.plugin.limits.memory_mib.saturating_mul(1024 * 1024);
        let growth = desired.saturating_sub(current) as u64;
        let total = self.memory_bytes.saturating_add(growth);
        if total > limit {
            // A trap rather than a failed `memory.grow`: the plugin hit the
            // operator's cap, and the error should say so.
            self.stop = Some(HostStop::Memory);
            wasmtime::bail!(
                "plugin {} exceeded its memory limit of {} MiB",
                self.plugin.name,
                self.plugin.limits.memory_mib
            );
        }
        self.memory_bytes = total;
        self.last_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // `memory.grow` returns -1 to the plugin, as without a limiter.
        self.memory_bytes = self.memory_bytes.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.plugin.limits.max_table_elements as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn call_state(memory_mib: u64) -> CallState {
        let plugin = PluginContext {
            name: "several-memories".into(),
            settings: BTreeMap::new(),
            allowed_origins: Vec::new(),
            limits: PluginLimits {
                memory_mib,
                ..PluginLimits::default()
            },
            http: reqwest::Client::new(),
            signing_keys: Default::default(),
        };
        CallState::new(Arc::new(plugin), Instant::now())
    }

    #[test]
    fn memory_mib_bounds_the_sum_of_an_instances_memories() {
        let mut state = call_state(16);
        // Three memories created at their initial sizes, as wasmtime reports
        // them: 10 + 4 MiB fit in 16.
        assert!(state.memory_growing(0, 10 * MIB, None).unwrap());
        assert!(state.memory_growing(0, 4 * MIB, None).unwrap());
        assert!(state.memory_growing(0, 0, None).unwrap());
        // Growing the second by 2 MiB reaches 16 exactly; one page more does
        // not fit, though each memory alone is far below 16.
        assert!(state.memory_growing(4 * MIB, 6 * MIB, None).unwrap());
        let refused = state
            .memory_growing(0, 64 * 1024, None)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("exceeded its memory limit of 16 MiB"),
            "{refused}"
        );
        assert_eq!(state.stop, Some(HostStop::Memory));
    }

    #[test]
    fn a_growth_that_failed_is_not_counted() {
        let mut state = call_state(16);
        assert!(state.memory_growing(0, 8 * MIB, None).unwrap());
        // Allowed here, then refused by the memory's own maximum.
        assert!(state.memory_growing(8 * MIB, 15 * MIB, None).unwrap());
        state
            .memory_grow_failed(wasmtime::format_err!("past the maximum"))
            .unwrap();
        assert!(state.memory_growing(0, 8 * MIB, None).unwrap());
        assert_eq!(state.stop, None);
    }
}
