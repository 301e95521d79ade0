//! The status report's ratios as Prometheus counters: App+User requests with and without MFA
//! and app-only requests, by application, with a bounded `app` label. Every replica's share adds
//! up in Prometheus (`rules.yml`, `mfa-gateway report --prometheus`).

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::auth::policy::TokenKind;
use crate::metrics::counter_vec;

/// Settings for the per-application MFA counters (`[metrics]`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// App ids that always get their own `app` label.
    pub apps: Vec<String>,
    /// Other app ids labelled as first seen, up to this many; the rest are `other`.
    pub max_apps: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { apps: Vec::new(), max_apps: 50 }
    }
}

pub(crate) const OTHER_APP: &str = "other";

/// The ratio counters and the `app` labels they have given.
pub struct RatioCounters {
    app_user: IntCounterVec,
    app_only: IntCounterVec,
    apps: AppLabels,
}

impl RatioCounters {
    pub fn register(reg: &Registry, cfg: &MetricsConfig) -> Self {
        let app_user = counter_vec(
            reg,
            "mfa_gateway_app_user_requests_total",
            "Requests with a verified App+User token, by application and whether the token carried MFA. \
             The status report's App+User MFA ratio is mfa=\"true\" over the sum (app-only excluded).",
            &["app", "mfa"],
        );
        let app_only = counter_vec(
            reg,
            "mfa_gateway_app_only_requests_total",
            "Requests with a verified app-only token, by application.",
            &["app"],
        );
        for app in cfg.apps.iter().map(String::as_str).chain([OTHER_APP]) {
            app_user.with_label_values(&[app, "true"]);
            app_user.with_label_values(&[app, "false"]);
            app_only.with_label_values(&[app]);
        }
        let apps = AppLabels { allow: cfg.apps.clone(), max_dynamic: cfg.max_apps, seen: Mutex::new(HashSet::new()) };
        Self { app_user, app_only, apps }
    }

    /// The `app` label for an app id.
    pub fn app_label<'a>(&self, app: Option<&'a str>) -> &'a str {
        self.apps.label(app)
    }

    /// The counter for one verified token (resolve once, increment per request).
    pub fn counter(&self, app: Option<&str>, kind: TokenKind, mfa: bool) -> IntCounter {
        let label = self.apps.label(app);
        match kind {
            TokenKind::AppUser => self.app_user.with_label_values(&[label, if mfa { "true" } else { "false" }]),
            TokenKind::AppOnly => self.app_only.with_label_values(&[label]),
        }
    }
}

/// The `app` label: app ids on the allowlist, then the first `max_dynamic` other ids seen, then
/// `other`. Resolved once per verified token, never per request.
struct AppLabels {
    allow: Vec<String>,
    max_dynamic: usize,
    seen: Mutex<HashSet<String>>,
}

impl AppLabels {
    fn label<'a>(&self, app: Option<&'a str>) -> &'a str {
        let Some(app) = app else { return "none" };
        if self.allow.iter().any(|a| a == app) {
            return app;
        }
        // Only GUID-shaped ids become labels: a label is never free text from a token.
        if !crate::auth::token::is_guid(app) {
            return OTHER_APP;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(app) {
            return app;
        }
        if seen.len() < self.max_dynamic {
            seen.insert(app.to_string());
            return app;
        }
        OTHER_APP
    }
}
