//! Token verification and MFA enforcement over the wire: refusal rows, classification, identity
//! headers, and hostile tokens.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mfa_gateway::dev::{entra_claims, DEMO_TENANT};
use serde_json::{json, Value};
use support::*;

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn www(h: &http::HeaderMap) -> &str {
    h.get("www-authenticate").map(|v| v.to_str().unwrap()).unwrap_or("")
}

#[tokio::test]
async fn each_refusal_row() {
    let h = auth_harness(ROUTES, "").await;
    let addr = h.gw.addr;

    // No token, and a non-Bearer scheme: 401 with a bare Bearer challenge (RFC 6750 §3.1).
    for auth in [None, Some("Basic dXNlcjpwYXNz")] {
        let mut req = Request::get(format!("http://{addr}/v1/offers"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, headers, body) = send(&client(), req.body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(www(&headers), "Bearer");
        let b: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(b["error"], "missing_token");
    }

    // Invalid token: 401 invalid_token with a short description.
    let expired = h.issuer.mint(&entra_claims("mfa", -3600));
    let (status, headers, body) = get(addr, "/v1/offers", Some(&expired)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(www(&headers), "Bearer error=\"invalid_token\", error_description=\"token expired\"");
    assert!(!body.contains(&expired[..20]), "the token is never echoed");

    // App+User without MFA: the exact Partner Center status line, read as raw bytes.
    let nomfa = h.issuer.mint(&entra_claims("nomfa", 600));
    let req =
        format!("GET /v1/offers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {nomfa}\r\nConnection: close\r\n\r\n");
    let raw_resp = String::from_utf8(raw(addr, req.as_bytes(), Duration::from_secs(5)).await).unwrap();
    assert!(raw_resp.starts_with("HTTP/1.1 401 Unauthorized - MFA required\r\n"), "{raw_resp}");
    assert!(raw_resp.to_lowercase().contains("\r\nwww-authenticate: bearer error=\"invalid_token\"\r\n"), "{raw_resp}");
    assert!(!raw_resp.contains(&nomfa[nomfa.len() - 20..]), "signature never echoed");

    // App-only on an app_user_mfa route: 403 insufficient_scope.
    let app = h.issuer.mint(&entra_claims("app", 600));
    let (status, headers, _) = get(addr, "/v1/customers/c1/users", Some(&app)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(www(&headers).starts_with("Bearer error=\"insufficient_scope\", error_description="));

    // Allowed ones.
    let mfa = h.issuer.mint(&entra_claims("mfa", 600));
    assert_eq!(get(addr, "/v1/customers/c1/users", Some(&mfa)).await.0, StatusCode::OK);
    assert_eq!(get(addr, "/v1/offers", Some(&app)).await.0, StatusCode::OK, "app-only on an mfa route");
    assert_eq!(get(addr, "/v1/reports", Some(&nomfa)).await.0, StatusCode::OK, "token route needs no MFA");
    assert_eq!(get(addr, "/healthz", None).await.0, StatusCode::OK, "public route needs no token");
    // Unmatched paths get the default requirement: app_user_mfa.
    assert_eq!(get(addr, "/v2/anything", Some(&app)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(addr, "/v2/anything", Some(&mfa)).await.0, StatusCode::OK);

    // Each decision is counted.
    assert_eq!(
        metric(&h.gw, "mfa_gateway_requests_total{decision=\"mfa_required\",mode=\"proxy\",route=\"offers\",token_kind=\"app_user\"}")
            .await,
        1.0
    );
    assert_eq!(metric(&h.gw, "mfa_gateway_invalid_tokens_total{reason=\"expired\"}").await, 1.0);
}

#[tokio::test]
async fn mfa_refusal_over_http2_has_status_401_and_the_same_header() {
    let h = auth_harness(ROUTES, "").await;
    let nomfa = h.issuer.mint(&entra_claims("nomfa", 600));
    let req = Request::get(format!("http://{}/v1/offers", h.gw.addr))
        .header("authorization", format!("Bearer {nomfa}"))
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(&h2_client(), req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(www(&headers), "Bearer error=\"invalid_token\"");
}

#[tokio::test]
async fn keys_unavailable_is_503_with_retry_after() {
    let dead = closed_port().await;
    let text = config_text(
        echo_upstream().await,
        &format!(
            "[[issuer]]\nissuer = \"{TEMPLATE_ISSUER}\"\njwks_uri = \"http://{dead}/keys\"\n\
             audiences = [\"https://api.partnercenter.microsoft.com\"]\n{ROUTES}"
        ),
    );
    let gw = start(&text).await;
    let token = mfa_gateway::dev::DevIssuer::generate("k1").mint(&entra_claims("mfa", 600));
    let (status, headers, body) = get(gw.addr, "/v1/offers", Some(&token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    assert!(headers.get("www-authenticate").is_none());
    assert!(body.contains("keys_unavailable"));
    let (status, _, body) = get(gw.admin_addr, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no keys"), "{body}");
}

#[tokio::test]
async fn classification_and_identity_headers_reach_the_upstream() {
    let h = auth_harness(ROUTES, "").await;
    let oid = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
    let with = |patch: Value| {
        let mut c = entra_claims("mfa", 600);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        h.issuer.mint(&c)
    };
    let cases = [
        (json!({"idtyp": "app"}), "app_only"),
        (json!({"idtyp": "user", "scp": null, "roles": ["r"]}), "app_user"),
        (json!({"scp": null, "sub": oid}), "app_only"),
        (json!({"scp": null, "roles": ["Partner.Read.All"]}), "app_only"),
        (json!({"roles": ["Partner.Read.All"]}), "app_user"),
        (json!({}), "app_user"),
    ];
    for (patch, want) in cases {
        let token = with(patch.clone());
        let req = Request::get(format!("http://{}/v1/offers", h.gw.addr))
            .header("authorization", format!("Bearer {token}"))
            .header("x-mfa-gateway-mfa", "true")
            .header("x-mfa-gateway-upn", "forged@example.com")
            .body(full(""))
            .unwrap();
        let (status, _, body) = send(&client(), req).await;
        assert_eq!(status, StatusCode::OK, "{patch}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        let hdr = &seen["headers"];
        assert_eq!(hdr["x-mfa-gateway-token-kind"], want, "{patch}");
        assert_eq!(hdr["x-mfa-gateway-tenant-id"], DEMO_TENANT);
        assert_eq!(hdr["x-mfa-gateway-app-id"], "00001111-aaaa-2222-bbbb-3333cccc4444");
        assert_eq!(hdr["x-mfa-gateway-mfa"], "true");
        assert_ne!(hdr["x-mfa-gateway-upn"], "forged@example.com", "client copies are stripped");
        assert!(hdr["authorization"].as_str().unwrap().starts_with("Bearer "), "forwarded by default");
    }
    // A user token without MFA on a token-only route: told to the upstream as mfa=false.
    let nomfa = h.issuer.mint(&entra_claims("nomfa", 600));
    let (_, _, body) = get(h.gw.addr, "/v1/reports", Some(&nomfa)).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-mfa-gateway-mfa"], "false");
    assert_eq!(seen["headers"]["x-mfa-gateway-upn"], "Adminagent.csp@testtestpartner.onmicrosoft.com");
}

#[tokio::test]
async fn acrs_counts_as_mfa_for_tokens_without_amr() {
    let h = auth_harness(&format!("[mfa]\nacrs = [\"c1\"]\n{ROUTES}"), "").await;
    let mut c = entra_claims("mfa", 600);
    c.as_object_mut().unwrap().remove("amr");
    c["acrs"] = json!(["c1"]);
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&h.issuer.mint(&c))).await.0, StatusCode::OK);
    c["acrs"] = json!(["c2"]);
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&h.issuer.mint(&c))).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn roles_and_scopes_per_route() {
    let routes = r#"
[[route]]
name = "read"
path = "/v1/read"
require = "token"
roles_any = ["Partner.Read.All"]
[[route]]
name = "impersonate"
path = "/v1/imp"
require = "token"
scopes_any = ["user_impersonation"]
"#;
    let h = auth_harness(routes, "").await;
    let app = h.issuer.mint(&entra_claims("app", 600));
    let user = h.issuer.mint(&entra_claims("mfa", 600));
    assert_eq!(get(h.gw.addr, "/v1/read", Some(&app)).await.0, StatusCode::OK);
    let (status, headers, _) = get(h.gw.addr, "/v1/read", Some(&user)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(www(&headers).contains("lacks a role"));
    assert_eq!(get(h.gw.addr, "/v1/imp", Some(&user)).await.0, StatusCode::OK);
    assert_eq!(get(h.gw.addr, "/v1/imp", Some(&app)).await.0, StatusCode::FORBIDDEN);
}

/// Its expiry, on the authenticator's clock: `auth::tests::a_cached_token_is_refused_once_the_clock_passes_its_exp`.
#[tokio::test]
async fn a_verified_token_is_served_from_cache_from_its_second_sighting() {
    let h = auth_harness(ROUTES, "").await;
    let token = h.issuer.mint(&entra_claims("mfa", 600));
    // Cached on its second sighting (the first is only remembered), answered from cache on the third.
    for _ in 0..3 {
        assert_eq!(get(h.gw.addr, "/v1/offers", Some(&token)).await.0, StatusCode::OK);
    }
    assert_eq!(metric(&h.gw, "mfa_gateway_token_cache_deferred_total").await, 1.0);
    assert_eq!(metric(&h.gw, "mfa_gateway_token_cache_total{result=\"miss\"}").await, 2.0);
    assert_eq!(metric(&h.gw, "mfa_gateway_token_cache_total{result=\"hit\"}").await, 1.0);
}

/// A loopback server that counts requests: `jku`/`x5u` must never send it one.
async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let addr = upstream(move |_req: Request<Incoming>| {
        h2.fetch_add(1, Ordering::SeqCst);
        async { Response::new(full("{\"keys\":[]}")) }
    })
    .await;
    (addr, hits)
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_the_right_reason() {
    // ES256 and EdDSA are allowed here so that key-type confusion is tested, not the allowlist.
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let ed = Ed25519KeyPair::generate().unwrap();
    let point = ec.public_key().as_ref().to_vec();
    let h = auth_harness(ROUTES, "algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\nrefetch_min_interval = \"0s\"").await;
    h.keys.set_jwks(json!({"keys": [
        h.issuer.jwk(),
        {"kty": "EC", "crv": "P-256", "kid": "ec1", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())},
    ]}));
    // Load the new set now (an unknown kid triggers the refetch).
    let claims = entra_claims("mfa", 600);
    let sign_ec = |header: &Value, claims: &Value| {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = ec.sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    };
    let good_ec = sign_ec(&json!({"alg": "ES256", "kid": "ec1"}), &claims);
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&good_ec)).await.0, StatusCode::OK, "a real ES256 token passes");
    let ed_input = format!("{}.{}", b64(&json!({"alg": "EdDSA", "kid": "ed1"})), b64(&claims));
    let good_ed = format!("{ed_input}.{}", URL_SAFE_NO_PAD.encode(ed.sign(ed_input.as_bytes()).as_ref()));
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&good_ed)).await.0, StatusCode::OK, "a real EdDSA token passes");

    let (spy, spy_hits) = counting_server().await;
    let now = mfa_gateway::auth::unix_now();
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let rsa = |header: Value, c: &Value| h.issuer.mint_with_header(&header, c);
    let hs256 = {
        let input = format!("{}.{}", b64(&json!({"alg": "HS256", "kid": "k1"})), b64(&claims));
        let n = URL_SAFE_NO_PAD.decode(h.issuer.jwk()["n"].as_str().unwrap()).unwrap();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &n);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref()))
    };
    let zero_sig = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "ES256", "kid": "ec1"})),
        b64(&claims),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    let valid = h.issuer.mint(&claims);
    let other_key = mfa_gateway::dev::DevIssuer::generate("k1").mint(&claims);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims)),
            "token is not three base64url segments",
        ),
        (
            "alg none with sig",
            format!("{}.{}.AAAA", b64(&json!({"alg": "none"})), b64(&claims)),
            "signing algorithm not allowed",
        ),
        ("HS256 keyed with the RSA public key", hs256, "signing algorithm not allowed"),
        (
            "RS256 header on the EC key",
            rsa(json!({"alg": "RS256", "kid": "ec1"}), &claims),
            "signing algorithm does not match the key",
        ),
        ("ES256 with r = s = 0", zero_sig, "signature verification failed"),
        ("signed by another key", other_key, "signature verification failed"),
        ("unknown kid", rsa(json!({"alg": "RS256", "kid": "nope"}), &claims), "signing key not found"),
        (
            "missing kid, several keys",
            rsa(json!({"alg": "RS256"}), &claims),
            "token has no kid and the issuer has several keys",
        ),
        (
            "crit header",
            rsa(json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}), &claims),
            "critical header extensions are not supported",
        ),
        ("expired", h.issuer.mint(&with(json!({"exp": now - 120}))), "token expired"),
        ("nbf in the future", h.issuer.mint(&with(json!({"nbf": now + 300}))), "token not yet valid"),
        (
            "no exp",
            h.issuer.mint(&{
                let mut c = claims.clone();
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            "token has no exp",
        ),
        ("wrong aud", h.issuer.mint(&with(json!({"aud": "https://graph.microsoft.com"}))), "audience not accepted"),
        ("wrong iss", h.issuer.mint(&with(json!({"iss": "https://evil.example/"}))), "issuer not trusted"),
        (
            "non-GUID tid",
            h.issuer.mint(&with(json!({"tid": "contoso", "iss": "https://sts.windows.net/contoso/"}))),
            "tid is missing or not a GUID",
        ),
        (
            "iss and tid disagree",
            h.issuer.mint(&with(json!({"tid": "11111111-2222-3333-4444-555555555555"}))),
            "issuer not trusted",
        ),
        ("two segments", "abc.def".to_string(), "token is not three base64url segments"),
        ("four segments", format!("{valid}.xyz"), "token is not three base64url segments"),
        ("bad base64", format!("{}.@@@.sig", b64(&json!({"alg": "RS256"}))), "token segment is not base64url"),
        (
            "not JSON",
            format!("{}.{}.sig", URL_SAFE_NO_PAD.encode("not json"), b64(&claims)),
            "token header or payload is not the expected JSON",
        ),
        ("oversized", h.issuer.mint(&with(json!({"pad": "x".repeat(20_000)}))), "token too large"),
    ];
    for (name, token, description) in &cases {
        let (status, headers, body) = get(h.gw.addr, "/v1/offers", Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        let want = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
        assert_eq!(www(&headers), want, "{name}");
    }
    for (name, header) in [
        ("jku", json!({"alg": "RS256", "kid": "evil", "jku": format!("http://{spy}/keys")})),
        ("x5u", json!({"alg": "RS256", "kid": "evil", "x5u": format!("http://{spy}/cert")})),
        ("jwk", json!({"alg": "RS256", "kid": "evil", "jwk": h.issuer.jwk()})),
    ] {
        let (status, _, _) = get(h.gw.addr, "/v1/offers", Some(&rsa(header, &claims))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
    }
    assert_eq!(spy_hits.load(Ordering::SeqCst), 0, "jku/x5u were fetched");

    // Two Authorization headers.
    let req = Request::get(format!("http://{}/v1/offers", h.gw.addr))
        .header("authorization", format!("Bearer {valid}"))
        .header("authorization", format!("Bearer {valid}"))
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(www(&headers).contains("more than one Authorization header"));
    // And the valid token still passes.
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&valid)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn paths_with_a_second_spelling_are_refused() {
    let h = auth_harness(ROUTES, "").await;
    let app = h.issuer.mint(&entra_claims("app", 600));
    for path in
        ["/v1/%63ustomers/c1/users", "/v1//customers/c1", "/v1/offers/../customers/x", "/v1/offers%2F..%2Fcustomers"]
    {
        let (status, _, body) = get(h.gw.addr, path, Some(&app)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
}

#[tokio::test]
async fn the_mfa_refusal_carries_the_configured_request_context_and_realm_stays_off_it() {
    let routes = format!("[challenge]\nrealm = \"partner-center\"\nrequest_context = \"appId=cid-v1:11112222-bbbb-3333-cccc-4444dddd5555\"\n{ROUTES}");
    let h = auth_harness(&routes, "").await;
    let (status, headers, _) = get(h.gw.addr, "/v1/offers", Some(&h.issuer.mint(&entra_claims("nomfa", 600)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["request-context"], "appId=cid-v1:11112222-bbbb-3333-cccc-4444dddd5555");
    assert_eq!(www(&headers), "Bearer error=\"invalid_token\"", "exact, without the realm");
    let (_, headers, _) = get(h.gw.addr, "/v1/offers", None).await;
    assert!(headers.get("request-context").is_none(), "only on the MFA refusal");
    assert_eq!(www(&headers), "Bearer realm=\"partner-center\"");
}
