//! WASI 0.2 for plugins whose toolchain imports it (componentize-py,
//! jco, Rust's `wasm32-wasip2`), from wasmtime's own
//! implementation, granted in one locked-down form to every plugin: nothing
//! to open, nowhere to connect, nothing to read from the host's environment.
//! A plugin still reaches the outside only through `loopcall:provider/http`
//! and its allowlist.
//!
//! Each call's WASI context is made on first use, so plugins that import no
//! WASI (the C plugins) pay nothing for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::providers::state::{CallState, PluginContext};

/// How each WASI interface a plugin may import is granted; anything not
/// listed is refused at load, naming it. The names carry no version: every
/// WASI 0.2.x minor is served by the same implementation (wasmtime links a
/// component's 0.2.x import to the newest 0.2 it has).
pub(crate) const GRANTED: &[(&str, &str)] = &[
    ("wasi:io/error", "streams' error descriptions"),
    ("wasi:io/poll", "waiting on the streams and clocks below"),
    ("wasi:io/streams", "only the streams below"),
    (
        "wasi:clocks/wall-clock",
        "the host's clock (the one `clock.now` reads)",
    ),
    ("wasi:clocks/monotonic-clock", "the host's monotonic clock"),
    ("wasi:random/random", "the host's CSPRNG"),
    ("wasi:random/insecure", "the host's CSPRNG"),
    ("wasi:random/insecure-seed", "a fresh seed per call"),
    (
        "wasi:cli/environment",
        "no variables, no arguments, no working directory",
    ),
    ("wasi:cli/exit", "ends the call as a plugin failure"),
    ("wasi:cli/stdin", "always at end of file"),
    (
        "wasi:cli/stdout",
        "into the host's log under the plugin's name, bounded",
    ),
    (
        "wasi:cli/stderr",
        "into the host's log under the plugin's name, bounded",
    ),
    ("wasi:cli/terminal-input", "no terminal"),
    ("wasi:cli/terminal-output", "no terminal"),
    ("wasi:cli/terminal-stdin", "no terminal"),
    ("wasi:cli/terminal-stdout", "no terminal"),
    ("wasi:cli/terminal-stderr", "no terminal"),
    ("wasi:filesystem/preopens", "no directories"),
    (
        "wasi:filesystem/types",
        "nothing to open: there are no directories",
    ),
    ("wasi:sockets/network", "every address denied"),
    ("wasi:sockets/instance-network", "every address denied"),
    ("wasi:sockets/tcp-create-socket", "TCP refused"),
    ("wasi:sockets/tcp", "TCP refused"),
    ("wasi:sockets/udp-create-socket", "UDP refused"),
    ("wasi:sockets/udp", "UDP refused"),
    ("wasi:sockets/ip-name-lookup", "name lookups refused"),
];

/// The WASI major.minor the host links; a component built for another is
/// refused at load.
const WASI_VERSION_PREFIX: &str = "0.2.";

/// Bytes a call may write to stdout and stderr together before the rest is
/// dropped (the plugin is not told: its writes keep succeeding).
const MAX_OUTPUT_BYTES_PER_CALL: usize = 16 * 1024;
/// Output without a newline is logged in pieces of this size (the log record
/// itself is bounded by `log`'s own limit).
const MAX_OUTPUT_LINE_BYTES: usize = 2048;

/// What an import of a WASI interface gets, or `None` if it is refused.
/// `name` is a component import name such as `wasi:cli/stdout@0.2.3`.
pub(crate) fn grant_for(name: &str) -> Option<&'static str> {
    let (interface, version) = name.split_once('@')?;
    if !version.starts_with(WASI_VERSION_PREFIX) {
        return None;
    }
    GRANTED
        .iter()
        .find(|(granted, _)| *granted == interface)
        .map(|(_, how)| *how)
}

/// Whether `name` is a WASI import at all (granted or not).
pub(crate) fn is_wasi(name: &str) -> bool {
    name.starts_with("wasi:")
}

/// Adds every WASI 0.2 interface to a version's linker. What a plugin can do
/// through them is decided per call by [`locked_down`]; which ones it may
/// import is checked at load against [`GRANTED`].
pub(crate) fn add_to_linker(linker: &mut Linker<CallState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker).map_err(super::super::types::wasm_error)
}

/// The exit status of a plugin that called `wasi:cli/exit`, if that is what
/// ended the call.
pub(crate) fn exit_status(err: &wasmtime::Error) -> Option<i32> {
    err.downcast_ref::<wasmtime_wasi::I32Exit>()
        .map(|exit| exit.0)
}

/// One call's WASI state. Behind a mutex only so that [`CallState`] stays
/// `Sync` (host imports hold `&CallState` across awaits); the store reaches
/// it through `&mut`, which never locks.
pub(crate) struct WasiState(Mutex<WasiParts>);

struct WasiParts {
    ctx: WasiCtx,
    table: ResourceTable,
}

/// The grant: wasmtime-wasi's defaults already give no preopens, no
/// environment, no arguments and a closed stdin; this also denies every
/// socket and name lookup, routes output to the log, and reads the host's clock.
fn locked_down(plugin: &Arc<PluginContext>) -> WasiState {
    let output = PluginOutput::new(plugin.name.clone());
    let mut builder = WasiCtx::builder();
    builder
        .stdout(output.stream("stdout"))
        .stderr(output.stream("stderr"))
        .wall_clock(HostClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    WasiState(Mutex::new(WasiParts {
        ctx: builder.build(),
        table: ResourceTable::new(),
    }))
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let plugin = &self.plugin;
        let state = self
            .wasi
            .get_or_insert_with(|| Box::new(locked_down(plugin)))
            .0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        WasiCtxView {
            ctx: &mut state.ctx,
            table: &mut state.table,
        }
    }
}

/// `wasi:clocks/wall-clock` reads the server's one clock.
struct HostClock;

impl HostWallClock for HostClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        crate::clock::now_precise()
    }
}

/// A call's stdout and stderr: whole lines go to the log under the plugin's
/// name, control characters blanked (a plugin cannot forge log lines), until
/// the call's output budget is spent.
#[derive(Clone)]
struct PluginOutput(Arc<Mutex<OutputLog>>);

struct OutputLog {
    plugin: String,
    /// Bytes accepted so far (logged or pending), against the budget.
    written: usize,
    pending: [Vec<u8>; 2],
    warned: bool,
}

impl PluginOutput {
    fn new(plugin: String) -> Self {
        Self(Arc::new(Mutex::new(OutputLog {
            plugin,
            written: 0,
            pending: [Vec::new(), Vec::new()],
            warned: false,
        })))
    }

    fn stream(&self, name: &'static str) -> OutputStreamHandle {
        OutputStreamHandle {
            output: self.clone(),
            stream: name,
        }
    }
}

impl OutputLog {
    fn index(stream: &str) -> usize {
        usize::from(stream == "stderr")
    }

    fn write(&mut self, stream: &'static str, bytes: &[u8]) {
        let room = MAX_OUTPUT_BYTES_PER_CALL.saturating_sub(self.written);
        if bytes.len() > room && !self.warned {
            self.warned = true;
            tracing::warn!(target: "loop_server::plugin", plugin = %self.plugin, "plugin writes too much output; dropping the rest for this call");
        }
        let kept = &bytes[..bytes.len().min(room)];
        self.written += kept.len();
        let index = Self::index(stream);
        self.pending[index].extend_from_slice(kept);
        while let Some(end) = self.pending[index].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending[index].drain(..=end).collect();
            self.emit(stream, &line[..end]);
        }
        if self.pending[index].len() >= MAX_OUTPUT_LINE_BYTES {
            let line = std::mem::take(&mut self.pending[index]);
            self.emit(stream, &line);
        }
    }

    fn flush(&mut self, stream: &'static str) {
        let line = std::mem::take(&mut self.pending[Self::index(stream)]);
        if !line.is_empty() {
            self.emit(stream, &line);
        }
    }

    fn emit(&self, stream: &'static str, line: &[u8]) {
        let text = super::log::sanitize_log(&String::from_utf8_lossy(line));
        tracing::info!(target: "loop_server::plugin", plugin = %self.plugin, stream, "{text}");
    }
}

impl Drop for OutputLog {
    // What a plugin wrote without a final newline still reaches the log when
    // its call ends.
    fn drop(&mut self) {
        self.flush("stdout");
        self.flush("stderr");
    }
}

/// One of the call's two output streams, as WASI hands it to the guest.
struct OutputStreamHandle {
    output: PluginOutput,
    stream: &'static str,
}

impl OutputStreamHandle {
    fn log(&self) -> std::sync::MutexGuard<'_, OutputLog> {
        self.output
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl IsTerminal for OutputStreamHandle {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputStreamHandle {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Self {
            output: self.output.clone(),
            stream: self.stream,
        })
    }

    // WASI 0.3 streams; not linked, but the trait asks for them.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Self {
            output: self.output.clone(),
            stream: self.stream,
        })
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputStreamHandle {
    async fn ready(&mut self) {}
}

impl OutputStream for OutputStreamHandle {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log().write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.log().flush(self.stream);
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: output over the budget is dropped, not blocked on.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for OutputStreamHandle {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.log().write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.log().flush(self.stream);
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}
