//! A token that verified, as the cache keeps it: what policy and the upstream need of it, and
//! what it weighs in the cache.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::policy::{Caller, TokenKind};
use super::unix_now;

/// A token that verified: what policy and the upstream need, computed once and cached. `M` is
/// whatever the caller derives from the token once and keeps with it (`memo`); auth never reads it.
#[derive(Debug)]
pub struct Verified<M = ()> {
    pub issuer: usize,
    pub(super) epoch: u64,
    pub exp: i64,
    pub(super) leeway: i64,
    pub kind: TokenKind,
    pub mfa: bool,
    pub roles: Box<[String]>,
    pub scopes: Box<str>,
    pub auth_time: Option<i64>,
    /// The client handles claims challenges (`xms_cc` holds `cp1`).
    pub claims_capable: bool,
    /// `tid`, `oid`, app id, `upn`, user (the last two as the issuer's profile reads them): each
    /// kept once, as the header value the upstream receives (a claim that cannot be a header
    /// value is left out, not mangled).
    pub(super) ids: [Option<HeaderValue>; 5],
    /// `cnf.jkt`: the token is DPoP-bound to the key with this thumbprint (RFC 9449 §6.1).
    pub jkt: Option<Box<str>>,
    /// `cnf.x5t#S256`: the token is bound to the client certificate with this SHA-256
    /// thumbprint, base64url (RFC 8705 §3.1).
    pub x5t_s256: Option<Box<str>>,
    /// The caller's own, made with `M::default()` when the token verifies.
    pub memo: M,
    /// The token itself, when cached: the cache is keyed by its hash, and a hit counts only when
    /// this matches.
    pub(super) token: Option<TokenText>,
}

/// A token kept for comparison only; its `Debug` never shows it.
pub(super) struct TokenText(pub(super) Box<str>);

impl std::fmt::Debug for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<token>")
    }
}

const TID: usize = 0;
const OID: usize = 1;
const APP: usize = 2;
const UPN: usize = 3;
const USER: usize = 4;

impl<M> Verified<M> {
    pub fn caller(&self) -> Caller<'_> {
        Caller { kind: self.kind, mfa: self.mfa, roles: &self.roles, scopes: &self.scopes, auth_time: self.auth_time }
    }

    fn id(&self, i: usize) -> Option<&str> {
        // Built from a `&str`, so the bytes are UTF-8.
        self.ids[i].as_ref().and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    }

    pub fn tid(&self) -> Option<&str> {
        self.id(TID)
    }

    pub fn oid(&self) -> Option<&str> {
        self.id(OID)
    }

    pub fn app_id(&self) -> Option<&str> {
        self.id(APP)
    }

    pub fn upn(&self) -> Option<&str> {
        self.id(UPN)
    }

    /// The user as the issuer's profile names it (Entra: `upn`, else `oid`; RFC 9068: `sub`).
    pub fn user(&self) -> Option<&str> {
        self.id(USER)
    }
}

/// What a cache entry costs besides the token and claims it keeps: the `Verified` itself, its
/// `Arc`, the memo, and moka's table, deque and timer nodes. Measured: about 2.2 KiB per
/// entry with a 1 KiB token.
const ENTRY_OVERHEAD: usize = 1200;

impl<M> Verified<M> {
    /// Bytes this entry holds in the cache, roughly.
    pub(super) fn weight(&self) -> usize {
        let ids: usize = self.ids.iter().flatten().map(HeaderValue::len).sum();
        let roles: usize = self.roles.iter().map(|r| r.len() + std::mem::size_of::<String>()).sum();
        ENTRY_OVERHEAD
            + self.token.as_ref().map_or(0, |t| t.0.len())
            + ids
            + roles
            + self.scopes.len()
            + self.jkt.as_ref().map_or(0, |j| j.len())
            + self.x5t_s256.as_ref().map_or(0, |x| x.len())
    }
}

pub(super) struct UntilExp;

impl<M> moka::Expiry<u64, Arc<Verified<M>>> for UntilExp {
    fn expire_after_create(&self, _: &u64, v: &Arc<Verified<M>>, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs((v.exp - unix_now()).max(0) as u64))
    }
}
