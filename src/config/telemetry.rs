//! What the gateway tells: `[log]`, `[audit]`, `[metrics]` and `[report]`.

use serde::Deserialize;

use super::validator::{ConfigError, Validator};

/// The secret of `/report`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportToken(pub Vec<u8>);

impl std::fmt::Debug for ReportToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportToken(..)")
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default = "default_log_format")]
    format: LogFormat,
    #[serde(default = "default_log_filter")]
    filter: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    enabled: Option<bool>,
    user_ids: Option<UserIdMode>,
    hash_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default)]
    apps: Vec<String>,
    max_apps: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReport {
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

impl Validator<'_> {
    pub(super) fn log(&self, l: RawLog) -> Result<LogConfig, ConfigError> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&l.filter) {
            return Err(self.err("log.filter", format!("bad filter {:?}: {e}", l.filter)));
        }
        Ok(LogConfig { format: l.format, filter: l.filter })
    }

    pub(super) fn audit(&self, a: RawAudit) -> Result<AuditConfig, ConfigError> {
        let audit = AuditConfig {
            enabled: a.enabled.unwrap_or(true),
            user_ids: a.user_ids.unwrap_or(UserIdMode::Plain),
            hash_key: a.hash_key.unwrap_or_default(),
        };
        if audit.user_ids == UserIdMode::Hash && audit.hash_key.len() < 16 {
            return Err(
                self.err("audit.hash_key", "user_ids = \"hash\" needs a secret hash_key of at least 16 characters")
            );
        }
        Ok(audit)
    }

    pub(super) fn metrics(&self, m: RawMetrics) -> Result<crate::ratios::MetricsConfig, ConfigError> {
        for a in &m.apps {
            if a.is_empty() || a.len() > 64 || a == crate::ratios::OTHER_APP || a == "none" {
                return Err(self.err("metrics.apps", format!("{a:?} cannot be an app label")));
            }
        }
        let max_apps = m.max_apps.unwrap_or(50);
        if max_apps > 1000 {
            return Err(self.err("metrics.max_apps", "must be at most 1000 (each app adds three series)"));
        }
        Ok(crate::ratios::MetricsConfig { apps: m.apps, max_apps })
    }

    /// `[report]`, and the secret its `token_file` holds.
    pub(super) fn report_tables(
        &self,
        r: RawReport,
    ) -> Result<(crate::report::ReportConfig, Option<ReportToken>), ConfigError> {
        let token = match r.token_file.as_deref() {
            Some(f) => Some(self.report_token(f)?),
            None => None,
        };
        Ok((self.report(r)?, token))
    }

    fn report_token(&self, file: &str) -> Result<ReportToken, ConfigError> {
        Ok(ReportToken(self.secret_file("report.token_file", file, 16)?))
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
}
