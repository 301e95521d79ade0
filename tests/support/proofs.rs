//! DPoP proofs made as a client makes them (RFC 9449 §4.2), with keys made here (ES256 and
//! Ed25519, `dev::DpopKey`), and any header or claim a test wants to get wrong.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::Engine;
use mfa_gateway::dev::DpopKey;
use serde_json::{json, Value};

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A client's proof key: `dev::DpopKey` (its JWK, header and signing), with the thumbprint
/// worked out here rather than by the gateway's own code.
pub struct Holder(DpopKey);

impl std::ops::Deref for Holder {
    type Target = DpopKey;
    fn deref(&self) -> &DpopKey {
        &self.0
    }
}

impl Holder {
    pub fn es256() -> Self {
        Holder(DpopKey::es256())
    }

    pub fn ed25519() -> Self {
        Holder(DpopKey::ed25519())
    }

    /// RFC 7638, written out here: the required members in order, hashed.
    pub fn jkt(&self) -> String {
        let j = self.jwk();
        let canonical = match &self.0 {
            DpopKey::Es256(_) => format!(r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#, j["x"], j["y"]),
            DpopKey::Ed25519(_) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":{}}}"#, j["x"]),
        };
        b64(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// A valid proof for `method` `url` presenting `token`, with a fresh `jti`.
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
