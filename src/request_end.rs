//! The end of a request: its `requests_total` count, its duration, the in-flight gauge and its
//! audit event. They are written from a guard's `Drop`, so they happen however the request ends,
//! including when the client leaves and hyper drops the request's future mid-way. Once there is
//! an answer, the guard travels in the response body (`Ended`): a request ends when its body
//! ends, and a client that leaves mid-body is `client_closed`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Method};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

use crate::audit::{self, UserIds};
use crate::auth::policy::TokenKind;
use crate::auth::verified::Verified;
use crate::guarded::{Guard, Guarded};
use crate::metrics::{counter_vec, gauge, latency};
use crate::ratios::RatioCounters;

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
    /// Refused at once: `[upstream] max_in_flight` requests were already upstream.
    UpstreamBusy,
    BadRequest,
    /// The client went away before the answer.
    ClientClosed,
    /// Forwarded by a report-only route whose rules would have refused it.
    WouldRefuse,
    /// Refused at once: the DPoP replay store was full of live proofs.
    DpopBusy,
}

impl Decision {
    pub const ALL: [Decision; 12] = [
        Decision::Allowed,
        Decision::MfaRequired,
        Decision::MissingToken,
        Decision::InvalidToken,
        Decision::Forbidden,
        Decision::KeysUnavailable,
        Decision::UpstreamError,
        Decision::UpstreamBusy,
        Decision::BadRequest,
        Decision::ClientClosed,
        Decision::WouldRefuse,
        Decision::DpopBusy,
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
            Decision::UpstreamBusy => "upstream_busy",
            Decision::BadRequest => "bad_request",
            Decision::ClientClosed => "client_closed",
            Decision::WouldRefuse => "would_refuse",
            Decision::DpopBusy => "dpop_busy",
        }
    }
}

/// How the request came: to be forwarded, or as a front proxy's question (authorization-only
/// mode); the `mode` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Proxy,
    Authz,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Proxy, Mode::Authz];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Authz => "authz",
        }
    }
}

/// The status an audit event gives a request whose client left first (nginx's 499).
pub const CLIENT_CLOSED_STATUS: u16 = 499;

/// `token_kind` label: `None` when no token was verified.
pub fn kind_label(kind: Option<TokenKind>) -> &'static str {
    kind.map_or("none", TokenKind::as_str)
}

const KINDS: [Option<TokenKind>; 3] = [Some(TokenKind::AppUser), Some(TokenKind::AppOnly), None];

/// The request families: counted by route, decision and token kind, timed, and in flight.
pub struct RequestMetrics {
    requests: IntCounterVec,
    duration: Histogram,
    auth_duration: Histogram,
    in_flight: IntGauge,
    would_refuse: IntCounterVec,
    pub report_only_routes: IntGauge,
}

impl RequestMetrics {
    pub fn register(reg: &Registry) -> Self {
        Self {
            requests: counter_vec(
                reg,
                "mfa_gateway_requests_total",
                "Requests by route name, decision, token kind, and mode (proxy, or authz: a front proxy's question).",
                &["route", "decision", "token_kind", "mode"],
            ),
            duration: latency(
                reg,
                "mfa_gateway_request_duration_seconds",
                "Whole request time, to the end of the response body (or to the client leaving).",
            ),
            auth_duration: latency(
                reg,
                "mfa_gateway_auth_duration_seconds",
                "The gateway's own time per request before the upstream: routing, token verification, policy.",
            ),
            in_flight: gauge(reg, "mfa_gateway_requests_in_flight", "Requests being handled."),
            would_refuse: counter_vec(
                reg,
                "mfa_gateway_would_refuse_total",
                "Requests a report-only route (enforce = false) forwarded although its rules would refuse \
                 them, by route, reason, application and token kind.",
                &["route", "reason", "app", "token_kind"],
            ),
            report_only_routes: gauge(
                reg,
                "mfa_gateway_routes_report_only",
                "Routes (and the unmatched default) that are report-only: enforce = false.",
            ),
        }
    }

    /// One request a report-only route let through. Every label is from a bounded set: route
    /// names from the config, policy reasons, app labels as the MFA ratio counters give them.
    pub fn would_refuse(&self, route: &str, reason: &str, app: &str, kind: TokenKind) {
        self.would_refuse.with_label_values(&[route, reason, app, kind.as_str()]).inc();
    }

    /// One route's `requests_total` handles, resolved when a config is built so a request never
    /// hashes a label set. Only the `possible` combinations are exported from the start (at 0);
    /// any other is made on its first count, so nothing is lost if the list misses one. The series
    /// of a route that a reload removes stay (counters never go back).
    pub fn route_counters(&self, route: &str, possible: &[(Mode, Decision, Option<TokenKind>)]) -> RouteCounters {
        let counters = RouteCounters {
            route: route.into(),
            family: self.requests.clone(),
            handles: (0..Mode::ALL.len() * Decision::ALL.len() * KINDS.len()).map(|_| OnceLock::new()).collect(),
        };
        for &(mode, decision, kind) in possible {
            counters.handle(mode, decision, kind);
        }
        counters
    }
}

/// `requests_total` handles for one route, by mode, decision and token kind.
pub struct RouteCounters {
    route: Box<str>,
    family: IntCounterVec,
    handles: Vec<OnceLock<IntCounter>>,
}

impl RouteCounters {
    fn handle(&self, mode: Mode, decision: Decision, kind: Option<TokenKind>) -> &IntCounter {
        let m = mode as usize;
        let d = Decision::ALL.iter().position(|x| *x == decision).unwrap_or(0);
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(2);
        self.handles[(m * Decision::ALL.len() + d) * KINDS.len() + k].get_or_init(|| {
            self.family.with_label_values(&[&self.route, decision.as_str(), kind_label(kind), mode.as_str()])
        })
    }

    pub fn count(&self, mode: Mode, decision: Decision, kind: Option<TokenKind>) {
        self.handle(mode, decision, kind).inc();
    }
}

/// A verified token as the request path holds it: with what it derives from the token once.
pub type Token = Verified<Memo>;

/// What the request path derives from a verified token once and keeps with it in the token
/// cache, so a cached token costs nothing more per request: its MFA-ratio counter, and its ids
/// as `[audit]` shows them.
#[derive(Default)]
pub struct Memo {
    ratio: OnceLock<IntCounter>,
    /// Tagged with the `UserIds` that made it: a reload that changes `[audit]` keeps the token
    /// cache, and the next request redacts under the new settings.
    redacted: ArcSwapOption<Redacted>,
}

/// (user, oid) as one `UserIds` shows them.
pub struct Redacted {
    by: u64,
    user: Option<Box<str>>,
    oid: Option<Box<str>>,
}

/// A token's (user, oid) as logs and the report may show them.
pub enum Ids<'v> {
    Plain(&'v Token),
    Redacted(Arc<Redacted>),
}

impl Ids<'_> {
    pub fn user(&self) -> Option<&str> {
        match self {
            Ids::Plain(v) => v.user(),
            Ids::Redacted(r) => r.user.as_deref(),
        }
    }

    pub fn oid(&self) -> Option<&str> {
        match self {
            Ids::Plain(v) => v.oid(),
            Ids::Redacted(r) => r.oid.as_deref(),
        }
    }
}

impl Memo {
    /// The token's MFA-ratio counter (the `app` label resolved once per token).
    pub fn ratio<'v>(v: &'v Token, ratios: &RatioCounters) -> &'v IntCounter {
        v.memo.ratio.get_or_init(|| ratios.counter(v.app_id(), v.kind, v.mfa))
    }

    /// The token's ids under `user_ids`' settings.
    pub fn ids<'v>(v: &'v Token, user_ids: &UserIds) -> Ids<'v> {
        if user_ids.is_plain() {
            return Ids::Plain(v);
        }
        if let Some(r) = v.memo.redacted.load_full().filter(|r| r.by == user_ids.id()) {
            return Ids::Redacted(r);
        }
        let show = |id: Option<&str>| user_ids.show(id).map(String::into_boxed_str);
        let r = Arc::new(Redacted { by: user_ids.id(), user: show(v.user()), oid: show(v.oid()) });
        v.memo.redacted.store(Some(r.clone()));
        Ids::Redacted(r)
    }
}

/// Where the records of a request go: one per snapshot, shared by its requests.
pub struct Sinks {
    pub metrics: Arc<RequestMetrics>,
    /// `requests_total` handles by `Route::index`.
    pub counters: Vec<RouteCounters>,
    pub ratios: Arc<RatioCounters>,
    /// `Some` when `[audit]` is on.
    pub audit: Option<Arc<UserIds>>,
}

/// Who asked for what, as the audit event names it.
pub struct Asked {
    pub mode: Mode,
    pub request_id: HeaderValue,
    pub trace_id: Option<Box<str>>,
    pub client: SocketAddr,
    pub method: Method,
    /// `Route::index`.
    pub route: usize,
}

/// One request from the moment it is routed. Whatever else happens, dropping it writes the
/// request's records exactly once; without an outcome, the client left first.
pub struct RequestEnd {
    sinks: Arc<Sinks>,
    asked: Asked,
    start: Instant,
    /// End of the gateway's own work (routing, token, policy), admitted or not.
    auth_done: Option<Instant>,
    /// Upstream response headers (or the upstream's failure).
    pub upstream_done: Option<Instant>,
    pub verified: Option<Arc<Token>>,
    /// How the request bound its verified token to the client.
    pub bound: Option<crate::auth::BoundBy>,
    /// A report-only route's rules would have refused it, for this reason.
    pub would_refuse: Option<&'static str>,
    outcome: Option<(u16, Decision, &'static str)>,
}

impl RequestEnd {
    pub fn begin(sinks: Arc<Sinks>, asked: Asked, start: Instant) -> Self {
        sinks.metrics.in_flight.inc();
        Self {
            sinks,
            asked,
            start,
            auth_done: None,
            upstream_done: None,
            verified: None,
            bound: None,
            would_refuse: None,
            outcome: None,
        }
    }

    /// The gateway's own work ends now, admitted or not: noted, and in the auth histogram.
    pub fn auth_finished(&mut self) -> Instant {
        let now = Instant::now();
        self.auth_done = Some(now);
        self.sinks.metrics.auth_duration.observe((now - self.start).as_secs_f64());
        now
    }

    /// The answer is ready: its status, decision and reason (`"-"` when allowed).
    pub fn answered(&mut self, status: u16, decision: Decision, reason: &'static str) {
        self.outcome = Some((status, decision, reason));
    }

    fn route(&self) -> &str {
        &self.sinks.counters[self.asked.route].route
    }
}

/// A response body carrying its request's end: the records are written when the body ends, or
/// when it is dropped before its end (the client left mid-body: `client_closed`).
pub type Ended<B> = Guarded<B, RequestEnd>;

impl Guard for RequestEnd {
    fn cut_short(&mut self) {
        if let Some((_, decision, _)) = self.outcome.take() {
            tracing::debug!(
                request_id = crate::request_id::shown(&self.asked.request_id),
                answered = decision.as_str(),
                "client left before the end of the response body"
            );
        }
    }
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        let (status, decision, reason) = match self.outcome {
            Some(o) => o,
            None => {
                tracing::debug!(request_id = crate::request_id::shown(&self.asked.request_id), route = %self.route(), "client left before the answer ended");
                (CLIENT_CLOSED_STATUS, Decision::ClientClosed, "client_closed")
            }
        };
        // Now: the end of the response body, or the moment the client left.
        let elapsed = self.start.elapsed();
        let v = self.verified.as_deref();
        let kind = v.map(|v| v.kind);
        self.sinks.counters[self.asked.route].count(self.asked.mode, decision, kind);
        self.sinks.metrics.duration.observe(elapsed.as_secs_f64());
        self.sinks.metrics.in_flight.dec();
        let Some(user_ids) = self.sinks.audit.as_deref() else { return };
        let auth = self.auth_done.map_or(Duration::ZERO, |t| t - self.start);
        let upstream = match (self.auth_done, self.upstream_done) {
            (Some(a), Some(u)) => u - a,
            _ => Duration::ZERO,
        };
        let ids = v.map(|v| Memo::ids(v, user_ids));
        audit::emit(&audit::Event {
            mode: self.asked.mode.as_str(),
            request_id: self.asked.request_id.to_str().unwrap_or("-"),
            trace_id: self.asked.trace_id.as_deref(),
            client: self.asked.client,
            method: self.asked.method.as_str(),
            route: self.route(),
            status,
            decision: decision.as_str(),
            reason,
            token_kind: kind_label(kind),
            binding: self.bound.map_or("-", crate::auth::BoundBy::as_str),
            tenant: v.and_then(|v| v.tid()),
            app: v.and_then(|v| v.app_id()),
            user: ids.as_ref().and_then(Ids::user),
            object_id: ids.as_ref().and_then(Ids::oid),
            duration_us: elapsed.as_micros() as u64,
            auth_us: auth.as_micros() as u64,
            upstream_us: upstream.as_micros() as u64,
        });
    }
}
