//! The fleet report as a terminal table: the ratio, each day's, the applications, the replicas
//! that were not merged and why, and the first rows of the user tables.

use std::fmt::Write;

use crate::report::{Recent, ReplicaState, StatusReport, UserSeen};
use crate::report_page::{percent_or, utc};

/// Rows of each user table a terminal shows; the other formats carry them all.
const SHOWN_ROWS: usize = 20;

fn pct(r: Option<f64>) -> String {
    percent_or(r, "-")
}

pub fn text(s: &StatusReport) -> String {
    let mut out = format!(
        "MFA status report, {}, last {}, generated {}\nApp+User MFA ratio: {}\nApp+User with MFA {}, without MFA {}, app-only {}\n",
        s.scope,
        s.window.as_deref().unwrap_or("?"),
        utc(s.generated_at),
        percent_or(s.app_user_mfa_ratio, "no App+User requests in the window (not a 0 % ratio)"),
        s.totals.app_user_with_mfa,
        s.totals.app_user_without_mfa,
        s.totals.app_only,
    );
    if !s.days.is_empty() {
        let days: Vec<String> =
            s.days.iter().map(|d| format!("{} {}", &utc(d.start)[5..10], pct(d.app_user_mfa_ratio))).collect();
        let _ = writeln!(out, "Per day (UTC): {}", days.join(", "));
    }
    applications(&mut out, s);
    replicas(&mut out, s);
    if s.replicas.is_some() {
        users(&mut out, "Users without MFA", &s.users_without_mfa);
        recent(&mut out, &s.recent_without_mfa);
        for group in &s.apart {
            let _ = writeln!(out, "\nKept apart ({}): {}", group.replicas.join(", "), group.why);
            users(&mut out, "Their users without MFA", &group.users_without_mfa);
        }
    }
    out
}

fn applications(out: &mut String, s: &StatusReport) {
    if s.applications.is_empty() {
        out.push_str("No requests in the window.\n");
        return;
    }
    let width = s.applications.iter().map(|a| a.app.len()).max().unwrap_or(0).max(11);
    let _ = write!(
        out,
        "\n{:<width$}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}\n",
        "application", "ratio", "requests", "with", "without", "app-only"
    );
    for a in &s.applications {
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}",
            a.app,
            pct(a.app_user_mfa_ratio),
            a.requests,
            a.with_mfa,
            a.without_mfa,
            a.app_only
        );
    }
}

fn replicas(out: &mut String, s: &StatusReport) {
    let (Some(all), Some((read, listed))) = (&s.replicas, super::answered(s)) else {
        out.push_str("\nUsers without MFA: not read (give --report-token-file to merge each replica's /report).\n");
        return;
    };
    let _ = writeln!(out, "\nReplicas: {read} of {listed} answered");
    for r in all.iter().filter(|r| r.state == ReplicaState::Unread) {
        let _ = writeln!(out, "  not read: {} ({}): {}", r.name, r.url, r.reason.as_deref().unwrap_or(""));
    }
}

fn users(out: &mut String, title: &str, users: &[UserSeen]) {
    let _ = writeln!(out, "\n{title}: {}", users.len());
    for u in users.iter().take(SHOWN_ROWS) {
        let _ = writeln!(
            out,
            "  {}  last seen {}  {} requests  on {}",
            u.user,
            utc(u.last_seen),
            u.requests_without_mfa,
            u.replicas.join(", ")
        );
    }
    more(out, users.len());
}

fn recent(out: &mut String, rows: &[Recent]) {
    let _ = writeln!(out, "\nRecent requests without MFA: {}", rows.len());
    for r in rows.iter().take(SHOWN_ROWS) {
        let _ = writeln!(
            out,
            "  {}  {}  {}  {}  on {}",
            utc(r.time),
            r.route,
            r.app,
            r.user.as_deref().unwrap_or("-"),
            r.replica.as_deref().unwrap_or("-")
        );
    }
    more(out, rows.len());
}

fn more(out: &mut String, rows: usize) {
    if rows > SHOWN_ROWS {
        let _ = writeln!(
            out,
            "  ... {} more (--format json, html, users-csv or recent-csv carry them all)",
            rows - SHOWN_ROWS
        );
    }
}
