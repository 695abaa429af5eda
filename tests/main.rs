//! Loop's black-box test suite: the real `loop-server` binary over real HTTP,
//! real SQLite and PostgreSQL, real plugin components, a real browser.
//!
//! One crate whose modules are the files of this folder, so the suite is
//! linked once. A new test file is one more `mod` line below.

mod common;

mod api;
mod auth;
mod browser;
mod config;
mod crash;
mod errors;
mod faults;
mod metrics;
mod multi_instance;
mod net;
mod openapi;
mod plugin_languages;
mod progress;
mod provider_choice;
mod providers;
mod rate_limits;
mod registration;
mod reload;
mod signaling;
mod store;
mod vendor_daily;
mod vendor_jitsi;
mod vendor_livekit;
mod vendor_opentok;
mod vendor_twilio;
mod vendor_vonage;
