//! Prometheus's HTTP API, as much as the fleet report asks of it: instant and range queries, and
//! the targets it scrapes for a job.

use std::collections::HashMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::FleetError;
use crate::fetch::Client;

/// What one answer may hold: a week of day buckets per series, or a large fleet's targets.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// One series of an instant vector: its labels and value.
#[derive(Deserialize)]
pub(super) struct Sample {
    pub(super) metric: HashMap<String, String>,
    value: (f64, String),
}

impl Sample {
    pub(super) fn value(&self) -> f64 {
        self.value.1.parse().unwrap_or(0.0)
    }
}

/// One series of a range query: its labels and (time, value) pairs.
#[derive(Deserialize)]
pub(super) struct Series {
    pub(super) metric: HashMap<String, String>,
    values: Vec<(f64, String)>,
}

impl Series {
    pub(super) fn points(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.values.iter().map(|(t, v)| (*t as i64, v.parse().unwrap_or(0.0)))
    }
}

#[derive(Deserialize)]
struct Results<T> {
    result: Vec<T>,
}

/// A target Prometheus scrapes: its labels, the URL it scrapes, and how the last scrape went.
#[derive(Deserialize)]
pub(super) struct Target {
    pub(super) labels: HashMap<String, String>,
    #[serde(rename = "scrapeUrl")]
    pub(super) scrape_url: String,
    #[serde(default)]
    pub(super) health: String,
    #[serde(rename = "lastError", default)]
    pub(super) last_error: String,
}

#[derive(Deserialize)]
struct Targets {
    #[serde(rename = "activeTargets")]
    active: Vec<Target>,
}

#[derive(Deserialize)]
struct ApiAnswer<D> {
    status: String,
    data: Option<D>,
    error: Option<String>,
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The path and query of Prometheus's instant query API for `promql`, percent-encoded.
pub fn query_path(promql: &str) -> String {
    format!("/api/v1/query?query={}", encode(promql))
}

pub(super) struct Api<'a> {
    pub(super) client: &'a Client,
    pub(super) base: &'a str,
}

impl Api<'_> {
    pub(super) async fn instant(&self, promql: &str) -> Result<Vec<Sample>, FleetError> {
        Ok(self.ask::<Results<Sample>>(&query_path(promql)).await?.result)
    }

    /// `promql` at `start`, `start + step`, ... up to `end` (Unix seconds).
    pub(super) async fn range(&self, promql: &str, start: i64, end: i64, step: i64) -> Result<Vec<Series>, FleetError> {
        let path = format!("/api/v1/query_range?query={}&start={start}&end={end}&step={step}", encode(promql));
        Ok(self.ask::<Results<Series>>(&path).await?.result)
    }

    /// The targets Prometheus scrapes now under `job`.
    pub(super) async fn targets(&self, job: &str) -> Result<Vec<Target>, FleetError> {
        let all = self.ask::<Targets>("/api/v1/targets?state=active").await?.active;
        Ok(all.into_iter().filter(|t| t.labels.get("job").is_some_and(|j| j == job)).collect())
    }

    async fn ask<D: DeserializeOwned>(&self, path_and_query: &str) -> Result<D, FleetError> {
        let base = self.base;
        let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
        let uri: http::Uri = url.parse().map_err(|source| FleetError::Url { base: base.into(), source })?;
        // Prometheus answers errors (a bad query, say) with a JSON body too, so any status is read.
        let (status, body) = crate::fetch::get(self.client, &uri, MAX_ANSWER_BYTES, Duration::from_secs(30))
            .await
            .map_err(|source| FleetError::Unreachable { base: base.into(), source })?;
        let answer = |why: String| FleetError::Answer { base: base.into(), status, why };
        let parsed: ApiAnswer<D> =
            serde_json::from_slice(&body).map_err(|_| answer("not a Prometheus API answer".into()))?;
        if parsed.status != "success" {
            return Err(answer(parsed.error.unwrap_or_else(|| "no error given".into())));
        }
        parsed.data.ok_or_else(|| answer("an answer without data".into()))
    }
}
