//! Every request accounted for, over the real binary: clients that leave mid-request, upgraded
//! tunnels held to the connection limits, upstream failures told without their detail, and a
//! status report only its readers can open.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use mfa_gateway::dev::entra_claims;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until `metric` on the binary reads `want`; fails the test after `within`.
async fn settles(gw: &Binary, metric: &str, want: f64, within: Duration) {
    eventually(format_args!("{metric} at {want}"), within, async || gw.metric(metric).await == want).await;
}

fn audit_events(gw: &Binary) -> Vec<Value> {
    gw.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "mfa_gateway::audit")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_request_are_counted_and_audited() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let slow = upstream(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        http::Response::new(full("late"))
    })
    .await;
    let text = config_text(
        slow,
        &format!(
            "[log]\nformat = \"json\"\n[audit]\nenabled = true\n{}\n\
             [[route]]\nname = \"offers\"\npath = \"/v1/offers\"\nrequire = \"app_user_mfa\"\n",
            issuer_table(TEMPLATE_ISSUER, &keys)
        ),
    );
    let gw = Binary::start(&text, None);
    gw.ready().await;
    let token = issuer.mint(&entra_claims("mfa", 600));

    // Three HTTP/1.1 clients give up after 300 ms and close their connections...
    let mut h1 = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!("GET /v1/offers HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        h1.push(s);
    }
    // ...and one HTTP/2 client resets its stream.
    let h2 = h2_client();
    let req = Request::get(format!("http://{}/v1/offers", gw.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(full(""))
        .unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(300), h2.request(req)).await;
    assert!(gave_up.is_err(), "the upstream answers in 3 s, not 300 ms");
    // The HTTP/2 client's reset reaches the gateway a moment after its future is dropped.
    // The three HTTP/1.1 requests are in flight.
    settles(&gw, "mfa_gateway_requests_in_flight", 3.0, Duration::from_secs(2)).await;
    drop(h1);

    // All four are over long before the upstream would have answered.
    settles(&gw, "mfa_gateway_requests_in_flight", 0.0, Duration::from_secs(2)).await;
    let closed =
        r#"mfa_gateway_requests_total{decision="client_closed",mode="proxy",route="offers",token_kind="app_user"}"#;
    assert_eq!(gw.metric(closed).await, 4.0);
    let events: Vec<Value> = audit_events(&gw).into_iter().filter(|e| e["decision"] == "client_closed").collect();
    assert_eq!(events.len(), 4, "{events:?}");
    for e in &events {
        assert_eq!(e["status"], 499);
        assert_eq!(e["route"], "offers");
        assert_eq!(e["token_kind"], "app_user", "what was known: the token was verified");
        assert_eq!(e["reason"], "client_closed");
    }
}

/// Reads until the gateway closes the tunnel; how long that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(limit, s.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "still open after {limit:?}: {r:?}");
    t.elapsed()
}

fn tunnel_config(up: SocketAddr, server: &str) -> String {
    public_config(up, "").replace("[server]\n", &format!("[server]\n{server}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_counts_against_max_connections() {
    let up = tunnel_upstream("websocket").await;
    let gw = Binary::start(&tunnel_config(up, "max_connections = 1\n"), None);
    let mut tunnel = open_tunnel(gw.addr, "websocket").await;
    assert_eq!(gw.metric("mfa_gateway_tunnels_open").await, 1.0);
    assert_eq!(gw.metric("mfa_gateway_connections_open").await, 1.0);
    // The one slot is the tunnel's: a second client waits in the backlog, unserved.
    let waiting = tokio::spawn(raw(
        gw.addr,
        b"GET /plain HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a second connection was served while the tunnel held the only slot");
    echo(&mut tunnel, b"still mine").await;
    drop(tunnel);
    let answer = waiting.await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "served once the tunnel closed: {}", String::from_utf8_lossy(&answer));
    settles(&gw, "mfa_gateway_tunnels_open", 0.0, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_tunnel_and_spares_a_busy_one() {
    let up = tunnel_upstream("websocket").await;
    let gw = Binary::start(&tunnel_config(up, "idle_timeout = \"1s\"\n"), None);
    let mut busy = open_tunnel(gw.addr, "websocket").await;
    let mut silent = open_tunnel(gw.addr, "websocket").await;
    let talk = tokio::spawn(async move {
        for _ in 0..10 {
            echo(&mut busy, b"x").await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        busy
    });
    let took = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the idle timeout");
    let mut busy = talk.await.unwrap();
    echo(&mut busy, b"alive after 2.5 s of traffic").await;
    assert_eq!(gw.metric("mfa_gateway_tunnels_open").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_tunnels_at_the_end_of_the_grace_period() {
    let up = tunnel_upstream("websocket").await;
    let server = "shutdown_delay = \"0s\"\nidle_timeout = \"60s\"\n";
    let mut gw =
        Binary::start(&tunnel_config(up, server).replace("shutdown_grace = \"5s\"", "shutdown_grace = \"2s\""), None);
    let mut tunnel = open_tunnel(gw.addr, "websocket").await;
    let t = Instant::now();
    gw.signal("TERM");
    let grace = |l: &String| l.contains("accepting stopped");
    eventually(Lines("the grace period begun", &gw), Duration::from_secs(2), async || gw.lines().iter().any(grace))
        .await;
    echo(&mut tunnel, b"during the grace period").await;
    closed_within(&mut tunnel, Duration::from_secs(4)).await;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1800), "closed {took:?} after SIGTERM, before the 2 s grace");
    assert!(took < Duration::from_secs(4), "closed {took:?} after SIGTERM");
    let status = tokio::task::spawn_blocking(move || gw.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_upstream_is_502_without_the_name_or_the_resolver_text() {
    // `.invalid` never resolves (RFC 6761), with or without a network.
    let up = closed_port().await;
    let text = public_config(up, "[log]\nformat = \"json\"\n")
        .replace(&format!("url = \"http://{up}\""), "url = \"http://upstream.mfa-gateway-test.invalid:8080\"");
    let gw = Binary::start(&text, None);
    let (status, headers, body) = get(gw.addr, "/dns", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(body, format!("the upstream could not be reached (request id {id})\n"));
    for secret in ["invalid", "mfa-gateway-test", "lookup", "name", "dns", "8080"] {
        assert!(!body.to_lowercase().contains(secret), "{secret:?} in {body:?}");
    }
    assert_eq!(gw.metric("mfa_gateway_upstream_errors_total{kind=\"dns\"}").await, 1.0);
    // The operator's log line has what the client was not told.
    let line = gw.lines().into_iter().find(|l| l.contains("upstream failed")).expect("a log line");
    assert!(line.contains(id) && line.contains("dns error"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_needs_its_secret_off_loopback() {
    let up = echo_upstream().await;
    let open = public_config(up, "").replace("[admin]\nlisten = \"127.0.0.1:0\"", "[admin]\nlisten = \"0.0.0.0:0\"");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
        .args(["check", "--config"])
        .arg({
            let f = temp_dir("report-check").join("gw.toml");
            std::fs::write(&f, &open).unwrap();
            f
        })
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success());
    assert!(said.contains("warning: admin.listen") && said.contains("token_file"), "{said}");

    let gw = Binary::start(&open, None);
    let admin = SocketAddr::from(([127, 0, 0, 1], gw.admin.port()));
    let (status, _, body) = get(admin, "/report", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("[report].token_file"), "{body}");
    for open_path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(admin, open_path, None).await.0, StatusCode::OK, "{open_path}");
    }
    drop(gw);

    let dir = temp_dir("report-token");
    std::fs::write(dir.join("report.secret"), "s3cret-for-the-report-readers\n").unwrap();
    let guarded = open.clone() + "[report]\ntoken_file = \"report.secret\"\n";
    std::fs::write(dir.join("gw.toml"), guarded).unwrap();
    let gw = Binary::start_on(&dir.join("gw.toml"), None);
    let admin = SocketAddr::from(([127, 0, 0, 1], gw.admin.port()));
    let report = |bearer: Option<&'static str>| async move {
        let mut req = Request::get(format!("http://{admin}/report"));
        if let Some(b) = bearer {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        send(&client(), req.body(full("")).unwrap()).await
    };
    let (status, headers, _) = report(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(report(Some("s3cret-for-the-report-reader")).await.0, StatusCode::UNAUTHORIZED, "a prefix is not it");
    let (status, _, body) = report(Some("s3cret-for-the-report-readers")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["totals"].is_object());
    assert_eq!(get(admin, "/metrics", None).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_ends_with_its_body_and_a_client_that_leaves_mid_body_is_client_closed() {
    let (up, bodies) = held_body_upstream().await;
    let gw = Binary::start(&public_config(up, "[log]\nformat = \"json\"\n[audit]\nenabled = true\n"), None);
    let in_flight = "mfa_gateway_requests_in_flight";
    let closed =
        r#"mfa_gateway_requests_total{decision="client_closed",mode="proxy",route="unmatched",token_kind="none"}"#;
    let allowed = r#"mfa_gateway_requests_total{decision="allowed",mode="proxy",route="unmatched",token_kind="none"}"#;
    let c = client();
    let ask = || Request::get(format!("http://{}/stream", gw.addr)).body(full("")).unwrap();

    // A slow body: in flight until it ends, and the duration covers it.
    let resp = c.request(ask()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.metric(in_flight).await, 1.0, "headers sent, body still streaming: still in flight");
    assert_eq!(gw.metric(allowed).await, 0.0, "not counted before its body ends");
    bodies.lock().unwrap().clear();
    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    settles(&gw, in_flight, 0.0, Duration::from_secs(5)).await;
    settles(&gw, allowed, 1.0, Duration::from_secs(5)).await;
    let event = audit_events(&gw).pop().expect("an audit event");
    assert_eq!((event["status"].as_u64(), event["decision"].as_str()), (Some(200), Some("allowed")));
    assert!(event["duration_us"].as_u64().unwrap() >= 600_000, "the duration covers the body: {event}");

    // A client that leaves mid-body: client_closed, and in flight back to 0.
    let resp = c.request(ask()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    drop(c);
    settles(&gw, closed, 1.0, Duration::from_secs(5)).await;
    settles(&gw, in_flight, 0.0, Duration::from_secs(5)).await;
    assert_eq!(gw.metric(allowed).await, 1.0, "not counted allowed as well");
    let event = audit_events(&gw).pop().expect("an audit event");
    assert_eq!((event["status"].as_u64(), event["decision"].as_str()), (Some(499), Some("client_closed")));
}
