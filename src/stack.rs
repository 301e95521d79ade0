//! The request path, in order. `auth` and `proxy` never see each other; they meet here.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::auth::{Authenticator, Verified};
use crate::metrics::{Decision, Metrics};
use crate::proxy::{Origin, Proxy};
use crate::refusal::{Body, Refusal, RefusalStyle};
use crate::routes::{self, Requirement, Route, RouteTable};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
}

pub struct Stack {
    pub routes: RouteTable,
    pub auth: Authenticator,
    pub proxy: Proxy,
    pub metrics: Arc<Metrics>,
    pub style: RefusalStyle,
    pub forward_authorization: bool,
    pub access_log: bool,
    pub request_ids: RequestIds,
}

impl Stack {
    pub async fn handle(&self, mut req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let start = Instant::now();
        self.metrics.requests_in_flight.inc();
        // Keep the caller's request id (or mint one) so both sides of the hop log the same id.
        let request_id = self.request_ids.take_or_mint(req.headers());
        req.headers_mut().insert(REQUEST_ID.clone(), request_id.clone());
        // Route on method + raw path; the route names the requirement.
        let route = self.routes.resolve(req.method(), req.uri().path());
        let method = req.method().clone();

        let mut verified = None;
        let result = self.pass(req, route, conn, &mut verified).await;

        let (mut resp, decision, reason) = match result {
            Ok(resp) => (resp.map(Either::Left), Decision::Allowed, None),
            Err(refusal) => {
                let (d, r) = (refusal.decision(), refusal.reason());
                if let Refusal::Auth(crate::auth::challenge::AuthRefusal::Invalid(i)) = &refusal {
                    self.metrics.invalid_token(*i);
                }
                if let Refusal::Upstream(e) = &refusal {
                    self.metrics.upstream_error(e.kind());
                    tracing::warn!(request_id = ?request_id, route = %route.name, error = ?e, "upstream failed");
                }
                (refusal.into_response(&self.style), d, Some(r))
            }
        };
        resp.headers_mut().insert(REQUEST_ID.clone(), request_id.clone());

        let elapsed = start.elapsed();
        let kind = verified.as_ref().map(|v| v.kind);
        self.metrics.request(route.index, decision, kind);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        self.metrics.requests_in_flight.dec();
        if self.access_log {
            tracing::info!(
                target: "mfa_gateway::access",
                request_id = request_id.to_str().unwrap_or("-"),
                client = %conn.peer,
                method = %method,
                route = %route.name,
                status = resp.status().as_u16(),
                decision = decision.as_str(),
                reason = reason.unwrap_or("-"),
                token_kind = crate::metrics::kind_label(kind),
                duration_us = elapsed.as_micros() as u64,
                "request"
            );
        }
        resp
    }

    async fn pass(
        &self,
        mut req: Request<Incoming>,
        route: &Route,
        conn: Conn,
        verified: &mut Option<Arc<Verified>>,
    ) -> Result<Response<Incoming>, Refusal> {
        // Routes match raw paths: a path with another spelling could dodge its route.
        if !routes::is_normal_path(req.uri().path()) {
            return Err(Refusal::BadPath);
        }
        // Identity headers are ours to set; a client's copies are never passed on.
        strip_prefixed(req.headers_mut(), self.auth.header_prefix());
        if route.require != Requirement::Public {
            // Verify the token (cached after the first time), then the route's requirement.
            let v = self.auth.verify(req.headers()).await.map_err(Refusal::Auth)?;
            *verified = Some(v.clone());
            self.auth.authorize(route, &v).map_err(Refusal::Auth)?;
            // Tell the upstream who called, from verified claims only.
            let headers = req.headers_mut();
            for (name, value) in &v.headers {
                headers.insert(name.clone(), value.clone());
            }
            if !self.forward_authorization {
                headers.remove(AUTHORIZATION);
            }
        }
        let origin = Origin { client_ip: conn.peer.ip(), scheme: if conn.tls { "https" } else { "http" } };
        let upstream_start = Instant::now();
        let resp = self.proxy.forward(req, &origin).await.map_err(Refusal::Upstream)?;
        self.metrics.upstream_duration.observe(upstream_start.elapsed().as_secs_f64());
        Ok(resp)
    }
}

fn strip_prefixed(headers: &mut http::HeaderMap, prefix: &str) {
    if headers.keys().any(|k| k.as_str().starts_with(prefix)) {
        let names: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with(prefix)).cloned().collect();
        for n in names {
            headers.remove(n);
        }
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
