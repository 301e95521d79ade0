//! TLS parts for tests: a private CA minting certificates (rcgen), rustls client configs with
//! or without a client certificate, one HTTPS request, a TLS server, and a gateway with TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use super::{auth_harness, AuthHarness, ROUTES};

/// A private certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    /// A leaf for localhost and 127.0.0.1: (cert PEM, key PEM).
    pub fn leaf(&self) -> (String, String) {
        self.leaf_for(&["localhost", "127.0.0.1"])
    }

    pub fn leaf_for(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }
}

/// A self-signed certificate for `name`: (cert PEM, key PEM).
pub fn self_signed(name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// RFC 8705's `x5t#S256` of a certificate: base64url of the SHA-256 of its DER.
pub fn x5t_s256(cert_pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256_of(cert_pem))
}

/// The SHA-256 of a certificate's DER.
pub fn sha256_of(cert_pem: &str) -> [u8; 32] {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref()).as_ref().try_into().unwrap()
}

/// What each front proxy's header would carry for `cert_pem`, as a client forging it would
/// write it: Envoy's XFCC element, nginx's URL-escaped PEM, Traefik's bare base64.
pub fn forged_front_headers(cert_pem: &str) -> [(&'static str, String); 3] {
    let hex: String = sha256_of(cert_pem).iter().map(|b| format!("{b:02x}")).collect();
    let escaped: String = cert_pem
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let bare: String = cert_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    [
        ("x-forwarded-client-cert", format!("By=spiffe://front;Hash={hex};Subject=\"CN=client one\"")),
        ("x-client-cert", escaped),
        ("x-forwarded-tls-client-cert", bare),
    ]
}

pub fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mfa-gw-tls-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// A rustls client config trusting `ca_pem`, offering `alpn`, optionally with a client cert.
pub fn client_tls(ca_pem: &str, alpn: &[&[u8]], identity: Option<&(String, String)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// Connects over TLS and returns the stream (for raw bytes or a hyper handshake).
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// One request over a fresh TLS connection; returns (version, status, headers, body).
pub async fn https_get(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    path: &str,
    token: Option<&str>,
) -> Result<(Version, StatusCode, http::HeaderMap, String), String> {
    https_get_with(addr, cfg, path, token, &[]).await
}

/// `https_get` with `extra` request headers.
pub async fn https_get_with(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<(Version, StatusCode, http::HeaderMap, String), String> {
    let h2 = cfg.alpn_protocols.first().is_some_and(|p| p == b"h2");
    let io = TokioIo::new(tls_connect(addr, cfg).await.map_err(|e| e.to_string())?);
    let mut req = Request::get(format!("https://localhost:{}{path}", addr.port()));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !h2 {
        // hyper's connection-level client sends the URI as given: HTTP/1.1 needs a Host.
        req = req.header("host", format!("localhost:{}", addr.port()));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.version, parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned()))
}

/// A TLS server on loopback answering with `handler`; ALPN h2 and http/1.1.
pub async fn tls_server<F>(cert: &(String, String), handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(cert.0.as_bytes()).map(Result::unwrap).collect(),
            PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req| {
                    let r = handler(req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// Gateway with TLS on its listener (files in `d`), the test routes, and a dev issuer.
pub async fn tls_gateway(d: &Path, ca: &Ca, tls_extra: &str) -> AuthHarness {
    let (cert, key) = ca.leaf();
    let cert = write(d, "cert.pem", &cert);
    let key = write(d, "key.pem", &key);
    let server_tls = format!("[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}\n", cert.display(), key.display());
    auth_harness(&format!("{server_tls}{ROUTES}"), "").await
}
