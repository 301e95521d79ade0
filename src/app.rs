//! Wiring only: metrics, key sets, the request stack, listeners, and the drain. Nothing depends
//! on this module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::listener::{self, Drain};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::refusal::RefusalStyle;
use crate::routes::RouteTable;
use crate::stack::{RequestIds, Stack};
use crate::tls::ServerTls;

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stack: Arc<Stack>,
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    drain: Arc<Drain>,
    grace: Duration,
}

/// Binds the ports and starts serving. The config is already validated.
pub async fn start(config: Config) -> Result<Running, String> {
    // One TLS provider for the process (key fetches now, TLS listeners later).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (server.listen): {e}", config.server.listen))?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin.listen): {e}", config.admin.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

    let routes =
        RouteTable::new(&config.routes, config.default_require).map_err(|(i, e)| format!("route[{i}]: {e}"))?;
    let issuer_names: Vec<String> = config.auth.issuers.iter().map(|i| i.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(routes.names(), &issuer_names, &config.metrics));
    let auth = Authenticator::new(&config.auth, metrics.clone());
    // Keys load in the background: the gateway serves (and /readyz says why not ready) meanwhile.
    let background = auth.issuers.iter().map(|i| tokio::spawn(i.clone().maintain())).collect();

    let stack = Arc::new(Stack {
        screen: crate::headers::Screen::new(auth.header_prefix(), config.server.drop_underscore_headers),
        routes,
        auth,
        proxy: Proxy::new(&config.upstream),
        metrics,
        style: RefusalStyle { realm: config.auth.realm.clone(), request_context: config.auth.request_context.clone() },
        forward_authorization: config.auth.forward_authorization,
        report: crate::report::Report::new(config.report.clone()),
        audit: config.audit.enabled,
        user_ids: crate::audit::UserIds::new(&config.audit),
        request_ids: RequestIds::default(),
    });

    let mut background: Vec<JoinHandle<()>> = background;
    let tls = match &config.server.tls {
        Some(t) => {
            let tls = Arc::new(ServerTls::new(t.clone())?);
            background.push(tokio::spawn(tls.clone().watch()));
            Some(tls)
        }
        None => None,
    };

    let (shutdown, rx) = watch::channel(false);
    let drain = Arc::new(Drain::default());
    tokio::spawn(crate::admin::serve(admin, stack.clone(), rx.clone()));
    let listener =
        tokio::spawn(listener::serve(listener, stack.clone(), config.server.clone(), tls, rx, drain.clone()));
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, admin = %admin_addr, scheme, "listening");
    Ok(Running { addr, admin_addr, stack, shutdown, listener, background, drain, grace: config.server.shutdown_grace })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the grace period, then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.listener.await;
        let left = self.drain.wait(self.grace).await;
        if left > 0 {
            tracing::warn!(connections = left, grace = ?self.grace, "grace period over; closing remaining connections");
        }
        for task in self.background {
            task.abort();
        }
        tracing::info!("stopped");
    }
}
