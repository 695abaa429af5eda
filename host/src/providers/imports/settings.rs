//! `settings`: the plugin's own `[plugins.<name>.settings]` table, and nothing else.

use crate::providers::state::CallState;

impl CallState {
    pub fn setting(&self, key: &str) -> Option<String> {
        self.plugin.settings.get(key).cloned()
    }

    pub fn setting_keys(&self) -> Vec<String> {
        self.plugin.settings.keys().cloned().collect()
    }
}
