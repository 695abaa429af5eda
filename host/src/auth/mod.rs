//! Hawk device sessions and BrowserID. STUB.

use crate::config::Config;
use crate::secrets::Secrets;

pub struct Auth {}

impl Auth {
    pub fn new(_config: &Config, _secrets: &Secrets, _http: reqwest::Client) -> anyhow::Result<Self> {
        Ok(Self {})
    }
}
