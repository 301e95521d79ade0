//! Pure: the status report as one self-contained HTML page (inline style, no script, no external
//! fonts or images), for a person to read at a glance: the App+User MFA ratio against the 95 %
//! line, one bar per application, and the requests and users seen without MFA.

use std::fmt::Write;

use crate::report::{LeftOut, Recent, Replica, ReplicaState, StatusReport, UserSeen, FLEET_SCOPE};

/// The share of App+User requests with MFA the page draws its line at.
const TARGET: f64 = 0.95;

/// Text with `&`, `<`, `>`, `"` and `'` escaped: app ids, routes and users come from tokens.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn percent(r: Option<f64>) -> String {
    percent_or(r, "no App+User requests")
}

/// A ratio as a percentage to one decimal, or `none` when there is none to give.
pub(crate) fn percent_or(r: Option<f64>, none: &str) -> String {
    r.map_or_else(|| none.to_string(), |r| format!("{:.1} %", r * 100.0))
}

/// UTC, to the second, from Unix seconds: "2026-11-18 11:06:40 UTC".
pub(crate) fn utc(secs: i64) -> String {
    crate::report::rfc3339(secs).replacen('T', " ", 1).replace('Z', " UTC")
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:2rem;color:#1b1f23;max-width:60rem}\
     h1{font-size:1.3rem;margin:0 0 .2rem} .sub{color:#57606a}\
     .ratio{font-size:4rem;font-weight:700;margin:1rem 0 .3rem}\
     .ok{color:#1a7f37} .low{color:#cf222e} .none{color:#57606a}\
     .bar{position:relative;height:1.1rem;background:#eaeef2;border-radius:3px}\
     .fill{height:100%;border-radius:3px} .fill.ok{background:#2da44e} .fill.low{background:#e5534b}\
     .line{position:absolute;top:-3px;bottom:-3px;left:95%;border-left:2px dashed #1b1f23}\
     table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}\
     th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:middle}\
     td.id{overflow-wrap:anywhere}\
     th{font-weight:600} td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums} td.b{width:35%}";

/// The CSS class of a ratio against the 95 % target.
fn class(ratio: Option<f64>) -> &'static str {
    match ratio {
        Some(r) if r >= TARGET => "ok",
        Some(_) => "low",
        None => "none",
    }
}

/// The page for one instance's `/report`, or the fleet's.
pub(crate) fn render(s: &StatusReport) -> String {
    let mut h = String::with_capacity(8 * 1024);
    headline(&mut h, s);
    trend(&mut h, s);
    applications(&mut h, s);
    would_refuse(&mut h, s);
    if s.scope != FLEET_SCOPE {
        users(&mut h, &s.users_without_mfa, Some("/report/users.csv"));
        recent(&mut h, &s.recent_without_mfa, Some("/report/recent.csv"));
    } else if let Some(all) = &s.replicas {
        replicas(&mut h, s, all);
        users(&mut h, &s.users_without_mfa, None);
        recent(&mut h, &s.recent_without_mfa, None);
        for group in &s.apart {
            let _ = write!(
                h,
                "<h2>Kept apart: {}</h2><p class=\"sub\">{}</p>",
                esc(&group.replicas.join(", ")),
                esc(&group.why)
            );
            users(&mut h, &group.users_without_mfa, None);
            recent(&mut h, &group.recent_without_mfa, None);
        }
    } else {
        // Prometheus holds counters, not users: `--report-token-file` reads each replica's.
        h.push_str(
            "<p class=\"sub\">Users and requests without MFA: not read; give --report-token-file to merge each \
             replica's /report.</p>",
        );
    }
    h.push_str("</body></html>\n");
    h
}

/// The fleet's replicas: how many answered, and each one not merged with why.
fn replicas(h: &mut String, s: &StatusReport, all: &[Replica]) {
    let read = all.iter().filter(|r| r.state != ReplicaState::Unread).count();
    let _ = write!(h, "<h2>Replicas</h2><p class=\"sub\" id=\"answered\">{read} of {} answered.</p>", all.len());
    if s.left_out != LeftOut::default() {
        let _ = write!(
            h,
            "<p class=\"sub\">Cut at {} rows: {} users and {} requests left out.</p>",
            crate::report::MAX_ROWS,
            s.left_out.users,
            s.left_out.recent
        );
    }
    if all.iter().all(|r| r.state == ReplicaState::Merged) {
        return;
    }
    h.push_str("<table><tr><th>replica</th><th>state</th><th>why</th></tr>");
    for r in all.iter().filter(|r| r.state != ReplicaState::Merged) {
        let state = match r.state {
            ReplicaState::Merged => "merged",
            ReplicaState::Apart => "kept apart",
            ReplicaState::Unread => "not read",
        };
        let _ = write!(
            h,
            "<tr><td class=\"id\">{}<br><span class=\"sub\">{}</span></td><td>{state}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(&r.url),
            esc(r.reason.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>");
}

/// Title, the ratio in large type against the 95 % line, and the totals.
fn headline(h: &mut String, s: &StatusReport) {
    let ratio = s.app_user_mfa_ratio;
    let verdict = match ratio {
        Some(r) if r >= TARGET => "at or above 95 %",
        Some(_) => "below 95 %",
        None => "nothing to measure yet",
    };
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>MFA status report</title><style>{STYLE}</style></head><body>\
         <h1>MFA status report</h1><div class=\"sub\" id=\"scope\">{scope}</div>\
         <div class=\"sub\">Last {days}, generated {generated}. App+User requests with MFA over all \
         App+User requests; app-only requests are not counted in the ratio.</div>\
         <div class=\"ratio {class}\" id=\"ratio\">{ratio}</div>\
         <div class=\"bar\" title=\"95 % line\"><div class=\"fill {class}\" style=\"width:{width:.1}%\"></div>\
         <div class=\"line\"></div></div>\
         <p class=\"sub\">{verdict}. With MFA {with}, without MFA {without}, app-only {app_only}.</p>",
        scope = esc(&match (&s.instance, s.scope == FLEET_SCOPE) {
            (_, true) => format!("Fleet: {FLEET_SCOPE}"),
            (Some(name), false) => format!("Instance: {name}"),
            (None, false) => "This instance".to_string(),
        }),
        days = s.window.clone().unwrap_or_else(|| format!("{} days", s.window_days.unwrap_or(0))),
        generated = utc(s.generated_at),
        class = class(ratio),
        ratio = percent(ratio),
        width = ratio.unwrap_or(0.0) * 100.0,
        with = s.totals.app_user_with_mfa,
        without = s.totals.app_user_without_mfa,
        app_only = s.totals.app_only,
    );
}

/// The App+User MFA ratio per day as bars against the 95 % line, each with its number, so the
/// page says the same without the picture.
fn trend(h: &mut String, s: &StatusReport) {
    if s.days.is_empty() {
        return;
    }
    const STEP: usize = 64;
    let width = s.days.len() * STEP;
    let _ = write!(
        h,
        "<h2>App+User MFA ratio per day</h2><svg id=\"trend\" role=\"img\" viewBox=\"0 0 {width} 150\" \
         style=\"width:100%;max-width:{max}px;height:auto\" aria-label=\"App+User MFA ratio per day\">\
         <line x1=\"0\" x2=\"{width}\" y1=\"20\" y2=\"20\" stroke=\"#1b1f23\" stroke-dasharray=\"4 3\"/>\
         <text x=\"2\" y=\"15\" font-size=\"10\">95 %</text>",
        max = width.max(420),
    );
    for (i, d) in s.days.iter().enumerate() {
        let x = i * STEP + 12;
        let day = utc(d.start);
        let (date, label) = (&day[..10], &day[5..10]);
        match d.app_user_mfa_ratio {
            Some(r) => {
                let height = (r * 100.0).round() as usize;
                let fill = if r >= TARGET { "#2da44e" } else { "#e5534b" };
                let _ = write!(
                    h,
                    "<rect x=\"{x}\" y=\"{y}\" width=\"40\" height=\"{height}\" fill=\"{fill}\"><title>{date}: {pct}</title></rect>\
                     <text x=\"{cx}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"middle\">{pct}</text>",
                    y = 115 - height,
                    cx = x + 20,
                    ty = (115 - height).saturating_sub(4).max(11),
                    pct = percent(Some(r)),
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<text x=\"{cx}\" y=\"110\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">none</text>",
                    cx = x + 20
                );
            }
        }
        let _ =
            write!(h, "<text x=\"{cx}\" y=\"132\" font-size=\"11\" text-anchor=\"middle\">{label}</text>", cx = x + 20);
    }
    h.push_str("</svg>");
}

fn applications(h: &mut String, s: &StatusReport) {
    h.push_str(
        "<h2>Applications</h2><table><tr><th>application</th><th>App+User with MFA</th><th>ratio</th>\
         <th>requests</th><th>with MFA</th><th>without</th><th>app-only</th><th>bound</th></tr>",
    );
    for a in &s.applications {
        let _ = write!(
            h,
            "<tr><td class=\"id\">{app}</td><td class=\"b\"><div class=\"bar\"><div class=\"fill {class}\" style=\"width:{w:.1}%\"></div>\
             <div class=\"line\"></div></div></td><td class=\"n\">{r}</td><td class=\"n\">{req}</td><td class=\"n\">{with}</td>\
             <td class=\"n\">{without}</td><td class=\"n\">{only}</td><td class=\"n\">{bound}</td></tr>",
            app = esc(&a.app),
            class = class(a.app_user_mfa_ratio),
            w = a.app_user_mfa_ratio.unwrap_or(0.0) * 100.0,
            r = percent_or(a.app_user_mfa_ratio, "-"),
            req = a.requests,
            with = a.with_mfa,
            without = a.without_mfa,
            only = a.app_only,
            bound = percent_or(a.app_user_bound_ratio, "-"),
        );
    }
    h.push_str("</table>");
}

fn would_refuse(h: &mut String, s: &StatusReport) {
    if s.would_refuse.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Report-only routes: would refuse</h2><p class=\"sub\">Requests forwarded because their route has \
         enforce = false; with enforce = true each would have been refused for this reason.</p>\
         <table><tr><th>route</th><th>application</th><th>reason</th><th>requests</th></tr>",
    );
    for w in &s.would_refuse {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"id\">{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&w.route),
            esc(&w.app),
            w.reason,
            w.requests
        );
    }
    h.push_str("</table>");
}

/// A CSV link beside a table's heading (an instance's page; a fleet file has none to link).
fn csv_link(csv: Option<&str>) -> String {
    csv.map(|href| format!(" <a class=\"sub\" href=\"{href}\">CSV</a>")).unwrap_or_default()
}

/// Users without MFA; with the replicas that saw each, on the fleet's page.
fn users(h: &mut String, users: &[UserSeen], csv: Option<&str>) {
    let fleet = users.iter().any(|u| !u.replicas.is_empty());
    let _ = write!(
        h,
        "<h2>Users without MFA{}</h2><table><tr><th>user</th><th>last seen</th><th>requests without MFA</th>{}</tr>",
        csv_link(csv),
        if fleet { "<th>replicas</th>" } else { "" }
    );
    for u in users {
        let _ = write!(
            h,
            "<tr><td class=\"id\">{}</td><td>{}</td><td class=\"n\">{}</td>",
            esc(&u.user),
            utc(u.last_seen),
            u.requests_without_mfa
        );
        if fleet {
            let _ = write!(h, "<td class=\"id\">{}</td>", esc(&u.replicas.join(", ")));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// The most recent requests without MFA; with the replica that served each, on the fleet's page.
fn recent(h: &mut String, rows: &[Recent], csv: Option<&str>) {
    let fleet = rows.iter().any(|r| r.replica.is_some());
    let _ = write!(
        h,
        "<h2>Recent requests without MFA{}</h2><table><tr><th>time</th><th>route</th><th>application</th>\
         <th>user</th><th>tenant</th>{}</tr>",
        csv_link(csv),
        if fleet { "<th>replica</th>" } else { "" }
    );
    for r in rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"id\">{}</td><td class=\"id\">{}</td><td class=\"id\">{}</td>",
            utc(r.time),
            esc(&r.route),
            esc(&r.app),
            esc(r.user.as_deref().unwrap_or("-")),
            esc(r.tenant.as_deref().unwrap_or("-"))
        );
        if let Some(replica) = r.replica.as_deref().filter(|_| fleet) {
            let _ = write!(h, "<td class=\"id\">{}</td>", esc(replica));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AppSummary, Counts, Recent, UserSeen, WouldRefuse};

    /// Three days of requests on an instance's clock: each day's ratio is drawn and written.
    #[test]
    fn the_page_draws_each_days_ratio() {
        use crate::auth::policy::TokenKind;
        use crate::report::{Observation, Report, ReportConfig};
        let report = Report::new(ReportConfig::default());
        let day = 86_400;
        let start = 20_000 * day;
        // Day 1: 1 of 2 with MFA; day 2: none; day 3: 3 of 3; day 4: 19 of 20.
        for (d, with, without) in [(0, 1, 1), (2, 3, 0), (3, 19, 1)] {
            for i in 0..with + without {
                report.record(&Observation {
                    unix_secs: start + d * day + 60 * i,
                    route: "offers",
                    kind: TokenKind::AppUser,
                    mfa: i < with,
                    app: "a",
                    user: Some("u@example"),
                    tenant: None,
                    bound: false,
                });
            }
        }
        let s = report.snapshot(start + 3 * day + 3600);
        let ratios: Vec<Option<f64>> = s.days.iter().map(|d| d.app_user_mfa_ratio).collect();
        assert_eq!(ratios[3..], [Some(0.5), None, Some(1.0), Some(0.95)], "{ratios:?}");
        let page = render(&s);
        assert!(page.contains("<svg id=\"trend\""), "no chart");
        for text in ["50.0 %", "100.0 %", "95.0 %", ">none<", "10-04", "10-07"] {
            assert!(page.contains(text), "{text} not on the page");
        }
    }

    #[test]
    fn the_page_escapes_what_tokens_supply_and_shows_the_ratio() {
        let s = StatusReport {
            scope: "instance",
            instance: Some("partner-api-7d9f-x2".into()),
            user_ids: None,
            window_days: Some(7),
            window: None,
            generated_at: 1_795_000_000,
            totals: Counts { app_user_with_mfa: 2, app_user_without_mfa: 3, app_only: 5, app_user_bound: Some(1) },
            app_user_mfa_ratio: Some(0.4),
            applications: vec![AppSummary {
                app: "<script>x</script>".into(),
                requests: 10,
                with_mfa: 2,
                without_mfa: 3,
                app_only: 5,
                app_user_mfa_ratio: Some(0.4),
                app_user_bound_ratio: Some(0.2),
            }],
            recent_without_mfa: vec![Recent {
                time: 1_795_000_000,
                route: "customers".into(),
                app: "a".into(),
                user: Some("o'neil@x\"y".into()),
                tenant: None,
                replica: None,
            }],
            users_without_mfa: vec![UserSeen {
                user: "u&v".into(),
                last_seen: 0,
                requests_without_mfa: 3,
                replicas: vec![],
            }],
            days: vec![],
            would_refuse: vec![WouldRefuse {
                route: "customers".into(),
                app: "<b>".into(),
                reason: "app_only_not_allowed",
                requests: 7,
            }],
            replicas: None,
            apart: vec![],
            left_out: Default::default(),
        };
        let page = render(&s);
        assert!(
            page.contains(
                "<h1>MFA status report</h1><div class=\"sub\" id=\"scope\">Instance: partner-api-7d9f-x2</div>"
            ),
            "{page}"
        );
        assert!(page.contains("<div class=\"ratio low\" id=\"ratio\">40.0 %</div>"), "{page}");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;") && !page.contains("<script>"));
        assert!(page.contains("o&#39;neil@x&quot;y") && page.contains("u&amp;v"));
        assert!(page.contains("1970-01-01 00:00:00 UTC"));
        assert!(page.contains(
            "<td>customers</td><td class=\"id\">&lt;b&gt;</td><td>app_only_not_allowed</td><td class=\"n\">7</td>"
        ));
        assert!(!page.contains("http://") && !page.contains("https://"), "nothing external");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
    }
}
