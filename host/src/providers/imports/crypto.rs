//! `crypto`: MACs, hashes and random bytes from the host's secure generator.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::providers::state::{CallState, HostStop};

/// Most bytes `random-bytes` hands out at once (the WIT contract's limit).
const MAX_RANDOM_BYTES: u32 = 1024;

impl CallState {
    pub fn hmac_sha1(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn hmac_sha256(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn sha256(&self, data: &[u8]) -> Vec<u8> {
        Sha256::digest(data).to_vec()
    }

    pub fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        if len > MAX_RANDOM_BYTES {
            self.stop = Some(HostStop::RandomTooLarge);
            wasmtime::bail!(
                "random-bytes: asked for {len} bytes, at most {MAX_RANDOM_BYTES} allowed"
            );
        }
        let mut bytes = vec![0u8; len as usize];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Ok(bytes)
    }
}

/// The signature algorithms of `crypto.sign` (JWS names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SigningAlgorithm {
    Rs256,
    Es256,
}

/// Longest PEM `crypto.sign` reads: an 8192-bit RSA key is under 7 KiB.
const MAX_PEM_BYTES: usize = 16 * 1024;
/// Most data one `crypto.sign` signs (a JWT's header and claims).
const MAX_SIGNED_BYTES: usize = 64 * 1024;
/// Parsed keys kept per plugin; a plugin normally has one or two.
const MAX_CACHED_KEYS: usize = 16;

enum KeyPair {
    Rsa(ring::signature::RsaKeyPair),
    Ecdsa(ring::signature::EcdsaKeyPair),
}

/// A parsed key's name: its algorithm and the SHA-256 of its PEM.
type KeyId = (SigningAlgorithm, [u8; 32]);

/// A plugin's parsed private keys, by algorithm and SHA-256 of the PEM. Parsing
/// an RSA key costs far more than signing with it, and plugins pass the same
/// PEM setting on every call.
#[derive(Default)]
pub(crate) struct SigningKeys(
    std::sync::Mutex<std::collections::HashMap<KeyId, std::sync::Arc<KeyPair>>>,
);

impl SigningKeys {
    fn get_or_parse(
        &self,
        algorithm: SigningAlgorithm,
        pem: &str,
    ) -> Result<std::sync::Arc<KeyPair>, String> {
        let id = (algorithm, Sha256::digest(pem.as_bytes()).into());
        let mut keys = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(key) = keys.get(&id) {
            return Ok(key.clone());
        }
        let key = std::sync::Arc::new(parse_key(algorithm, pem)?);
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(id, key.clone());
        Ok(key)
    }
}

/// Reads a PKCS#8 PEM private key for `algorithm`. Errors never quote the key.
fn parse_key(algorithm: SigningAlgorithm, pem: &str) -> Result<KeyPair, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;

    if pem.len() > MAX_PEM_BYTES {
        return Err(format!("the key is longer than {MAX_PEM_BYTES} bytes"));
    }
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        "not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----); convert one with \
         `openssl pkcs8 -topk8 -nocrypt`"
            .to_owned()
    })?;
    match algorithm {
        SigningAlgorithm::Rs256 => ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map(KeyPair::Rsa)
            .map_err(|err| format!("not a usable RSA private key for RS256 ({err})")),
        SigningAlgorithm::Es256 => ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map(KeyPair::Ecdsa)
        .map_err(|err| format!("not a usable P-256 private key for ES256 ({err})")),
    }
}

impl CallState {
    /// `crypto.sign`: the raw JWS signature of `data`, or why the key is
    /// unusable. An RSA-2048 signature takes half a millisecond of CPU or
    /// more (a key's first parse longer), too long for an executor thread
    /// that serves other requests meanwhile, so it runs on the blocking pool;
    /// its CPU time is the plugin's.
    pub async fn sign(
        &mut self,
        algorithm: SigningAlgorithm,
        pem: String,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let plugin = self.plugin.clone();
        let (signature, cpu_ns) = tokio::task::spawn_blocking(move || {
            let before = crate::clock::thread_cpu_ns();
            let signature = sign(&plugin.signing_keys, algorithm, &pem, &data);
            let cpu_ns = crate::clock::thread_cpu_ns().saturating_sub(before);
            (signature, cpu_ns)
        })
        .await
        .map_err(|err| wasmtime::format_err!("crypto.sign did not finish: {err}"))?;
        self.offloaded_cpu_ns += cpu_ns;
        Ok(signature)
    }
}

fn sign(
    keys: &SigningKeys,
    algorithm: SigningAlgorithm,
    pem: &str,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    if data.len() > MAX_SIGNED_BYTES {
        return Err(format!(
            "at most {MAX_SIGNED_BYTES} bytes can be signed at once"
        ));
    }
    let key = keys.get_or_parse(algorithm, pem)?;
    let rng = ring::rand::SystemRandom::new();
    match &*key {
        KeyPair::Rsa(key) => {
            let mut signature = vec![0; key.public().modulus_len()];
            key.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                data,
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_owned())?;
            Ok(signature)
        }
        KeyPair::Ecdsa(key) => key
            .sign(&rng, data)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| "ECDSA signing failed".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{self, KeyPair as _, UnparsedPublicKey};

    use super::*;

    const RSA_PEM: &str = include_str!("../../../../tests/fixtures/test-rsa-2048.pem");
    const EC_PEM: &str = include_str!("../../../../tests/fixtures/test-ec-p256.pem");

    fn public_key(keys: &SigningKeys, algorithm: SigningAlgorithm, pem: &str) -> Vec<u8> {
        match &*keys.get_or_parse(algorithm, pem).unwrap() {
            KeyPair::Rsa(key) => key.public_key().as_ref().to_vec(),
            KeyPair::Ecdsa(key) => key.public_key().as_ref().to_vec(),
        }
    }

    #[test]
    fn rs256_signatures_verify_with_the_public_key() {
        let keys = SigningKeys::default();
        let data = b"header.payload";
        let sig = sign(&keys, SigningAlgorithm::Rs256, RSA_PEM, data).unwrap();
        assert_eq!(sig.len(), 256);
        let public = public_key(&keys, SigningAlgorithm::Rs256, RSA_PEM);
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public)
            .verify(data, &sig)
            .expect("a valid RS256 signature");
    }

    #[test]
    fn es256_signatures_are_fixed_size_and_verify() {
        let keys = SigningKeys::default();
        let data = b"header.payload";
        let sig = sign(&keys, SigningAlgorithm::Es256, EC_PEM, data).unwrap();
        assert_eq!(sig.len(), 64, "r||s, not DER");
        let public = public_key(&keys, SigningAlgorithm::Es256, EC_PEM);
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(data, &sig)
            .expect("a valid ES256 signature");
    }

    #[test]
    fn unusable_keys_are_refused_without_quoting_them() {
        let keys = SigningKeys::default();
        for (algorithm, pem) in [
            (SigningAlgorithm::Rs256, EC_PEM),
            (SigningAlgorithm::Es256, RSA_PEM),
            (
                SigningAlgorithm::Rs256,
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
            (SigningAlgorithm::Rs256, "not a key"),
        ] {
            let err = sign(&keys, algorithm, pem, b"x").unwrap_err();
            let body = pem.lines().nth(1).unwrap_or(pem);
            assert!(!err.contains(body), "{err}");
            assert!(!err.is_empty());
        }
        let huge = "A".repeat(MAX_PEM_BYTES + 1);
        assert!(sign(&keys, SigningAlgorithm::Rs256, &huge, b"x").is_err());
        let too_much = vec![0; MAX_SIGNED_BYTES + 1];
        assert!(sign(&keys, SigningAlgorithm::Rs256, RSA_PEM, &too_much).is_err());
    }

    #[test]
    fn a_key_is_parsed_once() {
        let keys = SigningKeys::default();
        sign(&keys, SigningAlgorithm::Rs256, RSA_PEM, b"a").unwrap();
        let first = keys.get_or_parse(SigningAlgorithm::Rs256, RSA_PEM).unwrap();
        sign(&keys, SigningAlgorithm::Rs256, RSA_PEM, b"b").unwrap();
        let again = keys.get_or_parse(SigningAlgorithm::Rs256, RSA_PEM).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again));
    }
}
