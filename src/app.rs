//! Wiring only: metrics, the first snapshot, the request stack, listeners, the config watcher,
//! and the drain. Nothing depends on this module.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::listener::{self, ConnectionMetrics, Drain, Serves};
use crate::reload::Reloads;
use crate::request_end::Mode;
use crate::stack::Stack;

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The decision listener of authorization-only mode, when `[authz]` turns it on.
    pub authz_addr: Option<SocketAddr>,
    pub stack: Arc<Stack>,
    listeners: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    drain: Arc<Drain>,
}

/// Binds the ports and starts serving. The config is already validated.
pub async fn start(config: Config) -> Result<Running, String> {
    // One TLS provider for the process (key fetches now, TLS listeners later).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    for w in config.warnings() {
        tracing::warn!("{w}");
    }

    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (server.listen): {e}", config.server.listen))?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin.listen): {e}", config.admin.listen))?;
    let decisions = match &config.authz {
        Some(a) => Some(
            TcpListener::bind(a.listen)
                .await
                .map_err(|e| format!("cannot listen on {} (authz.listen): {e}", a.listen))?,
        ),
        None => None,
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    let authz_addr = decisions.as_ref().map(TcpListener::local_addr).transpose().map_err(|e| e.to_string())?;
    let front = config.authz.as_ref().map_or("-", |a| a.front.kind().as_str());

    let registry = crate::metrics::registry();
    let reloads = Reloads::register(&registry);
    let connections = Arc::new(ConnectionMetrics::register(&registry));
    let max_connections = config.server.max_connections;
    let admin_max_connections = config.admin.max_connections;
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    // Keys load in the background: the gateway serves (and /readyz says why not ready) meanwhile.
    let stack = Arc::new(Stack::new(config, &registry)?);

    let drain = Arc::new(Drain::default());
    let serve = |l, max, drain, serves| {
        let (stack, connections) = (stack.clone(), connections.clone());
        tokio::spawn(listener::serve(l, stack, connections, max, drain, serves))
    };
    let mut listeners = vec![serve(listener, max_connections, drain.clone(), Serves::Requests(Mode::Proxy))];
    if let Some(decisions) = decisions {
        listeners.push(serve(decisions, max_connections, drain.clone(), Serves::Requests(Mode::Authz)));
    }
    // Admin connections are not waited for at shutdown: probes and scrapes end on their own.
    listeners.push(serve(admin, admin_max_connections, Arc::new(Drain::default()), Serves::Admin));
    let background = vec![
        tokio::spawn(crate::reload::watch(stack.clone(), reloads)),
        tokio::spawn(crate::heap::trim_periodically(crate::heap::TRIM_EVERY)),
    ];
    match authz_addr {
        Some(authz) => tracing::info!(%addr, admin = %admin_addr, %authz, front, scheme, "listening"),
        None => tracing::info!(%addr, admin = %admin_addr, scheme, "listening"),
    }
    Ok(Running { addr, admin_addr, authz_addr, stack, listeners, background, drain })
}

impl Running {
    /// Lame duck, then shutdown: `/readyz` answers 503 at once while the API port accepts and
    /// serves for `server.shutdown_delay` (so load balancers stop sending first); `skip` (a
    /// second signal) cuts the delay short. Then `shutdown`.
    pub async fn drain_and_stop(self, skip: impl std::future::Future<Output = ()>) {
        self.stack.start_draining();
        let delay = self.stack.snapshot().config.server.shutdown_delay;
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
        let grace = self.stack.snapshot().config.server.shutdown_grace;
        self.stack.close();
        for l in self.listeners {
            let _ = l.await;
        }
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
