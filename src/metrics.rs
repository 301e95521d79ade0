//! The registry and its text rendering, and the small helpers every metric family uses. Each
//! family is registered by the module that owns it (`request_end`, `auth::metrics`, `listener`,
//! `proxy`, `headers`, `report`, `tunnel`, `reload`); this module knows none of them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// A registry holding `mfa_gateway_build_info` and the `process_*` families (CPU, resident
/// memory, open descriptors and their limit, start time); the gateway's own are added by their
/// owners.
pub(crate) fn registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("process_* names are unique");
    let build = register(
        &registry,
        IntGaugeVec::new(Opts::new("mfa_gateway_build_info", "Build information; always 1."), &["version"]).unwrap(),
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry
}

/// Registers `c` and returns it. Names are fixed in the source, so a clash is a bug.
pub(crate) fn register<C: prometheus::core::Collector + Clone + 'static>(reg: &Registry, c: C) -> C {
    reg.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

pub(crate) fn counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    register(reg, IntCounter::new(name, help).unwrap())
}

pub(crate) fn counter_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(reg, IntCounterVec::new(Opts::new(name, help), labels).unwrap())
}

pub(crate) fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    register(reg, IntGauge::new(name, help).unwrap())
}

/// A latency histogram with buckets from 25 µs to 10 s: resolves the gateway's own microseconds
/// and slow upstreams alike.
pub(crate) fn latency(reg: &Registry, name: &str, help: &str) -> Histogram {
    let buckets = vec![
        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5, 5.0, 10.0,
    ];
    register(reg, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).unwrap())
}

/// Counters for a fixed set of values of one label, resolved once; unknown values are ignored.
pub(crate) struct KindCounters {
    kinds: &'static [&'static str],
    handles: Vec<IntCounter>,
}

impl KindCounters {
    /// A family labelled `kind`.
    pub(crate) fn new(reg: &Registry, name: &str, help: &str, kinds: &'static [&'static str]) -> Self {
        Self::labelled(reg, name, help, "kind", kinds)
    }

    pub(crate) fn labelled(
        reg: &Registry,
        name: &str,
        help: &str,
        label: &str,
        kinds: &'static [&'static str],
    ) -> Self {
        let vec = counter_vec(reg, name, help, &[label]);
        Self { kinds, handles: kinds.iter().map(|k| vec.with_label_values(&[k])).collect() }
    }

    pub(crate) fn inc(&self, kind: &str) {
        if let Some(i) = self.kinds.iter().position(|k| *k == kind) {
            self.handles[i].inc();
        }
    }
}

/// The Prometheus text exposition.
pub(crate) fn render(reg: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    let _ = TextEncoder::new().encode(&reg.gather(), &mut out);
    out
}
