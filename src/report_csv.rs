//! The status report's tables as CSV downloads (RFC 4180), as Partner Center offers its own:
//! users without MFA, and the most recent requests without MFA. A cell a spreadsheet would run
//! as a formula is escaped as OWASP's CSV-injection guidance says; JSON keeps the raw values.
//! The fleet's tables have one more column: the replicas that saw the user, or served the request.

use std::fmt::Write;

// ISO 8601 in UTC, which spreadsheets read as a time.
use crate::report::{rfc3339, StatusReport, FLEET_SCOPE};

/// Users seen without MFA: user, last seen (UTC), requests without MFA (and the replicas, for the
/// fleet, `;`-separated).
pub(crate) fn users(s: &StatusReport) -> String {
    let fleet = s.scope == FLEET_SCOPE;
    let mut out = String::from(if fleet {
        "user,last_seen_utc,requests_without_mfa,replicas\r\n"
    } else {
        "user,last_seen_utc,requests_without_mfa\r\n"
    });
    for u in &s.users_without_mfa {
        let _ = write!(out, "{},{},{}", cell(&u.user), rfc3339(u.last_seen), u.requests_without_mfa);
        if fleet {
            let _ = write!(out, ",{}", cell(&u.replicas.join(";")));
        }
        out.push_str("\r\n");
    }
    out
}

/// The most recent App+User requests without MFA, newest first (and the replica that served
/// each, for the fleet).
pub(crate) fn recent(s: &StatusReport) -> String {
    let fleet = s.scope == FLEET_SCOPE;
    let mut out = String::from(if fleet {
        "time_utc,route,application,user,tenant,replica\r\n"
    } else {
        "time_utc,route,application,user,tenant\r\n"
    });
    for r in &s.recent_without_mfa {
        let (user, tenant) = (r.user.as_deref().unwrap_or(""), r.tenant.as_deref().unwrap_or(""));
        let _ = write!(out, "{},{},{},{},{}", rfc3339(r.time), cell(&r.route), cell(&r.app), cell(user), cell(tenant));
        if fleet {
            let _ = write!(out, ",{}", cell(r.replica.as_deref().unwrap_or("")));
        }
        out.push_str("\r\n");
    }
    out
}

/// One field: quoted when it holds a comma, quote or line break; a field that starts like a
/// formula (`=`, `+`, `-`, `@`, tab, carriage return) gets a leading `'` and quotes, so a
/// spreadsheet shows it as text instead of running it.
fn cell(v: &str) -> String {
    let formula = v.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula || v.contains([',', '"', '\n', '\r']) {
        let prefix = if formula { "'" } else { "" };
        format!("\"{prefix}{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn formulas_become_text_and_fields_are_quoted_when_needed() {
        assert_eq!(cell("alice@contoso.example"), "alice@contoso.example");
        assert_eq!(cell("=HYPERLINK(\"http://x\")"), "\"'=HYPERLINK(\"\"http://x\"\")\"");
        for start in ["+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(cell(start).starts_with("\"'"), "{start:?}");
        }
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(cell("x@y"), "x@y", "an @ inside is no formula");
    }
}
