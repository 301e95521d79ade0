//! Accept loop: connection cap, HTTP/1.1 and HTTP/2 (prior knowledge) on one port, header and
//! idle timeouts, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::stack::{Conn, Stack};

/// Counts open connections so shutdown can wait for them to finish.
#[derive(Default)]
pub struct Drain {
    open: AtomicUsize,
    idle: Notify,
}

impl Drain {
    /// Waits until every connection has closed or `grace` has passed; returns how many remain.
    pub async fn wait(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.idle.notified();
            let open = self.open.load(Ordering::Acquire);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.open.load(Ordering::Acquire);
            }
        }
    }
}

struct Guard(Arc<Drain>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
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

/// Serves `listener` until `shutdown` turns true, then asks every connection to finish. Each
/// connection is served with the settings of the snapshot current when it was accepted.
pub async fn serve(
    listener: TcpListener,
    stack: Arc<Stack>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
    drain: Arc<Drain>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut accept_failures: Option<AcceptEpisode> = None;

    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.changed() => break,
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
                    stack.metrics.connection_error("accept");
                    match accept_failures.as_mut().filter(|ep| !ep.over()) {
                        Some(episode) => episode.failed(),
                        None => {
                            tracing::warn!(error = %e, "accept failed; retrying every 50 ms until it succeeds");
                            accept_failures = Some(AcceptEpisode::new());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        drain.open.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(drain.clone());
        let stack = stack.clone();
        let shutdown = shutdown.clone();
        let (builder, tls, idle_timeout) = {
            let snap = stack.snapshot();
            let tls = snap.tls.clone().zip(snap.config.server.tls.as_ref().map(|t| t.handshake_timeout));
            (snap.http.clone(), tls, snap.config.server.idle_timeout)
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _guard = guard;
            stack.metrics.connections_open.inc();
            let activity = Arc::new(AtomicBool::new(false));
            let io = Tracked { inner: stream, active: activity.clone() };
            match tls {
                None => {
                    let conn_info = Conn { peer, tls: false };
                    serve_connection(io, activity, &builder, stack.clone(), conn_info, idle_timeout, shutdown).await;
                }
                Some((tls, limit)) => match handshake(io, tls, limit, &stack).await {
                    Some(io) => {
                        let conn_info = Conn { peer, tls: true };
                        serve_connection(io, activity, &builder, stack.clone(), conn_info, idle_timeout, shutdown)
                            .await;
                    }
                    None => tracing::debug!(client = %peer, "TLS handshake did not complete"),
                },
            }
            stack.metrics.connections_open.dec();
        });
    }
    tracing::info!("listener closed; draining connections");
}

/// Completes the TLS handshake within the configured time. A client that speaks plain HTTP
/// to the TLS port is told so in a one-line 400 rather than left with a reset.
async fn handshake(
    mut io: Tracked<tokio::net::TcpStream>,
    tls: TlsAcceptor,
    limit: Duration,
    stack: &Stack,
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
            stack.metrics.tls_handshake_errors.inc();
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            stack.metrics.tls_handshake_errors.inc();
            tracing::debug!(timeout = ?limit, "TLS handshake timed out");
            None
        }
    }
}

async fn serve_connection<I>(
    io: I,
    activity: Arc<AtomicBool>,
    builder: &auto::Builder<TokioExecutor>,
    stack: Arc<Stack>,
    conn_info: Conn,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let metrics = stack.metrics.clone();
    let svc = service_fn(move |req| {
        let stack = stack.clone();
        async move { Ok::<_, Infallible>(stack.handle(req, conn_info).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    // Idle check without a clock read per I/O: every half timeout, see whether any byte moved.
    // A connection is closed after between one and one and a half `idle_timeout`s of silence.
    let tick = idle_timeout / 2;
    let mut next = tokio::time::Instant::now() + tick;
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // Client faults (oversized head, header timeout, bad framing) are answered
                    // by hyper itself; count them here so they show up.
                    let kind = connection_error_kind(&*e);
                    metrics.connection_error(kind);
                    tracing::debug!(client = %conn_info.peer, kind, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(next), if !closing => {
                next += tick;
                if activity.swap(false, Ordering::Relaxed) {
                    quiet = Duration::ZERO;
                } else {
                    quiet += tick;
                    if quiet >= idle_timeout {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
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
