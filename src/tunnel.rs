//! Upgraded connections (WebSocket and any other `Upgrade`). hyper hands an upgraded connection
//! over and its connection future completes, so without more the tunnel would leave the
//! connection limit, the drain and the idle timeout behind. Instead the connection lends each
//! upgrade request a `Lease`; the tunnel holds it while open, and the connection's task (which
//! keeps the connection's slot and drain guard) waits for every lease to come back, closing the
//! tunnel when the connection goes idle or the shutdown grace runs out.

use std::sync::Arc;

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::{IntGauge, Registry};
use tokio::sync::watch;

use crate::metrics::gauge;
use crate::outstanding::{Held, Outstanding};

/// `tunnels_open`: upgraded connections open now.
#[derive(Clone)]
pub(crate) struct TunnelMetrics {
    open: IntGauge,
}

impl TunnelMetrics {
    pub(crate) fn register(reg: &Registry) -> Self {
        Self { open: gauge(reg, "mfa_gateway_tunnels_open", "Upgraded connections (WebSocket and others) open.") }
    }
}

/// One client connection's tunnels.
pub(crate) struct Slot {
    leases: Arc<Outstanding>,
    close: watch::Sender<bool>,
    metrics: TunnelMetrics,
}

impl Slot {
    pub(crate) fn new(metrics: TunnelMetrics) -> Arc<Self> {
        Arc::new(Self { leases: Arc::default(), close: watch::Sender::new(false), metrics })
    }

    /// A lease for one request that asks to upgrade; it comes back when the request ends without
    /// a tunnel, or when its tunnel closes.
    pub(crate) fn lease(self: &Arc<Self>) -> Lease {
        Lease { slot: self.clone(), _held: self.leases.hold(), close: self.close.subscribe() }
    }

    /// Whether a lease is still out.
    pub(crate) fn in_use(&self) -> bool {
        self.leases.count() > 0
    }

    /// Resolves when every lease is back.
    pub(crate) async fn released(&self) {
        self.leases.wait(None).await;
    }

    /// Closes the connection's tunnels.
    pub(crate) fn close(&self) {
        let _ = self.close.send(true);
    }
}

/// Carried in the extensions of a request that asks to upgrade.
pub(crate) struct Lease {
    slot: Arc<Slot>,
    _held: Held,
    close: watch::Receiver<bool>,
}

/// A copy is one more lease out (request extensions must be `Clone`).
impl Clone for Lease {
    fn clone(&self) -> Self {
        self.slot.lease()
    }
}

/// Copies both ways between the client and the upstream until either side ends or the lease's
/// connection closes the tunnel.
pub(crate) async fn run(client: OnUpgrade, upstream: OnUpgrade, mut lease: Lease, request_id: HeaderValue) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(request_id = crate::request_id::shown(&request_id), error = %e, "upgrade did not complete");
            return;
        }
    };
    let gauge = lease.slot.metrics.open.clone();
    gauge.inc();
    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => match r {
            Ok((up, down)) => tracing::debug!(request_id = crate::request_id::shown(&request_id), bytes_up = up, bytes_down = down, "tunnel closed"),
            Err(e) => tracing::debug!(request_id = crate::request_id::shown(&request_id), error = %e, "tunnel ended with an error"),
        },
        _ = lease.close.wait_for(|c| *c) => tracing::debug!(request_id = crate::request_id::shown(&request_id), "tunnel closed by the gateway (idle or shutting down)"),
    }
    gauge.dec();
}
