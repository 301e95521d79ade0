//! Pure: an authentication refusal -> status, reason phrase, `WWW-Authenticate`, body fields.

use http::StatusCode;

use super::policy::Deny;
use super::token::Invalid;

/// Why the auth step refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No `Authorization: Bearer` on a route that needs a token.
    MissingToken,
    Invalid(Invalid),
    Denied(Deny),
    /// No key could be had for the token's issuer: our fault, not the caller's.
    KeysUnavailable,
}

/// Everything the response needs; `refusal.rs` turns it into bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub status: StatusCode,
    /// HTTP/1.1 reason phrase when it is not the standard one.
    pub reason_phrase: Option<&'static str>,
    pub www_authenticate: Option<String>,
    pub error: &'static str,
    pub description: &'static str,
    pub retry_after_secs: Option<u64>,
}

pub const MFA_REASON_PHRASE: &str = "Unauthorized - MFA required";

pub fn challenge(refusal: AuthRefusal, realm: Option<&str>) -> Challenge {
    let realm_param = realm.map(|r| format!("realm=\"{r}\"")).unwrap_or_default();
    let bearer = |params: &[String]| {
        let all: Vec<&str> = std::iter::once(realm_param.as_str())
            .filter(|s| !s.is_empty())
            .chain(params.iter().map(String::as_str))
            .collect();
        if all.is_empty() {
            "Bearer".to_string()
        } else {
            format!("Bearer {}", all.join(", "))
        }
    };
    match refusal {
        // RFC 6750 §3.1: a request without credentials gets no error code.
        AuthRefusal::MissingToken => Challenge {
            status: StatusCode::UNAUTHORIZED,
            reason_phrase: None,
            www_authenticate: Some(bearer(&[])),
            error: "missing_token",
            description: "a Bearer token is required",
            retry_after_secs: None,
        },
        AuthRefusal::Invalid(why) => Challenge {
            status: StatusCode::UNAUTHORIZED,
            reason_phrase: None,
            www_authenticate: Some(bearer(&[
                "error=\"invalid_token\"".to_string(),
                format!("error_description=\"{}\"", why.description()),
            ])),
            error: "invalid_token",
            description: why.description(),
            retry_after_secs: None,
        },
        // The Partner Center wire format, byte for byte: reason phrase and a bare error code.
        AuthRefusal::Denied(Deny::MfaRequired) => Challenge {
            status: StatusCode::UNAUTHORIZED,
            reason_phrase: Some(MFA_REASON_PHRASE),
            www_authenticate: Some("Bearer error=\"invalid_token\"".to_string()),
            error: "invalid_token",
            description: Deny::MfaRequired.description(),
            retry_after_secs: None,
        },
        AuthRefusal::Denied(why) => Challenge {
            status: StatusCode::FORBIDDEN,
            reason_phrase: None,
            www_authenticate: Some(bearer(&[
                "error=\"insufficient_scope\"".to_string(),
                format!("error_description=\"{}\"", why.description()),
            ])),
            error: "insufficient_scope",
            description: why.description(),
            retry_after_secs: None,
        },
        AuthRefusal::KeysUnavailable => Challenge {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason_phrase: None,
            www_authenticate: None,
            error: "keys_unavailable",
            description: "the token issuer's signing keys cannot be fetched right now",
            retry_after_secs: Some(5),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_table() {
        let c = challenge(AuthRefusal::MissingToken, None);
        assert_eq!((c.status, c.www_authenticate.as_deref()), (StatusCode::UNAUTHORIZED, Some("Bearer")));
        let c = challenge(AuthRefusal::MissingToken, Some("api"));
        assert_eq!(c.www_authenticate.as_deref(), Some("Bearer realm=\"api\""));

        let c = challenge(AuthRefusal::Invalid(Invalid::Expired), Some("api"));
        assert_eq!(
            c.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token expired\"")
        );

        let c = challenge(AuthRefusal::Denied(Deny::MfaRequired), Some("api"));
        assert_eq!(c.status, StatusCode::UNAUTHORIZED);
        assert_eq!(c.reason_phrase, Some("Unauthorized - MFA required"));
        assert_eq!(c.www_authenticate.as_deref(), Some("Bearer error=\"invalid_token\""));

        let c = challenge(AuthRefusal::Denied(Deny::AppOnlyNotAllowed), None);
        assert_eq!(c.status, StatusCode::FORBIDDEN);
        assert!(c.www_authenticate.unwrap().starts_with("Bearer error=\"insufficient_scope\", error_description="));

        let c = challenge(AuthRefusal::KeysUnavailable, None);
        assert_eq!(
            (c.status, c.www_authenticate, c.retry_after_secs),
            (StatusCode::SERVICE_UNAVAILABLE, None, Some(5))
        );
    }

    #[test]
    fn descriptions_are_safe_header_text() {
        for i in Invalid::ALL {
            let d = i.description();
            assert!(!d.contains('"') && !d.contains('\\') && d.is_ascii(), "{d}");
        }
    }
}
