//! Forwarding: what reaches the upstream and what comes back, over real sockets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use support::*;

#[tokio::test]
async fn method_path_query_headers_and_body_round_trip() {
    let up = echo_upstream().await;
    let gw = start(&public_config(up, "")).await;
    let req = Request::post(format!("http://{}/v1/a%20b/c?x=1&y=%3A&z", gw.addr))
        .header("x-custom", "value 1")
        .header("content-type", "text/plain")
        .body(full("hello body"))
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/v1/a%20b/c?x=1&y=%3A&z", "path and query byte for byte");
    assert_eq!(seen["headers"]["x-custom"], "value 1");
    assert_eq!(seen["headers"]["host"], gw.addr.to_string(), "Host kept");
    assert_eq!(seen["body"], "hello body");
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn host_is_replaced_when_configured() {
    let up = echo_upstream().await;
    let text = config_text(up, "[defaults]\nrequire = \"public\"\n")
        .replace(&format!("url = \"http://{up}\"\n"), &format!("url = \"http://{up}\"\nhost = \"api.internal\"\n"));
    let gw = start(&text).await;
    let (_, _, body) = get(gw.addr, "/x", None).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["host"], "api.internal");
    assert_eq!(seen["headers"]["x-forwarded-host"], gw.addr.to_string(), "the client's host is still told");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = upstream(|_req: Request<Incoming>| async move {
        Response::builder()
            .header("connection", "x-up-hop")
            .header("x-up-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-agent", "x")
            .header("x-up-kept", "1")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let echo = echo_upstream().await;
    let gw = start(&public_config(echo, "")).await;
    let req = Request::get(format!("http://{}/h", gw.addr))
        .header("connection", "x-secret, keep-alive")
        .header("x-secret", "s")
        .header("keep-alive", "timeout=1")
        .header("te", "gzip, trailers")
        .header("trailer", "x-t")
        .header("proxy-authorization", "Basic eA==")
        .header("upgrade", "h2c")
        .header("x-kept", "k")
        .body(full(""))
        .unwrap();
    let (_, _, body) = send(&client(), req).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    let h = seen["headers"].as_object().unwrap();
    for gone in ["x-secret", "keep-alive", "trailer", "proxy-authorization", "upgrade"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["te"], "trailers", "TE passes as the one value gRPC needs");
    assert_eq!(h["x-kept"], "k");
    // hyper's client may add its own keep-alive `connection`; the client's tokens must not pass.
    assert!(h.get("connection").is_none_or(|c| !c.as_str().unwrap().contains("x-secret")));

    let gw2 = start(&public_config(up, "")).await;
    let (_, headers, _) = get(gw2.addr, "/r", None).await;
    assert!(!headers.contains_key("x-up-hop"));
    assert!(!headers.contains_key("keep-alive"));
    assert!(!headers.contains_key("proxy-agent"));
    assert_eq!(headers["x-up-kept"], "1");
}

#[tokio::test]
async fn x_forwarded_headers_are_appended() {
    let up = echo_upstream().await;
    let gw = start(&public_config(up, "")).await;
    let req = Request::get(format!("http://{}/f", gw.addr))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(full(""))
        .unwrap();
    let (_, _, body) = send(&client(), req).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https, http");
    assert_eq!(seen["headers"]["x-forwarded-host"], gw.addr.to_string());
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_returned() {
    let up = echo_upstream().await;
    let gw = start(&public_config(up, "")).await;
    let (_, headers, body) = get(gw.addr, "/id", None).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    let minted = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(minted.len(), 32);
    assert_eq!(seen["headers"]["x-request-id"], minted.as_str(), "upstream and client see the same id");
    let (_, headers2, _) = get(gw.addr, "/id", None).await;
    assert_ne!(headers2["x-request-id"], minted.as_str(), "ids are unique");

    let req = Request::get(format!("http://{}/id", gw.addr)).header("x-request-id", "abc-123").body(full("")).unwrap();
    let (_, headers, body) = send(&client(), req).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(seen["headers"]["x-request-id"], "abc-123");
}

#[tokio::test]
async fn upstream_down_is_502_with_a_fixed_text_and_the_request_id() {
    let gw = start(&public_config(closed_port().await, "")).await;
    let (status, headers, body) = get(gw.addr, "/down", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(body, format!("the upstream could not be reached (request id {id})\n"));
    assert_eq!(metric(&gw, "mfa_gateway_upstream_errors_total{kind=\"connect\"}").await, 1.0);
}

#[tokio::test]
async fn upstream_too_slow_is_504() {
    let up = upstream(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("late"))
    })
    .await;
    let text = public_config(up, "")
        .replace(&format!("url = \"http://{up}\"\n"), &format!("url = \"http://{up}\"\ntimeout = \"300ms\"\n"));
    let gw = start(&text).await;
    let t = std::time::Instant::now();
    let (status, headers, body) = get(gw.addr, "/slow", None).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(body, format!("the upstream did not answer in time (request id {id})\n"));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_client_trickling_headers_is_cut_off() {
    let up = echo_upstream().await;
    let text = public_config(up, "").replace("shutdown_grace", "header_read_timeout = \"400ms\"\nshutdown_grace");
    let gw = start(&text).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    // Keep trickling one header byte at a time; the gateway must close regardless.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X").await.is_err() {
                return;
            }
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read_buf(&mut buf)).await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after 5 s");
    assert!(t.elapsed() >= Duration::from_millis(350));
    assert_eq!(metric(&gw, "mfa_gateway_connection_errors_total{kind=\"header_timeout\"}").await, 1.0);
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let up = echo_upstream().await;
    let text = public_config(up, "").replace("shutdown_grace", "idle_timeout = \"300ms\"\nshutdown_grace");
    let gw = start(&text).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let t = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0))), "still open: {closed:?}");
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(2000), "{waited:?}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = echo_upstream().await;
    let text = public_config(up, "").replace("shutdown_grace", "max_header_bytes = 8192\nshutdown_grace");
    let gw = start(&text).await;
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let resp = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(metric(&gw, "mfa_gateway_connection_errors_total{kind=\"header_too_large\"}").await, 1.0);
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let up = echo_upstream().await;
    let gw = start(&public_config(up, "")).await;
    let req = Request::get(format!("http://{}/h2?q=1", gw.addr)).body(full("")).unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["uri"], "/h2?q=1");
    assert_eq!(seen["headers"]["host"], gw.addr.to_string(), ":authority becomes Host");
}

#[tokio::test]
async fn an_allowed_upgrade_is_tunnelled() {
    let up = tunnel_upstream("echo").await;
    // A protocol of the operator's own, named in the allowlist.
    let gw = start(&public_config(up, "").replace("[upstream]\n", "[upstream]\nupgrades = [\"echo\"]\n")).await;
    let mut s = open_tunnel(gw.addr, "echo").await;
    echo(&mut s, b"pong, and more").await;
}

fn rss_peak_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_body_streams_each_way_with_flat_memory() {
    const TOTAL: usize = 256 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let up = upstream(|req: Request<Incoming>| async move {
        // Count the upload as it streams, then stream a download of the same size.
        let mut body = req.into_body();
        let mut got = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                got += data.len();
            }
        }
        assert_eq!(got, TOTAL, "upstream received the whole upload");
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        Response::new(Repeat { chunk, left: TOTAL / CHUNK }.boxed())
    })
    .await;
    let gw = start(&public_config(up, "")).await;
    // Reset the peak-RSS mark so the measurement covers only the transfer.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = rss_peak_kib();
    let upload = Repeat { chunk: Bytes::from(vec![1u8; CHUNK]), left: TOTAL / CHUNK }.boxed();
    let req = Request::put(format!("http://{}/big", gw.addr)).body(upload).unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            got += data.len();
        }
    }
    assert_eq!(got, TOTAL);
    let grew_mib = (rss_peak_kib().saturating_sub(before)) / 1024;
    assert!(grew_mib < 64, "peak RSS grew by {grew_mib} MiB moving 2 x 256 MiB");
}

/// `count` copies of `chunk` as a body, produced lazily: nothing is held but one chunk.
struct Repeat {
    chunk: Bytes,
    left: usize,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}
