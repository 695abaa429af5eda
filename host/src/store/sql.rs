//! STUB.
use std::sync::Arc;

use crate::config::Config;

use super::Store;

pub struct SqlStore {}

pub async fn connect(_config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    anyhow::bail!("not built yet")
}
