//! Real servers on loopback port 0: upstreams, the key server, the gateway; and a real client.
#![allow(dead_code)]

pub mod proofs;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::channel::{Channel, Sender};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mfa_gateway::app::{self, Running};
use mfa_gateway::config::Config;
use mfa_gateway::dev::{DevIssuer, KeyServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type UpBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Starts an upstream on 127.0.0.1:0 that answers with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// An upstream that switches to `protocol` when asked to upgrade, then echoes every byte until
/// the client closes; any other request gets `plain`.
pub async fn tunnel_upstream(protocol: &'static str) -> SocketAddr {
    upstream(move |mut req: Request<Incoming>| async move {
        if !req.headers().contains_key("upgrade") {
            return Response::new(full("plain"));
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = TokioIo::new(on.await.unwrap());
            let (mut r, mut w) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        Response::builder()
            .status(http::StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(full(""))
            .unwrap()
    })
    .await
}

/// Writes `msg` into a tunnel and reads the echo back.
pub async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert_eq!(back, msg);
}

/// A connection to `addr` upgraded to `protocol`: the `101` read, and one echo through it.
pub async fn open_tunnel(addr: SocketAddr, protocol: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ask = format!("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n");
    s.write_all(ask.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    echo(&mut s, b"ping").await;
    s
}

/// An upstream that answers at once and holds each body open until the test ends it.
pub async fn held_body_upstream() -> (SocketAddr, Arc<Mutex<Vec<Sender<Bytes>>>>) {
    let senders: Arc<Mutex<Vec<Sender<Bytes>>>> = Arc::default();
    let held = senders.clone();
    let addr = upstream(move |_req: Request<Incoming>| {
        let held = held.clone();
        async move {
            let (mut tx, body) = Channel::<Bytes>::new(4);
            tx.send(Frame::data(Bytes::from_static(b"first part;"))).await.unwrap();
            held.lock().unwrap().push(tx);
            Response::new(body.map_err(|e| match e {}).boxed())
        }
    })
    .await;
    (addr, senders)
}

/// An upstream that answers JSON describing what it received (body drained and counted).
pub async fn echo_upstream() -> SocketAddr {
    upstream(|req: Request<Incoming>| async move {
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let headers: serde_json::Map<String, Value> =
            req.headers().iter().map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or("<bin>")))).collect();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let doc = json!({"method": method, "uri": uri, "headers": headers,
                         "body": String::from_utf8_lossy(&body)});
        Response::new(full(doc.to_string()))
    })
    .await
}

/// Everything an upstream was asked: (request target, headers).
pub type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

/// An upstream that records each request it is asked and answers `served`.
pub async fn recording_upstream() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let addr = upstream(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push((req.uri().to_string(), req.headers().clone()));
            Response::new(full("served"))
        }
    })
    .await;
    (addr, seen)
}

/// A header as `echo_upstream` says it received it.
pub fn echoed(body: &str, header: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not the echo: {body}"));
    v["headers"][header].clone()
}

/// A port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Config text with loopback ports and the given upstream; `extra` appends tables. Audit
/// events are off unless `extra` has its own `[audit]`.
pub fn config_text(upstream: SocketAddr, extra: &str) -> String {
    let audit = if extra.contains("[audit]") { "" } else { "[audit]\nenabled = false\n" };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nshutdown_grace = \"5s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"http://{upstream}\"\n\
         {audit}{extra}\n"
    )
}

/// Gateway with no auth at all: every request is public.
pub fn public_config(upstream: SocketAddr, extra: &str) -> String {
    config_text(upstream, &format!("[defaults]\nrequire = \"public\"\n{extra}"))
}

/// A new empty folder under the system's temporary one.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mfa-gateway-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the gateway in this process from `text`, written to a file of its own so the gateway
/// watches it as it would in production.
pub async fn start(text: &str) -> Running {
    let path = temp_dir("test").join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    app::start(config).await.unwrap()
}

pub type TestClient = Client<HttpConnector, UpBody>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

/// GET with an optional bearer token; returns status, headers and body text.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (http::StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), req.body(full("")).unwrap()).await
}

pub async fn send(c: &TestClient, req: Request<UpBody>) -> (http::StatusCode, http::HeaderMap, String) {
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req)).await.expect("response in time").unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// Writes raw bytes to the gateway and reads until the peer closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    out
}

/// An issuer with a key server on loopback, and a gateway trusting it.
pub struct AuthHarness {
    pub issuer: DevIssuer,
    pub keys: Arc<KeyServer>,
    pub gw: Running,
    pub upstream: SocketAddr,
}

pub const TEMPLATE_ISSUER: &str = "https://sts.windows.net/{tenantid}/";

/// Key server with one key (`kid` "k1"), echo upstream, and a gateway with `routes` (TOML) and
/// `issuer_extra` (keys added to the [[issuer]] block).
pub async fn auth_harness(routes: &str, issuer_extra: &str) -> AuthHarness {
    auth_harness_for(TEMPLATE_ISSUER, routes, issuer_extra).await
}

/// The same for any issuer (`iss`, or a `{tenantid}` template).
pub async fn auth_harness_for(iss: &str, routes: &str, issuer_extra: &str) -> AuthHarness {
    let (issuer, keys) = issuer_with_keys(iss).await;
    let upstream = echo_upstream().await;
    let text = config_text(upstream, &format!("{}{issuer_extra}\n{routes}", issuer_table(iss, &keys)));
    let gw = start(&text).await;
    wait_ready(&gw).await;
    AuthHarness { issuer, keys, gw, upstream }
}

/// A dev issuer (`kid` "k1") and a key server on loopback publishing its key.
pub async fn issuer_with_keys(iss: &str) -> (DevIssuer, Arc<KeyServer>) {
    let issuer = DevIssuer::generate("k1");
    let keys = KeyServer::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), json!({"keys": [issuer.jwk()]}), iss);
    (issuer, keys)
}

/// An `[[issuer]]` table for `iss` with keys from `keys`, Partner Center's audience; open at its
/// end for more keys.
pub fn issuer_table(iss: &str, keys: &KeyServer) -> String {
    format!(
        "[[issuer]]\nissuer = \"{iss}\"\ndiscovery = \"{}\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n",
        keys.discovery_url()
    )
}

/// Authorization-only mode for `front` (`authz_extra`: more `[authz]` keys), the template issuer,
/// and the two routes the decision tests ask about: `offers` (mfa) and `customers`
/// (app_user_mfa, then `customers_extra`).
pub fn authz_tables(front: &str, authz_extra: &str, keys: &KeyServer, customers_extra: &str) -> String {
    format!(
        "[authz]\nlisten = \"127.0.0.1:0\"\nfront = \"{front}\"\n{authz_extra}{}\n\
         [[route]]\nname = \"offers\"\npath = \"/v1/offers/{{*rest}}\"\nrequire = \"mfa\"\n\
         [[route]]\nname = \"customers\"\npath = \"/v1/customers/{{*rest}}\"\nrequire = \"app_user_mfa\"\n{customers_extra}",
        issuer_table(TEMPLATE_ISSUER, keys)
    )
}

/// Polls `check` every 20 ms until it holds, and returns how long that took; fails the test,
/// naming `what`, after `limit`. `what` is written only then, so it may describe the state at
/// that moment (`Lines`).
pub async fn eventually(
    what: impl std::fmt::Display,
    limit: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

pub async fn wait_ready(gw: &Running) {
    struct NotReady<'a>(&'a Running);
    impl std::fmt::Display for NotReady<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "gateway ready; not ready: {:?}", self.0.not_ready())
        }
    }
    eventually(NotReady(gw), Duration::from_secs(5), async || gw.not_ready().is_empty()).await;
}

/// The Partner Center-shaped route set used by the auth tests.
pub const ROUTES: &str = r#"
[[route]]
name = "health"
path = "/healthz"
require = "public"
[[route]]
name = "offers"
path = "/v1/offers"
require = "mfa"
[[route]]
name = "customers"
path = "/v1/customers/{*rest}"
require = "app_user_mfa"
[[route]]
name = "reports"
path = "/v1/reports"
require = "token"
"#;

/// Every log line any test in this binary produces, as JSON (installs the subscriber once).
pub fn logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink;
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| Sink)
            .init();
        std::sync::Mutex::new(Vec::new())
    })
}

pub fn log_lines() -> Vec<Value> {
    let buf = logs().lock().unwrap().clone();
    String::from_utf8(buf).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// One sample of a `/metrics` page, by its name and labels as the page writes them; `None`
/// when the page has no such series.
pub fn sample(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

fn present(page: &str, name_and_labels: &str) -> f64 {
    sample(page, name_and_labels).unwrap_or_else(|| panic!("no series {name_and_labels} on /metrics"))
}

/// One sample from the admin port. A series the page lacks fails the test: absent is not zero.
pub async fn metric(gw: &Running, name_and_labels: &str) -> f64 {
    present(&get(gw.admin_addr, "/metrics", None).await.2, name_and_labels)
}

/// What a poll of a `Binary` waited for, and, when it fails, what the binary logged.
pub struct Lines<'a>(pub &'a str, pub &'a Binary);

impl std::fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; the gateway logged: {:?}", self.0, self.1.lines())
    }
}

/// The release-shaped binary (`target/.../mfa-gateway run`), started on a config file, with its
/// stderr collected line by line. Killed on drop.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The decision listener, when `[authz]` is on.
    pub authz: Option<SocketAddr>,
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
    /// The config file it runs on.
    pub file: std::path::PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    /// Runs `mfa-gateway run --config <text>` (through `sh -c` when `shell_prefix` is given, for
    /// `ulimit`), and waits for its "listening" line.
    pub fn start(text: &str, shell_prefix: Option<&str>) -> Binary {
        let file = temp_dir("bin").join("gw.toml");
        std::fs::write(&file, text).unwrap();
        Self::start_on(&file, shell_prefix)
    }

    /// The same on a config file that is already written (a ConfigMap-shaped folder, say).
    pub fn start_on(file: &std::path::Path, shell_prefix: Option<&str>) -> Binary {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let bin = env!("CARGO_BIN_EXE_mfa-gateway");
        let mut cmd = match shell_prefix {
            None => {
                let mut c = Command::new(bin);
                c.args(["run", "--config"]).arg(file);
                c
            }
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("{prefix}; exec \"$0\" run --config \"$1\"")).arg(bin).arg(file);
                c
            }
        };
        let mut child = cmd.env_remove("RUST_LOG").stderr(Stdio::piped()).spawn().unwrap();
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("the gateway never said it was listening");
        // Pretty (`addr=...`) or JSON (`"addr":"..."`) logs.
        let json: Option<Value> = serde_json::from_str(&line).ok();
        let field = |key: &str| -> Option<SocketAddr> {
            if let Some(v) = json.as_ref().and_then(|j| j[key].as_str()) {
                return v.parse().ok();
            }
            let rest = line.split(&format!(" {key}=")).nth(1)?;
            rest.split_whitespace().next().unwrap().trim_matches('"').parse().ok()
        };
        let addr = field("addr").unwrap_or_else(|| panic!("no addr in {line}"));
        let admin = field("admin").unwrap_or_else(|| panic!("no admin in {line}"));
        Binary { child, addr, admin, authz: field("authz"), stderr, file: file.to_path_buf(), reader: Some(reader) }
    }

    /// Waits for the process to exit (blocking) and for the last of its stderr.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    /// Waits until `/readyz` answers 200 (the issuer's keys are in).
    pub async fn ready(&self) {
        let ready = async || get(self.admin, "/readyz", None).await.0 == http::StatusCode::OK;
        eventually(Lines("/readyz 200", self), Duration::from_secs(5), ready).await;
    }

    /// Sends a signal (`"HUP"`, `"TERM"`) to the process.
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    pub fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// One sample from the binary's `/metrics`; a series the page lacks fails the test.
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        present(&get(self.admin, "/metrics", None).await.2, name_and_labels)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rows of a CSV document as Python's `csv` module reads them.
pub fn python_csv(text: &str) -> Vec<Vec<String>> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", "import csv, json, sys; print(json.dumps(list(csv.reader(sys.stdin))))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}
