//! The one clock. Everything that needs "now" asks here, and what needs a
//! thread's CPU time too.

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

/// CPU time the calling thread has used, in nanoseconds: what provider
/// plugins cost, measured around each poll of their work.
pub fn thread_cpu_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}
