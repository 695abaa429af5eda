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
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = self.plugin.limits.memory_mib.saturating_mul(1024 * 1024);
        if desired as u64 > limit {
            // A trap rather than a failed `memory.grow`: the plugin hit the
            // operator's cap, and the error should say so.
            self.stop = Some(HostStop::Memory);
            wasmtime::bail!(
                "plugin {} exceeded its memory limit of {} MiB",
                self.plugin.name,
                self.plugin.limits.memory_mib
            );
        }
        Ok(true)
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
