//! Live reload. On SIGHUP, or when the config file or any file it names (certificates, keys, CA
//! bundles) changes, the file is loaded with the same checks as `check`, the settings that cannot
//! change live keep their running values, and the next snapshot is built from the previous one
//! and swapped in. A file that fails leaves the running config serving.
//!
//! Files are polled through their symlinks every second rather than watched with inotify: a
//! Kubernetes ConfigMap is updated by swapping its `..data` symlink, which changes what the path
//! resolves to (device, inode, size, mtime) but leaves an inotify watch on the old file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::auth::jwks::KeyFetchError;
use crate::config::{Config, FileStamp};
use crate::gateway::Gateway;
use crate::snapshot::Snapshot;

const POLL: Duration = Duration::from_secs(1);

/// `mfa_gateway_config_reloads_total{result}`, the last success's time, and whether the last
/// attempt took effect.
pub(crate) struct Reloads {
    ok: IntCounter,
    error: IntCounter,
    last_success: Gauge,
    /// 0 while the files on disk hold a config the gateway refused: it serves an older one.
    last_successful: IntGauge,
}

impl Reloads {
    pub(crate) fn register(registry: &Registry) -> Self {
        let results = IntCounterVec::new(
            Opts::new(
                "mfa_gateway_config_reloads_total",
                "Config reloads by result (error: the old config serves on).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let last_success = Gauge::new(
            "mfa_gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that took effect (start-up included).",
        )
        .expect("valid metric");
        let last_successful = IntGauge::new(
            "mfa_gateway_config_last_reload_successful",
            "1 when the last config load took effect; 0 while a refused one leaves an older config serving.",
        )
        .expect("valid metric");
        registry.register(Box::new(results.clone())).expect("registered once");
        registry.register(Box::new(last_success.clone())).expect("registered once");
        registry.register(Box::new(last_successful.clone())).expect("registered once");
        let me = Self {
            ok: results.with_label_values(&["ok"]),
            error: results.with_label_values(&["error"]),
            last_success,
            last_successful,
        };
        // The start-up load is the first success, though not a reload.
        me.took_effect();
        me
    }

    fn took_effect(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
        self.last_successful.set(1);
    }

    fn succeeded(&self) {
        self.ok.inc();
        self.took_effect();
    }

    fn failed(&self) {
        self.error.inc();
        self.last_successful.set(0);
    }
}

/// Reloads on SIGHUP and on file changes until the task is aborted. Does nothing for a config
/// that did not come from a file (the demo's).
pub(crate) async fn watch(gateway: Arc<Gateway>, reloads: Reloads) {
    let (source, mut watched) = {
        let snap = gateway.snapshot();
        match &snap.config.source {
            Some(s) => (s.clone(), snap.config.files.clone()),
            None => return,
        }
    };
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config changes are picked up from the files only");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a reload refused because a key set did not load: when to try again, and the wait
    // after that.
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let hup_fired = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let retry_due = async {
            match retry {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            _ = tick.tick() => match changed(&watched) {
                Some(path) => format!("{} changed", path.display()),
                None => continue,
            },
            _ = hup_fired => "SIGHUP".to_string(),
            _ = retry_due => "retrying a reload refused for keys that did not load".to_string(),
        };
        let outcome;
        (watched, outcome) = reload(&gateway, &reloads, &source, &why).await;
        retry = match outcome {
            Outcome::KeysNotLoaded => {
                let wait = retry.map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_CAP));
                Some((tokio::time::Instant::now() + wait, wait))
            }
            Outcome::Done => None,
        };
    }
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// How a reload ended, for the retry.
enum Outcome {
    /// In service, or refused for a reason only a new edit can fix.
    Done,
    /// Refused because a new key set did not load: tried again with backoff, since a key server
    /// that comes back fixes it.
    KeysNotLoaded,
}

/// The first watched file whose stamp differs from the one it had when it was read.
fn changed(watched: &[(PathBuf, Option<FileStamp>)]) -> Option<&Path> {
    watched.iter().find(|(p, s)| FileStamp::of(p) != *s).map(|(p, _)| p.as_path())
}

type Watched = Vec<(PathBuf, Option<FileStamp>)>;

/// One reload; returns the files to watch from now on, stamped as they were read.
async fn reload(gateway: &Gateway, reloads: &Reloads, source: &Path, why: &str) -> (Watched, Outcome) {
    let old = gateway.snapshot();
    let restamped = || old.config.files.iter().map(|(p, _)| (p.clone(), FileStamp::of(p))).collect();
    let mut new = match Config::load(source) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(reason = why, file = %e.file, key = %e.key, problem = %e.problem,
                "config reload failed; the previous config keeps serving");
            reloads.failed();
            // Not retried until a file changes again (or SIGHUP): one error line per bad edit.
            return (restamped(), Outcome::Done);
        }
    };
    for key in keep_fixed(&old.config, &mut new) {
        tracing::warn!(key, "this setting cannot change without a restart; the running value is kept");
    }
    let (next, carried) = match gateway.build(new, &old) {
        Ok(built) => built,
        Err(e) => {
            tracing::error!(reason = why, error = %crate::error_chain::describe(&e), "config reload failed; the previous config keeps serving");
            reloads.failed();
            return (restamped(), Outcome::Done);
        }
    };
    // Never put a key set in service that has not loaded: a new issuer, a changed key source or
    // an edited key file is fetched (read) first.
    if let Err((issuer, e)) = warm(&next, &old).await {
        tracing::error!(reason = why, issuer, error = %crate::error_chain::describe(&e),
            "config reload refused: a key set did not load; the previous config keeps serving, and the reload is retried");
        reloads.failed();
        return (restamped(), Outcome::KeysNotLoaded);
    }
    let files = next.config.files.clone();
    let routes = next.config.routes.len();
    // Logged and counted just before the swap, so whoever sees the new behaviour also finds its
    // record.
    tracing::info!(
        reason = why,
        routes,
        token_cache_kept = carried.token_cache,
        key_sets_kept = carried.key_sets_kept,
        key_sets_new = carried.key_sets_new,
        upstream_pool_kept = carried.upstream_pool,
        "config reloaded"
    );
    reloads.succeeded();
    gateway.swap(next);
    (files, Outcome::Done)
}

/// Waits for each key set of `next` that `old` does not have to load; the first that does not
/// is the error, with its issuer.
async fn warm<'n>(next: &'n Snapshot, old: &Snapshot) -> Result<(), (&'n str, KeyFetchError)> {
    let fresh = next.auth.issuers.iter().filter(|k| !old.auth.issuers.iter().any(|o| Arc::ptr_eq(o, k)));
    for keys in fresh {
        keys.load_now().await.map_err(|why| (keys.spec.name.as_str(), why))?;
    }
    Ok(())
}

/// Puts the running values back into `new` for what cannot change live, and names each one that
/// the file tried to change.
fn keep_fixed(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let (o, n) = (&old.server, &mut new.server);
    keep(&mut kept, "server.listen", &o.listen, &mut n.listen);
    keep(&mut kept, "server.workers", &o.workers, &mut n.workers);
    keep(&mut kept, "server.max_connections", &o.max_connections, &mut n.max_connections);
    // Certificates reload; turning TLS on or off changes what the port speaks.
    if o.tls.is_some() != n.tls.is_some() {
        n.tls = o.tls.clone();
        kept.push("server.tls");
    }
    keep(&mut kept, "admin.listen", &old.admin.listen, &mut new.admin.listen);
    keep(&mut kept, "admin.max_connections", &old.admin.max_connections, &mut new.admin.max_connections);
    // The decision listener is bound at start; its front proxy is fixed with it.
    keep(&mut kept, "authz", &old.authz, &mut new.authz);
    // Set once for the process: the log subscriber, the app label set, the report's windows.
    keep(&mut kept, "log", &old.log, &mut new.log);
    keep(&mut kept, "metrics", &old.metrics, &mut new.metrics);
    keep(&mut kept, "report", &old.report, &mut new.report);
    kept
}

/// Restores `old` into `new` when they differ, and names it.
fn keep<T: PartialEq + Clone>(kept: &mut Vec<&'static str>, name: &'static str, old: &T, new: &mut T) {
    if old != new {
        *new = old.clone();
        kept.push(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str, admin: &str, report: &str) -> Config {
        let text = format!(
            "[server]\n{server}\n[admin]\nlisten = \"{admin}\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [report]\n{report}\n[defaults]\nrequire = \"public\"\n"
        );
        Config::parse(&text, "test", None).unwrap()
    }

    #[test]
    fn fixed_settings_keep_their_running_values_and_are_named() {
        let old = config("listen = \"127.0.0.1:8080\"\nworkers = 1", "127.0.0.1:9901", "window_days = 7");
        let mut new = config("listen = \"127.0.0.1:8081\"\nworkers = 2", "127.0.0.1:9902", "window_days = 3");
        assert_eq!(keep_fixed(&old, &mut new), ["server.listen", "server.workers", "admin.listen", "report"]);
        assert_eq!((new.server.listen, new.server.workers), (old.server.listen, 1));
        assert_eq!((new.admin.listen, new.report.window_days), (old.admin.listen, 7));

        // What may change live passes through, and nothing is named.
        let old = config("listen = \"127.0.0.1:8080\"", "127.0.0.1:9901", "");
        let mut new = config("listen = \"127.0.0.1:8080\"\nidle_timeout = \"5s\"", "127.0.0.1:9901", "");
        assert!(keep_fixed(&old, &mut new).is_empty());
        assert_eq!(new.server.idle_timeout, std::time::Duration::from_secs(5));
    }
}
