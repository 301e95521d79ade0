//! Authentication: the bearer token verified against its issuer's keys, classified, and held to
//! the route's requirement. `token`, `keys`, `policy` and `challenge` are pure; `jwks` does the
//! key-server I/O; `Authenticator` puts them together behind a verified-token cache.

pub mod admission;
pub mod binding;
pub mod challenge;
pub mod dpop;
pub mod invalid;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod nonce;
pub mod policy;
pub mod profile;
pub mod replay;
pub mod token;
pub mod verified;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::routes::{Route, StepUp};
pub use binding::{BoundBy, Presented, DPOP};
use challenge::{AuthRefusal, ChallengeSettings, Denial, StepUpNeeded};
pub use dpop::{DpopConfig, DpopNonce};
use invalid::Invalid;
use jwks::{IssuerKeys, KeySpec, KeyTiming};
use keys::Lookup;
use metrics::AuthMetrics;
use policy::Deny;
use profile::Profile;
use token::IssuerRules;
use verified::{TokenText, UntilExp, Verified};

// ---------------------------------------------------------------------------------------------
// Configuration ([[issuer]], [mfa], [identity], [challenge], [cache]).

#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    pub rules: IssuerRules,
    pub profile: Profile,
    /// The issuer's name, key source and CA file: what its key set is.
    pub keys: KeySpec,
    pub timing: KeyTiming,
    /// For https key servers: platform roots plus the issuer's `ca_file`.
    pub tls: crate::tls::ClientTls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Lowercase prefix of the identity headers sent upstream; client copies are stripped.
    pub header_prefix: String,
    pub forward_authorization: bool,
    pub challenge: ChallengeSettings,
    pub request_context: Option<HeaderValue>,
    pub cache_max_entries: u64,
    /// What the cached tokens may weigh in all (`Verified::weight`).
    pub cache_max_bytes: u64,
    /// `[dpop]`.
    pub dpop: DpopConfig,
}

/// Fetches an issuer's keys once, as the gateway would (discovery document, then keys; or the
/// key file), for `check --fetch`: how many keys, or why none.
pub async fn fetch_keys(issuer: &IssuerConfig) -> Result<usize, jwks::KeyFetchError> {
    let metrics = Arc::new(AuthMetrics::register(&prometheus::Registry::new()));
    let client = crate::fetch::client(issuer.tls.0.clone(), None);
    Arc::new(IssuerKeys::new(issuer.keys.clone(), issuer.timing.clone(), client, metrics)).load_now().await
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
    keys::verify_signature(parsed, rules, key)?;
    token::check_typ(parsed.typ.as_deref(), rules)?;
    token::check_claims(&parsed.claims, rules, now)?;
    Ok(profile::read(&parsed.claims, profile))
}

// ---------------------------------------------------------------------------------------------
// The authenticator.

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub struct Authenticator<M = ()> {
    pub issuers: Vec<Arc<IssuerKeys>>,
    /// What each issuer demands of its tokens, and how they are read, by the index of `issuers`.
    rules: Vec<IssuerRules>,
    profiles: Vec<Profile>,
    header_prefix: String,
    /// token-kind, mfa, tenant-id, object-id, app-id, upn, user, each under `header_prefix`.
    header_names: [HeaderName; 7],
    max_token_bytes: usize,
    /// Verified tokens by a seeded 64-bit hash of the token. A hash, not the ~1 KB token, is what
    /// the cache's table rehashes and compares as it grows and evicts; the entry keeps the token
    /// and a lookup whose token differs is a miss, so two tokens with one hash never share an entry.
    cache: moka::sync::Cache<u64, Arc<Verified<M>>, foldhash::fast::RandomState>,
    token_hash: foldhash::fast::RandomState,
    /// `None` with the cache off (`[cache] max_entries = 0`).
    doorkeeper: Option<admission::Doorkeeper>,
    metrics: Arc<AuthMetrics>,
    /// DPoP nonces, when `[dpop]` turns them on.
    pub nonces: Option<Arc<nonce::Nonces>>,
    /// `[dpop] iat_window`, in seconds.
    dpop_window: i64,
    /// Unix seconds, for `exp`, `nbf` and `auth_time`: `unix_now` but in tests.
    clock: fn() -> i64,
}

impl<M: Default + Send + Sync + 'static> Authenticator<M> {
    /// A new authenticator with an empty token cache. Key sets in `keep` with an issuer's
    /// `KeySpec` are taken over, keys and all (their timings change when the new config is put
    /// in service: `retime`); the others are new and empty (their `IssuerKeys::maintain` task is
    /// the caller's to start).
    pub fn new(cfg: &AuthConfig, metrics: Arc<AuthMetrics>, keep: &[Arc<IssuerKeys>]) -> Self {
        let issuers = cfg
            .issuers
            .iter()
            .map(|i| {
                keep.iter().find(|k| k.spec == i.keys).cloned().unwrap_or_else(|| {
                    Arc::new(IssuerKeys::new(
                        i.keys.clone(),
                        i.timing.clone(),
                        crate::fetch::client(i.tls.0.clone(), None),
                        metrics.clone(),
                    ))
                })
            })
            .collect();
        Self {
            issuers,
            rules: cfg.issuers.iter().map(|i| i.rules.clone()).collect(),
            profiles: cfg.issuers.iter().map(|i| i.profile.clone()).collect(),
            header_prefix: cfg.header_prefix.clone(),
            header_names: ["token-kind", "mfa", "tenant-id", "object-id", "app-id", "upn", "user"].map(|s| {
                HeaderName::from_bytes(format!("{}{s}", cfg.header_prefix).as_bytes())
                    .expect("validated: the prefix makes header names")
            }),
            max_token_bytes: cfg.issuers.iter().map(|i| i.rules.max_token_bytes).max().unwrap_or(0),
            // A fast seeded hash instead of SipHash: only verified tokens are ever inserted, so an
            // attacker cannot fill a bucket, and a collision costs a miss, never a wrong answer.
            cache: {
                // Bounded in bytes; each entry weighs at least its share of `max_entries`, so the
                // entry bound holds too.
                let share = cfg.cache_max_bytes.checked_div(cfg.cache_max_entries).unwrap_or(0) as usize;
                moka::sync::Cache::builder()
                    .max_capacity(if cfg.cache_max_entries == 0 { 0 } else { cfg.cache_max_bytes })
                    .weigher(move |_, v: &Arc<Verified<M>>| v.weight().max(share).min(u32::MAX as usize) as u32)
                    .expire_after(UntilExp)
                    .build_with_hasher(foldhash::fast::RandomState::default())
            },
            token_hash: foldhash::fast::RandomState::default(),
            doorkeeper: (cfg.cache_max_entries > 0).then(|| admission::Doorkeeper::new(cfg.cache_max_entries)),
            metrics,
            nonces: cfg.dpop.nonce.as_ref().map(|n| Arc::new(nonce::Nonces::new(&n.secret, n.step_secs))),
            dpop_window: cfg.dpop.window_secs,
            clock: unix_now,
        }
    }

    /// The same, reading the time from `clock`: a test moves time instead of waiting for it.
    pub fn with_clock(self, clock: fn() -> i64) -> Self {
        Self { clock, ..self }
    }

    /// Gives each key set the timings of `cfg`, once `cfg` is in service.
    pub fn retime(&self, cfg: &AuthConfig) {
        for (keys, issuer) in self.issuers.iter().zip(&cfg.issuers) {
            keys.retime(&issuer.timing);
        }
    }

    /// What the verified-token cache holds, in `Verified::weight` bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Reasons the gateway is not ready to judge tokens; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        self.issuers.iter().filter_map(|i| i.not_ready_reason()).collect()
    }

    /// Verifies the request's token (from cache when it verified before), then its binding to
    /// the client: a DPoP-bound token only with its proof, and the route's binding if it has one.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        presented: &Presented<'_>,
    ) -> Result<(Arc<Verified<M>>, BoundBy), AuthRefusal> {
        let (scheme, token) = match token::credential(headers) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(AuthRefusal::MissingToken),
            Err(why) => return Err(AuthRefusal::Invalid(why)),
        };
        let v = self.verified(token).await?;
        let bound = binding::check(
            scheme,
            token,
            token::Cnf { jkt: v.jkt.as_deref(), x5t_s256: v.x5t_s256.as_deref() },
            headers,
            presented,
            binding::Rules { now: (self.clock)(), window: self.dpop_window, nonces: self.nonces.as_deref() },
        )?;
        Ok((v, bound))
    }

    /// The token's `Verified`: from the cache, or verified now.
    async fn verified(&self, token: &str) -> Result<Arc<Verified<M>>, AuthRefusal> {
        let key = std::hash::BuildHasher::hash_one(&self.token_hash, token);
        if let Some(v) = self.cache.get(&key).filter(|v| v.token.as_ref().is_some_and(|t| *t.0 == *token)) {
            // The entry expires at `exp`; these checks cover a key that left the set since.
            if self.issuers[v.issuer].epoch() == v.epoch && (self.clock)() <= v.exp + v.leeway {
                self.metrics.cache_hits.inc();
                return Ok(v);
            }
            self.cache.invalidate(&key);
        }
        self.metrics.cache_misses.inc();
        let seen = self.doorkeeper.as_ref().map(|d| d.seen(key));
        let v = Arc::new(self.verify_uncached(token, seen == Some(true)).await?);
        // Only a token that verified leaves a mark: junk cannot take a good token's place.
        match (seen, &self.doorkeeper) {
            (Some(true), _) => self.cache.insert(key, v.clone()),
            (Some(false), Some(d)) => {
                d.mark(key);
                self.metrics.cache_deferred.inc();
            }
            _ => {}
        }
        Ok(v)
    }

    async fn verify_uncached(&self, token: &str, keep: bool) -> Result<Verified<M>, AuthRefusal> {
        let invalid = AuthRefusal::Invalid;
        let parsed = token::parse(token, self.max_token_bytes).map_err(invalid)?;
        let iss = parsed.claims.iss().ok_or(invalid(Invalid::UnknownIssuer))?;
        let index = self.rules.iter().position(|r| r.issuer.could_match(iss)).ok_or(invalid(Invalid::UnknownIssuer))?;
        let (issuer, rules) = (&self.issuers[index], &self.rules[index]);
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
        let id = accept(&parsed, rules, &key, &self.profiles[index], (self.clock)()).map_err(invalid)?;
        let cnf = parsed.claims.cnf().map_err(invalid)?;
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
            auth_time: id.auth_time,
            claims_capable: id.claims_capable,
            ids: [value(id.tid), value(id.oid), value(id.app_id), value(id.upn), value(id.user)],
            jkt: cnf.jkt.map(Box::from),
            x5t_s256: cnf.x5t_s256.map(Box::from),
            memo: M::default(),
            token: keep.then(|| TokenText(token.into())),
        })
    }

    /// The identity headers for the upstream, from a verified token's claims only.
    pub fn identity_headers<'a>(
        &'a self,
        v: &'a Verified<M>,
    ) -> impl Iterator<Item = (&'a HeaderName, HeaderValue)> + 'a {
        let kind = HeaderValue::from_static(v.kind.as_str());
        let mfa = HeaderValue::from_static(if v.mfa { "true" } else { "false" });
        let values = [Some(kind), Some(mfa)].into_iter().chain(v.ids.iter().cloned());
        self.header_names.iter().zip(values).filter_map(|(n, v)| Some((n, v?)))
    }

    /// Applies the route's requirement to a verified token. Missing or stale MFA becomes the
    /// route's step-up challenge when the client can act on it.
    pub fn authorize(&self, route: &Route, v: &Verified<M>) -> Result<(), Denial> {
        // The clock is read only where the route limits the sign-in's age.
        let now = if route.max_auth_age.is_some() { (self.clock)() } else { 0 };
        policy::decide(route, &v.caller(), now).map_err(|why| {
            let step_up = match (why, route.step_up) {
                (Deny::MfaRequired | Deny::AuthTooOld, StepUp::Rfc9470) => true,
                (Deny::MfaRequired | Deny::AuthTooOld, StepUp::EntraClaims) => v.claims_capable,
                _ => false,
            };
            if !step_up {
                return Denial::Plain(why);
            }
            let tid = v.tid().filter(|t| token::is_guid(t)).and_then(|t| t.as_bytes().try_into().ok());
            Denial::StepUp(StepUpNeeded { style: route.step_up, why, max_age: route.max_auth_age, tid })
        })
    }

    /// Every identity header name the gateway sets.
    pub fn identity_names(&self) -> &[HeaderName] {
        &self.header_names
    }

    pub fn header_prefix(&self) -> &str {
        &self.header_prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{entra_claims, DevIssuer};
    use std::time::Duration;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        h
    }

    /// A bearer token on a route with no binding required.
    async fn check(auth: &Authenticator, token: &str) -> Result<Arc<Verified>, AuthRefusal> {
        static REPLAYS: std::sync::LazyLock<replay::ReplayStore> =
            std::sync::LazyLock::new(|| replay::ReplayStore::new(16));
        let presented =
            Presented { method: "GET", path: "/", origin: None, required: None, replays: &REPLAYS, cert: None };
        auth.verify(&bearer(token), &presented).await.map(|(v, _)| v)
    }

    /// An authenticator for `config/partner-center.toml` with `cache` as its `[cache]` table,
    /// trusting `issuer`'s key from a file, keys loaded.
    async fn ready_authenticator(issuer: &DevIssuer, cache: &str) -> (Authenticator, Arc<AuthMetrics>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mfa-gw-cache-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, serde_json::json!({"keys": [issuer.jwk()]}).to_string()).unwrap();
        let text = std::fs::read_to_string("config/partner-center.toml").unwrap().replace(
            "discovery = \"https://login.microsoftonline.com/common/.well-known/openid-configuration\"",
            &format!("jwks_file = \"{}\"", jwks.display()),
        );
        let text = format!("{text}\n[cache]\n{cache}\n");
        let config = crate::config::Config::parse(&text, "test", None).unwrap();
        let metrics = Arc::new(AuthMetrics::register(&prometheus::Registry::new()));
        let auth = Authenticator::new(&config.auth, metrics.clone(), &[]);
        tokio::spawn(IssuerKeys::maintain(Arc::downgrade(&auth.issuers[0])));
        while !auth.not_ready().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (auth, metrics)
    }

    /// The cache is keyed by a 64-bit hash: an entry found under a token's hash but made for
    /// another token must not answer for it.
    #[tokio::test]
    async fn a_cache_entry_answers_only_for_its_own_token() {
        let issuer = DevIssuer::generate("k1");
        let (auth, metrics) = ready_authenticator(&issuer, "").await;

        let (with_mfa, without) = (issuer.mint(&entra_claims("mfa", 600)), issuer.mint(&entra_claims("nomfa", 600)));
        // Verified twice: cached on the second sighting, so the entry holds its token.
        check(&auth, &without).await.unwrap();
        let other = check(&auth, &without).await.unwrap();
        assert!(!other.mfa && other.token.is_some());
        // As if the two tokens hashed alike: the MFA token's slot holds the other token's entry.
        auth.cache.insert(std::hash::BuildHasher::hash_one(&auth.token_hash, with_mfa.as_str()), other);
        let misses = metrics.cache_misses.get();
        let v = check(&auth, &with_mfa).await.unwrap();
        assert!(v.mfa, "answered with the other token's entry");
        assert_eq!(metrics.cache_misses.get(), misses + 1);
        // Seen a second time, the token is cached under its own entry.
        assert!(check(&auth, &with_mfa).await.unwrap().mfa);
        let hits = metrics.cache_hits.get();
        assert!(check(&auth, &with_mfa).await.unwrap().mfa);
        assert_eq!(metrics.cache_hits.get(), hits + 1);
    }

    /// A cached token answers until its `exp` (plus leeway) and is refused a second later: the
    /// authenticator reads its own clock, so the test moves time rather than waiting for it.
    #[tokio::test]
    async fn a_cached_token_is_refused_once_the_clock_passes_its_exp() {
        static NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        fn clock() -> i64 {
            NOW.load(std::sync::atomic::Ordering::Relaxed)
        }
        let set = |t: i64| NOW.store(t, std::sync::atomic::Ordering::Relaxed);
        set(unix_now());
        let issuer = DevIssuer::generate("k1");
        let (auth, metrics) = ready_authenticator(&issuer, "").await;
        let auth = auth.with_clock(clock);
        let mut claims = entra_claims("mfa", 0);
        let exp = clock() + 2;
        claims["exp"] = serde_json::json!(exp);
        let token = issuer.mint(&claims);
        // Cached on its second sighting, answered from the cache on the third.
        for _ in 0..3 {
            check(&auth, &token).await.unwrap();
        }
        assert_eq!(metrics.cache_hits.get(), 1);
        let leeway = auth.rules[0].leeway_secs;
        set(exp + leeway);
        check(&auth, &token).await.expect("valid up to exp + leeway");
        assert_eq!(metrics.cache_hits.get(), 2, "still answered from the cache");
        set(exp + leeway + 1);
        assert_eq!(check(&auth, &token).await.err(), Some(AuthRefusal::Invalid(Invalid::Expired)));
    }

    /// Junk sent between a good token's two sightings leaves no mark in the doorkeeper, so the
    /// good token is cached on its second sighting all the same.
    #[tokio::test]
    async fn junk_tokens_do_not_cost_a_verified_token_its_place() {
        let issuer = DevIssuer::generate("k1");
        // A small cache: its doorkeeper has 64 slots, which 10 000 marks would surely overwrite.
        let (auth, metrics) = ready_authenticator(&issuer, "max_entries = 16").await;
        let good = issuer.mint(&entra_claims("mfa", 600));
        check(&auth, &good).await.unwrap();
        assert_eq!(metrics.cache_deferred.get(), 1);
        // 10 000 distinct tokens with a broken signature (a few characters of it changed).
        let cut = good.len() - 10;
        for i in 0..10_000u32 {
            let junk = format!("{}{:05}{}", &good[..cut], i, &good[cut + 5..]);
            assert!(matches!(check(&auth, &junk).await, Err(AuthRefusal::Invalid(_))));
        }
        check(&auth, &good).await.unwrap();
        assert_eq!(metrics.cache_deferred.get(), 1, "the second sighting was taken for a first");
        let hits = metrics.cache_hits.get();
        check(&auth, &good).await.unwrap();
        assert_eq!(metrics.cache_hits.get(), hits + 1, "the verified token was not cached");
    }

    /// Large tokens fill the cache up to `max_bytes`, not up to `max_entries`.
    #[tokio::test]
    async fn the_cache_stays_within_max_bytes_with_large_tokens() {
        const MAX_BYTES: u64 = 1 << 20;
        let issuer = DevIssuer::generate("k1");
        let (auth, _) = ready_authenticator(&issuer, &format!("max_entries = 10000\nmax_bytes = {MAX_BYTES}")).await;
        let mut claims = entra_claims("mfa", 600);
        let mut weights = Vec::new();
        for i in 0..300 {
            // About 8 KiB each: 300 of them weigh over twice the bound.
            claims["pad"] = serde_json::Value::from(format!("{i:06}{}", "x".repeat(6000)));
            let token = issuer.mint(&claims);
            check(&auth, &token).await.unwrap();
            weights.push(check(&auth, &token).await.unwrap().weight());
        }
        auth.cache.run_pending_tasks();
        assert!(weights.iter().all(|w| *w > 8000), "each entry weighs its token: {:?}", &weights[..3]);
        assert!(weights.iter().sum::<usize>() as u64 > 2 * MAX_BYTES);
        assert!(auth.cache.weighted_size() <= MAX_BYTES, "{} bytes cached", auth.cache.weighted_size());
        assert!(auth.cache.entry_count() < 300 && auth.cache.entry_count() > 0, "{}", auth.cache.entry_count());
    }
}
