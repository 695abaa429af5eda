//! Server secrets: given by the operator (`[secrets]` in the configuration or
//! `LOOP_SECRETS__*` variables, as container deployments pass them), or else
//! generated on first run into `<data_dir>/secrets/` and reused afterwards, so
//! that the first `cargo run` works with no setup.
//!
//! Several processes may start at once on a fresh data directory, so a secret
//! file is never visible half-written: it is written and synced under a
//! temporary name, then linked into place, which fails if another process
//! linked its own first (whose secret everybody then reads).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;

use crate::config::Config;

/// Every server secret is 32 random bytes (64 hex digits).
pub const SECRET_BYTES: usize = 32;

/// A secret of the host itself, as opposed to one generated for a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostSecret {
    /// Key of the HMAC that turns Hawk ids and FxA identities into storage
    /// keys. Every instance sharing a database needs the same one.
    HawkIdKey,
    /// Key of the MAC over each compiled plugin in the compile cache: code
    /// whose MAC does not check out is compiled again, never loaded.
    PluginCacheKey,
    /// The TURN server's shared secret (coturn's `static-auth-secret`), key
    /// of the HMAC that makes each side's ephemeral TURN credentials. Text,
    /// not bytes: see [`Secrets::turn_secret`].
    TurnSecret,
}

impl HostSecret {
    /// The key under `[secrets]` that sets it.
    pub fn config_key(self) -> &'static str {
        match self {
            HostSecret::HawkIdKey => "hawk_id_key",
            HostSecret::PluginCacheKey => "plugin_cache_key",
            HostSecret::TurnSecret => "turn_secret",
        }
    }

    /// Its file under `<data_dir>/secrets/` when generated. Kept from the
    /// first release, so existing data directories keep their sessions.
    fn file_name(self) -> &'static str {
        match self {
            HostSecret::HawkIdKey => "hawk-id-hmac",
            HostSecret::PluginCacheKey => "plugin-cache-mac",
            HostSecret::TurnSecret => "turn-secret",
        }
    }
}

pub struct Secrets {
    dir: PathBuf,
    /// Secrets the operator gave, decoded, by `[secrets]` key.
    configured: BTreeMap<&'static str, Vec<u8>>,
    /// `secrets.turn_secret`, text.
    turn_secret: Option<String>,
}

impl Secrets {
    /// Secrets generated into (or read from) `<data_dir>/secrets/` only.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("secrets"),
            configured: BTreeMap::new(),
            turn_secret: None,
        }
    }

    /// The operator's `[secrets]`, checked, with the data directory for the rest.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut secrets = Self::new(&config.server.data_dir);
        for (key, value) in config.secrets.given() {
            let secret = decode(value.trim()).with_context(|| format!("secrets.{key}"))?;
            secrets.configured.insert(key, secret);
        }
        secrets.turn_secret = config.secrets.turn_secret.clone();
        Ok(secrets)
    }

    /// A host secret: the configured one, else the generated one.
    pub fn host(&self, secret: HostSecret) -> anyhow::Result<Vec<u8>> {
        if secret == HostSecret::TurnSecret {
            return self.turn_secret().map(String::into_bytes);
        }
        match self.configured.get(secret.config_key()) {
            Some(value) => Ok(value.clone()),
            None => self.get_or_create(secret.file_name()),
        }
    }

    /// The TURN shared secret as the text both Loop and the TURN server key
    /// their HMAC with: `secrets.turn_secret` as written, else the generated
    /// `<data_dir>/secrets/turn-secret`, whose 64 hex digits are the text
    /// (so its content can be given to coturn as `static-auth-secret`).
    pub fn turn_secret(&self) -> anyhow::Result<String> {
        match &self.turn_secret {
            Some(secret) => Ok(secret.clone()),
            None => Ok(hex::encode(
                self.get_or_create(HostSecret::TurnSecret.file_name())?,
            )),
        }
    }

    /// The secret kept in the file `name`, created on first use.
    pub fn get_or_create(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                && !name.starts_with('.'),
            "secret name {name:?} has characters not allowed in a file name"
        );
        let path = self.dir.join(name);
        if let Some(secret) = read(&path)? {
            return Ok(secret);
        }
        create_secrets_dir(&self.dir)?;
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        // tempfile creates it 0600 under a random name in the same folder.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("creating a secret in {}", self.dir.display()))?;
        file.write_all(hex::encode(&secret).as_bytes())?;
        file.as_file().sync_all()?;
        match file.persist_noclobber(&path) {
            Ok(_) => {
                sync_dir(&self.dir)?;
                tracing::info!(secret = name, dir = %self.dir.display(), "generated a new server secret");
                Ok(secret)
            }
            // Another process linked its secret first: everybody uses that one.
            Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => {
                read(&path)?.with_context(|| format!("{} vanished while starting", path.display()))
            }
            Err(err) => Err(err.error).with_context(|| format!("creating {}", path.display())),
        }
    }
}

/// The secret in `path`, if the file exists; an error if it is not 32 bytes of hex.
fn read(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match fs::read_to_string(path) {
        Ok(text) => decode(text.trim())
            .with_context(|| format!("secret file {}", path.display()))
            .map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// A secret given as hex: exactly 32 bytes.
pub fn decode(hex_text: &str) -> anyhow::Result<Vec<u8>> {
    let secret = hex::decode(hex_text)
        .map_err(|_| anyhow::anyhow!("must be {} hex digits", 2 * SECRET_BYTES))?;
    anyhow::ensure!(
        secret.len() == SECRET_BYTES,
        "must be {} hex digits ({SECRET_BYTES} bytes), not {}",
        2 * SECRET_BYTES,
        hex_text.len()
    );
    Ok(secret)
}

/// Creates `dir` and its missing parents readable by this user only
/// (whatever the umask says); an existing folder keeps its mode.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Whether users other than the owner can enter or read `path`.
pub fn is_shared(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    false
}

/// The secrets folder: created owner-only, and tightened if an older
/// release or a copy left it open to others, since it holds keys.
fn create_secrets_dir(dir: &Path) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    #[cfg(unix)]
    if is_shared(dir) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Makes a new directory entry durable, so a secret that was handed out
/// survives a power loss.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_threads_on_a_fresh_folder_get_one_whole_secret() {
        // Fresh folders, many racers each time: a reader that could see a
        // file before it is written would get an empty or short secret here.
        for _ in 0..20 {
            let data = tempfile::tempdir().unwrap();
            let got: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..8)
                    .map(|_| scope.spawn(|| Secrets::new(data.path()).get_or_create("k").unwrap()))
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert_eq!(got[0].len(), SECRET_BYTES);
            assert!(got.iter().all(|secret| secret == &got[0]));
            // Only the secret is left: no temporary files.
            let names: Vec<_> = fs::read_dir(data.path().join("secrets"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            assert_eq!(names, ["k"]);
        }
    }

    #[test]
    fn secrets_of_the_wrong_length_are_refused() {
        let data = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(data.path());
        create_secrets_dir(&secrets.dir).unwrap();
        for (content, why) in [
            ("", "64 hex digits"),
            ("abcd", "64 hex digits (32 bytes), not 4"),
            ("zz", "64 hex digits"),
        ] {
            fs::write(secrets.dir.join("short"), content).unwrap();
            let err = format!("{:#}", secrets.get_or_create("short").unwrap_err());
            assert!(err.contains(why) && err.contains("short"), "{err}");
        }
    }

    #[test]
    fn the_turn_secret_is_text_given_or_the_generated_files_hex() {
        let data = tempfile::tempdir().unwrap();
        let generated = Secrets::new(data.path()).turn_secret().unwrap();
        let file = fs::read_to_string(data.path().join("secrets/turn-secret")).unwrap();
        assert_eq!(
            generated, file,
            "the file's text is what coturn must be given"
        );
        assert_eq!(generated.len(), 2 * SECRET_BYTES);
        let mut config = Config::default();
        config.server.data_dir = data.path().to_path_buf();
        config.secrets.turn_secret = Some("not-hex-but-fine!".into());
        let given = Secrets::from_config(&config).unwrap();
        assert_eq!(given.turn_secret().unwrap(), "not-hex-but-fine!");
        assert_eq!(
            given.host(HostSecret::TurnSecret).unwrap(),
            b"not-hex-but-fine!"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_secrets_folder_and_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(data.path());
        secrets.get_or_create("k").unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secrets.dir), 0o700);
        assert_eq!(mode(&secrets.dir.join("k")), 0o600);
    }
}
