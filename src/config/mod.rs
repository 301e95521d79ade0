//! Configuration: one TOML file, parsed into raw serde structs (unknown keys rejected), then
//! validated into typed structs before any socket is bound. Every error names the file, the key
//! and the problem, so a bad deploy fails at start-up with one readable line.

mod authz;
mod dpop;
mod issuer;
mod routes;
mod server;
mod telemetry;
mod upstream;
mod validator;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::routes::{Defaults, Requirement, RouteConfig, StepUp};
pub use server::{AdminConfig, Http2Config, ServerConfig};
pub use telemetry::{AuditConfig, LogConfig, LogFormat, ReportToken, UserIdMode};
pub use upstream::UpstreamConfig;
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
    pub metrics: crate::ratios::MetricsConfig,
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

// ---------------------------------------------------------------------------------------------
// Raw serde structs: the file's shape, nothing more.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    admin: server::RawAdmin,
    upstream: Option<upstream::RawUpstream>,
    #[serde(default)]
    log: telemetry::RawLog,
    #[serde(default)]
    audit: telemetry::RawAudit,
    #[serde(default)]
    metrics: telemetry::RawMetrics,
    #[serde(default)]
    report: telemetry::RawReport,
    #[serde(default)]
    defaults: routes::RawDefaults,
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
    routes: Vec<routes::RawRoute>,
    #[serde(default)]
    authz: authz::RawAuthz,
    #[serde(default)]
    dpop: dpop::RawDpop,
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
        let authz = self.authz(raw.authz)?;
        let (upstream, forwarding) = self.upstream_table(raw.upstream, server.max_connections, authz.as_ref())?;
        let (report, report_token) = self.report_tables(raw.report)?;
        let (defaults, routes) = self.routes(raw.defaults, raw.challenge.step_up, raw.routes)?;
        let mut auth = issuer::validate(self, raw.issuers, raw.mfa, raw.identity, raw.challenge, raw.cache)?;
        auth.dpop = self.dpop(raw.dpop)?;
        let config = Config {
            admin: self.admin(raw.admin)?,
            log: self.log(raw.log)?,
            audit: self.audit(raw.audit)?,
            metrics: self.metrics(raw.metrics)?,
            server,
            upstream,
            forwarding,
            report,
            report_token,
            authz,
            auth,
            routes,
            defaults,
            source: None,
            files: Vec::new(),
        };
        self.across_tables(&config)?;
        Ok(config)
    }

    /// What no one table can check alone: routes against the token tables.
    fn across_tables(&self, c: &Config) -> Result<(), ConfigError> {
        // The Entra claims challenge asks for an auth context; without one it cannot be sent.
        if c.auth.challenge.auth_context.is_none() {
            let entra = |s: StepUp| s == StepUp::EntraClaims;
            if let Some(i) = c.routes.iter().position(|r| entra(r.step_up) && r.require != Requirement::Public) {
                return Err(self.err(
                    "challenge.auth_context",
                    format!("route[{i}] sends step_up = \"entra_claims\", which needs the auth context to request (e.g. \"c1\")"),
                ));
            }
            if entra(c.defaults.step_up) {
                return Err(self.err(
                    "challenge.auth_context",
                    "challenge.step_up = \"entra_claims\" needs the auth context to request (e.g. \"c1\")",
                ));
            }
        }
        let needs_tokens =
            c.defaults.require != Requirement::Public || c.routes.iter().any(|r| r.require != Requirement::Public);
        if needs_tokens && c.auth.issuers.is_empty() {
            return Err(self.err(
                "issuer",
                "routes require tokens but no [[issuer]] is configured; add one, or mark every route and [defaults].require as \"public\"",
            ));
        }
        Ok(())
    }
}
