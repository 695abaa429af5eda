//! `log`: the host's tracing, under the plugin's name, bounded per call.

use crate::providers::state::CallState;

/// Log lines one call may write before the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 64;
/// Longest log message kept; the rest is cut.
const MAX_LOG_MESSAGE_BYTES: usize = 2048;

/// Lines written by the current call.
#[derive(Default)]
pub(crate) struct LogBudget {
    lines: u32,
}

impl CallState {
    pub fn log(&mut self, level: tracing::Level, message: &str) {
        self.log.lines += 1;
        let plugin = self.plugin.name.as_str();
        if self.log.lines > MAX_LOG_LINES_PER_CALL {
            if self.log.lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(target: "loop_server::plugin", plugin, "plugin logs too much; dropping its further lines for this call");
            }
            return;
        }
        let message = sanitize_log(message);
        match level {
            tracing::Level::ERROR => {
                tracing::error!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "loop_server::plugin", plugin, "{message}")
            }
            tracing::Level::TRACE => {
                tracing::trace!(target: "loop_server::plugin", plugin, "{message}")
            }
        }
    }
}

/// One line, bounded length: a plugin cannot forge log lines or flood them.
pub(crate) fn sanitize_log(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_LOG_MESSAGE_BYTES) + 3);
    for ch in message.chars() {
        if out.len() + ch.len_utf8() > MAX_LOG_MESSAGE_BYTES {
            out.push('…');
            break;
        }
        out.push(if ch.is_control() { ' ' } else { ch });
    }
    out
}
