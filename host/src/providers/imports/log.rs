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
        // Measured as written: a two-byte control character becomes one space.
        let ch = if ch.is_control() { ' ' } else { ch };
        if out.len() + ch.len_utf8() > MAX_LOG_MESSAGE_BYTES {
            out.push('…');
            break;
        }
        out.push(ch);
    }
    out
}

/// Properties of plugin log lines; the long run is in `proptest_support`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    proptest! {
        #![proptest_config(config(1000))]

        /// Whatever a plugin logs comes out as one bounded line: control
        /// characters (newlines too) become spaces, and a long message is cut
        /// on a character boundary.
        #[test]
        fn proptest_plugin_log_lines_are_bounded(message in prop_oneof![
            "(?s).{0,64}",
            (0usize..3000, "(?s).").prop_map(|(n, c)| c.repeat(n)),
        ]) {
            let line = sanitize_log(&message);
            prop_assert!(line.len() <= MAX_LOG_MESSAGE_BYTES + '…'.len_utf8());
            prop_assert!(!line.chars().any(char::is_control));
            let kept: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if line != kept {
                let cut = line.strip_suffix('…');
                prop_assert!(cut.is_some_and(|cut| kept.starts_with(cut)), "{:?}", line);
                prop_assert!(kept.len() > MAX_LOG_MESSAGE_BYTES);
            }
        }
    }
}
