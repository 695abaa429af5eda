//! ICE servers for the self-hosted provider's peer-to-peer calls: the STUN
//! and TURN servers of `[ice]`, handed to each side of a call as
//! `iceServers` (a list of WebRTC `RTCIceServer`s), with TURN credentials
//! made for that side at answer time and never stored.
//!
//! The credentials are coturn's `use-auth-secret` ("TURN REST API") form:
//! username `<expiry unix seconds>:<identity>`, credential
//! base64(HMAC-SHA1(shared secret, username)). The TURN server recomputes the
//! HMAC with the same secret (`static-auth-secret`) and refuses the username
//! once its expiry has passed.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::secrets::Secrets;

/// The longest identity put into a TURN username as it is. TURN usernames
/// are at most 513 bytes and go through SASLprep; caller ids are free text
/// of up to 255 characters, so a longer or non-ASCII one is replaced by a
/// digest of it.
const MAX_PLAIN_IDENTITY_BYTES: usize = 128;

/// One `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `[ice]` with the TURN secret, loaded once.
pub struct Ice {
    stun_urls: Vec<String>,
    turn_urls: Vec<String>,
    /// Set when there are TURN servers: only then is a secret needed (and,
    /// if none is given, generated).
    turn_secret: Option<String>,
}

impl Ice {
    pub fn new(config: &Config, secrets: &Secrets) -> anyhow::Result<Self> {
        let turn_secret = if config.ice.turn_urls.is_empty() {
            None
        } else {
            Some(secrets.turn_secret()?)
        };
        Ok(Ice {
            stun_urls: config.ice.stun_urls.clone(),
            turn_urls: config.ice.turn_urls.clone(),
            turn_secret,
        })
    }

    /// The ICE servers for `identity`, with TURN credentials valid until
    /// `expires_at` (Unix seconds). Empty when `[ice]` lists none.
    pub fn servers(&self, identity: &str, expires_at: i64) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(secret) = &self.turn_secret {
            let username = format!("{expires_at}:{}", turn_identity(identity));
            let credential = turn_credential(secret, &username);
            servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

/// base64(HMAC-SHA1(secret, username)), as coturn computes it.
pub fn turn_credential(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The identity as it goes into a TURN username: as it is when it is short
/// printable ASCII, else `sha256-` and the base64url of its SHA-256 (stable
/// for one identity, so the TURN server's per-user quotas still apply).
pub fn turn_identity(identity: &str) -> String {
    let plain = identity.len() <= MAX_PLAIN_IDENTITY_BYTES
        && !identity.is_empty()
        && identity.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if plain {
        identity.to_string()
    } else {
        let digest = Sha256::digest(identity.as_bytes());
        format!(
            "sha256-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ice(stun: &[&str], turn: &[&str], secret: Option<&str>) -> Ice {
        Ice {
            stun_urls: stun.iter().map(|s| s.to_string()).collect(),
            turn_urls: turn.iter().map(|s| s.to_string()).collect(),
            turn_secret: secret.map(str::to_string),
        }
    }

    #[test]
    fn the_credential_is_coturns_rest_form() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        assert_eq!(
            turn_credential("Jefe", "what do ya want for nothing?"),
            base64::engine::general_purpose::STANDARD
                .encode(hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap())
        );
        let servers = ice(
            &["stun:stun.example.com"],
            &["turn:turn.example.com:3478?transport=udp"],
            Some("s3cret-s3cret-s3cret"),
        )
        .servers("alice", 1_700_000_000);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, ["stun:stun.example.com"]);
        assert_eq!(servers[0].username, None);
        let turn = &servers[1];
        assert_eq!(turn.username.as_deref(), Some("1700000000:alice"));
        assert_eq!(
            turn.credential.as_deref(),
            Some(turn_credential("s3cret-s3cret-s3cret", "1700000000:alice").as_str())
        );
    }

    #[test]
    fn no_servers_configured_gives_an_empty_list() {
        assert!(ice(&[], &[], None).servers("bob", 1).is_empty());
    }

    #[test]
    fn identities_unfit_for_a_turn_username_are_digested() {
        assert_eq!(turn_identity("alice@example.com"), "alice@example.com");
        for odd in ["ünïcode", "", "tab\there", &"x".repeat(129)] {
            let digested = turn_identity(odd);
            assert!(digested.starts_with("sha256-"), "{odd:?}: {digested}");
            assert_eq!(digested, turn_identity(odd), "stable");
            assert!(digested.len() < 64);
        }
    }
}
