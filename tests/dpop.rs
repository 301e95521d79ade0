//! DPoP-bound tokens (RFC 9449): a token whose `cnf.jkt` names a key passes only with the `DPoP`
//! scheme and a proof signed by that key for this request. The proofs here are minted with keys
//! made in the test (ES256 and Ed25519), each failing case failing one check of §4.3.

mod support;

use aws_lc_rs::digest;
use base64::Engine;
use http::{HeaderMap, Request, StatusCode};
use mfa_gateway::dev::{entra_claims, DevIssuer};
use serde_json::{json, Value};
use support::proofs::{b64, claims, now, Holder};
use support::*;

const ORIGIN: &str = "https://api.example.test";
const ALGS: &str = "algs=\"ES256 ES384 EdDSA RS256 PS256 PS384\"";

/// A token with MFA (or not) bound to `holder`'s key.
fn bound_token(issuer: &DevIssuer, kind: &str, holder: &Holder) -> String {
    let mut c = entra_claims(kind, 600);
    c["cnf"] = json!({"jkt": holder.jkt()});
    issuer.mint(&c)
}

struct Harness {
    issuer: DevIssuer,
    gw: mfa_gateway::app::Running,
    _keys: std::sync::Arc<mfa_gateway::dev::KeyServer>,
}

/// A gateway behind `ORIGIN` (unless `origin` is empty) with the Partner Center routes:
/// `customers` (app_user_mfa) and `bound` (app_user_mfa, DPoP required).
async fn harness(origin: &str) -> Harness {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    harness_for(origin, issuer, keys, "").await
}

/// The same for an issuer of the caller's, with `extra` tables.
async fn harness_for(
    origin: &str,
    issuer: DevIssuer,
    keys: std::sync::Arc<mfa_gateway::dev::KeyServer>,
    extra: &str,
) -> Harness {
    let routes = "[[route]]\nname = \"customers\"\npath = \"/v1/customers/{*rest}\"\nrequire = \"app_user_mfa\"\n\
                  [[route]]\nname = \"bound\"\npath = \"/v1/bound/{*rest}\"\nrequire = \"app_user_mfa\"\nbinding = \"dpop\"\n";
    let mut text =
        config_text(echo_upstream().await, &format!("{}\n{routes}{extra}", issuer_table(TEMPLATE_ISSUER, &keys)));
    if !origin.is_empty() {
        text = text.replace("[server]\n", &format!("[server]\npublic_origin = \"{origin}\"\n"));
    }
    let gw = start(&text).await;
    wait_ready(&gw).await;
    Harness { issuer, gw, _keys: keys }
}

/// Sends `method` `path` with `authorization` and, if given, one `DPoP` header.
async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    authorization: &str,
    proof: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", h.gw.addr))
        .header("authorization", authorization);
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    send(&client(), req.body(full("")).unwrap()).await
}

fn challenges(headers: &HeaderMap) -> Vec<String> {
    headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

async fn refusals(h: &Harness, reason: &str) -> f64 {
    metric(&h.gw, &format!("mfa_gateway_binding_refusals_total{{reason=\"{reason}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_passes_with_its_proof() {
    logs();
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let h = harness_for(ORIGIN, issuer, keys, "[audit]\nenabled = true\n").await;
    let mut ids = Vec::new();
    for holder in [Holder::es256(), Holder::ed25519()] {
        let token = bound_token(&h.issuer, "mfa", &holder);
        // The proof names the public origin, not the loopback address the gateway listens on;
        // the query is not part of htu.
        let proof = holder.proof("GET", &format!("{ORIGIN}/v1/customers/x?page=2"), &token);
        let (status, headers, body) =
            call(&h, "GET", "/v1/customers/x?page=2", &format!("DPoP {token}"), Some(&proof)).await;
        assert_eq!(status, StatusCode::OK, "{} proof: {body}", holder.alg());
        ids.push(headers["x-request-id"].to_str().unwrap().to_owned());
        // The proof goes where the token goes (`forward_authorization`, on by default).
        assert_eq!(echoed(&body, "dpop"), proof.as_str());
        assert_eq!(echoed(&body, "x-mfa-gateway-mfa"), "true");
    }
    assert_eq!(metric(&h.gw, "mfa_gateway_token_bindings_total{binding=\"dpop\"}").await, 2.0);
    // The audit line says how the token was bound.
    let audited = |id: &String| {
        log_lines()
            .into_iter()
            .find(|l| l["target"] == "mfa_gateway::audit" && l["request_id"] == id.as_str())
            .map(|l| l["binding"].clone())
    };
    eventually("both audit lines", std::time::Duration::from_secs(2), async || {
        ids.iter().all(|id| audited(id).is_some())
    })
    .await;
    assert!(ids.iter().all(|id| audited(id) == Some(json!("dpop"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_bound_token_is_refused_as_bearer_and_with_another_keys_proof() {
    let h = harness(ORIGIN).await;
    let (owner, thief) = (Holder::es256(), Holder::es256());
    let token = bound_token(&h.issuer, "mfa", &owner);
    let url = format!("{ORIGIN}/v1/customers/x");

    let (status, headers, body) = call(&h, "GET", "/v1/customers/x", &format!("Bearer {token}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        challenges(&headers),
        [format!(
            "DPoP error=\"invalid_token\", error_description=\"a DPoP-bound token needs the DPoP scheme and a proof\", {ALGS}"
        )]
    );
    assert!(!body.contains(&token[..20]), "never echoed");
    assert_eq!(refusals(&h, "bound_as_bearer").await, 1.0);

    // The thief's own, valid proof: the key is not the token's.
    let proof = thief.proof("GET", &url, &token);
    let (status, headers, _) = call(&h, "GET", "/v1/customers/x", &format!("DPoP {token}"), Some(&proof)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenges(&headers)[0].starts_with("DPoP error=\"invalid_token\""), "{:?}", challenges(&headers));
    assert_eq!(refusals(&h, "jkt").await, 1.0);

    // An unbound token with the DPoP scheme.
    let plain = h.issuer.mint(&entra_claims("mfa", 600));
    let proof = owner.proof("GET", &url, &plain);
    let (status, _, body) = call(&h, "GET", "/v1/customers/x", &format!("DPoP {plain}"), Some(&proof)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(refusals(&h, "not_bound").await, 1.0);
}

/// One proof per check of RFC 9449 §4.3, each failing that check only, each refused with its
/// reason in the challenge, the body and the metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_failing_each_check_is_refused_with_its_reason() {
    let h = harness(ORIGIN).await;
    let holder = Holder::es256();
    let token = bound_token(&h.issuer, "mfa", &holder);
    let other_token = bound_token(&h.issuer, "nomfa", &holder);
    let url = format!("{ORIGIN}/v1/customers/x");
    let good = || claims("GET", &url, &token);
    let with = |name: &str, v: Value| {
        let mut c = good();
        c[name] = v;
        holder.sign_proof(&holder.header(), &c)
    };
    let header_with = |name: &str, v: Value| {
        let mut hd = holder.header();
        hd[name] = v;
        holder.sign_proof(&hd, &good())
    };
    let private_jwk = {
        let mut jwk = holder.jwk();
        // Any private member refuses the proof; its value does not matter.
        jwk["d"] = json!(b64(&[7u8; 32]));
        header_with("jwk", jwk)
    };
    let bad_signature = {
        let p = holder.proof("GET", &url, &token);
        let (rest, sig) = p.rsplit_once('.').unwrap();
        let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[5] ^= 1;
        format!("{rest}.{}", b64(&sig))
    };
    let replayed = holder.proof("GET", &url, &token);
    assert_eq!(call(&h, "GET", "/v1/customers/x", &format!("DPoP {token}"), Some(&replayed)).await.0, StatusCode::OK);

    let cases: Vec<(&str, String, &str)> = vec![
        ("typ", header_with("typ", json!("JWT")), "the DPoP proof's typ is not dpop+jwt"),
        ("alg", header_with("alg", json!("HS256")), "the DPoP proof's algorithm is not accepted"),
        ("jwk", private_jwk, "the DPoP proof's jwk is not a public signing key"),
        ("signature", bad_signature, "the DPoP proof's signature does not verify"),
        ("htm", with("htm", json!("POST")), "the DPoP proof is for another method"),
        ("htu", with("htu", json!(format!("{ORIGIN}/v1/customers/y"))), "the DPoP proof is for another URI"),
        ("htu", with("htu", json!(format!("http://127.0.0.1/v1/customers/x"))), "the DPoP proof is for another URI"),
        ("iat", with("iat", json!(now() - 120)), "the DPoP proof's iat is outside the accepted window"),
        ("jti", replayed, "the DPoP proof was used before"),
        (
            "ath",
            with("ath", json!(b64(digest::digest(&digest::SHA256, other_token.as_bytes()).as_ref()))),
            "the DPoP proof is for another access token",
        ),
    ];
    for (reason, proof, description) in cases {
        let before = refusals(&h, reason).await;
        let (status, headers, body) = call(&h, "GET", "/v1/customers/x", &format!("DPoP {token}"), Some(&proof)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {body}");
        assert_eq!(
            challenges(&headers),
            [format!("DPoP error=\"invalid_dpop_proof\", error_description=\"{description}\", {ALGS}")],
            "{reason}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "invalid_dpop_proof", "{reason}");
        assert_eq!(refusals(&h, reason).await, before + 1.0, "{reason}");
    }
    // Two proofs, and none.
    let (a, b) = (holder.proof("GET", &url, &token), holder.proof("GET", &url, &token));
    let req = Request::get(format!("http://{}/v1/customers/x", h.gw.addr))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", a)
        .header("dpop", b)
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(refusals(&h, "multiple").await, 1.0);
    assert_eq!(call(&h, "GET", "/v1/customers/x", &format!("DPoP {token}"), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(refusals(&h, "missing").await, 1.0);
}

/// RFC 9449 §7.2 beside the mandated bytes: the status line and `Bearer error="invalid_token"`
/// exactly, and a `DPoP` challenge as a second header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_client_without_mfa_gets_the_partner_center_refusal_and_a_dpop_challenge() {
    let h = harness(ORIGIN).await;
    let holder = Holder::ed25519();
    let token = bound_token(&h.issuer, "nomfa", &holder);
    let proof = holder.proof("GET", &format!("{ORIGIN}/v1/customers/x"), &token);
    let request =
        format!("GET /v1/customers/x HTTP/1.1\r\nHost: x\r\nAuthorization: DPoP {token}\r\nDPoP: {proof}\r\nConnection: close\r\n\r\n");
    let raw = String::from_utf8(raw(h.gw.addr, request.as_bytes(), std::time::Duration::from_secs(5)).await).unwrap();
    assert!(raw.starts_with("HTTP/1.1 401 Unauthorized - MFA required\r\n"), "{raw}");
    let lines: Vec<&str> = raw.lines().filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:")).collect();
    assert_eq!(
        lines,
        ["www-authenticate: Bearer error=\"invalid_token\"".to_string(), format!("www-authenticate: DPoP {ALGS}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_requiring_dpop_refuses_bearer_tokens_and_takes_bound_ones() {
    let h = harness(ORIGIN).await;
    let plain = h.issuer.mint(&entra_claims("mfa", 600));
    let (status, headers, _) = call(&h, "GET", "/v1/bound/x", &format!("Bearer {plain}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenges(&headers),
        [format!(
            "DPoP error=\"invalid_token\", error_description=\"this operation requires a DPoP-bound token\", {ALGS}"
        )]
    );
    assert_eq!(refusals(&h, "binding_required").await, 1.0);
    // The same token passes where no binding is required.
    assert_eq!(call(&h, "GET", "/v1/customers/x", &format!("Bearer {plain}"), None).await.0, StatusCode::OK);
    assert_eq!(metric(&h.gw, "mfa_gateway_token_bindings_total{binding=\"bearer\"}").await, 1.0);

    let holder = Holder::es256();
    let token = bound_token(&h.issuer, "mfa", &holder);
    let proof = holder.proof("DELETE", &format!("{ORIGIN}/v1/bound/x"), &token);
    assert_eq!(call(&h, "DELETE", "/v1/bound/x", &format!("DPoP {token}"), Some(&proof)).await.0, StatusCode::OK);

    // The status report: of the application's two App+User requests that passed (the one refused
    // for its binding is not counted), one was DPoP-bound.
    let (_, _, body) = get(h.gw.admin_addr, "/report", None).await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["totals"]["app_user_bound"], 1, "{body}");
    assert_eq!(r["applications"][0]["app_user_bound_ratio"].as_f64(), Some(0.5), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_origin_bound_tokens_are_refused() {
    let h = harness("").await;
    let holder = Holder::es256();
    let token = bound_token(&h.issuer, "mfa", &holder);
    // Whatever origin the proof names, there is none to check it against.
    for origin in [ORIGIN.to_string(), format!("http://{}", h.gw.addr)] {
        let proof = holder.proof("GET", &format!("{origin}/v1/customers/x"), &token);
        let (status, _, body) = call(&h, "GET", "/v1/customers/x", &format!("DPoP {token}"), Some(&proof)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(refusals(&h, "no_public_origin").await, 2.0);
    // Unbound tokens are served as before.
    let plain = h.issuer.mint(&entra_claims("mfa", 600));
    assert_eq!(call(&h, "GET", "/v1/customers/x", &format!("Bearer {plain}"), None).await.0, StatusCode::OK);
}

/// Authorization-only mode: the front's question carries the token and its proof; the proof is
/// checked against the original request (read from the front's headers) at `[authz]
/// public_origin`, and the answer echoes neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_proxys_question_checks_the_proof_against_the_original_request() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let tables = authz_tables("nginx", &format!("public_origin = \"{ORIGIN}\"\n"), &keys, "");
    let gw = start(&config_text(echo_upstream().await, &tables)).await;
    wait_ready(&gw).await;
    let holder = Holder::es256();
    let token = bound_token(&issuer, "mfa", &holder);
    let ask = |proof: String, method: &str| {
        Request::get(format!("http://{}/", gw.authz_addr.unwrap()))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .header("x-original-method", method)
            .header("x-original-uri", "/v1/customers/c1/users?top=5")
            .body(full(""))
            .unwrap()
    };
    let proof = holder.proof("POST", &format!("{ORIGIN}/v1/customers/c1/users"), &token);
    let (status, headers, _) = send(&client(), ask(proof.clone(), "POST")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-mfa-gateway-mfa"], "true");
    assert!(headers.get("dpop").is_none() && headers.get("authorization").is_none(), "never echoed");
    // The same proof again: a replay. A proof for the question's own request (GET /) is not one
    // for the original request.
    assert_eq!(send(&client(), ask(proof, "POST")).await.0, StatusCode::UNAUTHORIZED);
    let for_question = holder.proof("GET", &format!("{ORIGIN}/"), &token);
    let (status, headers, _) = send(&client(), ask(for_question, "GET")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenges(&headers)[0].contains("the DPoP proof is for another URI"), "{:?}", challenges(&headers));
}

/// Nonces (§9) from a secret file that two replicas share: a proof without one is answered
/// `use_dpop_nonce` with a fresh nonce, a proof with it passes on either replica, every DPoP
/// answer hands out the current nonce, and a nonce under another secret is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_from_a_shared_secret_work_on_every_replica() {
    let dir = temp_dir("dpop-nonce");
    std::fs::write(dir.join("nonce"), "a-secret-both-replicas-read-0123456789\n").unwrap();
    std::fs::write(dir.join("other"), "another-secret-another-fleet-0123456789\n").unwrap();
    let table = |f: &str| format!("[dpop]\nnonce_secret_file = \"{}\"\n", dir.join(f).display());
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let a = harness_for(ORIGIN, issuer, keys.clone(), &table("nonce")).await;
    let b = harness_for(ORIGIN, DevIssuer::generate("unused"), keys.clone(), &table("nonce")).await;
    let elsewhere = harness_for(ORIGIN, DevIssuer::generate("unused"), keys, &table("other")).await;
    let holder = Holder::ed25519();
    let token = bound_token(&a.issuer, "mfa", &holder);
    let url = format!("{ORIGIN}/v1/customers/x");
    let with_nonce = |nonce: &str| {
        let mut c = claims("GET", &url, &token);
        c["nonce"] = json!(nonce);
        holder.sign_proof(&holder.header(), &c)
    };
    let dpop = format!("DPoP {token}");

    let (status, headers, _) =
        call(&a, "GET", "/v1/customers/x", &dpop, Some(&holder.proof("GET", &url, &token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenges(&headers),
        [format!(
            "DPoP error=\"use_dpop_nonce\", error_description=\"a DPoP proof with a fresh nonce from this server is required\", {ALGS}"
        )]
    );
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_owned();
    assert_eq!(refusals(&a, "nonce").await, 1.0);

    let (status, headers, body) = call(&a, "GET", "/v1/customers/x", &dpop, Some(&with_nonce(&nonce))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.contains_key("dpop-nonce"), "a DPoP answer hands out the current nonce");
    // Another replica with the same secret takes the same nonce.
    assert_eq!(call(&b, "GET", "/v1/customers/x", &dpop, Some(&with_nonce(&nonce))).await.0, StatusCode::OK);
    // A fleet with another secret does not, and says which nonce it wants.
    let (status, headers, _) = call(&elsewhere, "GET", "/v1/customers/x", &dpop, Some(&with_nonce(&nonce))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_ne!(headers["dpop-nonce"].to_str().unwrap(), nonce);
    // A made-up nonce is refused.
    assert_eq!(
        call(&a, "GET", "/v1/customers/x", &dpop, Some(&with_nonce("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// A full replay store refuses new proofs (503, `dpop_busy`) rather than forget one early: the
/// first proof's replay is still refused as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replay_store_refuses_new_proofs_and_still_knows_the_old_ones() {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let h = harness_for(ORIGIN, issuer, keys, "[dpop]\nmax_proofs = 1000\n").await;
    let holder = Holder::ed25519();
    let token = bound_token(&h.issuer, "mfa", &holder);
    let url = format!("{ORIGIN}/v1/customers/x");
    let dpop = format!("DPoP {token}");
    let first = holder.proof("GET", &url, &token);
    assert_eq!(call(&h, "GET", "/v1/customers/x", &dpop, Some(&first)).await.0, StatusCode::OK);
    for _ in 1..1000 {
        let proof = holder.proof("GET", &url, &token);
        assert_eq!(call(&h, "GET", "/v1/customers/x", &dpop, Some(&proof)).await.0, StatusCode::OK);
    }
    let (status, headers, body) =
        call(&h, "GET", "/v1/customers/x", &dpop, Some(&holder.proof("GET", &url, &token))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(refusals(&h, "store_full").await, 1.0);
    assert_eq!(
        metric(
            &h.gw,
            r#"mfa_gateway_requests_total{decision="dpop_busy",mode="proxy",route="customers",token_kind="none"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        call(&h, "GET", "/v1/customers/x", &dpop, Some(&first)).await.0,
        StatusCode::UNAUTHORIZED,
        "still a replay"
    );
    assert_eq!(refusals(&h, "jti").await, 1.0);
}
