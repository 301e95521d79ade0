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
    /// App+User token with MFA, but the sign-in (`auth_time`) is older than the route allows,
    /// or the token does not say when it was.
    AuthTooOld,
}

impl Deny {
    pub fn reason(self) -> &'static str {
        match self {
            Deny::MfaRequired => "mfa_required",
            Deny::AppOnlyNotAllowed => "app_only_not_allowed",
            Deny::MissingRole => "missing_role",
            Deny::MissingScope => "missing_scope",
            Deny::AuthTooOld => "auth_too_old",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Deny::MfaRequired => "multi-factor authentication required",
            Deny::AppOnlyNotAllowed => "this operation requires a user (App+User) token with MFA",
            Deny::MissingRole => "token lacks a role this operation requires",
            Deny::MissingScope => "token lacks a scope this operation requires",
            Deny::AuthTooOld => "a more recent sign-in is required",
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
    /// The user's last sign-in, Unix seconds (`auth_time`).
    pub auth_time: Option<i64>,
}

/// The route's requirement applied to a verified caller at `now` (Unix seconds). `Public`
/// routes never get here.
pub fn decide(route: &Route, caller: &Caller<'_>, now: i64) -> Result<(), Deny> {
    match (route.require, caller.kind) {
        (Requirement::Public | Requirement::Token, _) => {}
        (Requirement::Mfa | Requirement::AppUserMfa, TokenKind::AppUser) if !caller.mfa => {
            return Err(Deny::MfaRequired)
        }
        (Requirement::AppUserMfa, TokenKind::AppOnly) => return Err(Deny::AppOnlyNotAllowed),
        // A user's MFA must also be recent where the route says so; absent `auth_time` fails.
        (Requirement::Mfa | Requirement::AppUserMfa, TokenKind::AppUser) => {
            if let Some(max) = route.max_auth_age {
                let fresh = caller.auth_time.is_some_and(|t| now.saturating_sub(t) <= max as i64);
                if !fresh {
                    return Err(Deny::AuthTooOld);
                }
            }
        }
        (Requirement::Mfa, TokenKind::AppOnly) => {}
    }
    if !route.roles_any.is_empty() && !caller.roles.iter().any(|r| route.roles_any.contains(r)) {
        return Err(Deny::MissingRole);
    }
    if !route.scopes_any.is_empty() && !caller.scopes.split(' ').any(|s| route.scopes_any.iter().any(|r| r == s)) {
        return Err(Deny::MissingScope);
    }
    Ok(())
}

/// What the route's rule can answer a verified token of `kind`: whether it can pass, and each
/// refusal it can give. Derived by running `decide` over every caller its branches tell apart
/// (with and without MFA, a recent sign-in, a listed role, a listed scope).
pub fn possible(route: &Route, kind: TokenKind) -> (bool, Vec<Deny>) {
    const NOW: i64 = 1 << 40;
    let role: Vec<String> = route.roles_any.first().cloned().into_iter().collect();
    let scope = route.scopes_any.first().map_or("", String::as_str);
    let (mut pass, mut denials) = (false, Vec::new());
    for shape in 0..16u8 {
        let caller = Caller {
            kind,
            mfa: shape & 1 != 0,
            auth_time: (shape & 2 != 0).then_some(NOW),
            roles: if shape & 4 != 0 { &role } else { &[] },
            scopes: if shape & 8 != 0 { scope } else { "" },
        };
        match decide(route, &caller, NOW) {
            Ok(()) => pass = true,
            Err(d) if !denials.contains(&d) => denials.push(d),
            Err(_) => {}
        }
    }
    (pass, denials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(require: Requirement) -> Route {
        Route {
            index: 0,
            name: "r".into(),
            require,
            methods: vec![],
            roles_any: vec![],
            scopes_any: vec![],
            step_up: crate::routes::StepUp::PartnerCenter,
            max_auth_age: None,
            enforce: true,
            binding: None,
        }
    }

    #[test]
    fn requirement_matrix() {
        use Requirement::*;
        use TokenKind::*;
        let caller = |kind, mfa| Caller { kind, mfa, roles: &[], scopes: "", auth_time: None };
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
            assert_eq!(decide(&route(req), &caller(kind, mfa), 0), want, "{req:?} {kind:?} mfa={mfa}");
        }
    }

    #[test]
    fn max_auth_age_wants_a_recent_sign_in_from_users_only() {
        let mut r = route(Requirement::Mfa);
        r.max_auth_age = Some(600);
        let user = |auth_time| Caller { kind: TokenKind::AppUser, mfa: true, roles: &[], scopes: "", auth_time };
        let now = 1_000_000;
        assert_eq!(decide(&r, &user(Some(now - 600)), now), Ok(()));
        assert_eq!(decide(&r, &user(Some(now - 601)), now), Err(Deny::AuthTooOld));
        assert_eq!(decide(&r, &user(None), now), Err(Deny::AuthTooOld), "absent auth_time fails");
        let no_mfa = Caller { mfa: false, ..user(Some(now)) };
        assert_eq!(decide(&r, &no_mfa, now), Err(Deny::MfaRequired), "MFA is asked for first");
        let app = Caller { kind: TokenKind::AppOnly, mfa: false, roles: &[], scopes: "", auth_time: None };
        assert_eq!(decide(&r, &app, now), Ok(()), "app-only tokens have no sign-in");
    }

    #[test]
    fn roles_and_scopes() {
        let caller =
            |kind, roles, scopes| Caller { kind, mfa: kind == TokenKind::AppUser, roles, scopes, auth_time: None };
        let mut r = route(Requirement::Token);
        r.roles_any = vec!["Partner.Read.All".into()];
        let roles = vec!["Partner.Read.All".to_string()];
        assert_eq!(decide(&r, &caller(TokenKind::AppOnly, &roles, ""), 0), Ok(()));
        assert_eq!(decide(&r, &caller(TokenKind::AppOnly, &[], ""), 0), Err(Deny::MissingRole));
        let mut r = route(Requirement::Token);
        r.scopes_any = vec!["user_impersonation".into()];
        assert_eq!(decide(&r, &caller(TokenKind::AppUser, &[], "a user_impersonation"), 0), Ok(()));
        assert_eq!(decide(&r, &caller(TokenKind::AppUser, &[], "user_impersonation2"), 0), Err(Deny::MissingScope));
    }
}
