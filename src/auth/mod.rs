//! Authentication: the bearer token verified against its issuer's keys, classified, and held to
//! the route's requirement. `token`, `keys`, `policy` and `challenge` are pure; `jwks` does the
//! key-server I/O; `Authenticator` puts them together behind a verified-token cache.

pub mod challenge;
pub mod jwks;
pub mod keys;
pub mod policy;
pub mod profile;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::config::{ConfigError, Validator};
use crate::metrics::Metrics;
use crate::routes::Route;
use challenge::AuthRefusal;
use jwks::{IssuerKeys, KeySource, KeyTiming};
use keys::Lookup;
use policy::{Caller, TokenKind};
use profile::{Base, Condition, MfaRules, Profile, Test};
use token::{Invalid, IssuerPattern, IssuerRules};

// ---------------------------------------------------------------------------------------------
// Configuration ([[issuer]], [mfa], [identity], [challenge], [cache]).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    issuer: String,
    discovery: Option<String>,
    jwks_uri: Option<String>,
    jwks_file: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
    algorithms: Option<Vec<String>>,
    leeway: Option<String>,
    max_token_bytes: Option<usize>,
    refresh_interval: Option<String>,
    refetch_min_interval: Option<String>,
    max_stale: Option<String>,
    fetch_timeout: Option<String>,
    ca_file: Option<String>,
    profile: Option<RawBase>,
    app_only: Option<Vec<RawCondition>>,
    #[serde(default)]
    claims: RawClaimNames,
    require_typ: Option<Vec<String>>,
    mfa: Option<RawMfa>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawBase {
    Entra,
    Rfc9068,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    claim: String,
    equals: Option<String>,
    equals_claim: Option<String>,
    starts_with: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClaimNames {
    app_id: Option<String>,
    user: Option<String>,
    scopes: Option<String>,
    amr: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMfa {
    amr: Option<Vec<String>>,
    #[serde(default)]
    acrs: Vec<String>,
    #[serde(default)]
    acr: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    header_prefix: Option<String>,
    forward_authorization: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChallenge {
    realm: Option<String>,
    request_context: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    max_entries: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub rules: IssuerRules,
    pub profile: Profile,
    pub source: KeySource,
    pub timing: KeyTiming,
    pub name: String,
    /// For https key servers: platform roots plus the issuer's `ca_file`.
    pub tls: rustls::ClientConfig,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Lowercase prefix of the identity headers sent upstream; client copies are stripped.
    pub header_prefix: String,
    pub forward_authorization: bool,
    pub realm: Option<String>,
    pub request_context: Option<HeaderValue>,
    pub cache_max_entries: u64,
}

const ALLOWED_ALGS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl AuthConfig {
    pub(crate) fn validate(
        v: &Validator<'_>,
        raw: Vec<RawIssuer>,
        mfa: RawMfa,
        identity: RawIdentity,
        ch: RawChallenge,
        cache: RawCache,
    ) -> Result<AuthConfig, ConfigError> {
        let mfa = mfa_rules(v, "mfa", mfa)?;
        let mut issuers = Vec::with_capacity(raw.len());
        for (i, mut r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("issuer[{i}].{k}");
            if r.issuer.is_empty() {
                return Err(v.err(key("issuer"), "must not be empty"));
            }
            if r.issuer.matches("{tenantid}").count() > 1 {
                return Err(v.err(key("issuer"), "may hold {tenantid} at most once"));
            }
            if issuers.iter().any(|x: &IssuerConfig| x.name == r.issuer) {
                return Err(v.err(key("issuer"), format!("duplicate issuer {:?}", r.issuer)));
            }
            let source = match (&r.discovery, &r.jwks_uri, &r.jwks_file) {
                (Some(u), None, None) => KeySource::Discovery(v.url(&key("discovery"), u)?),
                (None, Some(u), None) => KeySource::Jwks(v.url(&key("jwks_uri"), u)?),
                (None, None, Some(f)) => KeySource::File(v.path(f)),
                _ => return Err(v.err(key("discovery"), "give exactly one of discovery, jwks_uri, jwks_file")),
            };
            if r.audiences.is_empty() {
                return Err(v.err(key("audiences"), "at least one audience is required"));
            }
            let mut tenants = Vec::with_capacity(r.tenants.len());
            for t in &r.tenants {
                if !token::is_guid(t) {
                    return Err(v.err(key("tenants"), format!("{t:?} is not a GUID")));
                }
                tenants.push(t.to_ascii_lowercase());
            }
            let names = r.algorithms.take().unwrap_or_else(|| vec!["RS256".into()]);
            if names.is_empty() {
                return Err(v.err(key("algorithms"), "at least one algorithm is required"));
            }
            let mut algorithms = Vec::with_capacity(names.len());
            for n in &names {
                match n.parse::<Algorithm>() {
                    Ok(a) if ALLOWED_ALGS.contains(&a) => algorithms.push(a),
                    _ => {
                        return Err(v.err(
                            key("algorithms"),
                            format!("{n:?} is not allowed; use RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA"),
                        ))
                    }
                }
            }
            let leeway = v.duration(&key("leeway"), r.leeway.as_deref().unwrap_or("60s"))?;
            if leeway > Duration::from_secs(600) {
                return Err(v.err(key("leeway"), "must be at most 10m"));
            }
            let max_token_bytes = r.max_token_bytes.unwrap_or(16 * 1024);
            if !(256..=64 * 1024).contains(&max_token_bytes) {
                return Err(v.err(key("max_token_bytes"), "must be between 256 and 65536"));
            }
            let own = match r.mfa.take() {
                Some(m) => mfa_rules(v, &key("mfa"), m)?,
                None => mfa.clone(),
            };
            let profile = issuer_profile(v, &key, &r, own)?;
            let typ = match &r.require_typ {
                Some(list) if list.iter().any(|t| t.trim().is_empty()) => {
                    return Err(v.err(key("require_typ"), "values must not be empty; use [] to leave typ unchecked"))
                }
                Some(list) => list.iter().map(|t| t.to_ascii_lowercase()).collect(),
                None => profile.base.default_typ().iter().map(|t| t.to_string()).collect(),
            };
            let timing = KeyTiming {
                refresh_interval: v.nonzero(&key("refresh_interval"), r.refresh_interval.as_deref().unwrap_or("1h"))?,
                refetch_min_interval: v
                    .duration(&key("refetch_min_interval"), r.refetch_min_interval.as_deref().unwrap_or("5m"))?,
                max_stale: v.nonzero(&key("max_stale"), r.max_stale.as_deref().unwrap_or("24h"))?,
                fetch_timeout: v.nonzero(&key("fetch_timeout"), r.fetch_timeout.as_deref().unwrap_or("5s"))?,
            };
            issuers.push(IssuerConfig {
                rules: IssuerRules {
                    issuer: IssuerPattern::new(&r.issuer),
                    audiences: r.audiences,
                    tenants,
                    algorithms,
                    leeway_secs: leeway.as_secs() as i64,
                    max_token_bytes,
                    typ,
                },
                profile,
                source,
                timing,
                name: r.issuer,
                tls: v.client_tls(&key("ca_file"), r.ca_file.as_deref(), None, None)?,
            });
        }
        let header_prefix = identity.header_prefix.unwrap_or_else(|| "x-mfa-gateway-".into()).to_ascii_lowercase();
        if header_prefix.len() < 3 || HeaderName::from_bytes(format!("{header_prefix}x").as_bytes()).is_err() {
            return Err(v.err("identity.header_prefix", format!("{header_prefix:?} is not a header name prefix")));
        }
        if let Some(r) = &ch.realm {
            if r.contains(['"', '\\']) || !r.is_ascii() || r.chars().any(|c| c.is_ascii_control()) {
                return Err(v.err("challenge.realm", "must be printable ASCII without quotes or backslashes"));
            }
        }
        let request_context = match ch.request_context {
            Some(s) => Some(
                HeaderValue::from_str(&s)
                    .map_err(|_| v.err("challenge.request_context", "not a valid header value"))?,
            ),
            None => None,
        };
        let cache_max_entries = cache.max_entries.unwrap_or(10_000);
        Ok(AuthConfig {
            issuers,
            header_prefix,
            forward_authorization: identity.forward_authorization.unwrap_or(true),
            realm: ch.realm,
            request_context,
            cache_max_entries,
        })
    }
}

/// `[mfa]`, or an issuer's own `mfa` table, checked.
fn mfa_rules(v: &Validator<'_>, key: &str, m: RawMfa) -> Result<MfaRules, ConfigError> {
    let amr = m.amr.unwrap_or_else(|| vec!["mfa".into()]);
    if amr.is_empty() && m.acrs.is_empty() && m.acr.is_empty() {
        return Err(v.err(format!("{key}.amr"), "no claim value would ever count as MFA; keep \"mfa\""));
    }
    Ok(MfaRules { amr, acrs: m.acrs, acr: m.acr })
}

/// Entra's issuers, for which the `entra` profile is the default.
fn is_entra_issuer(issuer: &str) -> bool {
    ["https://login.microsoftonline.com/", "https://sts.windows.net/"].iter().any(|p| issuer.starts_with(p))
}

/// The issuer's profile: its base and overrides. Any issuer but Entra's must name its base:
/// guessing how a provider marks app-only tokens is how a user without MFA gets through.
fn issuer_profile(
    v: &Validator<'_>,
    key: &dyn Fn(&str) -> String,
    r: &RawIssuer,
    mfa: MfaRules,
) -> Result<Profile, ConfigError> {
    let base = match r.profile {
        Some(RawBase::Entra) => Base::Entra,
        Some(RawBase::Rfc9068) => Base::Rfc9068,
        None if is_entra_issuer(&r.issuer) => Base::Entra,
        None => {
            return Err(v.err(
                key("profile"),
                format!(
                    "required for {:?}, which is not an Entra issuer: set profile = \"rfc9068\" (RFC 9068 access \
                     tokens) or \"entra\"; the README's provider table shows the settings for Keycloak, Okta and Auth0",
                    r.issuer
                ),
            ))
        }
    };
    let name = |k: &str, n: &Option<String>| match n {
        Some(n) if n.is_empty() => Err(v.err(key(&format!("claims.{k}")), "must name a claim")),
        _ => Ok(n.clone()),
    };
    if base == Base::Entra {
        if let Some(a) = mfa.acr.iter().find(|a| matches!(a.as_str(), "0" | "1")) {
            return Err(v.err(
                key("mfa.acr"),
                format!(
                    "{a:?} is Entra's plain sign-in level, not MFA; give this issuer its own [issuer.mfa] without it"
                ),
            ));
        }
    }
    let c = &r.claims;
    let mut p = Profile::new(base, mfa);
    (p.app_id, p.user, p.scopes, p.amr) =
        (name("app_id", &c.app_id)?, name("user", &c.user)?, name("scopes", &c.scopes)?, name("amr", &c.amr)?);
    if let Some(conds) = &r.app_only {
        if conds.is_empty() {
            return Err(v.err(key("app_only"), "give at least one condition, or leave app_only out"));
        }
        let mut all = Vec::with_capacity(conds.len());
        for (j, c) in conds.iter().enumerate() {
            let test = match (&c.equals, &c.equals_claim, &c.starts_with) {
                (Some(x), None, None) => Test::Equals(x.clone()),
                (None, Some(x), None) if !x.is_empty() => Test::EqualsClaim(x.clone()),
                (None, None, Some(x)) if !x.is_empty() => Test::StartsWith(x.clone()),
                _ => {
                    return Err(v.err(
                        key(&format!("app_only[{j}]")),
                        "give exactly one of equals, equals_claim or starts_with (not empty)",
                    ))
                }
            };
            if c.claim.is_empty() {
                return Err(v.err(key(&format!("app_only[{j}].claim")), "must name a claim"));
            }
            all.push(Condition { claim: c.claim.clone(), test });
        }
        p.app_only = Some(all);
    }
    Ok(p)
}

/// Pure: everything a token must pass once its issuer's key is found (signature, `typ`, time,
/// issuer and audience claims), then the identity the issuer's profile reads from it. The request
/// path and the fuzz target both call this one function.
pub fn accept<'p>(
    parsed: &'p token::Parsed<'_>,
    rules: &IssuerRules,
    key: &keys::Key,
    profile: &Profile,
    now: i64,
) -> Result<profile::Identity<'p>, Invalid> {
    token::verify_signature(parsed, rules, key)?;
    token::check_typ(parsed.typ.as_deref(), rules)?;
    token::check_claims(&parsed.claims, rules, now)?;
    Ok(profile::read(&parsed.claims, profile))
}

// ---------------------------------------------------------------------------------------------
// The authenticator.

/// A token that verified: what policy and the upstream need, computed once and cached.
#[derive(Debug)]
pub struct Verified {
    pub issuer: usize,
    epoch: u64,
    pub exp: i64,
    leeway: i64,
    pub kind: TokenKind,
    pub mfa: bool,
    pub roles: Box<[String]>,
    pub scopes: Box<str>,
    /// `tid`, `oid`, app id, `upn`, user (the last two as the issuer's profile reads them): each
    /// kept once, as the header value the upstream receives (a claim that cannot be a header
    /// value is left out, not mangled).
    ids: [Option<HeaderValue>; 5],
    /// Values other layers derive from this token once (metric handles, redacted ids), so a
    /// cached token costs them nothing per request. Set and read by the stack.
    pub annotations: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

const TID: usize = 0;
const OID: usize = 1;
const APP: usize = 2;
const UPN: usize = 3;
const USER: usize = 4;

impl Verified {
    pub fn caller(&self) -> Caller<'_> {
        Caller { kind: self.kind, mfa: self.mfa, roles: &self.roles, scopes: &self.scopes }
    }

    fn id(&self, i: usize) -> Option<&str> {
        // Built from a `&str`, so the bytes are UTF-8.
        self.ids[i].as_ref().and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    }

    pub fn tid(&self) -> Option<&str> {
        self.id(TID)
    }

    pub fn oid(&self) -> Option<&str> {
        self.id(OID)
    }

    pub fn app_id(&self) -> Option<&str> {
        self.id(APP)
    }

    pub fn upn(&self) -> Option<&str> {
        self.id(UPN)
    }

    /// The user as the issuer's profile names it (Entra: `upn`, else `oid`; RFC 9068: `sub`).
    pub fn user(&self) -> Option<&str> {
        self.id(USER)
    }
}

struct UntilExp;

impl moka::Expiry<Arc<str>, Arc<Verified>> for UntilExp {
    fn expire_after_create(&self, _: &Arc<str>, v: &Arc<Verified>, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs((v.exp - unix_now()).max(0) as u64))
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub struct Authenticator {
    pub issuers: Vec<Arc<IssuerKeys>>,
    /// How each issuer's tokens are read, by the same index as `issuers`.
    profiles: Vec<Profile>,
    header_prefix: String,
    /// token-kind, mfa, tenant-id, object-id, app-id, upn, user, each under `header_prefix`.
    header_names: [HeaderName; 7],
    max_token_bytes: usize,
    cache: moka::sync::Cache<Arc<str>, Arc<Verified>, foldhash::fast::RandomState>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig, metrics: Arc<Metrics>) -> Self {
        let issuers = cfg
            .issuers
            .iter()
            .map(|i| {
                Arc::new(IssuerKeys::new(
                    i.name.clone(),
                    i.rules.clone(),
                    i.source.clone(),
                    i.timing.clone(),
                    jwks::fetch_client(i.tls.clone()),
                    metrics.clone(),
                ))
            })
            .collect();
        Self {
            issuers,
            profiles: cfg.issuers.iter().map(|i| i.profile.clone()).collect(),
            header_prefix: cfg.header_prefix.clone(),
            header_names: ["token-kind", "mfa", "tenant-id", "object-id", "app-id", "upn", "user"].map(|s| {
                HeaderName::from_bytes(format!("{}{s}", cfg.header_prefix).as_bytes())
                    .expect("validated: the prefix makes header names")
            }),
            max_token_bytes: cfg.issuers.iter().map(|i| i.rules.max_token_bytes).max().unwrap_or(0),
            // Keys are whole tokens (~1 KB): a fast seeded hash instead of SipHash. Only verified
            // tokens are ever inserted, so an attacker cannot fill a bucket.
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_max_entries)
                .expire_after(UntilExp)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            metrics,
        }
    }

    /// Reasons the gateway is not ready to judge tokens; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        self.issuers.iter().filter_map(|i| i.not_ready_reason()).collect()
    }

    /// Verifies the request's bearer token (from cache when it verified before).
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Arc<Verified>, AuthRefusal> {
        let token = match token::bearer(headers) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(AuthRefusal::MissingToken),
            Err(why) => return Err(AuthRefusal::Invalid(why)),
        };
        if let Some(v) = self.cache.get(token) {
            // The entry expires at `exp`; these checks cover a key that left the set since.
            if self.issuers[v.issuer].epoch() == v.epoch && unix_now() <= v.exp + v.leeway {
                self.metrics.cache_hits.inc();
                return Ok(v);
            }
            self.cache.invalidate(token);
        }
        self.metrics.cache_misses.inc();
        let v = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(Arc::from(token), v.clone());
        Ok(v)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Verified, AuthRefusal> {
        let invalid = AuthRefusal::Invalid;
        let parsed = token::parse(token, self.max_token_bytes).map_err(invalid)?;
        let iss = parsed.claims.iss().ok_or(invalid(Invalid::UnknownIssuer))?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.rules.issuer.could_match(iss))
            .ok_or(invalid(Invalid::UnknownIssuer))?;
        let rules = &issuer.rules;
        if token.len() > rules.max_token_bytes {
            return Err(invalid(Invalid::TooLarge));
        }
        // Checked again in verify_signature; here it keeps a disallowed alg from triggering a
        // key refetch.
        if !rules.algorithms.contains(&parsed.alg) {
            return Err(invalid(Invalid::AlgNotAllowed));
        }
        let tid = parsed.claims.tid();
        // Read the epoch before the key: a key removed after this point voids the entry.
        let epoch = issuer.epoch();
        let key = match issuer.lookup(parsed.kid.as_deref(), iss, tid) {
            Lookup::Found(k) => k,
            Lookup::NoKeys => return Err(AuthRefusal::KeysUnavailable),
            Lookup::Invalid(Invalid::UnknownKid) => {
                // Keys roll: an unknown kid may be a new key. Refetch (rate-limited, shared).
                if !issuer.refetch_for_unknown_kid().await {
                    return Err(invalid(Invalid::UnknownKid));
                }
                match issuer.lookup(parsed.kid.as_deref(), iss, tid) {
                    Lookup::Found(k) => k,
                    Lookup::NoKeys => return Err(AuthRefusal::KeysUnavailable),
                    Lookup::Invalid(why) => return Err(invalid(why)),
                }
            }
            Lookup::Invalid(why) => return Err(invalid(why)),
        };
        let id = accept(&parsed, rules, &key, &self.profiles[index], unix_now()).map_err(invalid)?;
        let value = |s: Option<&str>| s.and_then(|s| HeaderValue::from_str(s).ok());
        Ok(Verified {
            issuer: index,
            epoch,
            exp: parsed.claims.exp.unwrap_or(0),
            leeway: rules.leeway_secs,
            kind: id.kind,
            mfa: id.mfa,
            roles: id.roles.into_iter().map(String::from).collect(),
            scopes: id.scopes.into_boxed_str(),
            ids: [value(id.tid), value(id.oid), value(id.app_id), value(id.upn), value(id.user)],
            annotations: std::sync::OnceLock::new(),
        })
    }

    /// The identity headers for the upstream, from a verified token's claims only.
    pub fn identity_headers<'a>(&'a self, v: &'a Verified) -> impl Iterator<Item = (&'a HeaderName, HeaderValue)> + 'a {
        let kind = HeaderValue::from_static(v.kind.as_str());
        let mfa = HeaderValue::from_static(if v.mfa { "true" } else { "false" });
        let values = [Some(kind), Some(mfa)].into_iter().chain(v.ids.iter().cloned());
        self.header_names.iter().zip(values).filter_map(|(n, v)| Some((n, v?)))
    }

    /// Applies the route's requirement to a verified token.
    pub fn authorize(&self, route: &Route, v: &Verified) -> Result<(), AuthRefusal> {
        policy::decide(route, &v.caller()).map_err(AuthRefusal::Denied)
    }

    pub fn header_prefix(&self) -> &str {
        &self.header_prefix
    }
}
