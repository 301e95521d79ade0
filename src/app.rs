//! Wiring only: metrics, the first snapshot, the request gateway, listeners, the config watcher,
//! and the drain. Nothing depends on this module.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::listener::{self, ConnectionMetrics, Serves};
use crate::outstanding::Outstanding;
use crate::reload::Reloads;
use crate::request_end::Mode;

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The decision listener of authorization-only mode, when `[authz]` turns it on.
    pub authz_addr: Option<SocketAddr>,
    pub(crate) gateway: Arc<Gateway>,
    listeners: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    drain: Arc<Outstanding>,
}

/// Binds the ports and starts serving. The config is already validated.
/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key})")]
    Listen { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Build(#[from] crate::snapshot::BuildError),
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen = |source| StartError::Listen { key, addr, source };
    let l = TcpListener::bind(addr).await.map_err(listen)?;
    let bound = l.local_addr().map_err(listen)?;
    Ok((l, bound))
}

pub async fn start(config: Config) -> Result<Running, StartError> {
    // One TLS provider for the process (key fetches now, TLS listeners later).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    for w in config.warnings() {
        tracing::warn!("{w}");
    }

    let (listener, addr) = bind("server.listen", config.server.listen).await?;
    let (admin, admin_addr) = bind("admin.listen", config.admin.listen).await?;
    let (decisions, authz_addr) = match &config.authz {
        Some(a) => bind("authz.listen", a.listen).await.map(|(l, bound)| (Some(l), Some(bound)))?,
        None => (None, None),
    };
    let front = config.authz.as_ref().map_or("-", |a| a.front.kind().as_str());

    let registry = crate::metrics::registry();
    let reloads = Reloads::register(&registry);
    let connections = Arc::new(ConnectionMetrics::register(&registry));
    let max_connections = config.server.max_connections;
    let admin_max_connections = config.admin.max_connections;
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    // Keys load in the background: the gateway serves (and /readyz says why not ready) meanwhile.
    let gateway = Arc::new(Gateway::new(config, &registry)?);

    let drain = Arc::new(Outstanding::default());
    let serve = |l, max, drain, serves| {
        let (gateway, connections) = (gateway.clone(), connections.clone());
        tokio::spawn(listener::serve(l, gateway, connections, max, drain, serves))
    };
    let mut listeners = vec![serve(listener, max_connections, drain.clone(), Serves::Requests(Mode::Proxy))];
    if let Some(decisions) = decisions {
        listeners.push(serve(decisions, max_connections, drain.clone(), Serves::Requests(Mode::Authz)));
    }
    // Admin connections are not waited for at shutdown: probes and scrapes end on their own.
    listeners.push(serve(admin, admin_max_connections, Arc::new(Outstanding::default()), Serves::Admin));
    let background = vec![
        tokio::spawn(crate::reload::watch(gateway.clone(), reloads)),
        tokio::spawn(crate::heap::trim_periodically(crate::heap::TRIM_EVERY)),
    ];
    match authz_addr {
        Some(authz) => tracing::info!(%addr, admin = %admin_addr, %authz, front, scheme, "listening"),
        None => tracing::info!(%addr, admin = %admin_addr, scheme, "listening"),
    }
    Ok(Running { addr, admin_addr, authz_addr, gateway, listeners, background, drain })
}

impl Running {
    /// Why the gateway is not ready to judge tokens (as `/readyz` says); empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        self.gateway.snapshot().auth.not_ready()
    }

    /// Lame duck, then shutdown: `/readyz` answers 503 at once while the API port accepts and
    /// serves for `server.shutdown_delay` (so load balancers stop sending first); `skip` (a
    /// second signal) cuts the delay short. Then `shutdown`.
    pub async fn drain_and_stop(self, skip: impl std::future::Future<Output = ()>) {
        self.gateway.start_draining();
        let delay = self.gateway.snapshot().config.server.shutdown_delay;
        tracing::info!(?delay, "draining: /readyz answers 503; serving on for shutdown_delay");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = skip => tracing::info!("second signal: skipping the rest of shutdown_delay"),
        }
        self.shutdown().await;
    }

    /// Stops accepting; open connections are asked to finish (`Connection: close` on the next
    /// HTTP/1.1 response, GOAWAY on HTTP/2) and get `shutdown_grace` to do so; then returns.
    pub async fn shutdown(self) {
        let grace = self.gateway.snapshot().config.server.shutdown_grace;
        self.gateway.close();
        for l in self.listeners {
            let _ = l.await;
        }
        tracing::info!(?grace, "accepting stopped; open connections have shutdown_grace to finish");
        let left = self.drain.wait(Some(grace)).await;
        if left > 0 {
            tracing::warn!(connections = left, ?grace, "grace period over; closing remaining connections");
        }
        for task in self.background {
            task.abort();
        }
        tracing::info!("stopped");
    }
}

/// One GET of an admin path on loopback, for a container's `HEALTHCHECK` (distroless images have
/// no curl): the status it answered, or why none.
pub async fn probe(
    uri: &http::Uri,
    timeout: std::time::Duration,
) -> Result<http::StatusCode, crate::fetch::FetchError> {
    let client = crate::fetch::client(crate::tls::unused_client_config(), Some(timeout));
    crate::fetch::get(&client, uri, 4096, timeout).await.map(|(status, _)| status)
}
