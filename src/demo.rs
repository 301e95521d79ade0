//! `mfa-gateway demo`: a development issuer (key made in memory, discovery and JWKS on
//! loopback), an upstream that echoes the identity it was given, and the gateway running the
//! Partner Center profile in front of it (the first two live in `dev`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::dev::{entra_claims, start_echo_upstream, DevIssuer, KeyServer};

const PROFILE: &str = include_str!("../config/partner-center.toml");
/// The demo's one route with the RFC 9470 challenge (the profile keeps the mandated 401).
const STEP_UP_PATH: &str = "/demo/step-up";

/// The Partner Center profile with its key source, upstream and ports replaced.
pub fn profile_config(
    discovery: &str,
    upstream: &str,
    listen: &str,
    admin: &str,
    tls: Option<(&Path, &Path)>,
) -> Result<Config, DemoError> {
    let mut doc: toml::Table = PROFILE.parse()?;
    let set = |doc: &mut toml::Table, table: &str, key: &str, value: &str| {
        if let Some(toml::Value::Table(t)) = doc.get_mut(table) {
            t.insert(key.into(), toml::Value::String(value.into()));
        }
    };
    set(&mut doc, "server", "listen", listen);
    set(&mut doc, "admin", "listen", admin);
    set(&mut doc, "upstream", "url", upstream);
    if let (Some((cert, key)), Some(toml::Value::Table(server))) = (tls, doc.get_mut("server")) {
        let mut t = toml::Table::new();
        t.insert("cert".into(), toml::Value::String(cert.display().to_string()));
        t.insert("key".into(), toml::Value::String(key.display().to_string()));
        server.insert("tls".into(), toml::Value::Table(t));
    }
    // One route beside the profile's that shows the RFC 9470 step-up challenge.
    if let (Ok(toml::Value::Table(step_up)), Some(toml::Value::Array(routes))) = (
        format!("name = \"step-up-demo\"\npath = \"{STEP_UP_PATH}\"\nrequire = \"mfa\"\nstep_up = \"rfc9470\"\n")
            .parse::<toml::Table>()
            .map(toml::Value::Table),
        doc.get_mut("route"),
    ) {
        routes.insert(0, toml::Value::Table(step_up));
    }
    if let Some(toml::Value::Table(challenge)) = doc.get_mut("challenge") {
        challenge.insert("acr_values".into(), toml::Value::Array(vec![toml::Value::String("mfa".into())]));
    }
    if let Some(toml::Value::Array(issuers)) = doc.get_mut("issuer") {
        if let Some(toml::Value::Table(first)) = issuers.first_mut() {
            first.insert("discovery".into(), toml::Value::String(discovery.into()));
        }
    }
    Ok(Config::parse(&doc.to_string(), "partner-center profile (demo)", None)?)
}

pub struct DemoOptions {
    pub listen: String,
    pub admin: String,
    pub tokens_dir: PathBuf,
    /// Serve HTTPS with a self-signed certificate written next to the tokens.
    pub tls: bool,
}

/// Why the demo did not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot {what}")]
    Io { what: String, source: std::io::Error },
    #[error("cannot make a certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("the embedded profile")]
    Profile(#[from] toml::de::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
}

fn io(what: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> DemoError {
    move |source| DemoError::Io { what: what(), source }
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let issuer = DevIssuer::generate("demo-1");
    let keys = KeyServer::start(
        TcpListener::bind("127.0.0.1:0").await.map_err(io(|| "listen for the dev issuer".into()))?,
        json!({"keys": [issuer.jwk()]}),
        "https://sts.windows.net/{tenantid}/",
    );
    let upstream = TcpListener::bind("127.0.0.1:0").await.map_err(io(|| "listen for the demo upstream".into()))?;
    let upstream_url =
        format!("http://{}", upstream.local_addr().map_err(io(|| "listen for the demo upstream".into()))?);
    start_echo_upstream(upstream, "x-mfa-gateway-");

    std::fs::create_dir_all(&opts.tokens_dir).map_err(io(|| format!("create {}", opts.tokens_dir.display())))?;
    let tls_files = if opts.tls { Some(write_self_signed(&opts.tokens_dir)?) } else { None };
    let tls = tls_files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let config = profile_config(&keys.discovery_url(), &upstream_url, &opts.listen, &opts.admin, tls)?;
    // Tokens first: once /readyz answers 200 they are there to use.
    let paths = write_tokens(&issuer, &opts.tokens_dir)?;
    let running = crate::app::start(config).await?;
    for _ in 0..100 {
        if running.not_ready().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ca = tls_files.as_ref().map(|(c, _)| c.as_path());
    print_banner(running.addr, running.admin_addr, &paths, ca);
    crate::wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}

fn write_tokens(issuer: &DevIssuer, dir: &Path) -> Result<[PathBuf; 3], DemoError> {
    let mut out = Vec::new();
    for kind in ["mfa", "nomfa", "app"] {
        let path = dir.join(format!("{kind}.jwt"));
        std::fs::write(&path, issuer.mint(&entra_claims(kind, 12 * 3600)))
            .map_err(io(|| format!("write {}", path.display())))?;
        out.push(path);
    }
    Ok(out.try_into().expect("three paths"))
}

/// A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem).
fn write_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), DemoError> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).map_err(io(|| format!("write {}", cert.display())))?;
    std::fs::write(&key, ck.signing_key.serialize_pem()).map_err(io(|| format!("write {}", key.display())))?;
    Ok((cert, key))
}

fn print_banner(addr: SocketAddr, admin: SocketAddr, [mfa, nomfa, app]: &[PathBuf; 3], ca: Option<&Path>) {
    let (scheme, curl) = match ca {
        Some(ca) => ("https", format!("curl --cacert {} -i", ca.display())),
        None => ("http", "curl -i".to_string()),
    };
    let host = if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() };
    let cid = "11111111-2222-3333-4444-555555555555";
    println!(
        "\nmfa-gateway demo: gateway on {scheme}://{host} (admin http://{admin}), Partner Center profile,\n\
         dev issuer and echo upstream on loopback. Tokens (valid 12 h) are in {dir}.\n\n\
         # App+User token with MFA -> 200, the upstream echoes the identity it received\n\
         {curl} -H \"Authorization: Bearer $(cat {mfa})\" {scheme}://{host}/v1/customers/{cid}/subscriptions\n\n\
         # App+User token without MFA -> 401 Unauthorized - MFA required\n\
         {curl} -H \"Authorization: Bearer $(cat {nomfa})\" {scheme}://{host}/v1/customers/{cid}/subscriptions\n\n\
         # The same on a route that sends the RFC 9470 step-up challenge instead -> 401,\n\
         # WWW-Authenticate: Bearer error=\"insufficient_user_authentication\", ..., acr_values=\"mfa\"\n\
         {curl} -H \"Authorization: Bearer $(cat {nomfa})\" {scheme}://{host}{STEP_UP_PATH}\n\n\
         # App-only token on a GDAP operation -> 403 insufficient_scope\n\
         {curl} -H \"Authorization: Bearer $(cat {app})\" {scheme}://{host}/v1/customers/{cid}/users\n\n\
         # App-only token on a catalog lookup (no GDAP role needed) -> 200\n\
         {curl} -H \"Authorization: Bearer $(cat {app})\" {scheme}://{host}/v1/offers\n\n\
         # Readiness, the requests counted so far, and the MFA status report (open it in a browser too)\n\
         curl -i http://{admin}/readyz\n\
         curl -s http://{admin}/metrics | grep '^mfa_gateway_requests_total' | grep -v ' 0$'\n\
         curl -s http://{admin}/report\n\n\
         Ctrl-C stops the demo.",
        dir = mfa.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        mfa = mfa.display(),
        nomfa = nomfa.display(),
        app = app.display(),
    );
}
