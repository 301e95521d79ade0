//! Key sets over the wire: rotation, refetch on an unknown kid (rate-limited and shared),
//! key server outages at start and later, and staleness.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use mfa_gateway::dev::{entra_claims, DevIssuer};
use serde_json::json;
use support::*;

#[tokio::test]
async fn a_new_kid_is_accepted_after_a_refetch() {
    let h = auth_harness(ROUTES, "refetch_min_interval = \"0s\"").await;
    let before = h.keys.fetches.load(Ordering::SeqCst);
    let next = DevIssuer::generate("k2");
    h.keys.set_jwks(json!({"keys": [h.issuer.jwk(), next.jwk()]}));
    let token = next.mint(&entra_claims("mfa", 600));
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&token)).await.0, StatusCode::OK);
    assert_eq!(h.keys.fetches.load(Ordering::SeqCst), before + 1);
    assert_eq!(
        metric(&h.gw, "mfa_gateway_key_refetches_total{issuer=\"https://sts.windows.net/{tenantid}/\",result=\"ok\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_removed_key_is_refused_after_the_next_refresh_even_if_cached() {
    let h = auth_harness(ROUTES, "refresh_interval = \"200ms\"").await;
    let old = h.issuer.mint(&entra_claims("mfa", 600));
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&old)).await.0, StatusCode::OK);
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&old)).await.0, StatusCode::OK, "now cached");
    let next = DevIssuer::generate("k2");
    h.keys.set_jwks(json!({"keys": [next.jwk()]}));
    // A fetch is counted once its keys are stored. One fetch may have been served the old set
    // before the swap; the one after it was served the new set, so two stored fetches from now
    // mean the new set is in.
    let stored =
        || metric(&h.gw, "mfa_gateway_key_fetches_total{issuer=\"https://sts.windows.net/{tenantid}/\",result=\"ok\"}");
    let start = stored().await;
    eventually("a refresh that stored the new set", Duration::from_secs(10), async || stored().await >= start + 2.0)
        .await;
    let (status, headers, _) = get(h.gw.addr, "/v1/offers", Some(&old)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("signing key not found"));
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&next.mint(&entra_claims("mfa", 600)))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_key_first_used_right_after_start_up_is_accepted_and_a_second_unknown_kid_is_limited() {
    let h = auth_harness(ROUTES, "refetch_min_interval = \"1h\"").await;
    let before = h.keys.fetches.load(Ordering::SeqCst);
    // The start-up fetch does not start the refetch clock: a key published just after it is
    // fetched on its first request.
    let next = DevIssuer::generate("k2");
    h.keys.set_jwks(json!({"keys": [h.issuer.jwk(), next.jwk()]}));
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&next.mint(&entra_claims("mfa", 600)))).await.0, StatusCode::OK);
    assert_eq!(h.keys.fetches.load(Ordering::SeqCst), before + 1);
    // A second unknown kid inside the interval is refused without a fetch, and counted.
    let stranger = DevIssuer::generate("k9");
    h.keys.set_jwks(json!({"keys": [h.issuer.jwk(), next.jwk(), stranger.jwk()]}));
    let limited = || {
        metric(
            &h.gw,
            "mfa_gateway_key_refetches_total{issuer=\"https://sts.windows.net/{tenantid}/\",result=\"limited\"}",
        )
    };
    for i in 0..5 {
        let token = stranger.mint(&entra_claims("mfa", 600));
        let (status, headers, _) = get(h.gw.addr, "/v1/offers", Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers["www-authenticate"].to_str().unwrap().contains("signing key not found"));
        assert_eq!(limited().await, (i + 1) as f64);
    }
    assert_eq!(h.keys.fetches.load(Ordering::SeqCst), before + 1, "no fetch inside the interval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_unknown_kid_requests_cause_one_fetch() {
    // No rate limit: only the sharing of one fetch in flight keeps the hundred to one fetch.
    let h = auth_harness(ROUTES, "refetch_min_interval = \"0s\"").await;
    // A slow key server, so that all hundred arrive while the fetch is under way.
    let next = DevIssuer::generate("k2");
    h.keys.set_jwks(json!({"keys": [h.issuer.jwk(), next.jwk()]}));
    h.keys.delay_ms.store(300, Ordering::SeqCst);
    let before = h.keys.fetches.load(Ordering::SeqCst);
    let addr = h.gw.addr;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            // Distinct tokens, so the verified-token cache cannot answer for the others.
            let token = next.mint(&entra_claims("mfa", 600 + i));
            tokio::spawn(async move { get(addr, "/v1/offers", Some(&token)).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.keys.fetches.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn key_server_down_at_start_then_up_flips_readyz() {
    let issuer = DevIssuer::generate("k1");
    let keys = mfa_gateway::dev::KeyServer::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        json!({"keys": [issuer.jwk()]}),
        TEMPLATE_ISSUER,
    );
    keys.up.store(false, Ordering::SeqCst);
    let text = config_text(
        echo_upstream().await,
        &format!(
            "[[issuer]]\nissuer = \"{TEMPLATE_ISSUER}\"\ndiscovery = \"{}\"\n\
             audiences = [\"https://api.partnercenter.microsoft.com\"]\n{ROUTES}",
            keys.discovery_url()
        ),
    );
    let gw = start(&text).await;
    let token = issuer.mint(&entra_claims("mfa", 600));
    eventually("a failed fetch", Duration::from_secs(10), async || {
        get(gw.admin_addr, "/readyz", None).await.2.contains("HTTP 503")
    })
    .await;
    let (status, _, body) = get(gw.admin_addr, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("https://sts.windows.net/{tenantid}/: no keys"), "{body}");
    assert_eq!(get(gw.addr, "/v1/offers", Some(&token)).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(gw.addr, "/healthz", None).await.0, StatusCode::OK, "public routes serve meanwhile");

    keys.up.store(true, Ordering::SeqCst);
    eventually("readyz 200", Duration::from_secs(10), async || {
        get(gw.admin_addr, "/readyz", None).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(get(gw.addr, "/v1/offers", Some(&token)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn key_server_down_later_keeps_the_cached_keys_until_max_stale() {
    let h = auth_harness(ROUTES, "refresh_interval = \"100ms\"\nmax_stale = \"1500ms\"").await;
    h.keys.up.store(false, Ordering::SeqCst);
    let failures = || {
        metric(&h.gw, "mfa_gateway_key_fetches_total{issuer=\"https://sts.windows.net/{tenantid}/\",result=\"error\"}")
    };
    eventually("a failed refresh", Duration::from_secs(10), async || failures().await >= 1.0).await;
    // A token never seen before still verifies against the last good set.
    let fresh = h.issuer.mint(&entra_claims("mfa", 700));
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&fresh)).await.0, StatusCode::OK);
    // Past max_stale the set is dropped: fail closed, 503, and /readyz says so.
    eventually("keys dropped", Duration::from_secs(10), async || {
        get(h.gw.admin_addr, "/readyz", None).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(
        get(h.gw.addr, "/v1/offers", Some(&fresh)).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "cached entry voided too"
    );
    h.keys.up.store(true, Ordering::SeqCst);
    eventually("keys back", Duration::from_secs(10), async || {
        get(h.gw.admin_addr, "/readyz", None).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&fresh)).await.0, StatusCode::OK);
}
