//! Compiled components on disk under `<data_dir>/plugin-cache/`, so a restart
//! does not recompile every plugin.
//!
//! A cache file is native code that the server maps and runs, so it is only
//! loaded if it carries a valid HMAC-SHA256 made with a server secret: write
//! access to the data directory alone (a backup restored from elsewhere, a
//! shared volume, another local user) must not become code execution in the
//! server. The MAC covers the file name (the component's digest and the
//! engine's compatibility key) and every byte of the compiled code, so a valid
//! file can neither be altered nor swapped in for another component. A file
//! that fails the check is never deserialised: the component is recompiled,
//! with a warning, and the file replaced.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::types::wasm_error;

/// Length of the MAC that starts every cache file.
const TAG_LEN: usize = 32;
/// Largest cache file read. Compiled code is a small multiple of the
/// component's size; anything far larger was planted, and reading it whole
/// before the MAC check would let it exhaust memory at start-up.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Domain separation: the key may only ever authenticate cache files.
const MAC_CONTEXT: &[u8] = b"loop plugin-cache v1\0";

/// Why a component has to be compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// No cache file.
    Compiled,
    /// A cache file that failed the MAC check (or that wasmtime refused):
    /// compiled again, the file replaced.
    Recompiled,
}

pub(crate) struct CompileCache {
    dir: PathBuf,
    /// Hex digest of wasmtime's compatibility hash: its version, target,
    /// tunables and features, everything that makes compiled code reusable.
    engine_key: String,
    mac_key: Vec<u8>,
}

impl CompileCache {
    /// `mac_key` is a server secret (never logged) that authenticates the files.
    pub(crate) fn new(data_dir: &Path, engine: &Engine, mac_key: Vec<u8>) -> Self {
        let mut hasher = DigestHasher(Sha256::new());
        // Includes wasmtime's exact crate version (its `module_version`).
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..12]);
        Self {
            dir: data_dir.join("plugin-cache"),
            engine_key,
            mac_key,
        }
    }

    /// The cached component for `digest`, or how it will have to be made:
    /// [`Origin::Compiled`] when nothing is cached, [`Origin::Recompiled`]
    /// when what is cached cannot be used.
    pub(crate) fn lookup(&self, engine: &Engine, digest: &[u8; 32]) -> Result<Component, Origin> {
        let name = self.file_name(digest);
        let path = self.dir.join(&name);
        // Read into memory rather than mapping the file: another process
        // replacing or truncating it after the check must not change the code.
        let Ok(file) = read_bounded(&path) else {
            return Err(Origin::Compiled);
        };
        match file.as_deref().and_then(|file| self.authentic(&name, file)) {
            Some(compiled) => {
                // SAFETY: `compiled` carries a MAC made with this server's
                // secret over this file name and these exact bytes, so it
                // was written by `store` from `precompile_component`
                // output; wasmtime still checks its header and engine.
                match unsafe { Component::deserialize(engine, compiled) } {
                    Ok(component) => return Ok(component),
                    Err(err) => tracing::warn!(
                        path = %path.display(),
                        error = %wasm_error(err),
                        "ignoring unusable compiled code in the plugin cache; recompiling"
                    ),
                }
            }
            None => tracing::warn!(
                path = %path.display(),
                "compiled code in the plugin cache failed its integrity check (altered, \
                 or not written by this server); recompiling instead of loading it"
            ),
        }
        Err(Origin::Recompiled)
    }

    /// Compiles `bytes` and stores the result for the next start.
    pub(crate) fn compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &[u8; 32],
        source: &Path,
    ) -> anyhow::Result<Component> {
        let name = self.file_name(digest);
        let compiled = engine.precompile_component(bytes).map_err(|err| {
            wasm_error(err).context(format!("{} is not a valid component", source.display()))
        })?;
        if let Err(err) = self.store(&name, &compiled) {
            // The cache only saves time; a read-only data dir must not stop the server.
            let path = self.dir.join(&name);
            tracing::warn!(path = %path.display(), error = %err, "cannot write the plugin compile cache");
        }
        // SAFETY: `compiled` was produced by `precompile_component` on this engine just above.
        unsafe { Component::deserialize(engine, &compiled) }.map_err(wasm_error)
    }

    fn file_name(&self, digest: &[u8; 32]) -> String {
        format!("{}-{}.cwasm", hex::encode(digest), self.engine_key)
    }

    fn mac(&self, name: &str, compiled: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.mac_key).expect("HMAC accepts keys of any length");
        mac.update(MAC_CONTEXT);
        mac.update(name.as_bytes());
        mac.update(b"\0");
        mac.update(compiled);
        mac
    }

    /// The compiled code in `file` if its MAC is valid (checked in constant time).
    fn authentic<'f>(&self, name: &str, file: &'f [u8]) -> Option<&'f [u8]> {
        let (tag, compiled) = file.split_at_checked(TAG_LEN)?;
        self.mac(name, compiled).verify_slice(tag).ok()?;
        Some(compiled)
    }

    fn store(&self, name: &str, compiled: &[u8]) -> anyhow::Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.dir.join(name);
        // Write a private temporary file then rename it over the old one, so
        // a concurrent start never reads a half-written file and the cache
        // never holds a file another user could read or change.
        static TEMP: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{name}.tmp{}-{}",
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        let tag = self.mac(name, compiled).finalize().into_bytes();
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            file.write_all(&tag)?;
            file.write_all(compiled)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.with_context(|| format!("writing {}", path.display()))
    }
}

/// The file's bytes, or `None` if it is not a regular file (opening a FIFO
/// would block the start) or is larger than [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    if !std::fs::metadata(path)?.is_file() {
        return Ok(None);
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_FILE_BYTES).then_some(bytes))
}

/// The cache directory, owner-only (0700) even if it already existed wider.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", dir.display()))?;
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

/// Feeds `Hash` implementations into SHA-256, so the cache key is stable
/// across processes (std's `DefaultHasher` is not guaranteed to be).
struct DigestHasher(Sha256);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
