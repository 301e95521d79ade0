//! Pure: a DPoP proof (RFC 9449 §4.3) checked against the request it came with and the token it
//! presents. No I/O and no state: the replay store (`replay`) and the clock are the caller's.

use aws_lc_rs::digest;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::keys;

/// The proof algorithms accepted: asymmetric only (RFC 9449 §4.2), those `keys` verifies.
pub const ALGORITHMS: [Algorithm; 6] =
    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256, Algorithm::PS384];

/// `algs` of the `DPoP` challenge: the accepted algorithms.
pub const ALGS_PARAM: &str = "ES256 ES384 EdDSA RS256 PS256 PS384";

/// The longest proof read: an RSA-4096 key and signature, with room for the claims.
const MAX_PROOF_BYTES: usize = 4096;

/// Why a proof is refused: a bounded metric label and a short description safe to send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProofError {
    /// No `DPoP` header with a `DPoP` token.
    Missing,
    /// More than one `DPoP` header (§4.3 check 1).
    Multiple,
    /// Not a compact JWS of JSON, or a claim missing or of the wrong type.
    Malformed,
    WrongTyp,
    AlgNotAllowed,
    /// No `jwk`, a `jwk` holding private members, or one that is not a usable public key.
    BadKey,
    BadSignature,
    WrongMethod,
    WrongUri,
    /// `iat` outside the accepted window.
    Stale,
    /// This `jti` was seen within the window.
    Replayed,
    WrongAth,
    /// Nonces are on, and the proof has none, or one not from the last two time steps.
    UseNonce,
}

impl ProofError {
    pub const ALL: [ProofError; 13] = [
        ProofError::Missing,
        ProofError::Multiple,
        ProofError::Malformed,
        ProofError::WrongTyp,
        ProofError::AlgNotAllowed,
        ProofError::BadKey,
        ProofError::BadSignature,
        ProofError::WrongMethod,
        ProofError::WrongUri,
        ProofError::Stale,
        ProofError::Replayed,
        ProofError::WrongAth,
        ProofError::UseNonce,
    ];

    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            ProofError::Missing => "missing",
            ProofError::Multiple => "multiple",
            ProofError::Malformed => "malformed",
            ProofError::WrongTyp => "typ",
            ProofError::AlgNotAllowed => "alg",
            ProofError::BadKey => "jwk",
            ProofError::BadSignature => "signature",
            ProofError::WrongMethod => "htm",
            ProofError::WrongUri => "htu",
            ProofError::Stale => "iat",
            ProofError::Replayed => "jti",
            ProofError::WrongAth => "ath",
            ProofError::UseNonce => "nonce",
        }
    }

    /// `error_description`: short, fixed text.
    pub fn description(self) -> &'static str {
        match self {
            ProofError::Missing => "a DPoP proof is required with the DPoP scheme",
            ProofError::Multiple => "more than one DPoP header",
            ProofError::Malformed => "the DPoP proof is not a JWT with the required claims",
            ProofError::WrongTyp => "the DPoP proof's typ is not dpop+jwt",
            ProofError::AlgNotAllowed => "the DPoP proof's algorithm is not accepted",
            ProofError::BadKey => "the DPoP proof's jwk is not a public signing key",
            ProofError::BadSignature => "the DPoP proof's signature does not verify",
            ProofError::WrongMethod => "the DPoP proof is for another method",
            ProofError::WrongUri => "the DPoP proof is for another URI",
            ProofError::Stale => "the DPoP proof's iat is outside the accepted window",
            ProofError::Replayed => "the DPoP proof was used before",
            ProofError::WrongAth => "the DPoP proof is for another access token",
            ProofError::UseNonce => "a DPoP proof with a fresh nonce from this server is required",
        }
    }
}

/// A token and its proof that do not belong together, or a route's binding not met. Refused
/// with `invalid_token` (RFC 9449 §7.1), not `invalid_dpop_proof`: the proof may be fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingError {
    /// A DPoP-bound token sent as `Bearer`: what a thief holding only the token does.
    BoundAsBearer,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    KeyMismatch,
    /// The `DPoP` scheme with a token that is not DPoP-bound.
    NotBound,
    /// The route requires a DPoP-bound token.
    Required,
    /// This listener has no `public_origin`, so no proof's `htu` can be checked.
    NoOrigin,
    /// The token is bound to a client certificate (`cnf.x5t#S256`) that this connection did not
    /// present (RFC 8705 §3).
    CertMismatch,
    /// The route requires a certificate-bound token.
    CertRequired,
}

impl BindingError {
    pub const ALL: [BindingError; 7] = [
        BindingError::BoundAsBearer,
        BindingError::KeyMismatch,
        BindingError::NotBound,
        BindingError::Required,
        BindingError::NoOrigin,
        BindingError::CertMismatch,
        BindingError::CertRequired,
    ];

    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            BindingError::BoundAsBearer => "bound_as_bearer",
            BindingError::KeyMismatch => "jkt",
            BindingError::NotBound => "not_bound",
            BindingError::Required => "binding_required",
            BindingError::NoOrigin => "no_public_origin",
            BindingError::CertMismatch => "x5t",
            BindingError::CertRequired => "mtls_required",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            BindingError::BoundAsBearer => "a DPoP-bound token needs the DPoP scheme and a proof",
            BindingError::KeyMismatch => "the token is bound to another key than the DPoP proof's",
            BindingError::NotBound => "the token is not DPoP-bound",
            BindingError::Required => "this operation requires a DPoP-bound token",
            BindingError::NoOrigin => "DPoP-bound tokens are not accepted here",
            BindingError::CertMismatch => "the token is bound to a client certificate this connection did not present",
            BindingError::CertRequired => "this operation requires a token bound to the client certificate",
        }
    }

    /// Whether the answer is a `DPoP` challenge: not for certificate binding alone, whose
    /// clients speak `Bearer` (RFC 8705).
    pub fn dpop_challenge(self) -> bool {
        !matches!(self, BindingError::CertMismatch | BindingError::CertRequired)
    }
}

/// The `reason` label of `binding_refusals_total`: each `ProofError`, each `BindingError`, and a
/// full replay store.
pub const REFUSAL_REASONS: [&str; 21] = [
    "missing",
    "multiple",
    "malformed",
    "typ",
    "alg",
    "jwk",
    "signature",
    "htm",
    "htu",
    "iat",
    "jti",
    "ath",
    "nonce",
    "bound_as_bearer",
    "jkt",
    "not_bound",
    "binding_required",
    "no_public_origin",
    "x5t",
    "mtls_required",
    "store_full",
];

/// What the proof must match: the request as the client made it, and the token it presents.
pub struct Expected<'a> {
    pub method: &'a str,
    /// `public_origin` + the request's path, normalized (`normalize_htu`).
    pub htu: &'a str,
    pub access_token: &'a str,
    pub now: i64,
    /// `iat` may be this many seconds from `now`, either way.
    pub window: i64,
    /// When on, the proof must carry one of these nonces (§9).
    pub nonces: Option<&'a super::nonce::Nonces>,
}

/// A proof that passed: the thumbprint of its key (for `cnf.jkt`) and its `jti`, for the
/// replay store, kept until `expires`.
#[derive(Debug, PartialEq, Eq)]
pub struct Proven {
    pub jkt: String,
    pub jti: String,
    pub expires: i64,
}

fn b64(s: &str) -> Result<Vec<u8>, ProofError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| ProofError::Malformed)
}

fn b64_sha256(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, bytes))
}

/// Checks a proof, in the order of RFC 9449 §4.3, but for the replay check (the caller's, with
/// `Proven::jti`) and the key's match with the token's `cnf.jkt` (the caller's, with `Proven::jkt`).
pub fn check(proof: &str, expected: &Expected<'_>) -> Result<Proven, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ProofError::Malformed);
    };
    let header: Value = serde_json::from_slice(&b64(h)?).map_err(|_| ProofError::Malformed)?;
    let claims: Value = serde_json::from_slice(&b64(p)?).map_err(|_| ProofError::Malformed)?;
    let signature = b64(s)?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(ProofError::WrongTyp);
    }
    if header.get("crit").is_some() {
        return Err(ProofError::Malformed);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok())
        .filter(|a| ALGORITHMS.contains(a))
        .ok_or(ProofError::AlgNotAllowed)?;
    let jwk = header.get("jwk").and_then(Value::as_object).ok_or(ProofError::BadKey)?;
    // A private member in the header is a client error that must not go unnoticed (§4.3 check 6).
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"].iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::BadKey);
    }
    let jkt = thumbprint(jwk).ok_or(ProofError::BadKey)?;
    let mut pinned = jwk.clone();
    // One verifier for the proof's own algorithm, not every one the key type allows.
    pinned.insert("alg".into(), Value::String(format!("{alg:?}")));
    pinned.remove("use");
    pinned.remove("kid");
    let key = keys::public_key(Value::Object(pinned)).map_err(|_| ProofError::BadKey)?;
    let signing_input = &proof[..h.len() + 1 + p.len()];
    match key.verify(alg, signing_input.as_bytes(), &signature) {
        Some(true) => {}
        Some(false) => return Err(ProofError::BadSignature),
        None => return Err(ProofError::BadKey),
    }

    let text = |name: &str| claims.get(name).and_then(Value::as_str).ok_or(ProofError::Malformed);
    let jti = text("jti")?;
    let (htm, htu) = (text("htm")?, text("htu")?);
    let iat = claims.get("iat").and_then(Value::as_i64).ok_or(ProofError::Malformed)?;
    let ath = text("ath")?;
    if jti.is_empty() || jti.len() > 256 {
        return Err(ProofError::Malformed);
    }
    if htm != expected.method {
        return Err(ProofError::WrongMethod);
    }
    if normalize_htu(htu).as_deref() != Some(expected.htu) {
        return Err(ProofError::WrongUri);
    }
    if (iat - expected.now).abs() > expected.window {
        return Err(ProofError::Stale);
    }
    if ath != b64_sha256(expected.access_token.as_bytes()) {
        return Err(ProofError::WrongAth);
    }
    if let Some(nonces) = expected.nonces {
        let nonce = claims.get("nonce").and_then(Value::as_str);
        if !nonce.is_some_and(|n| nonces.accepts(n, expected.now)) {
            return Err(ProofError::UseNonce);
        }
    }
    Ok(Proven { jkt, jti: jti.to_owned(), expires: iat + expected.window })
}

/// `[dpop]`: how long a proof is good, how many this replica remembers, and nonces.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopConfig {
    /// A proof's `iat` may be this many seconds from now, either way; its `jti` is kept as long.
    pub window_secs: i64,
    /// Proofs remembered at most (`replay::ReplayStore`).
    pub max_proofs: usize,
    pub nonce: Option<DpopNonce>,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self { window_secs: 60, max_proofs: 100_000, nonce: None }
    }
}

/// The secret every replica shares for DPoP nonces, and their time step.
#[derive(Clone, PartialEq)]
pub struct DpopNonce {
    pub secret: Vec<u8>,
    pub step_secs: i64,
}

impl std::fmt::Debug for DpopNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopNonce").field("step_secs", &self.step_secs).finish_non_exhaustive()
    }
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 over its required members, in
/// lexicographic order with no white space, base64url. `None` for a key type without one here.
pub fn thumbprint(jwk: &serde_json::Map<String, Value>) -> Option<String> {
    let member = |name: &str| {
        jwk.get(name).and_then(Value::as_str).filter(|v| {
            // base64url or a curve name: nothing that would need escaping in JSON.
            !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    let canonical = match jwk.get("kty").and_then(Value::as_str)? {
        "EC" => {
            format!(r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#, member("crv")?, member("x")?, member("y")?)
        }
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, member("e")?, member("n")?),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, member("crv")?, member("x")?),
        _ => return None,
    };
    Some(b64_sha256(canonical.as_bytes()))
}

/// `htu` as compared (§4.3 check 9): query and fragment dropped, then RFC 3986 §6.2.2
/// normalization: scheme and host in lowercase, the scheme's default port dropped, an empty
/// path as `/`, percent-encodings in uppercase and unreserved characters decoded. `None` when
/// it is not an absolute `http` or `https` URI.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let uri = uri.split(['#', '?']).next().unwrap_or_default();
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut host = authority.to_ascii_lowercase();
    if host.ends_with(default_port) {
        host.truncate(host.len() - default_port.len());
    }
    Some(format!("{scheme}://{host}{}", normalize_path(path)?))
}

/// A path's percent-encodings normalized: unreserved characters decoded, the rest uppercase.
fn normalize_path(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let byte = crate::path::escape_at(b, i)?;
            let hex = path.get(i + 1..i + 3)?;
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// The `htu` a request to `path` must carry, behind `origin` (`public_origin`, normalized once).
pub fn expected_htu(origin: &str, path: &str) -> Option<String> {
    normalize_htu(&format!("{origin}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_is_a_label() {
        let reasons: Vec<&str> = ProofError::ALL
            .iter()
            .map(|p| p.reason())
            .chain(BindingError::ALL.iter().map(|b| b.reason()))
            .chain(["store_full"])
            .collect();
        assert_eq!(reasons, REFUSAL_REASONS);
    }

    #[test]
    fn htu_normalization_follows_rfc_3986() {
        let n = |u: &str| normalize_htu(u);
        assert_eq!(n("HTTPS://API.Example.com:443/v1/a?x=1#f").as_deref(), Some("https://api.example.com/v1/a"));
        assert_eq!(n("http://h:80").as_deref(), Some("http://h/"));
        assert_eq!(n("https://h:8443/%7euser/%2f").as_deref(), Some("https://h:8443/~user/%2F"));
        assert_eq!(n("ftp://h/"), None);
        assert_eq!(n("https://user@h/"), None);
        assert_eq!(n("/relative"), None);
        assert_eq!(n("https://h/%zz"), None);
    }

    /// RFC 7638 §3.1's example key and thumbprint.
    #[test]
    fn thumbprint_matches_rfc_7638() {
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }
}
