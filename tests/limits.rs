//! Limits on what a client can hold: connections to the admin port (its own cap, header and
//! idle timeouts, served by the API port's accept loop), and requests in flight upstream.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes the connection; how long that took, or `None` past `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_admin_connections_are_closed_after_its_timeouts() {
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n";
    let gw =
        start(&public_config(echo_upstream().await, "").replace("[admin]\nlisten = \"127.0.0.1:0\"\n", admin)).await;
    let mut idle = TcpStream::connect(gw.admin_addr).await.unwrap();
    let mut half = TcpStream::connect(gw.admin_addr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (idle, half) = tokio::join!(
        closed_within(&mut idle, Duration::from_secs(6)),
        closed_within(&mut half, Duration::from_secs(6))
    );
    assert!(idle.is_some(), "an idle admin connection stayed open");
    assert!(half.is_some_and(|t| t < Duration::from_secs(3)), "a half-sent request stayed open: {half:?}");
    // A scraper that asks in time is served, and its kept-alive connection too is closed once idle.
    let mut scraper = TcpStream::connect(gw.admin_addr).await.unwrap();
    scraper.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    scraper.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(closed_within(&mut scraper, Duration::from_secs(6)).await.is_some());
    let timeouts = metric(&gw, r#"mfa_gateway_connection_errors_total{kind="header_timeout"}"#).await;
    assert!(timeouts >= 1.0, "the half-sent request is counted: {timeouts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cap_holds_and_the_api_port_keeps_serving() {
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4\nheader_read_timeout = \"30s\"\nidle_timeout = \"30s\"\n";
    let gw =
        start(&public_config(echo_upstream().await, "").replace("[admin]\nlisten = \"127.0.0.1:0\"\n", admin)).await;
    // Four clients hold every admin slot with half-sent requests.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.admin_addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // A fifth waits in the backlog, unanswered, while the API port serves.
    let mut fifth = TcpStream::connect(gw.admin_addr).await.unwrap();
    fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(1), fifth.read_to_end(&mut answer)).await;
    assert!(waited.is_err(), "the fifth admin connection was served past the cap: {answer:?}");
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/anything", None).await.0, StatusCode::OK);
    }
    // One slot back: the fifth is served.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), fifth.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    drop(held);
    // The held connections leave the count; what is left is this scrape's own (and perhaps the
    // previous scrape's, still closing).
    let open = async || metric(&gw, "mfa_gateway_admin_connections_open").await;
    eventually("at most the scraper's two admin connections open", Duration::from_secs(5), async || {
        open().await <= 2.0
    })
    .await;
    assert!(open().await >= 1.0, "the scrape's own connection is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_503_at_once_and_slots_come_back_when_bodies_end() {
    let (up, bodies) = held_body_upstream().await;
    let gw = start(&public_config(up, "").replace("[upstream]\n", "[upstream]\nmax_in_flight = 2\n")).await;
    let c = client();
    let ask = || Request::get(format!("http://{}/stream", gw.addr)).body(full("")).unwrap();
    // Two responses whose bodies are still streaming hold both slots.
    let first = c.request(ask()).await.unwrap();
    let second = c.request(ask()).await.unwrap();
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(metric(&gw, "mfa_gateway_upstream_in_flight").await, 2.0);
    let started = Instant::now();
    let (status, headers, body) = send(&c, ask()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not queued");
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("in flight"), "{body}");
    let busy =
        r#"mfa_gateway_requests_total{decision="upstream_busy",mode="proxy",route="unmatched",token_kind="none"}"#;
    assert_eq!(metric(&gw, busy).await, 1.0);
    assert_eq!(bodies.lock().unwrap().len(), 2, "the refused request never reached the upstream");

    // The bodies end: the slots come back.
    bodies.lock().unwrap().clear();
    for resp in [first, second] {
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"first part;");
    }
    let in_flight = async || metric(&gw, "mfa_gateway_upstream_in_flight").await;
    eventually("the slots back once the bodies ended", Duration::from_secs(2), async || in_flight().await == 0.0).await;
    // A client that leaves mid-body gives its slot back too.
    let third = c.request(ask()).await.unwrap();
    assert_eq!(in_flight().await, 1.0);
    drop(third);
    eventually("a dropped body gives its slot back", Duration::from_secs(2), async || in_flight().await == 0.0).await;
}

/// Past `[upstream] max_connections` busy connections a request waits, counted in
/// `upstream_waiting` and unseen by the upstream, until a response body ends and frees one; a
/// request still waiting at `upstream.timeout` gets 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_request_waits_for_a_free_connection_until_upstream_timeout() {
    let (up, bodies) = held_body_upstream().await;
    let gw =
        start(&public_config(up, "").replace("[upstream]\n", "[upstream]\nmax_connections = 2\ntimeout = \"1s\"\n"))
            .await;
    let c = client();
    let ask = || Request::get(format!("http://{}/stream", gw.addr)).body(full("")).unwrap();
    let first = c.request(ask()).await.unwrap();
    let second = c.request(ask()).await.unwrap();
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let third = tokio::spawn({
        let (c, req) = (c.clone(), ask());
        async move { c.request(req).await.unwrap() }
    });
    let waiting = async || metric(&gw, "mfa_gateway_upstream_waiting").await;
    eventually("the third request waits for a connection", Duration::from_secs(2), async || waiting().await == 1.0)
        .await;
    assert_eq!(bodies.lock().unwrap().len(), 2, "the upstream has not seen the third request");

    // The first body ends: its connection goes to the third request.
    bodies.lock().unwrap().remove(0);
    assert_eq!(&first.into_body().collect().await.unwrap().to_bytes()[..], b"first part;");
    let third =
        tokio::time::timeout(Duration::from_secs(2), third).await.expect("served once a connection was free").unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(waiting().await, 0.0);
    assert_eq!(bodies.lock().unwrap().len(), 2);

    // Both connections busy for longer than upstream.timeout: 504, after waiting that long.
    let started = Instant::now();
    let (status, _, body) = send(&c, ask()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(900), "waited for a connection: {:?}", started.elapsed());
    assert_eq!(bodies.lock().unwrap().len(), 2, "the timed-out request never reached the upstream");
    assert_eq!(waiting().await, 0.0);
    drop((second, third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_holds_an_upstream_slot() {
    let up = tunnel_upstream("websocket").await;
    let gw = start(&public_config(up, "").replace("[upstream]\n", "[upstream]\nmax_in_flight = 1\n")).await;
    let mut tunnel = open_tunnel(gw.addr, "websocket").await;
    assert_eq!(get(gw.addr, "/plain", None).await.0, StatusCode::SERVICE_UNAVAILABLE, "the tunnel holds the slot");
    echo(&mut tunnel, b"still open").await;
    drop(tunnel);
    let served = async || get(gw.addr, "/plain", None).await.0 == StatusCode::OK;
    eventually("the slot back when the tunnel closed", Duration::from_secs(2), served).await;
}
