//! The one place where a refusal becomes a response. Bodies are short JSON that say what is
//! wrong and never repeat any part of the request's token.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::challenge::{challenge, AuthRefusal, ChallengeSettings};
use crate::auth::policy::Deny;
use crate::metrics::Decision;
use crate::path::PathFlaw;
use crate::proxy::UpstreamError;

/// Response body: the upstream's, streamed, or a short one of ours.
pub type Body = Either<Incoming, Full<Bytes>>;

#[derive(Debug)]
pub enum Refusal {
    Auth(AuthRefusal),
    /// The path is not in normal form (`crate::path`).
    BadPath(PathFlaw),
    Upstream(UpstreamError),
}

/// Settings that shape refusals.
#[derive(Debug, Clone, Default)]
pub struct RefusalStyle {
    pub challenge: ChallengeSettings,
    /// Sent with the MFA refusal, as Partner Center does.
    pub request_context: Option<HeaderValue>,
}

impl Refusal {
    pub fn decision(&self) -> Decision {
        match self {
            Refusal::Auth(AuthRefusal::MissingToken) => Decision::MissingToken,
            Refusal::Auth(AuthRefusal::Invalid(_)) => Decision::InvalidToken,
            Refusal::Auth(AuthRefusal::Denied(Deny::MfaRequired | Deny::AuthTooOld)) => Decision::MfaRequired,
            Refusal::Auth(AuthRefusal::StepUp(_)) => Decision::MfaRequired,
            Refusal::Auth(AuthRefusal::Denied(_)) => Decision::Forbidden,
            Refusal::Auth(AuthRefusal::KeysUnavailable) => Decision::KeysUnavailable,
            Refusal::BadPath(_) => Decision::BadRequest,
            Refusal::Upstream(_) => Decision::UpstreamError,
        }
    }

    /// A short reason for logs (bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Auth(AuthRefusal::MissingToken) => "missing_token",
            Refusal::Auth(AuthRefusal::Invalid(i)) => i.reason(),
            Refusal::Auth(AuthRefusal::Denied(d)) => d.reason(),
            Refusal::Auth(AuthRefusal::StepUp(s)) => s.why.reason(),
            Refusal::Auth(AuthRefusal::KeysUnavailable) => "keys_unavailable",
            Refusal::BadPath(_) => "path_not_normal",
            Refusal::Upstream(e) => e.kind(),
        }
    }

    pub fn into_response(self, style: &RefusalStyle) -> Response<Body> {
        match self {
            Refusal::Auth(a) => {
                let c = challenge(a, &style.challenge);
                let mut resp = json(c.status, c.error, c.description);
                let h = resp.headers_mut();
                if let Some(w) = c.www_authenticate.and_then(|w| HeaderValue::from_str(&w).ok()) {
                    h.insert(header::WWW_AUTHENTICATE, w);
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
                resp
            }
            Refusal::BadPath(flaw) => json(StatusCode::BAD_REQUEST, "bad_request", flaw.description()),
            Refusal::Upstream(UpstreamError::Connect(why)) => {
                text(StatusCode::BAD_GATEWAY, &format!("upstream unreachable: {why}\n"))
            }
            Refusal::Upstream(UpstreamError::Tls(why)) => {
                text(StatusCode::BAD_GATEWAY, &format!("upstream TLS handshake failed: {why}\n"))
            }
            Refusal::Upstream(UpstreamError::Protocol(why)) => {
                text(StatusCode::BAD_GATEWAY, &format!("upstream failed: {why}\n"))
            }
            Refusal::Upstream(UpstreamError::Timeout) => {
                text(StatusCode::GATEWAY_TIMEOUT, "upstream did not respond in time\n")
            }
        }
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

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::copy_from_slice(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
