//! The admin port: `/healthz` (alive), `/readyz` (keys loaded, not draining), `/metrics` (Prometheus text),
//! `/report` (this instance's MFA status report: JSON, or an HTML page for a browser).
//! Kept off the data port so probes and scrapes never meet the auth path.
//!
//! The first three hold no user data and are open. `/report` lists users without MFA, so it asks
//! for `Authorization: Bearer <secret>` when `[report].token_file` is set; without one it answers
//! only on a loopback admin address (in a pod the admin port listens on the pod address, which
//! the whole cluster network can reach).

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::gateway::Gateway;

/// One admin request; the accept loop is `crate::listener`'s, with `[admin]`'s limits.
pub(crate) fn route(gateway: &Gateway, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if gateway.is_draining() {
                // Lame duck: load balancers stop sending while requests still get served.
                return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n".into());
            }
            let reasons = gateway.snapshot().auth.not_ready();
            if reasons.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready:\n{}\n", reasons.join("\n")).into(),
                )
            }
        }
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", gateway.scrape().into()),
        // One access rule for the report in every form.
        path @ ("/report" | "/report/users.csv" | "/report/recent.csv") => {
            if let Some(refused) = report_refusal(gateway, &req) {
                return refused;
            }
            let mut snapshot = gateway.report().snapshot(crate::auth::unix_now());
            let (body, name) = match path {
                "/report/users.csv" => (crate::report_csv::users(&snapshot), "users-without-mfa.csv"),
                "/report/recent.csv" => (crate::report_csv::recent(&snapshot), "recent-requests-without-mfa.csv"),
                _ => {
                    snapshot.instance = host_name();
                    snapshot.user_ids = Some(gateway.snapshot().user_ids.shown_as());
                    return report(&snapshot, &req);
                }
            };
            let mut resp = reply(StatusCode::OK, "text/csv; charset=utf-8; header=present", body.into());
            let disposition = format!("attachment; filename=\"{name}\"");
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, disposition.parse().expect("a fixed ASCII name"));
            resp
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz, /metrics, /report, /report/users.csv, /report/recent.csv\n".into(),
        ),
    }
}

/// The report as a page for a browser (it asks for HTML first), else as JSON for scripts and
/// Prometheus-side tooling.
fn report(snapshot: &crate::report::StatusReport, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().is_some_and(|first| first.trim().starts_with("text/html")));
    if wants_html {
        return reply(StatusCode::OK, "text/html; charset=utf-8", crate::report_page::render(snapshot).into());
    }
    let body = serde_json::to_vec_pretty(snapshot).unwrap_or_default();
    reply(StatusCode::OK, "application/json", body.into())
}

/// This host's name (a pod's name in Kubernetes), to say whose report it is.
fn host_name() -> Option<String> {
    let name = std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/etc/hostname").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The refusal for a request that may not read `/report`; `None` when it may.
fn report_refusal(gateway: &Gateway, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let snap = gateway.snapshot();
    let Some(token) = &snap.config.report_token else {
        if snap.config.admin.listen.ip().is_loopback() {
            return None;
        }
        return Some(reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "/report lists users without MFA and is closed on a non-loopback admin address; \
             set [report].token_file to a file holding a secret and send it as Authorization: Bearer <secret>\n"
                .into(),
        ));
    };
    // Read as the API port reads a bearer token; compared in constant time, so the answer's
    // timing says nothing about the secret.
    let presented = match crate::auth::token::credential(req.headers()) {
        Ok(Some((crate::auth::token::Scheme::Bearer, secret))) => Some(secret),
        _ => None,
    };
    let matches =
        presented.is_some_and(|p| aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), &token.0).is_ok());
    if matches {
        return None;
    }
    let mut r =
        reply(StatusCode::UNAUTHORIZED, "text/plain", "/report needs Authorization: Bearer <report secret>\n".into());
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"mfa-gateway report\""));
    Some(r)
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}
