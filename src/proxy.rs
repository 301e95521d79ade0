//! Forwarding with a pooled client: URI rewrite, hop-by-hop headers, `X-Forwarded-*`, upgrades,
//! gRPC. Bodies (and their trailers) stream both ways; nothing here buffers a body.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::{Histogram, IntGauge, Registry};

use crate::config::UpstreamConfig;
use crate::error_chain;
use crate::guarded::{Guard, Guarded};
use crate::headers::is_grpc;
use crate::hop_by_hop::{strip_hop_by_hop, switched_as_asked};
use crate::metrics::{gauge, latency, KindCounters};
use crate::tunnel::{self, Lease};

/// Upstream failure kinds; the `kind` label of `upstream_errors_total`.
pub(crate) const UPSTREAM_ERROR_KINDS: [&str; 5] = ["dns", "connect", "timeout", "tls", "protocol"];

/// The upstream families: failures by kind, time to response headers, requests in flight.
pub(crate) struct UpstreamMetrics {
    errors: KindCounters,
    pub duration: Histogram,
    in_flight: IntGauge,
    waiting: IntGauge,
}

impl UpstreamMetrics {
    pub(crate) fn register(reg: &Registry) -> Self {
        Self {
            errors: KindCounters::new(
                reg,
                "mfa_gateway_upstream_errors_total",
                "Requests the upstream failed, by kind.",
                &UPSTREAM_ERROR_KINDS,
            ),
            duration: latency(reg, "mfa_gateway_upstream_duration_seconds", "Upstream time to response headers."),
            in_flight: gauge(
                reg,
                "mfa_gateway_upstream_in_flight",
                "Requests holding an upstream slot: from the request until its response body ends, and \
                 open tunnels (bounded by [upstream] max_in_flight).",
            ),
            waiting: gauge(
                reg,
                "mfa_gateway_upstream_waiting",
                "Requests waiting for an upstream connection to come free ([upstream] max_connections busy).",
            ),
        }
    }

    pub(crate) fn failed(&self, e: &UpstreamError) {
        self.errors.inc(e.kind());
    }
}

type ClientError = hyper_util::client::legacy::Error;

/// Why the upstream gave no response, with its causes for the log line only; a client is told
/// the status and a fixed sentence.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("the upstream's host name did not resolve")]
    Dns(#[source] ClientError),
    /// Refused, unreachable, or the connect timeout.
    #[error("cannot connect to the upstream")]
    Connect(#[source] ClientError),
    #[error("no response headers within upstream.timeout")]
    Timeout,
    /// Untrusted certificate, wrong name, ...
    #[error("TLS with the upstream failed")]
    Tls(#[source] ClientError),
    /// Connected, but the exchange failed (reset, bad response).
    #[error("the exchange with the upstream failed")]
    Protocol(#[source] ClientError),
    #[error("the request cannot be sent upstream")]
    Request(#[source] http::Error),
    #[error("the upstream switched to a protocol the gateway did not ask for")]
    UnaskedSwitch,
}

impl UpstreamError {
    /// Metric label (`crate::metrics::UPSTREAM_ERROR_KINDS`).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Dns(_) => "dns",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::Protocol(_) | UpstreamError::Request(_) | UpstreamError::UnaskedSwitch => "protocol",
        }
    }
}

/// Facts about the client's hop the proxy adds to the request. The request itself arrives with
/// its hop-by-hop headers gone (`crate::headers::Screen::receive`).
pub(crate) struct Origin {
    pub client_ip: IpAddr,
    pub scheme: &'static str,
    /// For log lines about this request, an upgraded tunnel's included.
    pub request_id: HeaderValue,
    /// The allowed protocols the client asked to upgrade to, if it did.
    pub upgrade: Option<HeaderValue>,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// One of `[upstream] max_in_flight` slots, held from the upstream request until its response
/// body ends or is dropped, or for as long as its tunnel is open.
pub(crate) struct InFlight {
    taken: Arc<AtomicUsize>,
    gauge: IntGauge,
    /// One of `[upstream] max_connections`, once the request has one (HTTP/1.1 only).
    connection: Option<OwnedSemaphorePermit>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.taken.fetch_sub(1, Ordering::Release);
        self.gauge.dec();
    }
}

/// The upstream's response body, streamed; its slot goes back when it ends or is dropped.
pub(crate) type UpstreamBody = Guarded<Incoming, InFlight>;

impl Guard for InFlight {}

pub(crate) struct Proxy {
    client: Client<Connector, Incoming>,
    /// HTTP/2 only, for gRPC: prior knowledge to an `http://` upstream, ALPN `h2` over TLS.
    grpc: Client<Connector, Incoming>,
    upstream: UpstreamConfig,
    /// Slots taken, of `upstream.max_in_flight`. A counter, not a semaphore: nothing ever
    /// waits for a slot, so there is no queue to keep.
    in_flight: Arc<AtomicUsize>,
    /// `upstream.max_connections` permits. HTTP/1.1 carries one request per connection at a time,
    /// so holding a permit from the request to the end of its response body (or tunnel) bounds the
    /// connections the pool opens; gRPC's HTTP/2 multiplexes and takes none.
    connections: Arc<Semaphore>,
}

impl Proxy {
    pub(crate) fn new(upstream: &UpstreamConfig) -> Self {
        let connector = |http2: bool| match &upstream.tls {
            // HTTP/2 to the upstream when its ALPN offers it.
            Some(tls) => crate::tls::https_connector(tls.0.clone(), http2, Some(upstream.connect_timeout)),
            None => {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(upstream.connect_timeout));
                http.set_nodelay(true);
                hyper_rustls::HttpsConnector::from((http, std::sync::Arc::new(crate::tls::unused_client_config())))
            }
        };
        let builder = |http2_only: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_timer(TokioTimer::new())
                .pool_idle_timeout(upstream.pool_idle_timeout)
                .pool_max_idle_per_host(upstream.pool_max_idle_per_host)
                .http2_only(http2_only);
            if http2_only {
                b.timer(TokioTimer::new());
            }
            b
        };
        Self {
            client: builder(false).build(connector(true)),
            grpc: builder(true).build(connector(true)),
            upstream: upstream.clone(),
            in_flight: Arc::default(),
            connections: Arc::new(Semaphore::new(upstream.max_connections)),
        }
    }

    /// A slot for one more request upstream, or `None` when all `max_in_flight` are taken.
    pub(crate) fn slot(&self, metrics: &UpstreamMetrics) -> Option<InFlight> {
        let taken = self.in_flight.fetch_add(1, Ordering::Acquire);
        if taken >= self.upstream.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Release);
            return None;
        }
        metrics.in_flight.inc();
        Some(InFlight { taken: self.in_flight.clone(), gauge: metrics.in_flight.clone(), connection: None })
    }

    /// Sends the request upstream and returns its response headers (the body still streaming,
    /// holding `slot`).
    /// A plain fn around an `async move` block, so the request is held once in its future (see
    /// `Gateway::serve`).
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold the request twice in its future")]
    pub(crate) fn forward<'a>(
        &'a self,
        mut req: Request<Incoming>,
        origin: &'a Origin,
        mut slot: InFlight,
        metrics: &'a UpstreamMetrics,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'a {
        async move {
            // The listener lends a lease to every request that asks to upgrade; it must not travel on.
            let lease = req.extensions_mut().remove::<Lease>();
            let client_upgrade = origin.upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
            let grpc = is_grpc(req.headers());
            let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
                // HTTP/2 carries the host in :authority.
                req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });

            let headers = req.headers_mut();
            if let Some(proto) = &origin.upgrade {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, proto.clone());
            }
            append_forwarded(headers, origin, original_host.as_ref());
            match (&self.upstream.host, original_host) {
                (Some(h), _) => {
                    headers.insert(header::HOST, h.clone());
                }
                (None, Some(h)) => {
                    headers.insert(header::HOST, h);
                }
                (None, None) => {}
            }

            let mut parts =
                Uri::builder().scheme(self.upstream.scheme.clone()).authority(self.upstream.authority.clone());
            // Path and query go through byte for byte.
            parts = parts.path_and_query(req.uri().path_and_query().map_or("/", |p| p.as_str()));
            *req.uri_mut() = parts.build().map_err(UpstreamError::Request)?;
            let client = if grpc {
                *req.version_mut() = Version::HTTP_2;
                &self.grpc
            } else {
                *req.version_mut() = Version::HTTP_11;
                &self.client
            };

            // The wait for a connection counts against the time allowed for the answer.
            let deadline = tokio::time::Instant::now() + self.upstream.timeout;
            if !grpc {
                slot.connection = Some(self.connection(&metrics.waiting, deadline).await?);
            }
            let mut resp = match tokio::time::timeout_at(deadline, client.request(req)).await {
                Err(_) => return Err(UpstreamError::Timeout),
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(resp)) => resp,
            };

            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                // Only to a protocol the gateway asked for: any other would carry what it never judged.
                let asked =
                    origin.upgrade.as_ref().is_some_and(|a| switched_as_asked(a, resp.headers().get(header::UPGRADE)));
                if let (true, Some(client_upgrade), Some(lease)) = (asked, client_upgrade, lease) {
                    let upstream_upgrade = hyper::upgrade::on(&mut resp);
                    let tunnel = tunnel::run(client_upgrade, upstream_upgrade, lease, origin.request_id.clone());
                    // The tunnel holds the slot while it is open.
                    tokio::spawn(async move {
                        tunnel.await;
                        drop(slot);
                    });
                    // Keep Connection/Upgrade: the client needs them to complete the switch.
                    return Ok(resp.map(|inner| Guarded::new(inner, None)));
                }
                return Err(UpstreamError::UnaskedSwitch);
            }
            strip_hop_by_hop(resp.headers_mut());
            Ok(resp.map(|inner| Guarded::new(inner, Some(slot))))
        }
    }
}

impl Proxy {
    /// A permit for one upstream connection: at once when one is free, else after waiting in
    /// line (FIFO) until `deadline`.
    async fn connection(
        &self,
        waiting: &IntGauge,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, UpstreamError> {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Ok(permit);
        }
        waiting.inc();
        let permit = tokio::time::timeout_at(deadline, self.connections.clone().acquire_owned()).await;
        waiting.dec();
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            // Never closed: the semaphore lives as long as the proxy.
            Ok(Err(_)) | Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

/// Appends this hop to `X-Forwarded-For`, `-Proto` and `-Host`; the rightmost entry of each is
/// always the gateway's own, so the upstream can trust it and only it.
fn append_forwarded(headers: &mut HeaderMap, origin: &Origin, host: Option<&HeaderValue>) {
    let ip = origin.client_ip.to_string();
    append(headers, HeaderName::from_static("x-forwarded-for"), &ip);
    append(headers, HeaderName::from_static("x-forwarded-proto"), origin.scheme);
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        append(headers, HeaderName::from_static("x-forwarded-host"), h);
    }
}

fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let joined = {
        let existing: Vec<&str> = headers.get_all(&name).iter().filter_map(|v| v.to_str().ok()).collect();
        if existing.is_empty() {
            None
        } else {
            Some(format!("{}, {value}", existing.join(", ")))
        }
    };
    let v = match joined {
        Some(j) => HeaderValue::from_str(&j),
        None => HeaderValue::from_str(value),
    };
    if let Ok(v) = v {
        headers.insert(name, v);
    }
}

/// The kind of a failed exchange, by its causes.
fn classify(e: ClientError) -> UpstreamError {
    if error_chain::any(&e, &|c| c.is::<rustls::Error>()) {
        UpstreamError::Tls(e)
    } else if e.is_connect() && error_chain::any(&e, &|c| c.to_string() == "dns error") {
        UpstreamError::Dns(e)
    } else if e.is_connect() {
        UpstreamError::Connect(e)
    } else {
        UpstreamError::Protocol(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_append_this_hop() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let origin = Origin {
            client_ip: "127.0.0.1".parse().unwrap(),
            scheme: "http",
            request_id: HeaderValue::from_static("r1"),
            upgrade: None,
        };
        append_forwarded(&mut h, &origin, Some(&HeaderValue::from_static("api.example")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }
}
