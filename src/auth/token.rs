//! Pure token checks: bearer extraction, header rules, and the registered claims (the signature
//! is checked in `keys`, with the key).
//! No I/O here: the caller supplies the keys and the clock.

use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::invalid::Invalid;

/// How the client presents its token: RFC 6750 `Bearer`, or RFC 9449 `DPoP` with a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// The access token of a request and its scheme: `Ok(None)` when there is none (or another
/// scheme).
pub fn credential(headers: &HeaderMap) -> Result<Option<(Scheme, &str)>, Invalid> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Invalid::MultipleAuthorization);
    }
    let bytes = value.as_bytes();
    // RFC 7235: the scheme is case-insensitive; RFC 6750 and RFC 9449: one space, then the token.
    let (scheme, rest) = if bytes.len() >= 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        (Scheme::Bearer, &bytes[7..])
    } else if bytes.len() >= 5 && bytes[..5].eq_ignore_ascii_case(b"dpop ") {
        (Scheme::Dpop, &bytes[5..])
    } else {
        return Ok(None);
    };
    let token = std::str::from_utf8(rest).map_err(|_| Invalid::Malformed)?.trim();
    if token.is_empty() {
        return Err(Invalid::Malformed);
    }
    Ok(Some((scheme, token)))
}

/// Whether the request presents its token with the `DPoP` scheme (its refusals then carry a
/// `DPoP` challenge too).
pub fn is_dpop(headers: &HeaderMap) -> bool {
    matches!(credential(headers), Ok(Some((Scheme::Dpop, _))))
}

/// Issuer to match: exact, or a multi-tenant template holding `{tenantid}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerPattern {
    Exact(String),
    Template { prefix: String, suffix: String },
}

impl IssuerPattern {
    pub fn new(s: &str) -> Self {
        match s.split_once("{tenantid}") {
            Some((prefix, suffix)) => IssuerPattern::Template { prefix: prefix.into(), suffix: suffix.into() },
            None => IssuerPattern::Exact(s.into()),
        }
    }

    /// Whether `iss` could be this issuer's, before `tid` is looked at.
    pub fn could_match(&self, iss: &str) -> bool {
        match self {
            IssuerPattern::Exact(e) => e == iss,
            IssuerPattern::Template { prefix, suffix } => {
                iss.len() > prefix.len() + suffix.len()
                    && iss.starts_with(prefix.as_str())
                    && iss.ends_with(suffix.as_str())
            }
        }
    }

    /// Exact match after substituting the token's `tid`, which must be a GUID.
    pub fn matches(&self, iss: &str, tid: Option<&str>) -> Result<(), Invalid> {
        match self {
            IssuerPattern::Exact(e) if e == iss => Ok(()),
            IssuerPattern::Exact(_) => Err(Invalid::UnknownIssuer),
            IssuerPattern::Template { prefix, suffix } => {
                let tid = tid.filter(|t| is_guid(t)).ok_or(Invalid::BadTenantId)?;
                let ok = iss.len() == prefix.len() + tid.len() + suffix.len()
                    && iss.starts_with(prefix.as_str())
                    && iss.ends_with(suffix.as_str())
                    && &iss[prefix.len()..prefix.len() + tid.len()] == tid;
                if ok {
                    Ok(())
                } else {
                    Err(Invalid::UnknownIssuer)
                }
            }
        }
    }
}

/// 8-4-4-4-12 hex digits.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// What one issuer demands of its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRules {
    pub issuer: IssuerPattern,
    pub audiences: Vec<String>,
    /// Allowed `tid` values, lowercase; empty means any.
    pub tenants: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: i64,
    pub max_token_bytes: usize,
    /// Accepted header `typ` values, lowercase; empty means `typ` is not checked.
    pub typ: Vec<String>,
}

/// A token's payload. The registered time claims are typed once; every claim stays readable by
/// name, because how an issuer marks app-only tokens, users and scopes is its profile's to say.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// When the user last signed in (OIDC), for routes with `max_auth_age`.
    pub auth_time: Option<i64>,
    all: serde_json::Map<String, Value>,
}

impl Claims {
    /// Decodes a payload: a JSON object whose names are unique (a repeated claim could be read
    /// one way here and another way upstream), with `exp`/`nbf`/`iat`/`auth_time` numeric dates and
    /// `iss`/`tid`/`aud` strings (`aud` may be a list) when present.
    pub fn from_json(payload: &[u8]) -> Result<Claims, Invalid> {
        let UniqueMap(all) = serde_json::from_slice(payload).map_err(|_| Invalid::BadJson)?;
        let date = |name: &str| match all.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                // RFC 7519 NumericDate: seconds, possibly fractional; truncated to whole seconds.
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f as i64)),
                _ => Err(Invalid::BadJson),
            },
            Some(_) => Err(Invalid::BadJson),
        };
        let c = Claims { exp: date("exp")?, nbf: date("nbf")?, iat: date("iat")?, auth_time: date("auth_time")?, all };
        let string = |name: &str| matches!(c.all.get(name), None | Some(Value::Null | Value::String(_)));
        let aud_ok = match c.all.get("aud") {
            Some(Value::Array(a)) => a.iter().all(Value::is_string),
            _ => string("aud"),
        };
        if !(string("iss") && string("tid") && aud_ok) {
            return Err(Invalid::BadJson);
        }
        Ok(c)
    }

    /// A string claim; `None` when absent or not a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.all.get(name).and_then(Value::as_str)
    }

    /// A claim read as a list of strings: a string is one value, an array gives its strings.
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let (one, many) = match self.all.get(name) {
            Some(Value::String(s)) => (Some(s.as_str()), None),
            Some(Value::Array(a)) => (None, Some(a.iter().filter_map(Value::as_str))),
            _ => (None, None),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Whether the claim is present (and not `null`).
    pub fn has(&self, name: &str) -> bool {
        !matches!(self.all.get(name), None | Some(Value::Null))
    }

    /// What `cnf` binds the token to: `jkt`, a DPoP key's thumbprint (RFC 9449 §6.1), and
    /// `x5t#S256`, a client certificate's (RFC 8705 §3.1). `Err` when `cnf` or either member is
    /// there but not a string: a binding not understood is refused.
    pub fn cnf(&self) -> Result<Cnf<'_>, Invalid> {
        let cnf = match self.all.get("cnf") {
            None | Some(Value::Null) => return Ok(Cnf::default()),
            Some(Value::Object(cnf)) => cnf,
            Some(_) => return Err(Invalid::BadJson),
        };
        let member = |name: &str| match cnf.get(name) {
            None => Ok(None),
            Some(Value::String(v)) if !v.is_empty() => Ok(Some(v.as_str())),
            Some(_) => Err(Invalid::BadJson),
        };
        Ok(Cnf { jkt: member("jkt")?, x5t_s256: member("x5t#S256")? })
    }

    pub fn iss(&self) -> Option<&str> {
        self.str("iss")
    }

    pub fn tid(&self) -> Option<&str> {
        self.str("tid")
    }
}

/// A token's confirmation claim (`cnf`): the keys it is bound to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cnf<'a> {
    pub jkt: Option<&'a str>,
    pub x5t_s256: Option<&'a str>,
}

/// A JSON object that refuses a repeated name.
struct UniqueMap(serde_json::Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<UniqueMap, A::Error> {
                let mut all = serde_json::Map::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    if all.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate claim"));
                    }
                    all.insert(k, v);
                }
                Ok(UniqueMap(all))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    // Present at all means the token asks us to understand extensions we do not: refuse.
    crit: Option<serde::de::IgnoredAny>,
}

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Claims,
    pub signing_input: &'t str,
    pub signature: Vec<u8>,
}

fn b64(s: &str) -> Result<Vec<u8>, Invalid> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| Invalid::BadBase64)
}

/// Splits and decodes a compact JWS. `jku`, `x5u` and `jwk` headers are never read: keys come
/// only from the configured key sets.
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, Invalid> {
    if token.len() > max_bytes {
        return Err(Invalid::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Invalid::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(Invalid::Malformed);
    }
    let header: RawHeader = serde_json::from_slice(&b64(h)?).map_err(|_| Invalid::BadJson)?;
    if header.crit.is_some() {
        return Err(Invalid::CritHeader);
    }
    // `none` and unknown names fail to parse; HS* parse but no key type accepts them.
    let alg = header.alg.as_deref().and_then(|a| a.parse::<Algorithm>().ok()).ok_or(Invalid::AlgNotAllowed)?;
    let claims = Claims::from_json(&b64(p)?)?;
    // The longest signature here is RSA-8192's: 1 KiB, 1366 base64url characters.
    if s.len() > 1400 {
        return Err(Invalid::BadBase64);
    }
    let signature = b64(s)?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        typ: header.typ,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// The header's `typ`, where the issuer names the types its access tokens carry (RFC 9068 §4:
/// `at+jwt`), so an ID token with the API's audience is not taken for an access token.
pub fn check_typ(typ: Option<&str>, rules: &IssuerRules) -> Result<(), Invalid> {
    if rules.typ.is_empty() || typ.is_some_and(|t| rules.typ.iter().any(|r| r.eq_ignore_ascii_case(t))) {
        Ok(())
    } else {
        Err(Invalid::WrongType)
    }
}

/// Registered claims, after the signature: time window, issuer, audience, tenant.
pub fn check_claims(claims: &Claims, rules: &IssuerRules, now: i64) -> Result<(), Invalid> {
    let exp = claims.exp.ok_or(Invalid::MissingExp)?;
    if now > exp.saturating_add(rules.leeway_secs) {
        return Err(Invalid::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(rules.leeway_secs)) {
        return Err(Invalid::NotYetValid);
    }
    if claims.iat.is_some_and(|iat| iat > now.saturating_add(rules.leeway_secs)) {
        return Err(Invalid::IssuedInFuture);
    }
    let iss = claims.iss().ok_or(Invalid::UnknownIssuer)?;
    rules.issuer.matches(iss, claims.tid())?;
    if !claims.values("aud").any(|a| rules.audiences.iter().any(|r| r == a)) {
        return Err(Invalid::WrongAudience);
    }
    if !rules.tenants.is_empty() {
        let tid = claims.tid().filter(|t| is_guid(t)).ok_or(Invalid::BadTenantId)?;
        if !rules.tenants.iter().any(|t| t.eq_ignore_ascii_case(tid)) {
            return Err(Invalid::TenantNotAllowed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TID: &str = "aaaabbbb-0000-cccc-1111-dddd2222eeee";

    fn rules() -> IssuerRules {
        IssuerRules {
            issuer: IssuerPattern::new("https://sts.windows.net/{tenantid}/"),
            audiences: vec!["https://api.partnercenter.microsoft.com".into()],
            tenants: vec![],
            algorithms: vec![Algorithm::RS256],
            leeway_secs: 60,
            max_token_bytes: 16 * 1024,
            typ: vec![],
        }
    }

    fn claims(now: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": format!("https://sts.windows.net/{TID}/"),
            "aud": "https://api.partnercenter.microsoft.com",
            "exp": now + 3600, "nbf": now - 10, "iat": now - 10, "tid": TID,
        })
    }

    fn decode(v: &serde_json::Value) -> Claims {
        Claims::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn enc(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn credential_extraction() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), Ok(None));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert_eq!(credential(&h), Ok(None));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc.def.ghi"));
        assert_eq!(credential(&h), Ok(Some((Scheme::Bearer, "abc.def.ghi"))));
        h.insert(AUTHORIZATION, HeaderValue::from_static("DPoP abc.def.ghi"));
        assert_eq!(credential(&h), Ok(Some((Scheme::Dpop, "abc.def.ghi"))));
        assert!(is_dpop(&h));
        h.insert(AUTHORIZATION, HeaderValue::from_static("dpop "));
        assert_eq!(credential(&h), Err(Invalid::Malformed));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(credential(&h), Err(Invalid::Malformed));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer x.y.z"));
        assert_eq!(credential(&h), Err(Invalid::MultipleAuthorization));
    }

    #[test]
    fn issuer_templates_need_a_guid_tid_that_matches() {
        let p = IssuerPattern::new("https://sts.windows.net/{tenantid}/");
        let iss = format!("https://sts.windows.net/{TID}/");
        assert!(p.could_match(&iss));
        assert_eq!(p.matches(&iss, Some(TID)), Ok(()));
        assert_eq!(p.matches(&iss, Some("not-a-guid")), Err(Invalid::BadTenantId));
        assert_eq!(p.matches(&iss, None), Err(Invalid::BadTenantId));
        let other = "11111111-2222-3333-4444-555555555555";
        assert_eq!(p.matches(&iss, Some(other)), Err(Invalid::UnknownIssuer));
        assert!(!p.could_match("https://evil.example/"));
        assert!(is_guid(TID) && !is_guid("aaaabbbb-0000-cccc-1111-dddd2222eeeg"));
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        let h = enc(&serde_json::json!({"alg": "RS256", "kid": "k"}));
        let p = enc(&serde_json::json!({"exp": 1}));
        assert_eq!(parse("a.b", 100).unwrap_err(), Invalid::Malformed);
        assert_eq!(parse("a.b.c.d", 100).unwrap_err(), Invalid::Malformed);
        assert_eq!(parse(&format!("{h}.{p}."), 1000).unwrap_err(), Invalid::Malformed);
        assert_eq!(parse(&format!("{h}.{p}.sig"), 10).unwrap_err(), Invalid::TooLarge);
        assert_eq!(parse(&format!("{h}.!!!.sig"), 1000).unwrap_err(), Invalid::BadBase64);
        assert_eq!(parse(&format!("{h}.{}.sig", enc(&serde_json::json!([1]))), 1000).unwrap_err(), Invalid::BadJson);
        let none = enc(&serde_json::json!({"alg": "none"}));
        assert_eq!(parse(&format!("{none}.{p}.sig"), 1000).unwrap_err(), Invalid::AlgNotAllowed);
        let crit = enc(&serde_json::json!({"alg": "RS256", "crit": ["exp"]}));
        assert_eq!(parse(&format!("{crit}.{p}.sig"), 1000).unwrap_err(), Invalid::CritHeader);
        let good = format!("{h}.{p}.sig");
        let ok = parse(&good, 1000).unwrap();
        assert_eq!(
            (ok.alg, ok.kid.as_deref(), ok.signature.as_slice()),
            (Algorithm::RS256, Some("k"), &[0xb2, 0x28][..])
        );
        assert_eq!(ok.signing_input, format!("{h}.{p}"));
    }

    #[test]
    fn claim_checks() {
        let now = 1_700_000_000;
        let r = rules();
        assert_eq!(check_claims(&decode(&claims(now)), &r, now), Ok(()));
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims(now);
            f(&mut c);
            check_claims(&decode(&c), &r, now)
        };
        assert_eq!(with(&|c| c["exp"] = serde_json::Value::Null), Err(Invalid::MissingExp));
        assert_eq!(with(&|c| c["exp"] = (now - 61).into()), Err(Invalid::Expired));
        assert_eq!(with(&|c| c["exp"] = (now - 59).into()), Ok(()), "inside leeway");
        assert_eq!(with(&|c| c["nbf"] = (now + 61).into()), Err(Invalid::NotYetValid));
        assert_eq!(with(&|c| c["iat"] = (now + 61).into()), Err(Invalid::IssuedInFuture));
        assert_eq!(with(&|c| c["aud"] = "other".into()), Err(Invalid::WrongAudience));
        assert_eq!(
            with(&|c| c["aud"] = serde_json::json!(["other", "https://api.partnercenter.microsoft.com"])),
            Ok(())
        );
        assert_eq!(with(&|c| c["iss"] = "https://sts.windows.net/x/".into()), Err(Invalid::UnknownIssuer));
        assert_eq!(with(&|c| c["tid"] = "11111111-2222-3333-4444-555555555555".into()), Err(Invalid::UnknownIssuer));
        let mut only = rules();
        only.tenants = vec!["11111111-2222-3333-4444-555555555555".into()];
        assert_eq!(check_claims(&decode(&claims(now)), &only, now), Err(Invalid::TenantNotAllowed));
    }

    #[test]
    fn typ_is_checked_only_where_the_issuer_names_its_types() {
        let mut r = rules();
        assert_eq!(check_typ(None, &r), Ok(()), "not checked by default");
        r.typ = vec!["at+jwt".into(), "application/at+jwt".into()];
        assert_eq!(check_typ(Some("at+jwt"), &r), Ok(()));
        assert_eq!(check_typ(Some("Application/AT+JWT"), &r), Ok(()), "media types compare without case");
        assert_eq!(check_typ(Some("JWT"), &r), Err(Invalid::WrongType));
        assert_eq!(check_typ(None, &r), Err(Invalid::WrongType), "an ID token has no typ");
    }

    #[test]
    fn numeric_dates_accept_floats_and_aud_accepts_one_or_many() {
        let c = Claims::from_json(br#"{"exp": 1.5e9, "aud": "a"}"#).unwrap();
        assert_eq!((c.exp, c.values("aud").collect::<Vec<_>>()), (Some(1_500_000_000), vec!["a"]));
        let c = Claims::from_json(br#"{"aud": ["a", "b"], "scp": ["x", 1]}"#).unwrap();
        assert_eq!(c.values("aud").count(), 2);
        assert_eq!(c.values("scp").collect::<Vec<_>>(), vec!["x"], "non-strings in a list are skipped");
        assert_eq!(Claims::from_json(br#"{"exp": "soon"}"#).unwrap_err(), Invalid::BadJson);
        assert_eq!(Claims::from_json(br#"{"iss": 7}"#).unwrap_err(), Invalid::BadJson);
        assert_eq!(Claims::from_json(br#"{"aud": ["a", 1]}"#).unwrap_err(), Invalid::BadJson);
        assert_eq!(
            Claims::from_json(br#"{"exp": 1, "exp": 2}"#).unwrap_err(),
            Invalid::BadJson,
            "duplicate claims refused"
        );
        assert_eq!(
            Claims::from_json(br#"{"gty": "a", "gty": "b"}"#).unwrap_err(),
            Invalid::BadJson,
            "any claim, not only registered ones"
        );
        assert_eq!(Claims::from_json(b"[1]").unwrap_err(), Invalid::BadJson);
        let c = Claims::from_json(br#"{"sub": "s", "n": null}"#).unwrap();
        assert!(c.has("sub") && !c.has("n") && !c.has("x"));
    }
}
