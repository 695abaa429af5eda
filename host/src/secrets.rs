//! Server secrets generated on first run and kept in the data directory (0600),
//! so the first `cargo run` works with no setup and restarts reuse them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;

pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("secrets"),
        }
    }

    /// The 32-byte secret called `name`, created on first use.
    pub fn get_or_create(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
            "secret name {name:?} has characters not allowed in a file name"
        );
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => {
                return hex::decode(text.trim())
                    .with_context(|| format!("secret file {} is not hex", path.display()));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        }
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut secret = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&path) {
            Ok(mut file) => {
                file.write_all(hex::encode(&secret).as_bytes())?;
                file.sync_all()?;
                tracing::info!(secret = name, dir = %self.dir.display(), "generated a new server secret");
                Ok(secret)
            }
            // Another process created it first: use theirs.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => self.get_or_create(name),
            Err(err) => Err(err).with_context(|| format!("creating {}", path.display())),
        }
    }
}
