//! What Loop does, apart from how it is asked: registering devices, handing
//! out call URLs, placing calls and listing them, forgetting accounts.
//!
//! The HTTP handlers in `api/` parse a request, call one function here and
//! render its answer; the progress websocket and rooms call the same
//! functions, so every rule (a call URL's expiry, who may touch it, which
//! sessions a deletion ends) lives in one place.

pub mod account;
pub mod call_urls;
pub mod calls;
pub mod ice;
pub mod progress;
pub mod registration;
pub mod signaling;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// A fresh random token of `bytes` bytes, URL-safe base64 without padding.
/// Call URL tokens, call ids and websocket tokens are capabilities: they come
/// from the OS generator and never from user data.
pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// [`random_token`] after the time it was made (Unix milliseconds, 12 hex
/// digits), so that tokens kept under a unique index sort by age: a new one
/// goes at the end of the index instead of on a random page of it, and a
/// round of new rows shares one page of the index where each used to need
/// its own (a 4 KB WAL frame per row; BENCHMARKS.md). For ids that are not
/// secret from whoever learns the time: a call's id, which its callee sees
/// listed with its creation time anyway.
pub(crate) fn time_ordered_token(random_bytes: usize) -> String {
    format!(
        "{:012x}{}",
        crate::clock::now_ms().max(0),
        random_token(random_bytes)
    )
}
