//! Tokens from other OpenID Providers, over the wire: one test per row of the README's provider
//! table, each with tokens shaped like that provider's, plus the RFC 9068 rules (typ, scope, who
//! the user is in headers, audit events and the report).

mod support;

use std::time::Duration;

use http::StatusCode;
use mfa_gateway::dev::{entra_claims, DEMO_AUDIENCE, DEMO_TENANT};
use serde_json::{json, Value};
use support::*;

/// A provider row: its issuer settings and three tokens' claims (beyond iss/aud/exp/iat).
struct Row {
    iss: &'static str,
    settings: &'static str,
    typ: Option<&'static str>,
    app_only: Value,
    user_without_mfa: Value,
    user_with_mfa: Value,
    /// What the upstream must be told of the user token.
    app_id: &'static str,
    user: &'static str,
}

fn mint(h: &AuthHarness, typ: Option<&str>, iss: &str, claims: &Value) -> String {
    let now = mfa_gateway::auth::unix_now();
    let mut c =
        json!({"iss": iss.replace("{tenantid}", DEMO_TENANT), "aud": DEMO_AUDIENCE, "iat": now - 5, "exp": now + 600});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    let mut header = json!({"alg": "RS256", "kid": h.issuer.kid});
    if let Some(t) = typ {
        header["typ"] = t.into();
    }
    h.issuer.mint_with_header(&header, &c)
}

/// App-only passes an `mfa` route and gets 403 on an `app_user_mfa` one; a user without MFA
/// (with `roles`, which mark nothing outside Entra) gets the exact MFA refusal on both; a user
/// with MFA passes, and the upstream learns the app and the user; the report counts all three.
async fn check_row(row: Row) {
    let h = auth_harness_for(row.iss, ROUTES, row.settings).await;
    let [app, nomfa, mfa] =
        [&row.app_only, &row.user_without_mfa, &row.user_with_mfa].map(|c| mint(&h, row.typ, row.iss, c));

    let (status, _, body) = get(h.gw.addr, "/v1/offers", Some(&app)).await;
    assert_eq!(status, StatusCode::OK, "{}: app-only on an mfa route: {body}", row.iss);
    assert_eq!(echoed(&body, "x-mfa-gateway-token-kind"), "app_only");
    let (status, headers, _) = get(h.gw.addr, "/v1/customers/c1/users", Some(&app)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}: app-only on a GDAP route", row.iss);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer error=\"insufficient_scope\""));

    for path in ["/v1/offers", "/v1/customers/c1/users"] {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {nomfa}\r\nConnection: close\r\n\r\n");
        let resp = String::from_utf8(raw(h.gw.addr, req.as_bytes(), Duration::from_secs(5)).await).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401 Unauthorized - MFA required\r\n"), "{}: {path}: {resp}", row.iss);
        assert!(resp.to_lowercase().contains("\r\nwww-authenticate: bearer error=\"invalid_token\"\r\n"), "{resp}");
    }

    let (status, _, body) = get(h.gw.addr, "/v1/customers/c1/users", Some(&mfa)).await;
    assert_eq!(status, StatusCode::OK, "{}: user with MFA: {body}", row.iss);
    assert_eq!(echoed(&body, "x-mfa-gateway-token-kind"), "app_user");
    assert_eq!(echoed(&body, "x-mfa-gateway-mfa"), "true");
    assert_eq!(echoed(&body, "x-mfa-gateway-app-id"), row.app_id, "{}", row.iss);
    assert_eq!(echoed(&body, "x-mfa-gateway-user"), row.user, "{}", row.iss);

    let (_, _, body) = get(h.gw.admin_addr, "/report", None).await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        r["totals"],
        json!({"app_user_with_mfa": 1, "app_user_without_mfa": 2, "app_only": 2, "app_user_bound": 0}),
        "{}",
        row.iss
    );
    assert_eq!(r["app_user_mfa_ratio"].as_f64().unwrap(), 1.0 / 3.0);
    assert_eq!(r["users_without_mfa"][0]["user"], row.user, "{}", row.iss);
}

#[tokio::test]
async fn entra_v1() {
    let mut nomfa = entra_claims("nomfa", 600);
    nomfa["roles"] = json!(["Partner.Read.All"]);
    check_row(Row {
        iss: TEMPLATE_ISSUER,
        settings: "",
        typ: Some("JWT"),
        app_only: entra_claims("app", 600),
        user_without_mfa: nomfa,
        user_with_mfa: entra_claims("mfa", 600),
        app_id: "00001111-aaaa-2222-bbbb-3333cccc4444",
        user: "Adminagent.csp@testtestpartner.onmicrosoft.com",
    })
    .await;
}

#[tokio::test]
async fn entra_v2_with_an_auth_context_for_mfa() {
    let user = |extra: Value| {
        let mut c = json!({"ver": "2.0", "tid": DEMO_TENANT, "azp": "22223333-aaaa-4444-bbbb-5555cccc6666",
                           "oid": "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb", "sub": "pairwise-sub",
                           "preferred_username": "alice@contoso.example", "scp": "Orders.Read", "roles": ["Reader"]});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    check_row(Row {
        iss: "https://login.microsoftonline.com/{tenantid}/v2.0",
        settings: "mfa = { acrs = [\"c1\"] }",
        typ: Some("JWT"),
        app_only: json!({"ver": "2.0", "tid": DEMO_TENANT, "azp": "33334444-aaaa-5555-bbbb-6666cccc7777",
                         "idtyp": "app", "roles": ["Orders.Read.All"],
                         "oid": "cccccccc-0000-1111-2222-dddddddddddd", "sub": "cccccccc-0000-1111-2222-dddddddddddd"}),
        user_without_mfa: user(json!({})),
        user_with_mfa: user(json!({"acrs": ["c1"]})),
        app_id: "22223333-aaaa-4444-bbbb-5555cccc6666",
        user: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
    })
    .await;
}

#[tokio::test]
async fn rfc9068_provider() {
    let user = |amr: Value| {
        json!({"sub": "alice", "client_id": "web-portal", "scope": "api:read", "roles": ["Reader"], "amr": amr,
               "jti": "j1", "auth_time": 1})
    };
    check_row(Row {
        iss: "https://op.example/",
        settings: "profile = \"rfc9068\"",
        typ: Some("at+jwt"),
        app_only: json!({"sub": "reporting-job", "client_id": "reporting-job", "scope": "api:read", "jti": "j2"}),
        user_without_mfa: user(json!(["pwd"])),
        user_with_mfa: user(json!(["pwd", "mfa"])),
        app_id: "web-portal",
        user: "alice",
    })
    .await;
}

#[tokio::test]
async fn keycloak() {
    let user = |acr: &str| {
        json!({"typ": "Bearer", "azp": "partner-portal", "sub": "7d3c0f0e-5f55-4a53-9c1e-5a3f4c0b7a11",
               "preferred_username": "alice", "acr": acr, "scope": "openid profile",
               "realm_access": {"roles": ["offline_access"]}, "roles": ["Reader"]})
    };
    check_row(Row {
        iss: "https://kc.example/realms/partners",
        settings: "profile = \"rfc9068\"\nrequire_typ = [\"JWT\"]\n\
                   app_only = [{ claim = \"client_id\", equals_claim = \"azp\" }, \
                               { claim = \"preferred_username\", starts_with = \"service-account-\" }]\n\
                   claims = { app_id = \"azp\", user = \"preferred_username\" }\n\
                   mfa = { acr = [\"gold\"] }",
        typ: Some("JWT"),
        app_only: json!({"typ": "Bearer", "azp": "reporting-job", "client_id": "reporting-job",
                         "sub": "0b9e9d0c-8a55-4c1f-8e61-1d1f3b6e2c22",
                         "preferred_username": "service-account-reporting-job", "acr": "1", "scope": "profile"}),
        user_without_mfa: user("1"),
        user_with_mfa: user("gold"),
        app_id: "partner-portal",
        user: "alice",
    })
    .await;
}

#[tokio::test]
async fn okta() {
    let user = |amr: Value| {
        json!({"ver": 1, "jti": "AT.x", "cid": "0oa1portal", "uid": "00u1alice", "sub": "alice@partner.example",
               "scp": ["offers.read", "openid"], "amr": amr, "auth_time": 1})
    };
    check_row(Row {
        iss: "https://partner.okta.com/oauth2/default",
        settings: "profile = \"rfc9068\"\nrequire_typ = [\"JWT\"]\n\
                   app_only = [{ claim = \"sub\", equals_claim = \"cid\" }]\n\
                   claims = { app_id = \"cid\", scopes = \"scp\" }",
        typ: Some("JWT"),
        app_only: json!({"ver": 1, "jti": "AT.y", "cid": "0oa1job", "sub": "0oa1job", "scp": ["offers.read"]}),
        user_without_mfa: user(json!(["pwd"])),
        user_with_mfa: user(json!(["pwd", "mfa", "otp"])),
        app_id: "0oa1portal",
        user: "alice@partner.example",
    })
    .await;
}

#[tokio::test]
async fn auth0() {
    let user = |amr: Value| {
        json!({"sub": "auth0|65a1b2c3", "azp": "portal", "scope": "read:offers", "permissions": ["read:offers"],
               "https://mfa-gateway.example/amr": amr})
    };
    check_row(Row {
        iss: "https://partner.eu.auth0.com/",
        settings: "profile = \"rfc9068\"\nrequire_typ = [\"JWT\"]\n\
                   app_only = [{ claim = \"gty\", equals = \"client-credentials\" }]\n\
                   claims = { app_id = \"azp\", amr = \"https://mfa-gateway.example/amr\" }",
        typ: Some("JWT"),
        app_only: json!({"sub": "job@clients", "azp": "job", "gty": "client-credentials", "scope": "read:offers"}),
        user_without_mfa: user(json!(["pwd"])),
        user_with_mfa: user(json!(["pwd", "mfa"])),
        app_id: "portal",
        user: "auth0|65a1b2c3",
    })
    .await;
}

#[tokio::test]
async fn an_id_token_is_not_an_access_token() {
    let iss = "https://op.example/";
    let h = auth_harness_for(iss, ROUTES, "profile = \"rfc9068\"").await;
    // An ID token: no typ (or JWT), the API as audience, a user who did MFA.
    let claims = json!({"sub": "alice", "client_id": "web", "amr": ["mfa"], "nonce": "n", "auth_time": 1});
    for typ in [None, Some("JWT"), Some("id_token+jwt")] {
        let (status, headers, _) = get(h.gw.addr, "/v1/offers", Some(&mint(&h, typ, iss, &claims))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "typ {typ:?}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer error=\"invalid_token\", error_description=\"token typ is not an access token's\""
        );
    }
    assert_eq!(metric(&h.gw, "mfa_gateway_invalid_tokens_total{reason=\"wrong_typ\"}").await, 3.0);
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        assert_eq!(get(h.gw.addr, "/v1/offers", Some(&mint(&h, Some(typ), iss, &claims))).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn scopes_any_reads_scope_under_rfc9068() {
    let iss = "https://op.example/";
    let routes = "[[route]]\nname = \"read\"\npath = \"/v1/offers\"\nrequire = \"mfa\"\nscopes_any = [\"api:read\"]\n";
    let h = auth_harness_for(iss, routes, "profile = \"rfc9068\"").await;
    let token = |scope: &str| {
        mint(&h, Some("at+jwt"), iss, &json!({"sub": "alice", "client_id": "web", "amr": ["mfa"], "scope": scope}))
    };
    assert_eq!(get(h.gw.addr, "/v1/offers", Some(&token("openid api:read"))).await.0, StatusCode::OK);
    let (status, headers, _) = get(h.gw.addr, "/v1/offers", Some(&token("api:write api:readx"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("lacks a scope"));
}

#[tokio::test]
async fn the_user_and_app_reach_the_audit_event_and_the_report() {
    logs();
    let iss = "https://op.example/";
    let h = auth_harness_for(iss, &format!("[audit]\nenabled = true\n{ROUTES}"), "profile = \"rfc9068\"").await;
    let claims = json!({"sub": "alice", "client_id": "web-portal", "amr": ["pwd"], "scope": "api:read"});
    let (status, headers, _) = get(h.gw.addr, "/v1/offers", Some(&mint(&h, Some("at+jwt"), iss, &claims))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    let audited = |l: &serde_json::Value| l["target"] == "mfa_gateway::audit" && l["request_id"] == id.as_str();
    eventually("the audit event", Duration::from_secs(2), async || log_lines().iter().any(audited)).await;
    let lines = log_lines();
    let e = lines.iter().find(|l| audited(l)).expect("an audit event");
    assert_eq!(
        (&e["app"], &e["user"], &e["decision"]),
        (&json!("web-portal"), &json!("alice"), &json!("mfa_required"))
    );
    let (_, _, body) = get(h.gw.admin_addr, "/report", None).await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["recent_without_mfa"][0]["user"], "alice");
    assert_eq!(r["recent_without_mfa"][0]["app"], "web-portal");
    assert_eq!(r["applications"][0]["app"], "web-portal");
}
