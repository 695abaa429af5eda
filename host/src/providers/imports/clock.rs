//! `clock`: wall-clock time.

use std::time::Duration;

use crate::providers::state::CallState;

impl CallState {
    pub fn now(&self) -> Duration {
        crate::clock::now_precise()
    }
}
