//! A lame duck that moves clients away, over the real binary: SIGTERM under load, HTTP/1.1 and
//! HTTP/2, with the load going on past the close of the listener.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpStream;

/// What one client connection saw.
#[derive(Debug, Default)]
struct Seen {
    /// Complete responses (status 200 and the whole body).
    complete: usize,
    /// Responses cut short, or any other status.
    broken: usize,
    /// The response that told the client to close, and when (from SIGTERM).
    told_to_close: Option<Duration>,
    /// A request that failed on this connection before it was told to close.
    failed_before_close: Option<String>,
    /// When the connection ended, from SIGTERM.
    ended: Option<Duration>,
}

/// One HTTP/1.1 keep-alive connection sending GETs until it is closed.
async fn h1_client(addr: SocketAddr, term: tokio::sync::watch::Receiver<Option<Instant>>) -> Seen {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let since = || term.borrow().map(|t| t.elapsed());
    let mut seen = Seen::default();
    loop {
        if send.ready().await.is_err() {
            break;
        }
        let req = Request::get(format!("http://{addr}/body")).body(Full::new(Bytes::new())).unwrap();
        match send.send_request(req).await {
            Ok(resp) => {
                let close = resp.headers().get("connection").is_some_and(|v| v == "close");
                let ok = resp.status() == StatusCode::OK;
                let body = resp.into_body().collect().await.map(|b| b.to_bytes().len());
                match body {
                    Ok(4096) if ok => seen.complete += 1,
                    _ => seen.broken += 1,
                }
                if close {
                    seen.told_to_close = since();
                    break;
                }
            }
            Err(e) => {
                seen.failed_before_close = Some(e.to_string());
                break;
            }
        }
    }
    let _ = conn.await;
    seen.ended = since();
    seen
}

/// One HTTP/2 connection sending GETs, 4 at a time, until the gateway sends GOAWAY.
async fn h2_client(addr: SocketAddr, term: tokio::sync::watch::Receiver<Option<Instant>>) -> Seen {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    let since = || term.borrow().map(|t| t.elapsed());
    let mut seen = Seen::default();
    'outer: loop {
        let mut batch = Vec::new();
        for _ in 0..4 {
            let mut send = send.clone();
            let req = Request::get(format!("http://{addr}/body")).body(Full::new(Bytes::new())).unwrap();
            batch.push(tokio::spawn(async move {
                let resp = send.send_request(req).await?;
                let ok = resp.status() == StatusCode::OK;
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<bool, hyper::Error>(ok && body.len() == 4096)
            }));
        }
        for r in batch {
            match r.await.unwrap() {
                Ok(true) => seen.complete += 1,
                Ok(false) => seen.broken += 1,
                // A stream refused after GOAWAY: the connection is going away.
                Err(_) => break 'outer,
            }
        }
        if conn.is_finished() {
            break;
        }
    }
    let _ = conn.await;
    seen.told_to_close = since();
    seen.ended = since();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_moves_http1_and_http2_clients_away_during_the_delay() {
    let up =
        upstream(|_req: Request<hyper::body::Incoming>| async { http::Response::new(full(vec![b'x'; 4096])) }).await;
    let text = public_config(up, "").replace("[server]\n", "[server]\nshutdown_delay = \"2s\"\n");
    let mut gw = Binary::start(&text, None);
    let (term_tx, term) = tokio::sync::watch::channel(None);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(h1_client(gw.addr, term.clone())));
        clients.push(tokio::spawn(h2_client(gw.addr, term.clone())));
    }
    // Load on new connections too, on past the listener's close: those get refused, and every
    // response any of them got is complete.
    let late = {
        let (addr, term) = (gw.addr, term.clone());
        tokio::spawn(async move {
            let (mut complete, mut broken, mut refused) = (0, 0, 0);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                match tokio::time::timeout(Duration::from_secs(2), get_once(addr)).await {
                    Ok(Some(true)) => complete += 1,
                    Ok(Some(false)) => broken += 1,
                    Ok(None) => refused += 1,
                    Err(_) => panic!("a request on a new connection hung"),
                }
                if term.borrow().is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
                    break;
                }
            }
            (complete, broken, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    term_tx.send(Some(Instant::now())).unwrap();
    gw.signal("TERM");

    for (i, c) in clients.into_iter().enumerate() {
        let seen = c.await.unwrap();
        let proto = if i % 2 == 0 { "HTTP/1.1" } else { "HTTP/2" };
        eprintln!("{proto} connection {}: {seen:?}", i / 2);
        assert!(seen.complete > 0, "{proto}: served before SIGTERM: {seen:?}");
        assert_eq!(seen.broken, 0, "{proto}: every response complete: {seen:?}");
        assert_eq!(seen.failed_before_close, None, "{proto}: closed after a response, not mid-request");
        // Told to go during the 2 s delay, not when the listener closed.
        let told = seen.told_to_close.unwrap_or_else(|| panic!("{proto}: never told to close: {seen:?}"));
        assert!(told < Duration::from_millis(1500), "{proto}: told to close {told:?} after SIGTERM");
    }
    let (complete, broken, refused) = late.await.unwrap();
    eprintln!("new connections: {complete} complete, {broken} broken, {refused} refused after the close");
    assert!(complete > 0 && broken == 0, "{complete} complete, {broken} broken");
    let status = tokio::task::spawn_blocking(move || gw.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// One request on a new connection: `None` when no response came (refused, or reset before a
/// response once the listener closed), else whether the response was complete.
async fn get_once(addr: SocketAddr) -> Option<bool> {
    let io = TokioIo::new(TcpStream::connect(addr).await.ok()?);
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}/body")).body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.ok()?;
    let ok = resp.status() == StatusCode::OK;
    let body = resp.into_body().collect().await.map(|b| b.to_bytes().len());
    Some(ok && matches!(body, Ok(4096)))
}
