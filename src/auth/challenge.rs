//! Pure: an authentication refusal -> status, reason phrase, `WWW-Authenticate`, body fields.

use base64::Engine;
use http::StatusCode;

use super::dpop::{self, BindingError, ProofError};
use super::invalid::Invalid;
use super::policy::Deny;
use crate::routes::StepUp;

/// Why the auth step refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No `Authorization: Bearer` on a route that needs a token.
    MissingToken,
    Invalid(Invalid),
    /// The token verified; the route's rule refused it.
    Denied(Denial),
    /// No key could be had for the token's issuer: our fault, not the caller's.
    KeysUnavailable,
    /// The DPoP proof failed a check of RFC 9449 §4.3.
    Proof(ProofError),
    /// Token and proof do not belong together, or the route's binding is not met.
    Binding(BindingError),
    /// The replay store holds as many live proofs as it may: refused rather than a proof
    /// forgotten early. Our limit, not the caller's fault.
    ProofsFull,
}

/// A route's rule refused a verified token: all that `Authenticator::authorize` can return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Refused as the rule says; MFA missing or too old gets the Partner Center refusal.
    Plain(Deny),
    /// MFA missing or too old, on a route that sends a challenge the client can act on.
    StepUp(StepUpNeeded),
}

/// A step-up refusal: the route's challenge, and what it needs from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepUpNeeded {
    pub style: StepUp,
    /// `MfaRequired` or `AuthTooOld`.
    pub why: Deny,
    /// The route's `max_auth_age`, in seconds (RFC 9470 `max_age`).
    pub max_age: Option<u64>,
    /// The token's `tid` when it is a GUID, for the Entra `authorization_uri`.
    pub tid: Option<[u8; 36]>,
}

// Part of the one refusal mapping (`crate::refusal`): a new variant has no default answer.
#[deny(clippy::wildcard_enum_match_arm)]
impl Denial {
    /// The rule that refused.
    pub fn why(&self) -> Deny {
        match self {
            Denial::Plain(d) => *d,
            Denial::StepUp(s) => s.why,
        }
    }

    /// The `kind` label of `step_up_challenges_total` when this refusal asks the client to sign
    /// in again (MFA missing or too old).
    pub fn step_up_kind(&self) -> Option<&'static str> {
        match self {
            Denial::Plain(Deny::MfaRequired | Deny::AuthTooOld) => Some(StepUp::PartnerCenter.as_str()),
            Denial::Plain(Deny::AppOnlyNotAllowed | Deny::MissingRole | Deny::MissingScope) => None,
            Denial::StepUp(s) => Some(s.style.as_str()),
        }
    }
}

/// `[challenge]`: how refusals present themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeSettings {
    pub realm: Option<String>,
    /// RFC 9470 `acr_values`: space-separated, in order of preference.
    pub acr_values: Option<String>,
    /// The Entra auth context (`acrs` id, e.g. `c1`) the claims challenge asks for.
    pub auth_context: Option<String>,
    /// Where an Entra client signs in again; `{tid}` becomes the token's tenant.
    pub authorization_uri: String,
}

pub const DEFAULT_AUTHORIZATION_URI: &str = "https://login.microsoftonline.com/{tid}/oauth2/v2.0/authorize";

impl Default for ChallengeSettings {
    fn default() -> Self {
        Self { realm: None, acr_values: None, auth_context: None, authorization_uri: DEFAULT_AUTHORIZATION_URI.into() }
    }
}

/// Everything the response needs; `refusal.rs` turns it into bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub status: StatusCode,
    /// HTTP/1.1 reason phrase when it is not the standard one.
    pub reason_phrase: Option<&'static str>,
    pub www_authenticate: Option<String>,
    /// A second `WWW-Authenticate`: the `DPoP` challenge beside a `Bearer` one (RFC 9449 §7.2).
    pub dpop: Option<String>,
    pub error: &'static str,
    pub description: &'static str,
    pub retry_after_secs: Option<u64>,
}

pub const MFA_REASON_PHRASE: &str = "Unauthorized - MFA required";

/// The challenge for a refusal under the `[challenge]` settings. A client that used the `DPoP`
/// scheme gets a `DPoP` challenge beside each `Bearer` one.
pub fn challenge(refusal: AuthRefusal, settings: &ChallengeSettings, dpop_client: bool) -> Challenge {
    let mut c = first_challenge(refusal, settings);
    let already = c.www_authenticate.as_deref().is_some_and(|w| w.starts_with("DPoP"));
    if dpop_client && c.status == StatusCode::UNAUTHORIZED && !already {
        c.dpop = Some(scheme("DPoP", settings, &[algs()]));
    }
    c
}

fn algs() -> String {
    format!("algs=\"{}\"", dpop::ALGS_PARAM)
}

#[deny(clippy::wildcard_enum_match_arm)]
fn first_challenge(refusal: AuthRefusal, settings: &ChallengeSettings) -> Challenge {
    match refusal {
        // RFC 6750 §3.1: a request without credentials gets no error code.
        AuthRefusal::MissingToken => unauthorized(bearer(settings, &[]), "missing_token", "a Bearer token is required"),
        AuthRefusal::Invalid(why) => {
            let params = ["error=\"invalid_token\"".into(), format!("error_description=\"{}\"", why.description())];
            unauthorized(bearer(settings, &params), "invalid_token", why.description())
        }
        AuthRefusal::Denied(Denial::Plain(why @ (Deny::MfaRequired | Deny::AuthTooOld))) => partner_center(why),
        AuthRefusal::Denied(Denial::Plain(
            why @ (Deny::AppOnlyNotAllowed | Deny::MissingRole | Deny::MissingScope),
        )) => {
            let params =
                ["error=\"insufficient_scope\"".into(), format!("error_description=\"{}\"", why.description())];
            Challenge {
                status: StatusCode::FORBIDDEN,
                ..unauthorized(bearer(settings, &params), "insufficient_scope", why.description())
            }
        }
        AuthRefusal::Denied(Denial::StepUp(s)) => match s.style {
            StepUp::Rfc9470 => rfc9470(&s, settings),
            StepUp::EntraClaims => entra_claims(&s, settings),
            // A route whose step-up is the plain refusal never asks for one (`authorize`).
            StepUp::PartnerCenter => partner_center(s.why),
        },
        AuthRefusal::KeysUnavailable => Challenge {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason_phrase: None,
            www_authenticate: None,
            dpop: None,
            error: "keys_unavailable",
            description: "the token issuer's signing keys cannot be fetched right now",
            retry_after_secs: Some(5),
        },
        // RFC 9449 §9: a fresh nonce goes with it (`crate::refusal`).
        AuthRefusal::Proof(why @ ProofError::UseNonce) => {
            let params =
                ["error=\"use_dpop_nonce\"".into(), format!("error_description=\"{}\"", why.description()), algs()];
            unauthorized(scheme("DPoP", settings, &params), "use_dpop_nonce", why.description())
        }
        // RFC 9449 §7.1: the proof's own error, with the algorithms accepted.
        AuthRefusal::Proof(why) => {
            let params =
                ["error=\"invalid_dpop_proof\"".into(), format!("error_description=\"{}\"", why.description()), algs()];
            unauthorized(scheme("DPoP", settings, &params), "invalid_dpop_proof", why.description())
        }
        AuthRefusal::Binding(why) if why.dpop_challenge() => {
            let params =
                ["error=\"invalid_token\"".into(), format!("error_description=\"{}\"", why.description()), algs()];
            unauthorized(scheme("DPoP", settings, &params), "invalid_token", why.description())
        }
        // RFC 8705 §3: certificate binding speaks Bearer.
        AuthRefusal::Binding(why) => {
            let params = ["error=\"invalid_token\"".into(), format!("error_description=\"{}\"", why.description())];
            unauthorized(bearer(settings, &params), "invalid_token", why.description())
        }
        AuthRefusal::ProofsFull => Challenge {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason_phrase: None,
            www_authenticate: None,
            dpop: None,
            error: "dpop_busy",
            description: "too many DPoP proofs to remember right now",
            retry_after_secs: Some(1),
        },
    }
}

/// `Bearer` with the configured realm first, then `params`.
fn bearer(settings: &ChallengeSettings, params: &[String]) -> String {
    scheme("Bearer", settings, params)
}

/// `name` (an auth scheme) with the configured realm first, then `params`.
fn scheme(name: &str, settings: &ChallengeSettings, params: &[String]) -> String {
    let realm = settings.realm.as_deref().map(|r| format!("realm=\"{r}\""));
    let all: Vec<&str> = realm.iter().map(String::as_str).chain(params.iter().map(String::as_str)).collect();
    if all.is_empty() {
        name.to_string()
    } else {
        format!("{name} {}", all.join(", "))
    }
}

fn unauthorized(www_authenticate: String, error: &'static str, description: &'static str) -> Challenge {
    Challenge {
        status: StatusCode::UNAUTHORIZED,
        reason_phrase: None,
        www_authenticate: Some(www_authenticate),
        dpop: None,
        error,
        description,
        retry_after_secs: None,
    }
}

/// The Partner Center wire format, byte for byte: reason phrase and a bare error code.
fn partner_center(why: Deny) -> Challenge {
    Challenge {
        reason_phrase: Some(MFA_REASON_PHRASE),
        ..unauthorized("Bearer error=\"invalid_token\"".to_string(), "invalid_token", why.description())
    }
}

/// RFC 9470 §3.
fn rfc9470(s: &StepUpNeeded, settings: &ChallengeSettings) -> Challenge {
    let mut params = vec![
        "error=\"insufficient_user_authentication\"".to_string(),
        format!("error_description=\"{}\"", s.why.description()),
    ];
    params.extend(settings.acr_values.as_deref().map(|v| format!("acr_values=\"{v}\"")));
    params.extend(s.max_age.map(|m| format!("max_age=\"{m}\"")));
    unauthorized(bearer(settings, &params), "insufficient_user_authentication", s.why.description())
}

/// Entra's claims challenge, in the shape MSAL parses (`realm=""` included).
fn entra_claims(s: &StepUpNeeded, settings: &ChallengeSettings) -> Challenge {
    let tenant = s.tid.as_ref().and_then(|t| std::str::from_utf8(t).ok()).unwrap_or("organizations");
    let uri = settings.authorization_uri.replace("{tid}", tenant);
    let context = settings.auth_context.as_deref().unwrap_or_default();
    let claims = format!("{{\"access_token\":{{\"acrs\":{{\"essential\":true,\"value\":\"{context}\"}}}}}}");
    let claims = base64::engine::general_purpose::STANDARD.encode(claims);
    let www =
        format!("Bearer realm=\"\", authorization_uri=\"{uri}\", error=\"insufficient_claims\", claims=\"{claims}\"");
    unauthorized(www, "insufficient_claims", s.why.description())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_table() {
        let plain = ChallengeSettings::default();
        let api = ChallengeSettings { realm: Some("api".into()), ..Default::default() };
        let c = challenge(AuthRefusal::MissingToken, &plain, false);
        assert_eq!((c.status, c.www_authenticate.as_deref()), (StatusCode::UNAUTHORIZED, Some("Bearer")));
        let c = challenge(AuthRefusal::MissingToken, &api, false);
        assert_eq!(c.www_authenticate.as_deref(), Some("Bearer realm=\"api\""));

        let c = challenge(AuthRefusal::Invalid(Invalid::Expired), &api, false);
        assert_eq!(
            c.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token expired\"")
        );

        let c = challenge(AuthRefusal::Denied(Denial::Plain(Deny::MfaRequired)), &api, false);
        assert_eq!(c.status, StatusCode::UNAUTHORIZED);
        assert_eq!(c.reason_phrase, Some("Unauthorized - MFA required"));
        assert_eq!(c.www_authenticate.as_deref(), Some("Bearer error=\"invalid_token\""));

        let c = challenge(AuthRefusal::Denied(Denial::Plain(Deny::AppOnlyNotAllowed)), &plain, false);
        assert_eq!(c.status, StatusCode::FORBIDDEN);
        assert!(c.www_authenticate.unwrap().starts_with("Bearer error=\"insufficient_scope\", error_description="));

        let c = challenge(AuthRefusal::KeysUnavailable, &plain, false);
        assert_eq!(
            (c.status, c.www_authenticate, c.retry_after_secs),
            (StatusCode::SERVICE_UNAVAILABLE, None, Some(5))
        );
    }

    #[test]
    fn descriptions_are_safe_header_text() {
        let all = Invalid::ALL
            .iter()
            .map(|i| i.description())
            .chain(ProofError::ALL.iter().map(|p| p.description()))
            .chain(BindingError::ALL.iter().map(|b| b.description()));
        for d in all {
            assert!(!d.contains('"') && !d.contains('\\') && d.is_ascii(), "{d}");
        }
    }

    /// RFC 9449 §7.1 and §7.2: proof errors and binding errors in a `DPoP` challenge; a DPoP
    /// client refused for want of MFA gets the Partner Center bytes and a `DPoP` challenge too.
    #[test]
    fn dpop_refusals() {
        let plain = ChallengeSettings::default();
        let c = challenge(AuthRefusal::Proof(ProofError::WrongUri), &plain, true);
        assert_eq!(c.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            c.www_authenticate.as_deref(),
            Some(
                "DPoP error=\"invalid_dpop_proof\", error_description=\"the DPoP proof is for another URI\", \
                 algs=\"ES256 ES384 EdDSA RS256 PS256 PS384\""
            )
        );
        assert_eq!(c.dpop, None);
        let c = challenge(AuthRefusal::Binding(BindingError::BoundAsBearer), &plain, false);
        assert!(c.www_authenticate.unwrap().starts_with("DPoP error=\"invalid_token\", error_description="));

        let c = challenge(AuthRefusal::Denied(Denial::Plain(Deny::MfaRequired)), &plain, true);
        assert_eq!(c.reason_phrase, Some("Unauthorized - MFA required"));
        assert_eq!(c.www_authenticate.as_deref(), Some("Bearer error=\"invalid_token\""));
        assert_eq!(c.dpop.as_deref(), Some("DPoP algs=\"ES256 ES384 EdDSA RS256 PS256 PS384\""));
        assert_eq!(challenge(AuthRefusal::Denied(Denial::Plain(Deny::MfaRequired)), &plain, false).dpop, None);
        // Forbidden is not a challenge to authenticate again.
        let c = challenge(AuthRefusal::Denied(Denial::Plain(Deny::MissingRole)), &plain, true);
        assert_eq!((c.status, c.dpop), (StatusCode::FORBIDDEN, None));
    }
}
