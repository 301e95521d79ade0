//! The token and key-set metric families, registered by auth because auth is what they count.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::metrics::{counter, counter_vec, gauge, register, KindCounters};

use super::invalid::Invalid;

/// The `kind` label of `step_up_challenges_total` (`routes::StepUp` names).
pub const STEP_UP_KINDS: [&str; 3] = ["partner_center", "rfc9470", "entra_claims"];

pub struct AuthMetrics {
    invalid: Vec<IntCounter>,
    key_fetches: IntCounterVec,
    key_refetches: IntCounterVec,
    keys_held: IntGaugeVec,
    key_set_age: GaugeVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_deferred: IntCounter,
    /// Set at scrape time, as key set ages are.
    pub cache_bytes: IntGauge,
    step_up_challenges: KindCounters,
    dpop_refusals: KindCounters,
    bindings: KindCounters,
}

/// The `binding` label of `token_bindings_total` (`BoundBy` names).
pub const BINDINGS: [&str; 3] = ["bearer", "dpop", "mtls"];

impl AuthMetrics {
    pub fn register(reg: &Registry) -> Self {
        let invalid =
            counter_vec(reg, "mfa_gateway_invalid_tokens_total", "Tokens refused as invalid, by reason.", &["reason"]);
        let cache =
            counter_vec(reg, "mfa_gateway_token_cache_total", "Verified-token cache lookups by result.", &["result"]);
        Self {
            invalid: Invalid::ALL.iter().map(|i| invalid.with_label_values(&[i.reason()])).collect(),
            key_fetches: counter_vec(
                reg,
                "mfa_gateway_key_fetches_total",
                "Key set fetches by issuer and result.",
                &["issuer", "result"],
            ),
            key_refetches: counter_vec(
                reg,
                "mfa_gateway_key_refetches_total",
                "Key set refetches for an unknown kid: ok, error, or limited (held back by refetch_min_interval).",
                &["issuer", "result"],
            ),
            keys_held: register(
                reg,
                IntGaugeVec::new(Opts::new("mfa_gateway_keys_held", "Signing keys held, by issuer."), &["issuer"])
                    .unwrap(),
            ),
            key_set_age: register(
                reg,
                GaugeVec::new(
                    Opts::new(
                        "mfa_gateway_key_set_age_seconds",
                        "Seconds since the issuer's key set was last fetched successfully (absent until the first success).",
                    ),
                    &["issuer"],
                )
                .unwrap(),
            ),
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
            cache_deferred: counter(
                reg,
                "mfa_gateway_token_cache_deferred_total",
                "Verified tokens not cached because this was their first sighting (cached on the next).",
            ),
            cache_bytes: gauge(
                reg,
                "mfa_gateway_token_cache_bytes",
                "What the verified-token cache holds, in bytes (estimated per entry; bounded by [cache] max_bytes).",
            ),
            step_up_challenges: KindCounters::new(
                reg,
                "mfa_gateway_step_up_challenges_total",
                "Refusals for missing or stale MFA, by the challenge sent: partner_center (the mandated 401), \
                 rfc9470, or entra_claims (to clients that handle it).",
                &STEP_UP_KINDS,
            ),
            dpop_refusals: KindCounters::labelled(
                reg,
                "mfa_gateway_binding_refusals_total",
                "Requests refused for their token's binding to the client (a DPoP proof, a client certificate), by reason.",
                "reason",
                &super::dpop::REFUSAL_REASONS,
            ),
            bindings: KindCounters::labelled(
                reg,
                "mfa_gateway_token_bindings_total",
                "Verified tokens by how the request bound them to the client: bearer (not bound), dpop or mtls.",
                "binding",
                &BINDINGS,
            ),
        }
    }

    /// A refusal for a DPoP proof or a token's binding, by its `REFUSAL_REASONS` label.
    pub fn binding_refused(&self, reason: &str) {
        self.dpop_refusals.inc(reason);
    }

    /// A token that passed, by how it was bound (`BINDINGS`).
    pub fn bound(&self, binding: &str) {
        self.bindings.inc(binding);
    }

    pub fn invalid_token(&self, why: Invalid) {
        if let Some(i) = Invalid::ALL.iter().position(|x| *x == why) {
            self.invalid[i].inc();
        }
    }

    pub fn step_up_challenge(&self, kind: &str) {
        self.step_up_challenges.inc(kind);
    }

    /// An issuer's key series, shown at zero before its first fetch.
    pub fn issuer_added(&self, issuer: &str) {
        for result in ["ok", "error"] {
            self.key_fetches.with_label_values(&[issuer, result]);
        }
        for result in ["ok", "error", "limited"] {
            self.key_refetches.with_label_values(&[issuer, result]);
        }
        self.keys_held.with_label_values(&[issuer]);
    }

    /// A reload removed the issuer: its gauges go (its counters stay).
    pub fn issuer_removed(&self, issuer: &str) {
        let _ = self.keys_held.remove_label_values(&[issuer]);
        let _ = self.key_set_age.remove_label_values(&[issuer]);
    }

    pub fn key_fetch(&self, issuer: &str, ok: bool) {
        self.key_fetches.with_label_values(&[issuer, if ok { "ok" } else { "error" }]).inc();
    }

    /// `result`: ok, error or limited.
    pub fn key_refetch(&self, issuer: &str, result: &str) {
        self.key_refetches.with_label_values(&[issuer, result]).inc();
    }

    pub fn keys_held(&self, issuer: &str, count: usize) {
        self.keys_held.with_label_values(&[issuer]).set(count as i64);
    }

    /// Set at scrape time, so a stuck refresher still shows as stale; `None` (never fetched)
    /// shows no sample.
    pub fn key_set_age(&self, issuer: &str, age: Option<f64>) {
        match age {
            Some(age) => self.key_set_age.with_label_values(&[issuer]).set(age),
            None => drop(self.key_set_age.remove_label_values(&[issuer])),
        }
    }
}
