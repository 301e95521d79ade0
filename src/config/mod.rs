//! Configuration: one TOML file, parsed into raw serde structs (unknown keys rejected), then
//! validated into typed structs before any socket is bound. Every error names the file, the key
//! and the problem, so a bad deploy fails at start-up with one readable line.

mod issuer;
mod validator;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::routes::{Defaults, Requirement, RouteConfig, StepUp};
use validator::{toml_error, Validator};
pub use validator::{ConfigError, FileStamp};

// ---------------------------------------------------------------------------------------------
// Typed configuration: what the rest of the gateway sees.

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    /// `[upstream] upgrades` and `strip_request_headers`: what a request may carry upstream
    /// besides what was judged. Apart from `upstream`, since the pool does not depend on them.
    pub forwarding: crate::headers::Forwarding,
    pub log: LogConfig,
    pub audit: AuditConfig,
    pub metrics: crate::report::MetricsConfig,
    pub report: crate::report::ReportConfig,
    /// `[authz]`: the decision listener of authorization-only mode, when on.
    pub authz: Option<crate::authz::AuthzConfig>,
    /// `[report].token_file`: the bearer secret `/report` asks for. Kept apart from `report`
    /// so that a rotated secret takes effect on reload.
    pub report_token: Option<ReportToken>,
    pub auth: crate::auth::AuthConfig,
    pub routes: Vec<RouteConfig>,
    /// `[defaults]` (with `[challenge].step_up`): for routes that do not say, and requests that
    /// match none.
    pub defaults: Defaults,
    /// The file this was loaded from (none for config text given directly, as the demo does).
    pub source: Option<PathBuf>,
    /// The config file and every file it names, each stamped before it was read. A stamp that
    /// differs now means the file changed since.
    pub files: Vec<(PathBuf, Option<FileStamp>)>,
}

/// The secret of `/report`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportToken(pub Vec<u8>);

impl std::fmt::Debug for ReportToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportToken(..)")
    }
}

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
}

/// How user identifiers (`upn`, `oid`) appear in audit events and `/report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserIdMode {
    Plain,
    /// A keyed hash: the same user maps to the same value, which does not reveal the id.
    Hash,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// One `mfa_gateway::audit` event per request.
    pub enabled: bool,
    pub user_ids: UserIdMode,
    pub hash_key: String,
}

// ---------------------------------------------------------------------------------------------
// Raw serde structs: the file's shape, nothing more.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    upstream: Option<RawUpstream>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    report: RawReport,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    mfa: issuer::RawMfa,
    #[serde(default)]
    identity: issuer::RawIdentity,
    #[serde(default)]
    challenge: issuer::RawChallenge,
    #[serde(default)]
    cache: issuer::RawCache,
    #[serde(default, rename = "issuer")]
    issuers: Vec<issuer::RawIssuer>,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
    #[serde(default)]
    authz: RawAuthz,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    listen: Option<String>,
    front: Option<crate::authz::FrontKind>,
    method_header: Option<String>,
    uri_header: Option<String>,
    path_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp2 {
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
struct RawServerTls {
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
struct RawSniCert {
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
struct RawAdmin {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_format")]
    format: LogFormat,
    #[serde(default = "default_log_filter")]
    filter: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    enabled: Option<bool>,
    user_ids: Option<UserIdMode>,
    hash_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    apps: Vec<String>,
    max_apps: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReport {
    window_days: Option<u32>,
    max_recent: Option<usize>,
    max_users: Option<usize>,
    max_apps: Option<usize>,
    token_file: Option<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { format: default_log_format(), filter: default_log_filter() }
    }
}

fn default_log_format() -> LogFormat {
    LogFormat::Pretty
}
fn default_log_filter() -> String {
    "info".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    require: Option<Requirement>,
    enforce: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    require: Requirement,
    #[serde(default)]
    roles_any: Vec<String>,
    #[serde(default)]
    scopes_any: Vec<String>,
    step_up: Option<StepUp>,
    max_auth_age: Option<String>,
    enforce: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Loading and validation.

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let stamp = FileStamp::of(path);
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            problem: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, &file, path.parent())?;
        config.files.insert(0, (path.to_path_buf(), stamp));
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text. `file` names it in errors; `base` resolves relative
    /// paths (key files) against the config's own folder.
    pub fn parse(text: &str, file: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
        let mut v = Validator { file, base: base.map(Path::to_path_buf), files: Default::default() };
        let mut config = v.config(raw)?;
        config.files = v.files.into_inner();
        Ok(config)
    }

    /// Settings that are valid but probably not what was meant; `check` prints them and the
    /// gateway logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        // Report-only is for a rollout; one left in place by accident lets refusals through.
        let report_only = self.routes.iter().filter(|r| !r.enforce && r.require != Requirement::Public);
        for r in report_only {
            w.push(format!(
                "route {:?} is report-only (enforce = false): requests its rules would refuse are forwarded",
                r.name
            ));
        }
        if !self.defaults.enforce && self.defaults.require != Requirement::Public {
            w.push("[defaults].enforce = false: requests that match no route are report-only".to_string());
        }
        for i in &self.auth.issuers {
            if i.keys.name.contains("{tenantid}") && i.rules.tenants.is_empty() {
                w.push(format!(
                    "issuer {:?} takes tokens from any tenant and has no tenants list: an app-only token from \
                     any organisation passes every route that allows app-only tokens; list your tenants in tenants = [...]",
                    i.keys.name
                ));
            }
            let url = match &i.keys.source {
                crate::auth::jwks::KeySource::Discovery(u) | crate::auth::jwks::KeySource::Jwks(u) => u,
                crate::auth::jwks::KeySource::File(_) => continue,
            };
            if url.scheme_str() == Some("http") && !url.host().is_some_and(is_loopback_host) {
                w.push(format!(
                    "issuer {:?} fetches its keys over plain http from {url}: anyone on the path can hand the \
                     gateway keys of their own; use https",
                    i.keys.name
                ));
            }
        }
        if self.report_token.is_none() && !self.admin.listen.ip().is_loopback() {
            w.push(format!(
                "admin.listen = \"{}\" is not a loopback address and [report].token_file is not set: /report \
                 (which lists users without MFA) answers 403 until a token file is set",
                self.admin.listen
            ));
        }
        w
    }

    /// Files `newer` names that are new, or changed since `self` read them.
    pub fn changed<'a>(&'a self, newer: &'a Config) -> impl Iterator<Item = &'a Path> + 'a {
        newer.files.iter().filter(|(p, s)| !self.files.iter().any(|(q, t)| q == p && t == s)).map(|(p, _)| p.as_path())
    }
}

/// `localhost`, or a loopback address (`127.0.0.0/8`, `[::1]`).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Validator<'_> {
    fn config(&mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        if raw.admin.max_connections == 0 {
            return Err(self.err("admin.max_connections", "must be at least 1"));
        }
        let admin = AdminConfig {
            listen: self.addr("admin.listen", &raw.admin.listen)?,
            max_connections: raw.admin.max_connections,
            header_read_timeout: self.nonzero("admin.header_read_timeout", &raw.admin.header_read_timeout)?,
            idle_timeout: self.nonzero("admin.idle_timeout", &raw.admin.idle_timeout)?,
        };
        let Some(mut raw_upstream) = raw.upstream else {
            return Err(self.err("upstream", "missing table [upstream] (with url = \"http://...\")"));
        };
        let upgrades = raw_upstream.upgrades.take();
        let strip = std::mem::take(&mut raw_upstream.strip_request_headers);
        let upstream = self.upstream(raw_upstream, server.max_connections)?;
        let log = LogConfig { format: raw.log.format, filter: raw.log.filter };
        let audit = AuditConfig {
            enabled: raw.audit.enabled.unwrap_or(true),
            user_ids: raw.audit.user_ids.unwrap_or(UserIdMode::Plain),
            hash_key: raw.audit.hash_key.unwrap_or_default(),
        };
        if audit.user_ids == UserIdMode::Hash && audit.hash_key.len() < 16 {
            return Err(
                self.err("audit.hash_key", "user_ids = \"hash\" needs a secret hash_key of at least 16 characters")
            );
        }
        let metrics = self.metrics(raw.metrics)?;
        let report_token = match raw.report.token_file.as_deref() {
            Some(f) => Some(self.report_token(f)?),
            None => None,
        };
        let report = self.report(raw.report)?;
        let authz = self.authz(raw.authz)?;
        let forwarding = self.forwarding(upgrades, strip, authz.as_ref())?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.filter) {
            return Err(self.err("log.filter", format!("bad filter {:?}: {e}", log.filter)));
        }
        let defaults = Defaults {
            require: raw.defaults.require.unwrap_or(Requirement::AppUserMfa),
            step_up: raw.challenge.step_up.unwrap_or(StepUp::PartnerCenter),
            enforce: raw.defaults.enforce.unwrap_or(true),
        };
        let step_up = defaults.step_up;
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            routes.push(self.route(i, r, &routes, defaults)?);
        }
        // Build the table once here so a conflicting template fails `check`, not start-up.
        crate::routes::RouteTable::new(&routes, defaults).map_err(|(i, e)| self.err(format!("route[{i}].path"), e))?;
        let auth = issuer::validate(self, raw.issuers, raw.mfa, raw.identity, raw.challenge, raw.cache)?;
        let default_require = defaults.require;
        // The Entra claims challenge asks for an auth context; without one it cannot be sent.
        if auth.challenge.auth_context.is_none() {
            let entra = |s: StepUp| s == StepUp::EntraClaims;
            if let Some(i) = routes.iter().position(|r| entra(r.step_up) && r.require != Requirement::Public) {
                return Err(self.err(
                    "challenge.auth_context",
                    format!("route[{i}] sends step_up = \"entra_claims\", which needs the auth context to request (e.g. \"c1\")"),
                ));
            }
            if entra(step_up) {
                return Err(self.err(
                    "challenge.auth_context",
                    "challenge.step_up = \"entra_claims\" needs the auth context to request (e.g. \"c1\")",
                ));
            }
        }
        let needs_tokens =
            default_require != Requirement::Public || routes.iter().any(|r| r.require != Requirement::Public);
        if needs_tokens && auth.issuers.is_empty() {
            return Err(self.err(
                "issuer",
                "routes require tokens but no [[issuer]] is configured; add one, or mark every route and [defaults].require as \"public\"",
            ));
        }
        Ok(Config {
            server,
            admin,
            upstream,
            forwarding,
            log,
            audit,
            metrics,
            report,
            report_token,
            authz,
            auth,
            routes,
            defaults,
            source: None,
            files: Vec::new(),
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

    fn metrics(&self, m: RawMetrics) -> Result<crate::report::MetricsConfig, ConfigError> {
        for a in &m.apps {
            if a.is_empty() || a.len() > 64 || a == crate::report::OTHER_APP || a == "none" {
                return Err(self.err("metrics.apps", format!("{a:?} cannot be an app label")));
            }
        }
        let max_apps = m.max_apps.unwrap_or(50);
        if max_apps > 1000 {
            return Err(self.err("metrics.max_apps", "must be at most 1000 (each app adds three series)"));
        }
        Ok(crate::report::MetricsConfig { apps: m.apps, max_apps })
    }

    fn authz(&self, a: RawAuthz) -> Result<Option<crate::authz::AuthzConfig>, ConfigError> {
        use crate::authz::{AuthzConfig, Front, FrontKind};
        let Some(listen) = a.listen else {
            if a.front.is_some() || a.method_header.is_some() || a.uri_header.is_some() || a.path_prefix.is_some() {
                return Err(self.err(
                    "authz.listen",
                    "[authz] settings without listen; set listen to turn the decision listener on",
                ));
            }
            return Ok(None);
        };
        let listen = self.addr("authz.listen", &listen)?;
        // Never guessed: which headers carry the original request depends on the front proxy.
        let kind = a.front.ok_or_else(|| {
            self.err(
                "authz.front",
                "required with authz.listen: \"nginx\", \"traefik\" or \"envoy\" (where the original request is read)",
            )
        })?;
        let header = |key: &str, v: Option<String>, default: &'static str| match v {
            None => Ok(HeaderName::from_static(default)),
            Some(v) => HeaderName::from_bytes(v.as_bytes())
                .map_err(|_| self.err(format!("authz.{key}"), format!("{v:?} is not a header name"))),
        };
        if kind != FrontKind::Nginx && (a.method_header.is_some() || a.uri_header.is_some()) {
            return Err(self.err(
                "authz.method_header",
                format!(
                    "front = \"{}\" has fixed header names; method_header and uri_header are for nginx",
                    kind.as_str()
                ),
            ));
        }
        if kind != FrontKind::Envoy && a.path_prefix.is_some() {
            return Err(self.err("authz.path_prefix", "path_prefix is for front = \"envoy\""));
        }
        let front = match kind {
            FrontKind::Nginx => Front::Headers {
                kind,
                method: header("method_header", a.method_header, "x-original-method")?,
                uri: header("uri_header", a.uri_header, "x-original-uri")?,
            },
            FrontKind::Traefik => Front::Headers {
                kind,
                method: HeaderName::from_static("x-forwarded-method"),
                uri: HeaderName::from_static("x-forwarded-uri"),
            },
            FrontKind::Envoy => {
                let path_prefix = a.path_prefix.unwrap_or_default();
                if !(path_prefix.is_empty() || path_prefix.starts_with('/') && !path_prefix.ends_with('/')) {
                    return Err(self.err(
                        "authz.path_prefix",
                        format!(
                            "{path_prefix:?}: write it as ext_authz's path_prefix, e.g. \"/authz\" (no trailing '/')"
                        ),
                    ));
                }
                Front::Envoy { path_prefix }
            }
        };
        Ok(Some(AuthzConfig { listen, front }))
    }

    fn report_token(&self, file: &str) -> Result<ReportToken, ConfigError> {
        let path = self.path(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.err("report.token_file", format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim();
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.err(
                "report.token_file",
                format!("{} must hold one secret of at least 16 printable characters", path.display()),
            ));
        }
        Ok(ReportToken(secret.as_bytes().to_vec()))
    }

    fn report(&self, r: RawReport) -> Result<crate::report::ReportConfig, ConfigError> {
        let d = crate::report::ReportConfig::default();
        let c = crate::report::ReportConfig {
            window_days: r.window_days.unwrap_or(d.window_days),
            max_recent: r.max_recent.unwrap_or(d.max_recent),
            max_users: r.max_users.unwrap_or(d.max_users),
            max_apps: r.max_apps.unwrap_or(d.max_apps),
        };
        if !(1..=90).contains(&c.window_days) {
            return Err(self.err("report.window_days", "must be between 1 and 90"));
        }
        if c.max_recent > 100_000 || c.max_users > 100_000 || c.max_apps > 100_000 {
            return Err(self.err("report", "max_recent, max_users and max_apps must be at most 100000"));
        }
        Ok(c)
    }

    fn server(&self, s: RawServer) -> Result<ServerConfig, ConfigError> {
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
        })
    }

    fn server_tls(&self, t: RawServerTls) -> Result<crate::tls::ServerTlsConfig, ConfigError> {
        if t.client_auth.is_some() && t.client_ca.is_none() {
            return Err(self.err(
                "server.tls.client_auth",
                "needs server.tls.client_ca (the CA bundle client certificates must chain to)",
            ));
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
        let built = crate::tls::server_config(&files).map_err(|e| self.err("server.tls", e))?;
        let c = crate::tls::ServerTlsConfig {
            files,
            handshake_timeout: self
                .nonzero("server.tls.handshake_timeout", t.handshake_timeout.as_deref().unwrap_or("10s"))?,
            built: std::sync::Arc::new(built),
        };
        Ok(c)
    }

    /// `max_connections`: the default idle pool. Each client connection has at most one HTTP/1.1
    /// request upstream at a time, so a pool that keeps as many never closes a connection only
    /// to open another at the next burst (pool_idle_timeout still closes idle ones).
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
        Ok(UpstreamConfig {
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: uri.authority().cloned().expect("checked above"),
            connect_timeout: self.nonzero("upstream.connect_timeout", &u.connect_timeout)?,
            timeout: self.nonzero("upstream.timeout", &u.timeout)?,
            host,
            pool_idle_timeout: self.duration("upstream.pool_idle_timeout", &u.pool_idle_timeout)?,
            pool_max_idle_per_host: u.pool_max_idle_per_host.unwrap_or(max_connections),
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

    fn route(
        &self,
        i: usize,
        r: RawRoute,
        seen: &[RouteConfig],
        defaults: Defaults,
    ) -> Result<RouteConfig, ConfigError> {
        let step_up = defaults.step_up;
        let key = |k: &str| format!("route[{i}].{k}");
        let name_ok = !r.name.is_empty()
            && r.name.len() <= 64
            && r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(self.err(
                key("name"),
                format!("{:?}: use 1-64 letters, digits, '_' or '-' (it becomes a metric label)", r.name),
            ));
        }
        if seen.iter().any(|s| s.name == r.name) {
            return Err(self.err(key("name"), format!("duplicate route name {:?}", r.name)));
        }
        if r.name == crate::routes::UNMATCHED {
            return Err(self
                .err(key("name"), format!("{:?} is the name of requests that match no route; pick another", r.name)));
        }
        if !r.path.starts_with('/') {
            return Err(self.err(key("path"), format!("{:?} must start with '/'", r.path)));
        }
        let mut methods = Vec::with_capacity(r.methods.len());
        for m in &r.methods {
            let method = http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| self.err(key("methods"), format!("{m:?} is not an HTTP method")))?;
            methods.push(method);
        }
        if r.require == Requirement::Public && !(r.roles_any.is_empty() && r.scopes_any.is_empty()) {
            return Err(
                self.err(key("require"), "a public route looks at no token, so roles_any/scopes_any cannot apply")
            );
        }
        let max_auth_age = match &r.max_auth_age {
            Some(s) => Some(self.nonzero(&key("max_auth_age"), s)?),
            None => None,
        };
        let mfa_route = matches!(r.require, Requirement::Mfa | Requirement::AppUserMfa);
        if !mfa_route && (max_auth_age.is_some() || r.step_up.is_some()) {
            return Err(self.err(
                key(if max_auth_age.is_some() { "max_auth_age" } else { "step_up" }),
                "applies to MFA routes only (require = \"mfa\" or \"app_user_mfa\")",
            ));
        }
        Ok(RouteConfig {
            name: r.name,
            path: r.path,
            methods,
            require: r.require,
            roles_any: r.roles_any,
            scopes_any: r.scopes_any,
            step_up: r.step_up.unwrap_or(step_up),
            max_auth_age,
            enforce: r.enforce.unwrap_or(defaults.enforce),
        })
    }
}
