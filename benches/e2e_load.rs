//! End-to-end load bench: a real upstream, a real key server and the gateway in one process on
//! loopback, driven by a closed-loop HTTP/1.1 load generator. Reports req/s, p50, p99 and p99.9 for the
//! upstream alone (the baseline) and through the gateway: public route, a repeated MFA token
//! (verified-token cache) over HTTP/1.1, over cleartext HTTP/2 (10 streams per connection) and
//! with 512 connections, 1 000 tokens in turn (all cached), and a different token on every
//! request with the cache off (every request pays for a signature verification); then two token loads as questions to
//! the decision listener of authorization-only mode (`[authz]`, front = "nginx"), which answers
//! without forwarding; then DPoP-bound tokens (RFC 9449) with a fresh ES256 or EdDSA proof on
//! every request (made before the row, so the generator does not sign while it measures). Last, latency at a fixed rate, open loop: a quarter of the gateway's
//! saturated rate with a repeated token, to the upstream and through the gateway, each request
//! timed from when it was due (so a late answer also counts against the requests queued behind
//! it).
//!
//! `cargo bench --bench e2e_load [-- --seconds 5 --connections 32 --workers 1 --tokens 10000]`
//!
//! Everything shares this machine's cores: the gateway's workers, the upstream's thread and the
//! generator's thread. Compare rows of one run, never figures from different machines.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mfa_gateway::dev::{entra_claims, DevIssuer, DpopKey, KeyServer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

struct Args {
    seconds: u64,
    connections: usize,
    workers: usize,
    tokens: usize,
}

fn args() -> Args {
    let mut a = Args { seconds: 5, connections: 32, workers: 1, tokens: 10_000 };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), value) {
            ("--seconds", Some(v)) => a.seconds = v as u64,
            ("--connections", Some(v)) => a.connections = v,
            ("--workers", Some(v)) => a.workers = v,
            ("--tokens", Some(v)) => a.tokens = v,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// The upstream: `{"ok":true}` to everything, on its own single-threaded runtime.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

struct Outcome {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

/// How the load generator speaks: HTTP/1.1 keep-alive, one request at a time per connection,
/// or cleartext HTTP/2 (prior knowledge) with this many concurrent streams per connection.
#[derive(Clone, Copy)]
enum Proto {
    H1,
    H2c { streams: usize },
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn connect(addr: SocketAddr, proto: Proto) -> Sender {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let io = TokioIo::new(s);
        match proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                Sender::H1(send)
            }
            Proto::H2c { .. } => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
                tokio::spawn(conn);
                Sender::H2(send)
            }
        }
    }

    /// Another handle on the same connection (HTTP/2 only; an HTTP/1.1 connection has one).
    fn stream(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }

    async fn send(&mut self, req: Request<Empty<Bytes>>) -> hyper::Result<Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// One row's load: where, what, and how much.
struct Load {
    addr: SocketAddr,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    tokens: Arc<Vec<String>>,
    connections: usize,
    proto: Proto,
    seconds: u64,
    /// Requests per second in all (open loop), or `None` for a closed loop.
    rate: Option<f64>,
    /// A DPoP-bound token and one proof per request; the row ends when they run out.
    dpop: Option<Arc<Proofs>>,
}

/// A token bound to a key, and proofs of that key for the row's requests, taken in turn.
struct Proofs {
    token: String,
    proofs: Vec<String>,
    next: AtomicUsize,
}

/// The public origin of the bench gateway, for proofs' `htu`.
const ORIGIN: &str = "https://bench.example";

impl Proofs {
    /// `n` proofs for GET `path`, made on two threads.
    fn mint(issuer: &DevIssuer, key: DpopKey, path: &str, n: usize) -> Arc<Proofs> {
        let mut claims = entra_claims("mfa", 3600);
        claims["cnf"] = json!({"jkt": key.jkt()});
        let token = issuer.mint(&claims);
        let (key, url, iat) = (Arc::new(key), format!("{ORIGIN}{path}"), mfa_gateway::auth::unix_now());
        let halves: Vec<_> = (0..2)
            .map(|h| {
                let (key, url, token) = (key.clone(), url.clone(), token.clone());
                std::thread::spawn(move || {
                    (h..n)
                        .step_by(2)
                        .map(|i| key.proof("GET", &url, &token, &format!("e2e-{i}"), iat))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let proofs = halves.into_iter().flat_map(|h| h.join().unwrap()).collect();
        Arc::new(Proofs { token, proofs, next: AtomicUsize::new(0) })
    }
}

/// Closed loop: `connections` keep-alive connections (each with its streams over HTTP/2), each
/// sending the next request as soon as the last response is read, for `seconds`. Tokens are
/// taken in turn from `tokens`.
async fn load(l: Load) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(l.seconds);
    let start = Instant::now();
    let streams = match l.proto {
        Proto::H1 => 1,
        Proto::H2c { streams } => streams,
    };
    let mut senders = Vec::new();
    for _ in 0..l.connections {
        let first = Sender::connect(l.addr, l.proto).await;
        for _ in 1..streams {
            senders.push(first.stream().expect("streams only over HTTP/2"));
        }
        senders.push(first);
    }
    let senders_n = senders.len();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(c, mut send)| {
            let (tokens, path, headers, dpop) = (l.tokens.clone(), l.path, l.headers, l.dpop.clone());
            // Open loop: this sender's requests are due every `every`, staggered across senders.
            let every = l.rate.map(|r| Duration::from_secs_f64(senders_n as f64 / r));
            let mut due = start + every.map_or(Duration::ZERO, |e| e.mul_f64(c as f64 / senders_n as f64));
            tokio::spawn(async move {
                let (mut n, mut errors, mut lat) = (0usize, 0usize, Vec::with_capacity(100_000));
                let mut i = c * 7919;
                while Instant::now() < deadline {
                    let mut req = Request::get(path).header("host", "bench");
                    for (k, v) in headers {
                        req = req.header(*k, *v);
                    }
                    if !tokens.is_empty() {
                        i = (i + 1) % tokens.len();
                        req = req.header("authorization", format!("Bearer {}", tokens[i]));
                    }
                    if let Some(d) = &dpop {
                        let Some(proof) = d.proofs.get(d.next.fetch_add(1, Ordering::Relaxed)) else { break };
                        req = req.header("authorization", format!("DPoP {}", d.token)).header("dpop", proof.as_str());
                    }
                    let t = match every {
                        // Behind schedule because the last answer came late: timed from when
                        // this request was due. On time: from when it goes, so the timer's
                        // millisecond granularity is not counted as the server's.
                        Some(every) => {
                            let was_due = due;
                            due += every;
                            if Instant::now() >= was_due {
                                was_due
                            } else {
                                tokio::time::sleep_until(was_due.into()).await;
                                Instant::now()
                            }
                        }
                        None => Instant::now(),
                    };
                    match send.send(req.body(Empty::<Bytes>::new()).unwrap()).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            let _ = resp.into_body().collect().await;
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            if !ok {
                                errors += 1;
                            }
                            n += 1;
                        }
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (n, errors, lat)
            })
        })
        .collect();
    let mut out = Outcome { requests: 0, errors: 0, elapsed: Duration::ZERO, latencies_us: Vec::new() };
    for t in tasks {
        let (n, e, lat) = t.await.unwrap();
        out.requests += n;
        out.errors += e;
        out.latencies_us.extend(lat);
    }
    out.elapsed = start.elapsed();
    out.latencies_us.sort_unstable();
    out
}

/// The row whose rate sets the fixed-rate rows' (a quarter of it).
const REPEATED: &str = "gateway, repeated MFA token";

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let a = args();
    let upstream = start_upstream();

    // Key server, tokens, and the gateway on its own runtime with `workers` threads.
    let issuer = DevIssuer::generate("k1");
    let gateway_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(a.workers).enable_all().build().unwrap();
    // Two gateways on the same runtime: one as configured by default, one with the
    // verified-token cache off, so the distinct-token row measures verification every time.
    let (gw, nocache, _running) = gateway_rt.block_on(async {
        let keys = KeyServer::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), json!({"keys": [issuer.jwk()]}), "https://sts.windows.net/{tenantid}/");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_origin = \"{ORIGIN}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{upstream}\"\n\
             [log]\nfilter = \"warn\"\n[audit]\nenabled = false\n[dpop]\nmax_proofs = 2000000\n\
             [authz]\nlisten = \"127.0.0.1:0\"\nfront = \"nginx\"\n\
             [[issuer]]\nissuer = \"https://sts.windows.net/{{tenantid}}/\"\ndiscovery = \"{}\"\n\
             audiences = [\"https://api.partnercenter.microsoft.com\"]\n\
             [[route]]\nname = \"public\"\npath = \"/public\"\nrequire = \"public\"\n\
             [[route]]\nname = \"customers\"\npath = \"/v1/customers/{{*rest}}\"\nrequire = \"app_user_mfa\"\n",
            keys.discovery_url()
        );
        let mut running = Vec::new();
        for extra in ["", "[cache]\nmax_entries = 0\n"] {
            let config = mfa_gateway::config::Config::parse(&format!("{text}{extra}"), "e2e_load", None).unwrap();
            let r = mfa_gateway::app::start(config).await.unwrap();
            while !r.not_ready().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            running.push(r);
        }
        let addrs = |r: &mfa_gateway::app::Running| (r.addr, r.authz_addr.expect("[authz] is on"));
        (addrs(&running[0]), addrs(&running[1]), running)
    });

    eprintln!("minting {} distinct tokens...", a.tokens);
    let issuer = Arc::new(issuer);
    let per = a.tokens.div_ceil(2);
    let halves: Vec<_> = (0..2)
        .map(|h| {
            let issuer = issuer.clone();
            std::thread::spawn(move || {
                (h * per..((h + 1) * per).min(a.tokens))
                    .map(|i| {
                        let mut c = entra_claims("mfa", 3600);
                        c["jti"] = json!(format!("e2e-{i}"));
                        issuer.mint(&c)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let distinct: Vec<String> = halves.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let one = vec![issuer.mint(&entra_claims("mfa", 3600))];

    let load_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // What nginx's auth_request sends about a request to /v1/customers/x.
    const ASKED: &[(&str, &str)] = &[("x-original-method", "GET"), ("x-original-uri", "/v1/customers/x")];
    // As many tokens as the default cache (4 MiB) holds with room to spare.
    let some = Arc::new(distinct[..distinct.len().min(1_000)].to_vec());
    let (one, distinct) = (Arc::new(one), Arc::new(distinct));
    let none = Arc::new(Vec::new());
    let (c, h1) = (a.connections, Proto::H1);
    let h2c = Proto::H2c { streams: 10 };
    let row = |name, addr, path, headers, tokens: &Arc<Vec<String>>, connections, proto| {
        (
            name,
            Load {
                addr,
                path,
                headers,
                tokens: tokens.clone(),
                connections,
                proto,
                seconds: a.seconds,
                rate: None,
                dpop: None,
            },
        )
    };
    let scenarios: Vec<(&str, Load)> = vec![
        row("upstream direct (baseline)", upstream, "/v1/customers/x", &[], &none, c, h1),
        row("gateway, public route", gw.0, "/public", &[], &none, c, h1),
        row(REPEATED, gw.0, "/v1/customers/x", &[], &one, c, h1),
        row("gateway, h2c, 10 streams/conn", gw.0, "/v1/customers/x", &[], &one, c, h2c),
        row("gateway, 512 connections", gw.0, "/v1/customers/x", &[], &one, 512, h1),
        row("gateway, 1 000 tokens, cached", gw.0, "/v1/customers/x", &[], &some, c, h1),
        row("gateway, distinct, cache off", nocache.0, "/v1/customers/x", &[], &distinct, c, h1),
        row("authz, repeated MFA token", gw.1, "/", ASKED, &one, c, h1),
        row("authz, distinct, cache off", nocache.1, "/", ASKED, &distinct, c, h1),
    ];
    println!(
        "\ne2e_load: {} s per row, {} connections, gateway workers = {}, cores = {}",
        a.seconds,
        a.connections,
        a.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<30} {:>10} {:>9} {:>9} {:>9} {:>8}", "scenario", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors");
    let mut baseline = None;
    let repeated = std::cell::OnceCell::new();
    let run = |name: &str, l: Load, baseline: &mut Option<f64>| {
        let o = load_rt.block_on(load(l));
        let rps = o.requests as f64 / o.elapsed.as_secs_f64();
        if name == REPEATED {
            let _ = repeated.set(rps);
        }
        let base = *baseline.get_or_insert(rps);
        println!(
            "{name:<30} {rps:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>8}   ({:.2}x baseline)",
            pct(&o.latencies_us, 0.50),
            pct(&o.latencies_us, 0.99),
            pct(&o.latencies_us, 0.999),
            o.errors,
            rps / base
        );
    };
    for (name, l) in scenarios {
        run(name, l, &mut baseline);
    }
    // More proofs than the row can use at its rate: 40 000 a second of the row.
    for (name, key) in
        [("gateway, DPoP, ES256 proofs", DpopKey::es256()), ("gateway, DPoP, EdDSA proofs", DpopKey::ed25519())]
    {
        let proofs = Proofs::mint(&issuer, key, "/v1/customers/x", 40_000 * a.seconds as usize);
        let (_, l) = row(name, gw.0, "/v1/customers/x", &[], &none, c, h1);
        run(name, Load { dpop: Some(proofs), ..l }, &mut baseline);
    }
    // Latency at a normal load rather than at saturation: a quarter of the gateway's own rate
    // with a repeated token (about a quarter of one nginx hop's).
    let rate = repeated.get().copied().unwrap_or(0.0) / 4.0;
    for (name, addr, tokens) in [
        ("upstream direct, fixed rate", upstream, &one),
        ("gateway, fixed rate", gw.0, &one),
        ("gateway, distinct, cache off, fixed rate", nocache.0, &distinct),
    ] {
        let (_, l) = row(name, addr, "/v1/customers/x", &[], tokens, c, h1);
        run(&format!("{name} {:.0}/s", rate), Load { rate: Some(rate), ..l }, &mut baseline);
    }
}
