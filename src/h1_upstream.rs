//! HTTP/1.1 to a cleartext upstream with no task per connection. HTTP/1.1 carries one exchange
//! at a time, so the request that holds a connection polls it from its own task (the client
//! connection's), from writing the request to the end of the response body, then leaves it idle
//! for the next. Nothing crosses between tasks: no dispatch channel, no wake-up of a connection
//! task and back. An upgraded connection leaves the pool for a task of its own.
//!
//! HTTPS upstreams and gRPC stay on hyper-util's pooled client (`crate::proxy`): ALPN may choose
//! HTTP/2 there, which multiplexes, and a multiplexed connection needs a task of its own.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why no response came, before the caller classifies it (`crate::proxy::UpstreamError`).
#[derive(Debug)]
pub(crate) enum Failure {
    Dns(std::io::Error),
    Connect(BoxError),
    Exchange(hyper::Error),
}

/// One upstream connection and the means to send on it; it makes progress only while polled.
struct Conn {
    send: http1::SendRequest<Incoming>,
    /// hyper's connection future, with upgrades (its type has no name outside hyper).
    io: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    /// The connection future has completed (closed, failed or upgraded); it must not be polled again.
    done: bool,
}

impl Conn {
    /// Reads and writes what the connection can now.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.done && self.io.as_mut().poll(cx).is_ready() {
            self.done = true;
        }
    }

    /// Whether an idle connection can take a request now. One still busy with an earlier
    /// exchange (say, a slow client's request body) is not waited for.
    fn ready_now(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx);
        !self.done && matches!(self.send.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections to one upstream, newest last.
pub(crate) struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Pool {
    /// A pool for `authority` (port 80 unless given). A task closes connections idle longer than
    /// `idle_timeout` until the pool is dropped.
    pub(crate) fn new(
        authority: &Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            idle: Mutex::default(),
            host: authority.host().trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: authority.port_u16().unwrap_or(80),
            connect_timeout,
            idle_timeout,
            max_idle,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends `req` (origin-form URI, `Host` set) and returns the response; its body drives the
    /// connection until it ends. A request a pooled connection could not even begin to send
    /// goes once more, on a new connection.
    pub(crate) async fn request(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamIncoming>, Failure> {
        let (mut conn, reused) = match self.checkout().await {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        let req = match exchange(&mut conn, req).await {
            Ok(resp) => return Ok(self.hold(conn, resp)),
            Err(mut e) => match (reused, e.take_message()) {
                (true, Some(req)) => req,
                _ => return Err(Failure::Exchange(e.into_error())),
            },
        };
        let mut conn = self.connect().await?;
        match exchange(&mut conn, req).await {
            Ok(resp) => Ok(self.hold(conn, resp)),
            Err(e) => Err(Failure::Exchange(e.into_error())),
        }
    }

    fn hold(self: &Arc<Self>, mut conn: Conn, resp: Response<Incoming>) -> Response<UpstreamIncoming> {
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection future hands the socket to the upgrade when polled to its end.
            tokio::spawn(poll_fn(move |cx| {
                conn.drive(cx);
                if conn.done {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
            return resp.map(UpstreamIncoming::pooled);
        }
        let pool = self.clone();
        resp.map(|inner| UpstreamIncoming { inner, held: Some((conn, pool)) })
    }

    /// The newest idle connection that can take a request now; stale ones are closed.
    async fn checkout(&self) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = self.idle.lock().expect("pool lock").pop_back()?;
            if since.elapsed() < self.idle_timeout && poll_fn(|cx| Poll::Ready(conn.ready_now(cx))).await {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < self.max_idle {
            idle.push_back(Idle { conn, since: Instant::now() });
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let addrs: Vec<_> =
            tokio::net::lookup_host((self.host.as_str(), self.port)).await.map_err(Failure::Dns)?.collect();
        let mut last: BoxError = "the upstream's host name has no address".into();
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    tcp.set_nodelay(true).map_err(|e| Failure::Connect(e.into()))?;
                    let (send, io) = http1::handshake(TokioIo::new(tcp)).await.map_err(Failure::Exchange)?;
                    return Ok(Conn { send, io: Box::pin(io.with_upgrades()), done: false });
                }
                Ok(Err(e)) => last = e.into(),
                Err(_) => last = format!("no connection to {addr} within upstream.connect_timeout").into(),
            }
        }
        Err(Failure::Connect(last))
    }
}

/// Writes `req` and reads the response head, driving the connection meanwhile.
async fn exchange(
    conn: &mut Conn,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Incoming>>> {
    let mut response = pin!(conn.send.try_send_request(req));
    poll_fn(|cx| {
        conn.drive(cx);
        response.as_mut().poll(cx)
    })
    .await
}

/// Closes the connections idle past the timeout, so none lingers when requests stop coming.
async fn sweep(pool: Weak<Pool>) {
    loop {
        let every = match pool.upgrade() {
            Some(pool) => {
                let timeout = pool.idle_timeout;
                pool.idle.lock().expect("pool lock").retain(|i| i.since.elapsed() < timeout);
                timeout
            }
            None => return,
        };
        tokio::time::sleep(every.max(Duration::from_secs(1))).await;
    }
}

/// An upstream response body; a driven connection's goes back to its pool when the body ends.
pub(crate) struct UpstreamIncoming {
    inner: Incoming,
    held: Option<(Conn, Arc<Pool>)>,
}

impl UpstreamIncoming {
    /// A body whose connection something else drives (hyper-util's pool, an upgrade's task).
    pub(crate) fn pooled(inner: Incoming) -> Self {
        Self { inner, held: None }
    }

    fn release(&mut self) {
        if let Some((conn, pool)) = self.held.take() {
            if !conn.done {
                pool.checkin(conn);
            }
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some((conn, _)) = this.held.as_mut() {
            conn.drive(cx);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => this.release(),
            // A failed body leaves its connection closed.
            Poll::Ready(Some(Err(_))) => this.held = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamIncoming {
    fn drop(&mut self) {
        // hyper's server stops polling a body that says it has ended; one dropped before its
        // end takes its connection with it, closed.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
