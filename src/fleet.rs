//! `mfa-gateway report --prometheus URL`: the status report across every replica, read from the
//! counters Prometheus already scrapes (`increase` over the window, which also bridges the
//! counter resets of restarts), in the shape of `/report`: text, JSON or the same HTML page.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::report::{summarize, Counts, StatusReport, FLEET_SCOPE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Html,
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
}

/// One series of an instant vector: its labels and value.
#[derive(Deserialize)]
struct Sample {
    metric: HashMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct ApiAnswer {
    status: String,
    data: Option<Data>,
    error: Option<String>,
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
    let whole = |v: f64| if v.is_finite() && v > 0.0 { v.round() as u64 } else { 0 };
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
    }
}

/// The scrape job the gateways are under: the alerts (`config/prometheus/rules.yml`) and the
/// kustomize ServiceMonitor use the same name.
pub const DEFAULT_JOB: &str = "mfa-gateway";

/// A job name that can stand in a PromQL label matcher as it is.
pub fn valid_job(job: &str) -> bool {
    !job.is_empty() && !job.contains(['"', '\\', '\n'])
}

/// Asks Prometheus at `base` for both counters' increase over `window`, for the gateways of `job`.
pub async fn fetch(base: &str, job: &str, window: &str, now: i64) -> Result<StatusReport, FleetError> {
    let tls = crate::tls::client_config(None, None)?;
    let client = crate::fetch::client(tls, Some(Duration::from_secs(5)));
    let increase = |by: &str, family: &str| format!("sum by ({by}) (increase({family}{{job=\"{job}\"}}[{window}]))");
    let app = |s: &Sample| s.metric.get("app").cloned().unwrap_or_default();
    let user = query(&client, base, &increase("app, mfa", "mfa_gateway_app_user_requests_total")).await?;
    let user: Vec<_> =
        user.iter().map(|s| (app(s), s.metric.get("mfa").is_some_and(|m| m == "true"), value(s))).collect();
    let only = query(&client, base, &increase("app", "mfa_gateway_app_only_requests_total")).await?;
    let only: Vec<_> = only.iter().map(|s| (app(s), value(s))).collect();
    Ok(build(&user, &only, window, now))
}

fn value(s: &Sample) -> f64 {
    s.value.1.parse().unwrap_or(0.0)
}

/// The path and query of Prometheus's instant query API for `promql`, percent-encoded.
pub fn query_path(promql: &str) -> String {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/api/v1/query?query={encoded}")
}

async fn query(client: &crate::fetch::Client, base: &str, promql: &str) -> Result<Vec<Sample>, FleetError> {
    let url = format!("{}{}", base.trim_end_matches('/'), query_path(promql));
    let uri: http::Uri = url.parse().map_err(|source| FleetError::Url { base: base.into(), source })?;
    // Prometheus answers errors (a bad query, say) with a JSON body too, so any status is read.
    let (status, body) = crate::fetch::get(client, &uri, 16 * 1024 * 1024, Duration::from_secs(30))
        .await
        .map_err(|source| FleetError::Unreachable { base: base.into(), source })?;
    let answer = |why: String| FleetError::Answer { base: base.into(), status, why };
    let parsed: ApiAnswer = serde_json::from_slice(&body).map_err(|_| answer("not a Prometheus API answer".into()))?;
    if parsed.status != "success" {
        return Err(answer(parsed.error.unwrap_or_else(|| "no error given".into())));
    }
    let answer = parsed;
    Ok(answer.data.map(|d| d.result).unwrap_or_default())
}

/// The report as a terminal table.
pub fn text(s: &StatusReport) -> String {
    let pct = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1} %", r * 100.0));
    let mut out = format!(
        "MFA status report, {}, last {}, generated {}\nApp+User MFA ratio: {}\nApp+User with MFA {}, without MFA {}, app-only {}\n",
        s.scope,
        s.window.as_deref().unwrap_or("?"),
        crate::report_page::utc(s.generated_at),
        match s.app_user_mfa_ratio {
            Some(r) => format!("{:.1} %", r * 100.0),
            None => "no App+User requests in the window (not a 0 % ratio)".to_string(),
        },
        s.totals.app_user_with_mfa,
        s.totals.app_user_without_mfa,
        s.totals.app_only,
    );
    if s.applications.is_empty() {
        out.push_str("No requests in the window.\n");
        return out;
    }
    let width = s.applications.iter().map(|a| a.app.len()).max().unwrap_or(0).max(11);
    out.push_str(&format!(
        "\n{:<width$}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}\n",
        "application", "ratio", "requests", "with", "without", "app-only"
    ));
    for a in &s.applications {
        out.push_str(&format!(
            "{:<width$}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}\n",
            a.app,
            pct(a.app_user_mfa_ratio),
            a.requests,
            a.with_mfa,
            a.without_mfa,
            a.app_only
        ));
    }
    out
}

/// The report in the asked format.
pub fn render(s: &StatusReport, format: Format) -> String {
    match format {
        Format::Text => text(s),
        Format::Json => serde_json::to_string_pretty(s).unwrap_or_default() + "\n",
        Format::Html => crate::report_page::render(s),
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
        assert_eq!(s.totals, Counts { app_user_with_mfa: 2, app_user_without_mfa: 3, app_only: 5 });
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
