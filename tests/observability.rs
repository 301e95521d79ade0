//! Metrics, the status report and audit events, over the wire.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mfa_gateway::dev::{entra_claims, DevIssuer, KeyServer};
use serde_json::{json, Value};
use support::*;

/// Reads all samples of a metric family: (labels, value).
async fn samples(gw: &mfa_gateway::app::Running, family: &str) -> Vec<(String, f64)> {
    let (_, _, body) = get(gw.admin_addr, "/metrics", None).await;
    body.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .map(|l| {
            let (labels, v) = l.rsplit_once(' ').unwrap();
            (labels[family.len()..].to_string(), v.parse().unwrap())
        })
        .collect()
}

fn sum(samples: &[(String, f64)], needle: &str) -> f64 {
    samples.iter().filter(|(l, _)| l.contains(needle)).map(|(_, v)| v).sum()
}

#[tokio::test]
async fn the_status_report_worked_example_gives_40_percent_in_metrics_and_report() {
    logs();
    let h = auth_harness(ROUTES, "").await;
    // One day: 3 App+User requests without MFA, 5 app-only, 2 App+User with MFA.
    let nomfa = h.issuer.mint(&entra_claims("nomfa", 600));
    let app = h.issuer.mint(&entra_claims("app", 600));
    let mfa = h.issuer.mint(&entra_claims("mfa", 600));
    for _ in 0..3 {
        assert_eq!(get(h.gw.addr, "/v1/offers", Some(&nomfa)).await.0, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..5 {
        assert_eq!(get(h.gw.addr, "/v1/offers", Some(&app)).await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(get(h.gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    }
    let s = samples(&h.gw, "mfa_gateway_app_user_requests_total").await;
    let (with, without) = (sum(&s, "mfa=\"true\""), sum(&s, "mfa=\"false\""));
    assert_eq!((with, without), (2.0, 3.0));
    assert_eq!(with / (with + without), 0.4);
    assert_eq!(sum(&samples(&h.gw, "mfa_gateway_app_only_requests_total").await, "app="), 5.0);

    let (status, _, body) = get(h.gw.admin_addr, "/report", None).await;
    assert_eq!(status, StatusCode::OK);
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["app_user_mfa_ratio"], 0.4);
    assert_eq!(
        r["totals"],
        json!({"app_user_with_mfa": 2, "app_user_without_mfa": 3, "app_only": 5, "app_user_bound": 0})
    );
    assert_eq!(r["window_days"], 7);
    assert_eq!(r["recent_without_mfa"].as_array().unwrap().len(), 3);
    assert_eq!(r["recent_without_mfa"][0]["route"], "offers");
    assert_eq!(r["users_without_mfa"][0]["user"], "Adminagent.csp@testtestpartner.onmicrosoft.com");
    assert_eq!(r["applications"][0]["app"], "00001111-aaaa-2222-bbbb-3333cccc4444");
    assert_eq!(r["applications"][0]["app_user_mfa_ratio"], 0.4);

    // A browser gets the same report as a page: the ratio as a figure, tables, nothing external.
    let req = http::Request::get(format!("http://{}/report", h.gw.admin_addr))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .body(full(""))
        .unwrap();
    let (status, headers, page) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("<div class=\"ratio low\" id=\"ratio\">40.0 %</div>"), "{page}");
    assert!(page.contains("<table>") && page.contains("<td class=\"id\">00001111-aaaa-2222-bbbb-3333cccc4444</td>"));
    assert!(page.contains("<td class=\"id\">Adminagent.csp@testtestpartner.onmicrosoft.com</td>"));
    assert!(!page.contains("<script") && !page.contains("src="), "self-contained");
    // Its only links are to its own CSV tables.
    let links: Vec<&str> = page.split("href=\"").skip(1).map(|l| l.split('"').next().unwrap()).collect();
    assert_eq!(links, ["/report/users.csv", "/report/recent.csv"], "nothing external");
}

#[tokio::test]
async fn each_decision_increments_its_counter() {
    logs();
    // A second issuer whose key server is down gives keys_unavailable; a slow route gives 504.
    let slow = upstream(|req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Response::new(full("{}"))
    })
    .await;
    let dead = closed_port().await;
    let issuer = DevIssuer::generate("k1");
    let keys = KeyServer::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        json!({"keys": [issuer.jwk()]}),
        TEMPLATE_ISSUER,
    );
    let text = config_text(
        slow,
        &format!(
            "[[issuer]]\nissuer = \"{TEMPLATE_ISSUER}\"\ndiscovery = \"{}\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n\
             [[issuer]]\nissuer = \"https://down.example/\"\nprofile = \"entra\"\njwks_uri = \"http://{dead}/keys\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n\
             [[route]]\nname = \"slow\"\npath = \"/slow\"\nrequire = \"public\"\n{ROUTES}",
            keys.discovery_url()
        ),
    )
    .replace("[upstream]\n", "[upstream]\ntimeout = \"300ms\"\n");
    let gw = start(&text).await;
    eventually("the first issuer's keys loaded", Duration::from_secs(4), async || {
        !gw.not_ready().iter().any(|r| r.contains(TEMPLATE_ISSUER))
    })
    .await;
    let mut down = entra_claims("mfa", 600);
    down["iss"] = json!("https://down.example/");
    let cases = [
        ("/v1/offers", Some(issuer.mint(&entra_claims("mfa", 600))), "allowed", "offers", "app_user"),
        ("/v1/offers", Some(issuer.mint(&entra_claims("nomfa", 600))), "mfa_required", "offers", "app_user"),
        ("/v1/offers", None, "missing_token", "offers", "none"),
        ("/v1/offers", Some("x.y.z".to_string()), "invalid_token", "offers", "none"),
        ("/v1/customers/c", Some(issuer.mint(&entra_claims("app", 600))), "forbidden", "customers", "app_only"),
        ("/v1/offers", Some(issuer.mint(&down)), "keys_unavailable", "offers", "none"),
        ("/slow", None, "upstream_error", "slow", "none"),
        ("/v1//offers", None, "bad_request", "unmatched", "none"),
    ];
    for (path, token, decision, route, kind) in cases {
        let series =
            format!("mfa_gateway_requests_total{{decision=\"{decision}\",mode=\"proxy\",route=\"{route}\",token_kind=\"{kind}\"}}");
        let before = metric(&gw, &series).await;
        get(gw.addr, path, token.as_deref()).await;
        assert_eq!(metric(&gw, &series).await, before + 1.0, "{series}");
    }
    assert_eq!(metric(&gw, "mfa_gateway_invalid_tokens_total{reason=\"bad_base64\"}").await, 1.0);
    assert_eq!(metric(&gw, "mfa_gateway_upstream_errors_total{kind=\"timeout\"}").await, 1.0);
    let (_, _, body) = get(gw.admin_addr, "/metrics", None).await;
    for family in [
        "mfa_gateway_auth_duration_seconds_bucket",
        "mfa_gateway_request_duration_seconds_bucket",
        "mfa_gateway_upstream_duration_seconds_bucket",
        "mfa_gateway_key_fetches_total",
        "mfa_gateway_keys_held",
        "mfa_gateway_key_set_age_seconds",
        "mfa_gateway_token_cache_total",
        "mfa_gateway_token_cache_deferred_total",
        "mfa_gateway_connections_open",
        "mfa_gateway_requests_in_flight",
        "mfa_gateway_build_info",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(body.contains(family), "{family} missing");
    }
    assert!(
        !body.contains("mfa_gateway_key_set_age_seconds{issuer=\"https://down.example/\"}"),
        "never fetched: no age"
    );
    assert!(body.contains("mfa_gateway_keys_held{issuer=\"https://down.example/\"} 0"));
}

#[tokio::test]
async fn label_values_stay_within_their_sets_under_random_paths() {
    logs();
    let h = auth_harness(&format!("[metrics]\napps = [\"allowed-app\"]\nmax_apps = 2\n{ROUTES}"), "").await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let methods = ["GET", "POST", "DELETE", "PATCH"];
    for i in 0..150 {
        let n = next();
        let path = format!("/v{}/{:x}/{}", n % 3, n, ["offers", "customers", "x", "healthz"][(n % 4) as usize]);
        let mut c = entra_claims(["mfa", "nomfa", "app"][i % 3], 600);
        c["appid"] = json!(format!("{:08x}-0000-0000-0000-{:012x}", n as u32, i));
        if i % 10 == 0 {
            c["appid"] = json!("allowed-app");
        }
        // Free text that is a valid header value reaches the label guard (only GUIDs become
        // labels); i = 0 makes it the first app id seen, the one a missing guard would label.
        if i % 7 == 0 {
            c["appid"] = json!("free text with spaces");
        }
        // A control character stops it earlier: no header value, so no app id at all.
        if i % 11 == 5 {
            c["appid"] = json!("free text\nwith a newline");
        }
        let req = Request::builder()
            .method(methods[(n % 4) as usize])
            .uri(format!("http://{}{path}", h.gw.addr))
            .header("authorization", format!("Bearer {}", h.issuer.mint(&c)))
            .body(full(""))
            .unwrap();
        send(&client(), req).await;
    }
    let routes: HashSet<&str> = ["health", "offers", "customers", "reports", "unmatched"].into();
    let decisions: HashSet<&str> = mfa_gateway::request_end::Decision::ALL.iter().map(|d| d.as_str()).collect();
    let kinds: HashSet<&str> = ["app_user", "app_only", "none"].into();
    let label = |labels: &str, name: &str| -> String {
        let start = labels.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        labels[start..].split('"').next().unwrap().to_string()
    };
    for (labels, _) in samples(&h.gw, "mfa_gateway_requests_total").await {
        assert!(routes.contains(label(&labels, "route").as_str()), "{labels}");
        assert!(decisions.contains(label(&labels, "decision").as_str()), "{labels}");
        assert!(kinds.contains(label(&labels, "token_kind").as_str()), "{labels}");
    }
    let apps: HashSet<String> = samples(&h.gw, "mfa_gateway_app_user_requests_total")
        .await
        .into_iter()
        .chain(samples(&h.gw, "mfa_gateway_app_only_requests_total").await)
        .map(|(l, _)| label(&l, "app"))
        .collect();
    // A control character makes the app id unusable as a header value: it counts as "none".
    assert!(apps.len() <= 5, "allow-listed + 2 first seen + other + none: {apps:?}");
    assert!(apps.contains("allowed-app") && apps.contains("other"));
    let fixed = ["allowed-app", "other", "none"];
    assert!(apps.iter().all(|a| fixed.contains(&a.as_str()) || mfa_gateway::auth::token::is_guid(a)), "{apps:?}");
}

#[tokio::test]
async fn report_caps_hold() {
    logs();
    let h = auth_harness(&format!("[report]\nmax_recent = 3\nmax_users = 2\n{ROUTES}"), "").await;
    for i in 0..6 {
        let mut c = entra_claims("nomfa", 600);
        c["upn"] = json!(format!("user{i}@contoso.example"));
        get(h.gw.addr, "/v1/offers", Some(&h.issuer.mint(&c))).await;
    }
    let (_, _, body) = get(h.gw.admin_addr, "/report", None).await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["recent_without_mfa"].as_array().unwrap().len(), 3);
    assert_eq!(r["recent_without_mfa"][0]["user"], "user5@contoso.example", "newest first");
    assert_eq!(r["users_without_mfa"].as_array().unwrap().len(), 2);
    assert_eq!(r["totals"]["app_user_without_mfa"], 6, "counts are not capped");
}

#[tokio::test]
async fn audit_events_carry_decisions_and_identity_but_never_token_bytes() {
    logs();
    let h = auth_harness(&format!("[audit]\nenabled = true\n{ROUTES}"), "").await;
    let tokens = [
        h.issuer.mint(&entra_claims("mfa", 600)),
        h.issuer.mint(&entra_claims("nomfa", 600)),
        h.issuer.mint(&entra_claims("app", 600)),
        h.issuer.mint(&entra_claims("mfa", -600)),
        format!("{}.{}", h.issuer.mint(&entra_claims("mfa", 600)), "extra"),
    ];
    let mut ids = Vec::new();
    for t in &tokens {
        for path in ["/v1/offers", "/v1/customers/c"] {
            let (_, headers, _) = get(h.gw.addr, path, Some(t)).await;
            ids.push(headers["x-request-id"].to_str().unwrap().to_string());
        }
    }
    let audited =
        |id: &String| log_lines().iter().any(|l| l["target"] == "mfa_gateway::audit" && l["request_id"] == id.as_str());
    eventually("an audit event for each request", Duration::from_secs(2), async || ids.iter().all(audited)).await;
    let lines = log_lines();
    let audit: Vec<&Value> = lines.iter().filter(|l| l["target"] == "mfa_gateway::audit").collect();
    for id in &ids {
        let e =
            audit.iter().find(|l| l["request_id"] == id.as_str()).unwrap_or_else(|| panic!("no audit event for {id}"));
        for field in [
            "client",
            "method",
            "route",
            "status",
            "decision",
            "reason",
            "token_kind",
            "binding",
            "duration_us",
            "auth_us",
            "upstream_us",
        ] {
            assert!(!e[field].is_null(), "{field} missing in {e}");
        }
    }
    let mfa_refusal = audit.iter().find(|l| l["request_id"] == ids[2].as_str()).unwrap();
    assert_eq!(mfa_refusal["decision"], "mfa_required");
    assert_eq!(mfa_refusal["tid"], mfa_gateway::dev::DEMO_TENANT);
    assert_eq!(mfa_refusal["user"], "Adminagent.csp@testtestpartner.onmicrosoft.com");
    assert_eq!(mfa_refusal["binding"], "bearer");
    let all = String::from_utf8(logs().lock().unwrap().clone()).unwrap();
    for t in &tokens {
        for part in t.split('.') {
            if part.len() >= 12 {
                assert!(
                    !all.contains(&part[..12]) && !all.contains(&part[part.len() - 12..]),
                    "token bytes in the logs"
                );
            }
        }
    }
}

#[tokio::test]
async fn hashed_user_ids_in_audit_and_report() {
    logs();
    let h =
        auth_harness(&format!("[audit]\nuser_ids = \"hash\"\nhash_key = \"0123456789abcdef0123\"\n{ROUTES}"), "").await;
    let (_, headers, _) = get(h.gw.addr, "/v1/offers", Some(&h.issuer.mint(&entra_claims("nomfa", 600)))).await;
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    eventually("the request's audit event", Duration::from_secs(2), async || {
        log_lines().iter().any(|l| l["target"] == "mfa_gateway::audit" && l["request_id"] == id.as_str())
    })
    .await;
    let lines = log_lines();
    let e = lines.iter().find(|l| l["target"] == "mfa_gateway::audit" && l["request_id"] == id.as_str()).unwrap();
    assert!(e["user"].as_str().unwrap().starts_with("h:"), "{e}");
    assert!(e["oid"].as_str().unwrap().starts_with("h:"), "{e}");
    let (_, _, body) = get(h.gw.admin_addr, "/report", None).await;
    assert!(!body.contains("Adminagent") && body.contains("\"h:"), "{body}");
    // The report says how its users are shown, naming the key without showing it.
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["user_ids"]["mode"], "hash", "{body}");
    let key_id = r["user_ids"]["key_id"].as_str().unwrap();
    assert!(key_id.len() == 16 && !body.contains("0123456789abcdef0123"), "{key_id}");
}

/// The `requests_total` series a route can have, as the README's table states them: written here
/// from the rules, not from the gateway's own list, so the two check each other.
fn expected_series(require: &str, authz: bool) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for mode in if authz { vec!["proxy", "authz"] } else { vec!["proxy"] } {
        let upstream: &[&str] = if mode == "proxy" { &["upstream_error", "upstream_busy"] } else { &[] };
        let passes = |out: &mut Vec<_>, kind| {
            for d in std::iter::once(&"allowed").chain(upstream) {
                out.push((*d, kind, mode));
            }
        };
        out.extend([("bad_request", "none", mode), ("client_closed", "none", mode)]);
        match require {
            "public" => passes(&mut out, "none"),
            "mfa" | "app_user_mfa" => {
                out.extend(["missing_token", "invalid_token", "keys_unavailable"].map(|d| (d, "none", mode)));
                out.extend([("client_closed", "app_user", mode), ("mfa_required", "app_user", mode)]);
                passes(&mut out, "app_user");
                out.push(("client_closed", "app_only", mode));
                if require == "mfa" {
                    passes(&mut out, "app_only");
                } else {
                    out.push(("forbidden", "app_only", mode));
                }
            }
            other => panic!("no expectation written for require = {other:?}"),
        }
    }
    out
}

/// At start, with `config/partner-center.toml` (its issuer on loopback), `requests_total` has
/// every series its routes can produce, at 0, and no other; `[authz]` adds the authz series.
#[tokio::test]
async fn requests_total_holds_every_possible_series_at_zero_and_no_other() {
    let (_issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let up = echo_upstream().await;
    let profile = std::fs::read_to_string("config/partner-center.toml").unwrap();
    let text = profile
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("listen = \"127.0.0.1:9901\"", "listen = \"127.0.0.1:0\"")
        .replace("url = \"http://127.0.0.1:18080\"", &format!("url = \"http://{up}\""))
        .replace(
            "discovery = \"https://login.microsoftonline.com/common/.well-known/openid-configuration\"",
            &format!("discovery = \"{}\"", keys.discovery_url()),
        );
    let config = mfa_gateway::config::Config::parse(&text, "partner-center", None).unwrap();
    let mut requirements: Vec<(String, &str)> =
        config.routes.iter().map(|r| (r.name.clone(), r.require.as_str())).collect();
    requirements.push(("unmatched".into(), config.defaults.require.as_str()));
    for authz in [false, true] {
        let text = if authz {
            format!("{text}\n[authz]\nlisten = \"127.0.0.1:0\"\nfront = \"nginx\"\n")
        } else {
            text.clone()
        };
        let gw = start(&text).await;
        let mut want: Vec<String> = Vec::new();
        for (route, require) in &requirements {
            for (decision, kind, mode) in expected_series(require, authz) {
                want.push(format!(
                    "{{decision=\"{decision}\",mode=\"{mode}\",route=\"{route}\",token_kind=\"{kind}\"}}"
                ));
            }
        }
        want.sort();
        let got = samples(&gw, "mfa_gateway_requests_total").await;
        assert!(got.iter().all(|(_, v)| *v == 0.0), "nothing was asked yet: {got:?}");
        let mut got: Vec<String> = got.into_iter().map(|(labels, _)| labels).collect();
        got.sort();
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
        let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
        assert!(missing.is_empty() && extra.is_empty(), "authz {authz}: missing {missing:?}, not possible {extra:?}");
        eprintln!("partner-center.toml{}: {} requests_total series", if authz { " + [authz]" } else { "" }, got.len());
    }
}

/// `/report/users.csv` and `/report/recent.csv` carry the rows of the JSON report, and a user
/// name that a spreadsheet would run as a formula arrives as text.
#[tokio::test]
#[ignore = "needs python3"]
async fn report_csv_carries_the_json_rows_and_defuses_formulas() {
    logs();
    let h = auth_harness(ROUTES, "").await;
    for upn in ["alice@contoso.example", "=HYPERLINK(\"http://evil.example\",\"x\")", "doe, john@contoso.example"] {
        let mut c = entra_claims("nomfa", 600);
        c["upn"] = json!(upn);
        get(h.gw.addr, "/v1/offers", Some(&h.issuer.mint(&c))).await;
    }
    let json: Value = serde_json::from_str(&get(h.gw.admin_addr, "/report", None).await.2).unwrap();
    // What a spreadsheet shows: the cell, less the quote that keeps a formula text.
    let shown = |v: &str| v.strip_prefix('\'').map_or(v.to_string(), str::to_string);

    let (status, headers, body) = get(h.gw.admin_addr, "/report/users.csv", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(headers["content-disposition"].to_str().unwrap().contains("users-without-mfa.csv"));
    let rows = python_csv(&body);
    assert_eq!(rows[0], ["user", "last_seen_utc", "requests_without_mfa"]);
    let users = json["users_without_mfa"].as_array().unwrap();
    assert_eq!(rows.len() - 1, users.len());
    for (row, u) in rows[1..].iter().zip(users) {
        assert_eq!(shown(&row[0]), u["user"].as_str().unwrap());
        assert_eq!(row[2], u["requests_without_mfa"].to_string());
    }
    assert!(rows.iter().any(|r| r[0].starts_with("'=HYPERLINK")), "the formula is text: {rows:?}");
    assert!(!body.contains("\n=") && !body.contains(",="), "a cell starts with =: {body}");

    let rows = python_csv(&get(h.gw.admin_addr, "/report/recent.csv", None).await.2);
    assert_eq!(rows[0], ["time_utc", "route", "application", "user", "tenant"]);
    let recent = json["recent_without_mfa"].as_array().unwrap();
    assert_eq!(rows.len() - 1, recent.len());
    for (row, r) in rows[1..].iter().zip(recent) {
        assert_eq!((row[1].as_str(), row[2].as_str()), (r["route"].as_str().unwrap(), r["app"].as_str().unwrap()));
        assert_eq!(shown(&row[3]), r["user"].as_str().unwrap_or(""));
    }
}
