//! One plugin and its instances: a fresh instance per call under the plugin's
//! limits, the checks on what an export returns, and the classification of
//! every way a call can fail into the error the caller sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Engine, Store, Trap};

use super::state::{CallState, FUEL_PER_CPU_MS, HostStop, PluginContext, fuel_budget};
use super::types::{
    Grant, GuestError, ProviderError, ProviderInfo, Session, SessionRequest, TokenRequest,
    wasm_error,
};
use super::versions::{PluginInstance, PluginPre};
use crate::config::PluginLimits;

/// Longest message from a plugin's own error kept in logs and errors.
const MAX_GUEST_MESSAGE_BYTES: usize = 512;

/// Why a plugin call did not produce a result.
#[derive(Debug)]
pub(crate) enum Failure {
    Guest(GuestError),
    Stopped(HostStop),
    WallTime,
    Oversized {
        what: &'static str,
        len: usize,
    },
    Invalid(String),
    /// The plugin called `wasi:cli/exit`.
    Exited(i32),
    Wasm(String),
}

impl Failure {
    /// The `outcome` label of `loop_provider_calls_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Failure::Guest(GuestError::Misconfigured(_)) => "misconfigured",
            Failure::Guest(GuestError::Unavailable(_)) => "unavailable",
            Failure::Guest(GuestError::Rejected(_)) => "rejected",
            Failure::Stopped(HostStop::Cpu) => "cpu",
            Failure::Stopped(HostStop::Memory) => "memory",
            Failure::WallTime | Failure::Stopped(HostStop::WallTime) => "wall",
            // The plugin broke the contract: a trap, or a result we refuse.
            Failure::Stopped(HostStop::RandomTooLarge)
            | Failure::Oversized { .. }
            | Failure::Invalid(_)
            | Failure::Exited(_)
            | Failure::Wasm(_) => "trap",
        }
    }
}

pub(crate) struct Plugin {
    pub(crate) context: Arc<PluginContext>,
    /// The `plugin` label of its metrics, shared rather than copied per call.
    metric_name: Arc<str>,
    pre: Box<dyn PluginPre>,
    pub(crate) info: ProviderInfo,
    /// Bounds this plugin's concurrent instances to its share of the pool.
    slots: Semaphore,
    /// `providers.max_total_memory_mib`, shared by every plugin, in MiB permits.
    memory: Arc<Semaphore>,
    pub(crate) calls: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) consecutive_failures: AtomicU64,
    /// Wall time spent in this plugin's calls (waiting for a slot,
    /// instantiating, running its exports, its HTTP), in nanoseconds.
    pub(crate) busy_ns: AtomicU64,
    /// CPU time this plugin's calls used (instantiating, its exports, the
    /// host imports they call, signing included), in nanoseconds: what a
    /// plugin costs the server, whatever else the machine is doing.
    pub(crate) cpu_ns: AtomicU64,
    /// Until when (`clock::now_ms`) fallback skips this plugin: it was
    /// unavailable. 0 when it is not cooling down.
    pub(crate) cooling_until_ms: AtomicU64,
}

/// One live plugin instance and the store it runs in.
pub(crate) struct Call<'p> {
    plugin: &'p Plugin,
    instance: Box<dyn PluginInstance>,
    store: Store<CallState>,
    // Last, so the store's memory is back in the pool before it is released.
    _memory: OwnedSemaphorePermit,
}

impl Plugin {
    pub(crate) fn new(
        context: PluginContext,
        pre: Box<dyn PluginPre>,
        memory: Arc<Semaphore>,
    ) -> Self {
        let slots = Semaphore::new(context.limits.max_concurrent_calls as usize);
        Self {
            metric_name: Arc::from(context.name.as_str()),
            context: Arc::new(context),
            pre,
            // Filled by `describe` right after linking.
            info: ProviderInfo::default(),
            slots,
            memory,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            cooling_until_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_cooling_down(&self, now_ms: u64) -> bool {
        self.cooling_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub(crate) fn name(&self) -> &str {
        &self.context.name
    }

    fn limits(&self) -> &PluginLimits {
        &self.context.limits
    }

    pub(crate) fn wall_time(&self) -> Duration {
        Duration::from_millis(self.limits().wall_ms)
    }

    /// Runs `work` on a fresh instance of this plugin, once one of its
    /// concurrent-call slots is free, within its wall time, and records the
    /// outcome as `operation`.
    pub(crate) async fn run<T>(
        &self,
        engine: &Engine,
        operation: &str,
        work: impl AsyncFnOnce(&mut Call<'_>) -> Result<T, Failure>,
    ) -> Result<T, ProviderError> {
        let wall = self.wall_time();
        let started = Instant::now();
        let work = async {
            // Never closed; a caller past its wall time is dropped while waiting.
            let _slot = self.slots.acquire().await.map_err(|_| Failure::WallTime)?;
            let mut call = self.instantiate(engine, started + wall).await?;
            let result = work(&mut call).await;
            // Signing ran on other threads; the instance counted it.
            self.cpu_ns
                .fetch_add(call.store.data().offloaded_cpu_ns, Ordering::Relaxed);
            result
        };
        // The instance runs wherever the executor polls it, so its CPU time
        // is the sum over polls of the polling thread's CPU clock.
        let mut polled_cpu_ns = 0;
        let result = {
            let mut work = std::pin::pin!(work);
            let measured = std::future::poll_fn(|cx| {
                let before = crate::clock::thread_cpu_ns();
                let poll = work.as_mut().poll(cx);
                polled_cpu_ns += crate::clock::thread_cpu_ns().saturating_sub(before);
                poll
            });
            tokio::time::timeout(wall, measured)
                .await
                .unwrap_or(Err(Failure::WallTime))
        };
        self.cpu_ns.fetch_add(polled_cpu_ns, Ordering::Relaxed);
        self.finish(operation, started, result)
    }

    /// A fresh instance, once the plugin's memory limit is free in the total.
    async fn instantiate(
        &self,
        engine: &Engine,
        wall_deadline: Instant,
    ) -> Result<Call<'_>, Failure> {
        let mib = u32::try_from(self.limits().memory_mib).unwrap_or(u32::MAX);
        let memory = self
            .memory
            .clone()
            .acquire_many_owned(mib)
            .await
            .map_err(|_| Failure::WallTime)?;
        let mut store = Store::new(engine, CallState::new(self.context.clone(), wall_deadline));
        store.limiter(|state| state);
        store.epoch_deadline_callback(|mut ctx| ctx.data_mut().on_epoch_deadline());
        store.set_epoch_deadline(1);
        // Also yield after every `FUEL_PER_CPU_MS` of guest work (a millisecond
        // or two), so a plugin cannot hold its thread until the next epoch tick.
        let configured = store
            .fuel_async_yield_interval(Some(FUEL_PER_CPU_MS))
            .and_then(|()| store.set_fuel(fuel_budget(self.limits())));
        if let Err(err) = configured {
            return Err(Failure::Wasm(format!("{:#}", wasm_error(err))));
        }
        // Start functions run during instantiation and count against the first budget.
        let instance = self.pre.instantiate(&mut store).await;
        match instance {
            Ok(instance) => Ok(Call {
                plugin: self,
                instance,
                store,
                _memory: memory,
            }),
            Err(err) => Err(classify(&store, err)),
        }
    }

    fn check_returned(
        &self,
        export: &str,
        what: &'static str,
        value: &str,
        required: bool,
    ) -> Result<(), Failure> {
        check_returned(
            self.limits().max_return_bytes,
            export,
            what,
            value,
            required,
        )
    }

    /// Records the outcome of one call and turns a failure into the caller's error.
    fn finish<T>(
        &self,
        operation: &str,
        started: Instant,
        result: Result<T, Failure>,
    ) -> Result<T, ProviderError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        let busy = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(busy, Ordering::Relaxed);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(failure) => failure.outcome(),
        };
        let labels = [
            (
                "plugin",
                metrics::SharedString::from_shared(self.metric_name.clone()),
            ),
            ("outcome", metrics::SharedString::const_str(outcome)),
        ];
        metrics::counter!("loop_provider_calls_total", &labels).increment(1);
        metrics::histogram!("loop_provider_call_duration_seconds", &labels).record(took);
        let failure = match result {
            Ok(value) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                return Ok(value);
            }
            Err(failure) => failure,
        };
        let provider = self.name().to_owned();
        let limits = self.limits();
        let error = match failure {
            Failure::Guest(GuestError::Misconfigured(message)) => ProviderError::Misconfigured {
                provider,
                message: truncate(message),
            },
            Failure::Guest(GuestError::Unavailable(message)) => ProviderError::Unavailable {
                provider,
                message: truncate(message),
            },
            Failure::Guest(GuestError::Rejected(message)) => ProviderError::Rejected {
                provider,
                message: truncate(message),
            },
            Failure::Stopped(HostStop::Cpu) => ProviderError::Plugin {
                provider,
                message: format!("exceeded its CPU budget of {} ms", limits.cpu_ms),
            },
            Failure::Stopped(HostStop::Memory) => ProviderError::Plugin {
                provider,
                message: format!("exceeded its memory limit of {} MiB", limits.memory_mib),
            },
            Failure::Stopped(HostStop::RandomTooLarge) => ProviderError::Plugin {
                provider,
                message: "asked for more than 1024 random bytes".into(),
            },
            Failure::WallTime | Failure::Stopped(HostStop::WallTime) => ProviderError::TimedOut {
                provider,
                message: format!("exceeded its wall-time budget of {} ms", limits.wall_ms),
            },
            Failure::Oversized { what, len } => ProviderError::Plugin {
                provider,
                message: format!(
                    "returned a {what} of {len} bytes, more than the {} allowed",
                    limits.max_return_bytes
                ),
            },
            Failure::Invalid(message) => ProviderError::Plugin { provider, message },
            Failure::Exited(status) => ProviderError::Plugin {
                provider,
                message: format!("called wasi:cli/exit (status {status}) instead of returning"),
            },
            Failure::Wasm(message) => ProviderError::Plugin {
                provider,
                message: truncate(message),
            },
        };
        // A rejected token is the client's fault, not the plugin's.
        if matches!(error, ProviderError::Rejected { .. }) {
            tracing::debug!(plugin = %self.name(), operation, error = %error, "provider rejected a request");
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = %self.name(), operation, error = %error, "provider plugin call failed");
        }
        Err(error)
    }
}

impl Call<'_> {
    /// Gives the next export call its own full CPU budget.
    fn start_export_call(&mut self) -> Result<(), Failure> {
        self.store
            .set_fuel(fuel_budget(self.plugin.limits()))
            .map_err(|err| Failure::Wasm(format!("{:#}", wasm_error(err))))
    }

    pub(crate) async fn describe(&mut self) -> Result<ProviderInfo, Failure> {
        self.start_export_call()?;
        let info = self
            .instance
            .describe(&mut self.store)
            .await
            .map_err(|err| classify(&self.store, err))?;
        check_info(self.plugin.limits().max_return_bytes, &info)?;
        Ok(info)
    }

    pub(crate) async fn create_session(
        &mut self,
        request: &SessionRequest<'_>,
    ) -> Result<Session, Failure> {
        self.start_export_call()?;
        let session = self
            .instance
            .create_session(&mut self.store, request)
            .await
            .map_err(|err| classify(&self.store, err))?
            .map_err(Failure::Guest)?;
        self.plugin
            .check_returned("create-session", "session id", &session.session_id, true)?;
        self.plugin
            .check_returned("create-session", "api key", &session.api_key, false)?;
        Ok(session)
    }

    pub(crate) async fn issue_token(
        &mut self,
        request: &TokenRequest<'_>,
    ) -> Result<String, Failure> {
        self.start_export_call()?;
        let token = self
            .instance
            .issue_token(&mut self.store, request)
            .await
            .map_err(|err| classify(&self.store, err))?
            .map_err(Failure::Guest)?;
        self.plugin
            .check_returned("issue-token", "token", &token, true)?;
        Ok(token)
    }

    pub(crate) async fn verify_token(
        &mut self,
        token: &str,
        session_id: &str,
    ) -> Result<Grant, Failure> {
        self.start_export_call()?;
        let grant = self
            .instance
            .verify_token(&mut self.store, token, session_id)
            .await
            .map_err(|err| classify(&self.store, err))?
            .map_err(Failure::Guest)?;
        check_grant(
            self.plugin.limits().max_return_bytes,
            &grant,
            session_id,
            crate::clock::now(),
        )?;
        Ok(grant)
    }

    pub(crate) async fn end_session(
        &mut self,
        session_id: &str,
        channel: Option<&str>,
    ) -> Result<(), Failure> {
        self.start_export_call()?;
        self.instance
            .end_session(&mut self.store, session_id, channel)
            .await
            .map_err(|err| classify(&self.store, err))?
            .map_err(Failure::Guest)
    }
}

/// What went wrong inside wasm: a limit the host enforced, or a trap or
/// malformed value from the plugin itself.
fn classify(store: &Store<CallState>, err: wasmtime::Error) -> Failure {
    if let Some(stop) = store.data().stop {
        return Failure::Stopped(stop);
    }
    if let Some(status) = super::imports::wasi::exit_status(&err) {
        return Failure::Exited(status);
    }
    if err.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Failure::Stopped(HostStop::Cpu);
    }
    Failure::Wasm(format!("{:#}", wasm_error(err)))
}

fn check_size(max_return_bytes: usize, what: &'static str, len: usize) -> Result<(), Failure> {
    if len > max_return_bytes {
        Err(Failure::Oversized { what, len })
    } else {
        Ok(())
    }
}

/// A string an export returned: within the size limit, free of control
/// characters (it reaches clients and logs), and not empty when `required`.
fn check_returned(
    max_return_bytes: usize,
    export: &str,
    what: &'static str,
    value: &str,
    required: bool,
) -> Result<(), Failure> {
    check_size(max_return_bytes, what, value.len())?;
    if required && value.is_empty() {
        return Err(Failure::Invalid(format!(
            "{export} returned an empty {what}"
        )));
    }
    check_text(what, value)
}

/// What `describe` returned: a name, both printable, within the size limit.
fn check_info(max_return_bytes: usize, info: &ProviderInfo) -> Result<(), Failure> {
    check_size(
        max_return_bytes,
        "describe name",
        info.name.len() + info.version.len(),
    )?;
    if info.name.trim().is_empty() {
        return Err(Failure::Invalid(
            "describe returned an empty provider name".into(),
        ));
    }
    check_text("provider name", &info.name)?;
    check_text("provider version", &info.version)
}

/// What `verify-token` granted, held against what the host asked (`now` in
/// Unix seconds): the host, not the plugin, has the last word on what a
/// token is for.
fn check_grant(
    max_return_bytes: usize,
    grant: &Grant,
    session_id: &str,
    now: i64,
) -> Result<(), Failure> {
    check_size(
        max_return_bytes,
        "grant",
        grant.session_id.len() + grant.identity.len(),
    )?;
    if grant.session_id != session_id {
        return Err(Failure::Guest(GuestError::Rejected(
            "the token belongs to another session".into(),
        )));
    }
    if grant.expires_at < now.max(0) as u64 {
        return Err(Failure::Guest(GuestError::Rejected(
            "the token has expired".into(),
        )));
    }
    Ok(())
}

/// Values handed to clients and logs: no control characters.
fn check_text(what: &str, value: &str) -> Result<(), Failure> {
    if value.chars().any(char::is_control) {
        return Err(Failure::Invalid(format!(
            "returned a {what} with control characters"
        )));
    }
    Ok(())
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_GUEST_MESSAGE_BYTES {
        let mut end = MAX_GUEST_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
        .chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

pub(crate) async fn describe(
    engine: &Engine,
    plugin: &Plugin,
) -> Result<ProviderInfo, ProviderError> {
    plugin
        .run(engine, "describe", async |call| call.describe().await)
        .await
}

/// Properties of the checks on what plugins return; the long run is in
/// `proptest_support`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;
    use crate::providers::Role;

    /// What a plugin might return: printable, control characters, blank,
    /// non-ASCII, and lengths around the limit.
    fn returned() -> impl Strategy<Value = String> {
        prop_oneof![
            "[!-~]{0,16}",
            "(?s).{0,40}",
            "[ \t\r\n\u{0}\u{7f}\u{85}]{0,4}",
            (0usize..600, "[a\u{e9}\u{1F600}]").prop_map(|(n, c)| c.repeat(n)),
        ]
    }

    fn printable(value: &str) -> bool {
        !value.chars().any(char::is_control)
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn proptest_plugin_returned_strings_are_checked(
            value in returned(),
            max in 0usize..700,
            required in any::<bool>(),
        ) {
            let result = check_returned(max, "issue-token", "token", &value, required);
            match result {
                Ok(()) => prop_assert!(
                    value.len() <= max && !(required && value.is_empty()) && printable(&value)
                ),
                Err(Failure::Oversized { what, len }) => {
                    prop_assert_eq!((what, len), ("token", value.len()));
                    prop_assert!(len > max);
                }
                Err(Failure::Invalid(message)) => {
                    prop_assert!(value.len() <= max);
                    prop_assert!((required && value.is_empty()) || !printable(&value), "{}", message);
                }
                Err(other) => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn proptest_plugin_descriptions_are_checked(
            name in returned(),
            version in returned(),
            max in 0usize..1400,
        ) {
            let info = ProviderInfo { name: name.clone(), version: version.clone(), ..Default::default() };
            let valid = name.len() + version.len() <= max
                && !name.trim().is_empty()
                && printable(&name)
                && printable(&version);
            prop_assert_eq!(check_info(max, &info).is_ok(), valid);
        }

        /// A grant is taken only for the session asked about, unexpired,
        /// within the size limit; a wrong session or an expired token is the
        /// client's fault (rejected), an oversized grant the plugin's.
        #[test]
        fn proptest_plugin_grants_are_checked(
            asked in "[!-~]{1,20}",
            granted in prop_oneof![Just(None), returned().prop_map(Some)],
            identity in returned(),
            now in prop_oneof![any::<i64>(), 0i64..2_000_000_000],
            offset in -5i64..5,
            max in 0usize..1400,
        ) {
            let session_id = granted.unwrap_or_else(|| asked.clone());
            let expires_at = now.max(0).saturating_add(offset).max(0) as u64;
            let grant = Grant {
                session_id: session_id.clone(),
                role: Role::Publisher,
                identity: identity.clone(),
                expires_at,
            };
            match check_grant(max, &grant, &asked, now) {
                Ok(()) => prop_assert!(
                    session_id.len() + identity.len() <= max
                        && session_id == asked
                        && expires_at >= now.max(0) as u64
                ),
                Err(Failure::Oversized { .. }) => prop_assert!(session_id.len() + identity.len() > max),
                Err(Failure::Guest(GuestError::Rejected(_))) => {
                    prop_assert!(session_id != asked || expires_at < now.max(0) as u64)
                }
                Err(other) => prop_assert!(false, "{:?}", other),
            }
        }

        /// A plugin's error message, however long or odd, comes out bounded,
        /// cut on a character boundary and on one line.
        #[test]
        fn proptest_plugin_error_messages_are_bounded(message in prop_oneof![
            returned(),
            (0usize..700, "(?s).").prop_map(|(n, c)| c.repeat(n)),
        ]) {
            let out = truncate(message.clone());
            prop_assert!(out.len() <= MAX_GUEST_MESSAGE_BYTES + '…'.len_utf8());
            prop_assert!(printable(&out));
            if message.len() <= MAX_GUEST_MESSAGE_BYTES && printable(&message) {
                prop_assert_eq!(out, message);
            }
        }
    }
}
