//! Why a token is refused: one bounded set of reasons, each a metric label and a description
//! that is safe to send back.

/// Why a token is not valid. Each variant is a bounded metric label and a short description
/// that is safe to send back (it never repeats any part of the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    MultipleAuthorization,
    TooLarge,
    Malformed,
    BadBase64,
    BadJson,
    AlgNotAllowed,
    AlgKeyMismatch,
    CritHeader,
    KidRequired,
    UnknownKid,
    UnknownIssuer,
    BadTenantId,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongAudience,
    TenantNotAllowed,
    WrongType,
}

impl Invalid {
    pub const ALL: [Invalid; 20] = [
        Invalid::MultipleAuthorization,
        Invalid::TooLarge,
        Invalid::Malformed,
        Invalid::BadBase64,
        Invalid::BadJson,
        Invalid::AlgNotAllowed,
        Invalid::AlgKeyMismatch,
        Invalid::CritHeader,
        Invalid::KidRequired,
        Invalid::UnknownKid,
        Invalid::UnknownIssuer,
        Invalid::BadTenantId,
        Invalid::BadSignature,
        Invalid::MissingExp,
        Invalid::Expired,
        Invalid::NotYetValid,
        Invalid::IssuedInFuture,
        Invalid::WrongAudience,
        Invalid::TenantNotAllowed,
        Invalid::WrongType,
    ];

    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::MultipleAuthorization => "multiple_authorization",
            Invalid::TooLarge => "too_large",
            Invalid::Malformed => "malformed",
            Invalid::BadBase64 => "bad_base64",
            Invalid::BadJson => "bad_json",
            Invalid::AlgNotAllowed => "alg_not_allowed",
            Invalid::AlgKeyMismatch => "alg_key_mismatch",
            Invalid::CritHeader => "crit_header",
            Invalid::KidRequired => "kid_required",
            Invalid::UnknownKid => "unknown_kid",
            Invalid::UnknownIssuer => "unknown_issuer",
            Invalid::BadTenantId => "bad_tenant_id",
            Invalid::BadSignature => "bad_signature",
            Invalid::MissingExp => "missing_exp",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not_yet_valid",
            Invalid::IssuedInFuture => "issued_in_future",
            Invalid::WrongAudience => "wrong_audience",
            Invalid::TenantNotAllowed => "tenant_not_allowed",
            Invalid::WrongType => "wrong_typ",
        }
    }

    /// `error_description`: short, fixed text.
    pub fn description(self) -> &'static str {
        match self {
            Invalid::MultipleAuthorization => "more than one Authorization header",
            Invalid::TooLarge => "token too large",
            Invalid::Malformed => "token is not three base64url segments",
            Invalid::BadBase64 => "token segment is not base64url",
            Invalid::BadJson => "token header or payload is not the expected JSON",
            Invalid::AlgNotAllowed => "signing algorithm not allowed",
            Invalid::AlgKeyMismatch => "signing algorithm does not match the key",
            Invalid::CritHeader => "critical header extensions are not supported",
            Invalid::KidRequired => "token has no kid and the issuer has several keys",
            Invalid::UnknownKid => "signing key not found",
            Invalid::UnknownIssuer => "issuer not trusted",
            Invalid::BadTenantId => "tid is missing or not a GUID",
            Invalid::BadSignature => "signature verification failed",
            Invalid::MissingExp => "token has no exp",
            Invalid::Expired => "token expired",
            Invalid::NotYetValid => "token not yet valid",
            Invalid::IssuedInFuture => "token issued in the future",
            Invalid::WrongAudience => "audience not accepted",
            Invalid::TenantNotAllowed => "tenant not allowed",
            Invalid::WrongType => "token typ is not an access token's",
        }
    }
}
