//! The gateway's own HTTP/1.1 connections to a cleartext upstream: reused one request after
//! another, never used again once the upstream has closed them, and closed when idle past
//! `pool_idle_timeout`. The upstream here counts its connections at the socket.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    /// Connections the gateway closed (read end of stream while waiting for a request).
    closed_by_gateway: AtomicUsize,
}

/// An upstream answering each request with the number of its connection, closing a connection
/// after `requests_per_connection` answers, unannounced (no `Connection: close`), as an
/// upstream's own keep-alive limit or timeout does.
async fn counting_upstream(requests_per_connection: usize) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let n = c.accepted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve(s, n, requests_per_connection, c.clone()));
        }
    });
    (addr, counts)
}

async fn serve(mut s: TcpStream, n: usize, limit: usize, counts: Arc<Counts>) {
    let mut buf = Vec::new();
    let mut answered = 0;
    while answered < limit {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                counts.closed_by_gateway.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
        // Requests without bodies: each ends at its blank line.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let body = format!("connection {n}");
            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            s.write_all(resp.as_bytes()).await.unwrap();
            answered += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_one_after_another_share_one_upstream_connection() {
    let (up, counts) = counting_upstream(usize::MAX).await;
    let gw = start(&public_config(up, "")).await;
    for _ in 0..20 {
        let (status, _, body) = get(gw.addr, "/one", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "connection 1"));
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    let (up, counts) = counting_upstream(1).await;
    let gw = start(&public_config(up, "")).await;
    for i in 1..=10 {
        let (status, _, body) = get(gw.addr, "/each", None).await;
        assert_eq!((status, body), (StatusCode::OK, format!("connection {i}")), "request {i}");
        // The upstream's close reaches the gateway while the connection is idle.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 10);
    assert_eq!(metric(&gw, "mfa_gateway_upstream_errors_total{kind=\"protocol\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_idle_past_pool_idle_timeout_is_closed() {
    let (up, counts) = counting_upstream(usize::MAX).await;
    let gw = start(&public_config(up, "").replace("[upstream]\n", "[upstream]\npool_idle_timeout = \"1s\"\n")).await;
    assert_eq!(get(gw.addr, "/once", None).await.0, StatusCode::OK);
    assert_eq!(counts.closed_by_gateway.load(Ordering::SeqCst), 0);
    eventually("the idle connection is closed", Duration::from_secs(4), async || {
        counts.closed_by_gateway.load(Ordering::SeqCst) == 1
    })
    .await;
    // The next request opens a new one.
    assert_eq!(get(gw.addr, "/again", None).await.2, "connection 2");
}
