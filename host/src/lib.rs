//! Loop: a server for one-click WebRTC calls.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod limits;
pub mod net;
pub mod providers;
pub mod push;
pub mod reload;
pub mod secrets;
pub mod store;
pub mod telemetry;

#[cfg(test)]
mod proptest_support;
