//! Forwarding with a pooled client: URI rewrite, hop-by-hop headers, `X-Forwarded-*`, upgrades.
//! Bodies stream both ways; nothing here buffers a body.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::UpstreamConfig;
use crate::headers::{connection_tokens, strip_hop_by_hop};

/// Why the upstream gave no response.
#[derive(Debug)]
pub enum UpstreamError {
    /// Could not connect (refused, unreachable, DNS, connect timeout).
    Connect(String),
    /// No response headers within `upstream.timeout`.
    Timeout,
    /// The TLS handshake with the upstream failed (untrusted certificate, wrong name, ...).
    Tls(String),
    /// Connected, but the exchange failed (reset, bad response).
    Protocol(String),
}

impl UpstreamError {
    /// Metric label (`crate::metrics::UPSTREAM_ERROR_KINDS`).
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::Protocol(_) => "protocol",
        }
    }
}

/// Facts about the client connection the proxy adds to the request.
pub struct Origin {
    pub client_ip: IpAddr,
    pub scheme: &'static str,
    /// For log lines about this request, an upgraded tunnel's included.
    pub request_id: HeaderValue,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct Proxy {
    client: Client<Connector, Incoming>,
    upstream: UpstreamConfig,
}

impl Proxy {
    pub fn new(upstream: &UpstreamConfig) -> Self {
        let connector = match &upstream.tls {
            // HTTP/2 to the upstream when its ALPN offers it.
            Some(tls) => crate::tls::https_connector(tls.clone(), true, Some(upstream.connect_timeout)),
            None => {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(upstream.connect_timeout));
                http.set_nodelay(true);
                hyper_rustls::HttpsConnector::from((http, std::sync::Arc::new(empty_tls())))
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(upstream.pool_idle_timeout)
            .pool_max_idle_per_host(upstream.pool_max_idle_per_host)
            .build(connector);
        Self { client, upstream: upstream.clone() }
    }

    /// Sends the request upstream and returns its response headers (the body still streaming).
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        origin: &Origin,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            // HTTP/2 carries the host in :authority.
            req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(proto) = &upgrade {
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

        let mut parts = Uri::builder().scheme(self.upstream.scheme.clone()).authority(self.upstream.authority.clone());
        // Path and query go through byte for byte.
        parts = parts.path_and_query(req.uri().path_and_query().map_or("/", |p| p.as_str()));
        *req.uri_mut() = parts.build().map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        *req.version_mut() = Version::HTTP_11;

        let mut resp = match tokio::time::timeout(self.upstream.timeout, self.client.request(req)).await {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Err(e)) if is_tls(&e) => return Err(UpstreamError::Tls(root_cause(&e))),
            Ok(Err(e)) if e.is_connect() => return Err(UpstreamError::Connect(root_cause(&e))),
            Ok(Err(e)) => return Err(UpstreamError::Protocol(root_cause(&e))),
            Ok(Ok(resp)) => resp,
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, origin.request_id.clone()));
                // Keep Connection/Upgrade: the client needs them to complete the switch.
                return Ok(resp);
            }
            return Err(UpstreamError::Protocol("upstream switched protocols unasked".into()));
        }
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }
}

/// The protocol named by `Upgrade` when `Connection` asks for it (HTTP/1.1 only).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned()).flatten()
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

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, request_id: HeaderValue) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(?request_id, error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
        tracing::debug!(?request_id, error = %e, "upgraded connection ended with an error");
    }
}

/// A plain-http upstream never uses this; it only satisfies the connector's type.
fn empty_tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Whether a rustls error is anywhere in the chain. The connector nests it in `io::Error`s, whose
/// `source()` skips the wrapped error, so each node is unwrapped too.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    fn node(e: &(dyn std::error::Error + 'static)) -> bool {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            return node(inner);
        }
        false
    }
    let mut cur = Some(e);
    while let Some(err) = cur {
        if node(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The innermost cause: "connection refused" says more than "client error (Connect)".
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
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
        };
        append_forwarded(&mut h, &origin, Some(&HeaderValue::from_static("api.example")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }
}
