//! Running as a sidecar, over the real binary: live reload (SIGHUP, the file alone, a ConfigMap's
//! symlink swap, a broken file), key sets kept across a reload, lame-duck shutdown, and trace
//! context passed through to the upstream.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mfa_gateway::dev::{entra_claims, DevIssuer, KeyServer};
use support::*;
use tokio::net::TcpStream;

const NO_MFA: &str = "nomfa";

struct Setup {
    issuer: DevIssuer,
    keys: Arc<KeyServer>,
    upstream: SocketAddr,
}

impl Setup {
    async fn new() -> Setup {
        let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
        Setup { issuer, keys, upstream: echo_upstream().await }
    }

    /// The config with `/v1/offers` requiring `require`, `server_extra` in `[server]` and
    /// `issuer_extra` in the `[[issuer]]` table. Audit events on, JSON logs.
    fn text(&self, require: &str, server_extra: &str, issuer_extra: &str) -> String {
        let routes = format!("[[route]]\nname = \"offers\"\npath = \"/v1/offers\"\nrequire = \"{require}\"\n");
        let log = "[log]\nformat = \"json\"\n[audit]\nenabled = true\n";
        config_text(
            self.upstream,
            &format!("{log}{}{issuer_extra}\n{routes}", issuer_table(TEMPLATE_ISSUER, &self.keys)),
        )
        .replace("[server]\n", &format!("[server]\n{server_extra}"))
    }

    fn token(&self, kind: &str) -> String {
        self.issuer.mint(&entra_claims(kind, 600))
    }
}

/// One HTTP/1.1 connection kept open across requests.
async fn keep_alive(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn status_on(conn: &mut SendRequest<Full<Bytes>>, token: &str) -> StatusCode {
    let req = Request::get("/v1/offers")
        .header("host", "gw")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    conn.send_request(req).await.expect("the kept connection still serves").status()
}

/// The first line the gateway logged that `pred` accepts, once there is one.
async fn line(gw: &Binary, pred: impl Fn(&str) -> bool) -> String {
    let mut found = None;
    eventually(Lines("a line like that", gw), Duration::from_secs(3), async || {
        found = gw.lines().into_iter().find(|l| pred(l));
        found.is_some()
    })
    .await;
    found.expect("found")
}

/// Rewrites `file` in place (same inode, same length) and puts its modification time back, so
/// only a signal can tell the gateway it changed.
fn rewrite_unseen(file: &Path, text: &str) {
    let old = std::fs::read_to_string(file).unwrap();
    assert_eq!(old.len(), text.len(), "keep the length so the stamp stays the same");
    let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
    std::fs::write(file, text).unwrap();
    std::fs::File::options().write(true).open(file).unwrap().set_modified(mtime).unwrap();
}

#[tokio::test]
async fn a_routes_requirement_changes_on_sighup_while_a_keep_alive_connection_stays_open() {
    let s = Setup::new().await;
    let gw = Binary::start(&s.text("token", "", ""), None);
    gw.ready().await;
    let nomfa = s.token(NO_MFA);
    let mut conn = keep_alive(gw.addr).await;
    assert_eq!(status_on(&mut conn, &nomfa).await, StatusCode::OK);

    // `"token"` and `"mfa"  ` are the same length, so the file's stamp can stay put.
    rewrite_unseen(&gw.file, &s.text("token", "", "").replace("require = \"token\"", "require = \"mfa\"  "));
    // The poller sees no change: still the old requirement two polls later.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_on(&mut conn, &nomfa).await, StatusCode::OK, "changed without a signal");

    gw.signal("HUP");
    let applied = async || status_on(&mut conn, &nomfa).await == StatusCode::UNAUTHORIZED;
    let took = eventually("SIGHUP's requirement on the open connection", Duration::from_secs(5), applied).await;
    assert_eq!(gw.metric(r#"mfa_gateway_config_reloads_total{result="ok"}"#).await, 1.0);
    line(&gw, |l| l.contains("config reloaded") && l.contains("SIGHUP")).await;
    eprintln!("SIGHUP applied within {took:?}");
}

#[tokio::test]
async fn the_file_alone_is_picked_up_in_place_and_by_a_configmap_symlink_swap() {
    let s = Setup::new().await;
    // The layout kubelet makes: the file is a symlink into `..data`, itself a symlink to a
    // timestamped folder that an update replaces with one rename.
    let dir = temp_dir("configmap");
    let first = dir.join("..2026_11_23_a");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("gateway.toml"), s.text("token", "", "")).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_a", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.toml", dir.join("gateway.toml")).unwrap();
    let gw = Binary::start_on(&dir.join("gateway.toml"), None);
    gw.ready().await;
    let (mfa, nomfa) = (s.token("mfa"), s.token(NO_MFA));
    let status = |token: String| async move { get(gw.addr, "/v1/offers", Some(&token)).await.0 };
    assert_eq!(status(nomfa.clone()).await, StatusCode::OK);

    // An edit in place, through the symlinks.
    std::fs::write(dir.join("gateway.toml"), s.text("mfa", "", "")).unwrap();
    let took = eventually("an edit of the file picked up", Duration::from_secs(5), async || {
        status(nomfa.clone()).await == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("in-place edit picked up within {took:?}");

    // The ConfigMap update: a new folder, `..data` swapped to it by rename.
    let second = dir.join("..2026_11_23_b");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("gateway.toml"), s.text("public", "", "")).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_b", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    let took = eventually("the symlink swap picked up", Duration::from_secs(5), async || {
        get(gw.addr, "/v1/offers", None).await.0 == StatusCode::OK
    })
    .await;
    eprintln!("symlink swap picked up within {took:?}");
    assert_eq!(status(mfa).await, StatusCode::OK);
    assert_eq!(gw.metric(r#"mfa_gateway_config_reloads_total{result="ok"}"#).await, 2.0);
    assert_eq!(gw.metric(r#"mfa_gateway_config_reloads_total{result="error"}"#).await, 0.0);
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_config_serving_and_counts_an_error() {
    let s = Setup::new().await;
    let gw = Binary::start(&s.text("mfa", "", ""), None);
    gw.ready().await;
    let nomfa = s.token(NO_MFA);
    let stamp = "mfa_gateway_config_last_reload_success_timestamp_seconds";
    let started = gw.metric(stamp).await;
    assert!(started > 1.7e9, "the start-up load counts as the last success: {started}");
    let successful = "mfa_gateway_config_last_reload_successful";
    assert_eq!(gw.metric(successful).await, 1.0);

    // Valid TOML, a value the checks refuse; then a file that is not TOML at all.
    let broken = s.text("public", "", "").replace("[upstream]\n", "[upstream]\ntimeout = \"0s\"\n");
    std::fs::write(&gw.file, broken).unwrap();
    let errors = r#"mfa_gateway_config_reloads_total{result="error"}"#;
    eventually("a reload error counted", Duration::from_secs(5), async || gw.metric(errors).await == 1.0).await;
    assert_eq!(get(gw.addr, "/v1/offers", Some(&nomfa)).await.0, StatusCode::UNAUTHORIZED, "old config not kept");
    assert_eq!(get(gw.addr, "/v1/offers", None).await.0, StatusCode::UNAUTHORIZED);
    let failure = line(&gw, |l| l.contains("config reload failed")).await;
    assert!(failure.contains("upstream.timeout") && failure.contains("greater than zero"), "{failure}");
    assert!(failure.contains("\"level\":\"ERROR\""), "{failure}");

    std::fs::write(&gw.file, "[[route]\nthis is not toml").unwrap();
    eventually("the second error counted", Duration::from_secs(5), async || gw.metric(errors).await == 2.0).await;
    assert_eq!(get(gw.addr, "/v1/offers", Some(&nomfa)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.metric(r#"mfa_gateway_config_reloads_total{result="ok"}"#).await, 0.0);
    assert_eq!(gw.metric(stamp).await, started);
    assert_eq!(gw.metric(successful).await, 0.0, "an older config serves: the alert's signal");
    // One error line per bad edit, not one per poll.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(gw.metric(errors).await, 2.0);

    // Fixed: it applies.
    std::fs::write(&gw.file, s.text("token", "", "")).unwrap();
    eventually("the fixed file applied", Duration::from_secs(5), async || {
        get(gw.addr, "/v1/offers", Some(&nomfa)).await.0 == StatusCode::OK
    })
    .await;
    assert!(gw.metric(stamp).await >= started);
    assert_eq!(gw.metric(successful).await, 1.0);
}

#[tokio::test]
async fn a_reload_keeps_key_sets_and_forgets_verified_tokens_only_when_their_rules_change() {
    let s = Setup::new().await;
    let gw = Binary::start(&s.text("token", "", ""), None);
    gw.ready().await;
    let fetched = s.keys.fetches.load(std::sync::atomic::Ordering::SeqCst);
    let mfa = s.token("mfa");
    let misses = r#"mfa_gateway_token_cache_total{result="miss"}"#;
    let ok = r#"mfa_gateway_config_reloads_total{result="ok"}"#;
    // Twice: a token is cached on its second sighting.
    for _ in 0..2 {
        assert_eq!(get(gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    }
    assert_eq!(gw.metric(misses).await, 2.0);

    // A route change: nothing that decides a token changed, so the cache and key set stay.
    std::fs::write(&gw.file, s.text("mfa", "", "")).unwrap();
    eventually("the route change applied", Duration::from_secs(5), async || gw.metric(ok).await == 1.0).await;
    assert_eq!(get(gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    assert_eq!(gw.metric(misses).await, 2.0, "the token cache was emptied by a route change");

    // A new audience: verified tokens are forgotten, the key set is still not fetched again.
    let one = "audiences = [\"https://api.partnercenter.microsoft.com\"]";
    let two = "audiences = [\"https://api.partnercenter.microsoft.com\", \"api://other\"]";
    std::fs::write(&gw.file, s.text("mfa", "", "").replace(one, two)).unwrap();
    eventually("the audience change applied", Duration::from_secs(5), async || gw.metric(ok).await == 2.0).await;
    assert_eq!(get(gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    assert_eq!(gw.metric(misses).await, 3.0, "a changed audience list must re-verify tokens");
    assert_eq!(s.keys.fetches.load(std::sync::atomic::Ordering::SeqCst), fetched, "key set fetched again on reload");
    line(&gw, |l| l.contains("config reloaded") && l.contains("\"key_sets_new\":0")).await;
    let reloaded: Vec<String> = gw.lines().into_iter().filter(|l| l.contains("config reloaded")).collect();
    assert!(reloaded[0].contains("\"token_cache_kept\":true") && reloaded[0].contains("\"key_sets_kept\":1"));
    assert!(reloaded[1].contains("\"token_cache_kept\":false") && reloaded[1].contains("\"key_sets_new\":0"));
}

/// `[audit]` decides only how ids are shown, never a verdict: a change to it keeps the verified
/// tokens, and the next request of a cached token is shown under the new settings.
#[tokio::test]
async fn a_change_to_audit_keeps_cached_tokens_and_shows_their_ids_under_the_new_settings() {
    let s = Setup::new().await;
    let gw = Binary::start(&s.text("mfa", "", ""), None);
    gw.ready().await;
    let mfa = s.token("mfa");
    let (hits, misses) =
        (r#"mfa_gateway_token_cache_total{result="hit"}"#, r#"mfa_gateway_token_cache_total{result="miss"}"#);
    // Twice: a token is cached on its second sighting; the third is a hit.
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    }
    assert_eq!((gw.metric(misses).await, gw.metric(hits).await), (2.0, 1.0));
    let audited = |id: String| move |l: &str| l.contains("mfa_gateway::audit") && l.contains(&id);
    let (_, headers, _) = get(gw.addr, "/v1/offers", Some(&mfa)).await;
    let before = line(&gw, audited(headers["x-request-id"].to_str().unwrap().into())).await;
    assert!(before.contains("\"user\":\"Adminagent.csp@"), "{before}");

    let hashed = "[audit]\nenabled = true\nuser_ids = \"hash\"\nhash_key = \"0123456789abcdef0123\"\n";
    std::fs::write(&gw.file, s.text("mfa", "", "").replace("[audit]\nenabled = true\n", hashed)).unwrap();
    line(&gw, |l| l.contains("config reloaded")).await;
    let (status, headers, _) = get(gw.addr, "/v1/offers", Some(&mfa)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((gw.metric(misses).await, gw.metric(hits).await), (2.0, 3.0), "the [audit] change emptied the cache");
    let after = line(&gw, audited(headers["x-request-id"].to_str().unwrap().into())).await;
    assert!(after.contains("\"user\":\"h:") && !after.contains("Adminagent"), "{after}");
    let reloaded = line(&gw, |l| l.contains("config reloaded")).await;
    assert!(reloaded.contains("\"token_cache_kept\":true"), "{reloaded}");
}

#[tokio::test]
async fn settings_that_cannot_change_live_keep_their_values_with_a_warning() {
    let s = Setup::new().await;
    let gw = Binary::start(&s.text("token", "", ""), None);
    gw.ready().await;
    let text = s.text("mfa", "max_connections = 7\n", "").replace("workers = 1", "workers = 2");
    std::fs::write(&gw.file, text).unwrap();
    let nomfa = s.token(NO_MFA);
    eventually("the live part of the change applied", Duration::from_secs(5), async || {
        get(gw.addr, "/v1/offers", Some(&nomfa)).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    for key in ["server.workers", "server.max_connections"] {
        line(&gw, |l| l.contains("cannot change without a restart") && l.contains(key)).await;
    }
    // Still on its first address and port.
    assert_eq!(get(gw.addr, "/v1/offers", Some(&s.token("mfa"))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn lame_duck_readyz_says_draining_while_requests_are_still_served_then_exit_0() {
    let s = Setup::new().await;
    let mut gw = Binary::start(&s.text("token", "shutdown_delay = \"2s\"\n", ""), None);
    gw.ready().await;
    let mfa = s.token("mfa");
    let mut kept = keep_alive(gw.addr).await;
    assert_eq!(status_on(&mut kept, &mfa).await, StatusCode::OK);

    let signalled = Instant::now();
    gw.signal("TERM");
    eventually("/readyz 503 draining at once", Duration::from_secs(1), async || {
        let (status, _, body) = get(gw.admin, "/readyz", None).await;
        status == StatusCode::SERVICE_UNAVAILABLE && body == "draining\n"
    })
    .await;
    // New connections and open ones are still served during the delay.
    assert_eq!(get(gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(gw.addr, "/v1/offers", Some(&mfa)).await.0, StatusCode::OK);
    assert_eq!(status_on(&mut kept, &mfa).await, StatusCode::OK);
    assert!(signalled.elapsed() < Duration::from_secs(2));

    let status = tokio::task::spawn_blocking(move || {
        let status = gw.wait();
        (status, gw.lines())
    })
    .await
    .unwrap();
    let took = signalled.elapsed();
    assert!(status.0.success(), "exit status {:?}: {:?}", status.0, status.1);
    assert!(took >= Duration::from_secs(2), "left before shutdown_delay: {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[tokio::test]
async fn a_second_signal_skips_the_rest_of_the_delay() {
    let s = Setup::new().await;
    let mut gw = Binary::start(&s.text("token", "shutdown_delay = \"60s\"\n", ""), None);
    gw.ready().await;
    let mfa = s.token("mfa");
    let mut kept = keep_alive(gw.addr).await;
    assert_eq!(status_on(&mut kept, &mfa).await, StatusCode::OK);
    gw.signal("TERM");
    eventually("draining", Duration::from_secs(1), async || {
        get(gw.admin, "/readyz", None).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let second = Instant::now();
    gw.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gw.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "the second signal did not cut the delay: {:?}",
        second.elapsed()
    );
    // The kept connection ends with the process (the client notices within moments).
    eventually("the kept connection closed after exit", Duration::from_secs(3), async || kept.is_closed()).await;
}

#[tokio::test]
async fn traceparent_and_tracestate_reach_the_upstream_unchanged_and_the_audit_event_names_the_trace() {
    let s = Setup::new().await;
    let gw = Binary::start(&s.text("token", "", ""), None);
    gw.ready().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "vendor1=opaque,rojo=00f067aa0ba902b7";
    let req = Request::get(format!("http://{}/v1/offers", gw.addr))
        .header("authorization", format!("Bearer {}", s.token("mfa")))
        .header("traceparent", traceparent)
        .header("tracestate", tracestate)
        .header("x-request-id", "trace-test-1")
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed(&body, "traceparent"), traceparent);
    assert_eq!(echoed(&body, "tracestate"), tracestate);
    let line = line(&gw, |l| l.contains("\"request_id\":\"trace-test-1\"")).await;
    assert!(line.contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""), "{line}");
}

#[tokio::test]
async fn requests_in_flight_when_accepting_stops_finish_with_connection_close_or_goaway() {
    // An upstream that takes 1.5 s: requests are still in flight when the 300 ms delay ends.
    let slow = upstream(|_req: Request<hyper::body::Incoming>| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        hyper::Response::new(full("slow"))
    })
    .await;
    let text = public_config(slow, "").replace("[server]\n", "[server]\nshutdown_delay = \"300ms\"\n");
    let mut gw = Binary::start(&text, None);
    let mut h1 = keep_alive(gw.addr).await;
    let io = TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    let h2_done = tokio::spawn(conn);
    let get = |version| {
        Request::get(format!("http://{}/slow", gw.addr)).version(version).body(Full::new(Bytes::new())).unwrap()
    };
    let r1 = h1.send_request(get(http::Version::HTTP_11));
    let r2 = h2.send_request(get(http::Version::HTTP_2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.signal("TERM");
    let (r1, r2) = tokio::join!(r1, r2);
    let (r1, r2) = (r1.expect("HTTP/1.1 response"), r2.expect("HTTP/2 response"));
    assert_eq!(r1.status(), StatusCode::OK);
    assert_eq!(r1.headers()["connection"], "close", "HTTP/1.1 is told to close");
    assert_eq!(r2.status(), StatusCode::OK);
    // GOAWAY ends the HTTP/2 connection once its stream is done.
    tokio::time::timeout(Duration::from_secs(5), h2_done).await.expect("HTTP/2 connection not closed").unwrap().ok();
    assert!(TcpStream::connect(gw.addr).await.is_err(), "still accepting after the delay");
    let status = tokio::task::spawn_blocking(move || gw.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// JSON log lines carry the request id as text, not as its quoted `Debug` form.
#[tokio::test]
async fn json_logs_carry_the_request_id_once_quoted() {
    let s = Setup::new().await;
    let text = s.text("token", "", "").replace("format = \"json\"\n", "format = \"json\"\nfilter = \"debug\"\n");
    let gw = Binary::start(&text, None);
    gw.ready().await;
    let req = Request::get(format!("http://{}/v1/offers", gw.addr))
        .header("x-request-id", "log-shape-1")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, StatusCode::UNAUTHORIZED);
    let refused = line(&gw, |l| l.contains("\"message\":\"no token\"")).await;
    assert!(refused.contains("\"request_id\":\"log-shape-1\""), "{refused}");
}
