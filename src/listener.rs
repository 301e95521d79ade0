//! The one accept loop, for the API port, the decision listener and the admin port alike:
//! connection cap, HTTP/1.1 and HTTP/2 (prior knowledge) on one port, header and idle timeouts,
//! and a graceful drain on shutdown. An upgraded connection stays this connection's: its slot,
//! drain guard and idle timeout hold until the tunnel closes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header;
use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::gateway::{Gateway, Peer, Phase};
use crate::metrics::{counter, gauge, KindCounters};
use crate::outstanding::Outstanding;
use crate::request_end::{Ended, Mode};
use crate::tunnel::{self, TunnelMetrics};

/// Connection failure kinds; the `kind` label of `connection_errors_total`.
pub(crate) const CONNECTION_ERROR_KINDS: [&str; 6] =
    ["header_too_large", "header_timeout", "bad_request", "incomplete", "io", "accept"];

/// Resolves once `phase` is `Closing`. (wait_for's guard is not `Send`: it stays in here.)
async fn closed(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Closing).await;
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serves {
    /// The API port (proxy mode) or the decision listener (authorization-only mode).
    Requests(Mode),
    /// The admin port: probes, metrics, the status report.
    Admin,
}

/// The connection families.
pub(crate) struct ConnectionMetrics {
    open: IntGauge,
    admin_open: IntGauge,
    errors: KindCounters,
    tls_handshake_errors: IntCounter,
    tunnels: TunnelMetrics,
}

impl ConnectionMetrics {
    pub(crate) fn register(reg: &Registry) -> Self {
        Self {
            open: gauge(
                reg,
                "mfa_gateway_connections_open",
                "Client connections open (API port and decision listener).",
            ),
            admin_open: gauge(reg, "mfa_gateway_admin_connections_open", "Connections to the admin port open."),
            errors: KindCounters::new(
                reg,
                "mfa_gateway_connection_errors_total",
                "Client connections that ended in an error, by kind (oversized request head: 431).",
                &CONNECTION_ERROR_KINDS,
            ),
            tls_handshake_errors: counter(
                reg,
                "mfa_gateway_tls_handshake_errors_total",
                "Client TLS handshakes that failed or timed out (plain HTTP on the TLS port included).",
            ),
            tunnels: TunnelMetrics::register(reg),
        }
    }

    fn open(&self, serves: Serves) -> &IntGauge {
        match serves {
            Serves::Requests(_) => &self.open,
            Serves::Admin => &self.admin_open,
        }
    }
}

/// A run of failed accepts, logged once when it starts and once when it ends. While descriptors
/// are short, accepts fail and succeed in turn as connections close; the episode ends only after
/// a second without a failure.
struct AcceptEpisode {
    started: Instant,
    last_failure: Instant,
    count: u64,
}

impl AcceptEpisode {
    fn new() -> Self {
        let now = Instant::now();
        Self { started: now, last_failure: now, count: 1 }
    }

    fn failed(&mut self) {
        self.count += 1;
        self.last_failure = Instant::now();
    }

    fn over(&self) -> bool {
        self.last_failure.elapsed() >= Duration::from_secs(1)
    }
}

/// Serves `listener` until the gateway's phase is `Closing`, then asks every connection to
/// finish. Each connection is served with the settings of the snapshot current when it was
/// accepted.
pub(crate) async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    metrics: Arc<ConnectionMetrics>,
    max_connections: usize,
    drain: Arc<Outstanding>,
    serves: Serves,
) {
    let mut phase = gateway.phase();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut accept_failures: Option<AcceptEpisode> = None;

    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = closed(&mut phase) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => {
                    if accept_failures.as_ref().is_some_and(AcceptEpisode::over) {
                        let e = accept_failures.take().expect("checked");
                        tracing::info!(failures = e.count, seconds = e.started.elapsed().as_secs(), "accepting again");
                    }
                    pair
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly and keep serving. One warning per
                    // episode (not one per retry); every failure is counted.
                    metrics.errors.inc("accept");
                    match accept_failures.as_mut().filter(|ep| !ep.over()) {
                        Some(episode) => episode.failed(),
                        None => {
                            tracing::warn!(listener = ?serves, error = %e, "accept failed; retrying every 50 ms until it succeeds");
                            accept_failures = Some(AcceptEpisode::new());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = closed(&mut phase) => break,
        };
        let _ = stream.set_nodelay(true);
        let guard = drain.hold();
        let gateway = gateway.clone();
        let metrics = metrics.clone();
        let phase = phase.clone();
        let (builder, tls, limits) = {
            let snap = gateway.snapshot();
            let grace = snap.config.server.shutdown_grace;
            match serves {
                Serves::Requests(mode) => {
                    // The decision listener speaks plain HTTP to its front proxy on the same host or pod.
                    let tls = snap.tls.clone().zip(snap.config.server.tls.as_ref().map(|t| t.handshake_timeout));
                    let tls = tls.filter(|_| mode == Mode::Proxy);
                    (snap.http.clone(), tls, Limits { idle: snap.config.server.idle_timeout, grace })
                }
                Serves::Admin => {
                    (snap.admin_http.clone(), None, Limits { idle: snap.config.admin.idle_timeout, grace })
                }
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _guard = guard;
            metrics.open(serves).inc();
            let activity = Arc::new(AtomicBool::new(false));
            let io = Tracked { inner: stream, active: activity.clone() };
            let conn = Connection { activity, builder: &builder, gateway, metrics: &metrics, limits, phase, serves };
            // Each kind in a box of its own size: a task is as large as its largest state, and a
            // TLS connection's is some 2.5 times a plain one's.
            match tls {
                None => Box::pin(conn.serve(io, Peer { addr: peer, tls: false, cert: None })).await,
                Some((tls, limit)) => {
                    Box::pin(async move {
                        match handshake(io, tls, limit, conn.metrics).await {
                            Some(io) => {
                                let cert = client_cert_thumbprint(io.get_ref().1);
                                conn.serve(io, Peer { addr: peer, tls: true, cert }).await
                            }
                            None => tracing::debug!(client = %peer, "TLS handshake did not complete"),
                        }
                    })
                    .await
                }
            }
            metrics.open(serves).dec();
        });
    }
    tracing::info!(listener = ?serves, "listener closed; draining connections");
}

/// The thumbprint of the client's end-entity certificate, as RFC 8705 binds tokens to it.
fn client_cert_thumbprint(tls: &rustls::ServerConnection) -> Option<[u8; 32]> {
    Some(crate::auth::binding::cert_thumbprint(tls.peer_certificates()?.first()?))
}

/// Completes the TLS handshake within the configured time. A client that speaks plain HTTP
/// to the TLS port is told so in a one-line 400 rather than left with a reset.
async fn handshake(
    mut io: Tracked<tokio::net::TcpStream>,
    tls: TlsAcceptor,
    limit: Duration,
    metrics: &ConnectionMetrics,
) -> Option<tokio_rustls::server::TlsStream<Tracked<tokio::net::TcpStream>>> {
    let work = async {
        let mut first = [0u8; 1];
        // 0x16 opens a TLS handshake record; anything else is not TLS.
        if matches!(io.inner.peek(&mut first).await, Ok(1) if first[0] != 0x16) {
            use tokio::io::AsyncWriteExt;
            const BODY: &str = "this port speaks HTTPS, not HTTP\n";
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            let _ = io.write_all(reply.as_bytes()).await;
            let _ = io.shutdown().await;
            return Err("plain HTTP on the TLS port".to_string());
        }
        tls.accept(io).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            metrics.tls_handshake_errors.inc();
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.tls_handshake_errors.inc();
            tracing::debug!(timeout = ?limit, "TLS handshake timed out");
            None
        }
    }
}

/// A connection's time limits, from the snapshot current when it was accepted.
#[derive(Clone, Copy)]
struct Limits {
    idle: Duration,
    /// How long a tunnel may stay open once shutdown begins.
    grace: Duration,
}

/// One accepted connection, served to its end (its tunnel's end, if it is upgraded).
struct Connection<'a> {
    activity: Arc<AtomicBool>,
    builder: &'a auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    metrics: &'a ConnectionMetrics,
    limits: Limits,
    phase: watch::Receiver<Phase>,
    serves: Serves,
}

impl Connection<'_> {
    async fn serve<I>(self, io: I, peer: Peer)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { activity, builder, gateway, metrics, limits, mut phase, serves } = self;
        let io = TokioIo::new(io);
        let slot = tunnel::Slot::new(metrics.tunnels.clone());
        let lender = slot.clone();
        // Lame duck: HTTP/2 connections get GOAWAY. Whether a connection speaks HTTP/2 is known
        // from its first request, which may come after the lame duck began; that request
        // nudges the loop below.
        let http2 = Arc::new(AtomicBool::new(false));
        let nudge = Arc::new(tokio::sync::Notify::new());
        let (seen_http2, first_http2) = (http2.clone(), nudge.clone());
        let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            if req.version() == http::Version::HTTP_2 && !seen_http2.load(Ordering::Relaxed) {
                seen_http2.store(true, Ordering::Relaxed);
                first_http2.notify_one();
            }
            // Only a request that may become a tunnel carries a lease back to this connection.
            if serves == Serves::Requests(Mode::Proxy) && req.headers().contains_key(header::UPGRADE) {
                req.extensions_mut().insert(lender.lease());
            }
            // Boxed per request: hyper keeps a slot the size of this future for every connection,
            // idle ones included, and the request path's future is some 2.5 KiB.
            let answer: Pin<Box<dyn Future<Output = _> + Send>> = match serves {
                Serves::Requests(mode) => Box::pin(gateway.clone().serve(req, peer, mode)),
                Serves::Admin => Box::pin(std::future::ready(
                    crate::admin::route(&gateway, req).map(|b| Ended::new(Either::Right(b), None)),
                )),
            };
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let mut idle = IdleClock::new(limits.idle);
        let mut closing = false;
        // HTTP/1.1 connections are left alone in the lame duck: their responses carry
        // `Connection: close`, and an idle one closed now could meet a request on its way.
        let mut lame = *phase.borrow_and_update() == Phase::LameDuck;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        // Client faults (oversized head, header timeout, bad framing) are answered
                        // by hyper itself; count them here so they show up.
                        let kind = connection_error_kind(&*e);
                        metrics.errors.inc(kind);
                        tracing::debug!(client = %peer.addr, kind, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = phase.changed(), if !closing => {
                    let now = *phase.borrow_and_update();
                    lame = now == Phase::LameDuck;
                    if now == Phase::Closing || (lame && http2.load(Ordering::Relaxed)) {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                // Armed only in the lame duck: the connection turned out to be HTTP/2.
                _ = nudge.notified(), if lame && !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = idle.tick(), if !closing => {
                    if idle.expired(&activity) {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        // hyper's part ends at an upgrade; the tunnel is still this connection's.
        if slot.in_use() {
            hold_tunnel(&slot, &activity, idle, limits.grace, phase).await;
        }
    }
}

/// Waits for the connection's tunnel to close, closing it when the connection has been idle
/// for `idle_timeout`, or `grace` after shutdown begins.
async fn hold_tunnel(
    slot: &tunnel::Slot,
    activity: &AtomicBool,
    mut idle: IdleClock,
    grace: Duration,
    mut phase: watch::Receiver<Phase>,
) {
    let mut deadline = (*phase.borrow() == Phase::Closing).then(|| tokio::time::Instant::now() + grace);
    loop {
        tokio::select! {
            _ = slot.released() => return,
            _ = closed(&mut phase), if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + grace);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                tracing::debug!("shutdown grace over; closing a tunnel");
                slot.close();
                slot.released().await;
                return;
            }
            _ = idle.tick() => {
                if idle.expired(activity) {
                    tracing::debug!("tunnel idle; closing it");
                    slot.close();
                    slot.released().await;
                    return;
                }
            }
        }
    }
}

/// Idle check without a clock read per I/O: every half timeout, see whether any byte moved. A
/// connection is closed after between one and one and a half `idle_timeout`s of silence.
struct IdleClock {
    timeout: Duration,
    next: tokio::time::Instant,
    quiet: Duration,
}

impl IdleClock {
    fn new(timeout: Duration) -> Self {
        Self { timeout, next: tokio::time::Instant::now() + timeout / 2, quiet: Duration::ZERO }
    }

    async fn tick(&mut self) {
        tokio::time::sleep_until(self.next).await;
        self.next += self.timeout / 2;
    }

    /// After a tick: whether the connection has been silent for the whole timeout.
    fn expired(&mut self, activity: &AtomicBool) -> bool {
        if activity.swap(false, Ordering::Relaxed) {
            self.quiet = Duration::ZERO;
        } else {
            self.quiet += self.timeout / 2;
        }
        self.quiet >= self.timeout
    }
}

/// A bounded label for why a connection failed.
fn connection_error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => "header_too_large",
        Some(h) if h.is_timeout() => "header_timeout",
        Some(h) if h.is_parse() => "bad_request",
        Some(h) if h.is_incomplete_message() => "incomplete",
        _ => "io",
    }
}

/// An I/O stream that notes that it moved a byte, for the idle timeout.
struct Tracked<I> {
    inner: I,
    active: Arc<AtomicBool>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.active.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active.store(true, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
