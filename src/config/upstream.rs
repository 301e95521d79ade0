//! `[upstream]`: where requests go, the pool and its TLS, and what may travel besides what the
//! gateway judged (`upgrades`, `strip_request_headers`).

use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::validator::{ConfigError, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub scheme: Scheme,
    pub authority: Authority,
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to send response headers.
    pub timeout: Duration,
    /// Replaces the client's `Host` when set.
    pub host: Option<HeaderValue>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// TLS settings for `https://` upstreams (platform roots plus `ca_file`).
    pub tls: Option<crate::tls::ClientTls>,
    /// The files `tls` was built from (`ca_file`, `client_cert`, `client_key`).
    pub tls_files: Vec<PathBuf>,
    /// Requests upstream at once (tunnels included); past it, 503 at once.
    pub max_in_flight: usize,
    /// HTTP/1.1 connections to the upstream busy at once (tunnels included); a request past it
    /// waits for one to come free, within `timeout`.
    pub max_connections: usize,
}

/// Upstream connections busy at once, by default. Each costs some 50 KiB of buffers and state in
/// the gateway, so a sidecar with 512 clients would hold 25 MiB for them; 64 keep a loopback
/// upstream saturated (`README.md`, Performance) and serve 3 200 req/s at 10 ms an answer.
const DEFAULT_UPSTREAM_CONNECTIONS: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    url: String,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: String,
    #[serde(default = "default_upstream_timeout")]
    timeout: String,
    host: Option<String>,
    #[serde(default = "default_pool_idle_timeout")]
    pool_idle_timeout: String,
    pool_max_idle_per_host: Option<usize>,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    upgrades: Option<Vec<String>>,
    #[serde(default)]
    strip_request_headers: Vec<String>,
    max_in_flight: Option<usize>,
    max_connections: Option<usize>,
}

fn default_connect_timeout() -> String {
    "2s".into()
}
fn default_upstream_timeout() -> String {
    "30s".into()
}
fn default_pool_idle_timeout() -> String {
    "90s".into()
}

impl Validator<'_> {
    /// The table, or the error of its absence; with what it lets travel (`Forwarding`).
    pub(super) fn upstream_table(
        &self,
        raw: Option<RawUpstream>,
        max_connections: usize,
        authz: Option<&crate::authz::AuthzConfig>,
    ) -> Result<(UpstreamConfig, crate::headers::Forwarding), ConfigError> {
        let Some(mut raw) = raw else {
            return Err(self.err("upstream", "missing table [upstream] (with url = \"http://...\")"));
        };
        let upgrades = raw.upgrades.take();
        let strip = std::mem::take(&mut raw.strip_request_headers);
        Ok((self.upstream(raw, max_connections)?, self.forwarding(upgrades, strip, authz)?))
    }

    /// `max_connections` (the server's): the default of `max_in_flight`.
    fn upstream(&self, u: RawUpstream, max_connections: usize) -> Result<UpstreamConfig, ConfigError> {
        let uri = self.url("upstream.url", &u.url)?;
        let https = uri.scheme_str() == Some("https");
        for (key, set) in [
            ("upstream.ca_file", u.ca_file.is_some()),
            ("upstream.client_cert", u.client_cert.is_some()),
            ("upstream.client_key", u.client_key.is_some()),
        ] {
            if set && !https {
                return Err(self.err(key, "TLS settings need an https:// upstream.url"));
            }
        }
        let tls = if https {
            Some(self.client_tls(
                "upstream",
                u.ca_file.as_deref(),
                u.client_cert.as_deref(),
                u.client_key.as_deref(),
            )?)
        } else {
            None
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(self.err(
                "upstream.url",
                format!("bad URL {:?}: a path prefix is not supported; give scheme://host:port only", u.url),
            ));
        }
        let host = match u.host {
            Some(h) => Some(
                HeaderValue::from_str(&h)
                    .map_err(|_| self.err("upstream.host", format!("{h:?} is not a valid Host value")))?,
            ),
            None => None,
        };
        let upstream_connections = match u.max_connections {
            Some(0) => return Err(self.err("upstream.max_connections", "must be at least 1")),
            Some(n) => n,
            None => DEFAULT_UPSTREAM_CONNECTIONS,
        };
        Ok(UpstreamConfig {
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: uri.authority().cloned().expect("checked above"),
            connect_timeout: self.nonzero("upstream.connect_timeout", &u.connect_timeout)?,
            timeout: self.nonzero("upstream.timeout", &u.timeout)?,
            host,
            pool_idle_timeout: self.duration("upstream.pool_idle_timeout", &u.pool_idle_timeout)?,
            // No more kept idle than may be busy, so a burst never leaves more than that behind.
            pool_max_idle_per_host: u.pool_max_idle_per_host.unwrap_or(upstream_connections),
            max_connections: upstream_connections,
            max_in_flight: match u.max_in_flight {
                Some(0) => return Err(self.err("upstream.max_in_flight", "must be at least 1")),
                Some(n) => n,
                None => max_connections,
            },
            tls,
            tls_files: [&u.ca_file, &u.client_cert, &u.client_key]
                .into_iter()
                .flatten()
                .map(|p| self.path(p))
                .collect(),
        })
    }

    /// `[upstream] upgrades`: protocol names, never `h2c` (a second protocol on the connection
    /// whose requests the gateway would never see). `strip_request_headers`: header names, never
    /// one the gateway reads to judge the request.
    fn forwarding(
        &self,
        upgrades: Option<Vec<String>>,
        strip: Vec<String>,
        authz: Option<&crate::authz::AuthzConfig>,
    ) -> Result<crate::headers::Forwarding, ConfigError> {
        let mut f = crate::headers::Forwarding::default();
        if let Some(upgrades) = upgrades {
            f.upgrades = Vec::with_capacity(upgrades.len());
            for u in upgrades {
                let token = !u.is_empty() && HeaderName::from_bytes(u.as_bytes()).is_ok() && !u.contains('/');
                if !token {
                    return Err(
                        self.err("upstream.upgrades", format!("{u:?} is not a protocol name (like \"websocket\")"))
                    );
                }
                if u.eq_ignore_ascii_case("h2c") {
                    return Err(self.err(
                        "upstream.upgrades",
                        "\"h2c\" cannot be allowed: it turns the connection into HTTP/2 whose requests the gateway never judges",
                    ));
                }
                f.upgrades.push(u.to_ascii_lowercase());
            }
        }
        let mut read = vec!["authorization", "host"];
        if let Some(crate::authz::Front::Headers { method, uri, .. }) = authz.map(|a| &a.front) {
            read.extend([method.as_str(), uri.as_str()]);
        }
        for h in strip {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(self.err("upstream.strip_request_headers", format!("{h:?} is not a header name")));
            }
            let folded = h.to_ascii_lowercase().replace('_', "-");
            if read.iter().any(|r| r.replace('_', "-") == folded) {
                return Err(self.err(
                    "upstream.strip_request_headers",
                    format!("{h:?} is a header the gateway reads to judge the request"),
                ));
            }
            f.strip.push(folded);
        }
        Ok(f)
    }
}
