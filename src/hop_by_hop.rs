//! Hop-by-hop headers (RFC 9110 §7.6.1): the fixed set, what `Connection` names, and the
//! `Upgrade` a `101` answers. Below both the receipt screen (`crate::headers`) and the proxy.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether an upstream's `101` switched to a protocol the gateway asked for.
pub(crate) fn switched_as_asked(asked: &HeaderValue, answered: Option<&HeaderValue>) -> bool {
    let (Ok(asked), Some(Ok(answered))) = (asked.to_str(), answered.map(HeaderValue::to_str)) else {
        return false;
    };
    let answered = answered.trim();
    !answered.is_empty() && asked.split(',').any(|p| p.trim().eq_ignore_ascii_case(answered))
}

pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A name in the fixed hop-by-hop set (RFC 9110 §7.6.1, and RFC 9113 §3.2.1's
/// `HTTP2-Settings`), or `Proxy-*`; `name` is lowercase.
pub(crate) fn fixed(name: &str) -> bool {
    matches!(name, "connection" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "keep-alive" | "http2-settings")
        || name.starts_with("proxy-")
}

/// Whether any name is hop-by-hop: in the fixed set (`Connection` among them) or `Proxy-*`.
/// A pass over the names, hashing none.
pub(crate) fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| fixed(k.as_str()))
}

/// Removes hop-by-hop headers: the fixed set, every `Proxy-*` header, and whatever
/// `Connection` names. `TE: trailers` stays (as that one value): HTTP/2 allows it, and gRPC
/// servers require it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Whatever `Connection` names is only removed when `Connection` is there.
    if !has_hop_by_hop(headers) {
        return;
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    // Only the names present are removed: one pass to find them, no hashing of absent ones.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| fixed(k.as_str()) || connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(k.as_str())))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_counts_only_to_a_protocol_asked_for() {
        let asked = HeaderValue::from_static("websocket");
        assert!(switched_as_asked(&asked, Some(&HeaderValue::from_static("WebSocket"))));
        assert!(!switched_as_asked(&asked, Some(&HeaderValue::from_static("h2c"))));
        assert!(!switched_as_asked(&asked, Some(&HeaderValue::from_static(""))));
        assert!(!switched_as_asked(&asked, None));
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
}
