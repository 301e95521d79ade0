//! Key sets: discovery, fetch, cache, background refresh, refetch on an unknown `kid`.
//!
//! The read path (`lookup`) loads an `ArcSwap` snapshot and takes no lock. Fetches run in their
//! own task: requests that need one wait on a shared `watch` channel, never on a lock, and a
//! fetch outlives any one request that asked for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;

use super::keys::{parse_jwks, Key, Lookup};
use super::metrics::AuthMetrics;
use crate::fetch;

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// OIDC discovery document; its `jwks_uri` names the key set.
    Discovery(http::Uri),
    Jwks(http::Uri),
    File(PathBuf),
}

/// What a key set is: its issuer, where its keys come from, and the CA its fetches trust. A
/// reload keeps a set, keys and all, when its spec is unchanged (and none of its files changed);
/// the timings are not part of it and apply to a kept set as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The configured issuer string: a bounded label, and the name in logs.
    pub name: String,
    pub source: KeySource,
    /// The CA file the fetch client trusts, besides the platform roots.
    pub ca_file: Option<PathBuf>,
}

impl KeySpec {
    /// The files the set is read or fetched with: the CA file, and the key file itself.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        let key_file = match &self.source {
            KeySource::File(p) => Some(p.as_path()),
            _ => None,
        };
        self.ca_file.as_deref().into_iter().chain(key_file)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTiming {
    pub refresh_interval: Duration,
    pub refetch_min_interval: Duration,
    pub max_stale: Duration,
    pub fetch_timeout: Duration,
}

struct Gate {
    /// When the last refetch for an unknown `kid` started. Only those start the rate limit:
    /// start-up and scheduled refreshes do not, so a key first used right after either is
    /// fetched at once.
    last_unknown_kid: Option<Instant>,
    inflight: Option<watch::Receiver<Option<bool>>>,
}

/// Why a key set could not be had. Cloned into the readiness reasons and every waiter, so its
/// sources are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyFetchError {
    #[error("cannot read {}", path.display())]
    File { path: std::path::PathBuf, source: Arc<std::io::Error> },
    #[error(transparent)]
    Get(#[from] Arc<fetch::FetchError>),
    #[error("GET {uri}: HTTP {status}")]
    Status { uri: http::Uri, status: http::StatusCode },
    #[error("discovery document from {uri}")]
    Discovery { uri: http::Uri, source: Arc<serde_json::Error> },
    #[error("discovery jwks_uri {0:?} is not an http(s) URL")]
    JwksUri(String),
    #[error("refused: the discovery document from {uri} names jwks_uri {jwks_uri:?} over plain http")]
    PlainHttpKeys { uri: http::Uri, jwks_uri: String },
    #[error(transparent)]
    Jwks(#[from] Arc<super::keys::JwksError>),
    #[error("no keys within {0:?}")]
    TimedOut(Duration),
}

#[derive(Default)]
struct Health {
    last_success: Option<Instant>,
    last_error: Option<KeyFetchError>,
}

pub struct IssuerKeys {
    pub spec: KeySpec,
    /// Swapped in by a reload that keeps the set; read at each fetch and each refresh.
    timing: ArcSwap<KeyTiming>,
    keys: ArcSwap<Vec<Arc<Key>>>,
    /// Bumped whenever a key leaves the set; cached verifications from an older epoch are void.
    epoch: AtomicU64,
    gate: Mutex<Gate>,
    health: Mutex<Health>,
    client: fetch::Client,
    metrics: Arc<AuthMetrics>,
}

const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

impl IssuerKeys {
    pub fn new(spec: KeySpec, timing: KeyTiming, client: fetch::Client, metrics: Arc<AuthMetrics>) -> Self {
        metrics.issuer_added(&spec.name);
        Self {
            spec,
            timing: ArcSwap::from_pointee(timing),
            keys: ArcSwap::from_pointee(Vec::new()),
            epoch: AtomicU64::new(0),
            gate: Mutex::new(Gate { last_unknown_kid: None, inflight: None }),
            health: Mutex::new(Health::default()),
            client,
            metrics,
        }
    }

    /// The timings a reload that keeps this set gives it, from its next fetch on.
    pub fn retime(&self, timing: &KeyTiming) {
        if **self.timing.load() != *timing {
            self.timing.store(Arc::new(timing.clone()));
        }
    }

    pub fn timing(&self) -> Arc<KeyTiming> {
        self.timing.load_full()
    }

    /// Fetches now (or joins the fetch under way) and waits at most twice `fetch_timeout` (a
    /// discovery document, then the keys): how many keys loaded, or why none. A reload waits on
    /// this before it puts a new set in service; `check --fetch` asks it of every issuer.
    pub async fn load_now(self: &Arc<Self>) -> Result<usize, KeyFetchError> {
        let limit = self.timing().fetch_timeout * 2;
        match tokio::time::timeout(limit, wait_done(self.refresh())).await {
            Ok(true) => Ok(self.keys.load().len()),
            // A failed fetch always leaves its error; `TimedOut` only if another fetch cleared it.
            Ok(false) => Err(self.health.lock().unwrap().last_error.clone().unwrap_or(KeyFetchError::TimedOut(limit))),
            Err(_) => Err(KeyFetchError::TimedOut(limit)),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Seconds since the last successful fetch; `None` before the first.
    pub fn age_secs(&self) -> Option<f64> {
        self.health.lock().unwrap().last_success.map(|t| t.elapsed().as_secs_f64())
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// Why this issuer is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.has_keys() {
            return None;
        }
        let h = self.health.lock().unwrap();
        Some(match &h.last_error {
            Some(e) => format!("issuer {}: no keys: {}", self.spec.name, crate::error_chain::describe(e)),
            None => format!("issuer {}: no keys yet: first fetch in progress", self.spec.name),
        })
    }

    /// Finds the key for a token: by `kid`, restricted to keys that may sign for `iss`.
    pub fn lookup(&self, kid: Option<&str>, iss: &str, tid: Option<&str>) -> Lookup {
        super::keys::pick(&self.keys.load()[..], kid, iss, tid)
    }

    /// Called on an unknown `kid`: fetches the set again, unless the last refetch for an unknown
    /// `kid` started within `refetch_min_interval`; callers that arrive while any fetch runs
    /// share it. Returns whether a fetch completed, so the caller knows a second lookup may
    /// succeed.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>) -> bool {
        let rx = {
            let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            match &gate.inflight {
                Some(rx) => rx.clone(),
                None if gate.last_unknown_kid.is_some_and(|t| t.elapsed() < self.timing().refetch_min_interval) => {
                    drop(gate);
                    tracing::debug!(issuer = %self.spec.name, interval = ?self.timing().refetch_min_interval, "unknown kid: refetch held back by refetch_min_interval");
                    self.metrics.key_refetch(&self.spec.name, "limited");
                    return false;
                }
                None => {
                    gate.last_unknown_kid = Some(Instant::now());
                    self.start_fetch(gate, true)
                }
            }
        };
        wait_done(rx).await
    }

    /// Starts a fetch in its own task (the caller holds the gate and saw none running), so it
    /// outlives any request that asked for it. A refetch is counted before its waiters wake.
    fn start_fetch(
        self: &Arc<Self>,
        mut gate: std::sync::MutexGuard<'_, Gate>,
        refetch: bool,
    ) -> watch::Receiver<Option<bool>> {
        let (tx, rx) = watch::channel(None);
        gate.inflight = Some(rx.clone());
        drop(gate);
        let this = self.clone();
        tokio::spawn(async move {
            // The gate opens however the task ends: a panic in the fetch must not leave every
            // later refetch waiting on a fetch that will never finish.
            let mut open = OpenGate { keys: &this, tx, ok: false };
            open.ok = open.keys.fetch_and_store().await;
            if refetch {
                open.keys.metrics.key_refetch(&open.keys.spec.name, if open.ok { "ok" } else { "error" });
            }
        });
        rx
    }

    /// The background refresh: joins a fetch that is running, or starts one. Never rate-limited.
    fn refresh(self: &Arc<Self>) -> watch::Receiver<Option<bool>> {
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        match &gate.inflight {
            Some(rx) => rx.clone(),
            None => self.start_fetch(gate, false),
        }
    }

    async fn fetch_and_store(&self) -> bool {
        let result = tokio::time::timeout(self.timing().fetch_timeout * 2, self.fetch()).await;
        let result = result.unwrap_or_else(|_| Err(KeyFetchError::TimedOut(self.timing().fetch_timeout * 2)));
        match result {
            Ok(new_keys) => {
                self.store(new_keys);
                let mut h = self.health.lock().unwrap();
                h.last_success = Some(Instant::now());
                h.last_error = None;
                self.metrics.key_fetch(&self.spec.name, true);
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %self.spec.name, error = %crate::error_chain::describe(&e), "key set fetch failed");
                self.metrics.key_fetch(&self.spec.name, false);
                let mut h = self.health.lock().unwrap();
                h.last_error = Some(e);
                let stale = h.last_success.is_some_and(|t| t.elapsed() > self.timing().max_stale);
                drop(h);
                if stale && self.has_keys() {
                    tracing::error!(issuer = %self.spec.name, max_stale = ?self.timing().max_stale, "key set is stale past max_stale; dropping it, tokens of this issuer get 503 until a fetch succeeds");
                    self.keys.store(Arc::new(Vec::new()));
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    self.metrics.keys_held(&self.spec.name, 0);
                }
                false
            }
        }
    }

    /// Swaps in a new set, keeping the `Arc` of keys that did not change, and voids cached
    /// verifications if any key left.
    fn store(&self, new_keys: Vec<Key>) {
        let old = self.keys.load_full();
        let same = |a: &Key, b: &Key| a.kid == b.kid && a.material == b.material && a.alg == b.alg;
        let merged: Vec<Arc<Key>> = new_keys
            .into_iter()
            .map(|k| old.iter().find(|o| same(o, &k)).cloned().unwrap_or_else(|| Arc::new(k)))
            .collect();
        let removed = old.iter().any(|o| !merged.iter().any(|n| Arc::ptr_eq(o, n)));
        let count = merged.len();
        self.keys.store(Arc::new(merged));
        if removed {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.metrics.keys_held(&self.spec.name, count);
        tracing::info!(issuer = %self.spec.name, keys = count, removed, "key set loaded");
    }

    async fn fetch(&self) -> Result<Vec<Key>, KeyFetchError> {
        let body = match &self.spec.source {
            KeySource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|source| KeyFetchError::File { path: path.clone(), source: Arc::new(source) })?
                .into(),
            KeySource::Jwks(uri) => self.get(uri.clone()).await?,
            KeySource::Discovery(uri) => {
                #[derive(serde::Deserialize)]
                struct Discovery {
                    jwks_uri: String,
                }
                let doc = self.get(uri.clone()).await?;
                let d: Discovery = serde_json::from_slice(&doc)
                    .map_err(|source| KeyFetchError::Discovery { uri: uri.clone(), source: Arc::new(source) })?;
                let jwks =
                    d.jwks_uri.parse::<http::Uri>().ok().filter(|j| matches!(j.scheme_str(), Some("http" | "https")));
                let Some(jwks) = jwks else { return Err(KeyFetchError::JwksUri(d.jwks_uri)) };
                // Keys over plain http would void the TLS that fetched the document.
                if uri.scheme_str() == Some("https") && jwks.scheme_str() == Some("http") {
                    return Err(KeyFetchError::PlainHttpKeys { uri: uri.clone(), jwks_uri: d.jwks_uri });
                }
                self.get(jwks).await?
            }
        };
        let parsed = parse_jwks(&body).map_err(Arc::new)?;
        for s in &parsed.skipped {
            tracing::warn!(issuer = %self.spec.name, skipped = %s, "key skipped");
        }
        Ok(parsed.keys)
    }

    async fn get(&self, uri: http::Uri) -> Result<Bytes, KeyFetchError> {
        let (status, body) =
            fetch::get(&self.client, &uri, MAX_DOCUMENT_BYTES, self.timing().fetch_timeout).await.map_err(Arc::new)?;
        if status != http::StatusCode::OK {
            return Err(KeyFetchError::Status { uri, status });
        }
        Ok(body)
    }

    /// Keeps the set fresh: first fetch with backoff until it succeeds, then every
    /// `refresh_interval`; failures retry with backoff while the old set keeps serving. Holds the
    /// set only while it works on it, and ends once no config uses the set any more.
    pub async fn maintain(this: Weak<Self>) {
        let mut backoff = None;
        loop {
            let Some(me) = this.upgrade() else { return };
            let done = me.refresh();
            // Read each round: a reload that keeps the set may have changed them.
            let timing = me.timing();
            drop(me);
            // Retries never wait longer than a normal refresh would.
            let first = Duration::from_millis(250).min(timing.refresh_interval);
            let cap = Duration::from_secs(30).min(timing.refresh_interval);
            if wait_done(done).await {
                backoff = None;
                tokio::time::sleep(timing.refresh_interval).await;
            } else {
                let wait = backoff.map_or(first, |b: Duration| (b * 2).min(cap));
                backoff = Some(wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Ends a fetch: clears the gate's fetch in flight and tells its waiters the result (`false`
/// when the task panicked before setting it), from `Drop` so that it always happens.
struct OpenGate<'a> {
    keys: &'a IssuerKeys,
    tx: watch::Sender<Option<bool>>,
    ok: bool,
}

impl Drop for OpenGate<'_> {
    fn drop(&mut self) {
        self.keys.gate.lock().unwrap_or_else(|p| p.into_inner()).inflight = None;
        let _ = self.tx.send(Some(self.ok));
    }
}

async fn wait_done(mut rx: watch::Receiver<Option<bool>>) -> bool {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::invalid::Invalid;

    const TID: &str = "aaaabbbb-0000-cccc-1111-dddd2222eeee";

    fn issuer_keys() -> IssuerKeys {
        let metrics = Arc::new(AuthMetrics::register(&prometheus::Registry::new()));
        let timing = KeyTiming {
            refresh_interval: Duration::from_secs(3600),
            refetch_min_interval: Duration::from_secs(300),
            max_stale: Duration::from_secs(86400),
            fetch_timeout: Duration::from_secs(5),
        };
        let tls = crate::tls::client_config(None, None).unwrap();
        let spec = KeySpec { name: "i".into(), source: KeySource::File("unused".into()), ca_file: None };
        IssuerKeys::new(spec, timing, fetch::client(tls, None), metrics)
    }

    #[test]
    fn keys_that_name_an_issuer_verify_only_that_issuers_tokens() {
        let keys = issuer_keys();
        let mut scoped = crate::dev::DevIssuer::generate("v2").jwk();
        scoped["issuer"] = "https://login.microsoftonline.com/{tenantid}/v2.0".into();
        let doc = serde_json::json!({"keys": [scoped, crate::dev::DevIssuer::generate("any").jwk()]});
        keys.store(parse_jwks(doc.to_string().as_bytes()).unwrap().keys);
        let v2 = format!("https://login.microsoftonline.com/{TID}/v2.0");
        assert!(matches!(keys.lookup(Some("v2"), &v2, Some(TID)), Lookup::Found(_)));
        let other = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0";
        assert!(matches!(keys.lookup(Some("v2"), other, Some(TID)), Lookup::Invalid(Invalid::UnknownIssuer)));
        assert!(matches!(keys.lookup(Some("any"), other, Some(TID)), Lookup::Found(_)), "unscoped keys serve any");
        assert!(matches!(keys.lookup(None, &v2, Some(TID)), Lookup::Invalid(Invalid::KidRequired)));
        assert!(matches!(keys.lookup(Some("gone"), &v2, Some(TID)), Lookup::Invalid(Invalid::UnknownKid)));
    }

    #[test]
    fn a_key_leaving_the_set_bumps_the_epoch_and_a_republished_one_does_not() {
        let keys = issuer_keys();
        let (a, b) = (crate::dev::DevIssuer::generate("a"), crate::dev::DevIssuer::generate("b"));
        let set = |jwks: Vec<serde_json::Value>| {
            parse_jwks(serde_json::json!({ "keys": jwks }).to_string().as_bytes()).unwrap().keys
        };
        keys.store(set(vec![a.jwk()]));
        let e0 = keys.epoch();
        keys.store(set(vec![a.jwk(), b.jwk()]));
        assert_eq!(keys.epoch(), e0, "adding a key voids nothing");
        keys.store(set(vec![a.jwk(), b.jwk()]));
        assert_eq!(keys.epoch(), e0, "the same set again voids nothing");
        keys.store(set(vec![b.jwk()]));
        assert_eq!(keys.epoch(), e0 + 1, "a removed key voids cached verifications");
    }

    #[tokio::test]
    async fn a_fetch_task_that_panics_still_opens_the_gate() {
        let keys = Arc::new(issuer_keys());
        let (tx, rx) = watch::channel(None);
        keys.gate.lock().unwrap().inflight = Some(rx.clone());
        let task = keys.clone();
        let ended = tokio::spawn(async move {
            let _open = OpenGate { keys: &task, tx, ok: false };
            panic!("a fetch that panics");
        })
        .await;
        assert!(ended.is_err_and(|e| e.is_panic()));
        assert!(keys.gate.lock().unwrap().inflight.is_none(), "the next refetch may start");
        assert!(!wait_done(rx).await, "waiters wake, told the fetch failed");
    }
}
