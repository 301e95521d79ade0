//! Audit events: one structured `mfa_gateway::audit` event per request, and the redaction of
//! user identifiers that deployments may not log. Never a token.

use std::net::SocketAddr;

use crate::config::{AuditConfig, UserIdMode};

/// Turns `upn`/`oid` into what may be logged and reported.
pub struct UserIds {
    mode: UserIdMode,
    key: Option<aws_lc_rs::hmac::Key>,
}

impl UserIds {
    pub fn new(cfg: &AuditConfig) -> Self {
        let key = (cfg.user_ids == UserIdMode::Hash)
            .then(|| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cfg.hash_key.as_bytes()));
        Self { mode: cfg.user_ids, key }
    }

    pub fn is_plain(&self) -> bool {
        self.mode == UserIdMode::Plain
    }

    pub fn show(&self, id: Option<&str>) -> Option<String> {
        let id = id?;
        match self.mode {
            UserIdMode::Plain => Some(id.to_string()),
            UserIdMode::Drop => None,
            UserIdMode::Hash => {
                let tag = aws_lc_rs::hmac::sign(self.key.as_ref()?, id.as_bytes());
                let hex: String = tag.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect();
                Some(format!("h:{hex}"))
            }
        }
    }
}

/// Everything one audit event says.
pub struct Event<'a> {
    pub request_id: &'a str,
    pub client: SocketAddr,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub decision: &'static str,
    pub reason: &'static str,
    pub token_kind: &'static str,
    pub tenant: Option<&'a str>,
    pub app: Option<&'a str>,
    pub user: Option<&'a str>,
    pub object_id: Option<&'a str>,
    pub duration_us: u64,
    pub auth_us: u64,
    pub upstream_us: u64,
}

pub fn emit(e: &Event<'_>) {
    tracing::info!(
        target: "mfa_gateway::audit",
        request_id = e.request_id,
        client = %e.client,
        method = e.method,
        route = e.route,
        status = e.status,
        decision = e.decision,
        reason = e.reason,
        token_kind = e.token_kind,
        tid = e.tenant.unwrap_or("-"),
        app = e.app.unwrap_or("-"),
        user = e.user.unwrap_or("-"),
        oid = e.object_id.unwrap_or("-"),
        duration_us = e.duration_us,
        auth_us = e.auth_us,
        upstream_us = e.upstream_us,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_plain_hash_drop() {
        let cfg = |mode| AuditConfig { enabled: true, user_ids: mode, hash_key: "0123456789abcdef".into() };
        let upn = Some("someone@contoso.example");
        assert_eq!(UserIds::new(&cfg(UserIdMode::Plain)).show(upn).as_deref(), upn);
        assert_eq!(UserIds::new(&cfg(UserIdMode::Drop)).show(upn), None);
        let h = UserIds::new(&cfg(UserIdMode::Hash));
        let a = h.show(upn).unwrap();
        assert!(a.starts_with("h:") && a.len() == 26 && !a.contains("contoso"));
        assert_eq!(h.show(upn).unwrap(), a, "stable");
        assert_ne!(h.show(Some("other@contoso.example")).unwrap(), a);
        assert_eq!(h.show(None), None);
    }
}
