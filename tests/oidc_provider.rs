//! Against a real, certified OpenID Provider (the npm registry's `oidc-provider`, run by
//! `tests/oidc/provider.mjs`): RFC 9068 access tokens from real authorization-code and
//! client-credentials flows, configured only as the README says, and a key the provider starts
//! signing with right after the gateway loaded its key set; and DPoP-bound tokens (RFC 9449)
//! with a real client, npm's `oauth4webapi`, making the proofs.
//!
//! Needs Node.js and `npm install --prefix tests/oidc` (`.ci/run` does both).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use support::*;

/// The provider process, spoken to one line at a time.
struct Op {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    issuer: String,
}

impl Op {
    fn start() -> Op {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        assert!(
            std::path::Path::new(dir).join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm install --prefix tests/oidc`"
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node on PATH");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut op = Op { child, stdin, lines, issuer: String::new() };
        op.issuer = op.answer("ready");
        op
    }

    /// The next line starting with `word`, without it. The provider's own notices share stdout
    /// and are skipped; the script's `error` lines fail the test.
    fn answer(&self, word: &str) -> String {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(30)).expect("the provider answers");
            if let Some(rest) = line.strip_prefix(word) {
                return rest.trim().to_string();
            }
            assert!(!line.starts_with("error"), "the provider script failed: {line}");
        }
    }

    fn ask(&mut self, command: &str, word: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.answer(word)
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node"]
async fn rfc9068_tokens_from_a_real_provider_and_a_key_rotated_after_start_up() {
    let mut op = tokio::task::block_in_place(Op::start);
    let upstream = echo_upstream().await;
    // Configured as the README's provider table says for an RFC 9068 provider: profile only.
    let text = config_text(
        upstream,
        &format!(
            "[[issuer]]\nissuer = \"{iss}\"\ndiscovery = \"{iss}/.well-known/openid-configuration\"\n\
             profile = \"rfc9068\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n{ROUTES}",
            iss = op.issuer
        ),
    );
    let gw = start(&text).await;
    wait_ready(&gw).await;

    // The provider starts signing with a new key right after the gateway loaded the set.
    let kid = op.ask("rotate", "rotated");
    let mut token = |what: &str| tokio::task::block_in_place(|| op.ask(what, "token"));
    let (mfa, nomfa, app) = (token("user mfa"), token("user pwd"), token("client"));

    let (status, _, body) = get(gw.addr, "/v1/customers/c1/users", Some(&mfa)).await;
    assert_eq!(status, StatusCode::OK, "a token under the new key {kid} passes on its first request: {body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-token-kind"), "app_user");
    assert_eq!(echoed(&body, "x-mfa-gateway-app-id"), "web");
    assert_eq!(echoed(&body, "x-mfa-gateway-user"), "alice");
    let refetches = "mfa_gateway_key_refetches_total{issuer=\"".to_string() + &op.issuer + "\",result=\"ok\"}";
    assert_eq!(metric(&gw, &refetches).await, 1.0);

    for path in ["/v1/offers", "/v1/customers/c1/users"] {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {nomfa}\r\nConnection: close\r\n\r\n");
        let resp = String::from_utf8(raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401 Unauthorized - MFA required\r\n"), "{path}: {resp}");
    }

    let (status, _, body) = get(gw.addr, "/v1/offers", Some(&app)).await;
    assert_eq!(status, StatusCode::OK, "client credentials: app-only on an mfa route: {body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-token-kind"), "app_only");
    assert_eq!(echoed(&body, "x-mfa-gateway-app-id"), "reporting-job");
    assert_eq!(get(gw.addr, "/v1/customers/c1/users", Some(&app)).await.0, StatusCode::FORBIDDEN);

    // One App+User with MFA, two without, two app-only: the status report's ratio is 1/3.
    let (_, _, body) = get(gw.admin_addr, "/report", None).await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        r["totals"],
        serde_json::json!({"app_user_with_mfa": 1, "app_user_without_mfa": 2, "app_only": 2, "app_user_bound": 0}),
        "{body}"
    );
    assert_eq!(r["users_without_mfa"][0]["user"], "alice");
}

/// DPoP (RFC 9449) with a provider and a client neither written here: oidc-provider issues a
/// DPoP-bound token through a real authorization-code flow, and oauth4webapi makes the proof and
/// the call, to the gateway's public origin (passed on to its loopback address, as a front
/// would). What a thief could do with what it saw is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node"]
async fn a_dpop_bound_token_from_a_real_provider_works_only_with_its_clients_proofs() {
    const ORIGIN: &str = "https://api.example.test";
    let mut op = tokio::task::block_in_place(Op::start);
    let text = config_text(
        echo_upstream().await,
        &format!(
            "[[issuer]]\nissuer = \"{iss}\"\ndiscovery = \"{iss}/.well-known/openid-configuration\"\n\
             profile = \"rfc9068\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n{ROUTES}",
            iss = op.issuer
        ),
    )
    .replace("[server]\n", &format!("[server]\npublic_origin = \"{ORIGIN}\"\n"));
    let gw = start(&text).await;
    wait_ready(&gw).await;

    let path = "/v1/customers/c1/users";
    let line = tokio::task::block_in_place(|| op.ask(&format!("dpop mfa http://{} {ORIGIN}{path}", gw.addr), "dpop"));
    let [status, attempts, token, proof]: [&str; 4] = line.split(' ').collect::<Vec<_>>().try_into().unwrap();
    assert_eq!((status, attempts), ("200", "1"), "oauth4webapi's call with its proof");
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(claims["cnf"]["jkt"].is_string(), "the provider bound the token: {claims}");
    assert_eq!(metric(&gw, "mfa_gateway_token_bindings_total{binding=\"dpop\"}").await, 1.0);

    let call = |method: &str, path: &str, authorization: String, proof: Option<String>| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", gw.addr))
            .header("authorization", authorization);
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        req.body(full("")).unwrap()
    };
    let refused = async |req, reason: &str| {
        let (status, headers, body) = send(&client(), req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {body}");
        assert!(headers["www-authenticate"].to_str().unwrap().starts_with("DPoP error="), "{reason}");
        let counted = format!("mfa_gateway_binding_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&gw, &counted).await, 1.0, "{reason}");
    };
    let dpop = format!("DPoP {token}");
    // The token alone, as a bearer token.
    refused(call("GET", path, format!("Bearer {token}"), None), "bound_as_bearer").await;
    // The client's proof again, and for another method and another URI.
    refused(call("GET", path, dpop.clone(), Some(proof.to_string())), "jti").await;
    refused(call("DELETE", path, dpop.clone(), Some(proof.to_string())), "htm").await;
    refused(call("GET", "/v1/customers/c2/users", dpop.clone(), Some(proof.to_string())), "htu").await;
    // A proof the thief makes with a key of its own.
    let thief = support::proofs::Holder::es256().proof("GET", &format!("{ORIGIN}{path}"), token);
    refused(call("GET", path, dpop.clone(), Some(thief)), "jkt").await;

    // With nonces on, the client's first proof is answered use_dpop_nonce and a nonce; its second,
    // with the nonce, passes.
    let secret = temp_dir("oidc-dpop").join("nonce");
    std::fs::write(&secret, "a-nonce-secret-for-the-whole-fleet-0123456789").unwrap();
    let with_nonces = start(&format!("{text}\n[dpop]\nnonce_secret_file = \"{}\"\n", secret.display())).await;
    wait_ready(&with_nonces).await;
    let line =
        tokio::task::block_in_place(|| op.ask(&format!("dpop mfa http://{} {ORIGIN}{path}", with_nonces.addr), "dpop"));
    let answer: Vec<&str> = line.split(' ').collect();
    assert_eq!((answer[0], answer[1]), ("200", "2"), "the nonce flow: refused once, then served");
    assert_eq!(metric(&with_nonces, "mfa_gateway_binding_refusals_total{reason=\"nonce\"}").await, 1.0);
}

/// RFC 8705 with a real provider: oidc-provider binds the token to the certificate its client
/// presented on the token request's TLS connection (`features.mTLS.certificateBoundAccessTokens`).
/// The gateway serves it over a connection with that certificate only; a front proxy's header
/// naming the certificate, sent straight to the gateway, counts for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node"]
async fn a_certificate_bound_token_from_a_real_provider_works_only_over_its_clients_certificate() {
    use support::tls::{client_tls, forged_front_headers, https_get, https_get_with, self_signed, Ca};
    let mut op = tokio::task::block_in_place(Op::start);
    let (ca, d) = (Ca::new("test ca"), support::tls::dir());
    let (server, mine, other) = (ca.leaf(), self_signed("client one"), self_signed("client two"));
    for (name, content) in [
        ("ca.pem", &ca.pem),
        ("server.crt", &server.0),
        ("server.key", &server.1),
        ("client.crt", &mine.0),
        ("client.key", &mine.1),
    ] {
        support::tls::write(&d, name, content);
    }
    let text = format!(
        "{}\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_auth = \"any\"\n",
        config_text(
            echo_upstream().await,
            &format!(
                "[[issuer]]\nissuer = \"{iss}\"\ndiscovery = \"{iss}/.well-known/openid-configuration\"\n\
                 profile = \"rfc9068\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n{ROUTES}",
                iss = op.issuer
            ),
        ),
        d.join("server.crt").display(),
        d.join("server.key").display()
    );
    let gw = start(&text).await;
    wait_ready(&gw).await;

    let token = tokio::task::block_in_place(|| op.ask(&format!("mtls mfa {}", d.display()), "mtls"));
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["cnf"]["x5t#S256"].as_str(),
        Some(support::tls::x5t_s256(&mine.0).as_str()),
        "the provider bound the token to the client's certificate: {claims}"
    );

    let over = |identity: Option<&(String, String)>| client_tls(&ca.pem, &[b"http/1.1"], identity);
    let path = "/v1/customers/c1/users";
    let (_, status, _, body) = https_get(gw.addr, over(Some(&mine)), path, Some(&token)).await.unwrap();
    assert_eq!(status, StatusCode::OK, "over the client's certificate: {body}");
    assert_eq!(metric(&gw, "mfa_gateway_token_bindings_total{binding=\"mtls\"}").await, 1.0);

    let forged = forged_front_headers(&mine.0);
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cases = [("no certificate", None, &[][..]), ("another certificate", Some(&other), &[][..])];
    let forging = [
        ("a forged front header", None, &forged[..]),
        ("another certificate and forged headers", Some(&other), &forged[..]),
    ];
    for (who, identity, extra) in cases.into_iter().chain(forging) {
        let (_, status, headers, _) = https_get_with(gw.addr, over(identity), path, Some(&token), extra).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{who}");
        assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer error=\"invalid_token\""), "{who}");
    }
    assert_eq!(metric(&gw, "mfa_gateway_binding_refusals_total{reason=\"x5t\"}").await, 4.0);
}
