//! Only what was judged reaches the upstream: an `h2c` upgrade never opens a tunnel past the
//! decision (against Hypercorn, an upstream that really accepts it), a WebSocket upgrade does,
//! judged on its route; a client's `Connection` removes only what the client sent; headers that
//! rewrite the method or URL never pass; `forward_authorization = false` holds on every route.

mod support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mfa_gateway::dev::{entra_claims, DevIssuer, KeyServer};
use serde_json::Value;
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/upgrade/asgi.py");

const ROUTES_WITH_WS: &str = r#"
[[route]]
name = "ws"
path = "/ws"
require = "app_user_mfa"
"#;

/// Hypercorn serving `tests/upgrade/asgi.py`: every request it serves is a JSON line in `log`.
struct Hypercorn {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Hypercorn {
    fn start() -> Hypercorn {
        let log = temp_dir("hypercorn").join("seen.jsonl");
        let mut child = Command::new("python3")
            .args([SCRIPT, "serve"])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 =
            line.trim().strip_prefix("port ").unwrap_or_else(|| panic!("no port in {line:?}")).parse().unwrap();
        Hypercorn { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log }
    }

    /// Every request the upstream served, in order.
    fn seen(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn python(args: Vec<String>) -> Value {
    let out = tokio::task::spawn_blocking(move || Command::new("python3").arg(SCRIPT).args(&args).output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

async fn gateway(
    upstream: SocketAddr,
    extra: &str,
) -> (mfa_gateway::app::Running, DevIssuer, std::sync::Arc<KeyServer>) {
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let text =
        config_text(upstream, &format!("{}{extra}\n{ROUTES}{ROUTES_WITH_WS}", issuer_table(TEMPLATE_ISSUER, &keys)));
    let gw = start(&text).await;
    wait_ready(&gw).await;
    (gw, issuer, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs hypercorn (pip install hypercorn)"]
async fn an_h2c_upgrade_never_carries_a_request_past_the_gateway() {
    let up = Hypercorn::start();
    let (gw, issuer, _keys) = gateway(up.addr, "").await;
    let port = gw.addr.port().to_string();
    let (mfa, app) = (issuer.mint(&entra_claims("mfa", 600)), issuer.mint(&entra_claims("app", 600)));

    // Control: Hypercorn itself takes the upgrade and serves the smuggled stream.
    let direct =
        python(vec!["h2c".into(), up.addr.port().to_string(), "/healthz".into(), "-".into(), "/v1/offers".into()])
            .await;
    assert_eq!((direct["status"].as_u64(), direct["smuggled"].as_u64()), (Some(101), Some(200)), "{direct}");
    let served_before = up.seen().len();

    // The public route with no token, an `mfa` route with an MFA token, and an `mfa` route with
    // an app-only token, each smuggling a request that route's caller may not make.
    let cases = [
        ("/healthz", "-".to_string(), "/v1/offers"),
        ("/v1/offers", mfa.clone(), "/v1/customers/x/users"),
        ("/v1/offers", app.clone(), "/v1/customers/x/users"),
    ];
    for (path, token, smuggled) in cases {
        let got = python(vec!["h2c".into(), port.clone(), path.into(), token, smuggled.into()]).await;
        assert_eq!(got["status"], 200, "the upgrade request gets the upstream's ordinary answer: {got}");
        assert_eq!(got["smuggled"], Value::Null, "{got}");
        let answer: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
        assert_eq!(answer["path"], path, "the body is the upstream's own");
        assert_eq!(answer["http_version"], "1.1");
        for hop in ["upgrade", "http2-settings", "connection"] {
            assert!(answer["headers"].get(hop).is_none(), "{hop} reached the upstream: {answer}");
        }
    }
    let seen: Vec<String> =
        up.seen()[served_before..].iter().map(|s| s["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen, ["/healthz", "/v1/offers", "/v1/offers"], "only the judged requests reached the upstream");
    assert_eq!(metric(&gw, r#"mfa_gateway_client_headers_removed_total{reason="upgrade"}"#).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs hypercorn and websockets (pip install hypercorn websockets)"]
async fn a_websocket_echoes_through_the_gateway_only_with_mfa() {
    let up = Hypercorn::start();
    let (gw, issuer, _keys) = gateway(up.addr, "").await;
    let url = format!("ws://{}/ws", gw.addr);
    let ws = |token: String| python(vec!["ws".into(), url.clone(), token, "hello".into()]);

    let got = ws(issuer.mint(&entra_claims("mfa", 600))).await;
    assert_eq!(got["echo"], "echo: hello", "{got}");
    for token in [issuer.mint(&entra_claims("nomfa", 600)), "-".to_string()] {
        let got = ws(token).await;
        assert_eq!(got["refused"], 401, "{got}");
    }
    let opened = r#"mfa_gateway_requests_total{decision="allowed",mode="proxy",route="ws",token_kind="app_user"}"#;
    assert_eq!(metric(&gw, opened).await, 1.0);
}

/// An upstream that switches protocols, whatever it was asked: to `h2c`.
async fn switching_upstream() -> SocketAddr {
    upstream(|_req: Request<Incoming>| async move {
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(full(""))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn a_switch_to_a_protocol_not_forwarded_is_a_502() {
    let gw = start(&public_config(switching_upstream().await, "")).await;
    for head in [
        "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let reply = raw(gw.addr, head.as_bytes(), std::time::Duration::from_secs(2)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 502"), "{head:?}: {reply}");
    }
    assert_eq!(metric(&gw, r#"mfa_gateway_upstream_errors_total{kind="protocol"}"#).await, 2.0);
}

#[tokio::test]
async fn a_clients_connection_header_removes_only_what_the_client_sent() {
    let (gw, issuer, _keys) = gateway(echo_upstream().await, "").await;
    let mfa = issuer.mint(&entra_claims("mfa", 600));
    let req = Request::get(format!("http://{}/v1/customers/x", gw.addr))
        .header("authorization", format!("Bearer {mfa}"))
        .header(
            "connection",
            "x-mfa-gateway-token-kind, X-MFA-Gateway-MFA, x-mfa-gateway-would-refuse, x-request-id, x-forwarded-for, x-client-hop",
        )
        .header("x-request-id", "client-chosen")
        .header("x-client-hop", "1")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-token-kind"), "app_user");
    assert_eq!(echoed(&body, "x-mfa-gateway-mfa"), "true");
    assert_eq!(echoed(&body, "x-forwarded-for"), "127.0.0.1");
    // The client's nominated copy is gone; the gateway's own id is set all the same.
    let id = echoed(&body, "x-request-id");
    assert!(id.is_string() && id != "client-chosen", "{id}");
    assert_eq!(headers["x-request-id"], id.as_str().unwrap());
    assert_eq!(echoed(&body, "x-client-hop"), Value::Null, "a nominated header of the client's own goes");
    let nominated = r#"mfa_gateway_client_headers_removed_total{reason="nominated"}"#;
    assert_eq!(metric(&gw, nominated).await, 5.0);

    // A report-only route's marker is out of reach too.
    let (gw, issuer, _keys) =
        gateway(echo_upstream().await, "[defaults]\nrequire = \"app_user_mfa\"\nenforce = false\n").await;
    let nomfa = issuer.mint(&entra_claims("nomfa", 600));
    let req = Request::get(format!("http://{}/unrouted", gw.addr))
        .header("authorization", format!("Bearer {nomfa}"))
        .header("connection", "x-mfa-gateway-would-refuse")
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-would-refuse"), "mfa_required");
}

#[tokio::test]
async fn headers_that_rewrite_the_method_or_url_never_reach_the_upstream() {
    let (up, seen) = recording_upstream().await;
    // Underscore names allowed, so the twin is removed for what it is, not for its underscore.
    let text = public_config(up, "")
        .replace("[server]\n", "[server]\ndrop_underscore_headers = false\n")
        .replace("[upstream]\n", "[upstream]\nstrip_request_headers = [\"X-Framework-Path\"]\n");
    let gw = start(&text).await;
    let req = Request::get(format!("http://{}/healthz", gw.addr))
        .header("x-original-url", "/v1/customers/x/users")
        .header("x-rewrite-url", "/v1/customers/x/users")
        .header("x-http-method-override", "DELETE")
        .header("x_http_method_override", "DELETE")
        .header("x-http-method", "DELETE")
        .header("x-method-override", "DELETE")
        .header("x-framework-path", "/admin")
        .header("x-kept", "1")
        .body(full(""))
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let (target, headers) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(target, "/healthz");
    let mut names: Vec<&str> =
        headers.keys().map(|k| k.as_str()).filter(|k| k.starts_with("x-") || k.contains('_')).collect();
    names.sort();
    assert_eq!(names, ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-kept", "x-request-id"]);
    assert_eq!(metric(&gw, r#"mfa_gateway_client_headers_removed_total{reason="rewriting"}"#).await, 7.0);
}

#[tokio::test]
async fn forward_authorization_false_holds_on_public_routes() {
    let (gw, issuer, _keys) = gateway(echo_upstream().await, "[identity]\nforward_authorization = false\n").await;
    let mfa = issuer.mint(&entra_claims("mfa", 600));
    for path in ["/healthz", "/v1/offers"] {
        let (status, _, body) = get(gw.addr, path, Some(&mfa)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(echoed(&body, "authorization"), Value::Null, "{path}: the token reached the upstream");
    }
}

#[test]
fn upgrades_and_stripped_headers_are_checked_at_load() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (upstream_extra, problem) in [
        ("upgrades = [\"websocket\", \"H2C\"]", "\"h2c\" cannot be allowed"),
        ("upgrades = [\"web socket\"]", "is not a protocol name"),
        ("strip_request_headers = [\"Authorization\"]", "a header the gateway reads"),
        ("strip_request_headers = [\"bad name\"]", "is not a header name"),
    ] {
        let text = public_config(up, "").replace("[upstream]\n", &format!("[upstream]\n{upstream_extra}\n"));
        let err = mfa_gateway::config::Config::parse(&text, "t.toml", None).unwrap_err().to_string();
        assert!(err.contains("upstream.") && err.contains(problem), "{upstream_extra}: {err}");
    }
}
