//! gRPC through the gateway, over h2c and over TLS, with a real gRPC server and client (Python's
//! grpcio, `tests/grpc/echo.py`): unary and server-streaming calls with an MFA token, the
//! trailers that carry `grpc-status`, and `UNAUTHENTICATED` for a token without MFA.

mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use mfa_gateway::dev::entra_claims;
use serde_json::Value;
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/echo.py");

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpc_server() -> Server {
    let mut child = Command::new("python3").args([SCRIPT, "serve"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("port ").unwrap_or_else(|| panic!("no port in {line:?}")).parse().unwrap();
    Server(child, port)
}

/// Both calls through `target` with `token`; the client's JSON line.
async fn grpc_call(target: String, token: String, ca: Option<std::path::PathBuf>) -> Value {
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Command::new("python3");
        c.args([SCRIPT, "call", &target, &token]);
        if let Some(ca) = ca {
            c.arg(ca);
        }
        c.output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn config(
    upstream: u16,
    keys: &mfa_gateway::dev::KeyServer,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let tls = tls.map_or(String::new(), |(c, k)| {
        format!("[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n", c.display(), k.display())
    });
    let text = config_text(
        std::net::SocketAddr::from(([127, 0, 0, 1], upstream)),
        &format!(
            "{}\n[[route]]\nname = \"echo\"\npath = \"/echo.Echo/{{method}}\"\nrequire = \"app_user_mfa\"\n",
            issuer_table(TEMPLATE_ISSUER, keys)
        ),
    );
    text.replace("[admin]", &format!("{tls}[admin]"))
}

fn assert_served(v: &Value) {
    assert_eq!(v["unary"]["code"], "OK", "{v}");
    assert_eq!(v["unary"]["reply"], "kind=app_user;hello", "the upstream saw the verified identity: {v}");
    assert_eq!(v["stream"]["code"], "OK", "{v}");
    assert_eq!(v["stream"]["replies"], serde_json::json!(["0:app_user", "1:app_user", "2:app_user"]), "{v}");
}

fn assert_unauthenticated(v: &Value) {
    assert_eq!(v["unary"]["code"], "UNAUTHENTICATED", "{v}");
    assert_eq!(v["stream"]["code"], "UNAUTHENTICATED", "{v}");
}

/// One length-prefixed gRPC message.
fn frame(msg: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio (pip install grpcio)"]
async fn grpc_over_h2c_and_tls() {
    let server = grpc_server();
    let (issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let (mfa, nomfa) = (issuer.mint(&entra_claims("mfa", 600)), issuer.mint(&entra_claims("nomfa", 600)));

    // h2c
    let gw = Binary::start(&config(server.1, &keys, None), None);
    gw.ready().await;
    let target = gw.addr.to_string();
    assert_served(&grpc_call(target.clone(), mfa.clone(), None).await);
    assert_unauthenticated(&grpc_call(target, nomfa.clone(), None).await);

    // The wire, read directly: grpc-status 0 arrives in the trailers of a served call, and a
    // refused one is a trailers-only answer with the HTTP status and WWW-Authenticate kept.
    let call = |token: &str| {
        Request::post(format!("http://{}/echo.Echo/Say", gw.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(full(frame(b"raw")))
            .unwrap()
    };
    let resp = h2_client().request(call(&mfa)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap();
    let trailers = body.trailers().expect("the upstream's trailers reach the client").clone();
    assert_eq!(trailers["grpc-status"], "0");
    assert!(body.to_bytes().ends_with(b"kind=app_user;raw"));
    let resp = h2_client().request(call(&nomfa)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["grpc-status"], "16");
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-message"], "multi-factor authentication required");
    assert_eq!(resp.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    drop(gw);

    // TLS, with a certificate for localhost the client trusts.
    let dir = temp_dir("grpc-tls");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let gw = Binary::start(&config(server.1, &keys, Some((&cert, &key))), None);
    gw.ready().await;
    let target = format!("localhost:{}", gw.addr.port());
    assert_served(&grpc_call(target.clone(), mfa, Some(cert.clone())).await);
    assert_unauthenticated(&grpc_call(target, nomfa, Some(cert)).await);
}
