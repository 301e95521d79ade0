//! Criterion benches for the per-request hot functions: token verification (new and cached),
//! route matching, policy, header rewriting, and the status report's bookkeeping.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use mfa_gateway::auth::jwks::IssuerKeys;
use mfa_gateway::auth::metrics::AuthMetrics;
use mfa_gateway::auth::policy::{self, Caller, TokenKind};
use mfa_gateway::auth::profile;
use mfa_gateway::auth::{keys, token, AuthConfig, Authenticator};
use mfa_gateway::config::Config;
use mfa_gateway::dev::{entra_claims, DevIssuer};
use mfa_gateway::report::{Observation, Report, ReportConfig};
use mfa_gateway::routes::RouteTable;

/// Polls a future that is expected to be ready at once (the cached path never awaits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("cached verification awaited"),
    }
}

fn setup() -> (DevIssuer, Config, std::path::PathBuf) {
    let issuer = DevIssuer::generate("k1");
    let dir = std::env::temp_dir().join(format!("mfa-gw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": [issuer.jwk()]}).to_string()).unwrap();
    let profile = std::fs::read_to_string("config/partner-center.toml").unwrap();
    let text = profile.replace(
        "discovery = \"https://login.microsoftonline.com/common/.well-known/openid-configuration\"",
        &format!("jwks_file = \"{}\"", jwks.display()),
    );
    let config = Config::parse(&text, "bench", None).unwrap();
    (issuer, config, dir)
}

/// An authenticator for `cfg` whose key set has loaded.
fn ready_authenticator(rt: &tokio::runtime::Runtime, cfg: &AuthConfig) -> Authenticator {
    let metrics = Arc::new(AuthMetrics::register(&prometheus::Registry::new()));
    rt.block_on(async {
        let auth = Authenticator::new(cfg, metrics, &[]);
        tokio::spawn(IssuerKeys::maintain(Arc::downgrade(&auth.issuers[0])));
        while !auth.not_ready().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        auth
    })
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

fn bench_tokens(c: &mut Criterion) {
    let (issuer, config, _dir) = setup();
    let rules = config.auth.issuers[0].rules.clone();
    let jwks = serde_json::json!({"keys": [issuer.jwk()]}).to_string();
    let key = keys::parse_jwks(jwks.as_bytes()).unwrap().keys.remove(0);
    let tok = issuer.mint(&entra_claims("mfa", 3600));
    let entra = config.auth.issuers[0].profile.clone();

    c.bench_function("token/verify_new (parse + RS256 + claims + classify)", |b| {
        b.iter(|| {
            let p = token::parse(black_box(&tok), 16 * 1024).unwrap();
            keys::verify_signature(&p, &rules, &key).unwrap();
            token::check_claims(&p.claims, &rules, mfa_gateway::auth::unix_now()).unwrap();
            black_box(profile::read(&p.claims, &entra).kind)
        })
    });
    c.bench_function("token/parse_only", |b| b.iter(|| token::parse(black_box(&tok), 16 * 1024).unwrap()));
    {
        // What a verification costs when the library re-parses the key each time (as
        // jsonwebtoken::crypto::verify does) against the gateway's pre-parsed key.
        use base64::Engine;
        let p = token::parse(&tok, 16 * 1024).unwrap();
        let jwk = issuer.jwk();
        let decoding =
            jsonwebtoken::DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
                .unwrap();
        let sig_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&p.signature);
        c.bench_function("signature/RS256, key parsed per call (jsonwebtoken::crypto::verify)", |b| {
            b.iter(|| jsonwebtoken::crypto::verify(&sig_b64, p.signing_input.as_bytes(), &decoding, p.alg).unwrap())
        });
        c.bench_function("signature/RS256, key parsed once (Key::verify)", |b| {
            b.iter(|| key.verify(p.alg, p.signing_input.as_bytes(), &p.signature).unwrap())
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let auth = ready_authenticator(&rt, &config.auth);
    let headers = bearer(&tok);
    let replays = mfa_gateway::auth::replay::ReplayStore::new(16);
    let presented = mfa_gateway::auth::Presented {
        method: "GET",
        path: "/v1/customers",
        origin: None,
        required: None,
        replays: &replays,
        cert: None,
    };
    // Twice: a token is cached on its second sighting.
    for _ in 0..2 {
        rt.block_on(auth.verify(&headers, &presented)).unwrap();
    }
    c.bench_function("token/verify_cached (Authenticator::verify, cache hit)", |b| {
        b.iter(|| ready(auth.verify(black_box(&headers), &presented)).unwrap())
    });

    // Many clients each sending its own token: 3000 tokens cycling through a 1000-entry cache,
    // so most lookups miss and pay for the signature, the doorkeeper and the cache's upkeep.
    let mut small = config.auth.clone();
    small.cache_max_entries = 1_000;
    let auth = ready_authenticator(&rt, &small);
    let many: Vec<HeaderMap> = (0..3_000)
        .map(|i| {
            let mut claims = entra_claims("mfa", 3600);
            claims["uti"] = format!("bench-{i}").into();
            bearer(&issuer.mint(&claims))
        })
        .collect();
    let mut next = 0;
    c.bench_function("token/3000 tokens cycling through a 1000-entry cache (Authenticator::verify)", |b| {
        b.iter(|| {
            ready(auth.verify(black_box(&many[next % many.len()]), &presented)).unwrap();
            next += 1;
        })
    });
}

fn bench_routes_and_policy(c: &mut Criterion) {
    let (_issuer, config, _dir) = setup();
    let table = RouteTable::new(&config.routes, config.defaults).unwrap();
    c.bench_function("routes/resolve (partner-center table)", |b| {
        b.iter(|| {
            table.resolve(
                &Method::GET,
                black_box("/v1/customers/11111111-2222-3333-4444-555555555555/subscriptions/abc"),
            )
        })
    });
    let route = table.resolve(&Method::GET, "/v1/customers/c/users");
    let caller =
        Caller { kind: TokenKind::AppUser, mfa: true, roles: &[], scopes: "user_impersonation", auth_time: None };
    c.bench_function("policy/decide", |b| b.iter(|| policy::decide(black_box(route), black_box(&caller), 0)));
}

fn bench_headers(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("authorization", "Bearer abc.def.ghi"),
        ("connection", "keep-alive"),
        ("x-request-id", "0123456789abcdef0123456789abcdef"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let screen = mfa_gateway::headers::Screen::new("x-mfa-gateway-", true, &Default::default());
    c.bench_function("headers/receive (typical request: Connection applied, nothing else to remove)", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                screen.receive(http::Version::HTTP_11, &mut h, |_, _| {});
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("path/check (/v1/customers/{id}/users)", |b| {
        b.iter(|| {
            mfa_gateway::path::check(criterion::black_box("/v1/customers/aaaabbbb-0000-cccc-1111-dddd2222eeee/users"))
        })
    });
}

/// The status report's table of users without MFA, at its cap: a user it knows, against a
/// stream of 100 000 users it has never seen (each one evicts the user seen longest ago).
fn bench_report(c: &mut Criterion) {
    let cfg = ReportConfig::default();
    let report = Report::new(cfg.clone());
    let record = |user: &str, t: i64| {
        report.record(&Observation {
            unix_secs: t,
            route: "customers",
            kind: TokenKind::AppUser,
            mfa: false,
            app: "11111111-2222-3333-4444-555555555555",
            user: Some(user),
            tenant: Some("aaaabbbb-0000-cccc-1111-dddd2222eeee"),
            bound: false,
        })
    };
    let t = 1_700_000_000;
    for i in 0..cfg.max_users {
        record(&format!("filler{i}@contoso.example"), t);
    }
    let new_users: Vec<String> = (0..100_000).map(|i| format!("user{i}@contoso.example")).collect();
    c.bench_function("report/record (known user, table full)", |b| {
        b.iter(|| record(black_box("filler9999@contoso.example"), t))
    });
    let mut next = 0;
    c.bench_function("report/record (new user each time, table full)", |b| {
        b.iter(|| {
            record(black_box(&new_users[next % new_users.len()]), t);
            next += 1;
        })
    });
}

/// What a DPoP-bound request costs beyond a bearer one: its proof, checked in full (signature
/// under the proof's own key, claims, thumbprint). Proofs are made once per request and never
/// cached, so this is paid on every request.
fn bench_dpop(c: &mut Criterion) {
    use mfa_gateway::auth::dpop;
    use mfa_gateway::dev::DpopKey;
    let token = DevIssuer::generate("k1").mint(&entra_claims("mfa", 3600));
    let now = mfa_gateway::auth::unix_now();
    let htu = dpop::normalize_htu("https://api.example.com/v1/customers").unwrap();
    let expected = dpop::Expected { method: "GET", htu: &htu, access_token: &token, now, window: 60, nonces: None };
    for key in [DpopKey::es256(), DpopKey::ed25519()] {
        let proof = key.proof("GET", "https://api.example.com/v1/customers", &token, "bench", now);
        assert!(dpop::check(&proof, &expected).is_ok());
        c.bench_function(&format!("dpop/proof check, {} (dpop::check)", key.alg()), |b| {
            b.iter(|| dpop::check(black_box(&proof), &expected).unwrap())
        });
    }
}

criterion_group!(benches, bench_tokens, bench_routes_and_policy, bench_headers, bench_report, bench_dpop);
criterion_main!(benches);
