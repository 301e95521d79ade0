//! The status report as a document: what `/report` answers (JSON, the page, the CSV tables)
//! and what the fleet report reads from each replica and writes back merged.

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub app_user_with_mfa: u64,
    pub app_user_without_mfa: u64,
    pub app_only: u64,
    /// App+User requests whose token was bound to the client (DPoP or certificate): an instance counts them;
    /// the fleet report, read from Prometheus, does not know them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_user_bound: Option<u64>,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        self.app_user_with_mfa += o.app_user_with_mfa;
        self.app_user_without_mfa += o.app_user_without_mfa;
        self.app_only += o.app_only;
        if let Some(b) = o.app_user_bound {
            self.app_user_bound = Some(self.app_user_bound.unwrap_or(0) + b);
        }
    }

    /// with / (with + without); app-only excluded, as the status report defines it.
    pub fn ratio(&self) -> Option<f64> {
        let all = self.app_user_with_mfa + self.app_user_without_mfa;
        (all > 0).then(|| self.app_user_with_mfa as f64 / all as f64)
    }

    /// bound / (with + without): the share of App+User requests whose token was bound.
    pub fn bound_ratio(&self) -> Option<f64> {
        let all = self.app_user_with_mfa + self.app_user_without_mfa;
        self.app_user_bound.filter(|_| all > 0).map(|b| b as f64 / all as f64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recent {
    pub time: i64,
    pub route: String,
    pub app: String,
    pub user: Option<String>,
    pub tenant: Option<String>,
    /// The replica that served it (the fleet report's merged table only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AppSummary {
    pub app: String,
    pub requests: u64,
    pub with_mfa: u64,
    pub without_mfa: u64,
    pub app_only: u64,
    pub app_user_mfa_ratio: Option<f64>,
    /// App+User requests whose token was bound (DPoP or certificate) / all App+User requests; null when there
    /// were none, or in the fleet report (Prometheus does not count them per application).
    pub app_user_bound_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserSeen {
    pub user: String,
    pub last_seen: i64,
    pub requests_without_mfa: u64,
    /// The replicas that saw this user (the fleet report's merged table only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub scope: &'static str,
    /// The instance's host name (a pod's name in Kubernetes), when the report is one instance's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// How the users in this report are shown (`[audit] user_ids`), when it is one instance's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_ids: Option<UserIdsShown>,
    /// Left out when the window is not whole days (a fleet report's `--window 10m`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_days: Option<u32>,
    /// The window as given (the fleet report's `--window`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    pub generated_at: i64,
    pub totals: Counts,
    /// App+User requests with MFA / all App+User requests; null when there were none.
    pub app_user_mfa_ratio: Option<f64>,
    pub applications: Vec<AppSummary>,
    pub recent_without_mfa: Vec<Recent>,
    pub users_without_mfa: Vec<UserSeen>,
    /// What report-only routes let through that enforcing would refuse, per route, app and
    /// reason, most first: what switching a route to `enforce = true` would break.
    pub would_refuse: Vec<WouldRefuse>,
    /// The App+User MFA ratio of each day in the window, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<DayRatio>,
    /// The fleet report's replicas: every target Prometheus lists for the job, and whether its
    /// `/report` was merged, kept apart or could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<Replica>>,
    /// The fleet report's users from replicas that show them otherwise than the merged ones
    /// (another `[audit] user_ids` mode or hash key), one group per way of showing them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apart: Vec<ApartUsers>,
    /// Rows the fleet report's caps left out of its merged tables (users, recent requests).
    #[serde(skip_serializing_if = "LeftOut::is_none")]
    pub left_out: LeftOut,
}

/// One replica of the fleet report, as Prometheus names it, and what became of its `/report`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Replica {
    /// The host (pod) name its report gives, else Prometheus's `instance` label.
    pub name: String,
    /// Where its report was asked.
    pub url: String,
    pub state: ReplicaState,
    /// Why it is apart or unread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Merged,
    Apart,
    Unread,
}

/// Users of replicas that show them alike, merged among themselves but not with the others.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApartUsers {
    pub user_ids: Option<UserIdsShown>,
    pub replicas: Vec<String>,
    pub why: String,
    pub users_without_mfa: Vec<UserSeen>,
    pub recent_without_mfa: Vec<Recent>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LeftOut {
    pub users: usize,
    pub recent: usize,
}

impl LeftOut {
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// `[audit] user_ids` as a report states it: reports whose users can be merged have the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct UserIdsShown {
    /// `plain`, `hash` or `drop`.
    pub mode: String,
    /// Tells hash keys apart (a keyed hash of a fixed text), never the key itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// One day of the window: its App+User requests with and without MFA.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DayRatio {
    /// Unix seconds at 00:00 UTC.
    pub start: i64,
    pub app_user_with_mfa: u64,
    pub app_user_without_mfa: u64,
    /// Null on a day without App+User requests.
    pub app_user_mfa_ratio: Option<f64>,
}

impl DayRatio {
    /// The day starting at `start` (Unix seconds, 00:00 UTC), from its counts.
    pub fn new(start: i64, c: &Counts) -> Self {
        Self {
            start,
            app_user_with_mfa: c.app_user_with_mfa,
            app_user_without_mfa: c.app_user_without_mfa,
            app_user_mfa_ratio: c.ratio(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WouldRefuse {
    pub route: String,
    pub app: String,
    pub reason: &'static str,
    pub requests: u64,
}

/// Unix seconds as RFC 3339 in UTC, to the second: "2026-11-18T11:06:40Z".
pub(crate) fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The scope of the report read from Prometheus (`mfa-gateway report --prometheus`).
pub const FLEET_SCOPE: &str = "every replica Prometheus scrapes";

/// Per-application counts -> the totals and one summary per application (unsorted).
pub fn summarize(per_app: impl Iterator<Item = (String, Counts)>) -> (Counts, Vec<AppSummary>) {
    let mut totals = Counts::default();
    let applications = per_app
        .map(|(app, c)| {
            totals.add(&c);
            AppSummary {
                app,
                requests: c.app_user_with_mfa + c.app_user_without_mfa + c.app_only,
                with_mfa: c.app_user_with_mfa,
                without_mfa: c.app_user_without_mfa,
                app_only: c.app_only,
                app_user_mfa_ratio: c.ratio(),
                app_user_bound_ratio: c.bound_ratio(),
            }
        })
        .collect();
    (totals, applications)
}
