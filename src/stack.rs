//! The request path, in order. `auth` and `proxy` never see each other; they meet here.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

use arc_swap::ArcSwap;

use crate::audit;
use crate::auth::challenge::AuthRefusal;
use crate::auth::Verified;
use crate::metrics::{Decision, Metrics};
use crate::proxy::Origin;
use crate::refusal::{Body, Refusal};
use crate::report::{Observation, Report};
use crate::routes::{Requirement, Route};
use crate::snapshot::Snapshot;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// What outlives a config: the current snapshot (swapped whole on reload), metrics, the status
/// report, request ids, and whether the gateway is draining.
pub struct Stack {
    current: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub report: Report,
    pub request_ids: RequestIds,
    draining: AtomicBool,
}

/// What one request learned on its way through, for metrics and the audit event. Three clock
/// reads at most: arrival, end of the gateway's own work, upstream response headers.
struct Trace {
    verified: Option<Arc<Verified>>,
    start: Instant,
    auth_done: Option<Instant>,
    upstream_done: Option<Instant>,
}

/// Redacted (user, oid), as audit events and the report may show them.
type RedactedIds = (Option<Box<str>>, Option<Box<str>>);

/// Per-token values derived once and kept on the cached token (`Verified::annotations`).
struct Derived {
    ratio: prometheus::IntCounter,
    /// `None` in plain mode, where the claims are used as they are.
    redacted: Option<RedactedIds>,
}

impl Derived {
    /// (user, oid) as logs and the report may show them.
    fn ids<'v>(&'v self, v: &'v Verified) -> (Option<&'v str>, Option<&'v str>) {
        match &self.redacted {
            None => (v.user(), v.oid()),
            Some((user, oid)) => (user.as_deref(), oid.as_deref()),
        }
    }
}

impl Stack {
    pub fn new(first: Snapshot, metrics: Arc<Metrics>, report: Report) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
            metrics,
            report,
            request_ids: RequestIds::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// The snapshot new requests and connections get.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts `next` in place for every request that starts from now on; returns the one it
    /// replaced, which requests in flight keep until they end.
    pub fn swap(&self, next: Snapshot) -> Arc<Snapshot> {
        self.current.swap(Arc::new(next))
    }

    /// Lame duck: `/readyz` says so from now on; serving goes on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub async fn handle(&self, mut req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let mut trace = Trace { verified: None, start: Instant::now(), auth_done: None, upstream_done: None };
        self.metrics.requests_in_flight.inc();
        // One load per request: the whole request sees one config, old or new.
        let snap = self.current.load_full();
        let snap = &*snap;
        // Keep the caller's request id (or mint one) so both sides of the hop log the same id. It
        // is read by its exact name; twins of it are removed next.
        let request_id = self.request_ids.take_or_mint(req.headers());
        // No client header may pass for one the gateway sets, in any spelling an upstream stack
        // folds to the same name.
        snap.screen.apply(req.headers_mut(), |name, why| {
            self.metrics.client_header_removed(why);
            tracing::debug!(?request_id, header = %name, reason = why.as_str(), "client header removed");
        });
        req.headers_mut().insert(REQUEST_ID.clone(), request_id.clone());
        // `traceparent` and `tracestate` go upstream untouched; the audit event names the trace.
        let trace_id =
            if snap.config.audit.enabled { audit::trace_id(req.headers()).map(Box::<str>::from) } else { None };
        // Route on method + raw path; the route names the requirement.
        let route = snap.routes.resolve(req.method(), req.uri().path());
        let method = req.method().clone();

        let result = self.pass(snap, req, route, conn, &request_id, &mut trace).await;

        let (mut resp, decision, reason) = match result {
            Ok(resp) => (resp.map(Either::Left), Decision::Allowed, None),
            Err(refusal) => {
                let (d, r) = (refusal.decision(), refusal.reason());
                match &refusal {
                    Refusal::Auth(a @ (AuthRefusal::Denied(_) | AuthRefusal::StepUp(_))) => {
                        if let Some(kind) = a.step_up_kind() {
                            self.metrics.step_up_challenge(kind);
                        }
                    }
                    Refusal::Auth(AuthRefusal::Invalid(i)) => {
                        self.metrics.invalid_token(*i);
                        tracing::debug!(request_id = ?request_id, route = %route.name, reason = r, "token refused");
                    }
                    Refusal::Auth(AuthRefusal::KeysUnavailable) => {
                        tracing::warn!(request_id = ?request_id, route = %route.name, "no signing keys for the token's issuer");
                    }
                    Refusal::Upstream(e) => {
                        self.metrics.upstream_error(e.kind());
                        tracing::warn!(request_id = ?request_id, route = %route.name, error = ?e, "upstream failed");
                    }
                    _ => {}
                }
                (refusal.into_response(&snap.style), d, Some(r))
            }
        };
        resp.headers_mut().insert(REQUEST_ID.clone(), request_id.clone());

        let end = trace.upstream_done.or(trace.auth_done).unwrap_or_else(Instant::now);
        let elapsed = end - trace.start;
        let auth = trace.auth_done.map_or(Duration::ZERO, |t| t - trace.start);
        let upstream = match (trace.auth_done, trace.upstream_done) {
            (Some(a), Some(u)) => u - a,
            _ => Duration::ZERO,
        };
        let v = trace.verified.as_deref();
        let kind = v.map(|v| v.kind);
        snap.counters[route.index].count(decision, kind);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        self.metrics.requests_in_flight.dec();
        if snap.config.audit.enabled {
            let derived = v.map(|v| self.derived(snap, v));
            audit::emit(&audit::Event {
                request_id: request_id.to_str().unwrap_or("-"),
                trace_id: trace_id.as_deref(),
                client: conn.peer,
                method: method.as_str(),
                route: &route.name,
                status: resp.status().as_u16(),
                decision: decision.as_str(),
                reason: reason.unwrap_or("-"),
                token_kind: crate::metrics::kind_label(kind),
                tenant: v.and_then(|v| v.tid()),
                app: v.and_then(|v| v.app_id()),
                user: v.zip(derived).and_then(|(v, d)| d.ids(v).0),
                object_id: v.zip(derived).and_then(|(v, d)| d.ids(v).1),
                duration_us: elapsed.as_micros() as u64,
                auth_us: auth.as_micros() as u64,
                upstream_us: upstream.as_micros() as u64,
            });
        }
        resp
    }

    async fn pass(
        &self,
        snap: &Snapshot,
        mut req: Request<Incoming>,
        route: &Route,
        conn: Conn,
        request_id: &HeaderValue,
        trace: &mut Trace,
    ) -> Result<Response<Incoming>, Refusal> {
        // Routes match raw paths: a path with another spelling could dodge its route.
        crate::path::check(req.uri().path()).map_err(Refusal::BadPath)?;
        let admitted = self.admit(snap, &mut req, route, trace).await;
        // The gateway's own work ends here, admitted or not: the auth histogram.
        let upstream_start = Instant::now();
        trace.auth_done = Some(upstream_start);
        self.metrics.auth_duration.observe((upstream_start - trace.start).as_secs_f64());
        admitted?;
        let origin = Origin {
            client_ip: conn.peer.ip(),
            scheme: if conn.tls { "https" } else { "http" },
            request_id: request_id.clone(),
        };
        let resp = snap.proxy.forward(req, &origin).await;
        let done = Instant::now();
        trace.upstream_done = Some(done);
        let resp = resp.map_err(Refusal::Upstream)?;
        self.metrics.upstream_duration.observe((done - upstream_start).as_secs_f64());
        Ok(resp)
    }

    /// Identity headers, token and route requirement: what must hold before the upstream.
    async fn admit(
        &self,
        snap: &Snapshot,
        req: &mut Request<Incoming>,
        route: &Route,
        trace: &mut Trace,
    ) -> Result<(), Refusal> {
        if route.require == Requirement::Public {
            return Ok(());
        }
        // Verify the token (cached after the first time)...
        let v = snap.auth.verify(req.headers()).await.map_err(Refusal::Auth)?;
        // ...count it for the MFA status report whatever the route decides...
        self.observe(snap, &v, route);
        trace.verified = Some(v.clone());
        // ...then apply the route's requirement.
        snap.auth.authorize(route, &v).map_err(Refusal::Auth)?;
        // Tell the upstream who called, from verified claims only.
        let headers = req.headers_mut();
        for (name, value) in snap.auth.identity_headers(&v) {
            headers.insert(name.clone(), value);
        }
        if !snap.config.auth.forward_authorization {
            headers.remove(AUTHORIZATION);
        }
        Ok(())
    }

    /// The status report's inputs: one App+User (with or without MFA) or app-only request.
    fn observe(&self, snap: &Snapshot, v: &Verified, route: &Route) {
        let d = self.derived(snap, v);
        d.ratio.inc();
        self.report.record(&Observation {
            unix_secs: crate::auth::unix_now(),
            route: &route.name,
            kind: v.kind,
            mfa: v.mfa,
            app: v.app_id().unwrap_or("none"),
            user: d.ids(v).0,
            tenant: v.tid(),
        });
    }

    /// The cached token's derived values. A snapshot whose `[audit]` differs has its own cache
    /// (see `Snapshot::build`), so redaction always follows the snapshot's settings.
    fn derived<'v>(&self, snap: &Snapshot, v: &'v Verified) -> &'v Derived {
        let any = v.annotations.get_or_init(|| {
            Box::new(Derived {
                ratio: self.metrics.ratio_counter(v.app_id(), v.kind, v.mfa),
                redacted: (!snap.user_ids.is_plain()).then(|| {
                    let show = |id: Option<&str>| snap.user_ids.show(id).map(String::into_boxed_str);
                    (show(v.user()), show(v.oid()))
                }),
            })
        });
        any.downcast_ref::<Derived>().expect("only the stack sets annotations")
    }
}

/// Request ids: the caller's when it is sane, else a process-unique one.
pub struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { seed: RandomState::new().hash_one(std::process::id()), counter: AtomicU64::new(0) }
    }
}

impl RequestIds {
    pub fn take_or_mint(&self, headers: &http::HeaderMap) -> HeaderValue {
        if let Some(v) = headers.get(&REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
                return v.clone();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}{:016x}", self.seed, n);
        HeaderValue::from_str(&id).expect("hex is a valid header value")
    }
}
