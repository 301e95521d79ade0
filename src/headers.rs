//! Header names the gateway owns, below both the request path (`gateway`) and the proxy: the hop-by-hop set, and
//! the screen that a request passes on receipt, before anything reads it. The screen applies
//! `Connection` (so a client's nomination removes only what the client sent, never a header the
//! gateway adds later), keeps an upgrade only from the allowlist, and removes client headers an
//! upstream could read as one the gateway sets or as another method or URL than the one judged.
//!
//! CGI, WSGI, PHP-FPM, Rack and nginx with `underscores_in_headers` read `_` and `-` in a header
//! name as one character, and every stack folds case. So `x_mfa_gateway_upn` is the gateway's
//! `x-mfa-gateway-upn` to them, and `X_Forwarded_For` is `X-Forwarded-For`. The screen compares
//! names in that folded form.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use prometheus::Registry;

use crate::hop_by_hop::{self, connection_tokens, has_hop_by_hop, strip_hop_by_hop};
use crate::metrics::KindCounters;

/// Headers that make common upstream frameworks serve another URL or method than the request
/// line's (Symfony, Laminas, IIS URL Rewrite, Rails, Express method-override): always removed,
/// besides the operator's own `[upstream] strip_request_headers`.
pub const REWRITING: [&str; 5] =
    ["x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override"];

/// Names (folded) the gateway sets on the way upstream, besides the identity prefix.
const SET_PREFIXES: [&str; 1] = ["x-forwarded-"];
const SET_NAMES: [&str; 1] = ["x-request-id"];

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
    /// A header that rewrites the method or URL (`REWRITING` and `strip_request_headers`), in
    /// any spelling.
    Rewriting,
    /// `Upgrade` naming a protocol outside `[upstream] upgrades` (`h2c` above all).
    Upgrade,
    /// A `Connection` nomination of a name the gateway sets (an identity header, `X-Forwarded-*`,
    /// `x-request-id`): the client's copy goes, as any nominated header does, and the gateway's
    /// own is added afterwards all the same. Counted, since no honest client sends it.
    Nominated,
}

pub const REMOVED_REASONS: [&str; 6] = ["identity", "owned_twin", "underscore", "rewriting", "upgrade", "nominated"];

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
             underscore twin of a header the gateway sets, any underscore name (drop_underscore_headers), \
             a header that rewrites the method or URL, an upgrade outside the allowlist, or a Connection \
             nomination of a header the gateway sets.",
            "reason",
            &REMOVED_REASONS,
        ))
    }

    pub fn inc(&self, why: Removed) {
        self.0.inc(why.as_str());
    }
}

/// `[upstream] upgrades` and `strip_request_headers`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    /// Protocol names (lowercase) an `Upgrade` may ask the upstream for.
    pub upgrades: Vec<String>,
    /// Names (lowercase, `_` folded to `-`) removed besides `REWRITING`.
    pub strip: Vec<String>,
}

impl Default for Forwarding {
    fn default() -> Self {
        Self { upgrades: vec!["websocket".into()], strip: Vec::new() }
    }
}

/// What a request asked of its hop, read on receipt.
#[derive(Debug, Default)]
pub struct Received {
    /// An HTTP/1.1 upgrade to allowed protocols: the `Upgrade` value to ask the upstream with.
    pub upgrade: Option<HeaderValue>,
    /// `Upgrade` named a protocol outside the allowlist (and was removed).
    pub refused_upgrade: bool,
    /// A header that rewrites the method or URL was removed.
    pub rewriting: bool,
}

/// What a request passes on receipt, before anything reads it.
#[derive(Debug, Clone)]
pub struct Screen {
    /// Lowercase, `_` folded to `-`.
    identity_prefix: String,
    drop_underscore: bool,
    /// Folded: `REWRITING` and the operator's own.
    rewriting: Vec<String>,
    /// Bit `n` set when a name in `rewriting` is `n` long (63: that long or longer), so most
    /// names are passed without a comparison.
    rewriting_lengths: u64,
    upgrades: Vec<String>,
}

impl Screen {
    pub fn new(identity_prefix: &str, drop_underscore: bool, forwarding: &Forwarding) -> Self {
        let rewriting: Vec<String> =
            REWRITING.iter().map(|n| n.to_string()).chain(forwarding.strip.iter().map(|n| fold(n))).collect();
        Self {
            identity_prefix: fold(identity_prefix),
            drop_underscore,
            rewriting_lengths: rewriting.iter().fold(0, |m, n| m | length_bit(n)),
            rewriting,
            upgrades: forwarding.upgrades.clone(),
        }
    }

    /// The request's hop, as it arrives: keeps an allowed upgrade aside, applies `Connection`
    /// and removes every hop-by-hop header (RFC 9110 §7.6.1), then screens the names left.
    /// Calls `removed` once per removed name it counts. What the gateway adds afterwards is
    /// beyond any client nomination.
    pub fn receive(
        &self,
        version: Version,
        headers: &mut HeaderMap,
        mut removed: impl FnMut(&HeaderName, Removed),
    ) -> Received {
        let mut got = Received::default();
        // Most requests carry no hop-by-hop header at all: one pass over the names tells.
        if has_hop_by_hop(headers) {
            if headers.contains_key(header::UPGRADE) {
                (got.upgrade, got.refused_upgrade) = self.upgrade(version, headers);
                if got.refused_upgrade {
                    removed(&header::UPGRADE, Removed::Upgrade);
                }
            }
            for t in connection_tokens(headers) {
                // Folded only when it needs to be: most tokens are `keep-alive` or `close`.
                let needs_fold = t.bytes().any(|b| b == b'_' || b.is_ascii_uppercase());
                let folded = if needs_fold { std::borrow::Cow::Owned(fold(t)) } else { std::borrow::Cow::Borrowed(t) };
                if self.sets(&folded) {
                    if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
                        removed(&name, Removed::Nominated);
                    }
                }
            }
            strip_hop_by_hop(headers);
        }
        self.apply(headers, |name, why| {
            got.rewriting |= why == Removed::Rewriting;
            removed(name, why);
        });
        got
    }

    /// The allowed protocols an HTTP/1.1 upgrade request asks for, and whether `Upgrade` named
    /// any other. `Upgrade` without `Connection: upgrade` asks for nothing, but still tells.
    fn upgrade(&self, version: Version, headers: &HeaderMap) -> (Option<HeaderValue>, bool) {
        let asked =
            version == Version::HTTP_11 && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
        let mut kept: Vec<&str> = Vec::new();
        let mut refused = false;
        for value in headers.get_all(header::UPGRADE) {
            let Ok(value) = value.to_str() else {
                refused = true;
                continue;
            };
            for protocol in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                // `name/version`: the allowlist names protocols, any version.
                let name = protocol.split('/').next().unwrap_or(protocol);
                if self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(name)) {
                    kept.push(protocol);
                } else {
                    refused = true;
                }
            }
        }
        let upgrade = if asked && !kept.is_empty() { HeaderValue::from_str(&kept.join(", ")).ok() } else { None };
        (upgrade, refused)
    }

    /// Removes what the screen refuses; calls `removed` once per removed name.
    fn apply(&self, headers: &mut HeaderMap, mut removed: impl FnMut(&HeaderName, Removed)) {
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
            return if name.starts_with(&self.identity_prefix) {
                Some(Removed::Identity)
            } else if self.rewrites(name) {
                Some(Removed::Rewriting)
            } else {
                None
            };
        }
        let folded = fold(name);
        if folded.starts_with(&self.identity_prefix) {
            Some(Removed::Identity)
        } else if self.rewrites(&folded) {
            Some(Removed::Rewriting)
        } else if self.drop_underscore {
            Some(Removed::Underscore)
        } else if owned(&folded) {
            Some(Removed::OwnedTwin)
        } else {
            None
        }
    }

    /// `folded` is a header that rewrites the method or URL.
    fn rewrites(&self, folded: &str) -> bool {
        self.rewriting_lengths & length_bit(folded) != 0 && self.rewriting.iter().any(|r| r == folded)
    }

    /// A name the gateway sets on the way upstream.
    fn sets(&self, folded: &str) -> bool {
        folded.starts_with(&self.identity_prefix) || set_besides_identity(folded)
    }
}

fn length_bit(name: &str) -> u64 {
    1 << name.len().min(63)
}

fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// A name the gateway sets or strips itself, besides the identity prefix: a client's underscore
/// twin of one of these could shadow the gateway's own.
fn owned(folded: &str) -> bool {
    set_besides_identity(folded) || hop_by_hop::fixed(folded)
}

/// `X-Forwarded-*` and `x-request-id`: what the gateway sets besides the identity headers.
fn set_besides_identity(folded: &str) -> bool {
    SET_PREFIXES.iter().any(|p| folded.starts_with(p)) || SET_NAMES.contains(&folded)
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
            let s = Screen::new("X-MFA-Gateway-", drop, &Forwarding::default());
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
        let s = Screen::new("x-mfa-gateway-", false, &Forwarding::default());
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
        let s = Screen::new("x-mfa-gateway-", true, &Forwarding::default());
        let (left, gone) = screened(&s, &["x_custom_thing", "x_forwarded_for", "accept", "x-plain"]);
        assert_eq!(left, ["accept", "x-plain"]);
        assert_eq!(
            gone,
            [("x_custom_thing".into(), Removed::Underscore), ("x_forwarded_for".into(), Removed::Underscore)]
        );
    }

    /// `receive` over `pairs`: what is left, what was counted, and the hop.
    fn received(
        screen: &Screen,
        version: Version,
        pairs: &[(&str, &str)],
    ) -> (Vec<String>, Vec<(String, Removed)>, Received) {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let mut gone = Vec::new();
        let hop = screen.receive(version, &mut h, |n, why| gone.push((n.to_string(), why)));
        let mut left: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        left.sort();
        (left, gone, hop)
    }

    #[test]
    fn connection_nominations_remove_the_clients_copy_and_count_the_gateways_names() {
        let s = Screen::new("x-mfa-gateway-", true, &Forwarding::default());
        let (left, gone, _) = received(
            &s,
            Version::HTTP_11,
            &[
                ("connection", "x-mfa-gateway-token-kind, X-Forwarded-For, x-request-id, x-plain, keep-alive"),
                ("x-mfa-gateway-token-kind", "app_only"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-request-id", "r1"),
                ("x-plain", "1"),
                ("x-kept", "1"),
            ],
        );
        assert_eq!(left, ["x-kept"]);
        let nominated: Vec<&str> =
            gone.iter().filter(|(_, why)| *why == Removed::Nominated).map(|(n, _)| n.as_str()).collect();
        assert_eq!(nominated, ["x-mfa-gateway-token-kind", "x-forwarded-for", "x-request-id"]);
    }

    #[test]
    fn upgrades_pass_only_from_the_allowlist() {
        let s = Screen::new("x-mfa-gateway-", true, &Forwarding::default());
        let ask = |version, connection: &str, upgrade: &str| {
            let (left, gone, hop) = received(
                &s,
                version,
                &[("connection", connection), ("upgrade", upgrade), ("http2-settings", "AAMAAABkAAQAAP__")],
            );
            assert!(left.is_empty(), "hop-by-hop headers left: {left:?}");
            let counted = gone.contains(&("upgrade".into(), Removed::Upgrade));
            assert_eq!(counted, hop.refused_upgrade);
            (hop.upgrade.map(|u| u.to_str().unwrap().to_string()), hop.refused_upgrade)
        };
        let v11 = Version::HTTP_11;
        assert_eq!(ask(v11, "Upgrade", "websocket"), (Some("websocket".into()), false));
        assert_eq!(ask(v11, "keep-alive, UPGRADE", "WebSocket/13"), (Some("WebSocket/13".into()), false));
        assert_eq!(ask(v11, "Upgrade, HTTP2-Settings", "h2c"), (None, true));
        assert_eq!(ask(v11, "Upgrade, HTTP2-Settings", "H2C"), (None, true));
        assert_eq!(ask(v11, "Upgrade", "websocket, h2c"), (Some("websocket".into()), true));
        assert_eq!(ask(v11, "Upgrade", "h2c,websocket"), (Some("websocket".into()), true));
        // `Upgrade` without `Connection: upgrade` asks for nothing, and still tells.
        assert_eq!(ask(v11, "keep-alive", "websocket"), (None, false));
        assert_eq!(ask(v11, "keep-alive", "h2c"), (None, true));
        // HTTP/1.0 has no upgrade.
        assert_eq!(ask(Version::HTTP_10, "Upgrade", "websocket"), (None, false));

        let echo = Screen::new("x-mfa-gateway-", true, &Forwarding { upgrades: vec!["echo".into()], strip: vec![] });
        let (_, _, hop) = received(&echo, v11, &[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(hop.upgrade.is_none() && hop.refused_upgrade, "websocket is off when the allowlist leaves it out");
    }

    #[test]
    fn rewriting_headers_go_in_every_spelling_with_the_operators_own() {
        let forwarding = Forwarding { strip: vec!["x-my-framework-path".into()], ..Forwarding::default() };
        for drop in [true, false] {
            let s = Screen::new("x-mfa-gateway-", drop, &forwarding);
            let (left, gone, hop) = received(
                &s,
                Version::HTTP_11,
                &[
                    ("x-original-url", "/v1/customers/x/users"),
                    ("x-rewrite-url", "/a"),
                    ("X_HTTP_Method_Override", "DELETE"),
                    ("x-http-method", "PUT"),
                    ("x-method-override", "PATCH"),
                    ("x_my_framework_path", "/b"),
                    ("x-original-uri", "/kept: nginx's convention, read by authz mode"),
                ],
            );
            assert_eq!(left, ["x-original-uri"]);
            assert_eq!(gone.len(), 6);
            assert!(gone.iter().all(|(_, why)| *why == Removed::Rewriting), "{gone:?}");
            assert!(hop.rewriting);
        }
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
