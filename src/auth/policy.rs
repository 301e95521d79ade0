//! Pure policy: whether the route lets a verified caller through. Who the caller is (App+User or
//! app-only, MFA or not) is the issuer's profile's to read (`profile.rs`).

use crate::routes::{Requirement, Route};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    AppUser,
    AppOnly,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::AppUser => "app_user",
            TokenKind::AppOnly => "app_only",
        }
    }
}

/// Why a verified caller is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deny {
    /// App+User token without the MFA claim.
    MfaRequired,
    /// App-only token on a route that needs a user (GDAP operations).
    AppOnlyNotAllowed,
    MissingRole,
    MissingScope,
}

impl Deny {
    pub fn reason(self) -> &'static str {
        match self {
            Deny::MfaRequired => "mfa_required",
            Deny::AppOnlyNotAllowed => "app_only_not_allowed",
            Deny::MissingRole => "missing_role",
            Deny::MissingScope => "missing_scope",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Deny::MfaRequired => "multi-factor authentication required",
            Deny::AppOnlyNotAllowed => "this operation requires a user (App+User) token with MFA",
            Deny::MissingRole => "token lacks a role this operation requires",
            Deny::MissingScope => "token lacks a scope this operation requires",
        }
    }
}

/// What policy needs to know of a verified token.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    pub kind: TokenKind,
    pub mfa: bool,
    pub roles: &'a [String],
    /// Space-separated (`scp` or the profile's scopes claim).
    pub scopes: &'a str,
}

/// The route's requirement applied to a verified caller. `Public` routes never get here.
pub fn decide(route: &Route, caller: &Caller<'_>) -> Result<(), Deny> {
    match (route.require, caller.kind) {
        (Requirement::Public | Requirement::Token, _) => {}
        (Requirement::Mfa | Requirement::AppUserMfa, TokenKind::AppUser) if !caller.mfa => {
            return Err(Deny::MfaRequired)
        }
        (Requirement::AppUserMfa, TokenKind::AppOnly) => return Err(Deny::AppOnlyNotAllowed),
        (Requirement::Mfa | Requirement::AppUserMfa, _) => {}
    }
    if !route.roles_any.is_empty() && !caller.roles.iter().any(|r| route.roles_any.contains(r)) {
        return Err(Deny::MissingRole);
    }
    if !route.scopes_any.is_empty() && !caller.scopes.split(' ').any(|s| route.scopes_any.iter().any(|r| r == s)) {
        return Err(Deny::MissingScope);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(require: Requirement) -> Route {
        Route { index: 0, name: "r".into(), require, methods: vec![], roles_any: vec![], scopes_any: vec![] }
    }

    #[test]
    fn requirement_matrix() {
        use Requirement::*;
        use TokenKind::*;
        let caller = |kind, mfa| Caller { kind, mfa, roles: &[], scopes: "" };
        let cases = [
            (Token, AppUser, false, Ok(())),
            (Token, AppOnly, false, Ok(())),
            (Mfa, AppUser, true, Ok(())),
            (Mfa, AppUser, false, Err(Deny::MfaRequired)),
            (Mfa, AppOnly, false, Ok(())),
            (AppUserMfa, AppUser, true, Ok(())),
            (AppUserMfa, AppUser, false, Err(Deny::MfaRequired)),
            (AppUserMfa, AppOnly, false, Err(Deny::AppOnlyNotAllowed)),
        ];
        for (req, kind, mfa, want) in cases {
            assert_eq!(decide(&route(req), &caller(kind, mfa)), want, "{req:?} {kind:?} mfa={mfa}");
        }
    }

    #[test]
    fn roles_and_scopes() {
        let mut r = route(Requirement::Token);
        r.roles_any = vec!["Partner.Read.All".into()];
        let roles = vec!["Partner.Read.All".to_string()];
        assert_eq!(decide(&r, &Caller { kind: TokenKind::AppOnly, mfa: false, roles: &roles, scopes: "" }), Ok(()));
        assert_eq!(
            decide(&r, &Caller { kind: TokenKind::AppOnly, mfa: false, roles: &[], scopes: "" }),
            Err(Deny::MissingRole)
        );
        let mut r = route(Requirement::Token);
        r.scopes_any = vec!["user_impersonation".into()];
        assert_eq!(
            decide(&r, &Caller { kind: TokenKind::AppUser, mfa: true, roles: &[], scopes: "a user_impersonation" }),
            Ok(())
        );
        assert_eq!(
            decide(&r, &Caller { kind: TokenKind::AppUser, mfa: true, roles: &[], scopes: "user_impersonation2" }),
            Err(Deny::MissingScope)
        );
    }
}
