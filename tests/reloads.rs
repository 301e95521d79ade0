//! Reloads and key changes without a failed request, over the real binary: a key set is put in
//! service only once it has loaded, a refused reload is retried until its key server answers,
//! and an edited `jwks_file` takes effect without a signal.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use mfa_gateway::dev::{entra_claims, DevIssuer, KeyServer};
use serde_json::json;
use support::*;
use tokio::net::TcpListener;

const RELOADED: &str = "mfa_gateway_config_reloads_total{result=\"ok\"}";
const REFUSED: &str = "mfa_gateway_config_reloads_total{result=\"error\"}";

/// Writes `text` to `file` through a rename, so the file is new however quickly it follows the
/// last write.
fn replace(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// The config: the issuer's keys from `source` (a TOML line), `timing` in its table, and
/// `extra_route` as one more route (or nothing).
fn config(upstream: SocketAddr, source: &str, timing: &str, extra_route: &str) -> String {
    config_text(
        upstream,
        &format!(
            "[[issuer]]\nissuer = \"{TEMPLATE_ISSUER}\"\n{source}\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n\
             fetch_timeout = \"500ms\"\n{timing}\n{ROUTES}{extra_route}"
        ),
    )
}

fn discovery(keys: &KeyServer) -> String {
    format!("discovery = \"{}\"", keys.discovery_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let issuer = DevIssuer::generate("k1");
    let jwks = json!({"keys": [issuer.jwk()]});
    // Two key servers that serve the same keys: a change of key source between them.
    let a = KeyServer::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), jwks.clone(), TEMPLATE_ISSUER);
    let b = KeyServer::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), jwks, TEMPLATE_ISSUER);
    let up = echo_upstream().await;
    let gw = Binary::start(&config(up, &discovery(&a), "", ""), None);
    gw.ready().await;
    let token = issuer.mint(&entra_claims("mfa", 600));

    // Load: 8 keep-alive clients, each request counted as 2xx, another status, or a client error.
    let (ok, bad, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (ok, bad, errors, stop, token, addr) =
            (ok.clone(), bad.clone(), errors.clone(), stop.clone(), token.clone(), gw.addr);
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{addr}/v1/offers"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(full(""))
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("non-2xx: {}", r.status());
                        bad.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("client error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    let extra = "[[route]]\nname = \"extra\"\npath = \"/v1/extra\"\nrequire = \"public\"\n";
    let (mut applied, mut refused) = (0.0, 0.0);
    let started = Instant::now();
    for i in 0..100 {
        let source = if (i / 4) % 2 == 0 { discovery(&a) } else { discovery(&b) };
        let broken = i % 4 == 3;
        let text = match i % 4 {
            0 => config(up, &source, "", extra),
            1 => config(up, &source, "refresh_interval = \"2h\"", ""),
            // A change of key source: (i / 4) flips between a and b every fourth reload.
            2 => config(up, &source, "", ""),
            _ => "[server\nthis is not TOML".to_string(),
        };
        replace(&gw.file, &text);
        gw.signal("HUP");
        if broken {
            refused += 1.0;
        } else {
            applied += 1.0;
        }
        eventually(&format!("reload {i} counted"), Duration::from_secs(10), async || {
            gw.metric(RELOADED).await >= applied && gw.metric(REFUSED).await >= refused
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, bad, errors) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    eprintln!("100 reloads in {:?}: {ok} requests 2xx, {bad} other, {errors} client errors", started.elapsed());
    assert!(ok > 1000, "the load ran: {ok}");
    assert_eq!((bad, errors), (0, 0), "requests failed during reloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_key_source_is_unreachable_is_refused_then_applied_once_it_answers() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let up = echo_upstream().await;
    let gw = Binary::start(&config(up, &discovery(&keys), "", ""), None);
    gw.ready().await;
    let token = issuer.mint(&entra_claims("mfa", 600));
    // The new key source: a port that accepts no connection yet (its backlog holds them).
    let later = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("discovery = \"http://{}/.well-known/openid-configuration\"", later.local_addr().unwrap());
    let extra = "[[route]]\nname = \"extra\"\npath = \"/v1/extra\"\nrequire = \"public\"\n";
    replace(&gw.file, &config(up, &url, "", extra));
    gw.signal("HUP");
    eventually("the reload refused", Duration::from_secs(5), async || gw.metric(REFUSED).await >= 1.0).await;
    let refusal = gw.lines().into_iter().find(|l| l.contains("config reload refused")).unwrap();
    assert!(refusal.contains(TEMPLATE_ISSUER), "the log names the issuer: {refusal}");
    // Traffic is unaffected: the old config (and its keys) serve on; the new route is not in.
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/v1/offers", Some(&token)).await.0, StatusCode::OK);
    }
    assert_eq!(get(gw.addr, "/v1/extra", None).await.0, StatusCode::UNAUTHORIZED, "the refused config is not in");
    // The key server answers: the retried reload goes in by itself.
    let _answering = KeyServer::start(later, json!({"keys": [issuer.jwk()]}), TEMPLATE_ISSUER);
    eventually("the retried reload applied", Duration::from_secs(15), async || gw.metric(RELOADED).await >= 1.0).await;
    assert_eq!(get(gw.addr, "/v1/extra", None).await.0, StatusCode::OK);
    assert_eq!(get(gw.addr, "/v1/offers", Some(&token)).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_jwks_file_takes_effect_without_a_signal() {
    let (k1, k2) = (DevIssuer::generate("k1"), DevIssuer::generate("k2"));
    let dir = temp_dir("jwks-file");
    let file = dir.join("jwks.json");
    std::fs::write(&file, json!({"keys": [k1.jwk(), k2.jwk()]}).to_string()).unwrap();
    let up = echo_upstream().await;
    let gw = Binary::start(&config(up, &format!("jwks_file = \"{}\"", file.display()), "", ""), None);
    gw.ready().await;
    let (kept, cached, unseen) =
        (k1.mint(&entra_claims("mfa", 600)), k2.mint(&entra_claims("mfa", 600)), k2.mint(&entra_claims("mfa", 601)));
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/v1/offers", Some(&cached)).await.0, StatusCode::OK, "cached by now");
    }
    // k2 leaves the file: within 2 s, no signal, its tokens are refused, cached or not.
    replace(&file, &json!({"keys": [k1.jwk()]}).to_string());
    let edited = Instant::now();
    eventually("the removed key refused", Duration::from_secs(2), async || {
        get(gw.addr, "/v1/offers", Some(&cached)).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("a removed key refused {:?} after the edit", edited.elapsed());
    let (status, headers, _) = get(gw.addr, "/v1/offers", Some(&unseen)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(get(gw.addr, "/v1/offers", Some(&kept)).await.0, StatusCode::OK);

    // A malformed edit keeps the last good set, logged and counted.
    let refused = gw.metric(REFUSED).await;
    replace(&file, "{\"keys\": [");
    eventually("the malformed file refused", Duration::from_secs(5), async || gw.metric(REFUSED).await > refused).await;
    assert!(gw.lines().iter().any(|l| l.contains("config reload refused")), "logged");
    assert_eq!(get(gw.addr, "/v1/offers", Some(&kept)).await.0, StatusCode::OK);
    assert_eq!(get(gw.addr, "/v1/offers", Some(&unseen)).await.0, StatusCode::UNAUTHORIZED);
}
