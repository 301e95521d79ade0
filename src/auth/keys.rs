//! Pure: a JWKS document -> verification keys. No I/O; `jwks.rs` fetches and caches.

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::invalid::Invalid;
use super::token::{IssuerPattern, IssuerRules, Parsed};

/// The key's type, which fixes the algorithms it may verify (no RSA/EC/EdDSA confusion, and no
/// HMAC: symmetric keys in a published set are never trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyType {
    /// The algorithms this key type verifies, in the order they are prepared.
    fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyType::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyType::EcP256 => &[ES256],
            KeyType::EcP384 => &[ES384],
            KeyType::Ed25519 => &[EdDSA],
        }
    }

    pub fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::EcP256 => alg == ES256,
            KeyType::EcP384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyType,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    /// v2-style keys name the issuer they sign for; they verify only that issuer's tokens.
    pub issuer: Option<IssuerPattern>,
    /// The key parsed once per algorithm it may verify: parsing an RSA key costs about as
    /// much as a verification, so it is not done per token.
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
    /// The public material, to tell a re-published key from a replaced one.
    pub material: Vec<u8>,
}

impl Key {
    /// Verifies `signature` over `message` for `alg`; `None` when the key does not do `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Option<bool> {
        let (_, key) = self.verifiers.iter().find(|(a, _)| *a == alg)?;
        Some(key.verify_sig(message, signature).is_ok())
    }
}

fn aws_lc_algorithm(alg: Algorithm) -> &'static dyn VerificationAlgorithm {
    match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        // HMAC never reaches here: no key type accepts it.
        _ => &sig::ED25519,
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("kind", &self.kind).field("alg", &self.alg).finish()
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    issuer: Option<String>,
}

/// The usable keys of a JWKS, and a note for each key that was skipped.
pub struct ParsedJwks {
    pub keys: Vec<Key>,
    pub skipped: Vec<String>,
}

/// Result of looking a token's key up in a key set.
pub enum Lookup<K = std::sync::Arc<Key>> {
    Found(K),
    /// No key set has been loaded (or it went stale): the gateway cannot judge the token.
    NoKeys,
    Invalid(Invalid),
}

/// Finds the key for a token in a key set: by `kid`, restricted to keys that may sign for `iss`.
pub fn pick<K: std::ops::Deref<Target = Key> + Clone>(
    keys: &[K],
    kid: Option<&str>,
    iss: &str,
    tid: Option<&str>,
) -> Lookup<K> {
    if keys.is_empty() {
        return Lookup::NoKeys;
    }
    let usable = |k: &&K| k.issuer.as_ref().is_none_or(|p| p.matches(iss, tid).is_ok());
    match kid {
        Some(kid) => match keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            Some(k) if usable(&k) => Lookup::Found(k.clone()),
            Some(_) => Lookup::Invalid(Invalid::UnknownIssuer),
            None => Lookup::Invalid(Invalid::UnknownKid),
        },
        None if keys.len() == 1 => match keys.iter().find(usable) {
            Some(k) => Lookup::Found(k.clone()),
            None => Lookup::Invalid(Invalid::UnknownIssuer),
        },
        None => Lookup::Invalid(Invalid::KidRequired),
    }
}

/// Why a JWKS document gave no key set.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document")]
    NotJwks(#[source] serde_json::Error),
    /// Each skipped key with why it was.
    #[error("no usable signing key ({})", skipped.join("; "))]
    NoUsableKey { skipped: Vec<String> },
}

/// Parses a JWKS. Keys that cannot be used for signatures are skipped with a reason; a document
/// with no usable key at all is an error, so a bad publish never empties a good cached set.
pub fn parse_jwks(body: &[u8]) -> Result<ParsedJwks, JwksError> {
    let raw: RawJwks = serde_json::from_slice(body).map_err(JwksError::NotJwks)?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, v) in raw.keys.into_iter().enumerate() {
        match public_key(v) {
            Ok(k) => keys.push(k),
            Err(why) => skipped.push(format!("key {i}: {why}")),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey { skipped });
    }
    Ok(ParsedJwks { keys, skipped })
}

/// One public JWK as a verification key (a key set's member, or a DPoP proof's own `jwk`), or
/// why it is not usable.
pub fn public_key(v: serde_json::Value) -> Result<Key, String> {
    let jwk: RawJwk = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if let Some(u) = &jwk.use_ {
        if u != "sig" {
            return Err(format!("use {u:?} is not \"sig\""));
        }
    }
    let alg = match &jwk.alg {
        Some(a) => Some(a.parse::<Algorithm>().map_err(|_| format!("unsupported alg {a:?}"))?),
        None => None,
    };
    let need = |f: &Option<String>, name: &str| f.clone().ok_or_else(|| format!("missing {name}"));
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| "bad base64url in key".to_string())
    };
    // (type, public key bytes as aws-lc-rs parses them, material to compare sets by)
    let (kind, public, material) = match jwk.kty.as_str() {
        "RSA" => {
            let (n, e) = (need(&jwk.n, "n")?, need(&jwk.e, "e")?);
            let n_bytes = b64(&n)?;
            let bits = n_bytes.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(format!("RSA modulus of {bits} bits is under 2048"));
            }
            let e_bytes = b64(&e)?;
            let strip = |b: &[u8]| b.iter().position(|x| *x != 0).map_or_else(Vec::new, |i| b[i..].to_vec());
            let (n_min, e_min) = (strip(&n_bytes), strip(&e_bytes));
            let spki = {
                use aws_lc_rs::encoding::AsDer;
                aws_lc_rs::rsa::PublicKeyComponents { n: &n_min[..], e: &e_min[..] }
                    .as_der()
                    .map_err(|_| "RSA key components do not form a key".to_string())?
            };
            (KeyType::Rsa, spki.as_ref().to_vec(), [n_min, e_min].concat())
        }
        "EC" => {
            let (x, y) = (need(&jwk.x, "x")?, need(&jwk.y, "y")?);
            let (kind, len) = match jwk.crv.as_deref() {
                Some("P-256") => (KeyType::EcP256, 32),
                Some("P-384") => (KeyType::EcP384, 48),
                other => return Err(format!("unsupported curve {other:?}")),
            };
            let (xb, yb) = (b64(&x)?, b64(&y)?);
            if xb.len() != len || yb.len() != len {
                return Err("EC coordinates have the wrong length for the curve".into());
            }
            let point = [&[0x04][..], &xb, &yb].concat();
            (kind, point.clone(), point)
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!("unsupported OKP curve {:?}", jwk.crv));
            }
            let x = need(&jwk.x, "x")?;
            let xb = b64(&x)?;
            if xb.len() != 32 {
                return Err("Ed25519 key is not 32 bytes".into());
            }
            (KeyType::Ed25519, xb.clone(), xb)
        }
        other => return Err(format!("kty {other:?} is not an asymmetric signing key")),
    };
    if let Some(a) = alg {
        if !kind.accepts(a) {
            return Err(format!("alg {a:?} does not fit a {kind:?} key"));
        }
    }
    let mut verifiers = Vec::new();
    for &a in kind.algorithms().iter().filter(|a| alg.is_none_or(|pinned| pinned == **a)) {
        let parsed = ParsedPublicKey::new(aws_lc_algorithm(a), &public).map_err(|e| format!("key rejected: {e}"))?;
        verifiers.push((a, parsed));
    }
    let issuer = jwk.issuer.as_deref().map(IssuerPattern::new);
    Ok(Key { kid: jwk.kid, kind, alg, issuer, verifiers, material })
}

/// Checks the algorithm against the issuer's allowlist and the key, then the signature.
pub fn verify_signature(parsed: &Parsed<'_>, rules: &IssuerRules, key: &Key) -> Result<(), Invalid> {
    if !rules.algorithms.contains(&parsed.alg) {
        return Err(Invalid::AlgNotAllowed);
    }
    if !key.kind.accepts(parsed.alg) || key.alg.is_some_and(|a| a != parsed.alg) {
        return Err(Invalid::AlgKeyMismatch);
    }
    match key.verify(parsed.alg, parsed.signing_input.as_bytes(), &parsed.signature) {
        Some(true) => Ok(()),
        Some(false) => Err(Invalid::BadSignature),
        None => Err(Invalid::AlgKeyMismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_unusable_keys_and_keeps_good_ones() {
        let real = crate::dev::DevIssuer::generate("k").jwk();
        let n = real["n"].as_str().unwrap().to_string();
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "short", "n": "q".repeat(100), "e": "AQAB"},
            {"kty": "RSA", "kid": "wrong-alg", "alg": "ES256", "n": n, "e": "AQAB"},
            {"kty": "EC", "kid": "bad-len", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "good", "alg": "RS256", "n": n, "e": "AQAB",
             "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"}
        ]});
        let parsed = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].kid.as_deref(), Some("good"));
        assert!(parsed.keys[0].issuer.is_some());
        assert_eq!(parsed.skipped.len(), 5);
    }

    #[test]
    fn a_modulus_that_is_not_a_key_is_skipped() {
        use base64::Engine;
        // 2048 bits, but even: no RSA modulus.
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc2u8; 256]);
        let doc = serde_json::json!({"keys": [{"kty": "RSA", "kid": "junk", "n": n, "e": "AQAB"}]});
        let err = parse_jwks(doc.to_string().as_bytes()).err().unwrap();
        assert!(err.to_string().contains("key rejected"), "{err}");
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"AA"}]}"#).is_err());
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn key_types_accept_only_their_algorithms() {
        use Algorithm::*;
        assert!(KeyType::Rsa.accepts(RS256) && KeyType::Rsa.accepts(PS512));
        assert!(!KeyType::Rsa.accepts(ES256) && !KeyType::Rsa.accepts(HS256));
        assert!(KeyType::EcP256.accepts(ES256) && !KeyType::EcP256.accepts(ES384));
        assert!(KeyType::Ed25519.accepts(EdDSA) && !KeyType::Ed25519.accepts(RS256));
    }
}
