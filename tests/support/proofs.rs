//! DPoP proofs made as a client makes them (RFC 9449 §4.2), with keys made here: ES256 and
//! Ed25519, and any header or claim a test wants to get wrong.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use serde_json::{json, Value};

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A client's proof key.
pub enum Holder {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Holder {
    pub fn es256() -> Self {
        Holder::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    pub fn ed25519() -> Self {
        Holder::Ed25519(Ed25519KeyPair::generate().unwrap())
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Holder::Es256(_) => "ES256",
            Holder::Ed25519(_) => "EdDSA",
        }
    }

    pub fn jwk(&self) -> Value {
        match self {
            Holder::Es256(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Holder::Ed25519(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())}),
        }
    }

    /// RFC 7638, written out here: the required members in order, hashed.
    pub fn jkt(&self) -> String {
        let j = self.jwk();
        let canonical = match self {
            Holder::Es256(_) => format!(r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#, j["x"], j["y"]),
            Holder::Ed25519(_) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":{}}}"#, j["x"]),
        };
        b64(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    }

    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Holder::Es256(k) => k.sign(&SystemRandom::new(), input).unwrap().as_ref().to_vec(),
            Holder::Ed25519(k) => k.sign(input).as_ref().to_vec(),
        }
    }

    /// A proof with `header` and `claims` as given.
    pub fn sign_proof(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        format!("{input}.{}", b64(&self.sign(input.as_bytes())))
    }

    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    /// A valid proof for `method` `url` presenting `token`.
    pub fn proof(&self, method: &str, url: &str, token: &str) -> String {
        self.sign_proof(&self.header(), &claims(method, url, token))
    }
}

pub fn claims(method: &str, url: &str, token: &str) -> Value {
    static N: AtomicUsize = AtomicUsize::new(0);
    json!({
        "jti": format!("proof-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
        "htm": method,
        "htu": url,
        "iat": now(),
        "ath": b64(digest::digest(&digest::SHA256, token.as_bytes()).as_ref()),
    })
}
