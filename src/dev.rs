//! Development parts: an issuer whose RSA key is made in memory (minting tokens), a DPoP client
//! key (minting proofs), a JWKS and discovery server on loopback, and an upstream that echoes
//! the identity it was given. The demo
//! runs them; the integration tests and benches run against them too. Nothing here is on the
//! request path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A DPoP client's key (RFC 9449), made in memory: ES256 or Ed25519.
pub enum DpopKey {
    Es256(aws_lc_rs::signature::EcdsaKeyPair),
    Ed25519(aws_lc_rs::signature::Ed25519KeyPair),
}

impl DpopKey {
    pub fn es256() -> Self {
        let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        DpopKey::Es256(aws_lc_rs::signature::EcdsaKeyPair::generate(alg).expect("P-256 key generation"))
    }

    pub fn ed25519() -> Self {
        DpopKey::Ed25519(aws_lc_rs::signature::Ed25519KeyPair::generate().expect("Ed25519 key generation"))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            DpopKey::Es256(_) => "ES256",
            DpopKey::Ed25519(_) => "EdDSA",
        }
    }

    /// The public key as a JWK, as a proof's header carries it.
    pub fn jwk(&self) -> Value {
        match self {
            DpopKey::Es256(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                       "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
            DpopKey::Ed25519(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(k.public_key())}),
        }
    }

    /// The key's RFC 7638 thumbprint: a bound token's `cnf.jkt`.
    pub fn jkt(&self) -> String {
        crate::auth::dpop::thumbprint(self.jwk().as_object().expect("an object")).expect("a public key")
    }

    /// A proof for `method` `url` presenting `token`.
    pub fn proof(&self, method: &str, url: &str, token: &str, jti: &str, iat: i64) -> String {
        let ath = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()));
        let claims = json!({"jti": jti, "htm": method, "htu": url, "iat": iat, "ath": ath});
        self.sign_proof(&self.header(), &claims)
    }

    /// A proof's header: `typ`, `alg` and this key's public JWK.
    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    /// `header` and `claims` signed with this key, as given (tests get them wrong on purpose).
    pub fn sign_proof(&self, header: &Value, claims: &Value) -> String {
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match self {
            DpopKey::Es256(k) => k.sign(&SystemRandom::new(), input.as_bytes()).expect("signing").as_ref().to_vec(),
            DpopKey::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

pub const DEMO_TENANT: &str = "aaaabbbb-0000-cccc-1111-dddd2222eeee";
pub const DEMO_AUDIENCE: &str = "https://api.partnercenter.microsoft.com";

/// An RSA signing key with its `kid`, minting RS256 tokens.
pub struct DevIssuer {
    key: KeyPair,
    pub kid: String,
}

impl DevIssuer {
    pub fn generate(kid: &str) -> Self {
        let key = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        Self { key, kid: kid.into() }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let public = self.key.public_key();
        let n = public.modulus().big_endian_without_leading_zero();
        let e = public.exponent().big_endian_without_leading_zero();
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
               "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)})
    }

    /// Signs `claims` as RS256 with this key's `kid`.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with_header(&json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}), claims)
    }

    /// Signs with RS256 whatever header is given (tests use it for hostile headers).
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).expect("RSA signing");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// Entra-shaped claims (v1), valid for `ttl_secs` from now.
pub fn entra_claims(kind: &str, ttl_secs: i64) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut c = json!({
        "aud": DEMO_AUDIENCE,
        "iss": format!("https://sts.windows.net/{DEMO_TENANT}/"),
        "iat": now - 5, "nbf": now - 5, "exp": now + ttl_secs,
        "tid": DEMO_TENANT, "ver": "1.0",
        "appid": "00001111-aaaa-2222-bbbb-3333cccc4444",
    });
    let user = json!({
        "scp": "user_impersonation", "oid": "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb", "sub": "pairwise-sub-1",
        "upn": "Adminagent.csp@testtestpartner.onmicrosoft.com", "name": "Adminagent CSP", "acr": "1",
    });
    let extra = match kind {
        "mfa" => merge(user, json!({"amr": ["pwd", "mfa"]})),
        "nomfa" => merge(user, json!({"amr": ["pwd"]})),
        "app" => json!({"idtyp": "app", "roles": ["Partner.Read.All"],
                        "oid": "cccccccc-0000-1111-2222-dddddddddddd", "sub": "cccccccc-0000-1111-2222-dddddddddddd"}),
        other => panic!("unknown demo token kind {other}"),
    };
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    c
}

fn merge(mut a: Value, b: Value) -> Value {
    for (k, v) in b.as_object().expect("object") {
        a[k] = v.clone();
    }
    a
}

/// A JWKS and discovery server on loopback whose key set can be changed, counted and failed.
pub struct KeyServer {
    pub addr: SocketAddr,
    jwks: Mutex<Value>,
    issuer: String,
    /// JWKS documents served.
    pub fetches: AtomicUsize,
    /// While false, every request gets 503.
    pub up: AtomicBool,
    /// Delay before each answer, in milliseconds (a slow key server).
    pub delay_ms: AtomicU64,
}

impl KeyServer {
    /// Starts serving `/.well-known/openid-configuration` and `/jwks.json` on `listener`.
    pub fn start(listener: TcpListener, jwks: Value, issuer: &str) -> Arc<Self> {
        let addr = listener.local_addr().expect("bound");
        let me = Arc::new(KeyServer {
            addr,
            jwks: Mutex::new(jwks),
            issuer: issuer.into(),
            fetches: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
        });
        let state = me.clone();
        serve_plain(listener, move |req| {
            let state = state.clone();
            async move {
                let delay = state.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                state.answer(&req)
            }
        });
        me
    }

    pub fn discovery_url(&self) -> String {
        format!("http://{}/.well-known/openid-configuration", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn set_jwks(&self, jwks: Value) {
        *self.jwks.lock().unwrap() = jwks;
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.up.load(Ordering::SeqCst) {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "down\n".into());
        }
        match req.uri().path() {
            "/.well-known/openid-configuration" => {
                let doc = json!({"issuer": self.issuer, "jwks_uri": self.jwks_url(),
                                 "id_token_signing_alg_values_supported": ["RS256"]});
                plain(StatusCode::OK, doc.to_string().into())
            }
            "/jwks.json" => {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                plain(StatusCode::OK, self.jwks.lock().unwrap().to_string().into())
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// An upstream that answers every request with JSON naming the method, path and the
/// gateway's identity headers it received.
pub fn start_echo_upstream(listener: TcpListener, header_prefix: &'static str) {
    serve_plain(listener, move |req| {
        let identity: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(header_prefix))
            .map(|(k, v)| (k.as_str()[header_prefix.len()..].to_string(), Value::from(v.to_str().unwrap_or("?"))))
            .collect();
        let body = json!({"ok": true, "method": req.method().as_str(), "path": req.uri().path(), "identity": identity});
        std::future::ready(plain(StatusCode::OK, format!("{body}\n").into()))
    });
}

fn serve_plain<F, Fut>(listener: TcpListener, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let r = answer(req);
                    async move { Ok::<_, Infallible>(r.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}
