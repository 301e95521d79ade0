//! The decision listener of authorization-only mode, asked directly over the real binary: the
//! answers a front proxy gets, the original request read only from the configured front's
//! headers, a missing, repeated or malformed one refused with 400 and counted, and report-only
//! decisions. The front proxies themselves are in tests/fronts.rs.

mod support;

use std::net::SocketAddr;

use http::{Request, StatusCode};
use mfa_gateway::dev::entra_claims;
use serde_json::Value;
use support::*;

struct Asker {
    gw: Binary,
    decisions: SocketAddr,
}

/// The gateway with `[authz]` front = `front`; the upstream is a closed port, so anything it
/// tried to forward would fail.
async fn asker(
    front: &str,
    customers_extra: &str,
) -> (Asker, mfa_gateway::dev::DevIssuer, std::sync::Arc<mfa_gateway::dev::KeyServer>) {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let text = config_text(
        closed_port().await,
        &format!(
            "[log]\nformat = \"json\"\n[audit]\nenabled = true\n{}",
            authz_tables(front, "", &keys, customers_extra)
        ),
    );
    let gw = Binary::start(&text, None);
    gw.ready().await;
    let decisions = gw.authz.expect("authz address in the listening line");
    (Asker { gw, decisions }, issuer, keys)
}

async fn ask(a: &Asker, token: Option<&str>, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(format!("http://{}/", a.decisions));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(full("")).unwrap()).await
}

const USERS: [(&str, &str); 2] = [("x-original-method", "GET"), ("x-original-uri", "/v1/customers/c1/users")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_the_proxy_modes_answers_without_forwarding() {
    let (a, issuer, _keys) = asker("nginx", "").await;
    let (mfa, nomfa, app) = (
        issuer.mint(&entra_claims("mfa", 600)),
        issuer.mint(&entra_claims("nomfa", 600)),
        issuer.mint(&entra_claims("app", 600)),
    );

    // Allowed: 200 with every identity header (empty for a claim the token lacks), no token.
    let (status, h, body) = ask(&a, Some(&mfa), &USERS).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h["x-mfa-gateway-token-kind"], "app_user");
    assert_eq!(h["x-mfa-gateway-mfa"], "true");
    assert_eq!(h["x-mfa-gateway-upn"], "Adminagent.csp@testtestpartner.onmicrosoft.com");
    assert!(!h.contains_key("authorization"));
    assert!(body.is_empty());
    let (status, h, _) = ask(&a, Some(&app), &[("x-original-method", "GET"), ("x-original-uri", "/v1/offers/x")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-mfa-gateway-token-kind"], "app_only");
    assert_eq!(h["x-mfa-gateway-upn"], "", "present and empty, so a front proxy replaces a client's copy");
    assert_eq!(h["x-mfa-gateway-would-refuse"], "", "the marker too, on an enforcing route");

    // Refused: the answers proxy mode gives.
    let (status, h, body) = ask(&a, Some(&nomfa), &USERS).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error_description"],
        "multi-factor authentication required"
    );
    let reply = raw(
        a.decisions,
        format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {nomfa}\r\nx-original-method: GET\r\nx-original-uri: /v1/customers/c1/users\r\n\r\n").as_bytes(),
        std::time::Duration::from_secs(2),
    )
    .await;
    assert!(reply.starts_with(b"HTTP/1.1 401 Unauthorized - MFA required\r\n"), "{}", String::from_utf8_lossy(&reply));
    assert_eq!(ask(&a, Some(&app), &USERS).await.0, StatusCode::FORBIDDEN);
    assert_eq!(ask(&a, None, &USERS).await.0, StatusCode::UNAUTHORIZED);

    // Another convention's URI header, or the client's identity headers, change nothing.
    let spoofed = [USERS[0], USERS[1], ("x-forwarded-uri", "/v1/offers/x"), ("x-mfa-gateway-token-kind", "app_user")];
    assert_eq!(ask(&a, Some(&app), &spoofed).await.0, StatusCode::FORBIDDEN);

    // The same path rule as proxy mode.
    let dots = [("x-original-method", "GET"), ("x-original-uri", "/v1/offers/../customers/c1/users")];
    assert_eq!(ask(&a, Some(&app), &dots).await.0, StatusCode::BAD_REQUEST);

    // Counted and audited as authz.
    let counted =
        r#"mfa_gateway_requests_total{decision="allowed",mode="authz",route="customers",token_kind="app_user"}"#;
    assert_eq!(a.gw.metric(counted).await, 1.0);
    let audited =
        a.gw.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "mfa_gateway::audit")
            .all(|v| v["mode"] == "authz");
    assert!(audited);
    // The report counts these requests too.
    let (_, _, report) = get(a.gw.admin, "/report", None).await;
    let report: Value = serde_json::from_str(&report).unwrap();
    assert!(report["totals"]["app_user_with_mfa"].as_u64().unwrap() >= 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_repeated_or_malformed_convention_header_is_400() {
    let (a, issuer, _keys) = asker("traefik", "").await;
    let mfa = issuer.mint(&entra_claims("mfa", 600));
    let method = ("x-forwarded-method", "GET");
    let uri = ("x-forwarded-uri", "/v1/offers/x");
    // The right headers first: allowed.
    assert_eq!(ask(&a, Some(&mfa), &[method, uri]).await.0, StatusCode::OK);
    let cases: [(&str, Vec<(&str, &str)>); 6] = [
        ("missing method", vec![uri]),
        ("missing uri", vec![method]),
        ("repeated method", vec![method, method, uri]),
        ("repeated uri", vec![method, uri, uri]),
        ("malformed uri", vec![method, ("x-forwarded-uri", "https://elsewhere/v1/offers/x")]),
        // nginx's names are not traefik's: nothing is guessed.
        ("another convention", vec![("x-original-method", "GET"), ("x-original-uri", "/v1/offers/x")]),
    ];
    for (what, headers) in &cases {
        let (status, _, body) = ask(&a, Some(&mfa), headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(body.contains("front proxy") || body.contains("original URI"), "{what}: {body}");
    }
    let counted =
        r#"mfa_gateway_requests_total{decision="bad_request",mode="authz",route="unmatched",token_kind="none"}"#;
    assert_eq!(a.gw.metric(counted).await, cases.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_only_decision_is_200_and_the_marker() {
    let (a, issuer, _keys) = asker("envoy", "enforce = false\n").await;
    let nomfa = issuer.mint(&entra_claims("nomfa", 600));
    // Envoy: the question's own method and path (no path_prefix here).
    let req = Request::get(format!("http://{}/v1/customers/c1/users", a.decisions))
        .header("authorization", format!("Bearer {nomfa}"))
        .body(full(""))
        .unwrap();
    let (status, h, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-mfa-gateway-would-refuse"], "mfa_required");
    let counted =
        r#"mfa_gateway_requests_total{decision="would_refuse",mode="authz",route="customers",token_kind="app_user"}"#;
    assert_eq!(a.gw.metric(counted).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_outside_the_allowlist_or_a_rewriting_header_is_400() {
    let (a, issuer, _keys) = asker("nginx", "").await;
    let mfa = issuer.mint(&entra_claims("mfa", 600));
    // A WebSocket upgrade is judged as any request on its route.
    let websocket = [USERS[0], USERS[1], ("upgrade", "websocket")];
    assert_eq!(ask(&a, Some(&mfa), &websocket).await.0, StatusCode::OK);
    // Nothing is forwarded from here to strip these from: the front must deny the request.
    let cases: [(&str, (&str, &str), &str); 5] = [
        ("h2c", ("upgrade", "h2c"), "upgrade"),
        ("h2c in a list", ("upgrade", "websocket, H2C"), "upgrade"),
        ("X-Original-URL", ("x-original-url", "/v1/offers/x"), "rewrites"),
        ("X-HTTP-Method-Override", ("x-http-method-override", "DELETE"), "rewrites"),
        ("an underscore twin", ("x_original_url", "/v1/offers/x"), "rewrites"),
    ];
    for (what, extra, said) in cases {
        let (status, _, body) = ask(&a, Some(&mfa), &[USERS[0], USERS[1], extra]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(body.contains(said), "{what}: {body}");
    }
    let counted =
        r#"mfa_gateway_requests_total{decision="bad_request",mode="authz",route="unmatched",token_kind="none"}"#;
    assert_eq!(a.gw.metric(counted).await, cases.len() as f64);
}
