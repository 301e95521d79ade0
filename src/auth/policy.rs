//! Pure policy: who is calling (App+User or app-only), whether they did MFA, and whether the
//! route lets them through.

use crate::routes::{Requirement, Route};

use super::token::Claims;

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

/// The classification table (README, "App+User or app-only"):
/// `idtyp` = `app` -> app-only; `idtyp` = `user` -> App+User; otherwise no `scp` and
/// (`oid` == `sub` or `roles` present) -> app-only; otherwise App+User.
pub fn classify(c: &Claims) -> TokenKind {
    match c.idtyp.as_deref() {
        Some("app") => TokenKind::AppOnly,
        Some("user") => TokenKind::AppUser,
        _ => {
            let oid_is_sub = matches!((&c.oid, &c.sub), (Some(o), Some(s)) if o == s);
            if c.scp.is_none() && (oid_is_sub || !c.roles.is_empty()) {
                TokenKind::AppOnly
            } else {
                TokenKind::AppUser
            }
        }
    }
}

/// Which claim values count as MFA.
#[derive(Debug, Clone)]
pub struct MfaRules {
    /// `amr` values that mean MFA was done (default `["mfa"]`).
    pub amr: Vec<String>,
    /// `acrs` auth-context ids tied to MFA, used only when the token has no `amr` (Entra v2).
    pub acrs: Vec<String>,
}

pub fn has_mfa(c: &Claims, rules: &MfaRules) -> bool {
    match &c.amr {
        Some(amr) => amr.iter().any(|v| rules.amr.contains(v)),
        None => c.acrs.iter().any(|v| rules.acrs.contains(v)),
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
    /// `scp`, space-separated.
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

    fn c(f: impl FnOnce(&mut Claims)) -> Claims {
        let mut c = Claims::default();
        f(&mut c);
        c
    }

    #[test]
    fn classification_table() {
        let s = |v: &str| Some(v.to_string());
        // idtyp decides when present, whatever else the token says.
        assert_eq!(
            classify(&c(|c| {
                c.idtyp = s("app");
                c.scp = s("x")
            })),
            TokenKind::AppOnly
        );
        assert_eq!(
            classify(&c(|c| {
                c.idtyp = s("user");
                c.roles = vec!["r".into()]
            })),
            TokenKind::AppUser
        );
        // Without idtyp: no scp and (oid == sub or roles) -> app-only.
        assert_eq!(
            classify(&c(|c| {
                c.oid = s("o");
                c.sub = s("o")
            })),
            TokenKind::AppOnly
        );
        assert_eq!(classify(&c(|c| c.roles = vec!["r".into()])), TokenKind::AppOnly);
        // scp present -> App+User even with roles or oid == sub.
        assert_eq!(
            classify(&c(|c| {
                c.scp = s("a");
                c.roles = vec!["r".into()]
            })),
            TokenKind::AppUser
        );
        assert_eq!(
            classify(&c(|c| {
                c.scp = s("a");
                c.oid = s("o");
                c.sub = s("o")
            })),
            TokenKind::AppUser
        );
        // Nothing that marks an app: App+User, which is then held to MFA (fail closed).
        assert_eq!(
            classify(&c(|c| {
                c.oid = s("o");
                c.sub = s("p")
            })),
            TokenKind::AppUser
        );
        assert_eq!(classify(&Claims::default()), TokenKind::AppUser);
        assert_eq!(classify(&c(|c| c.idtyp = s("device"))), TokenKind::AppUser);
    }

    #[test]
    fn mfa_signal_from_amr_or_acrs() {
        let rules = MfaRules { amr: vec!["mfa".into()], acrs: vec!["c1".into()] };
        assert!(has_mfa(&c(|c| c.amr = Some(vec!["pwd".into(), "mfa".into()])), &rules));
        assert!(!has_mfa(&c(|c| c.amr = Some(vec!["pwd".into()])), &rules));
        assert!(!has_mfa(&c(|c| c.amr = Some(vec!["ngcmfa".into()])), &rules), "only configured values count");
        assert!(has_mfa(&c(|c| c.acrs = vec!["c1".into()]), &rules), "v2 token without amr");
        assert!(
            !has_mfa(
                &c(|c| {
                    c.amr = Some(vec!["pwd".into()]);
                    c.acrs = vec!["c1".into()]
                }),
                &rules
            ),
            "amr wins when present"
        );
        assert!(!has_mfa(&Claims::default(), &rules));
    }

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
