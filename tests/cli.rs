//! The real binary: `check` exit codes and messages, and a graceful drain on SIGTERM.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mfa-gateway");

fn check(text: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("mfa-gw-check-{}-{}", std::process::id(), text.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&file).output().unwrap();
    let msg = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap(), msg)
}

#[test]
fn shipped_configs_pass_check() {
    for file in ["config/gateway.toml", "config/partner-center.toml", "config/bench.toml", "config/bench-tls.toml"] {
        let out = Command::new(BIN).args(["check", "--config", file]).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{file}: {said}");
        assert!(!said.contains("warning"), "{file}: {said}");
    }
    // The image's default: both ports on every interface, so /report warns until a token file
    // is mounted (it answers 403 meanwhile), and nothing else.
    let out = Command::new(BIN).args(["check", "--config", "config/docker.toml"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let warnings: Vec<&str> = said.lines().filter(|l| l.starts_with("warning")).collect();
    assert!(warnings.len() == 1 && warnings[0].contains("[report].token_file"), "{said}");
}

#[test]
fn check_warns_of_valid_but_dangerous_issuers() {
    let issuer = |iss: &str, source: &str, tenants: &str| {
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[issuer]]\nissuer = \"{iss}\"\n{source}\n\
             audiences = [\"api\"]\n{tenants}\n{}",
            if iss.contains("windows.net") { "" } else { "profile = \"rfc9068\"\n" }
        )
    };
    let any_tenant = "takes tokens from any tenant and has no tenants list";
    let plain_http = "fetches its keys over plain http";
    let cases = [
        (
            issuer("https://sts.windows.net/{tenantid}/", "discovery = \"https://login.example/x\"", ""),
            vec![any_tenant],
        ),
        (
            issuer(
                "https://sts.windows.net/{tenantid}/",
                "discovery = \"https://login.example/x\"",
                "tenants = [\"aaaabbbb-0000-cccc-1111-dddd2222eeee\"]",
            ),
            vec![],
        ),
        (issuer("https://idp.example/", "jwks_uri = \"http://keys.example/jwks.json\"", ""), vec![plain_http]),
        (issuer("https://idp.example/", "discovery = \"http://10.0.0.5/.well-known/x\"", ""), vec![plain_http]),
        (issuer("https://idp.example/", "jwks_uri = \"http://127.0.0.1:8080/jwks.json\"", ""), vec![]),
        (issuer("https://idp.example/", "jwks_uri = \"http://localhost:8080/jwks.json\"", ""), vec![]),
        (issuer("https://idp.example/", "jwks_uri = \"http://[::1]:8080/jwks.json\"", ""), vec![]),
        (
            issuer("https://sts.windows.net/{tenantid}/", "jwks_uri = \"http://keys.example/jwks.json\"", ""),
            vec![any_tenant, plain_http],
        ),
    ];
    for (text, expected) in cases {
        let (code, said) = check(&text);
        assert_eq!(code, 0, "{text}\n{said}");
        for w in [any_tenant, plain_http] {
            assert_eq!(said.contains(w), expected.contains(&w), "{w:?} for\n{text}\n{said}");
        }
    }
}

#[test]
fn bad_configs_exit_64_naming_the_key_and_problem() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[defaults]\nrequire = \"public\"\n";
    let cases = [
        (format!("{base}[server]\nlisten = \"0.0.0.0:1\"\nlisen = 1\n"), vec!["unknown field `lisen`", "[server]", "line 7"]),
        (base.replace("http://127.0.0.1:1", "ftp://x"), vec!["upstream.url", "scheme must be http or https"]),
        (base.replace("http://127.0.0.1:1", "not a url"), vec!["upstream.url", "bad URL"]),
        (format!("{base}[server]\nidle_timeout = \"soon\"\n"), vec!["server.idle_timeout", "bad duration \"soon\""]),
        (
            format!("{base}[[route]]\nname = \"a\"\npath = \"/a\"\nrequire = \"public\"\n[[route]]\nname = \"a\"\npath = \"/b\"\nrequire = \"public\"\n"),
            vec!["route[1].name", "duplicate route name \"a\""],
        ),
        (format!("{base}[[route]]\nname = \"a\"\npath = \"/a\"\nrequire = \"mfa\"\n"), vec!["issuer", "no [[issuer]]"]),
        ("[server]\n".to_string(), vec!["upstream", "missing table [upstream]"]),
        (
            format!("{base}[server.http2]\nmax_concurrent_streams = 0\n"),
            vec!["server.http2.max_concurrent_streams", "between 1 and 65536"],
        ),
        (format!("{base}[server.http2]\nmax_header_list_size = 10\n"), vec!["server.http2.max_header_list_size"]),
        (format!("{base}[server]\ndrop_underscore_headers = \"yes\"\n"), vec!["drop_underscore_headers", "bool"]),
        (
            format!("{base}[[route]]\nname = \"a\"\npath = \"/a\"\nrequire = \"sometimes\"\n"),
            vec!["unknown variant `sometimes`"],
        ),
        (
            format!("{base}[challenge]\nstep_up = \"entra_claims\"\n"),
            vec!["challenge.auth_context", "entra_claims"],
        ),
        (
            format!("{base}[[route]]\nname = \"a\"\npath = \"/a\"\nrequire = \"mfa\"\nstep_up = \"entra_claims\"\n"),
            vec!["challenge.auth_context", "route[0]"],
        ),
        (
            format!("{base}[[route]]\nname = \"a\"\npath = \"/a\"\nrequire = \"token\"\nmax_auth_age = \"10m\"\n"),
            vec!["route[0].max_auth_age", "MFA routes only"],
        ),
        (format!("{base}[challenge]\nacr_values = [\"a\\\"b\"]\n"), vec!["challenge.acr_values"]),
        (
            format!("{base}[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nreload_interval = \"30s\"\n"),
            vec!["server.tls.reload_interval", "no longer used"],
        ),
        (
            format!("{base}[[route]]\nname = \"unmatched\"\npath = \"/a\"\nrequire = \"public\"\n"),
            vec!["route[0].name", "match no route"],
        ),
        (
            base.replace("url = \"http://127.0.0.1:1\"\n", "url = \"http://127.0.0.1:1\"\nclient_key = \"k.pem\"\n"),
            vec!["upstream.client_key", "https://"],
        ),
        (format!("{base}[report]\ntoken_file = \"missing.secret\"\n"), vec!["report.token_file", "cannot read"]),
        (
            base.replace("url = \"http://127.0.0.1:1\"\n", "url = \"http://127.0.0.1:1\"\nmax_connections = 0\n"),
            vec!["upstream.max_connections", "at least 1"],
        ),
        (format!("{base}[authz]\nlisten = \"127.0.0.1:9902\"\n"), vec!["authz.front", "required with authz.listen"]),
        (
            format!("{base}[authz]\nlisten = \"127.0.0.1:9902\"\nfront = \"traefik\"\nuri_header = \"x-uri\"\n"),
            vec!["authz.method_header", "for nginx"],
        ),
        (
            format!("{base}[authz]\nlisten = \"127.0.0.1:9902\"\nfront = \"nginx\"\npath_prefix = \"/a\"\n"),
            vec!["authz.path_prefix", "envoy"],
        ),
        (format!("{base}[authz]\nlisten = \"127.0.0.1:9902\"\nfront = \"haproxy\"\n"), vec!["unknown variant `haproxy`"]),
        (format!("{base}[authz]\nfront = \"nginx\"\n"), vec!["authz.listen", "without listen"]),
        (
            format!("{base}[authz]\nlisten = \"127.0.0.1:9902\"\nfront = \"traefik\"\nclient_cert = true\nclient_cert_header = \"x-cert\"\n"),
            vec!["authz.client_cert_header", "front = \"nginx\" with client_cert = true"],
        ),
        (
            format!("{base}[authz]\nlisten = \"127.0.0.1:9902\"\nfront = \"nginx\"\nclient_cert_header = \"x-cert\"\n"),
            vec!["authz.client_cert_header", "client_cert = true"],
        ),
        (
            format!("{base}[authz]\nlisten = \"127.0.0.1:9902\"\nfront = \"nginx\"\nclient_cert = true\nclient_cert_header = \"x cert\"\n"),
            vec!["authz.client_cert_header", "not a header name"],
        ),
        (
            format!("{base}[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\nclient_auth = \"any\"\n"),
            vec!["server.tls.client_auth", "trusts no CA"],
        ),
        (format!("{base}[server]\npublic_origin = \"https://api.example.com/v1\"\n"), vec!["server.public_origin", "no path"]),
        (format!("{base}[dpop]\nnonce_step = \"30s\"\n"), vec!["dpop.nonce_step", "nonce_secret_file"]),
        (format!("{base}[dpop]\nmax_proofs = 10\n"), vec!["dpop.max_proofs", "between 1000"]),
        (format!("{base}[dpop]\nnonce_secret_file = \"missing.secret\"\n"), vec!["dpop.nonce_secret_file", "cannot read"]),
        (
            format!("{base}[[route]]\nname = \"a\"\npath = \"/a\"\nrequire = \"public\"\nbinding = \"dpop\"\n"),
            vec!["route[0].binding", "public route"],
        ),
    ];
    for (text, needles) in cases {
        let (code, msg) = check(&text);
        assert_eq!(code, 64, "{text}\n{msg}");
        assert!(msg.contains("gw.toml"), "names the file: {msg}");
        for n in needles {
            assert!(msg.contains(n), "{msg:?} lacks {n:?}");
        }
    }
    let (code, _) = check(base);
    assert_eq!(code, 0);
}

#[test]
fn issuers_other_than_entra_must_name_a_profile() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[issuer]]\njwks_uri = \"http://127.0.0.1:1/k\"\n\
                audiences = [\"api\"]\n";
    let cases = [
        (
            format!("{base}issuer = \"https://kc.example/realms/a\"\n"),
            vec!["issuer[0].profile", "required for \"https://kc.example/realms/a\"", "rfc9068"],
        ),
        (
            format!("{base}issuer = \"https://op.example/\"\nprofile = \"okta\"\n"),
            vec!["unknown variant `okta`", "rfc9068"],
        ),
        (
            format!(
                "{base}issuer = \"https://op.example/\"\nprofile = \"rfc9068\"\napp_only = [{{ claim = \"gty\" }}]\n"
            ),
            vec!["issuer[0].app_only[0]", "exactly one of equals, equals_claim or starts_with"],
        ),
        (
            format!("{base}issuer = \"https://op.example/\"\nprofile = \"rfc9068\"\napp_only = []\n"),
            vec!["issuer[0].app_only", "at least one condition"],
        ),
        (
            format!("{base}issuer = \"https://sts.windows.net/{{tenantid}}/\"\n[mfa]\nacr = [\"1\"]\n"),
            vec!["issuer[0].mfa.acr", "\"1\" is Entra's plain sign-in level"],
        ),
    ];
    for (text, needles) in cases {
        let (code, msg) = check(&text);
        assert_eq!(code, 64, "{text}\n{msg}");
        for n in needles {
            assert!(msg.contains(n), "{msg:?} lacks {n:?}");
        }
    }
    for ok in [
        format!("{base}issuer = \"https://sts.windows.net/{{tenantid}}/\"\n"),
        format!("{base}issuer = \"https://login.microsoftonline.com/{{tenantid}}/v2.0\"\n"),
        format!("{base}issuer = \"https://op.example/\"\nprofile = \"rfc9068\"\n"),
        format!("{base}issuer = \"https://op.example/\"\nprofile = \"entra\"\n"),
    ] {
        assert_eq!(check(&ok).0, 0, "{ok}");
    }
}

#[test]
fn missing_file_exits_64() {
    let out = Command::new(BIN).args(["check", "--config", "/nonexistent/gw.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let arrived = Arc::new(AtomicBool::new(false));
    let seen = arrived.clone();
    let up = upstream(move |_req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            seen.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(full("finished"))
        }
    })
    .await;
    let mut gw = Binary::start(&public_config(up, "[log]\nformat = \"json\"\n[audit]\nenabled = true\n"), None);
    let addr = gw.addr;
    // A token rides along (the route is public, so it is forwarded, never verified): it must
    // reach no log line, audit event or not.
    let token = mfa_gateway::dev::DevIssuer::generate("k1").mint(&mfa_gateway::dev::entra_claims("mfa", 600));
    let sent = token.clone();
    let pending = tokio::spawn(async move { get(addr, "/work", Some(&sent)).await });
    eventually("the request at the upstream", Duration::from_secs(5), async || arrived.load(Ordering::SeqCst)).await;
    let kill = Command::new("kill").args(["-TERM", &gw.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let (status, _, body) = pending.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "finished"));
    let (exit, rest) = tokio::task::spawn_blocking(move || (gw.wait(), gw.lines())).await.unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(rest.iter().any(|l| l.contains("draining")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("mfa_gateway::audit") && l.contains("\"route\":\"unmatched\"")), "{rest:?}");
    // Neither the Authorization header, nor the token, nor its signature reach the log.
    let signature = token.rsplit('.').next().unwrap();
    for l in &rest {
        assert!(!l.to_lowercase().contains("authorization") && !l.contains(&token[..40]), "{l}");
        assert!(!l.contains(&signature[..24]), "{l}");
    }
}

#[test]
fn the_fleet_report_says_when_prometheus_cannot_be_asked() {
    let report = |args: &[&str]| {
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_mfa-gateway")).arg("report").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Nothing listens on port 1 of loopback: 69, not clap's 2 for a usage error.
    let (code, msg) = report(&["--prometheus", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(69), "{msg}");
    assert!(msg.contains("cannot query Prometheus at http://127.0.0.1:1"), "{msg}");
    let (code, msg) = report(&["--prometheus", "http://127.0.0.1:1", "--window", "seven days"]);
    assert_eq!(code, Some(64), "{msg}");
    assert!(msg.contains("--window"), "{msg}");
    let (code, msg) = report(&["--prometheus", "http://127.0.0.1:1", "--fail-below", "95"]);
    assert_eq!(code, Some(64), "{msg}");
    let (code, msg) = report(&["--no-such-flag"]);
    assert_eq!(code, Some(2), "{msg}");
    // The report secret: a file that cannot be read, or an empty one, is a usage error named as such.
    let (code, msg) = report(&["--prometheus", "http://127.0.0.1:1", "--report-token-file", "/nonexistent/secret"]);
    assert_eq!(code, Some(64), "{msg}");
    assert!(msg.contains("cannot read --report-token-file /nonexistent/secret"), "{msg}");
    let empty = temp_dir("report-secret").join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let (code, msg) = report(&["--prometheus", "http://127.0.0.1:1", "--report-token-file", empty.to_str().unwrap()]);
    assert_eq!((code, msg.contains("is empty")), (Some(64), true), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fetch_finds_a_bad_discovery_url_and_passes_a_good_one() {
    let (_issuer, keys) = issuer_with_keys(TEMPLATE_ISSUER).await;
    let good = keys.discovery_url();
    // A typo in the path: the key server answers 404.
    let typo = good.replace("openid-configuration", "openid-configuraton");
    for (url, code, said) in [(good, 0, "1 keys"), (typo, 69, "cannot fetch its keys")] {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[issuer]]\nissuer = \"{TEMPLATE_ISSUER}\"\ndiscovery = \"{url}\"\n\
             audiences = [\"api\"]\ntenants = [\"aaaabbbb-0000-cccc-1111-dddd2222eeee\"]\n"
        );
        let file = temp_dir("check-fetch").join("gw.toml");
        std::fs::write(&file, text).unwrap();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(BIN).args(["check", "--fetch", "--config"]).arg(&file).output().unwrap()
        })
        .await
        .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{url}: {printed}");
        assert!(printed.contains(&format!("issuer {TEMPLATE_ISSUER}: {said}")), "{url}: {printed}");
    }
}

/// `probe`, the container HEALTHCHECK: 0 on 200, 1 on another status, 69 when nothing answers.
#[tokio::test]
async fn probe_exits_by_what_the_admin_port_answers() {
    let gw = Binary::start(&public_config(echo_upstream().await, ""), None);
    gw.ready().await;
    let probe = |admin: String, path: &'static str| async move {
        let out = tokio::task::spawn_blocking(move || {
            Command::new(BIN).args(["probe", "--admin", &admin, "--path", path, "--timeout", "1s"]).output().unwrap()
        })
        .await
        .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(probe(gw.admin.to_string(), "/healthz").await.0, Some(0));
    assert_eq!(probe(gw.admin.to_string(), "/readyz").await.0, Some(0));
    let (code, said) = probe(gw.admin.to_string(), "/nope").await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("404"), "{said}");
    let (code, said) = probe(closed_port().await.to_string(), "/healthz").await;
    assert_eq!(code, Some(69), "{said}");
}
