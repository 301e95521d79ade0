//! Path normal form plus route resolution: no panic, and no accepted path that any common
//! upstream reading (dot segments, ';' parameters, backslashes, decoding) could turn into another.

#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use mfa_gateway::routes::RouteConfig;
use mfa_gateway::path;
use mfa_gateway::routes::{Defaults, Requirement, RouteTable, StepUp};

fn table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| {
        let route = |name: &str, path: &str, require| RouteConfig {
            name: name.into(),
            path: path.into(),
            methods: vec![],
            require,
            roles_any: vec![],
            scopes_any: vec![],
            step_up: StepUp::PartnerCenter,
            max_auth_age: None,
            enforce: true,
            binding: None,
        };
        RouteTable::new(
            &[
                route("offers", "/v1/offers/{*rest}", Requirement::Mfa),
                route("customers", "/v1/customers/{id}/{*rest}", Requirement::AppUserMfa),
                route("health", "/healthz", Requirement::Public),
            ],
            Defaults::default(),
        )
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(p) = std::str::from_utf8(data) else { return };
    if path::check(p).is_err() {
        return;
    }
    let segments: Vec<&str> = p[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(*s != "." && *s != "..", "dot segment in {p:?}");
        assert!(!s.is_empty() || i == segments.len() - 1, "empty segment in {p:?}");
    }
    let lower = p.to_ascii_lowercase();
    for bad in [";", "\\", "%2e", "%2f", "%5c", "%3b", "%00", "%23", "#"] {
        assert!(!lower.contains(bad), "{bad} in accepted {p:?}");
    }
    let route = table().resolve(&Method::GET, p);
    // Only paths spelled with the route's own segments reach the app-only-capable route.
    if &*route.name == "offers" {
        assert!(p.starts_with("/v1/offers/"), "{p:?}");
    }
});
