//! A verified token's binding to its client, checked on every request (never cached: a proof
//! is for one request, a certificate for one connection): a DPoP-bound token only with the `DPoP`
//! scheme and a valid proof of its key, the `DPoP` scheme only with a DPoP-bound token; a
//! certificate-bound token only over a connection with that certificate; and the route's
//! required binding. No I/O.

use http::{HeaderMap, HeaderName};

use super::challenge::AuthRefusal;
use super::dpop::{self, BindingError, ProofError};
use super::nonce::Nonces;
use super::replay::{NotRecorded, ReplayStore};
use super::token::{Cnf, Scheme};
use crate::routes::Binding;

/// What a proof is held to besides the request: the clock, `[dpop] iat_window` and nonces.
pub(super) struct Rules<'a> {
    pub now: i64,
    pub window: i64,
    pub nonces: Option<&'a Nonces>,
}

/// The request a token comes with: what a DPoP proof must match, and the route's binding.
pub struct Presented<'a> {
    pub method: &'a str,
    /// The path as the client sent it (without the query).
    pub path: &'a str,
    /// The listener's `public_origin`, normalized; without one, DPoP-bound tokens are refused.
    pub origin: Option<&'a str>,
    /// The route's required binding.
    pub required: Option<Binding>,
    /// The proofs accepted within their window, shared by every request of this replica.
    pub replays: &'a ReplayStore,
    /// The SHA-256 of the client certificate of the request's connection, if it sent one.
    pub cert: Option<[u8; 32]>,
}

/// How the request bound its token to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoundBy {
    /// Not bound: a bearer token.
    Nothing,
    Dpop,
    /// To the connection's client certificate (RFC 8705).
    Mtls,
}

impl BoundBy {
    /// `token_bindings_total`'s label and the audit field.
    pub fn as_str(self) -> &'static str {
        match self {
            BoundBy::Nothing => "bearer",
            BoundBy::Dpop => "dpop",
            BoundBy::Mtls => "mtls",
        }
    }
}

/// The header carrying a DPoP proof (RFC 9449 §4.1).
pub static DPOP: HeaderName = HeaderName::from_static("dpop");

/// How `token` (bound as its `cnf` says) is bound on this request, if that meets the route's
/// requirement. RFC 9449 §7.1: a DPoP-bound token only with the `DPoP` scheme and a valid proof
/// of its key; the `DPoP` scheme only with a DPoP-bound token. RFC 8705 §3: a certificate-bound
/// token only over a connection whose client certificate has its thumbprint. A token bound both
/// ways needs both.
pub(super) fn check(
    scheme: Scheme,
    token: &str,
    cnf: Cnf<'_>,
    headers: &HeaderMap,
    presented: &Presented<'_>,
    rules: Rules<'_>,
) -> Result<BoundBy, AuthRefusal> {
    let refuse = |why| Err(AuthRefusal::Binding(why));
    let dpop = match (scheme, cnf.jkt) {
        (Scheme::Bearer, None) => false,
        (Scheme::Bearer, Some(_)) => return refuse(BindingError::BoundAsBearer),
        (Scheme::Dpop, None) => return refuse(BindingError::NotBound),
        (Scheme::Dpop, Some(jkt)) => {
            prove(jkt, token, headers, presented, &rules)?;
            true
        }
    };
    let mtls = match cnf.x5t_s256 {
        None => false,
        Some(x5t) if presented.cert.is_some_and(|c| thumbprint_is(&c, x5t)) => true,
        Some(_) => return refuse(BindingError::CertMismatch),
    };
    match presented.required {
        Some(Binding::Dpop) if !dpop => refuse(BindingError::Required),
        Some(Binding::Mtls) if !mtls => refuse(BindingError::CertRequired),
        Some(Binding::Any) if !(dpop || mtls) => refuse(BindingError::Required),
        _ if dpop => Ok(BoundBy::Dpop),
        _ if mtls => Ok(BoundBy::Mtls),
        _ => Ok(BoundBy::Nothing),
    }
}

/// RFC 8705's thumbprint of a certificate: the SHA-256 of its DER, which `x5t#S256` names. The
/// connection's certificate (proxy mode) and the front's (authorization-only mode) both come here.
pub fn cert_thumbprint(der: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
    out
}

/// Whether `x5t`, base64url as `cnf` carries it, is the certificate digest `cert`.
fn thumbprint_is(cert: &[u8; 32], x5t: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x5t).is_ok_and(|d| d == cert)
}

/// The request's one proof, checked for the key `jkt` and recorded against replays.
fn prove(
    jkt: &str,
    token: &str,
    headers: &HeaderMap,
    presented: &Presented<'_>,
    rules: &Rules<'_>,
) -> Result<(), AuthRefusal> {
    let origin = presented.origin.ok_or(AuthRefusal::Binding(BindingError::NoOrigin))?;
    let proof = |e| AuthRefusal::Proof(e);
    let mut proofs = headers.get_all(&DPOP).iter();
    let one = proofs.next().ok_or(proof(ProofError::Missing))?;
    if proofs.next().is_some() {
        return Err(proof(ProofError::Multiple));
    }
    let htu = dpop::expected_htu(origin, presented.path).ok_or(proof(ProofError::WrongUri))?;
    let expected = dpop::Expected {
        method: presented.method,
        htu: &htu,
        access_token: token,
        now: rules.now,
        window: rules.window,
        nonces: rules.nonces,
    };
    let proven = dpop::check(one.to_str().map_err(|_| proof(ProofError::Malformed))?, &expected).map_err(proof)?;
    if proven.jkt != jkt {
        return Err(AuthRefusal::Binding(BindingError::KeyMismatch));
    }
    // Last: only a proof that passed every other check uses up its jti.
    presented.replays.record(jkt, &proven.jti, proven.expires, rules.now).map_err(|e| match e {
        NotRecorded::Replayed => proof(ProofError::Replayed),
        NotRecorded::Full => AuthRefusal::ProofsFull,
    })?;
    Ok(())
}
