//! Push URLs: which the server stores and pings (`guard`), and the pings
//! that wake a callee's devices (`notify`), through the push client of `net`.

mod guard;
mod notify;

pub use guard::PushRules;
pub use notify::{Push, PushPolicy, PushServerHealth};
