//! Step-up challenges over the wire, with real signed tokens shaped like each provider's: the
//! mandated Partner Center bytes by default, RFC 9470 (`acr_values`, `max_age` from `auth_time`)
//! and the Entra claims challenge (to `cp1` clients only), each header checked byte for byte.

mod support;

use std::time::Duration;

use base64::Engine;
use mfa_gateway::dev::{entra_claims, DEMO_AUDIENCE, DEMO_TENANT};
use serde_json::{json, Value};
use support::*;

const ROUTES: &str = r#"
[challenge]
acr_values = ["mfa", "phr"]
auth_context = "c1"

[[route]]
name = "mandated"
path = "/mandated"
require = "mfa"

[[route]]
name = "rfc"
path = "/rfc"
require = "mfa"
step_up = "rfc9470"

[[route]]
name = "fresh"
path = "/fresh"
require = "app_user_mfa"
step_up = "rfc9470"
max_auth_age = "10m"

[[route]]
name = "entra"
path = "/entra"
require = "mfa"
step_up = "entra_claims"
"#;

const MANDATED: &str = "HTTP/1.1 401 Unauthorized - MFA required\r\n";
const RFC_MFA: &str = "Bearer error=\"insufficient_user_authentication\", \
                       error_description=\"multi-factor authentication required\", acr_values=\"mfa phr\"";
const RFC_STALE: &str = "Bearer error=\"insufficient_user_authentication\", \
                         error_description=\"a more recent sign-in is required\", acr_values=\"mfa phr\", max_age=\"600\"";

fn now() -> i64 {
    mfa_gateway::auth::unix_now()
}

fn mint(h: &AuthHarness, iss: &str, claims: &Value) -> String {
    let mut c = json!({"iss": iss.replace("{tenantid}", DEMO_TENANT), "aud": DEMO_AUDIENCE,
                       "iat": now() - 5, "exp": now() + 600});
    c.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
    h.issuer.mint_with_header(&json!({"alg": "RS256", "typ": "JWT", "kid": h.issuer.kid}), &c)
}

/// The raw response head to a GET with `token`: (status line, `www-authenticate` value).
async fn head(h: &AuthHarness, path: &str, token: &str) -> (String, Option<String>) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let resp = String::from_utf8(raw(h.gw.addr, req.as_bytes(), Duration::from_secs(5)).await).unwrap();
    let status = resp.split_inclusive("\r\n").next().unwrap_or_default().to_string();
    let www = resp.split("\r\n").find_map(|l| l.strip_prefix("www-authenticate: ")).map(str::to_string);
    (status, www)
}

/// One provider: its issuer settings, and claims (beyond iss/aud/iat/exp) of a user token
/// without MFA and of one with MFA; `auth_time` is added as each case needs.
struct Provider {
    iss: &'static str,
    settings: &'static str,
    without_mfa: Value,
    with_mfa: Value,
}

async fn check(p: Provider) {
    let h = auth_harness_for(p.iss, ROUTES, p.settings).await;
    let with_time = |c: &Value, t: Option<i64>| {
        let mut c = c.clone();
        if let Some(t) = t {
            c["auth_time"] = t.into();
        }
        mint(&h, p.iss, &c)
    };
    let nomfa = with_time(&p.without_mfa, Some(now() - 30));

    // No step_up on the route: the mandated bytes, [challenge] settings notwithstanding.
    let (status, www) = head(&h, "/mandated", &nomfa).await;
    assert_eq!((status.as_str(), www.as_deref()), (MANDATED, Some("Bearer error=\"invalid_token\"")), "{}", p.iss);

    // RFC 9470 with acr_values.
    let (status, www) = head(&h, "/rfc", &nomfa).await;
    assert_eq!((status.as_str(), www.as_deref()), ("HTTP/1.1 401 Unauthorized\r\n", Some(RFC_MFA)), "{}", p.iss);

    // RFC 9470 with max_age: MFA done an hour ago, or at a time the token does not say.
    for stale in [with_time(&p.with_mfa, Some(now() - 3600)), with_time(&p.with_mfa, None)] {
        let (status, www) = head(&h, "/fresh", &stale).await;
        assert_eq!((status.as_str(), www.as_deref()), ("HTTP/1.1 401 Unauthorized\r\n", Some(RFC_STALE)), "{}", p.iss);
    }
    // A fresh sign-in passes; and the route without max_auth_age never looked at the time.
    let fresh = with_time(&p.with_mfa, Some(now() - 60));
    assert_eq!(get(h.gw.addr, "/fresh", Some(&fresh)).await.0, 200, "{}", p.iss);
    assert_eq!(get(h.gw.addr, "/rfc", Some(&with_time(&p.with_mfa, None))).await.0, 200, "{}", p.iss);

    // Not a cp1 client: the Entra route falls back to the mandated bytes.
    let (status, www) = head(&h, "/entra", &nomfa).await;
    assert_eq!((status.as_str(), www.as_deref()), (MANDATED, Some("Bearer error=\"invalid_token\"")), "{}", p.iss);

    let count = |kind: &'static str| {
        let gw = &h.gw;
        async move { metric(gw, &format!("mfa_gateway_step_up_challenges_total{{kind=\"{kind}\"}}")).await }
    };
    assert_eq!((count("partner_center").await, count("rfc9470").await), (2.0, 3.0), "{}", p.iss);
    let refused =
        r#"mfa_gateway_requests_total{decision="mfa_required",mode="proxy",route="fresh",token_kind="app_user"}"#;
    assert_eq!(metric(&h.gw, refused).await, 2.0, "{}", p.iss);
}

#[tokio::test]
async fn entra_v1_amr() {
    check(Provider {
        iss: TEMPLATE_ISSUER,
        settings: "",
        without_mfa: entra_claims("nomfa", 600),
        with_mfa: entra_claims("mfa", 600),
    })
    .await;
}

fn entra_v2_user(extra: Value) -> Value {
    let mut c = json!({"ver": "2.0", "tid": DEMO_TENANT, "azp": "22223333-aaaa-4444-bbbb-5555cccc6666",
                       "oid": "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb", "sub": "pairwise-sub",
                       "preferred_username": "alice@contoso.example", "scp": "Orders.Read"});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

const ENTRA_V2: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";

#[tokio::test]
async fn entra_v2_acrs() {
    check(Provider {
        iss: ENTRA_V2,
        settings: "mfa = { acrs = [\"c1\"] }",
        without_mfa: entra_v2_user(json!({})),
        with_mfa: entra_v2_user(json!({"acrs": ["c1"]})),
    })
    .await;
}

#[tokio::test]
async fn keycloak_acr() {
    let user = |acr: &str| {
        json!({"typ": "Bearer", "azp": "partner-portal", "sub": "7d3c0f0e-5f55-4a53-9c1e-5a3f4c0b7a11",
               "preferred_username": "alice", "acr": acr, "scope": "openid profile"})
    };
    check(Provider {
        iss: "https://kc.example/realms/partners",
        settings: "profile = \"rfc9068\"\nrequire_typ = [\"JWT\"]\n\
                   app_only = [{ claim = \"client_id\", equals_claim = \"azp\" }]\n\
                   claims = { app_id = \"azp\", user = \"preferred_username\" }\n\
                   mfa = { acr = [\"gold\"] }",
        without_mfa: user("1"),
        with_mfa: user("gold"),
    })
    .await;
}

#[tokio::test]
async fn okta_amr_otp() {
    let user = |amr: Value| {
        json!({"ver": 1, "jti": "AT.x", "cid": "0oa1portal", "uid": "00u1alice", "sub": "alice@partner.example",
               "scp": ["offers.read"], "amr": amr})
    };
    check(Provider {
        iss: "https://partner.okta.com/oauth2/default",
        settings: "profile = \"rfc9068\"\nrequire_typ = [\"JWT\"]\n\
                   app_only = [{ claim = \"sub\", equals_claim = \"cid\" }]\n\
                   claims = { app_id = \"cid\", scopes = \"scp\" }\nmfa = { amr = [\"mfa\", \"otp\"] }",
        without_mfa: user(json!(["pwd"])),
        with_mfa: user(json!(["pwd", "otp"])),
    })
    .await;
}

#[tokio::test]
async fn auth0_amr_mfa() {
    let user = |amr: Value| json!({"sub": "auth0|65a1b2c3", "azp": "portal", "scope": "read:offers", "amr": amr});
    check(Provider {
        iss: "https://partner.eu.auth0.com/",
        settings: "profile = \"rfc9068\"\nrequire_typ = [\"JWT\"]\n\
                   app_only = [{ claim = \"gty\", equals = \"client-credentials\" }]\n\
                   claims = { app_id = \"azp\" }",
        without_mfa: user(json!(["pwd"])),
        with_mfa: user(json!(["mfa"])),
    })
    .await;
}

#[tokio::test]
async fn entra_claims_challenge_goes_to_cp1_clients_and_decodes_to_the_auth_context_request() {
    let h = auth_harness_for(ENTRA_V2, ROUTES, "mfa = { acrs = [\"c1\"] }").await;
    let cp1 = mint(&h, ENTRA_V2, &entra_v2_user(json!({"xms_cc": ["cp1"]})));
    let (status, www) = head(&h, "/entra", &cp1).await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized\r\n");
    let www = www.expect("a challenge");
    let prefix = format!(
        "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/{DEMO_TENANT}/oauth2/v2.0/authorize\", \
         error=\"insufficient_claims\", claims=\""
    );
    let claims = www.strip_prefix(&prefix).and_then(|r| r.strip_suffix('"')).unwrap_or_else(|| panic!("{www}"));
    let decoded = base64::engine::general_purpose::STANDARD.decode(claims).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#);

    // xms_cc without cp1, or none: the mandated bytes.
    for other in [json!({"xms_cc": ["cp2"]}), json!({})] {
        let t = mint(&h, ENTRA_V2, &entra_v2_user(other));
        let (status, www) = head(&h, "/entra", &t).await;
        assert_eq!((status.as_str(), www.as_deref()), (MANDATED, Some("Bearer error=\"invalid_token\"")));
    }
    // The cp1 client with its MFA done passes.
    let done = mint(&h, ENTRA_V2, &entra_v2_user(json!({"xms_cc": ["cp1"], "acrs": ["c1"]})));
    assert_eq!(get(h.gw.addr, "/entra", Some(&done)).await.0, 200);
    let kind = |k: &str| format!("mfa_gateway_step_up_challenges_total{{kind=\"{k}\"}}");
    assert_eq!(metric(&h.gw, &kind("entra_claims")).await, 1.0);
    assert_eq!(metric(&h.gw, &kind("partner_center")).await, 2.0);
}
