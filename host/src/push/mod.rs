//! Push URLs: validation against SSRF, and the pings that wake a callee. STUB.

use std::time::Duration;

use crate::config::Config;

/// The one outbound HTTP client.
pub fn http_client(_config: &Config) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

pub struct Push {}

impl Push {
    pub fn new(_config: &Config, _http: reqwest::Client) -> Self {
        Self {}
    }
}
