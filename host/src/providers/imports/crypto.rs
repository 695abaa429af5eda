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
