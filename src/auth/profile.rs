//! Pure: how one issuer's verified claims are read. Which tokens are app-only, which claim names
//! the application, the user and the scopes, and whether the token shows MFA. Providers differ
//! here, so each issuer has a profile; nothing is guessed across issuers.

use super::policy::TokenKind;
use super::token::Claims;

/// The provider family whose conventions an issuer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// Microsoft Entra ID access tokens (v1 and v2).
    Entra,
    /// RFC 9068 JWT access tokens: app-only exactly when `sub` is `client_id`.
    Rfc9068,
}

impl Base {
    /// The header `typ` values accepted when the issuer does not set `require_typ`.
    pub fn default_typ(self) -> &'static [&'static str] {
        match self {
            // Entra access tokens carry `typ: JWT`, as its ID tokens do; the audience tells them apart.
            Base::Entra => &[],
            Base::Rfc9068 => &["at+jwt", "application/at+jwt"],
        }
    }
}

/// One test on a claim. A claim that is absent or not a string fails every test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Equals(String),
    EqualsClaim(String),
    StartsWith(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub claim: String,
    pub test: Test,
}

impl Condition {
    fn holds(&self, c: &Claims) -> bool {
        let Some(v) = c.str(&self.claim) else { return false };
        match &self.test {
            Test::Equals(want) => v == want,
            Test::EqualsClaim(other) => c.str(other) == Some(v),
            Test::StartsWith(prefix) => v.starts_with(prefix.as_str()),
        }
    }
}

/// How an issuer's tokens are read: its base, with per-issuer overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub base: Base,
    /// Replaces the base's app-only rule: app-only exactly when every condition holds.
    pub app_only: Option<Vec<Condition>>,
    /// Claim names that replace the base's.
    pub app_id: Option<String>,
    pub user: Option<String>,
    pub scopes: Option<String>,
    pub amr: Option<String>,
    /// The issuer's own `mfa` table, or the global `[mfa]`.
    pub mfa: MfaRules,
}

impl Profile {
    pub fn new(base: Base, mfa: MfaRules) -> Self {
        Profile { base, app_only: None, app_id: None, user: None, scopes: None, amr: None, mfa }
    }
}

/// Which claim values count as MFA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaRules {
    /// `amr` values that mean MFA was done (default `["mfa"]`).
    pub amr: Vec<String>,
    /// `acrs` auth-context ids tied to MFA, used only when the token has no `amr` (Entra v2).
    pub acrs: Vec<String>,
    /// `acr` values that mean MFA (Keycloak levels of assurance, Okta and Auth0 policies).
    pub acr: Vec<String>,
}

/// What the gateway takes from a verified token, borrowed from its claims.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity<'c> {
    pub kind: TokenKind,
    pub mfa: bool,
    pub app_id: Option<&'c str>,
    pub user: Option<&'c str>,
    pub tid: Option<&'c str>,
    pub oid: Option<&'c str>,
    pub upn: Option<&'c str>,
    /// Space-separated, whether the claim was a string or a list.
    pub scopes: String,
    pub roles: Vec<&'c str>,
    pub auth_time: Option<i64>,
    /// The client said it handles claims challenges (Entra: `xms_cc` holds `cp1`).
    pub claims_capable: bool,
}

/// Reads a verified token's claims by the issuer's profile.
pub fn read<'c>(c: &'c Claims, p: &Profile) -> Identity<'c> {
    let first = |names: &[&str]| names.iter().find_map(|n| c.str(n));
    let named = |over: &Option<String>, base: &[&str]| match over {
        Some(name) => c.str(name),
        None => first(base),
    };
    let (app_id, user, scopes) = match p.base {
        Base::Entra => (named(&p.app_id, &["appid", "azp"]), named(&p.user, &["upn", "oid"]), "scp"),
        Base::Rfc9068 => (named(&p.app_id, &["client_id"]), named(&p.user, &["sub"]), "scope"),
    };
    let scopes = c.values(p.scopes.as_deref().unwrap_or(scopes)).collect::<Vec<_>>().join(" ");
    Identity {
        kind: kind(c, p),
        mfa: has_mfa(c, p.amr.as_deref().unwrap_or("amr"), &p.mfa),
        app_id,
        user,
        tid: c.tid(),
        oid: c.str("oid"),
        upn: c.str("upn"),
        scopes,
        roles: c.values("roles").collect(),
        auth_time: c.auth_time,
        claims_capable: c.values("xms_cc").any(|v| v == "cp1"),
    }
}

/// App-only only when the issuer's rule says so positively; anything else is App+User and is
/// held to MFA (fail closed).
fn kind(c: &Claims, p: &Profile) -> TokenKind {
    let app_only = match (&p.app_only, p.base) {
        (Some(all), _) => all.iter().all(|cond| cond.holds(c)),
        (None, Base::Entra) => entra_app_only(c),
        (None, Base::Rfc9068) => matches!((c.str("sub"), c.str("client_id")), (Some(s), Some(id)) if s == id),
    };
    if app_only {
        TokenKind::AppOnly
    } else {
        TokenKind::AppUser
    }
}

/// Entra's rule (README, "App+User or app-only"): `idtyp` decides when present; otherwise no
/// `scp` and (`oid` = `sub` or `roles` present). The `roles` shortcut is Entra's alone: other
/// providers put `roles` in user tokens too.
fn entra_app_only(c: &Claims) -> bool {
    match c.str("idtyp") {
        Some("app") => true,
        Some("user") => false,
        _ => {
            let oid_is_sub = matches!((c.str("oid"), c.str("sub")), (Some(o), Some(s)) if o == s);
            !c.has("scp") && (oid_is_sub || c.values("roles").next().is_some())
        }
    }
}

/// MFA when `amr` holds a configured value; for a token without `amr`, when `acrs` holds a
/// configured auth context; and, beside both, when `acr` is a configured value.
fn has_mfa(c: &Claims, amr_claim: &str, rules: &MfaRules) -> bool {
    let by_amr = if c.has(amr_claim) {
        c.values(amr_claim).any(|v| rules.amr.iter().any(|r| r == v))
    } else {
        c.values("acrs").any(|v| rules.acrs.iter().any(|r| r == v))
    };
    by_amr || c.str("acr").is_some_and(|v| rules.acr.iter().any(|r| r == v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn claims(v: Value) -> Claims {
        Claims::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn entra(v: Value) -> TokenKind {
        kind(&claims(v), &Profile::new(Base::Entra, RULES()))
    }

    const RULES: fn() -> MfaRules = || MfaRules { amr: vec!["mfa".into()], acrs: vec!["c1".into()], acr: vec![] };

    #[test]
    fn entra_classification_table() {
        use TokenKind::*;
        // idtyp decides when present, whatever else the token says.
        assert_eq!(entra(json!({"idtyp": "app", "scp": "x"})), AppOnly);
        assert_eq!(entra(json!({"idtyp": "user", "roles": ["r"]})), AppUser);
        // Without idtyp: no scp and (oid == sub or roles) -> app-only.
        assert_eq!(entra(json!({"oid": "o", "sub": "o"})), AppOnly);
        assert_eq!(entra(json!({"roles": ["r"]})), AppOnly);
        // scp present -> App+User even with roles or oid == sub.
        assert_eq!(entra(json!({"scp": "a", "roles": ["r"]})), AppUser);
        assert_eq!(entra(json!({"scp": "a", "oid": "o", "sub": "o"})), AppUser);
        // Nothing that marks an app: App+User, which is then held to MFA (fail closed).
        assert_eq!(entra(json!({"oid": "o", "sub": "p"})), AppUser);
        assert_eq!(entra(json!({})), AppUser);
        assert_eq!(entra(json!({"idtyp": "device"})), AppUser);
    }

    #[test]
    fn rfc9068_app_only_exactly_when_sub_is_client_id() {
        let p = Profile::new(Base::Rfc9068, RULES());
        let k = |v| kind(&claims(v), &p);
        assert_eq!(k(json!({"sub": "svc", "client_id": "svc"})), TokenKind::AppOnly);
        assert_eq!(
            k(json!({"sub": "alice", "client_id": "svc", "roles": ["Reader"]})),
            TokenKind::AppUser,
            "roles mark nothing here"
        );
        assert_eq!(k(json!({"client_id": "svc", "roles": ["Reader"]})), TokenKind::AppUser);
        assert_eq!(k(json!({"sub": "svc", "idtyp": "app"})), TokenKind::AppUser, "Entra's idtyp means nothing here");
    }

    #[test]
    fn app_only_overrides_need_every_condition() {
        let mut p = Profile::new(Base::Rfc9068, RULES());
        p.app_only = Some(vec![
            Condition { claim: "client_id".into(), test: Test::EqualsClaim("azp".into()) },
            Condition { claim: "preferred_username".into(), test: Test::StartsWith("service-account-".into()) },
        ]);
        let k = |v| kind(&claims(v), &p);
        let svc = json!({"azp": "c", "client_id": "c", "preferred_username": "service-account-c"});
        assert_eq!(k(svc), TokenKind::AppOnly);
        assert_eq!(
            k(json!({"azp": "c", "preferred_username": "service-account-c"})),
            TokenKind::AppUser,
            "claim absent"
        );
        assert_eq!(k(json!({"azp": "c", "client_id": "c", "preferred_username": "alice"})), TokenKind::AppUser);
        p.app_only = Some(vec![Condition { claim: "gty".into(), test: Test::Equals("client-credentials".into()) }]);
        assert_eq!(kind(&claims(json!({"gty": "client-credentials"})), &p), TokenKind::AppOnly);
        assert_eq!(kind(&claims(json!({"gty": ["client-credentials"]})), &p), TokenKind::AppUser, "not a string");
        assert_eq!(kind(&claims(json!({"gty": "password"})), &p), TokenKind::AppUser);
    }

    #[test]
    fn mfa_signal_from_amr_acrs_or_acr() {
        let r = RULES();
        let m = |v| has_mfa(&claims(v), "amr", &r);
        assert!(m(json!({"amr": ["pwd", "mfa"]})));
        assert!(!m(json!({"amr": ["pwd"]})));
        assert!(!m(json!({"amr": ["ngcmfa"]})), "only configured values count");
        assert!(m(json!({"acrs": ["c1"]})), "v2 token without amr");
        assert!(!m(json!({"amr": ["pwd"], "acrs": ["c1"]})), "amr wins over acrs when present");
        assert!(!m(json!({})));
        assert!(!m(json!({"acr": "gold"})), "no acr configured");
        let r = MfaRules { acr: vec!["gold".into()], ..RULES() };
        assert!(has_mfa(&claims(json!({"acr": "gold", "amr": ["pwd"]})), "amr", &r), "acr counts beside amr");
        assert!(!has_mfa(&claims(json!({"acr": "1"})), "amr", &r));
        assert!(has_mfa(&claims(json!({"https://x/amr": ["mfa"]})), "https://x/amr", &r), "amr under another name");
    }

    #[test]
    fn identity_by_profile() {
        let v1 = claims(json!({"appid": "app", "azp": "other", "upn": "u@x", "oid": "o", "tid": "t",
                               "scp": "a b", "roles": ["R"], "amr": ["mfa"]}));
        let id = read(&v1, &Profile::new(Base::Entra, RULES()));
        assert_eq!(
            (id.app_id, id.user, id.oid, id.upn, id.tid),
            (Some("app"), Some("u@x"), Some("o"), Some("u@x"), Some("t"))
        );
        assert_eq!((id.scopes.as_str(), id.roles, id.mfa, id.kind), ("a b", vec!["R"], true, TokenKind::AppUser));
        let v2 = claims(json!({"azp": "app2", "oid": "o2", "scp": "a"}));
        let id = read(&v2, &Profile::new(Base::Entra, RULES()));
        assert_eq!((id.app_id, id.user), (Some("app2"), Some("o2")), "v2: azp, and oid where upn is absent");

        let at = claims(json!({"client_id": "cli", "sub": "alice", "scope": "api:read api:write", "upn": "x"}));
        let id = read(&at, &Profile::new(Base::Rfc9068, RULES()));
        assert_eq!((id.app_id, id.user, id.scopes.as_str()), (Some("cli"), Some("alice"), "api:read api:write"));
        let okta = claims(json!({"cid": "cli", "uid": "00u1", "sub": "alice@x", "scp": ["api:read", "openid"]}));
        let mut p = Profile::new(Base::Rfc9068, RULES());
        (p.app_id, p.user, p.scopes) = (Some("cid".into()), Some("uid".into()), Some("scp".into()));
        let id = read(&okta, &p);
        assert_eq!((id.app_id, id.user, id.scopes.as_str()), (Some("cli"), Some("00u1"), "api:read openid"));
    }
}
