//! The one clock. Everything that needs "now" asks here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds: call progress timers.
pub fn now_ms() -> i64 {
    now_precise().as_millis() as i64
}

/// Unix time with nanoseconds, for plugins' clock import.
pub fn now_precise() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
