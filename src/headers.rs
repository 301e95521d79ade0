//! Header names the gateway owns, below both the stack and the proxy: the hop-by-hop set, and
//! the screen that removes client headers an upstream could read as one the gateway sets.
//!
//! CGI, WSGI, PHP-FPM, Rack and nginx with `underscores_in_headers` read `_` and `-` in a header
//! name as one character, and every stack folds case. So `x_mfa_gateway_upn` is the gateway's
//! `x-mfa-gateway-upn` to them, and `X_Forwarded_For` is `X-Forwarded-For`. The screen compares
//! names in that folded form.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use prometheus::Registry;

use crate::metrics::KindCounters;

/// Hop-by-hop headers (RFC 9110 §7.6.1), besides `Proxy-*` and whatever `Connection` names.
pub const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Names (folded) the gateway sets or strips itself, besides the identity prefix: a client's
/// underscore twin of one of these could shadow the gateway's own.
const OWNED_PREFIXES: [&str; 2] = ["x-forwarded-", "proxy-"];
const OWNED_NAMES: [&str; 1] = ["x-request-id"];

/// Why a client header was removed; the `reason` label of `client_headers_removed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Any spelling of a name under the identity prefix.
    Identity,
    /// An underscore spelling of a name the gateway sets or strips (`X-Forwarded-*`,
    /// `x-request-id`, the hop-by-hop set).
    OwnedTwin,
    /// Any other name with `_`, under `[server].drop_underscore_headers`.
    Underscore,
}

pub const REMOVED_REASONS: [&str; 3] = ["identity", "owned_twin", "underscore"];

impl Removed {
    pub fn as_str(self) -> &'static str {
        REMOVED_REASONS[self as usize]
    }
}

/// `client_headers_removed_total`, by reason.
pub struct RemovedCounters(KindCounters);

impl RemovedCounters {
    pub fn register(reg: &Registry) -> Self {
        Self(KindCounters::labelled(
            reg,
            "mfa_gateway_client_headers_removed_total",
            "Client request headers removed before routing: any spelling of an identity header, an \
             underscore twin of a header the gateway sets, or any underscore name (drop_underscore_headers).",
            "reason",
            &REMOVED_REASONS,
        ))
    }

    pub fn inc(&self, why: Removed) {
        self.0.inc(why.as_str());
    }
}

/// Removes client headers before anything reads them.
#[derive(Debug, Clone)]
pub struct Screen {
    /// Lowercase, `_` folded to `-`.
    identity_prefix: String,
    drop_underscore: bool,
}

impl Screen {
    pub fn new(identity_prefix: &str, drop_underscore: bool) -> Self {
        Self { identity_prefix: fold(identity_prefix), drop_underscore }
    }

    /// Removes what the screen refuses; calls `removed` once per removed name.
    pub fn apply(&self, headers: &mut HeaderMap, mut removed: impl FnMut(&HeaderName, Removed)) {
        // One pass over the names, no allocation, for the common request that has nothing to remove.
        if !headers.keys().any(|k| self.verdict(k.as_str()).is_some()) {
            return;
        }
        let doomed: Vec<(HeaderName, Removed)> =
            headers.keys().filter_map(|k| self.verdict(k.as_str()).map(|r| (k.clone(), r))).collect();
        for (name, why) in doomed {
            headers.remove(&name);
            removed(&name, why);
        }
    }

    /// `name` is lowercase already: hyper lowercases HTTP/1 names and HTTP/2 requires it.
    fn verdict(&self, name: &str) -> Option<Removed> {
        let underscore = name.contains('_');
        if !underscore {
            return name.starts_with(&self.identity_prefix).then_some(Removed::Identity);
        }
        let folded = fold(name);
        if folded.starts_with(&self.identity_prefix) {
            Some(Removed::Identity)
        } else if self.drop_underscore {
            Some(Removed::Underscore)
        } else if owned(&folded) {
            Some(Removed::OwnedTwin)
        } else {
            None
        }
    }
}

fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn owned(folded: &str) -> bool {
    OWNED_PREFIXES.iter().any(|p| folded.starts_with(p))
        || OWNED_NAMES.contains(&folded)
        || HOP_BY_HOP.iter().any(|h| h.as_str() == folded)
}

pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers: the fixed list, every `Proxy-*` header, and whatever
/// `Connection` names. `TE: trailers` stays (as that one value): HTTP/2 allows it, and gRPC
/// servers require it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    let named: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    remove_prefixed(headers, "proxy-");
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A gRPC request: `content-type: application/grpc`, `application/grpc+proto` and the like.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// Removes every header whose (lowercase) name starts with `prefix`; allocates only when one does.
pub fn remove_prefixed(headers: &mut HeaderMap, prefix: &str) {
    if headers.keys().any(|k| k.as_str().starts_with(prefix)) {
        let names: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with(prefix)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for n in names {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("v"));
        }
        h
    }

    fn screened(screen: &Screen, names: &[&str]) -> (Vec<String>, Vec<(String, Removed)>) {
        let mut h = map(names);
        let mut gone = Vec::new();
        screen.apply(&mut h, |n, why| gone.push((n.to_string(), why)));
        let mut left: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        left.sort();
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        (left, gone)
    }

    #[test]
    fn identity_names_go_in_every_spelling() {
        for drop in [true, false] {
            let s = Screen::new("X-MFA-Gateway-", drop);
            let (left, gone) = screened(
                &s,
                &["x-mfa-gateway-upn", "x_mfa_gateway_upn", "X_MFA_GATEWAY_TOKEN_KIND", "x-mfa_gateway-mfa", "x-keep"],
            );
            assert_eq!(left, ["x-keep"]);
            assert_eq!(gone.len(), 4);
            assert!(gone.iter().all(|(_, why)| *why == Removed::Identity), "{gone:?}");
        }
    }

    #[test]
    fn owned_twins_go_even_when_underscores_are_allowed() {
        let s = Screen::new("x-mfa-gateway-", false);
        let names = [
            "x_forwarded_for",
            "X_Forwarded_Proto",
            "x-forwarded_host",
            "x_request_id",
            "transfer_encoding",
            "keep_alive",
            "proxy_authorization",
            "x_custom_thing",
            "x-forwarded-for",
            "x-request-id",
        ];
        let (left, gone) = screened(&s, &names);
        assert_eq!(left, ["x-forwarded-for", "x-request-id", "x_custom_thing"]);
        assert_eq!(gone.len(), 7);
        assert!(gone.iter().all(|(_, why)| *why == Removed::OwnedTwin), "{gone:?}");
    }

    #[test]
    fn drop_underscore_headers_drops_every_underscore_name() {
        let s = Screen::new("x-mfa-gateway-", true);
        let (left, gone) = screened(&s, &["x_custom_thing", "x_forwarded_for", "accept", "x-plain"]);
        assert_eq!(left, ["accept", "x-plain"]);
        assert_eq!(
            gone,
            [("x_custom_thing".into(), Removed::Underscore), ("x_forwarded_for".into(), Removed::Underscore)]
        );
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret, Upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "1"),
            ("te", "gzip, Trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "1"),
            ("authorization", "Bearer t"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "te", "x-keep"]);
        assert_eq!(h["te"], "trailers", "only the one value HTTP/2 allows");
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(header::TE));
    }

    #[test]
    fn grpc_content_types() {
        let grpc = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        for yes in ["application/grpc", "application/grpc+proto", "Application/GRPC+json", "application/grpc;x=1"] {
            assert!(grpc(yes), "{yes}");
        }
        for no in ["application/grpc-web", "application/json", "application/grp", "text/plain"] {
            assert!(!grpc(no), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }
}
