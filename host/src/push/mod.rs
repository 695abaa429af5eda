//! Push URLs: validation against SSRF (`guard`), and the pings that wake a
//! callee's devices (`notify`).

mod guard;
mod notify;

pub use guard::{http_client, validate_push_url};
pub use notify::{Push, PushStats};
