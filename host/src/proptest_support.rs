//! Settings shared by the property tests (the `proptest_*` tests in each
//! module): the Hawk header parser, call URL tokens, JSON bodies and the
//! checks on what plugins return.
//!
//! `cargo test` runs each property a few hundred times. The long run, 600000
//! cases per property (over 10 million inputs in all, in release), is
//! `scripts/proptest-long`: PROPTEST_CASES sets the cases of every property.

use std::future::Future;

use proptest::test_runner::Config;

/// `short_cases` in `cargo test`; PROPTEST_CASES, when set, for every
/// property alike. Failures are saved under `host/proptest-regressions/`
/// and replayed first on later runs.
pub(crate) fn config(short_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(short_cases);
    Config {
        cases,
        ..Config::default()
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// Runs a future to completion on this test thread's runtime, built once:
/// properties that drive a router run thousands of requests.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}
