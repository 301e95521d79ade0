//! TLS on both sides, with certificates made here: ALPN h2/http1.1, the MFA refusal over both,
//! clean refusals of plain HTTP and TLS 1.1, reload, mutual TLS, HTTPS upstreams and key servers.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mfa_gateway::dev::{entra_claims, DevIssuer};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use support::tls::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn h2_and_http11_by_alpn_and_the_mfa_refusal_over_both() {
    let ca = Ca::new("test ca");
    let d = dir();
    let h = tls_gateway(&d, &ca, "").await;
    let mfa = h.issuer.mint(&entra_claims("mfa", 600));
    let nomfa = h.issuer.mint(&entra_claims("nomfa", 600));

    let (v, status, _, body) =
        https_get(h.gw.addr, client_tls(&ca.pem, &[b"h2"], None), "/v1/offers", Some(&mfa)).await.unwrap();
    assert_eq!((v, status), (Version::HTTP_2, StatusCode::OK));
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    let (v, status, _, _) =
        https_get(h.gw.addr, client_tls(&ca.pem, &[b"http/1.1"], None), "/v1/offers", Some(&mfa)).await.unwrap();
    assert_eq!((v, status), (Version::HTTP_11, StatusCode::OK));

    // HTTP/2: no reason phrase exists; status 401 and the same header.
    let (_, status, headers, _) =
        https_get(h.gw.addr, client_tls(&ca.pem, &[b"h2"], None), "/v1/offers", Some(&nomfa)).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    // HTTP/1.1 over TLS: the exact status line, as raw bytes.
    let mut s = tls_connect(h.gw.addr, client_tls(&ca.pem, &[b"http/1.1"], None)).await.unwrap();
    s.write_all(
        format!(
            "GET /v1/offers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {nomfa}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 401 Unauthorized - MFA required\r\n"), "{text}");
}

#[tokio::test]
async fn plain_http_and_tls_1_1_are_refused_cleanly() {
    let ca = Ca::new("test ca");
    let d = dir();
    let h = tls_gateway(&d, &ca, "").await;

    let resp = raw(h.gw.addr, b"GET /v1/offers HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n") && text.contains("speaks HTTPS"), "{text}");

    // A ClientHello offering only TLS 1.1 (record and hello version 3.2, two RSA suites).
    let mut hello = vec![0x03, 0x02];
    hello.extend([0u8; 32]); // random
    hello.extend([0x00, 0x00, 0x04, 0x00, 0x2f, 0x00, 0x35, 0x01, 0x00]); // no session id, suites, null compression
    let mut hs = vec![0x01, 0x00, 0x00, hello.len() as u8];
    hs.extend(&hello);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, hs.len() as u8];
    record.extend(&hs);
    let t = std::time::Instant::now();
    let resp = raw(h.gw.addr, &record, Duration::from_secs(5)).await;
    assert!(t.elapsed() < Duration::from_secs(4), "the gateway hung on a TLS 1.1 hello");
    assert_eq!(resp.first(), Some(&0x15), "an alert record, then close: {resp:?}");
    // Still serving.
    let mfa = h.issuer.mint(&entra_claims("mfa", 600));
    let (_, status, _, _) =
        https_get(h.gw.addr, client_tls(&ca.pem, &[b"h2"], None), "/v1/offers", Some(&mfa)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(metric(&h.gw, "mfa_gateway_tls_handshake_errors_total").await >= 2.0);
}

#[tokio::test]
async fn certificate_reload_keeps_open_connections_and_refuses_a_broken_file() {
    let (ca_a, ca_b) = (Ca::new("ca a"), Ca::new("ca b"));
    let d = dir();
    let h = tls_gateway(&d, &ca_a, "").await;
    let mfa = h.issuer.mint(&entra_claims("mfa", 600));

    // An HTTP/1.1 connection opened under certificate A.
    let io = TokioIo::new(tls_connect(h.gw.addr, client_tls(&ca_a.pem, &[b"http/1.1"], None)).await.unwrap());
    let (mut old_conn, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = || {
        Request::get("/v1/offers")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {mfa}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(old_conn.send_request(req()).await.unwrap().status(), StatusCode::OK);

    // Swap in certificate B: new handshakes see it, the open connection keeps working.
    let (cert_b, key_b) = ca_b.leaf();
    write(&d, "key.pem", &key_b);
    write(&d, "cert.pem", &cert_b);
    eventually("new connections get certificate B", Duration::from_secs(5), async || {
        https_get(h.gw.addr, client_tls(&ca_b.pem, &[b"h2"], None), "/healthz", None).await.is_ok()
    })
    .await;
    assert!(https_get(h.gw.addr, client_tls(&ca_a.pem, &[b"h2"], None), "/healthz", None).await.is_err());
    assert_eq!(old_conn.send_request(req()).await.unwrap().status(), StatusCode::OK, "old connection dropped");

    // A broken file is refused (the reload counts an error); certificate B keeps serving.
    // (The key and certificate above are written one after the other, so a reload may already
    // have seen a key without its certificate and counted an error.)
    let errors = r#"mfa_gateway_config_reloads_total{result="error"}"#;
    let before = metric(&h.gw, errors).await;
    write(&d, "cert.pem", "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n");
    eventually("the broken certificate refused", Duration::from_secs(5), async || metric(&h.gw, errors).await > before)
        .await;
    assert!(https_get(h.gw.addr, client_tls(&ca_b.pem, &[b"h2"], None), "/healthz", None).await.is_ok());
}

#[tokio::test]
async fn mutual_tls_required_refuses_a_client_without_a_certificate() {
    let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("client ca"));
    let d = dir();
    let client_ca_file = write(&d, "clients.pem", &client_ca.pem);
    let h = tls_gateway(
        &d,
        &server_ca,
        &format!("client_ca = \"{}\"\nclient_auth = \"required\"", client_ca_file.display()),
    )
    .await;
    let mfa = h.issuer.mint(&entra_claims("mfa", 600));
    let no_cert =
        https_get(h.gw.addr, client_tls(&server_ca.pem, &[b"http/1.1"], None), "/v1/offers", Some(&mfa)).await;
    assert!(no_cert.is_err(), "served without a client certificate: {no_cert:?}");
    let stranger = Ca::new("other ca").leaf();
    let wrong =
        https_get(h.gw.addr, client_tls(&server_ca.pem, &[b"http/1.1"], Some(&stranger)), "/v1/offers", Some(&mfa))
            .await;
    assert!(wrong.is_err(), "served a certificate from an unknown CA");
    let good = client_ca.leaf();
    let (_, status, _, _) =
        https_get(h.gw.addr, client_tls(&server_ca.pem, &[b"http/1.1"], Some(&good)), "/v1/offers", Some(&mfa))
            .await
            .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// RFC 8705: a token bound to a client certificate's thumbprint (`cnf.x5t#S256`) passes only
/// over a connection that presented that certificate. With `client_auth = "any"`, a self-signed
/// one will do, and a connection without one is served bearer tokens as before.
#[tokio::test]
async fn a_certificate_bound_token_passes_only_over_its_certificates_connection() {
    let server_ca = Ca::new("server ca");
    let d = dir();
    let bound_route = "[[route]]\nname = \"bound\"\npath = \"/v1/bound\"\nrequire = \"mfa\"\nbinding = \"mtls\"\n";
    let h = tls_gateway(&d, &server_ca, &format!("client_auth = \"any\"\n{bound_route}")).await;
    let (mine, other) = (self_signed("client one"), self_signed("client two"));
    let mut claims = entra_claims("mfa", 600);
    claims["cnf"] = json!({"x5t#S256": x5t_s256(&mine.0)});
    let token = h.issuer.mint(&claims);
    let over = |identity: Option<&(String, String)>| client_tls(&server_ca.pem, &[b"http/1.1"], identity);

    let (_, status, _, body) = https_get(h.gw.addr, over(Some(&mine)), "/v1/offers", Some(&token)).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(metric(&h.gw, "mfa_gateway_token_bindings_total{binding=\"mtls\"}").await, 1.0);
    for (who, identity) in [("no certificate", None), ("another certificate", Some(&other))] {
        let (_, status, headers, _) = https_get(h.gw.addr, over(identity), "/v1/offers", Some(&token)).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{who}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer error=\"invalid_token\", error_description=\"the token is bound to a client certificate this \
             connection did not present\"",
            "{who}"
        );
    }
    assert_eq!(metric(&h.gw, "mfa_gateway_binding_refusals_total{reason=\"x5t\"}").await, 2.0);

    // An unbound token: served without a certificate as before; refused where the route
    // requires certificate binding, with a Bearer challenge.
    let plain = h.issuer.mint(&entra_claims("mfa", 600));
    assert_eq!(https_get(h.gw.addr, over(None), "/v1/offers", Some(&plain)).await.unwrap().1, StatusCode::OK);
    let (_, status, headers, _) = https_get(h.gw.addr, over(Some(&mine)), "/v1/bound", Some(&plain)).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\", error_description=\"this operation requires a token bound to the client certificate\""
    );
    assert_eq!(https_get(h.gw.addr, over(Some(&mine)), "/v1/bound", Some(&token)).await.unwrap().1, StatusCode::OK);
}

fn https_config(upstream: &str, upstream_ca: &Path, issuer_block: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{upstream}\"\nca_file = \"{}\"\n[audit]\nenabled = false\n{issuer_block}\n{ROUTES}",
        upstream_ca.display()
    )
}

#[tokio::test]
async fn https_upstream_and_https_key_server_with_private_cas() {
    let (up_ca, key_ca) = (Ca::new("upstream ca"), Ca::new("key server ca"));
    let d = dir();
    let up = tls_server(&up_ca.leaf(), |req| {
        let body = json!({"version": format!("{:?}", req.version()), "path": req.uri().path(),
                          "kind": req.headers().get("x-mfa-gateway-token-kind").map(|v| v.to_str().unwrap())});
        Response::new(Full::new(Bytes::from(body.to_string())))
    })
    .await;
    let issuer = DevIssuer::generate("k1");
    let jwks = json!({"keys": [issuer.jwk()]}).to_string();
    let key_server = Arc::new(std::sync::OnceLock::<SocketAddr>::new());
    let ks = key_server.clone();
    let key_addr = tls_server(&key_ca.leaf(), move |req| {
        let body = match req.uri().path() {
            "/.well-known/openid-configuration" => json!({"issuer": TEMPLATE_ISSUER,
                "jwks_uri": format!("https://localhost:{}/jwks.json", ks.get().unwrap().port())})
            .to_string(),
            _ => jwks.clone(),
        };
        Response::new(Full::new(Bytes::from(body)))
    })
    .await;
    key_server.set(key_addr).unwrap();
    let issuer_block = format!(
        "[[issuer]]\nissuer = \"{TEMPLATE_ISSUER}\"\ndiscovery = \"https://localhost:{}/.well-known/openid-configuration\"\n\
         ca_file = \"{}\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n",
        key_addr.port(),
        write(&d, "key-ca.pem", &key_ca.pem).display()
    );
    let gw = start(&https_config(
        &format!("https://localhost:{}", up.port()),
        &write(&d, "up-ca.pem", &up_ca.pem),
        &issuer_block,
    ))
    .await;
    wait_ready(&gw).await;
    let (status, _, body) = get(gw.addr, "/v1/offers", Some(&issuer.mint(&entra_claims("mfa", 600)))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["version"], "HTTP/2.0", "HTTP/2 to the upstream when its ALPN offers it");
    assert_eq!(seen["kind"], "app_user");
}

/// A discovery document fetched over https that names an http `jwks_uri` is refused: the keys
/// would come over a connection anyone on the path can rewrite.
#[tokio::test]
async fn an_https_discovery_document_pointing_at_http_keys_is_refused() {
    logs();
    let key_ca = Ca::new("key server ca");
    let d = dir();
    let issuer = DevIssuer::generate("k1");
    // The keys themselves, served for real over plain http.
    let (_, plain_keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let jwks_uri = plain_keys.jwks_url();
    let discovery = tls_server(&key_ca.leaf(), move |_req| {
        let doc = json!({"issuer": TEMPLATE_ISSUER, "jwks_uri": jwks_uri});
        Response::new(Full::new(Bytes::from(doc.to_string())))
    })
    .await;
    let issuer_block = format!(
        "[[issuer]]\nissuer = \"{TEMPLATE_ISSUER}\"\ndiscovery = \"https://localhost:{}/.well-known/openid-configuration\"\n\
         ca_file = \"{}\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n",
        discovery.port(),
        write(&d, "key-ca.pem", &key_ca.pem).display()
    );
    let up = echo_upstream().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"http://{up}\"\n[audit]\nenabled = false\n{issuer_block}\n{ROUTES}"
    );
    let gw = start(&text).await;
    let failed = format!("mfa_gateway_key_fetches_total{{issuer=\"{TEMPLATE_ISSUER}\",result=\"error\"}}");
    eventually("the refusal counted", Duration::from_secs(5), async || metric(&gw, &failed).await >= 1.0).await;
    let (status, _, why) = get(gw.admin_addr, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(why.contains("refused") && why.contains("plain http"), "{why}");
    let (status, _, _) = get(gw.addr, "/v1/offers", Some(&issuer.mint(&entra_claims("mfa", 600)))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no keys, no pass");
    let logged = log_lines().iter().any(|l| {
        l["message"] == "key set fetch failed" && l["error"].as_str().is_some_and(|e| e.contains("plain http"))
    });
    assert!(logged, "the refusal is logged");
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_502_and_the_why_stays_in_the_log() {
    let (up_ca, other_ca) = (Ca::new("upstream ca"), Ca::new("some other ca"));
    let d = dir();
    let up = tls_server(&up_ca.leaf(), |_req| Response::new(Full::new(Bytes::from("secret")))).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"https://localhost:{}\"\nca_file = \"{}\"\n[defaults]\nrequire = \"public\"\n",
        up.port(),
        write(&d, "other.pem", &other_ca.pem).display()
    );
    let gw = start(&text).await;
    let (status, headers, body) = get(gw.addr, "/x", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(body, format!("the upstream could not be reached (request id {id})\n"));
    assert_eq!(metric(&gw, "mfa_gateway_upstream_errors_total{kind=\"tls\"}").await, 1.0);
}

#[tokio::test]
async fn certificates_are_chosen_by_sni() {
    let ca = Ca::new("test ca");
    let d = dir();
    let (b_cert, b_key) = ca.leaf_for(&["b.test", "*.wild.test"]);
    let extra = format!(
        "[[server.tls.sni]]\nnames = [\"b.test\", \"*.wild.test\"]\ncert = \"{}\"\nkey = \"{}\"",
        write(&d, "b.pem", &b_cert).display(),
        write(&d, "b-key.pem", &b_key).display()
    );
    let h = tls_gateway(&d, &ca, &extra).await;
    // The client verifies the certificate against the name it asked for, so a handshake that
    // completes proves which certificate was served.
    for (name, ok) in
        [("b.test", true), ("x.wild.test", true), ("localhost", true), ("a.b.wild.test", false), ("other.test", false)]
    {
        let tcp = TcpStream::connect(h.gw.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(&ca.pem, &[b"http/1.1"], None)));
        let r = connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await;
        assert_eq!(r.is_ok(), ok, "{name}: {:?}", r.err());
    }
}
