//! Hawk credentials the way a Loop client derives them, and pre-signed
//! Authorization headers for wrk.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use hawk::{Credentials, DigestAlgorithm, Key, PayloadHasher, RequestBuilder};
use hkdf::Hkdf;
use rand::Rng;
use sha2::Sha256;

const SESSION_TOKEN_INFO: &[u8] = b"identity.mozilla.com/picl/v1/sessionToken";

/// A device session as a client holds it: the token from `Hawk-Session-Token`
/// and the credentials derived from it.
#[derive(Clone)]
pub struct HawkSession {
    pub id: String,
    /// Lower-case hex; Loop uses this ASCII string itself as the HMAC key.
    key_hex: String,
}

impl std::fmt::Debug for HawkSession {
    // The key signs requests: keep it out of any debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HawkSession")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl HawkSession {
    /// HKDF-SHA256(ikm = token bytes, no salt, info = the Firefox Accounts
    /// session-token label) → 64 bytes: id = hex(0..32), key = hex(32..64).
    pub fn from_token(token_hex: &str) -> anyhow::Result<Self> {
        let token = hex::decode(token_hex.trim()).context("Hawk-Session-Token is not hex")?;
        let mut okm = [0u8; 64];
        Hkdf::<Sha256>::new(None, &token)
            .expand(SESSION_TOKEN_INFO, &mut okm)
            .map_err(|_| anyhow::anyhow!("HKDF cannot produce 64 bytes"))?;
        Ok(Self {
            id: hex::encode(&okm[..32]),
            key_hex: hex::encode(&okm[32..]),
        })
    }

    fn credentials(&self) -> anyhow::Result<Credentials> {
        let key = Key::new(self.key_hex.as_bytes(), DigestAlgorithm::Sha256)
            .context("building the Hawk key")?;
        Ok(Credentials {
            id: self.id.clone(),
            key,
        })
    }
}

/// What a signed request covers besides the nonce and timestamp.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub method: String,
    /// As the server sees it in the Host header.
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
    /// (content type, body): the payload hash is sent, as Firefox's Loop client did.
    pub payload: Option<(String, Vec<u8>)>,
}

/// Signs requests for one session; `make` is cheap enough for hundreds of
/// thousands of headers per second.
pub struct Signer {
    credentials: Credentials,
    request: SignedRequest,
    hash: Option<Vec<u8>>,
}

impl Signer {
    pub fn new(session: &HawkSession, request: SignedRequest) -> anyhow::Result<Self> {
        let hash = match &request.payload {
            Some((content_type, body)) => Some(
                PayloadHasher::hash(content_type.as_bytes(), DigestAlgorithm::Sha256, body)
                    .context("hashing the payload")?,
            ),
            None => None,
        };
        Ok(Self {
            credentials: session.credentials()?,
            request,
            hash,
        })
    }

    /// The `Authorization` value (`Hawk id=…, ts=…, nonce=…, mac=…[, hash=…]`).
    pub fn make(&self, ts: SystemTime, nonce: &str) -> anyhow::Result<String> {
        let request = RequestBuilder::new(
            &self.request.method,
            &self.request.host,
            self.request.port,
            &self.request.path,
        )
        .hash(self.hash.as_deref())
        .request();
        let header = request
            .make_header_full(&self.credentials, ts, nonce)
            .context("signing a Hawk header")?;
        Ok(format!("Hawk {header}"))
    }

    /// A header with a fresh random nonce and the current time.
    pub fn make_now(&self) -> anyhow::Result<String> {
        self.make(SystemTime::now(), &random_nonce_prefix())
    }
}

/// 8 random alphanumerics. Followed by a counter, it makes nonces that are
/// unique within a file and, with overwhelming probability, across files.
pub fn random_nonce_prefix() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect()
}

/// Writes `per_thread` signed Authorization values into each of
/// `<prefix>.0` … `<prefix>.<threads-1>` (one per wrk thread), every nonce
/// distinct, all timestamped now. Returns the files.
pub fn write_signed_files(
    signer: &Signer,
    prefix: &Path,
    threads: u32,
    per_thread: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    let nonce_prefix = random_nonce_prefix();
    let ts = SystemTime::now();
    let mut counter: u64 = 0;
    let mut files = Vec::new();
    for thread in 0..threads {
        let path = PathBuf::from(format!("{}.{thread}", prefix.display()));
        let mut out = BufWriter::new(
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for _ in 0..per_thread {
            let header = signer.make(ts, &format!("{nonce_prefix}{counter:x}"))?;
            counter += 1;
            out.write_all(header.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_distinct_hex_id_and_key_from_a_token() {
        let session = HawkSession::from_token(&"ab".repeat(32)).unwrap();
        assert_eq!(session.id.len(), 64);
        assert_eq!(session.key_hex.len(), 64);
        assert_ne!(session.id, session.key_hex);
        assert!(HawkSession::from_token("not hex").is_err());
    }

    #[test]
    fn headers_verify_with_the_derived_key_and_not_another() {
        let session = HawkSession::from_token(&"5a".repeat(32)).unwrap();
        let body = br#"{"callerId":"alice@example.com"}"#.to_vec();
        let request = SignedRequest {
            method: "POST".into(),
            host: "127.0.0.1".into(),
            port: 5000,
            path: "/call-url".into(),
            payload: Some(("application/json".into(), body.clone())),
        };
        let value = Signer::new(&session, request).unwrap().make_now().unwrap();
        let header: hawk::Header = value.strip_prefix("Hawk ").unwrap().parse().unwrap();
        let hash = PayloadHasher::hash("application/json", DigestAlgorithm::Sha256, &body).unwrap();
        let server_view = RequestBuilder::new("POST", "127.0.0.1", 5000, "/call-url")
            .hash(&hash[..])
            .request();
        let skew = std::time::Duration::from_secs(60);
        assert!(server_view.validate_header(&header, &session.credentials().unwrap().key, skew));
        let other = HawkSession::from_token(&"5b".repeat(32)).unwrap();
        assert!(!server_view.validate_header(&header, &other.credentials().unwrap().key, skew));
    }

    #[test]
    fn signed_files_never_repeat_a_nonce() {
        let session = HawkSession::from_token(&"01".repeat(32)).unwrap();
        let request = SignedRequest {
            method: "POST".into(),
            host: "127.0.0.1".into(),
            port: 5000,
            path: "/call-url".into(),
            payload: Some(("application/json".into(), b"{}".to_vec())),
        };
        let signer = Signer::new(&session, request).unwrap();
        let dir = std::env::temp_dir().join(format!("loop-bench-sign-{}", random_nonce_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = write_signed_files(&signer, &dir.join("signed"), 2, 500).unwrap();
        let mut nonces = std::collections::HashSet::new();
        for file in &files {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                assert!(line.starts_with("Hawk id=\""), "{line}");
                assert!(line.contains("hash=\""), "{line}");
                let nonce = line
                    .split("nonce=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_string();
                assert!(nonces.insert(nonce), "nonce repeated");
            }
        }
        assert_eq!(nonces.len(), 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
