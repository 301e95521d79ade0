//! The fleet report against Debian's real `prometheus`, scraping two real gateways: the status
//! report's worked example split across them, with one gateway restarted between two batches.

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
    let dir = temp_dir("prometheus");
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
    assert!(page.contains("id=\"ratio\">40.0 %</div>") && page.contains(&format!("<td>{APP}</td>")), "{page}");

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
