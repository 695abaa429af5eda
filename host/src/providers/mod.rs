//! The provider plugin runtime: WebAssembly components (wasmtime, component
//! model) that create provider sessions and issue tokens for Loop calls.
//!
//! Every configured `[plugins.<name>]` component is compiled once per process
//! (or loaded from the authenticated compile cache in the data directory),
//! checked against the world of the `loopcall:provider` version it was built
//! for, pre-linked, and asked to `describe` itself. Each call setup then gets
//! a fresh instance from the pooling allocator, runs `create-session` and two
//! `issue-token`s in it, and throws it away, so nothing leaks from one call
//! into the next. Memory, CPU, wall time, return sizes and HTTP are bounded
//! per plugin; a plugin that breaks any of these is a provider error for that
//! call only. A component too big to compile at once (an interpreter built by
//! componentize-py or jco) and not yet in the compile cache is
//! compiled in the background while the others serve.
//!
//! - [`types`]: the API the rest of the server sees, and its errors;
//! - [`runtime`]: [`ProviderRuntime`], loading plugins and serving calls;
//! - [`instance`]: one plugin's instances, their limits, failure classification;
//! - [`versions`]: the supported WIT versions (one `since_v*` module each);
//! - [`imports`]: the host capabilities behind the WIT imports, and the
//!   locked-down WASI 0.2 granted to components that import it;
//! - [`state`]: per-plugin and per-call store data, fuel and memory limits;
//! - [`engine`], [`cache`]: the shared wasmtime engine and the compile cache;
//! - [`check`]: the `plugins check` command.

mod cache;
mod check;
mod engine;
mod imports;
mod instance;
mod runtime;
mod since_v0_1_0;
mod since_v0_2_0;
mod state;
mod types;
mod versions;

pub use self::check::check_component;
pub use self::runtime::ProviderRuntime;
pub use self::types::{
    CallSetup, CallSetupRequest, CallType, Grant, PluginHealth, PluginState, ProviderError,
    ProviderInfo, Role, RuntimeStats,
};
