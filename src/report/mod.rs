//! The MFA status report, live, for this instance: over a sliding window of day buckets, the
//! App+User MFA ratio (app-only requests excluded), a per-application summary, the most recent
//! App+User requests without MFA, and the users seen without MFA. In memory and bounded;
//! Prometheus (`rules.yml`) is the view across replicas.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::auth::policy::TokenKind;
use crate::ratios::OTHER_APP;

mod status;

pub(crate) use status::rfc3339;
pub use status::{
    summarize, ApartUsers, AppSummary, Counts, DayRatio, LeftOut, Recent, Replica, ReplicaState, StatusReport,
    UserIdsShown, UserSeen, WouldRefuse, FLEET_SCOPE,
};

/// Partner Center caps its download of recent requests at 10 000 rows: the tables' default
/// length on an instance, and where the fleet report cuts its merged tables.
pub const MAX_ROWS: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    pub window_days: u32,
    pub max_recent: usize,
    pub max_users: usize,
    /// Distinct applications tracked per day; the rest count as `other`.
    pub max_apps: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { window_days: 7, max_recent: MAX_ROWS, max_users: MAX_ROWS, max_apps: 1_000 }
    }
}

/// One verified request, as the report sees it. User fields arrive already hashed or dropped
/// when the deployment asks for that.
pub struct Observation<'a> {
    pub unix_secs: i64,
    pub route: &'a str,
    pub kind: TokenKind,
    pub mfa: bool,
    pub app: &'a str,
    pub user: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// The token was bound to the client (DPoP or a client certificate).
    pub bound: bool,
}

struct Day {
    day: i64,
    apps: HashMap<String, Counts>,
    /// Report-only routes: (route, app, reason) -> requests their rules would have refused.
    would_refuse: HashMap<(String, String, &'static str), u64>,
}

impl Day {
    fn new(day: i64) -> Self {
        Self { day, apps: HashMap::new(), would_refuse: HashMap::new() }
    }
}

struct State {
    days: VecDeque<Day>,
    recent: VecDeque<Recent>,
    users: Users,
}

/// Users seen without MFA, each with when it was last seen and how often. Full, the table
/// forgets the user seen longest ago; a queue ordered by last touch finds that user in
/// O(log n), so a flood of new users costs no more per request than a known one.
#[derive(Default)]
struct Users {
    by_name: HashMap<Arc<str>, UserSeenAt>,
    /// Touch sequence -> user; the first entry is the least recently seen.
    order: BTreeMap<u64, Arc<str>>,
    next: u64,
}

struct UserSeenAt {
    last_seen: i64,
    requests: u64,
    touch: u64,
}

impl Users {
    fn seen(&mut self, user: &str, at: i64, cap: usize) {
        let touch = self.next;
        self.next += 1;
        if let Some(u) = self.by_name.get_mut(user) {
            let name = self.order.remove(&u.touch).expect("every user has its place in the order");
            self.order.insert(touch, name);
            u.last_seen = at;
            u.requests += 1;
            u.touch = touch;
            return;
        }
        if cap == 0 {
            return;
        }
        if self.by_name.len() >= cap {
            if let Some((_, stale)) = self.order.pop_first() {
                self.by_name.remove(&stale);
            }
        }
        let name: Arc<str> = Arc::from(user);
        self.order.insert(touch, name.clone());
        self.by_name.insert(name, UserSeenAt { last_seen: at, requests: 1, touch });
    }
}

pub struct Report {
    cfg: ReportConfig,
    state: Mutex<State>,
}

impl Report {
    pub fn new(cfg: ReportConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State { days: VecDeque::new(), recent: VecDeque::new(), users: Users::default() }),
        }
    }

    /// The day bucket for `unix_secs`, opening it (and closing days past the window) as needed.
    /// A clock step backwards lands in the newest bucket rather than reopening an old one.
    fn bucket<'s>(&self, s: &'s mut State, unix_secs: i64) -> &'s mut Day {
        let day = unix_secs.div_euclid(86_400);
        if s.days.back().is_none_or(|d| d.day < day) {
            s.days.push_back(Day::new(day));
        }
        let oldest = day - i64::from(self.cfg.window_days) + 1;
        while s.days.front().is_some_and(|d| d.day < oldest) {
            s.days.pop_front();
        }
        s.days.back_mut().expect("pushed above")
    }

    /// A request a report-only route forwarded although `reason` would have refused it.
    pub fn would_refuse(&self, unix_secs: i64, route: &str, app: &str, reason: &'static str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let max_apps = self.cfg.max_apps;
        let bucket = self.bucket(&mut s, unix_secs);
        let key = (route.to_string(), app.to_string(), reason);
        if let Some(n) = bucket.would_refuse.get_mut(&key) {
            *n += 1;
            return;
        }
        // Bounded like the per-app counts: past max_apps entries, new apps count as "other".
        let key = if bucket.would_refuse.len() < max_apps { key } else { (key.0, OTHER_APP.to_string(), reason) };
        *bucket.would_refuse.entry(key).or_default() += 1;
    }

    pub fn record(&self, o: &Observation<'_>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = self.bucket(&mut s, o.unix_secs);
        let counts = if let Some(c) = bucket.apps.get_mut(o.app) {
            c
        } else {
            let key = if bucket.apps.len() < self.cfg.max_apps { o.app } else { OTHER_APP };
            bucket.apps.entry(key.to_string()).or_default()
        };
        match (o.kind, o.mfa) {
            (TokenKind::AppOnly, _) => counts.app_only += 1,
            (TokenKind::AppUser, true) => counts.app_user_with_mfa += 1,
            (TokenKind::AppUser, false) => counts.app_user_without_mfa += 1,
        }
        if o.kind == TokenKind::AppUser {
            counts.app_user_bound = Some(counts.app_user_bound.unwrap_or(0) + u64::from(o.bound));
        }
        if o.kind == TokenKind::AppUser && !o.mfa {
            if self.cfg.max_recent > 0 {
                if s.recent.len() == self.cfg.max_recent {
                    s.recent.pop_back();
                }
                s.recent.push_front(Recent {
                    time: o.unix_secs,
                    route: o.route.to_string(),
                    app: o.app.to_string(),
                    user: o.user.map(str::to_string),
                    tenant: o.tenant.map(str::to_string),
                    replica: None,
                });
            }
            if let Some(user) = o.user {
                s.users.seen(user, o.unix_secs, self.cfg.max_users);
            }
        }
    }

    pub fn snapshot(&self, now: i64) -> StatusReport {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = now.div_euclid(86_400) - i64::from(self.cfg.window_days) + 1;
        let mut per_app: HashMap<&str, Counts> = HashMap::new();
        for d in s.days.iter().filter(|d| d.day >= oldest) {
            for (app, c) in &d.apps {
                per_app.entry(app).or_default().add(c);
            }
        }
        let (totals, mut applications) = summarize(per_app.into_iter().map(|(app, c)| (app.to_string(), c)));
        applications.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.app.cmp(&b.app)));
        let window_start = oldest * 86_400;
        let recent_without_mfa = s.recent.iter().take_while(|r| r.time >= window_start).cloned().collect();
        let mut users_without_mfa: Vec<UserSeen> = s
            .users
            .by_name
            .iter()
            .filter(|(_, v)| v.last_seen >= window_start)
            .map(|(u, v)| UserSeen {
                user: u.to_string(),
                last_seen: v.last_seen,
                requests_without_mfa: v.requests,
                replicas: Vec::new(),
            })
            .collect();
        users_without_mfa.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.user.cmp(&b.user)));
        let mut would: HashMap<(&str, &str, &'static str), u64> = HashMap::new();
        for d in s.days.iter().filter(|d| d.day >= oldest) {
            for ((route, app, reason), n) in &d.would_refuse {
                *would.entry((route, app, reason)).or_default() += n;
            }
        }
        let mut would_refuse: Vec<WouldRefuse> = would
            .into_iter()
            .map(|((route, app, reason), requests)| WouldRefuse {
                route: route.to_string(),
                app: app.to_string(),
                reason,
                requests,
            })
            .collect();
        would_refuse.sort_by(|a, b| {
            b.requests.cmp(&a.requests).then_with(|| (&a.route, &a.app, a.reason).cmp(&(&b.route, &b.app, b.reason)))
        });
        let days = (oldest..=now.div_euclid(86_400))
            .map(|day| {
                let mut c = Counts::default();
                for counts in s.days.iter().filter(|d| d.day == day).flat_map(|d| d.apps.values()) {
                    c.add(counts);
                }
                DayRatio::new(day * 86_400, &c)
            })
            .collect();
        StatusReport {
            scope: "this instance; use the Prometheus recording rules for all replicas",
            instance: None,
            user_ids: None,
            window_days: Some(self.cfg.window_days),
            window: None,
            generated_at: now,
            totals,
            app_user_mfa_ratio: totals.ratio(),
            applications,
            recent_without_mfa,
            users_without_mfa,
            would_refuse,
            days,
            replicas: None,
            apart: Vec::new(),
            left_out: LeftOut::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(t: i64, kind: TokenKind, mfa: bool, app: &'static str, user: Option<&'static str>) -> Observation<'static> {
        Observation { unix_secs: t, route: "offers", kind, mfa, app, user, tenant: Some("t"), bound: false }
    }

    #[test]
    fn the_status_report_worked_example_is_40_percent() {
        let r = Report::new(ReportConfig::default());
        let t = 1_700_000_000;
        for i in 0..3 {
            r.record(&obs(t + i, TokenKind::AppUser, false, "portal", Some("u1")));
        }
        for i in 0..5 {
            r.record(&obs(t + i, TokenKind::AppOnly, false, "daemon", None));
        }
        for i in 0..2 {
            r.record(&obs(t + i, TokenKind::AppUser, true, "portal", Some("u2")));
        }
        let s = r.snapshot(t + 10);
        assert_eq!(s.app_user_mfa_ratio, Some(0.4));
        assert_eq!(
            s.totals,
            Counts { app_user_with_mfa: 2, app_user_without_mfa: 3, app_only: 5, app_user_bound: Some(0) }
        );
        assert_eq!(s.applications[0].app, "daemon");
        assert_eq!(s.applications[1].app_user_mfa_ratio, Some(0.4));
        assert_eq!(s.recent_without_mfa.len(), 3);
        assert_eq!(s.users_without_mfa.len(), 1);
        assert_eq!(s.users_without_mfa[0].requests_without_mfa, 3);
    }

    #[test]
    fn old_days_leave_the_window() {
        let r = Report::new(ReportConfig { window_days: 7, ..ReportConfig::default() });
        let day = 86_400;
        let t = 1_700_000_000 - 1_700_000_000 % day;
        r.record(&obs(t, TokenKind::AppUser, false, "a", Some("old")));
        assert_eq!(
            r.snapshot(t + 6 * day).totals.app_user_without_mfa,
            1,
            "day 0 is inside the window ending on day 6"
        );
        r.record(&obs(t + 7 * day, TokenKind::AppUser, true, "a", Some("new")));
        let s = r.snapshot(t + 7 * day);
        assert_eq!(s.totals.app_user_without_mfa, 0, "day 0 is outside a 7-day window ending on day 7");
        assert_eq!(s.app_user_mfa_ratio, Some(1.0));
        assert!(s.recent_without_mfa.is_empty() && s.users_without_mfa.is_empty());
    }

    #[test]
    fn caps_hold() {
        let r = Report::new(ReportConfig { window_days: 7, max_recent: 5, max_users: 3, max_apps: 2 });
        let t = 1_700_000_000;
        let users = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9"];
        let apps = ["a0", "a1", "a2", "a3"];
        for (i, u) in users.iter().enumerate() {
            r.record(&obs(t + i as i64, TokenKind::AppUser, false, apps[i % 4], Some(u)));
        }
        let s = r.snapshot(t + 100);
        assert_eq!(s.recent_without_mfa.len(), 5);
        assert_eq!(s.recent_without_mfa[0].user.as_deref(), Some("u9"), "newest first");
        let kept: Vec<&str> = s.users_without_mfa.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(kept, ["u9", "u8", "u7"], "the users seen last are kept");
        let names: Vec<&str> = s.applications.iter().map(|a| a.app.as_str()).collect();
        assert_eq!(names.len(), 3, "two apps and other: {names:?}");
        assert!(names.contains(&"other"));
        assert_eq!(s.totals.app_user_without_mfa, 10, "nothing lost to the caps");
    }

    #[test]
    fn would_refuse_is_kept_per_route_app_and_reason_in_the_window() {
        let r = Report::new(ReportConfig { window_days: 2, ..ReportConfig::default() });
        let day = 86_400;
        let t = 1_700_000_000 - 1_700_000_000 % day;
        r.would_refuse(t, "customers", "portal", "mfa_required");
        r.would_refuse(t + day, "customers", "portal", "mfa_required");
        r.would_refuse(t + day, "customers", "daemon", "app_only_not_allowed");
        r.would_refuse(t + day, "customers", "portal", "mfa_required");
        let w = |route: &str, app: &str, reason: &'static str, requests| WouldRefuse {
            route: route.into(),
            app: app.into(),
            reason,
            requests,
        };
        assert_eq!(
            r.snapshot(t + day).would_refuse,
            [w("customers", "portal", "mfa_required", 3), w("customers", "daemon", "app_only_not_allowed", 1)]
        );
        assert_eq!(
            r.snapshot(t + 2 * day).would_refuse,
            [w("customers", "portal", "mfa_required", 2), w("customers", "daemon", "app_only_not_allowed", 1)],
            "day 0 left the two-day window"
        );
    }

    #[test]
    fn a_full_user_table_forgets_the_user_seen_longest_ago() {
        let r = Report::new(ReportConfig { max_users: 2, ..ReportConfig::default() });
        let t = 1_700_000_000;
        for (i, u) in ["u1", "u2", "u1", "u3"].into_iter().enumerate() {
            r.record(&obs(t + i as i64, TokenKind::AppUser, false, "a", Some(u)));
        }
        let s = r.snapshot(t + 10);
        let kept: Vec<(&str, u64)> =
            s.users_without_mfa.iter().map(|u| (u.user.as_str(), u.requests_without_mfa)).collect();
        assert_eq!(kept, [("u3", 1), ("u1", 2)], "u2 was seen longest ago; u1 was seen again after it");
    }
}
