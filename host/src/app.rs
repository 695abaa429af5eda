//! Shared state, the router and the server's life cycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::auth::Auth;
use crate::config::Config;
use crate::domain::ice::Ice;
use crate::domain::signaling::Relay;
use crate::limits::Limits;
use crate::net::Net;
use crate::providers::ProviderRuntime;
use crate::push::Push;
use crate::secrets::Secrets;
use crate::store::Store;

/// Request bodies larger than this get 413/113.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler can reach: one pointer, since every request clones it
/// (once per extractor and middleware).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// The configuration in force: a SIGHUP swaps it (`reload`). Read it
    /// through [`Shared::config`].
    pub(crate) config: ArcSwap<Config>,
    /// `server.public_url`, or the address actually bound when unset.
    pub public_url: Arc<str>,
    /// Where clients follow a call's progress, derived from `public_url`
    /// once rather than parsed again for every call.
    pub progress_url: Arc<str>,
    pub store: Arc<dyn Store>,
    /// Swapped whole by a reload that changes providers or plugins; read it
    /// through [`Shared::providers`].
    pub(crate) providers: ArcSwap<ProviderRuntime>,
    pub push: Arc<Push>,
    pub auth: Arc<Auth>,
    /// Builds the outbound client of each use; checks push URLs' host names.
    pub net: Net,
    /// The STUN/TURN servers handed to each side of a call.
    pub ice: Arc<Ice>,
    /// This instance's part in the signaling relay.
    pub signaling: Arc<Relay>,
    /// Rate limits; `Limits::reconfigure` applies a reloaded `[rate_limits]`.
    pub limits: Arc<Limits>,
}

impl Shared {
    /// The configuration in force now. Hold it for one decision, not across
    /// a wait: a reload may replace it meanwhile.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The provider runtime in force now. A call keeps the one it started
    /// on until it finishes, even if a reload swaps in another meanwhile.
    pub fn providers(&self) -> Arc<ProviderRuntime> {
        self.providers.load_full()
    }
}

/// A server bound to its address, ready to serve.
pub struct Server {
    listener: TcpListener,
    router: Router,
    state: AppState,
    /// `server.metrics_listen`, bound, with the recorder installed.
    metrics: Option<(TcpListener, PrometheusHandle)>,
    /// The config file a `SIGHUP` reloads, if any.
    config_path: Option<PathBuf>,
}

impl Server {
    /// Opens storage (running migrations), loads plugins and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))?;
        let local_addr = listener.local_addr()?;
        // Before anything records: the recorder only sees what follows it.
        let metrics = match config.server.metrics_listen {
            Some(addr) => Some((
                crate::telemetry::bind(addr).await?,
                crate::telemetry::install_recorder()?,
            )),
            None => None,
        };
        let public_url: Arc<str> = match &config.server.public_url {
            Some(_) => config.public_url().into(),
            None => format!("http://{local_addr}").into(),
        };
        // Owner-only: it holds the database (call URL tokens, callees'
        // provider tokens), generated secrets and compiled plugin code.
        crate::secrets::create_private_dir(&config.server.data_dir).context("server.data_dir")?;
        if crate::secrets::is_shared(&config.server.data_dir) {
            tracing::warn!(
                data_dir = %config.server.data_dir.display(),
                "server.data_dir can be read by other users; `chmod 700` it"
            );
        }
        raise_open_files_limit();
        let secrets = Secrets::from_config(&config)?;
        let net = Net::new(&config.net)?;
        let store = crate::store::connect(&config).await?;
        let providers =
            ArcSwap::from_pointee(ProviderRuntime::load(&config, &secrets, &net).await?);
        let auth = Arc::new(Auth::new(&config, &secrets, &net)?);
        let push = Arc::new(Push::new(&config, &net)?);
        let ice = Arc::new(Ice::new(&config, &secrets)?);
        let limits = Arc::new(Limits::new(&config.rate_limits));
        let state = AppState(Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            progress_url: crate::domain::calls::progress_url(&public_url).into(),
            public_url,
            store,
            providers,
            push,
            auth,
            net,
            ice,
            signaling: Arc::new(Relay::new()),
            limits,
        }));
        let router = crate::api::router(state.clone());
        Ok(Self {
            listener,
            router,
            state,
            metrics,
            config_path: None,
        })
    }

    /// Reloads `path` on `SIGHUP` while serving (see `reload`): the file
    /// this server's configuration was loaded from.
    pub fn reload_on_sighup(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGINT/SIGTERM, then drains in-flight requests.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let purge = crate::store::spawn_purge(self.state.store.clone(), &self.state.config());
        let seats = crate::domain::signaling::spawn_keeper(&self.state);
        let session_ends = crate::domain::calls::spawn_session_end_sweep(self.state.clone());
        let metrics = match self.metrics.take() {
            Some((listener, handle)) => {
                let addr = listener.local_addr()?;
                // Before the line below, so whoever waits for that has read this.
                println!(
                    "loop-server metrics on http://{addr}{}",
                    crate::telemetry::METRICS_PATH
                );
                Some(crate::telemetry::spawn_metrics_server(
                    listener,
                    handle,
                    self.state.clone(),
                ))
            }
            None => None,
        };
        let limits_pruner = crate::limits::spawn_pruner(self.state.limits.clone());
        // Before the line below: from then on a SIGHUP must reload, not
        // end the process (its default action).
        #[cfg(unix)]
        let reloads = match self.config_path.clone() {
            Some(path) => Some(crate::reload::spawn_on_sighup(self.state.clone(), path)?),
            None => None,
        };
        // Tests and scripts wait for this exact line to learn the port.
        println!("loop-server listening on http://{}", self.local_addr());
        tracing::info!(
            addr = %self.local_addr(),
            public_url = %self.state.public_url,
            workers = tokio::runtime::Handle::current().metrics().num_workers(),
            "serving"
        );
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await?;
        self.state.push.drain().await;
        purge.abort();
        seats.abort();
        session_ends.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        limits_pruner.abort();
        #[cfg(unix)]
        if let Some(reloads) = reloads {
            reloads.abort();
        }
        Ok(())
    }
}

/// Each open socket (progress websockets, long-polls, keep-alive clients) is
/// a file descriptor, and the soft limit a shell hands down is often 1024:
/// raise it to what the hard limit allows.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
