//! The host capabilities behind the WIT imports, written once for every WIT
//! version: each `since_v*` module only converts its generated types and calls
//! these. One module per import; an import that needs state of its own keeps
//! it in a type defined here, held by [`CallState`](super::state::CallState)
//! (per call, like [`log::LogBudget`]) or by
//! [`PluginContext`](super::state::PluginContext) (per plugin).

pub(crate) mod clock;
pub(crate) mod crypto;
pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod settings;
