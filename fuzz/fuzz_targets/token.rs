//! The token pipeline from raw `Authorization` bytes to a route decision, against a fixed key set.
//!
//! The first byte picks the mode and the settings: either the rest is the header value as sent,
//! or the rest is a claims payload that the target signs with the set's own Ed25519 key, so
//! claims, profiles and policy are reached too (a fuzzer cannot forge a signature).

#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use mfa_gateway::auth::keys::{self, Key, Lookup};
use mfa_gateway::auth::policy::{self, Caller};
use mfa_gateway::auth::profile::{Base, MfaRules, Profile};
use mfa_gateway::auth::token::{self, IssuerPattern, IssuerRules};
use mfa_gateway::routes::{Requirement, Route, StepUp};

const NOW: i64 = 1_700_000_000;

struct Fixed {
    signer: Ed25519KeyPair,
    keys: Vec<Key>,
    rules: [IssuerRules; 2],
    profiles: [Profile; 2],
    routes: Vec<Route>,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let signer = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let other = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let jwk = |kid: &str, k: &Ed25519KeyPair| {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref())})
        };
        let set = serde_json::json!({"keys": [jwk("fz", &signer), jwk("other", &other)]});
        let keys = keys::parse_jwks(set.to_string().as_bytes()).unwrap().keys;
        let rules = |typ: &[&str]| IssuerRules {
            issuer: IssuerPattern::new("https://fuzz.example/{tenantid}/"),
            audiences: vec!["api://fuzz".into()],
            tenants: vec![],
            algorithms: vec![Algorithm::EdDSA, Algorithm::RS256, Algorithm::ES256],
            leeway_secs: 60,
            max_token_bytes: 16 * 1024,
            typ: typ.iter().map(|s| s.to_string()).collect(),
        };
        let mfa = MfaRules { amr: vec!["mfa".into()], acrs: vec!["c1".into()], acr: vec!["gold".into()] };
        let route = |i: usize, require, roles: &[&str], scopes: &[&str]| Route {
            index: i,
            name: format!("r{i}").into(),
            require,
            methods: vec![],
            roles_any: roles.iter().map(|s| s.to_string()).collect(),
            scopes_any: scopes.iter().map(|s| s.to_string()).collect(),
            step_up: StepUp::PartnerCenter,
            max_auth_age: (i == 1).then_some(600),
            enforce: true,
            binding: None,
        };
        Fixed {
            signer,
            keys,
            rules: [rules(&[]), rules(&["at+jwt", "application/at+jwt"])],
            profiles: [Profile::new(Base::Entra, mfa.clone()), Profile::new(Base::Rfc9068, mfa)],
            routes: vec![
                route(0, Requirement::Token, &[], &[]),
                route(1, Requirement::Mfa, &[], &[]),
                route(2, Requirement::AppUserMfa, &[], &[]),
                route(3, Requirement::Mfa, &["Admin"], &["read"]),
            ],
        }
    })
}

fn signed(f: &Fixed, typ: bool, payload: &[u8]) -> Vec<u8> {
    let header = if typ { r#"{"alg":"EdDSA","kid":"fz","typ":"at+jwt"}"# } else { r#"{"alg":"EdDSA","kid":"fz"}"# };
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let sig = f.signer.sign(input.as_bytes());
    format!("Bearer {input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())).into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else { return };
    let f = fixed();
    let sign = knobs & 1 == 1;
    let (rules, profile) = (&f.rules[usize::from(knobs >> 1 & 1)], &f.profiles[usize::from(knobs >> 2 & 1)]);
    let route = &f.routes[usize::from(knobs >> 3 & 3)];
    let value = if sign { signed(f, knobs & 0x20 != 0, rest) } else { rest.to_vec() };
    let Ok(value) = HeaderValue::from_bytes(&value) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    if knobs & 0x40 != 0 {
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    }

    // The request path's order: credential, parse, issuer, algorithm, key, then `auth::accept`.
    let Ok(Some((_, t))) = token::credential(&headers) else { return };
    let Ok(parsed) = token::parse(t, rules.max_token_bytes) else { return };
    let Some(iss) = parsed.claims.iss() else { return };
    if !rules.issuer.could_match(iss) || !rules.algorithms.contains(&parsed.alg) {
        return;
    }
    let refs: Vec<&Key> = f.keys.iter().collect();
    let key = match keys::pick(&refs, parsed.kid.as_deref(), iss, parsed.claims.tid()) {
        Lookup::Found(k) => k,
        _ => return,
    };
    let Ok(id) = mfa_gateway::auth::accept(&parsed, rules, key, profile, NOW) else { return };
    // A token that verified has a time window around now and names our audience.
    assert!(parsed.claims.exp.is_some_and(|e| e + 60 >= NOW), "accepted an expired token");
    let roles: Vec<String> = id.roles.iter().map(|r| r.to_string()).collect();
    let caller = Caller { kind: id.kind, mfa: id.mfa, roles: &roles, scopes: &id.scopes, auth_time: id.auth_time };
    if policy::decide(route, &caller, NOW).is_ok() && route.require == Requirement::AppUserMfa {
        assert!(id.kind == policy::TokenKind::AppUser && id.mfa, "GDAP route passed without App+User MFA");
    }
});
