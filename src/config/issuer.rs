//! The token tables: `[[issuer]]` (with its profile and overrides), `[mfa]`, `[identity]`,
//! `[challenge]` and `[cache]`, checked into the authenticator's settings.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::validator::{ConfigError, Validator};
use crate::auth::challenge::{ChallengeSettings, DEFAULT_AUTHORIZATION_URI};
use crate::auth::jwks::{KeySource, KeySpec, KeyTiming};
use crate::auth::profile::{Base, Condition, MfaRules, Profile, Test};
use crate::auth::token::{self, IssuerPattern, IssuerRules};
use crate::auth::{AuthConfig, IssuerConfig};
use crate::routes::StepUp;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
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
pub(super) struct RawMfa {
    amr: Option<Vec<String>>,
    #[serde(default)]
    acrs: Vec<String>,
    #[serde(default)]
    acr: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    header_prefix: Option<String>,
    forward_authorization: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChallenge {
    realm: Option<String>,
    request_context: Option<String>,
    /// The default for routes without their own `step_up`.
    pub(super) step_up: Option<StepUp>,
    acr_values: Option<Vec<String>>,
    auth_context: Option<String>,
    authorization_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
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

/// The token tables, checked: `[[issuer]]`, `[mfa]`, `[identity]`, `[challenge]`, `[cache]`.
pub(super) fn validate(
    v: &Validator<'_>,
    raw: Vec<RawIssuer>,
    mfa: RawMfa,
    identity: RawIdentity,
    mut ch: RawChallenge,
    cache: RawCache,
) -> Result<AuthConfig, ConfigError> {
    let mfa = mfa_rules(v, "mfa", mfa)?;
    let mut issuers: Vec<IssuerConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        if issuers.iter().any(|x| x.keys.name == r.issuer) {
            return Err(v.err(format!("issuer[{i}].issuer"), format!("duplicate issuer {:?}", r.issuer)));
        }
        issuers.push(issuer(v, i, r, &mfa)?);
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
    let request_context = match ch.request_context.take() {
        Some(s) => Some(
            HeaderValue::from_str(&s).map_err(|_| v.err("challenge.request_context", "not a valid header value"))?,
        ),
        None => None,
    };
    // 4 MiB, an eighth of a sidecar's 32 MiB (README, Performance): 3 000 Entra-sized tokens at
    // about 1.4 KiB each in the cache, as many as the users a pod serves within a token's hour.
    let cache_max_entries = cache.max_entries.unwrap_or(3_000);
    let cache_max_bytes = cache.max_bytes.unwrap_or(4 << 20);
    if cache_max_entries > 0 && cache_max_bytes < 1 << 20 {
        return Err(v.err("cache.max_bytes", "must be at least 1048576 (1 MiB) while the cache is on"));
    }
    Ok(AuthConfig {
        issuers,
        header_prefix,
        forward_authorization: identity.forward_authorization.unwrap_or(true),
        challenge: challenge_settings(v, ch)?,
        request_context,
        cache_max_entries,
        cache_max_bytes,
        dpop: Default::default(),
    })
}

/// One `[[issuer]]` table, checked; `mfa` is the top-level `[mfa]` it inherits.
fn issuer(v: &Validator<'_>, i: usize, mut r: RawIssuer, mfa: &MfaRules) -> Result<IssuerConfig, ConfigError> {
    let key = |k: &str| format!("issuer[{i}].{k}");
    if r.issuer.is_empty() {
        return Err(v.err(key("issuer"), "must not be empty"));
    }
    if r.issuer.matches("{tenantid}").count() > 1 {
        return Err(v.err(key("issuer"), "may hold {tenantid} at most once"));
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
    let algorithms = algorithms(v, &key("algorithms"), r.algorithms.take())?;
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
    Ok(IssuerConfig {
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
        tls: v.client_tls(&key("ca_file"), r.ca_file.as_deref(), None, None)?,
        keys: KeySpec { name: r.issuer, source, ca_file: r.ca_file.as_deref().map(|p| v.path(p)) },
        timing,
    })
}

/// `algorithms`: RS256 when unset; asymmetric ones from `ALLOWED_ALGS` only.
fn algorithms(v: &Validator<'_>, key: &str, names: Option<Vec<String>>) -> Result<Vec<Algorithm>, ConfigError> {
    let names = names.unwrap_or_else(|| vec!["RS256".into()]);
    if names.is_empty() {
        return Err(v.err(key, "at least one algorithm is required"));
    }
    names
        .iter()
        .map(|n| match n.parse::<Algorithm>() {
            Ok(a) if ALLOWED_ALGS.contains(&a) => Ok(a),
            _ => {
                Err(v
                    .err(key, format!("{n:?} is not allowed; use RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA")))
            }
        })
        .collect()
}

/// Header-safe token text for a challenge parameter: letters, digits and `-._:/`.
fn param_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:/".contains(&b))
}

/// The step-up parts of `[challenge]`. Whether a route that sends the Entra claims challenge has
/// its `auth_context` is checked with the routes (`config::mod`).
fn challenge_settings(v: &Validator<'_>, ch: RawChallenge) -> Result<ChallengeSettings, ConfigError> {
    let acr_values = match ch.acr_values {
        Some(list) if list.is_empty() => {
            return Err(v.err("challenge.acr_values", "give at least one value, or leave it out"))
        }
        Some(list) => match list.iter().find(|a| !param_token(a)) {
            Some(bad) => {
                return Err(v.err("challenge.acr_values", format!("{bad:?}: use letters, digits and - . _ : / only")))
            }
            None => Some(list.join(" ")),
        },
        None => None,
    };
    if let Some(c) = &ch.auth_context {
        if c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(v.err("challenge.auth_context", format!("{c:?}: an Entra auth context id, e.g. \"c1\"")));
        }
    }
    let authorization_uri = match ch.authorization_uri {
        Some(u) => {
            let uri = v.url("challenge.authorization_uri", &u)?;
            if uri.scheme_str() != Some("https") || u.contains(['"', '\\']) {
                return Err(v.err("challenge.authorization_uri", format!("{u:?}: must be an https URL")));
            }
            u
        }
        None => DEFAULT_AUTHORIZATION_URI.to_string(),
    };
    Ok(ChallengeSettings { realm: ch.realm, acr_values, auth_context: ch.auth_context, authorization_uri })
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
