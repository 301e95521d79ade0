//! The one place where a refusal becomes a response. Bodies are short JSON that say what is
//! wrong and never repeat any part of the request's token; an upstream failure is told in a
//! fixed sentence with the request id (its detail is for the log). A gRPC client gets the same
//! status as a gRPC trailers-only answer.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::auth::challenge::{challenge, AuthRefusal, ChallengeSettings, Denial};
use crate::auth::dpop::ProofError;
use crate::auth::invalid::Invalid;
use crate::auth::metrics::AuthMetrics;
use crate::auth::nonce::DPOP_NONCE;
use crate::auth::policy::Deny;
use crate::auth::policy::{self, TokenKind};
use crate::authz::Flaw;
use crate::path::PathFlaw;
use crate::proxy::{UpstreamBody, UpstreamError, UpstreamMetrics};
use crate::request_end::{Decision, Mode};
use crate::routes::{Requirement, Route};

/// Response body: the upstream's, streamed, or a short one of ours.
pub(crate) type Body = Either<UpstreamBody, Full<Bytes>>;

#[derive(Debug)]
pub(crate) enum Refusal {
    Auth(AuthRefusal),
    /// The path is not in normal form (`crate::path`).
    BadPath(PathFlaw),
    /// Authorization-only mode: the front proxy's account of the original request is missing
    /// or malformed.
    BadOriginal(Flaw),
    Upstream(UpstreamError),
    /// `[upstream] max_in_flight` requests are upstream already.
    UpstreamBusy,
}

/// Settings that shape refusals.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefusalStyle {
    pub challenge: ChallengeSettings,
    /// DPoP nonces, when on: a `use_dpop_nonce` refusal carries a fresh one.
    pub dpop_nonces: Option<std::sync::Arc<crate::auth::nonce::Nonces>>,
    /// Sent with the MFA refusal, as Partner Center does.
    pub request_context: Option<HeaderValue>,
}

/// How the client reads a refusal: as gRPC (status in trailers), and whether it speaks DPoP
/// (its challenges then include `DPoP`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Audience {
    pub grpc: bool,
    pub dpop: bool,
}

impl Audience {
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        Self { grpc: crate::headers::is_grpc(headers), dpop: crate::auth::token::is_dpop(headers) }
    }
}

/// The counters a refusal may add to, besides `requests_total` (which `RequestEnd` writes).
pub(crate) struct RefusalSinks<'a> {
    pub auth: &'a AuthMetrics,
    pub upstream: &'a UpstreamMetrics,
}

// Each meaning of a refusal is one exhaustive match below: a new variant does not compile until
// it has its decision, reason, response, counter and log line.
#[deny(clippy::wildcard_enum_match_arm)]
impl Refusal {
    pub(crate) fn decision(&self) -> Decision {
        match self {
            Refusal::Auth(AuthRefusal::MissingToken) => Decision::MissingToken,
            Refusal::Auth(AuthRefusal::Invalid(_)) => Decision::InvalidToken,
            Refusal::Auth(AuthRefusal::Denied(d)) => match d.why() {
                Deny::MfaRequired | Deny::AuthTooOld => Decision::MfaRequired,
                Deny::AppOnlyNotAllowed | Deny::MissingRole | Deny::MissingScope => Decision::Forbidden,
            },
            Refusal::Auth(AuthRefusal::KeysUnavailable) => Decision::KeysUnavailable,
            Refusal::Auth(AuthRefusal::Proof(_) | AuthRefusal::Binding(_)) => Decision::InvalidToken,
            Refusal::Auth(AuthRefusal::ProofsFull) => Decision::DpopBusy,
            Refusal::BadPath(_) | Refusal::BadOriginal(_) => Decision::BadRequest,
            Refusal::Upstream(_) => Decision::UpstreamError,
            Refusal::UpstreamBusy => Decision::UpstreamBusy,
        }
    }

    /// A short reason for logs (bounded set).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Auth(AuthRefusal::MissingToken) => "missing_token",
            Refusal::Auth(AuthRefusal::Invalid(i)) => i.reason(),
            Refusal::Auth(AuthRefusal::Denied(d)) => d.why().reason(),
            Refusal::Auth(AuthRefusal::KeysUnavailable) => "keys_unavailable",
            Refusal::Auth(AuthRefusal::Proof(p)) => p.reason(),
            Refusal::Auth(AuthRefusal::Binding(b)) => b.reason(),
            Refusal::Auth(AuthRefusal::ProofsFull) => "store_full",
            Refusal::BadPath(_) => "path_not_normal",
            Refusal::BadOriginal(_) => "bad_original_request",
            Refusal::Upstream(e) => e.kind(),
            Refusal::UpstreamBusy => "upstream_busy",
        }
    }

    /// The counter and log line a refusal gets besides `requests_total`: the client's faults at
    /// debug, the gateway's own (no keys, the upstream) at warn.
    pub(crate) fn record(&self, sinks: &RefusalSinks<'_>, request_id: &HeaderValue, route: &str) {
        let request_id = crate::request_id::shown(request_id);
        match self {
            Refusal::Auth(AuthRefusal::MissingToken) => {
                tracing::debug!(request_id, route, "no token");
            }
            Refusal::Auth(AuthRefusal::Denied(d)) => {
                if let Some(kind) = d.step_up_kind() {
                    sinks.auth.step_up_challenge(kind);
                }
                tracing::debug!(request_id, route, reason = self.reason(), "refused by the route's requirement");
            }
            Refusal::Auth(AuthRefusal::Invalid(i)) => {
                sinks.auth.invalid_token(*i);
                tracing::debug!(request_id, route, reason = self.reason(), "token refused");
            }
            Refusal::Auth(AuthRefusal::KeysUnavailable) => {
                tracing::warn!(request_id, route, "no signing keys for the token's issuer");
            }
            Refusal::Auth(AuthRefusal::Proof(_) | AuthRefusal::Binding(_)) => {
                sinks.auth.binding_refused(self.reason());
                tracing::debug!(request_id, route, reason = self.reason(), "token binding refused");
            }
            Refusal::Auth(AuthRefusal::ProofsFull) => {
                sinks.auth.binding_refused(self.reason());
                tracing::warn!(request_id, route, "DPoP replay store full of live proofs; refused");
            }
            Refusal::BadPath(flaw) => {
                tracing::debug!(request_id, flaw = flaw.description(), "path not in normal form");
            }
            Refusal::BadOriginal(flaw) => {
                tracing::debug!(request_id, flaw = flaw.description(), "front proxy's question refused");
            }
            Refusal::Upstream(e) => {
                sinks.upstream.failed(e);
                tracing::warn!(request_id, route, kind = e.kind(), error = %crate::error_chain::describe(e), "upstream failed");
            }
            // Counted in requests_total; a line per request at warn would flood the log under
            // overload.
            Refusal::UpstreamBusy => {
                tracing::debug!(request_id, route, "upstream slots all taken; refused");
            }
        }
    }

    pub(crate) fn into_response(self, style: &RefusalStyle, request_id: &HeaderValue, to: Audience) -> Response<Body> {
        let (mut resp, message) = match self {
            Refusal::Auth(a) => {
                let c = challenge(a, &style.challenge, to.dpop);
                let mut resp = json(c.status, c.error, c.description);
                let h = resp.headers_mut();
                if let (AuthRefusal::Proof(ProofError::UseNonce), Some(n)) = (a, &style.dpop_nonces) {
                    if let Ok(v) = HeaderValue::from_str(&n.issue(crate::auth::unix_now())) {
                        h.insert(DPOP_NONCE, v);
                    }
                }
                for w in [c.www_authenticate, c.dpop].into_iter().flatten() {
                    if let Ok(w) = HeaderValue::from_str(&w) {
                        h.append(header::WWW_AUTHENTICATE, w);
                    }
                }
                if let Some(secs) = c.retry_after_secs {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                if let Some(phrase) = c.reason_phrase {
                    // HTTP/1.1 only; HTTP/2 has no reason phrase and sends the bare status.
                    resp.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(phrase.as_bytes()));
                    if let Some(rc) = &style.request_context {
                        resp.headers_mut().insert("request-context", rc.clone());
                    }
                }
                (resp, c.description)
            }
            Refusal::BadPath(flaw) => {
                (json(StatusCode::BAD_REQUEST, "bad_request", flaw.description()), flaw.description())
            }
            Refusal::BadOriginal(flaw) => {
                (json(StatusCode::BAD_REQUEST, "bad_request", flaw.description()), flaw.description())
            }
            // Which request, never why: DNS names, addresses and certificate problems are the
            // operator's to read in the log line.
            Refusal::Upstream(UpstreamError::Timeout) => {
                const WHAT: &str = "the upstream did not answer in time";
                (text(StatusCode::GATEWAY_TIMEOUT, WHAT, request_id), WHAT)
            }
            Refusal::Upstream(_) => {
                const WHAT: &str = "the upstream could not be reached";
                (text(StatusCode::BAD_GATEWAY, WHAT, request_id), WHAT)
            }
            // At once, no queue: a client that retries soon finds a slot or another replica.
            Refusal::UpstreamBusy => {
                const WHAT: &str = "too many requests are in flight to the upstream; retry shortly";
                let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, WHAT, request_id);
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                (resp, WHAT)
            }
        };
        if to.grpc {
            trailers_only(&mut resp, message);
        }
        resp
    }
}

/// The (mode, decision, token kind) combinations `requests_total` can count for `route`: the
/// policy's answers (`policy::possible`) through this module's mapping, plus what happens around
/// them (no token, a bad one, no keys, a bad path, the upstream, a client that leaves). Authz
/// mode only when `authz` is on; it forwards nothing, so it has no upstream outcomes.
pub(crate) fn possible(route: &Route, authz: bool) -> Vec<(Mode, Decision, Option<TokenKind>)> {
    let mut out = Vec::new();
    for &mode in if authz { &Mode::ALL[..] } else { &Mode::ALL[..1] } {
        // What passes goes upstream in proxy mode, where the upstream can fail or be full.
        let upstream: &[Decision] = match mode {
            Mode::Proxy => &[Decision::UpstreamError, Decision::UpstreamBusy],
            Mode::Authz => &[],
        };
        let mut add = |d: Decision, k: Option<TokenKind>| {
            if !out.contains(&(mode, d, k)) {
                out.push((mode, d, k));
            }
        };
        add(Decision::BadRequest, None);
        add(Decision::ClientClosed, None);
        if route.require == Requirement::Public {
            for &d in [Decision::Allowed].iter().chain(upstream) {
                add(d, None);
            }
            continue;
        }
        for why in [AuthRefusal::MissingToken, AuthRefusal::Invalid(Invalid::Malformed), AuthRefusal::KeysUnavailable] {
            add(Refusal::Auth(why).decision(), None);
        }
        for kind in [TokenKind::AppUser, TokenKind::AppOnly] {
            let k = Some(kind);
            let (pass, denials) = policy::possible(route, kind);
            add(Decision::ClientClosed, k);
            if pass {
                for &d in [Decision::Allowed].iter().chain(upstream) {
                    add(d, k);
                }
            }
            for d in denials {
                if route.enforce {
                    add(Refusal::Auth(AuthRefusal::Denied(Denial::Plain(d))).decision(), k);
                } else {
                    for &d in [Decision::WouldRefuse].iter().chain(upstream) {
                        add(d, k);
                    }
                }
            }
        }
    }
    out
}

/// gRPC status for an HTTP status, as gRPC's HTTP mapping gives it.
fn grpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "16",             // UNAUTHENTICATED
        403 => "7",              // PERMISSION_DENIED
        404 => "12",             // UNIMPLEMENTED
        429 | 502..=504 => "14", // UNAVAILABLE
        _ => "13",               // INTERNAL
    }
}

/// Makes a refusal a gRPC trailers-only answer: headers only, with `grpc-status` and
/// `grpc-message`. The HTTP status and `WWW-Authenticate` stay.
fn trailers_only(resp: &mut Response<Body>, message: &str) {
    let status = grpc_status(resp.status());
    *resp.body_mut() = Either::Right(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static(status));
    // grpc-message is percent-encoded; our messages are plain ASCII but for the odd quote.
    let encoded: String = message
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        resp.headers_mut().insert("grpc-message", v);
    }
}

fn json(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, what: &str, request_id: &HeaderValue) -> Response<Body> {
    let body = format!("{what} (request id {})\n", request_id.to_str().unwrap_or("-"));
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(require: Requirement, enforce: bool, roles: &[&str]) -> Route {
        Route {
            index: 0,
            name: "r".into(),
            require,
            methods: vec![],
            roles_any: roles.iter().map(|r| r.to_string()).collect(),
            scopes_any: vec![],
            step_up: crate::routes::StepUp::PartnerCenter,
            max_auth_age: None,
            enforce,
            binding: None,
        }
    }

    fn has(route: &Route, d: Decision, k: Option<TokenKind>) -> bool {
        possible(route, false).contains(&(Mode::Proxy, d, k))
    }

    #[test]
    fn the_possible_series_follow_the_route() {
        let (user, app) = (Some(TokenKind::AppUser), Some(TokenKind::AppOnly));
        // Any token passes: no MFA refusal, nothing forbidden.
        let token = route(Requirement::Token, true, &[]);
        assert!(has(&token, Decision::Allowed, user) && has(&token, Decision::Allowed, app));
        assert!(!has(&token, Decision::MfaRequired, user) && !has(&token, Decision::Forbidden, app));
        // A role the token may lack: forbidden for both kinds.
        let roles = route(Requirement::Token, true, &["Admin"]);
        assert!(has(&roles, Decision::Forbidden, user) && has(&roles, Decision::Forbidden, app));
        // Report-only: refusals are forwarded and can meet the upstream's failures.
        let report_only = route(Requirement::AppUserMfa, false, &[]);
        for k in [user, app] {
            assert!(has(&report_only, Decision::WouldRefuse, k) && has(&report_only, Decision::UpstreamError, k));
        }
        assert!(!has(&report_only, Decision::MfaRequired, user) && !has(&report_only, Decision::Forbidden, app));
        assert!(!has(&report_only, Decision::Allowed, app), "an app-only token never passes app_user_mfa");
        // No authz series without [authz].
        assert!(possible(&token, false).iter().all(|(m, _, _)| *m == Mode::Proxy));
        assert!(possible(&token, true).iter().any(|(m, _, _)| *m == Mode::Authz));
    }
}
