//! Report-only rollout, over the real binary: a route with `enforce = false` forwards what its
//! rules would refuse, marked, counted and audited; a token that does not verify is refused all
//! the same; switching the route to `enforce = true` by live reload gives the exact Partner
//! Center refusal with no restart.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use mfa_gateway::dev::{entra_claims, DevIssuer};
use serde_json::Value;
use support::*;

const APP: &str = "00001111-aaaa-2222-bbbb-3333cccc4444";

fn config(upstream: std::net::SocketAddr, keys: &mfa_gateway::dev::KeyServer, enforce: bool) -> String {
    config_text(
        upstream,
        &format!(
            "[log]\nformat = \"json\"\n[audit]\nenabled = true\n{}\n\
             [[route]]\nname = \"customers\"\npath = \"/v1/customers/{{*rest}}\"\nrequire = \"app_user_mfa\"\nenforce = {enforce}\n",
            issuer_table(TEMPLATE_ISSUER, keys)
        ),
    )
}

async fn call(gw: &Binary, token: &str, extra: Option<(&str, &str)>) -> (StatusCode, String) {
    let mut req = Request::get(format!("http://{}/v1/customers/c1/users", gw.addr))
        .header("authorization", format!("Bearer {token}"));
    if let Some((k, v)) = extra {
        req = req.header(k, v);
    }
    let (status, _, body) = send(&client(), req.body(full("")).unwrap()).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_only_route_forwards_what_it_would_refuse_and_enforces_after_a_reload() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let up = echo_upstream().await;
    let text = config(up, &keys, false);

    // check names the report-only route.
    let file = temp_dir("rollout").join("gw.toml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(said.contains("warning: route \"customers\" is report-only"), "{said}");

    let gw = Binary::start_on(&file, None);
    gw.ready().await;
    assert_eq!(gw.metric("mfa_gateway_routes_report_only").await, 1.0);

    // A user token without MFA is forwarded, marked with the reason.
    let nomfa = issuer.mint(&entra_claims("nomfa", 600));
    let (status, body) = call(&gw, &nomfa, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-would-refuse"), "mfa_required");
    assert_eq!(echoed(&body, "x-mfa-gateway-mfa"), "false");

    // An app-only token on this app_user_mfa route too, with its own reason.
    let (status, body) = call(&gw, &issuer.mint(&entra_claims("app", 600)), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-would-refuse"), "app_only_not_allowed");

    // Report-only never forwards what it could not verify.
    let expired = issuer.mint(&entra_claims("nomfa", -3600));
    assert_eq!(call(&gw, &expired, None).await.0, StatusCode::UNAUTHORIZED, "expired");
    let forged = DevIssuer::generate("k1").mint(&entra_claims("nomfa", 600));
    assert_eq!(call(&gw, &forged, None).await.0, StatusCode::UNAUTHORIZED, "signed by another key");

    // A client's own copy of the marker never reaches the upstream.
    let mfa = issuer.mint(&entra_claims("mfa", 600));
    let (status, body) = call(&gw, &mfa, Some(("x-mfa-gateway-would-refuse", "none"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(echoed(&body, "x-mfa-gateway-would-refuse").is_null(), "{body}");
    let (_, body) = call(&gw, &mfa, Some(("x_mfa_gateway_would_refuse", "none"))).await;
    assert!(echoed(&body, "x_mfa_gateway_would_refuse").is_null(), "{body}");

    // Counted apart, split by route, reason, app and token kind; audited with the reason.
    let would = |reason: &str, kind: &str| {
        format!("mfa_gateway_would_refuse_total{{app=\"{APP}\",reason=\"{reason}\",route=\"customers\",token_kind=\"{kind}\"}}")
    };
    assert_eq!(gw.metric(&would("mfa_required", "app_user")).await, 1.0);
    assert_eq!(gw.metric(&would("app_only_not_allowed", "app_only")).await, 1.0);
    let total =
        r#"mfa_gateway_requests_total{decision="would_refuse",mode="proxy",route="customers",token_kind="app_user"}"#;
    assert_eq!(gw.metric(total).await, 1.0);
    let audits: Vec<Value> = gw
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "mfa_gateway::audit" && v["decision"] == "would_refuse")
        .collect();
    let reasons: Vec<&str> = audits.iter().map(|a| a["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["mfa_required", "app_only_not_allowed"], "{audits:?}");
    assert!(audits.iter().all(|a| a["status"] == 200));

    // The report still counts tokens with and without MFA, and shows what enforcing would break.
    let (_, _, report) = get(gw.admin, "/report", None).await;
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["totals"]["app_user_without_mfa"], 1);
    let view = report["would_refuse"].as_array().unwrap();
    assert_eq!(view.len(), 2, "{view:?}");
    assert!(view.iter().all(|w| w["route"] == "customers" && w["app"] == APP && w["requests"] == 1));

    // Switch to enforce by rewriting the file: the same request gets the exact refusal.
    std::fs::write(&file, config(up, &keys, true)).unwrap();
    let t = Instant::now();
    loop {
        let answer = raw(
            gw.addr,
            format!("GET /v1/customers/c1/users HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {nomfa}\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        if answer.starts_with("http/1.1 401 unauthorized - mfa required\r\n") {
            assert!(answer.contains("\r\nwww-authenticate: bearer error=\"invalid_token\"\r\n"), "{answer}");
            break;
        }
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(t.elapsed() < Duration::from_secs(10), "enforce = true did not take effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.metric("mfa_gateway_routes_report_only").await, 0.0);
    let counted = gw.metric(&would("mfa_required", "app_user")).await;
    assert_eq!(call(&gw, &nomfa, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.metric(&would("mfa_required", "app_user")).await, counted, "refused now, not forwarded");
}
