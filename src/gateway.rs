//! The request path, in order. `auth` and `proxy` never see each other; they meet here. Every
//! request's records are written by its `RequestEnd`, however the request ends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONNECTION};
use http::{Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus::Registry;

use crate::audit;
use crate::auth::challenge::AuthRefusal;
use crate::auth::metrics::AuthMetrics;
use crate::auth::replay::ReplayStore;
use crate::auth::{Presented, DPOP};
use crate::authz::Flaw;
use crate::config::Config;
use crate::headers::RemovedCounters;
use crate::proxy::{Origin, UpstreamBody, UpstreamMetrics};
use crate::ratios::RatioCounters;
use crate::refusal::{Audience, Body, Refusal, RefusalSinks};
use crate::report::{Observation, Report};
use crate::request_end::{Asked, Decision, Ended, Memo, Mode, RequestEnd, RequestMetrics, Token};
use crate::request_id::{RequestIds, REQUEST_ID};
use crate::routes::{Requirement, Route};
use crate::snapshot::{BuildError, Carried, Snapshot};

/// Where the gateway is in its life, as the listeners and their connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Serving,
    /// `shutdown_delay`: still accepting; HTTP/2 connections are sent GOAWAY (HTTP/1.1 ones are
    /// told in their responses).
    LameDuck,
    /// Accepting stops; every connection is asked to finish.
    Closing,
}

/// The connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
    /// The SHA-256 of the client certificate the TLS handshake received, if any (RFC 8705 §3.1).
    pub cert: Option<[u8; 32]>,
}

/// What outlives a config: the current snapshot (swapped whole on reload), the metric families
/// of the request path, the status report, request ids, and whether the gateway is draining.
pub(crate) struct Gateway {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    requests: Arc<RequestMetrics>,
    auth_metrics: Arc<AuthMetrics>,
    upstream: UpstreamMetrics,
    screened: RemovedCounters,
    ratios: Arc<RatioCounters>,
    report: Report,
    /// DPoP proofs accepted within their window: kept across reloads, or a reload would open
    /// a window for replays.
    replays: ReplayStore,
    request_ids: RequestIds,
    /// `phase` is past `Serving`: read on every HTTP/1.1 response, so an atomic, not the watch.
    draining: AtomicBool,
    /// For the listeners and their connections to wait on.
    phase: tokio::sync::watch::Sender<Phase>,
}

impl Gateway {
    /// Registers the request path's metric families in `registry` and builds the first snapshot.
    pub(crate) fn new(config: Config, registry: &Registry) -> Result<Self, BuildError> {
        let requests = Arc::new(RequestMetrics::register(registry));
        let auth_metrics = Arc::new(AuthMetrics::register(registry));
        let ratios = Arc::new(RatioCounters::register(registry, &config.metrics));
        let report = Report::new(config.report.clone());
        let max_proofs = config.auth.dpop.max_proofs;
        let (first, _) = Snapshot::build(config, None, &requests, &ratios, &auth_metrics)?;
        Ok(Self {
            current: ArcSwap::from_pointee(first),
            registry: registry.clone(),
            requests,
            auth_metrics,
            upstream: UpstreamMetrics::register(registry),
            screened: RemovedCounters::register(registry),
            ratios,
            report,
            replays: ReplayStore::new(max_proofs),
            request_ids: RequestIds::default(),
            draining: AtomicBool::new(false),
            phase: tokio::sync::watch::Sender::new(Phase::Serving),
        })
    }

    /// The snapshot new requests and connections get.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds the next snapshot from `config`, keeping what it can of `previous`.
    pub(crate) fn build(&self, config: Config, previous: &Snapshot) -> Result<(Snapshot, Carried), BuildError> {
        Snapshot::build(config, Some(previous), &self.requests, &self.ratios, &self.auth_metrics)
    }

    /// Puts `next` in place for every request that starts from now on; requests in flight keep
    /// the one they started with until they end. Key sets kept from the previous snapshot take
    /// `next`'s timings from now on, and issuers it no longer has leave the metrics.
    pub(crate) fn swap(&self, next: Snapshot) {
        let next = Arc::new(next);
        let previous = self.current.swap(next.clone());
        next.auth.retime(&next.config.auth);
        self.replays.set_capacity(next.config.auth.dpop.max_proofs);
        for gone in &previous.auth.issuers {
            if !next.auth.issuers.iter().any(|k| k.spec.name == gone.spec.name) {
                self.auth_metrics.issuer_removed(&gone.spec.name);
            }
        }
    }

    /// Lame duck: `/readyz` says so from now on; serving goes on, and clients are moved away.
    pub(crate) fn start_draining(&self) {
        self.enter(Phase::LameDuck);
    }

    /// Accepting stops; every connection is asked to finish.
    pub(crate) fn close(&self) {
        self.enter(Phase::Closing);
    }

    /// Phases only move forward.
    fn enter(&self, next: Phase) {
        self.draining.store(true, Ordering::Release);
        self.phase.send_if_modified(|p| {
            let forward = *p < next;
            if forward {
                *p = next;
            }
            forward
        });
    }

    pub(crate) fn phase(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The metrics page. Key-set ages are computed now, so a stuck refresher still shows as stale.
    pub(crate) fn scrape(&self) -> Vec<u8> {
        let auth = &self.snapshot().auth;
        for i in &auth.issuers {
            self.auth_metrics.key_set_age(&i.spec.name, i.age_secs());
        }
        self.auth_metrics.cache_bytes.set(auth.cache_bytes() as i64);
        crate::metrics::render(&self.registry)
    }

    /// The live status report.
    pub(crate) fn report(&self) -> &Report {
        &self.report
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// One request, in `mode`: proxy mode decides, then forwards or refuses; authorization-only
    /// mode answers a front proxy's question about another request with the decision (200 with
    /// the identity headers, or the refusal proxy mode would give), and forwards nothing.
    ///
    /// A plain fn around an `async move` block, as are `pass` and `Proxy::forward`: an async fn
    /// keeps its arguments twice in its future (as arguments and again as locals), the request
    /// (264 bytes) among them, and this future is held for every request in flight.
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold the request twice in its future")]
    pub(crate) fn serve(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: Peer,
        mode: Mode,
    ) -> impl Future<Output = Response<Ended<Body>>> + Send {
        async move {
            let start = Instant::now();
            // One load per request: the whole request sees one config, old or new.
            let snap = self.current.load_full();
            let snap = &*snap;
            // The hop as it arrives: `Connection` applied, an upgrade kept only from the allowlist,
            // and no client header left that could pass for one the gateway sets or rewrite the
            // method or URL. Only then does the gateway add its own, which no nomination can remove.
            let mut removed = Vec::new();
            let received = snap.screen.receive(req.version(), req.headers_mut(), |name, why| {
                self.screened.inc(why);
                removed.push((name.clone(), why));
            });
            // Keep the caller's request id (or mint one) so both sides of the hop log the same id.
            let request_id = self.request_ids.take_or_mint(req.headers());
            for (name, why) in removed {
                tracing::debug!(request_id = crate::request_id::shown(&request_id), header = %name, reason = why.as_str(), "client header removed");
            }
            req.headers_mut().insert(REQUEST_ID.clone(), request_id.clone());
            let original = original(snap, mode, &received, &req);
            // Route on method + raw path; the route names the requirement.
            let route = match &original {
                None => snap.routes.resolve(req.method(), req.uri().path()),
                Some(Ok(o)) => snap.routes.resolve(&o.method, o.target.path()),
                Some(Err(_)) => snap.routes.unmatched(),
            };
            let method = match &original {
                Some(Ok(o)) => o.method.clone(),
                _ => req.method().clone(),
            };
            let audience = Audience::of(req.headers());
            let http1 = req.version() < Version::HTTP_2;
            // From here on the request's records are written however it ends: the first await below
            // is where a client that leaves drops this future.
            let mut end = RequestEnd::begin(
                snap.sinks.clone(),
                Asked {
                    mode,
                    request_id: request_id.clone(),
                    // `traceparent` and `tracestate` go upstream untouched; the audit event names the trace.
                    trace_id: if snap.config.audit.enabled {
                        audit::trace_id(req.headers()).map(Box::from)
                    } else {
                        None
                    },
                    client: peer.addr,
                    method,
                    route: route.index,
                },
                start,
            );

            let result = match original {
                None => {
                    let origin = Origin {
                        client_ip: peer.addr.ip(),
                        scheme: if peer.tls { "https" } else { "http" },
                        request_id: request_id.clone(),
                        upgrade: received.upgrade,
                    };
                    self.pass(snap, req, route, (&origin, peer.cert), &mut end).await.map(|r| r.map(Either::Left))
                }
                Some(Ok(o)) => self.judge(snap, &req, (&o.method, o.target.path(), o.cert), route, &mut end).await,
                Some(Err(flaw)) => Err(Refusal::BadOriginal(flaw)),
            };
            let mut resp = match result {
                Ok(resp) => {
                    match end.would_refuse {
                        Some(why) => end.answered(resp.status().as_u16(), Decision::WouldRefuse, why),
                        None => end.answered(resp.status().as_u16(), Decision::Allowed, "-"),
                    }
                    resp
                }
                Err(refusal) => {
                    let (decision, reason) = (refusal.decision(), refusal.reason());
                    let sinks = RefusalSinks { auth: &self.auth_metrics, upstream: &self.upstream };
                    refusal.record(&sinks, &request_id, &route.name);
                    let resp = refusal.into_response(&snap.style, &request_id, audience);
                    end.answered(resp.status().as_u16(), decision, reason);
                    resp
                }
            };
            resp.headers_mut().insert(REQUEST_ID.clone(), request_id);
            // Lame duck: an HTTP/1.1 client is told to close after this response, so it reconnects
            // (to another replica) between requests, never in the middle of one.
            if http1 && self.is_draining() {
                resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // The request ends with its response body.
            resp.map(|body| Ended::new(body, Some(end)))
        }
    }

    #[expect(clippy::manual_async_fn, reason = "an async fn would hold the request twice in its future")]
    fn pass<'a>(
        &'a self,
        snap: &'a Snapshot,
        mut req: Request<Incoming>,
        route: &'a Route,
        (origin, cert): (&'a Origin, Option<[u8; 32]>),
        end: &'a mut RequestEnd,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Refusal>> + Send + 'a {
        async move {
            // Routes match raw paths: a path with another spelling could dodge its route.
            crate::path::check(req.uri().path()).map_err(Refusal::BadPath)?;
            // The method and URI as the client sent them, for the binding check, while the request's
            // own headers get the identity (a clone of each shares its bytes).
            let (method, uri) = (req.method().clone(), req.uri().clone());
            let client =
                Client { method: &method, path: uri.path(), origin: snap.config.server.public_origin.as_deref(), cert };
            let admitted = self.admit(snap, req.headers_mut(), client, route, end).await;
            let upstream_start = end.auth_finished();
            admitted?;
            // On every route, public ones too: the upstream and its logs see neither the token nor
            // its proof.
            if !snap.config.auth.forward_authorization {
                req.headers_mut().remove(AUTHORIZATION);
                req.headers_mut().remove(&DPOP);
            }
            // A bounded number upstream at once, each until its response body ends: past it, 503 at
            // once rather than a queue that holds clients' sockets and memory.
            let slot = snap.proxy.slot(&self.upstream).ok_or(Refusal::UpstreamBusy)?;
            let resp = snap.proxy.forward(req, origin, slot, &self.upstream).await;
            let done = Instant::now();
            end.upstream_done = Some(done);
            let mut resp = resp.map_err(Refusal::Upstream)?;
            self.upstream.duration.observe((done - upstream_start).as_secs_f64());
            give_nonce(snap, end, resp.headers_mut());
            Ok(resp)
        }
    }

    /// The answer to a front proxy's question about a request to `path`: the same decision as
    /// proxy mode, with nothing forwarded.
    async fn judge(
        &self,
        snap: &Snapshot,
        req: &Request<Incoming>,
        (method, path, cert): (&http::Method, &str, Option<[u8; 32]>),
        route: &Route,
        end: &mut RequestEnd,
    ) -> Result<Response<Body>, Refusal> {
        // Front proxies hand over the raw request target, dot segments and all, and resolve them
        // themselves before routing: the same one-spelling rule as proxy mode.
        crate::path::check(path).map_err(Refusal::BadPath)?;
        // The credential (and its proof) is the only thing read from the question.
        let mut answer = HeaderMap::new();
        for name in [&AUTHORIZATION, &DPOP] {
            for v in req.headers().get_all(name) {
                answer.append(name, v.clone());
            }
        }
        // The client's certificate only as the configured front reports it (`[authz] client_cert`).
        let origin = snap.config.authz.as_ref().and_then(|a| a.public_origin.as_deref());
        let admitted = self.admit(snap, &mut answer, Client { method, path, origin, cert }, route, end).await;
        end.auth_finished();
        // Never echo a token.
        answer.remove(AUTHORIZATION);
        answer.remove(&DPOP);
        admitted?;
        // Every identity header (the would-refuse marker too), empty for what this answer lacks:
        // a front proxy that copies them over the request replaces the client's copies of each.
        for name in snap.auth.identity_names().iter().chain([&snap.would_refuse]) {
            if !answer.contains_key(name) {
                answer.insert(name.clone(), HeaderValue::from_static(""));
            }
        }
        give_nonce(snap, end, &mut answer);
        let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
        *resp.headers_mut() = answer;
        Ok(resp)
    }

    /// Identity headers, token and route requirement: what must hold before the upstream (or
    /// before a front proxy's question is answered yes). `headers` hold the credential and get
    /// the identity headers.
    /// `client`: how the client made the request, for its token's binding.
    async fn admit(
        &self,
        snap: &Snapshot,
        headers: &mut HeaderMap,
        client: Client<'_>,
        route: &Route,
        end: &mut RequestEnd,
    ) -> Result<(), Refusal> {
        if route.require == Requirement::Public {
            return Ok(());
        }
        // Verify the token (cached after the first time) and its binding to the client...
        let presented = Presented {
            method: client.method.as_str(),
            path: client.path,
            origin: client.origin,
            required: route.binding,
            replays: &self.replays,
            cert: client.cert,
        };
        let (v, bound) = snap.auth.verify(headers, &presented).await.map_err(Refusal::Auth)?;
        self.auth_metrics.bound(bound.as_str());
        end.bound = Some(bound);
        // ...count it for the MFA status report whatever the route decides...
        self.observe(snap, &v, bound, route);
        end.verified = Some(v.clone());
        // ...then apply the route's requirement; a report-only route lets a refusal through,
        // marked and counted.
        match snap.auth.authorize(route, &v) {
            Ok(()) => {}
            Err(denial) if !route.enforce => {
                let why = denial.why();
                self.requests.would_refuse(&route.name, why.reason(), self.ratios.app_label(v.app_id()), v.kind);
                self.report.would_refuse(
                    crate::auth::unix_now(),
                    &route.name,
                    v.app_id().unwrap_or("none"),
                    why.reason(),
                );
                tracing::debug!(route = %route.name, reason = why.reason(), "report-only route: would refuse");
                end.would_refuse = Some(why.reason());
            }
            Err(denial) => return Err(Refusal::Auth(AuthRefusal::Denied(denial))),
        }
        // Tell the upstream who called, from verified claims only.
        for (name, value) in snap.auth.identity_headers(&v) {
            headers.insert(name.clone(), value);
        }
        if let Some(why) = end.would_refuse {
            headers.insert(snap.would_refuse.clone(), HeaderValue::from_static(why));
        }
        Ok(())
    }

    /// The status report's inputs: one App+User (with or without MFA) or app-only request.
    fn observe(&self, snap: &Snapshot, v: &Token, bound: crate::auth::BoundBy, route: &Route) {
        Memo::ratio(v, &self.ratios).inc();
        let ids = Memo::ids(v, &snap.user_ids);
        self.report.record(&Observation {
            unix_secs: crate::auth::unix_now(),
            route: &route.name,
            kind: v.kind,
            mfa: v.mfa,
            app: v.app_id().unwrap_or("none"),
            user: ids.user(),
            tenant: v.tid(),
            bound: bound != crate::auth::BoundBy::Nothing,
        });
    }
}

/// Where and how the client made the request, as its token's binding is checked against it: the
/// method and path it used, the public origin it used them at, and its connection's certificate.
struct Client<'a> {
    method: &'a http::Method,
    path: &'a str,
    origin: Option<&'a str>,
    cert: Option<[u8; 32]>,
}

/// The request the rules apply to: in proxy mode this one (`None`); in authorization-only mode the
/// one a front proxy asks about, read only from where the configured front puts it.
fn original(
    snap: &Snapshot,
    mode: Mode,
    received: &crate::headers::Received,
    req: &Request<Incoming>,
) -> Option<Result<crate::authz::Original, Flaw>> {
    match (mode, &snap.config.authz) {
        (Mode::Proxy, _) => None,
        // Nothing is forwarded here to strip these from: the front must deny the request.
        (Mode::Authz, Some(_)) if received.refused_upgrade => Some(Err(Flaw::Upgrade)),
        (Mode::Authz, Some(_)) if received.rewriting => Some(Err(Flaw::Rewriting)),
        (Mode::Authz, Some(a)) => Some(crate::authz::original(a, req.method(), req.uri(), req.headers())),
        (Mode::Authz, None) => Some(Err(Flaw::MissingUri)),
    }
}

/// RFC 9449 §9: with nonces on, every answer to a DPoP-bound request hands the client the
/// current nonce, for its next proof.
fn give_nonce(snap: &Snapshot, end: &RequestEnd, headers: &mut HeaderMap) {
    if let (Some(crate::auth::BoundBy::Dpop), Some(n)) = (end.bound, &snap.auth.nonces) {
        if let Ok(v) = HeaderValue::from_str(&n.issue(crate::auth::unix_now())) {
            headers.insert(crate::auth::nonce::DPOP_NONCE, v);
        }
    }
}
