//! `[server]` (the API listener, its limits, HTTP/2 and TLS) and `[admin]` (the probes' port).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::validator::{ConfigError, Validator};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// Lame duck: after SIGTERM, how long to keep accepting while `/readyz` says draining.
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    pub tls: Option<crate::tls::ServerTlsConfig>,
    /// Remove every client header with `_` in its name (nginx's default).
    pub drop_underscore_headers: bool,
    pub http2: Http2Config,
    /// The origin clients address (`https://api.example.com`), normalized: what a DPoP proof's
    /// `htu` is checked against. Never guessed from `Host`; without it, DPoP-bound tokens are refused.
    pub public_origin: Option<String>,
}

/// HTTP/2 limits per client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server has seen them, before GOAWAY
    /// (the rapid-reset defence).
    pub max_pending_reset_streams: usize,
    pub max_header_list_size: u32,
}

/// `[admin]`: the probes' and scrapers' port, with limits of its own so that nothing held open
/// on it can take the descriptors the API port needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    workers: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_header_read_timeout")]
    header_read_timeout: String,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: String,
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "default_shutdown_delay")]
    shutdown_delay: String,
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace: String,
    tls: Option<RawServerTls>,
    #[serde(default = "yes")]
    drop_underscore_headers: bool,
    #[serde(default)]
    http2: RawHttp2,
    public_origin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp2 {
    #[serde(default = "default_h2_streams")]
    max_concurrent_streams: u32,
    #[serde(default = "default_h2_pending_resets")]
    max_pending_reset_streams: usize,
    /// Defaults to `server.max_header_bytes`.
    max_header_list_size: Option<u32>,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        Self {
            max_concurrent_streams: default_h2_streams(),
            max_pending_reset_streams: default_h2_pending_resets(),
            max_header_list_size: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_h2_streams() -> u32 {
    256
}
fn default_h2_pending_resets() -> usize {
    20
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    cert: String,
    key: String,
    #[serde(default)]
    sni: Vec<RawSniCert>,
    client_ca: Option<String>,
    client_auth: Option<crate::tls::ClientAuth>,
    handshake_timeout: Option<String>,
    reload_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSniCert {
    names: Vec<String>,
    cert: String,
    key: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            workers: 0,
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_header_bytes: default_max_header_bytes(),
            shutdown_delay: default_shutdown_delay(),
            shutdown_grace: default_shutdown_grace(),
            tls: None,
            drop_underscore_headers: true,
            http2: RawHttp2::default(),
            public_origin: None,
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_max_connections() -> usize {
    10_000
}
fn default_header_read_timeout() -> String {
    "10s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_shutdown_delay() -> String {
    "5s".into()
}
fn default_shutdown_grace() -> String {
    "30s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: String,
    // Probes and one or two scrapers need a handful; a scan or a stuck client gets no more.
    #[serde(default = "default_admin_max_connections")]
    max_connections: usize,
    #[serde(default = "default_admin_header_read_timeout")]
    header_read_timeout: String,
    // Longer than a 30 s scrape interval, so a scraper's connection is kept between scrapes.
    #[serde(default = "default_admin_idle_timeout")]
    idle_timeout: String,
}

fn default_admin_max_connections() -> usize {
    64
}
fn default_admin_header_read_timeout() -> String {
    "5s".into()
}
fn default_admin_idle_timeout() -> String {
    "60s".into()
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            max_connections: default_admin_max_connections(),
            header_read_timeout: default_admin_header_read_timeout(),
            idle_timeout: default_admin_idle_timeout(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}

impl Validator<'_> {
    pub(super) fn server(&self, s: RawServer) -> Result<ServerConfig, ConfigError> {
        if s.max_connections == 0 {
            return Err(self.err("server.max_connections", "must be at least 1"));
        }
        // hyper's HTTP/1 read buffer has a floor of 8 KiB; below it the setting would be ignored.
        if !(8192..=1024 * 1024).contains(&s.max_header_bytes) {
            return Err(self.err("server.max_header_bytes", "must be between 8192 and 1048576"));
        }
        if s.workers > 1024 {
            return Err(self.err("server.workers", "must be at most 1024 (0 = one per core)"));
        }
        let h2 = &s.http2;
        if !(1..=65_536).contains(&h2.max_concurrent_streams) {
            return Err(self.err("server.http2.max_concurrent_streams", "must be between 1 and 65536"));
        }
        if !(1..=10_000).contains(&h2.max_pending_reset_streams) {
            return Err(self.err("server.http2.max_pending_reset_streams", "must be between 1 and 10000"));
        }
        let header_list = h2.max_header_list_size.unwrap_or(s.max_header_bytes as u32);
        if !(8192..=1024 * 1024).contains(&header_list) {
            return Err(self.err("server.http2.max_header_list_size", "must be between 8192 and 1048576"));
        }
        let http2 = Http2Config {
            max_concurrent_streams: h2.max_concurrent_streams,
            max_pending_reset_streams: h2.max_pending_reset_streams,
            max_header_list_size: header_list,
        };
        Ok(ServerConfig {
            listen: self.addr("server.listen", &s.listen)?,
            workers: s.workers,
            max_connections: s.max_connections,
            header_read_timeout: self.nonzero("server.header_read_timeout", &s.header_read_timeout)?,
            idle_timeout: self.nonzero("server.idle_timeout", &s.idle_timeout)?,
            max_header_bytes: s.max_header_bytes,
            shutdown_delay: self.duration("server.shutdown_delay", &s.shutdown_delay)?,
            shutdown_grace: self.duration("server.shutdown_grace", &s.shutdown_grace)?,
            tls: match s.tls {
                Some(t) => Some(self.server_tls(t)?),
                None => None,
            },
            drop_underscore_headers: s.drop_underscore_headers,
            http2,
            public_origin: s.public_origin.map(|o| self.origin("server.public_origin", &o)).transpose()?,
        })
    }

    fn server_tls(&self, t: RawServerTls) -> Result<crate::tls::ServerTlsConfig, ConfigError> {
        match (t.client_auth, &t.client_ca) {
            (Some(crate::tls::ClientAuth::Any), Some(_)) => {
                return Err(self.err(
                    "server.tls.client_auth",
                    "\"any\" trusts no CA: remove server.tls.client_ca, or use \"optional\" to check the chain too",
                ));
            }
            (Some(crate::tls::ClientAuth::Required | crate::tls::ClientAuth::Optional), None) => {
                return Err(self.err(
                    "server.tls.client_auth",
                    "needs server.tls.client_ca (the CA bundle client certificates must chain to)",
                ));
            }
            _ => {}
        }
        let mut sni = Vec::with_capacity(t.sni.len());
        let mut seen: Vec<String> = Vec::new();
        for (i, s) in t.sni.into_iter().enumerate() {
            let key = format!("server.tls.sni[{i}].names");
            if s.names.is_empty() {
                return Err(self.err(key, "at least one name is required"));
            }
            let mut names = Vec::with_capacity(s.names.len());
            for n in s.names {
                let n = n.to_ascii_lowercase();
                let bare = n.strip_prefix("*.").unwrap_or(&n);
                let ok = !bare.is_empty()
                    && bare
                        .split('.')
                        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
                if !ok {
                    return Err(self.err(key, format!("{n:?} is not a DNS name (a leading \"*.\" is allowed)")));
                }
                if seen.contains(&n) {
                    return Err(self.err(key, format!("{n:?} is named twice")));
                }
                seen.push(n.clone());
                names.push(n);
            }
            sni.push(crate::tls::SniCert { names, cert: self.path(&s.cert), key: self.path(&s.key) });
        }
        if t.reload_interval.is_some() {
            return Err(self.err(
                "server.tls.reload_interval",
                "no longer used: certificate files are watched with the config file (and SIGHUP reloads both); remove it",
            ));
        }
        let files = crate::tls::ServerTlsFiles {
            cert: self.path(&t.cert),
            key: self.path(&t.key),
            sni,
            client_ca: t.client_ca.as_deref().map(|p| self.path(p)),
            client_auth: t.client_auth.unwrap_or(crate::tls::ClientAuth::Required),
        };
        // Load the files now so `check` (and a reload) catches a bad certificate or key.
        let built =
            crate::tls::server_config(&files).map_err(|e| self.err("server.tls", crate::error_chain::describe(&e)))?;
        let c = crate::tls::ServerTlsConfig {
            files,
            handshake_timeout: self
                .nonzero("server.tls.handshake_timeout", t.handshake_timeout.as_deref().unwrap_or("10s"))?,
            built: std::sync::Arc::new(built),
        };
        Ok(c)
    }

    pub(super) fn admin(&self, a: RawAdmin) -> Result<AdminConfig, ConfigError> {
        if a.max_connections == 0 {
            return Err(self.err("admin.max_connections", "must be at least 1"));
        }
        Ok(AdminConfig {
            listen: self.addr("admin.listen", &a.listen)?,
            max_connections: a.max_connections,
            header_read_timeout: self.nonzero("admin.header_read_timeout", &a.header_read_timeout)?,
            idle_timeout: self.nonzero("admin.idle_timeout", &a.idle_timeout)?,
        })
    }
}
