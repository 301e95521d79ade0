//! One struct of metric handles, registered once. Label values come from fixed sets only (route
//! names from the config, decision and token-kind enums), and the hot-path counters are resolved
//! to plain handles at start-up so a request never hashes a label set.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::auth::policy::TokenKind;
use crate::auth::token::Invalid;

/// What became of a request; the `decision` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allowed,
    MfaRequired,
    MissingToken,
    InvalidToken,
    Forbidden,
    KeysUnavailable,
    UpstreamError,
    BadRequest,
}

impl Decision {
    pub const ALL: [Decision; 8] = [
        Decision::Allowed,
        Decision::MfaRequired,
        Decision::MissingToken,
        Decision::InvalidToken,
        Decision::Forbidden,
        Decision::KeysUnavailable,
        Decision::UpstreamError,
        Decision::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::MfaRequired => "mfa_required",
            Decision::MissingToken => "missing_token",
            Decision::InvalidToken => "invalid_token",
            Decision::Forbidden => "forbidden",
            Decision::KeysUnavailable => "keys_unavailable",
            Decision::UpstreamError => "upstream_error",
            Decision::BadRequest => "bad_request",
        }
    }
}

/// `token_kind` label: `None` when no token was verified.
pub fn kind_label(kind: Option<TokenKind>) -> &'static str {
    kind.map_or("none", TokenKind::as_str)
}

const KINDS: [Option<TokenKind>; 3] = [Some(TokenKind::AppUser), Some(TokenKind::AppOnly), None];

/// Connection failure kinds; the `kind` label of `connection_errors_total`.
pub const CONNECTION_ERROR_KINDS: [&str; 6] =
    ["header_too_large", "header_timeout", "bad_request", "incomplete", "io", "accept"];

/// The `kind` label of `step_up_challenges_total` (`routes::StepUp` names).
pub const STEP_UP_KINDS: [&str; 3] = ["partner_center", "rfc9470", "entra_claims"];

/// Upstream failure kinds; the `kind` label of `upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "timeout", "tls", "protocol"];

/// Counters for a fixed set of values of one label, resolved once; unknown values are ignored.
struct KindCounters {
    kinds: &'static [&'static str],
    handles: Vec<IntCounter>,
}

impl KindCounters {
    fn new(reg: &Registry, name: &str, help: &str, kinds: &'static [&'static str]) -> Self {
        Self::labelled(reg, name, help, "kind", kinds)
    }

    fn labelled(reg: &Registry, name: &str, help: &str, label: &str, kinds: &'static [&'static str]) -> Self {
        let vec = IntCounterVec::new(Opts::new(name, help), &[label]).unwrap();
        reg.register(Box::new(vec.clone())).expect("metric names are unique");
        Self { kinds, handles: kinds.iter().map(|k| vec.with_label_values(&[k])).collect() }
    }

    fn inc(&self, kind: &str) {
        if let Some(i) = self.kinds.iter().position(|k| *k == kind) {
            self.handles[i].inc();
        }
    }
}

/// `requests_total` handles for one route, by decision and token kind.
pub struct RouteCounters(Vec<IntCounter>);

impl RouteCounters {
    pub fn count(&self, decision: Decision, kind: Option<TokenKind>) {
        let d = Decision::ALL.iter().position(|x| *x == decision).unwrap_or(0);
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(2);
        self.0[d * KINDS.len() + k].inc();
    }
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    invalid: Vec<IntCounter>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    upstream_errors: KindCounters,
    pub connections_open: IntGauge,
    pub requests_in_flight: IntGauge,
    pub key_fetches: IntCounterVec,
    pub key_refetches: IntCounterVec,
    pub keys_held: IntGaugeVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub tls_handshake_errors: IntCounter,
    connection_errors: KindCounters,
    client_headers_removed: KindCounters,
    step_up_challenges: KindCounters,
    pub auth_duration: Histogram,
    app_user_requests: IntCounterVec,
    app_only_requests: IntCounterVec,
    apps: AppLabels,
    pub key_set_age: GaugeVec,
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

pub const OTHER_APP: &str = "other";

/// Settings for the per-application MFA counters.
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

/// Buckets from 25 µs to 10 s: resolves the gateway's own microseconds and slow upstreams alike.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    pub fn new(cfg: &MetricsConfig) -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("metric names are unique");

        let requests_vec = IntCounterVec::new(
            Opts::new("mfa_gateway_requests_total", "Requests by route name, decision and token kind."),
            &["route", "decision", "token_kind"],
        )
        .unwrap();
        reg(Box::new(requests_vec.clone()));

        let invalid_vec = IntCounterVec::new(
            Opts::new("mfa_gateway_invalid_tokens_total", "Tokens refused as invalid, by reason."),
            &["reason"],
        )
        .unwrap();
        reg(Box::new(invalid_vec.clone()));
        let invalid = Invalid::ALL.iter().map(|i| invalid_vec.with_label_values(&[i.reason()])).collect();

        let request_duration = Histogram::with_opts(
            HistogramOpts::new("mfa_gateway_request_duration_seconds", "Whole request time, to response headers.")
                .buckets(latency_buckets()),
        )
        .unwrap();
        reg(Box::new(request_duration.clone()));
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new("mfa_gateway_upstream_duration_seconds", "Upstream time to response headers.")
                .buckets(latency_buckets()),
        )
        .unwrap();
        reg(Box::new(upstream_duration.clone()));

        let upstream_errors = KindCounters::new(
            &registry,
            "mfa_gateway_upstream_errors_total",
            "Requests the upstream failed, by kind.",
            &UPSTREAM_ERROR_KINDS,
        );

        let connections_open = IntGauge::new("mfa_gateway_connections_open", "Client connections open.").unwrap();
        reg(Box::new(connections_open.clone()));
        let requests_in_flight = IntGauge::new("mfa_gateway_requests_in_flight", "Requests being handled.").unwrap();
        reg(Box::new(requests_in_flight.clone()));

        let key_fetches = IntCounterVec::new(
            Opts::new("mfa_gateway_key_fetches_total", "Key set fetches by issuer and result."),
            &["issuer", "result"],
        )
        .unwrap();
        reg(Box::new(key_fetches.clone()));
        let key_refetches = IntCounterVec::new(
            Opts::new(
                "mfa_gateway_key_refetches_total",
                "Key set refetches for an unknown kid: ok, error, or limited (held back by refetch_min_interval).",
            ),
            &["issuer", "result"],
        )
        .unwrap();
        reg(Box::new(key_refetches.clone()));
        let keys_held =
            IntGaugeVec::new(Opts::new("mfa_gateway_keys_held", "Signing keys held, by issuer."), &["issuer"]).unwrap();
        reg(Box::new(keys_held.clone()));

        let cache = IntCounterVec::new(
            Opts::new("mfa_gateway_token_cache_total", "Verified-token cache lookups by result."),
            &["result"],
        )
        .unwrap();
        reg(Box::new(cache.clone()));

        let tls_handshake_errors = IntCounter::new(
            "mfa_gateway_tls_handshake_errors_total",
            "Client TLS handshakes that failed or timed out (plain HTTP on the TLS port included).",
        )
        .unwrap();
        reg(Box::new(tls_handshake_errors.clone()));

        let auth_duration = Histogram::with_opts(
            HistogramOpts::new(
                "mfa_gateway_auth_duration_seconds",
                "The gateway's own time per request before the upstream: routing, token verification, policy.",
            )
            .buckets(latency_buckets()),
        )
        .unwrap();
        reg(Box::new(auth_duration.clone()));
        let app_user_requests = IntCounterVec::new(
            Opts::new(
                "mfa_gateway_app_user_requests_total",
                "Requests with a verified App+User token, by application and whether the token carried MFA. \
                 The status report's App+User MFA ratio is mfa=\"true\" over the sum (app-only excluded).",
            ),
            &["app", "mfa"],
        )
        .unwrap();
        reg(Box::new(app_user_requests.clone()));
        let app_only_requests = IntCounterVec::new(
            Opts::new(
                "mfa_gateway_app_only_requests_total",
                "Requests with a verified app-only token, by application.",
            ),
            &["app"],
        )
        .unwrap();
        reg(Box::new(app_only_requests.clone()));
        for app in cfg.apps.iter().map(String::as_str).chain([OTHER_APP]) {
            app_user_requests.with_label_values(&[app, "true"]);
            app_user_requests.with_label_values(&[app, "false"]);
            app_only_requests.with_label_values(&[app]);
        }
        let key_set_age = GaugeVec::new(
            Opts::new(
                "mfa_gateway_key_set_age_seconds",
                "Seconds since the issuer's key set was last fetched successfully (absent until the first success).",
            ),
            &["issuer"],
        )
        .unwrap();
        reg(Box::new(key_set_age.clone()));
        let build = IntGaugeVec::new(Opts::new("mfa_gateway_build_info", "Build information; always 1."), &["version"])
            .unwrap();
        reg(Box::new(build.clone()));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let connection_errors = KindCounters::new(
            &registry,
            "mfa_gateway_connection_errors_total",
            "Client connections that ended in an error, by kind (oversized request head: 431).",
            &CONNECTION_ERROR_KINDS,
        );

        let client_headers_removed = KindCounters::labelled(
            &registry,
            "mfa_gateway_client_headers_removed_total",
            "Client request headers removed before routing: any spelling of an identity header, an \
             underscore twin of a header the gateway sets, or any underscore name (drop_underscore_headers).",
            "reason",
            &crate::headers::REMOVED_REASONS,
        );

        let step_up_challenges = KindCounters::new(
            &registry,
            "mfa_gateway_step_up_challenges_total",
            "Refusals for missing or stale MFA, by the challenge sent: partner_center (the mandated 401), \
             rfc9470, or entra_claims (to clients that handle it).",
            &STEP_UP_KINDS,
        );

        Metrics {
            registry,
            step_up_challenges,
            connection_errors,
            client_headers_removed,
            auth_duration,
            app_user_requests,
            app_only_requests,
            apps: AppLabels { allow: cfg.apps.clone(), max_dynamic: cfg.max_apps, seen: Mutex::new(HashSet::new()) },
            key_set_age,
            tls_handshake_errors,
            requests: requests_vec,
            invalid,
            request_duration,
            upstream_duration,
            upstream_errors,
            connections_open,
            requests_in_flight,
            key_fetches,
            key_refetches,
            keys_held,
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
        }
    }

    /// The MFA-ratio counter for one verified token (resolve once, increment per request).
    pub fn ratio_counter(&self, app: Option<&str>, kind: TokenKind, mfa: bool) -> IntCounter {
        let label = self.apps.label(app);
        match kind {
            TokenKind::AppUser => {
                self.app_user_requests.with_label_values(&[label, if mfa { "true" } else { "false" }])
            }
            TokenKind::AppOnly => self.app_only_requests.with_label_values(&[label]),
        }
    }

    /// One route's `requests_total` series, resolved when a config is built. The series of a
    /// route that a reload removes stay (counters never go back).
    pub fn route_counters(&self, route: &str) -> RouteCounters {
        let mut handles = Vec::with_capacity(Decision::ALL.len() * KINDS.len());
        for d in Decision::ALL {
            for k in KINDS {
                handles.push(self.requests.with_label_values(&[route, d.as_str(), kind_label(k)]));
            }
        }
        RouteCounters(handles)
    }

    /// An issuer's key series, shown at zero before its first fetch.
    pub fn issuer_added(&self, issuer: &str) {
        for result in ["ok", "error"] {
            self.key_fetches.with_label_values(&[issuer, result]);
        }
        for result in ["ok", "error", "limited"] {
            self.key_refetches.with_label_values(&[issuer, result]);
        }
        self.keys_held.with_label_values(&[issuer]);
    }

    /// A reload removed the issuer: its gauges go (its counters stay).
    pub fn issuer_removed(&self, issuer: &str) {
        let _ = self.keys_held.remove_label_values(&[issuer]);
        let _ = self.key_set_age.remove_label_values(&[issuer]);
    }

    pub fn invalid_token(&self, why: Invalid) {
        if let Some(i) = Invalid::ALL.iter().position(|x| *x == why) {
            self.invalid[i].inc();
        }
    }

    pub fn connection_error(&self, kind: &str) {
        self.connection_errors.inc(kind);
    }

    pub fn client_header_removed(&self, why: crate::headers::Removed) {
        self.client_headers_removed.inc(why.as_str());
    }

    pub fn step_up_challenge(&self, kind: &str) {
        self.step_up_challenges.inc(kind);
    }

    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors.inc(kind);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
