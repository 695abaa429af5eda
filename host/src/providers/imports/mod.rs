//! The host capabilities behind the WIT imports, written once for every WIT
//! version: each `since_v*` module only converts its generated types and calls
//! these. One module per import; an import that needs state of its own keeps
//! it in a type defined here, held by [`CallState`](super::state::CallState)
//! (per call, like [`log::LogBudget`]) or by
//! [`PluginContext`](super::state::PluginContext) (per plugin).

pub(crate) mod clock;
pub(crate) mod crypto;
pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod settings;
pub(crate) mod wasi;

/// The imports whose WIT did not change since 0.1.0 (types, http, clock, log,
/// settings), implemented for one version's generated bindings: `$b` is that
/// version's `bindings::loopcall::provider` module. Each version still has its
/// own traits (the WIT package version is part of every name), but one body.
macro_rules! host_imports_since_v0_1_0 {
    ($($b:ident)::+) => {
        impl $($b)::+::types::Host for $crate::providers::state::CallState {}

        impl $($b)::+::http::Host for $crate::providers::state::CallState {
            async fn send(
                &mut self,
                request: $($b)::+::http::Request,
            ) -> wasmtime::Result<Result<$($b)::+::http::Response, $($b)::+::http::HttpError>> {
                let method = match request.method {
                    $($b)::+::http::Method::Get => reqwest::Method::GET,
                    $($b)::+::http::Method::Head => reqwest::Method::HEAD,
                    $($b)::+::http::Method::Post => reqwest::Method::POST,
                    $($b)::+::http::Method::Put => reqwest::Method::PUT,
                    $($b)::+::http::Method::Patch => reqwest::Method::PATCH,
                    $($b)::+::http::Method::Delete => reqwest::Method::DELETE,
                };
                let request = $crate::providers::imports::http::HttpRequest {
                    method,
                    url: request.url,
                    headers: request.headers,
                    body: request.body,
                    timeout_ms: request.timeout_ms,
                };
                Ok(match self.http_send(request).await {
                    Ok(response) => Ok($($b)::+::http::Response {
                        status: response.status,
                        headers: response.headers,
                        body: response.body,
                    }),
                    Err($crate::providers::imports::http::HttpFailure::Denied(message)) => Err($($b)::+::http::HttpError::Denied(message)),
                    Err($crate::providers::imports::http::HttpFailure::Timeout) => Err($($b)::+::http::HttpError::Timeout),
                    Err($crate::providers::imports::http::HttpFailure::TooLarge) => Err($($b)::+::http::HttpError::TooLarge),
                    Err($crate::providers::imports::http::HttpFailure::Transport(message)) => Err($($b)::+::http::HttpError::Transport(message)),
                    Err($crate::providers::imports::http::HttpFailure::InvalidRequest(message)) => {
                        Err($($b)::+::http::HttpError::InvalidRequest(message))
                    }
                })
            }
        }

        impl $($b)::+::clock::Host for $crate::providers::state::CallState {
            fn now(&mut self) -> wasmtime::Result<$($b)::+::clock::Datetime> {
                let now = $crate::providers::state::CallState::now(self);
                Ok($($b)::+::clock::Datetime {
                    seconds: now.as_secs(),
                    nanoseconds: now.subsec_nanos(),
                })
            }
        }

        impl $($b)::+::log::Host for $crate::providers::state::CallState {
            fn log(&mut self, level: $($b)::+::log::Level, message: String) -> wasmtime::Result<()> {
                let level = match level {
                    $($b)::+::log::Level::Trace => tracing::Level::TRACE,
                    $($b)::+::log::Level::Debug => tracing::Level::DEBUG,
                    $($b)::+::log::Level::Info => tracing::Level::INFO,
                    $($b)::+::log::Level::Warn => tracing::Level::WARN,
                    $($b)::+::log::Level::Error => tracing::Level::ERROR,
                };
                $crate::providers::state::CallState::log(self, level, &message);
                Ok(())
            }
        }

        impl $($b)::+::settings::Host for $crate::providers::state::CallState {
            fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
                Ok(self.setting(&key))
            }

            fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
                Ok(self.setting_keys())
            }
        }
    };
}
pub(crate) use host_imports_since_v0_1_0;

/// The `crypto` functions of 0.1.0, unchanged since, as methods of one
/// version's `crypto::Host` impl (0.2.0 adds `sign` beside them).
macro_rules! crypto_since_v0_1_0 {
    () => {
        fn hmac_sha1(&mut self, key: Vec<u8>, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
            Ok($crate::providers::state::CallState::hmac_sha1(
                self, &key, &data,
            ))
        }

        fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
            Ok($crate::providers::state::CallState::hmac_sha256(
                self, &key, &data,
            ))
        }

        fn sha256(&mut self, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
            Ok($crate::providers::state::CallState::sha256(self, &data))
        }

        fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
            $crate::providers::state::CallState::random_bytes(self, len)
        }
    };
}
pub(crate) use crypto_since_v0_1_0;
