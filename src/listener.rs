//! Accept loop: connection cap, HTTP/1.1 and HTTP/2 (prior knowledge) on one port, header and
//! idle timeouts, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

use crate::config::ServerConfig;
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

/// Serves `listener` until `shutdown` turns true, then asks every connection to finish.
pub async fn serve(
    listener: TcpListener,
    stack: Arc<Stack>,
    cfg: ServerConfig,
    mut shutdown: watch::Receiver<bool>,
    drain: Arc<Drain>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));

    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: log, back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
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
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let idle_timeout = cfg.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _guard = guard;
            stack.metrics.connections_open.inc();
            let conn_info = Conn { peer, tls: false };
            serve_connection(stream, &builder, stack.clone(), conn_info, idle_timeout, shutdown).await;
            stack.metrics.connections_open.dec();
        });
    }
    tracing::info!("listener closed; draining connections");
}

async fn serve_connection<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    stack: Arc<Stack>,
    conn_info: Conn,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(AtomicU64::new(now_ms()));
    let io = TokioIo::new(Tracked { inner: io, last: activity.clone() });
    let svc = service_fn(move |req| {
        let stack = stack.clone();
        async move { Ok::<_, Infallible>(stack.handle(req, conn_info).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_deadline = tokio::time::Instant::now()
            + idle_timeout
                .saturating_sub(Duration::from_millis(now_ms().saturating_sub(activity.load(Ordering::Relaxed))));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %conn_info.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_deadline), if !closing => {
                let idle_for = now_ms().saturating_sub(activity.load(Ordering::Relaxed));
                if idle_for >= idle_timeout.as_millis() as u64 {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Milliseconds on a process-wide monotonic clock.
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// An I/O stream that notes when it last moved a byte, for the idle timeout.
struct Tracked<I> {
    inner: I,
    last: Arc<AtomicU64>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.store(now_ms(), Ordering::Relaxed);
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
            self.last.store(now_ms(), Ordering::Relaxed);
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
