//! Authorization-only mode: a front proxy (nginx `auth_request`, Traefik `ForwardAuth`, Envoy
//! `ext_authz`) asks the decision listener whether a request may pass. Each front proxy hands
//! over the original request its own way, and a client can add the headers of any other way to
//! its request; so the front is configured, and the original method and URI are read from where
//! that front puts them and nowhere else. Pure: no I/O.

use std::net::SocketAddr;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Method, Uri};
use serde::Deserialize;

/// `[authz].front`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontKind {
    Nginx,
    Traefik,
    Envoy,
}

impl FrontKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontKind::Nginx => "nginx",
            FrontKind::Traefik => "traefik",
            FrontKind::Envoy => "envoy",
        }
    }
}

/// `[authz]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthzConfig {
    pub listen: SocketAddr,
    pub front: Front,
    /// The origin the front proxy serves, normalized: what a DPoP proof's `htu` is checked against.
    pub public_origin: Option<String>,
}

/// Where the original request is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Front {
    /// nginx (`X-Original-Method`, `X-Original-URI` unless renamed) and Traefik
    /// (`X-Forwarded-Method`, `X-Forwarded-Uri`): two request headers.
    Headers { kind: FrontKind, method: HeaderName, uri: HeaderName },
    /// Envoy's HTTP `ext_authz`: the question's own method, and its path after `path_prefix`.
    Envoy { path_prefix: String },
}

impl Front {
    pub fn kind(&self) -> FrontKind {
        match self {
            Front::Headers { kind, .. } => *kind,
            Front::Envoy { .. } => FrontKind::Envoy,
        }
    }
}

/// Why the original request could not be read; answered 400 and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flaw {
    MissingMethod,
    RepeatedMethod,
    BadMethod,
    MissingUri,
    RepeatedUri,
    /// Not an origin-form request target (`/path?query`).
    BadUri,
    /// Envoy: the path does not start with `path_prefix`.
    OutsidePrefix,
    /// The original request asks to upgrade to a protocol outside `[upstream] upgrades`.
    Upgrade,
    /// The original request carries a header that rewrites its method or URL.
    Rewriting,
}

impl Flaw {
    pub(crate) fn description(self) -> &'static str {
        match self {
            Flaw::MissingMethod => "the front proxy's original-method header is missing",
            Flaw::RepeatedMethod => "the front proxy's original-method header is repeated",
            Flaw::BadMethod => "the front proxy's original-method header is not an HTTP method",
            Flaw::MissingUri => "the front proxy's original-URI header is missing",
            Flaw::RepeatedUri => "the front proxy's original-URI header is repeated",
            Flaw::BadUri => "the original URI is not a request target of the form /path?query",
            Flaw::OutsidePrefix => "the check request's path does not start with [authz].path_prefix",
            Flaw::Upgrade => "the original request asks to upgrade to a protocol the gateway does not allow",
            Flaw::Rewriting => "the original request carries a header that rewrites its method or URL",
        }
    }
}

/// The method and request target of the request the front proxy asks about.
pub(crate) fn original(
    front: &Front,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Method, PathAndQuery), Flaw> {
    match front {
        Front::Headers { method: m, uri: u, .. } => {
            let m = one(headers, m, Flaw::MissingMethod, Flaw::RepeatedMethod)?;
            let method = Method::from_bytes(m).map_err(|_| Flaw::BadMethod)?;
            let target = one(headers, u, Flaw::MissingUri, Flaw::RepeatedUri)?;
            Ok((method, origin_form(target)?))
        }
        Front::Envoy { path_prefix } => {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            let rest = pq.strip_prefix(path_prefix.as_str()).ok_or(Flaw::OutsidePrefix)?;
            Ok((method.clone(), origin_form(rest.as_bytes())?))
        }
    }
}

/// Exactly one value of `name`.
fn one<'h>(headers: &'h HeaderMap, name: &HeaderName, missing: Flaw, repeated: Flaw) -> Result<&'h [u8], Flaw> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(missing)?;
    if values.next().is_some() {
        return Err(repeated);
    }
    Ok(first.as_bytes())
}

/// `/path` or `/path?query`, nothing else (no absolute form, no `*`, no fragment).
fn origin_form(target: &[u8]) -> Result<PathAndQuery, Flaw> {
    if target.first() != Some(&b'/') || target.contains(&b'#') {
        return Err(Flaw::BadUri);
    }
    PathAndQuery::try_from(target).map_err(|_| Flaw::BadUri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nginx() -> Front {
        Front::Headers {
            kind: FrontKind::Nginx,
            method: HeaderName::from_static("x-original-method"),
            uri: HeaderName::from_static("x-original-uri"),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ask(front: &Front, path: &str, pairs: &[(&'static str, &'static str)]) -> Result<(Method, String), Flaw> {
        let uri: Uri = path.parse().unwrap();
        original(front, &Method::GET, &uri, &headers(pairs)).map(|(m, pq)| (m, pq.as_str().to_string()))
    }

    #[test]
    fn the_configured_headers_and_no_others() {
        let got = ask(
            &nginx(),
            "/authz",
            &[
                ("x-original-method", "POST"),
                ("x-original-uri", "/v1/customers/c1/users?x=1"),
                // Another convention's header, as a client could add it: ignored.
                ("x-forwarded-uri", "/v1/offers"),
            ],
        );
        assert_eq!(got, Ok((Method::POST, "/v1/customers/c1/users?x=1".into())));
    }

    #[test]
    fn missing_repeated_or_malformed_is_a_flaw() {
        let f = nginx();
        let uri = ("x-original-uri", "/v1/offers");
        let get = ("x-original-method", "GET");
        assert_eq!(ask(&f, "/", &[uri]), Err(Flaw::MissingMethod));
        assert_eq!(ask(&f, "/", &[get]), Err(Flaw::MissingUri));
        assert_eq!(ask(&f, "/", &[get, get, uri]), Err(Flaw::RepeatedMethod));
        assert_eq!(ask(&f, "/", &[get, uri, uri]), Err(Flaw::RepeatedUri));
        assert_eq!(ask(&f, "/", &[("x-original-method", "G E T"), uri]), Err(Flaw::BadMethod));
        for bad in ["v1/offers", "http://evil/v1/offers", "*", "/v1/offers#frag", "", "/v1/of fers"] {
            let h = [get, ("x-original-uri", bad)];
            assert_eq!(ask(&f, "/", &h), Err(Flaw::BadUri), "{bad:?}");
        }
    }

    #[test]
    fn envoy_reads_its_own_path_after_the_prefix() {
        let f = Front::Envoy { path_prefix: "/authz".into() };
        assert_eq!(
            ask(&f, "/authz/v1/offers?a=b", &[("x-original-uri", "/x")]),
            Ok((Method::GET, "/v1/offers?a=b".into()))
        );
        assert_eq!(ask(&f, "/v1/offers", &[]), Err(Flaw::OutsidePrefix));
        assert_eq!(ask(&f, "/authzv1/offers", &[]), Err(Flaw::BadUri));
        let bare = Front::Envoy { path_prefix: String::new() };
        assert_eq!(ask(&bare, "/v1/offers", &[]), Ok((Method::GET, "/v1/offers".into())));
    }
}
