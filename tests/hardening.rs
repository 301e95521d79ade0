//! The real binary against requests that upstream stacks read differently from the gateway:
//! second spellings of a path, underscore twins of the gateway's headers, and running out of
//! descriptors.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};
use mfa_gateway::dev::{entra_claims, DevIssuer, KeyServer};
use support::*;
use tokio::net::TcpStream;

/// Routes shaped like `config/partner-center.toml`: an app-only-capable `mfa` subtree beside GDAP
/// customer routes, and a fail-closed default.
const PARTNER_ROUTES: &str = r#"
[defaults]
require = "app_user_mfa"
[[route]]
name = "offers"
path = "/v1/offers/{*rest}"
require = "mfa"
[[route]]
name = "customers"
path = "/v1/customers/{*rest}"
require = "app_user_mfa"
"#;

struct Setup {
    gw: Binary,
    seen: Seen,
    issuer: DevIssuer,
    _keys: Arc<KeyServer>,
}

async fn setup(server_extra: &str) -> Setup {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let (up, seen) = recording_upstream().await;
    let text = config_text(up, &format!("{}{PARTNER_ROUTES}", issuer_table(TEMPLATE_ISSUER, &keys)))
        .replace("[server]\n", &format!("[server]\n{server_extra}"));
    let gw = Binary::start(&text, None);
    gw.ready().await;
    Setup { gw, seen, issuer, _keys: keys }
}

async fn bad_requests(gw: &Binary) -> f64 {
    let mut n = 0.0;
    for route in ["offers", "customers", "unmatched"] {
        let series =
            format!("mfa_gateway_requests_total{{decision=\"bad_request\",mode=\"proxy\",route=\"{route}\",token_kind=\"none\"}}");
        n += gw.metric(&series).await;
    }
    n
}

fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn paths_an_upstream_reads_as_another_path_never_reach_it() {
    let s = setup("").await;
    let app = s.issuer.mint(&entra_claims("app", 600));
    // Control: the app-only token may read offers, and the upstream sees it.
    let ok =
        format!("GET /v1/offers/o1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw(s.gw.addr, ok.as_bytes(), Duration::from_secs(5)).await), 200);
    assert_eq!(s.seen.lock().unwrap().len(), 1);

    let spellings: &[&[u8]] = &[
        b"/v1/offers/..;/customers/c1/users",
        b"/v1/offers/..;x=1/customers/c1/users",
        b"/v1/offers/.;/customers",
        b"/v1/offers;x/../customers/c1/users",
        b"/v1/;/customers/c1/users",
        b"/v1/offers/..%3b/customers/c1/users",
        b"/v1/offers/..\\customers\\c1\\users",
        b"/v1/offers/..%5ccustomers%5cc1%5cusers",
        b"/v1/offers/..%5Ccustomers",
        b"/v1/offers/%00/../customers",
        b"/v1/offers/%0d%0aX:1",
        b"/v1/offers/%2e%2e/customers/c1/users",
        b"/v1/offers/%2E%2E/customers/c1/users",
        b"/v1/offers/.%2e/customers/c1/users",
        b"/v1/offers/%2e./customers/c1/users",
        b"/v1/offers/%252e%252e/customers/c1/users",
        b"/v1/offers/../customers/c1/users",
        b"/v1/offers/./x",
        b"/v1/offers//x",
        b"/v1/offers%2f..%2fcustomers/c1/users",
        b"/v1/offers/x%23/../../customers/c1/users",
        b"/v1/offers/\x00/x",
        b"/v1/%63ustomers/c1/users",
    ];
    let before = bad_requests(&s.gw).await;
    let mut counted = 0.0;
    for path in spellings {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(path);
        req.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let resp = raw(s.gw.addr, &req, Duration::from_secs(5)).await;
        let shown = String::from_utf8_lossy(path);
        assert_eq!(status_of(&resp), 400, "{shown}: {}", String::from_utf8_lossy(&resp));
        // The gateway's own refusal says what is wrong; hyper refuses a few targets first.
        let body = String::from_utf8_lossy(&resp);
        if body.contains("\"bad_request\"") {
            assert!(body.contains("path has"), "{shown}: {body}");
            counted += 1.0;
        }
    }
    assert_eq!(s.seen.lock().unwrap().len(), 1, "the upstream saw a second spelling");

    // A raw '#' ends the request target: the fragment is gone before routing, and the upstream is
    // asked for exactly the path that was routed.
    let req = format!("GET /v1/offers/x#/../../customers/c1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\nConnection: close\r\n\r\n");
    let resp = raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&resp), 200);
    assert_eq!(s.seen.lock().unwrap().pop().unwrap().0, "/v1/offers/x");
    let after = bad_requests(&s.gw).await;
    assert!(counted >= (spellings.len() - 3) as f64, "only {counted} reached the path rule");
    assert_eq!(after - before, counted, "every refusal of ours is counted as bad_request");

    // The same over HTTP/2, where the path arrives in :path.
    let h2 = h2_client();
    for path in ["/v1/offers/..;/customers/c1/users", "/v1/offers/..%5ccustomers", "/v1/offers/%2e%2e/customers"] {
        let req = Request::get(format!("http://{}{path}", s.gw.addr))
            .header("authorization", format!("Bearer {app}"))
            .body(full(""))
            .unwrap();
        let (status, _, body) = send(&h2, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    assert_eq!(s.seen.lock().unwrap().len(), 1, "the upstream saw a second spelling over HTTP/2");
}

/// Client headers that a CGI-style upstream reads as the gateway's own.
const TWINS: [(&str, &str); 9] = [
    ("x_mfa_gateway_upn", "evil@x"),
    ("X_MFA_GATEWAY_TOKEN_KIND", "app_user"),
    ("x_mfa_gateway_mfa", "true"),
    ("x-mfa-gateway_oid", "evil"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("x_forwarded_proto", "https"),
    ("x_request_id", "spoofed"),
    ("keep_alive", "1"),
    ("proxy_authorization", "Basic x"),
];

fn raw_with_headers(path: &str, token: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

fn has_underscore_names(h: &HeaderMap) -> Vec<String> {
    h.keys().filter(|k| k.as_str().contains('_')).map(|k| k.to_string()).collect()
}

#[tokio::test]
async fn underscore_twins_of_the_gateways_headers_never_reach_the_upstream() {
    for drop_all in [true, false] {
        let s = setup(if drop_all { "" } else { "drop_underscore_headers = false\n" }).await;
        let mfa = s.issuer.mint(&entra_claims("mfa", 600));
        let mut extra = TWINS.to_vec();
        extra.extend([("x-mfa-gateway-upn", "evil@x"), ("x_custom_thing", "kept?"), ("x-plain", "1")]);
        let resp = raw(s.gw.addr, &raw_with_headers("/v1/offers/o1", &mfa, &extra), Duration::from_secs(5)).await;
        assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));

        // And over HTTP/2, where the names arrive lowercase in HPACK.
        let mut req =
            Request::get(format!("http://{}/v1/offers/o2", s.gw.addr)).header("authorization", format!("Bearer {mfa}"));
        for (k, v) in &extra {
            req = req.header(k.to_ascii_lowercase(), *v);
        }
        let (status, _, _) = send(&h2_client(), req.body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::OK);

        let seen = s.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        for (target, h) in &seen {
            let left = has_underscore_names(h);
            if drop_all {
                assert!(left.is_empty(), "{target}: {left:?}");
            } else {
                assert_eq!(left, ["x_custom_thing"], "{target}: only the unowned name stays");
            }
            assert_eq!(h["x-plain"], "1");
            let upn = h.get("x-mfa-gateway-upn").map(|v| v.to_str().unwrap().to_string());
            assert_ne!(upn.as_deref(), Some("evil@x"), "{target}");
            assert!(h.get_all("x-mfa-gateway-upn").iter().count() <= 1);
            assert_eq!(h["x-mfa-gateway-token-kind"], "app_user");
            assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{target}: only the gateway's hop");
            assert_ne!(h["x-request-id"], "spoofed");
        }
        let m = |reason: &'static str| {
            let gw = &s.gw;
            async move { gw.metric(&format!("mfa_gateway_client_headers_removed_total{{reason=\"{reason}\"}}")).await }
        };
        // Per request: four identity spellings in the twins plus the plain copy.
        assert_eq!(m("identity").await, 10.0);
        if drop_all {
            assert_eq!((m("owned_twin").await, m("underscore").await), (0.0, 12.0));
        } else {
            assert_eq!((m("owned_twin").await, m("underscore").await), (10.0, 0.0));
        }
    }
}

#[tokio::test]
async fn running_out_of_descriptors_warns_once_per_episode_and_counts_each_failure() {
    let (up, _) = recording_upstream().await;
    let gw = Binary::start(&public_config(up, ""), Some("ulimit -n 48"));
    // Hold connections until accept fails for want of descriptors; the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let warned = |lines: &[String]| lines.iter().filter(|l| l.contains("accept failed")).count();
    eventually(Lines("accept failed, warned", &gw), Duration::from_secs(5), async || warned(&gw.lines()) > 0).await;
    // The stimulus, not a wait for the gateway: descriptors stay exhausted for ten of its
    // 50 ms retries (no scrape can reach it meanwhile; the admin port needs a descriptor too).
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
    // The backlog drains (accepts fail and succeed in turn as descriptors free up); a second
    // without failures, then a request, ends the episode.
    eventually(Lines("accepting again after a request", &gw), Duration::from_secs(10), async || {
        get(gw.addr, "/after", None).await.0 == StatusCode::OK
            && gw.lines().iter().any(|l| l.contains("accepting again"))
    })
    .await;
    let failures = gw.metric("mfa_gateway_connection_errors_total{kind=\"accept\"}").await;
    assert!(failures >= 5.0, "{failures} accept failures counted in 500 ms of retries every 50 ms");
    assert_eq!(warned(&gw.lines()), 1, "{:?}", gw.lines());
}
