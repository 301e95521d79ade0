//! `mfa-gateway report --prometheus URL`: the status report across every replica. The ratio and
//! its trend come from the counters Prometheus already scrapes (`increase` over the window, which
//! also bridges the counter resets of restarts); the users and recent requests without MFA come
//! from each replica's `/report`, at the address Prometheus scrapes it, merged. In the shape of
//! `/report`: text, JSON, the same HTML page, or its CSV tables.

mod merge;
mod prometheus;
mod replicas;
mod text;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use prometheus::query_path;
pub use text::text;

use crate::report::{summarize, Counts, DayRatio, Replica, ReplicaState, StatusReport, FLEET_SCOPE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Html,
    /// The users without MFA, as `/report/users.csv`.
    UsersCsv,
    /// The recent requests without MFA, as `/report/recent.csv`.
    RecentCsv,
}

/// Why Prometheus could not be asked, or did not answer as its API does (`report` exits 69).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("bad Prometheus URL {base:?}")]
    Url { base: String, source: http::uri::InvalidUri },
    #[error("cannot query Prometheus at {base}")]
    Unreachable { base: String, source: crate::fetch::FetchError },
    #[error("cannot query Prometheus at {base}: HTTP {status}, {why}")]
    Answer { base: String, status: http::StatusCode, why: String },
    #[error("no TLS client")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the report secret cannot be sent as a header value")]
    Secret,
}

/// What the fleet report is asked.
pub struct Ask<'a> {
    /// Prometheus's base URL.
    pub prometheus: &'a str,
    /// The scrape job of the gateways.
    pub job: &'a str,
    /// A Prometheus duration.
    pub window: &'a str,
    pub now: i64,
    /// The replicas' `[report]` secret: with it, their user tables are read and merged.
    pub report_secret: Option<&'a str>,
    /// Trusted beside the platform's roots, for Prometheus and the replicas.
    pub ca_file: Option<&'a Path>,
    /// Send the report secret over https only.
    pub require_https: bool,
}

/// A Prometheus duration: digits and a unit (`ms`, `s`, `m`, `h`, `d`, `w`, `y`), one or more.
pub fn valid_window(w: &str) -> bool {
    let mut rest = w;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"].into_iter().find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// Pure: the query results -> the report. `increase` extrapolates to the window's edges, so
/// each count is rounded to whole requests.
pub fn build(app_user: &[(String, bool, f64)], app_only: &[(String, f64)], window: &str, now: i64) -> StatusReport {
    let mut per_app: HashMap<String, Counts> = HashMap::new();
    for (app, mfa, v) in app_user {
        let c = per_app.entry(app.clone()).or_default();
        if *mfa {
            c.app_user_with_mfa += whole(*v);
        } else {
            c.app_user_without_mfa += whole(*v);
        }
    }
    for (app, v) in app_only {
        per_app.entry(app.clone()).or_default().app_only += whole(*v);
    }
    // Applications with nothing in the window (series kept at zero) are not listed.
    let (totals, mut applications) = summarize(per_app.into_iter().filter(|(_, c)| *c != Counts::default()));
    // The worst first: lowest App+User MFA ratio, then the most requests; app-only ones last.
    applications.sort_by(|a, b| {
        let key = |r: Option<f64>| r.unwrap_or(f64::INFINITY);
        key(a.app_user_mfa_ratio)
            .total_cmp(&key(b.app_user_mfa_ratio))
            .then_with(|| b.requests.cmp(&a.requests))
            .then_with(|| a.app.cmp(&b.app))
    });
    StatusReport {
        scope: FLEET_SCOPE,
        window_days: window.strip_suffix('d').and_then(|d| d.parse().ok()),
        window: Some(window.to_string()),
        generated_at: now,
        totals,
        app_user_mfa_ratio: totals.ratio(),
        applications,
        recent_without_mfa: Vec::new(),
        users_without_mfa: Vec::new(),
        would_refuse: Vec::new(),
        days: Vec::new(),
        instance: None,
        user_ids: None,
        replicas: None,
        apart: Vec::new(),
        left_out: Default::default(),
    }
}

/// The scrape job the gateways are under: the alerts (`config/prometheus/rules.yml`) and the
/// kustomize ServiceMonitor use the same name.
pub const DEFAULT_JOB: &str = "mfa-gateway";

/// A job name that can stand in a PromQL label matcher as it is.
pub fn valid_job(job: &str) -> bool {
    !job.is_empty() && !job.contains(['"', '\\', '\n'])
}

/// Asks Prometheus for both counters' increase over the window and the ratio per day, and, given
/// the report secret, every replica of the job for its user tables.
pub async fn fetch(ask: &Ask<'_>) -> Result<StatusReport, FleetError> {
    let tls = crate::tls::client_config(ask.ca_file, None)?;
    let client = crate::fetch::client(tls, Some(Duration::from_secs(5)));
    let api = prometheus::Api { client: &client, base: ask.prometheus };
    let (job, window) = (ask.job, ask.window);
    let increase = |by: &str, family: &str| format!("sum by ({by}) (increase({family}{{job=\"{job}\"}}[{window}]))");
    let app = |s: &prometheus::Sample| s.metric.get("app").cloned().unwrap_or_default();
    let user = api.instant(&increase("app, mfa", "mfa_gateway_app_user_requests_total")).await?;
    let user: Vec<_> =
        user.iter().map(|s| (app(s), s.metric.get("mfa").is_some_and(|m| m == "true"), s.value())).collect();
    let only = api.instant(&increase("app", "mfa_gateway_app_only_requests_total")).await?;
    let only: Vec<_> = only.iter().map(|s| (app(s), s.value())).collect();
    let mut report = build(&user, &only, window, ask.now);
    if let Some(days) = report.window_days {
        report.days = per_day(&api, job, days, ask.now).await?;
    }
    if let Some(secret) = ask.report_secret {
        let authorization = http::HeaderValue::try_from(format!("Bearer {secret}")).map_err(|_| FleetError::Secret)?;
        let targets = api.targets(job).await?;
        let asking =
            Arc::new(replicas::Asking { client: client.clone(), authorization, require_https: ask.require_https });
        add_tables(&mut report, replicas::read_all(asking, targets).await);
    }
    Ok(report)
}

/// The App+User MFA ratio of each of the last `days` UTC days (today so far last), from
/// `increase` over one day evaluated at each day's end.
async fn per_day(api: &prometheus::Api<'_>, job: &str, days: u32, now: i64) -> Result<Vec<DayRatio>, FleetError> {
    const DAY: i64 = 86_400;
    let today = now.div_euclid(DAY);
    let first = today - i64::from(days) + 1;
    let promql = format!("sum by (mfa) (increase(mfa_gateway_app_user_requests_total{{job=\"{job}\"}}[1d]))");
    let series = api.range(&promql, (first + 1) * DAY, (today + 1) * DAY, DAY).await?;
    let mut counts: Vec<Counts> = vec![Counts::default(); days as usize];
    for s in &series {
        let mfa = s.metric.get("mfa").is_some_and(|m| m == "true");
        for (t, v) in s.points() {
            let Some(c) = usize::try_from(t.div_euclid(DAY) - 1 - first).ok().and_then(|i| counts.get_mut(i)) else {
                continue;
            };
            if mfa {
                c.app_user_with_mfa += whole(v);
            } else {
                c.app_user_without_mfa += whole(v);
            }
        }
    }
    Ok(counts.iter().zip(first..).map(|(c, day)| DayRatio::new(day * DAY, c)).collect())
}

/// The replicas' reads into the report: the merged tables, the groups kept apart, and every
/// replica with what became of it (those read first, by name; then those not read).
fn add_tables(report: &mut StatusReport, reads: Vec<replicas::Read>) {
    let mut unread = Vec::new();
    let mut readable = Vec::new();
    // A replica goes by its host (pod) name; two that give the same one, by both names.
    let mut names: HashMap<String, usize> = HashMap::new();
    for t in reads.iter().filter_map(|r| r.tables.as_ref().ok()) {
        *names.entry(t.instance.clone().unwrap_or_default()).or_default() += 1;
    }
    for r in reads {
        match r.tables {
            Ok(t) => readable.push(merge::Readable {
                name: match t.instance {
                    Some(host) if names.get(&host) == Some(&1) => host,
                    Some(host) => format!("{host} ({})", r.instance),
                    None => r.instance,
                },
                url: r.url,
                user_ids: t.user_ids,
                users: t.users_without_mfa,
                recent: t.recent_without_mfa,
            }),
            Err(why) => {
                unread.push(Replica { name: r.instance, url: r.url, state: ReplicaState::Unread, reason: Some(why) })
            }
        }
    }
    unread.sort_by(|a, b| a.name.cmp(&b.name));
    let m = merge::merge(readable, crate::report::MAX_ROWS);
    report.user_ids = m.user_ids;
    report.users_without_mfa = m.users;
    report.recent_without_mfa = m.recent;
    report.left_out = m.left_out;
    report.apart = m.apart;
    report.replicas = Some(m.replicas.into_iter().chain(unread).collect());
}

/// How many replicas answered, of how many Prometheus lists; `None` when none were asked.
pub fn answered(s: &StatusReport) -> Option<(usize, usize)> {
    let replicas = s.replicas.as_ref()?;
    Some((replicas.iter().filter(|r| r.state != ReplicaState::Unread).count(), replicas.len()))
}

fn whole(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// The report in the asked format.
pub fn render(s: &StatusReport, format: Format) -> String {
    match format {
        Format::Text => text(s),
        Format::Json => serde_json::to_string_pretty(s).unwrap_or_default() + "\n",
        Format::Html => crate::report_page::render(s),
        Format::UsersCsv => crate::report_csv::users(s),
        Format::RecentCsv => crate::report_csv::recent(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_to_requests_and_the_worst_application_comes_first() {
        let user = [
            ("a".to_string(), true, 2.07),
            ("a".to_string(), false, 0.0),
            ("b".to_string(), false, 3.1),
            ("quiet".to_string(), true, 0.0),
        ];
        let only = [("b".to_string(), 4.96), ("quiet".to_string(), 0.0)];
        let s = build(&user, &only, "7d", 0);
        assert_eq!(
            s.totals,
            Counts { app_user_with_mfa: 2, app_user_without_mfa: 3, app_only: 5, app_user_bound: None }
        );
        assert_eq!(s.app_user_mfa_ratio, Some(0.4));
        let apps: Vec<&str> = s.applications.iter().map(|a| a.app.as_str()).collect();
        assert_eq!(apps, ["b", "a"], "worst first; an application with nothing in the window is left out");
        let t = text(&s);
        assert!(
            t.contains("App+User MFA ratio: 40.0 %") && t.contains("last 7d, generated 1970-01-01 00:00:00 UTC"),
            "{t}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&s, Format::Json)).unwrap();
        assert_eq!(json["totals"]["app_user_without_mfa"], 3);
        assert_eq!(json["applications"][0]["app"], "b");
        assert_eq!((json["window_days"].as_u64(), json["window"].as_str()), (Some(7), Some("7d")));
        // A window of minutes has no whole-days count to give: no `window_days: 0`.
        let json: serde_json::Value =
            serde_json::from_str(&render(&build(&user, &only, "10m", 0), Format::Json)).unwrap();
        assert!(json.get("window_days").is_none() && json["window"] == "10m", "{json}");
    }

    #[test]
    fn no_data_is_not_a_zero_ratio() {
        let s = build(&[], &[], "1h", 0);
        assert_eq!(s.app_user_mfa_ratio, None);
        assert!(text(&s).contains("no App+User requests in the window (not a 0 % ratio)"));
    }

    #[test]
    fn windows_are_prometheus_durations() {
        for w in ["7d", "1h30m", "90s", "1w", "500ms"] {
            assert!(valid_window(w), "{w}");
        }
        for w in ["", "7", "d", "7 d", "7days", "1h]", "-1d"] {
            assert!(!valid_window(w), "{w}");
        }
    }
}
