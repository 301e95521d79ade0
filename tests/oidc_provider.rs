//! Against a real, certified OpenID Provider (the npm registry's `oidc-provider`, run by
//! `tests/oidc/provider.mjs`): RFC 9068 access tokens from real authorization-code and
//! client-credentials flows, configured only as the README says, and a key the provider starts
//! signing with right after the gateway loaded its key set.
//!
//! Needs Node.js and `npm install --prefix tests/oidc` (`.ci/run` does both).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use support::*;

/// The provider process, spoken to one line at a time.
struct Op {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    issuer: String,
}

impl Op {
    fn start() -> Op {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        assert!(
            std::path::Path::new(dir).join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm install --prefix tests/oidc`"
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node on PATH");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut op = Op { child, stdin, lines, issuer: String::new() };
        op.issuer = op.answer("ready");
        op
    }

    /// The next line starting with `word`, without it. The provider's own notices share stdout
    /// and are skipped; the script's `error` lines fail the test.
    fn answer(&self, word: &str) -> String {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(30)).expect("the provider answers");
            if let Some(rest) = line.strip_prefix(word) {
                return rest.trim().to_string();
            }
            assert!(!line.starts_with("error"), "the provider script failed: {line}");
        }
    }

    fn ask(&mut self, command: &str, word: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.answer(word)
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node"]
async fn rfc9068_tokens_from_a_real_provider_and_a_key_rotated_after_start_up() {
    let mut op = tokio::task::block_in_place(Op::start);
    let upstream = echo_upstream().await;
    // Configured as the README's provider table says for an RFC 9068 provider: profile only.
    let text = config_text(
        upstream,
        &format!(
            "[[issuer]]\nissuer = \"{iss}\"\ndiscovery = \"{iss}/.well-known/openid-configuration\"\n\
             profile = \"rfc9068\"\naudiences = [\"https://api.partnercenter.microsoft.com\"]\n{ROUTES}",
            iss = op.issuer
        ),
    );
    let gw = start(&text).await;
    wait_ready(&gw).await;

    // The provider starts signing with a new key right after the gateway loaded the set.
    let kid = op.ask("rotate", "rotated");
    let mut token = |what: &str| tokio::task::block_in_place(|| op.ask(what, "token"));
    let (mfa, nomfa, app) = (token("user mfa"), token("user pwd"), token("client"));

    let (status, _, body) = get(gw.addr, "/v1/customers/c1/users", Some(&mfa)).await;
    assert_eq!(status, StatusCode::OK, "a token under the new key {kid} passes on its first request: {body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-token-kind"), "app_user");
    assert_eq!(echoed(&body, "x-mfa-gateway-app-id"), "web");
    assert_eq!(echoed(&body, "x-mfa-gateway-user"), "alice");
    let refetches = "mfa_gateway_key_refetches_total{issuer=\"".to_string() + &op.issuer + "\",result=\"ok\"}";
    assert_eq!(metric(&gw, &refetches).await, 1.0);

    for path in ["/v1/offers", "/v1/customers/c1/users"] {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {nomfa}\r\nConnection: close\r\n\r\n");
        let resp = String::from_utf8(raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401 Unauthorized - MFA required\r\n"), "{path}: {resp}");
    }

    let (status, _, body) = get(gw.addr, "/v1/offers", Some(&app)).await;
    assert_eq!(status, StatusCode::OK, "client credentials: app-only on an mfa route: {body}");
    assert_eq!(echoed(&body, "x-mfa-gateway-token-kind"), "app_only");
    assert_eq!(echoed(&body, "x-mfa-gateway-app-id"), "reporting-job");
    assert_eq!(get(gw.addr, "/v1/customers/c1/users", Some(&app)).await.0, StatusCode::FORBIDDEN);

    // One App+User with MFA, two without, two app-only: the status report's ratio is 1/3.
    let (_, _, body) = get(gw.admin_addr, "/report", None).await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        r["totals"],
        serde_json::json!({"app_user_with_mfa": 1, "app_user_without_mfa": 2, "app_only": 2}),
        "{body}"
    );
    assert_eq!(r["users_without_mfa"][0]["user"], "alice");
}
