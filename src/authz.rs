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
    /// `client_cert = true`: the header the front puts its client's certificate in, read for
    /// certificate-bound tokens (RFC 8705). Unset, a certificate-bound token is refused.
    pub client_cert: Option<HeaderName>,
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
    /// The front's client-certificate header is repeated.
    RepeatedCert,
    /// The front's client-certificate header holds no certificate (or, from Envoy, no `Hash`).
    BadCert,
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
            Flaw::RepeatedCert => "the front proxy's client-certificate header is repeated",
            Flaw::BadCert => "the front proxy's client-certificate header holds no readable certificate",
        }
    }
}

/// The request the front proxy asks about.
#[derive(Debug, PartialEq)]
pub(crate) struct Original {
    pub method: Method,
    pub target: PathAndQuery,
    /// The SHA-256 of the client certificate the front received, when it is configured to say.
    pub cert: Option<[u8; 32]>,
}

/// The method, request target and client certificate of the request the front proxy asks about.
pub(crate) fn original(
    config: &AuthzConfig,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Original, Flaw> {
    let (method, target) = match &config.front {
        Front::Headers { method: m, uri: u, .. } => {
            let m = one(headers, m, Flaw::MissingMethod, Flaw::RepeatedMethod)?;
            let method = Method::from_bytes(m).map_err(|_| Flaw::BadMethod)?;
            let target = one(headers, u, Flaw::MissingUri, Flaw::RepeatedUri)?;
            (method, origin_form(target)?)
        }
        Front::Envoy { path_prefix } => {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            let rest = pq.strip_prefix(path_prefix.as_str()).ok_or(Flaw::OutsidePrefix)?;
            (method.clone(), origin_form(rest.as_bytes())?)
        }
    };
    let cert = match &config.client_cert {
        None => None,
        Some(name) => client_cert(config.front.kind(), name, headers)?,
    };
    Ok(Original { method, target, cert })
}

/// The thumbprint of the certificate in the front's header, if the header is there. Envoy's
/// `x-forwarded-client-cert` gives it as the `Hash` of its last element, the one the nearest
/// Envoy added; nginx (`$ssl_client_escaped_cert`) and Traefik (`pem: true`) give the
/// certificate itself, as URL-escaped PEM or as PEM's base64 alone, the client's first.
fn client_cert(kind: FrontKind, name: &HeaderName, headers: &HeaderMap) -> Result<Option<[u8; 32]>, Flaw> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if kind == FrontKind::Envoy {
        // Envoy may carry XFCC on several lines: they read as one list.
        let last = values.next_back().unwrap_or(first);
        return xfcc_hash(last.as_bytes()).map(Some).ok_or(Flaw::BadCert);
    }
    if values.next().is_some() {
        return Err(Flaw::RepeatedCert);
    }
    let der = certificate_der(first.as_bytes()).ok_or(Flaw::BadCert)?;
    Ok(Some(crate::auth::binding::cert_thumbprint(&der)))
}

/// `Hash=<64 hex digits>` from the last element of an XFCC value (elements split on `,`, pairs
/// on `;`, both outside double quotes).
fn xfcc_hash(value: &[u8]) -> Option<[u8; 32]> {
    let last = split_unquoted(value, b',').last()?;
    let hash = split_unquoted(last, b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        pair[..eq].trim_ascii().eq_ignore_ascii_case(b"hash").then(|| pair[eq + 1..].trim_ascii())
    })?;
    if hash.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hash.chunks(2)) {
        *o = crate::path::hex_pair(pair[0], pair[1])?;
    }
    Some(out)
}

fn split_unquoted(value: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    value.split(move |&b| {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ => return b == sep && !quoted,
        }
        false
    })
}

/// The first certificate's DER from URL-escaped PEM, or from PEM's base64 without the markers
/// (certificates separated by `,`).
fn certificate_der(value: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8(percent_decode(value)?).ok()?;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let body = match text.find(BEGIN) {
        Some(at) => text[at + BEGIN.len()..].split("-----END CERTIFICATE-----").next()?,
        None => text.split(',').next()?,
    };
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(b64).ok().filter(|d| !d.is_empty())
}

/// `%XX` escapes decoded (a `+` stays a `+`: base64 uses it).
fn percent_decode(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        if b == b'%' {
            out.push(crate::path::escape_at(value, i)?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
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

    fn config(front: &Front, client_cert: Option<&'static str>) -> AuthzConfig {
        AuthzConfig {
            listen: "127.0.0.1:9902".parse().unwrap(),
            front: front.clone(),
            public_origin: None,
            client_cert: client_cert.map(HeaderName::from_static),
        }
    }

    fn ask(front: &Front, path: &str, pairs: &[(&'static str, &'static str)]) -> Result<(Method, String), Flaw> {
        let uri: Uri = path.parse().unwrap();
        original(&config(front, None), &Method::GET, &uri, &headers(pairs)).map(|o| (o.method, o.target.to_string()))
    }

    /// The thumbprint the front's header gives, for a request to /v1/offers.
    fn cert_of(front: &Front, name: &'static str, values: &[&str]) -> Result<Option<[u8; 32]>, Flaw> {
        let mut h = headers(&[("x-original-method", "GET"), ("x-original-uri", "/v1/offers")]);
        h.append("x-forwarded-method", HeaderValue::from_static("GET"));
        h.append("x-forwarded-uri", HeaderValue::from_static("/v1/offers"));
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        let uri: Uri = "/authz/v1/offers".parse().unwrap();
        original(&config(front, Some(name)), &Method::GET, &uri, &h).map(|o| o.cert)
    }

    // Any bytes stand for a certificate's DER here: only their SHA-256 is taken.
    const DER: &[u8] = b"0\x82\x01\x0a certificate bytes for the test";

    fn sha256(der: &[u8]) -> [u8; 32] {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref().try_into().unwrap()
    }

    #[test]
    fn nginx_and_traefik_give_the_certificate_itself() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(DER);
        let (head, tail) = b64.split_at(20);
        // nginx's $ssl_client_escaped_cert: the PEM, URL-escaped.
        let pem = format!("-----BEGIN CERTIFICATE-----\n{head}\n{tail}\n-----END CERTIFICATE-----\n");
        let escaped: String = pem
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        assert_eq!(cert_of(&nginx(), "x-client-cert", &[&escaped]), Ok(Some(sha256(DER))));
        // Traefik's pem: the base64 alone, the client's certificate first.
        let traefik = Front::Headers {
            kind: FrontKind::Traefik,
            method: HeaderName::from_static("x-forwarded-method"),
            uri: HeaderName::from_static("x-forwarded-uri"),
        };
        let chain = format!("{b64},{}", base64::engine::general_purpose::STANDARD.encode(b"the issuer"));
        assert_eq!(cert_of(&traefik, "x-forwarded-tls-client-cert", &[&chain]), Ok(Some(sha256(DER))));
        // None sent: no certificate; twice, or unreadable: a flaw, never a guess.
        assert_eq!(cert_of(&nginx(), "x-client-cert", &[]), Ok(None));
        assert_eq!(cert_of(&nginx(), "x-client-cert", &[&escaped, &escaped]), Err(Flaw::RepeatedCert));
        for bad in ["", "%", "%zz", "%+4", "not base64!", "-----BEGIN CERTIFICATE-----"] {
            assert_eq!(cert_of(&nginx(), "x-client-cert", &[bad]), Err(Flaw::BadCert), "{bad:?}");
        }
    }

    #[test]
    fn envoy_gives_the_hash_of_the_last_element() {
        let f = Front::Envoy { path_prefix: "/authz".into() };
        let hex = |d: &[u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let (mine, other) = (sha256(DER), sha256(b"another"));
        let xfcc = format!(
            "By=spiffe://a;Hash={};Subject=\"CN=x,O=y\",By=spiffe://b;Hash={};Subject=\"O=\\\"q,\\\",CN=z\"",
            hex(&other),
            hex(&mine)
        );
        assert_eq!(cert_of(&f, "x-forwarded-client-cert", &[&xfcc]), Ok(Some(mine)));
        // On two lines: the last line's last element.
        let first = format!("Hash={}", hex(&other));
        let last = format!("Hash={}", hex(&mine).to_uppercase());
        assert_eq!(cert_of(&f, "x-forwarded-client-cert", &[&first, &last]), Ok(Some(mine)));
        let no_hash = format!("Hash={},By=spiffe://b", hex(&mine));
        for bad in [
            no_hash.as_str(),
            "Hash=abc",
            "Hash=zz00000000000000000000000000000000000000000000000000000000000000",
            "Hash=+f00000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(cert_of(&f, "x-forwarded-client-cert", &[bad]), Err(Flaw::BadCert), "{bad:?}");
        }
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
