//! The fleet report against Debian's real `prometheus`, scraping real gateways: the status
//! report's worked example split across two, with one restarted between two batches; the users
//! without MFA merged from five, of which two cannot be read; the ratio per day from history
//! written by `promtool`; and the page as headless Chromium renders it.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use http::StatusCode;
use mfa_gateway::dev::entra_claims;
use serde_json::Value;
use support::*;

const APP: &str = "00001111-aaaa-2222-bbbb-3333cccc4444";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn prometheus(targets: &[u16]) -> Prometheus {
    prometheus_on(targets, temp_dir("prometheus")).await
}

/// Prometheus on `dir`, whose `data` may hold history already (`promtool` blocks).
async fn prometheus_on(targets: &[u16], dir: PathBuf) -> Prometheus {
    let targets: Vec<String> = targets.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mfa-gateway\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("the prometheus binary (Debian package prometheus)");
    let p = Prometheus { child, url: format!("http://127.0.0.1:{port}") };
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(format_args!("prometheus ready; see {}", dir.display()), Duration::from_secs(30), async || {
        tokio::net::TcpStream::connect(addr).await.is_ok() && get(addr, "/-/ready", None).await.0 == StatusCode::OK
    })
    .await;
    p
}

/// Waits until Prometheus has scraped every target (of `targets`) at least twice since now.
async fn scraped(p: &Prometheus, targets: usize) {
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let addr = p.url.trim_start_matches("http://").parse().unwrap();
    eventually("both targets up", Duration::from_secs(20), async || {
        let (_, _, body) = get(addr, "/api/v1/query?query=sum(up)", None).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"][0]["value"][1] == targets.to_string().as_str()
    })
    .await;
}

fn report(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mfa-gateway")).arg("report").args(args).output().unwrap()
}

#[tokio::test]
#[ignore = "needs the prometheus binary"]
async fn the_worked_example_across_two_gateways_survives_a_restart() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let up = echo_upstream().await;
    let routes = "[[route]]\nname = \"offers\"\npath = \"/v1/offers\"\nrequire = \"mfa\"\n";
    // The app's series exist at 0 from start-up, so `increase` sees every request.
    let text = |admin: u16| {
        config_text(up, &format!("[metrics]\napps = [\"{APP}\"]\n{}\n{routes}", issuer_table(TEMPLATE_ISSUER, &keys)))
            .replace("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""))
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let a = Binary::start(&text(admin_a), None);
    let b = Binary::start(&text(admin_b), None);
    a.ready().await;
    b.ready().await;
    let prom = prometheus(&[admin_a, admin_b]).await;
    scraped(&prom, 2).await;

    let [nomfa, app, mfa] = ["nomfa", "app", "mfa"].map(|k| issuer.mint(&entra_claims(k, 600)));
    // Gateway A: 2 App+User without MFA, 5 app-only. Gateway B: 1 without MFA, then a restart,
    // then 2 with MFA.
    for (gw, token, n) in [(&a, &nomfa, 2), (&a, &app, 5), (&b, &nomfa, 1)] {
        for _ in 0..n {
            get(gw.addr, "/v1/offers", Some(token)).await;
        }
    }
    scraped(&prom, 2).await;
    drop(b);
    let b = Binary::start(&text(admin_b), None);
    b.ready().await;
    scraped(&prom, 2).await;
    for _ in 0..2 {
        assert_eq!(get(b.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    }
    scraped(&prom, 2).await;
    // `increase` extrapolates a series' increase to the window's end, by up to a scrape interval
    // over the span it has samples for; after 15 s more of samples that is under 10 %, which
    // rounding to whole requests absorbs. (Over days of history it is negligible.)
    tokio::time::sleep(Duration::from_secs(15)).await;

    let out = report(&["--prometheus", &prom.url, "--window", "10m", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["app_user_mfa_ratio"], 0.4, "{r}");
    assert_eq!(r["totals"], serde_json::json!({"app_user_with_mfa": 2, "app_user_without_mfa": 3, "app_only": 5}));
    assert_eq!(r["applications"][0]["app"], APP);
    assert_eq!(r["applications"][0]["requests"], 10);
    assert_eq!(r["window"], "10m");

    let gate = report(&["--prometheus", &prom.url, "--window", "10m", "--fail-below", "0.95"]);
    assert_eq!(gate.status.code(), Some(1), "{}", String::from_utf8_lossy(&gate.stderr));
    let table = String::from_utf8(gate.stdout).unwrap();
    assert!(table.contains("App+User MFA ratio: 40.0 %") && table.contains(APP), "{table}");
    assert_eq!(report(&["--prometheus", &prom.url, "--window", "10m", "--fail-below", "0.4"]).status.code(), Some(0));

    let page: PathBuf = temp_dir("fleet-html").join("report.html");
    let html =
        report(&["--prometheus", &prom.url, "--window", "10m", "--format", "html", "--out", page.to_str().unwrap()]);
    assert!(html.status.success());
    let page = std::fs::read_to_string(page).unwrap();
    assert!(
        page.contains("id=\"ratio\">40.0 %</div>") && page.contains(&format!("<td class=\"id\">{APP}</td>")),
        "{page}"
    );

    // A window with nothing in it is said to be empty, not 0 %.
    let empty = report(&["--prometheus", &prom.url, "--window", "1ms"]);
    let said = String::from_utf8(empty.stdout).unwrap();
    assert!(said.contains("not a 0 % ratio"), "{said}");
    drop(a);
}

/// Every query of `deploy/grafana/mfa-gateway.json` against a real Prometheus scraping a gateway
/// after some traffic: each answers without error, and every metric it names is in the scrape (a
/// misspelled name would answer nothing, without an error).
#[tokio::test]
#[ignore = "needs the prometheus binary"]
async fn every_dashboard_query_answers_and_names_only_scraped_metrics() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let up = echo_upstream().await;
    let admin = free_port();
    let routes = "[[route]]\nname = \"offers\"\npath = \"/v1/offers\"\nrequire = \"mfa\"\n";
    let text = config_text(up, &format!("{}\n{routes}", issuer_table(TEMPLATE_ISSUER, &keys)))
        .replace("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""));
    let gw = Binary::start(&text, None);
    gw.ready().await;
    let prom = prometheus(&[admin]).await;
    for token in
        ["mfa", "nomfa", "app"].map(|k| issuer.mint(&entra_claims(k, 600))).iter().chain([&"x.y.z".to_string()])
    {
        get(gw.addr, "/v1/offers", Some(token)).await;
    }
    get(gw.addr, "/v1/offers", None).await;
    scraped(&prom, 1).await;
    let scrape = get(gw.admin, "/metrics", None).await.2;
    let in_scrape =
        |name: &str| scrape.lines().any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(['{', ' '])));

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/mfa-gateway.json").unwrap()).unwrap();
    let prom_addr = prom.url.trim_start_matches("http://").parse().unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // Grafana's variables, as Grafana would fill them in.
            let query = expr.replace("$__rate_interval", "1m").replace("$job", "mfa-gateway");
            let (_, _, body) = get(prom_addr, &mfa_gateway::fleet::query_path(&query), None).await;
            let answer: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["status"], "success", "{}: {query}\n{body}", panel["title"]);
            let names = query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            for name in names.filter(|n| n.starts_with("mfa_gateway_") || n.starts_with("process_")) {
                assert!(in_scrape(name), "{}: {name} is not in the gateway's scrape", panel["title"]);
            }
            queries += 1;
        }
    }
    assert!(queries >= 15, "{queries} queries");
}

/// The replicas' report secret in the tests below.
const SECRET: &str = "the-fleet-report-secret-0123";

const ROUTES: &str = "[[route]]\nname = \"offers\"\npath = \"/v1/offers\"\nrequire = \"mfa\"\n";

/// A gateway with a fixed admin port, a report secret file and a host name of its own; `audit`
/// is its `[audit]` table, if any.
fn fleet_gateway(
    up: std::net::SocketAddr,
    keys: &mfa_gateway::dev::KeyServer,
    admin: u16,
    secret: &std::path::Path,
    audit: &str,
    host: &str,
) -> Binary {
    let text = config_text(
        up,
        &format!(
            "[metrics]\napps = [\"{APP}\"]\n{}\n{ROUTES}[report]\ntoken_file = \"{}\"\n{audit}",
            issuer_table(TEMPLATE_ISSUER, keys),
            secret.display()
        ),
    )
    .replace("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""));
    Binary::start(&text, Some(&format!("export HOSTNAME={host}")))
}

/// A token without MFA for `upn`.
fn without_mfa(issuer: &mfa_gateway::dev::DevIssuer, upn: &str) -> String {
    let mut claims = entra_claims("nomfa", 600);
    claims["upn"] = upn.into();
    issuer.mint(&claims)
}

/// A replica's `/report` JSON, read with the report secret.
async fn report_json(admin: u16, secret: &str) -> Value {
    let req = http::Request::get(format!("http://127.0.0.1:{admin}/report"))
        .header("authorization", format!("Bearer {secret}"))
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Five replicas behind one Prometheus: gw-a and gw-b readable and alike, gw-c with another
/// report secret, gw-d stopped after Prometheus scraped it, gw-e showing users hashed. The merged
/// tables are exactly the union of what gw-a's and gw-b's `/report` show; gw-c and gw-d are named
/// with their reason; gw-e's users are kept apart; and the exit status says the answer is partial.
#[tokio::test]
#[ignore = "needs the prometheus binary and python3"]
async fn the_fleet_report_merges_every_readable_replicas_users_and_names_the_others() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let up = echo_upstream().await;
    let dir = temp_dir("fleet-users");
    let (secret, other) = (dir.join("report.secret"), dir.join("other.secret"));
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::write(&other, "another-replicas-secret-4567\n").unwrap();
    let hashed = "[audit]\nenabled = false\nuser_ids = \"hash\"\nhash_key = \"a-hash-key-of-twenty-chars\"\n";
    let ports = [(); 5].map(|_| free_port());
    let [pa, pb, pc, pd, pe] = ports;
    let a = fleet_gateway(up, &keys, pa, &secret, "", "gw-a");
    let b = fleet_gateway(up, &keys, pb, &secret, "", "gw-b");
    let c = fleet_gateway(up, &keys, pc, &other, "", "gw-c");
    let d = fleet_gateway(up, &keys, pd, &secret, "", "gw-d");
    let e = fleet_gateway(up, &keys, pe, &secret, hashed, "gw-e");
    let mfa = issuer.mint(&entra_claims("mfa", 600));
    let traffic = [
        (&a, "alice@contoso.example", 2),
        (&a, "bob@contoso.example", 1),
        (&b, "alice@contoso.example", 1),
        (&b, "=cmd|' /C calc'!A0", 1),
        (&c, "dave@contoso.example", 1),
        (&d, "erin@contoso.example", 1),
        (&e, "frank@contoso.example", 1),
    ];
    for (gw, upn, n) in traffic {
        gw.ready().await;
        for _ in 0..n {
            assert_eq!(get(gw.addr, "/v1/offers", Some(&without_mfa(&issuer, upn))).await.0, StatusCode::UNAUTHORIZED);
            tokio::time::sleep(Duration::from_millis(1100)).await; // distinct seconds: a strict order
        }
        assert_eq!(get(gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    }
    let prom = prometheus(&ports).await;
    scraped(&prom, 5).await;
    let (ra, rb) = (report_json(pa, SECRET).await, report_json(pb, SECRET).await);
    drop(d);

    let file = secret.to_str().unwrap();
    let out = report(&["--prometheus", &prom.url, "--window", "10m", "--report-token-file", file, "--format", "json"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(3), "a partial answer: {said}");
    assert!(said.contains("3 of 5 replicas answered"), "{said}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(SECRET) && !said.contains(SECRET),
        "the secret is never shown"
    );

    // Users: one row per user over gw-a and gw-b, requests summed, last seen the latest.
    let mut want: std::collections::BTreeMap<String, (u64, i64, Vec<&str>)> = Default::default();
    for (name, rep) in [("gw-a", &ra), ("gw-b", &rb)] {
        for u in rep["users_without_mfa"].as_array().unwrap() {
            let row = want.entry(u["user"].as_str().unwrap().into()).or_insert((0, 0, vec![]));
            row.0 += u["requests_without_mfa"].as_u64().unwrap();
            row.1 = row.1.max(u["last_seen"].as_i64().unwrap());
            row.2.push(name);
        }
    }
    let got: std::collections::BTreeMap<String, (u64, i64, Vec<&str>)> = r["users_without_mfa"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let replicas = u["replicas"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
            (
                u["user"].as_str().unwrap().into(),
                (u["requests_without_mfa"].as_u64().unwrap(), u["last_seen"].as_i64().unwrap(), replicas),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(got["alice@contoso.example"], (3, got["alice@contoso.example"].1, vec!["gw-a", "gw-b"]));

    // Recent requests: the union of both, each with its replica, newest first.
    let row = |v: &Value, replica: &str| {
        (
            v["time"].as_i64().unwrap(),
            v["route"].to_string(),
            v["app"].to_string(),
            v["user"].to_string(),
            replica.to_string(),
        )
    };
    let mut want: Vec<_> = ra["recent_without_mfa"].as_array().unwrap().iter().map(|v| row(v, "gw-a")).collect();
    want.extend(rb["recent_without_mfa"].as_array().unwrap().iter().map(|v| row(v, "gw-b")));
    want.sort_by_key(|x| std::cmp::Reverse(x.0));
    let got: Vec<_> =
        r["recent_without_mfa"].as_array().unwrap().iter().map(|v| row(v, v["replica"].as_str().unwrap())).collect();
    assert_eq!(got, want, "newest first");
    assert_eq!(got.len(), 5);

    // The others, by name and reason.
    let replicas = r["replicas"].as_array().unwrap();
    let state = |name: &str| replicas.iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("{name} in {r}"));
    assert_eq!((state("gw-a")["state"].as_str(), state("gw-b")["state"].as_str()), (Some("merged"), Some("merged")));
    let gw_c = state(&format!("127.0.0.1:{pc}"));
    assert_eq!(gw_c["state"], "unread");
    assert!(gw_c["reason"].as_str().unwrap().contains("answered 401"), "{gw_c}");
    let gw_d = state(&format!("127.0.0.1:{pd}"));
    assert_eq!(gw_d["state"], "unread");
    assert!(gw_d["reason"].as_str().unwrap().contains(&format!("GET http://127.0.0.1:{pd}/report")), "{gw_d}");
    assert_eq!(state("gw-e")["state"], "apart");
    let apart = &r["apart"][0];
    assert_eq!(apart["replicas"], serde_json::json!(["gw-e"]));
    assert!(apart["why"].as_str().unwrap().contains("hash (key "), "{apart}");
    let frank = apart["users_without_mfa"][0]["user"].as_str().unwrap();
    assert!(
        !frank.contains("frank") && frank == report_json(pe, SECRET).await["users_without_mfa"][0]["user"],
        "{frank}"
    );
    assert_eq!(r["user_ids"]["mode"], "plain");

    // The same tables as CSV, read by Python's csv module.
    let csv = |format: &str| {
        let out =
            report(&["--prometheus", &prom.url, "--window", "10m", "--report-token-file", file, "--format", format]);
        assert_eq!(out.status.code(), Some(3));
        python_csv(&String::from_utf8(out.stdout).unwrap())
    };
    let users = csv("users-csv");
    assert_eq!(users[0], ["user", "last_seen_utc", "requests_without_mfa", "replicas"]);
    let json_users = r["users_without_mfa"].as_array().unwrap();
    assert_eq!(users.len() - 1, json_users.len());
    for (row, u) in users[1..].iter().zip(json_users) {
        assert_eq!(row[0].trim_start_matches('\''), u["user"].as_str().unwrap());
        assert_eq!(row[2], u["requests_without_mfa"].to_string());
        let replicas: Vec<&str> = u["replicas"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert_eq!(row[3], replicas.join(";"));
    }
    assert!(users.iter().any(|row| row[0].starts_with("'=cmd")), "the formula is text: {users:?}");
    let recent = csv("recent-csv");
    assert_eq!(recent[0], ["time_utc", "route", "application", "user", "tenant", "replica"]);
    let json_recent = r["recent_without_mfa"].as_array().unwrap();
    assert_eq!(recent.len() - 1, json_recent.len());
    for (row, v) in recent[1..].iter().zip(json_recent) {
        assert_eq!(
            (row[3].trim_start_matches('\''), row[5].as_str()),
            (v["user"].as_str().unwrap(), v["replica"].as_str().unwrap())
        );
    }

    let table = report(&["--prometheus", &prom.url, "--window", "10m", "--report-token-file", file]);
    let text = String::from_utf8(table.stdout).unwrap();
    for line in [
        "Replicas: 3 of 5 answered",
        "not read: 127.0.0.1:",
        "answered 401",
        "Kept apart (gw-e)",
        "alice@contoso.example",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    // --require-https refuses a Prometheus asked over http before sending anything.
    let https_only = report(&["--prometheus", &prom.url, "--report-token-file", file, "--require-https"]);
    assert_eq!(https_only.status.code(), Some(64));
    drop((a, b, c, e));
}

/// Four days of history for one replica (`promtool tsdb create-blocks-from openmetrics`), in a
/// folder Prometheus can start on: per UTC day, App+User requests with and without MFA of
/// 1 and 1, none, 3 and 0, 19 and 1; the last of those days is yesterday.
fn history() -> PathBuf {
    let dir = temp_dir("prometheus-history");
    const DAY: i64 = 86_400;
    let today = mfa_gateway::auth::unix_now().div_euclid(DAY);
    let first = today - 4;
    let mut text = String::from("# TYPE mfa_gateway_app_user_requests counter\n");
    for (mfa, jumps) in [("true", [1, 0, 3, 19]), ("false", [1, 0, 0, 1])] {
        let mut value = 0;
        // A sample every 10 minutes from the day before the first to today's start; each day's
        // requests arrive at noon.
        for t in ((first - 1) * DAY..=today * DAY).step_by(600) {
            let day = t.div_euclid(DAY) - first;
            if t.rem_euclid(DAY) == DAY / 2 && (0..4).contains(&day) {
                value += jumps[day as usize];
            }
            text.push_str(&format!(
                "mfa_gateway_app_user_requests_total{{app=\"{APP}\",instance=\"history:9901\",job=\"mfa-gateway\",mfa=\"{mfa}\"}} {value} {t}\n"
            ));
        }
    }
    text.push_str("# EOF\n");
    std::fs::write(dir.join("history.om"), text).unwrap();
    let made = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h"])
        .arg(dir.join("history.om"))
        .arg(dir.join("data"))
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    dir
}

/// The ratio per day from Prometheus's history: each of the four days' ratio (or none) in the
/// JSON, the table and the page.
#[tokio::test]
#[ignore = "needs the prometheus binary"]
async fn the_fleet_trend_is_each_days_ratio_from_prometheus_history() {
    let prom = prometheus_on(&[], history()).await;
    let out = report(&["--prometheus", &prom.url, "--window", "7d", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let days: Vec<Value> = r["days"].as_array().unwrap().iter().map(|d| d["app_user_mfa_ratio"].clone()).collect();
    let none = Value::Null;
    assert_eq!(days, [none.clone(), none.clone(), 0.5.into(), none.clone(), 1.0.into(), 0.95.into(), none], "{r}");
    let today = mfa_gateway::auth::unix_now().div_euclid(86_400) * 86_400;
    assert_eq!(r["days"][6]["start"], today);
    assert_eq!(r["totals"]["app_user_with_mfa"], 23, "the window's counts agree with the days': {r}");
    let text = String::from_utf8(report(&["--prometheus", &prom.url, "--window", "7d"]).stdout).unwrap();
    assert!(text.contains("50.0 %, ") && text.contains("95.0 %, "), "{text}");
    let page = temp_dir("fleet-trend").join("report.html");
    let html = report(&["--prometheus", &prom.url, "--format", "html", "--out", page.to_str().unwrap()]);
    assert!(html.status.success());
    let page = std::fs::read_to_string(page).unwrap();
    assert!(page.contains("<svg id=\"trend\""), "{page}");
    for pct in ["50.0 %", "100.0 %", "95.0 %", "none"] {
        assert!(page.contains(&format!(">{pct}</text>")), "{pct} not drawn");
    }
}

/// `chromium --headless` with a profile of its own; `--no-sandbox` because CI runs as root.
fn chromium(args: &[&str]) -> Output {
    let profile = temp_dir("chromium");
    Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (Debian package chromium)")
}

/// The fleet page, with four days of history and one live replica's users, as Chromium renders
/// it: the trend chart with each day's ratio, the headline ratio and the users are in the DOM it
/// built; and its screenshot is the README's picture (`MFA_GATEWAY_SCREENSHOT=<path>` keeps it).
#[tokio::test]
#[ignore = "needs the prometheus binary and chromium"]
async fn the_fleet_page_renders_in_chromium_with_its_trend_numbers_and_users() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let up = echo_upstream().await;
    let dir = temp_dir("fleet-page");
    let secret = dir.join("report.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let admin = free_port();
    let gw = fleet_gateway(up, &keys, admin, &secret, "", "partner-api-7d9f5c8b6-x2k4q");
    gw.ready().await;
    // Scraped before the requests, so that `increase` counts them (a series' first sample is
    // where counting starts).
    let prom = prometheus_on(&[admin], history()).await;
    scraped(&prom, 1).await;
    let users = ["adminagent.csp@contoso-partner.onmicrosoft.com", "7f4c3a1e-92d8-4b6f-a0c5-3e1d9b8f2a64@example.com"];
    for upn in users {
        get(gw.addr, "/v1/offers", Some(&without_mfa(&issuer, upn))).await;
    }
    let mfa = issuer.mint(&entra_claims("mfa", 600));
    for _ in 0..6 {
        get(gw.addr, "/v1/offers", Some(&mfa)).await;
    }
    // `increase` extrapolates by half a scrape interval past the last sample: over 12 s of
    // samples that is under 5 %, which rounding to whole requests absorbs.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let page = dir.join("report.html");
    let file = secret.to_str().unwrap();
    let out = report(&[
        "--prometheus",
        &prom.url,
        "--report-token-file",
        file,
        "--format",
        "html",
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = format!("file://{}", page.display());

    let dom = chromium(&["--dump-dom", &url]);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8(dom.stdout).unwrap();
    let chart = &dom[dom.find("<svg id=\"trend\"").expect("the trend chart in the DOM")..];
    let chart = &chart[..chart.find("</svg>").unwrap()];
    assert_eq!(chart.matches("<rect").count(), 4, "a bar per day with requests: {chart}");
    // Today: 6 of 8 with MFA, from the live replica.
    for pct in ["50.0 %", "100.0 %", "95.0 %", "none", "75.0 %"] {
        assert!(chart.contains(&format!(">{pct}</text>")), "{pct} not in the rendered chart: {chart}");
    }
    assert!(dom.contains("id=\"ratio\">"), "the headline ratio");
    assert!(dom.contains("1 of 1 answered") && dom.contains("Fleet:"), "{dom}");
    for user in users {
        assert!(dom.contains(&format!("<td class=\"id\">{user}</td>")), "{user} not in the rendered table");
    }

    let png = dir.join("report.png");
    let shot = chromium(&[&format!("--screenshot={}", png.display()), "--window-size=1100,1300", &url]);
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000, "a real picture: {} bytes", bytes.len());
    if let Ok(keep) = std::env::var("MFA_GATEWAY_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
}
