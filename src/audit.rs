//! Audit events: one structured `mfa_gateway::audit` event per request, and the redaction of
//! user identifiers that deployments may not log. Never a token.

use std::net::SocketAddr;

use crate::config::{AuditConfig, UserIdMode};

/// Turns `upn`/`oid` into what may be logged and reported.
pub struct UserIds {
    /// Tells this instance from any other, for ids derived under it and kept (`Memo`).
    id: u64,
    mode: UserIdMode,
    key: Option<aws_lc_rs::hmac::Key>,
}

impl UserIds {
    pub fn new(cfg: &AuditConfig) -> Self {
        let key = (cfg.user_ids == UserIdMode::Hash)
            .then(|| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cfg.hash_key.as_bytes()));
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self { id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed), mode: cfg.user_ids, key }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn is_plain(&self) -> bool {
        self.mode == UserIdMode::Plain
    }

    /// How this instance shows user ids, for a reader that merges several instances' reports:
    /// only reports with the same mode and key can have their users merged. The key is named by
    /// a keyed hash of a fixed text, which tells keys apart without revealing them.
    pub fn shown_as(&self) -> crate::report::UserIdsShown {
        let mode = match self.mode {
            UserIdMode::Plain => "plain",
            UserIdMode::Hash => "hash",
            UserIdMode::Drop => "drop",
        };
        let key_id = self.key.as_ref().map(|k| {
            let tag = aws_lc_rs::hmac::sign(k, b"mfa-gateway report key id");
            tag.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
        });
        crate::report::UserIdsShown { mode: mode.to_string(), key_id }
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
    /// `proxy`, or `authz` for a front proxy's question.
    pub mode: &'static str,
    pub request_id: &'a str,
    /// The W3C trace id of the request's `traceparent`, when it carries a valid one.
    pub trace_id: Option<&'a str>,
    pub client: SocketAddr,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub decision: &'static str,
    pub reason: &'static str,
    pub token_kind: &'static str,
    /// How the token was bound to the client: `bearer`, `dpop`, or `-` without a verified token.
    pub binding: &'static str,
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
        mode = e.mode,
        request_id = e.request_id,
        trace_id = e.trace_id.unwrap_or("-"),
        client = %e.client,
        method = e.method,
        route = e.route,
        status = e.status,
        decision = e.decision,
        reason = e.reason,
        token_kind = e.token_kind,
        binding = e.binding,
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

/// The trace id of a W3C `traceparent` (`version-traceid-parentid-flags`), when the header is
/// well formed: version `00` exactly 55 characters; a later version at least that, with a `-`
/// after the flags; never version `ff`, never an all-zero id.
pub fn trace_id(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let b = v.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    let shape = b.len() >= 55 && b[2] == b'-' && b[35] == b'-' && b[52] == b'-';
    if !shape || !hex(&b[..2]) || &b[..2] == b"ff" || !hex(&b[53..55]) {
        return None;
    }
    if (&b[..2] == b"00" && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let (trace, parent) = (&b[3..35], &b[36..52]);
    (hex(trace) && hex(parent) && !zero(trace) && !zero(parent)).then(|| &v[3..35])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_from_well_formed_traceparents_only() {
        let id = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", v.parse().unwrap());
            trace_id(&h).map(str::to_string)
        };
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(id(good).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(id(&format!("01{}-later", &good[2..])).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 has nothing after
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", // fields shifted
            "",
        ] {
            assert_eq!(id(bad), None, "{bad:?}");
        }
        assert_eq!(trace_id(&http::HeaderMap::new()), None);
    }

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

    #[test]
    fn reports_tell_their_user_id_settings_apart_without_the_key() {
        let cfg = |mode, key: &str| AuditConfig { enabled: true, user_ids: mode, hash_key: key.into() };
        let a = UserIds::new(&cfg(UserIdMode::Hash, "0123456789abcdef0123")).shown_as();
        let same = UserIds::new(&cfg(UserIdMode::Hash, "0123456789abcdef0123")).shown_as();
        let other = UserIds::new(&cfg(UserIdMode::Hash, "another-key-of-20-chars")).shown_as();
        assert_eq!((&a.mode, &a.key_id), (&same.mode, &same.key_id));
        assert_ne!(a.key_id, other.key_id);
        assert!(!a.key_id.as_deref().unwrap().contains("0123456789"), "the key is not shown");
        let plain = UserIds::new(&cfg(UserIdMode::Plain, "")).shown_as();
        assert_eq!((plain.mode.as_str(), plain.key_id), ("plain", None));
    }
}
