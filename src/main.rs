//! CLI only: parse arguments, load and validate the config, start logging, hand over to `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mfa_gateway::config::{Config, LogConfig, LogFormat};

/// Exit status for a configuration error (sysexits EX_USAGE / EX_CONFIG family).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "mfa-gateway",
    version,
    about = "Reverse proxy that verifies bearer tokens and enforces MFA per route"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config until SIGTERM or SIGINT, then drain in-flight requests.
    Run {
        /// TOML config file (see config/gateway.toml for every key).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without binding anything: exit 0 if good, 64 with the key and the
    /// problem if not.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a self-contained demo: a dev issuer, an echo upstream and the gateway with the
    /// Partner Center profile; writes tokens and prints curl lines to try.
    Demo {
        /// Gateway address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin address (/healthz, /readyz, /metrics).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Where mfa.jwt, nomfa.jwt and app.jwt are written.
        #[arg(long)]
        tokens_dir: Option<PathBuf>,
        /// Serve HTTPS (HTTP/2 and HTTP/1.1) with a self-signed certificate for localhost.
        #[arg(long)]
        tls: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} routes, {} issuers, upstream {}://{})",
                    config.display(),
                    c.routes.len(),
                    c.auth.issuers.len(),
                    c.upstream.scheme,
                    c.upstream.authority
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(e),
        },
        Command::Run { config } => match Config::load(&config) {
            Ok(c) => {
                mfa_gateway::init_logging(&c.log);
                ExitCode::from(mfa_gateway::run(c) as u8)
            }
            Err(e) => config_error(e),
        },
        Command::Demo { listen, admin, tokens_dir, tls } => {
            mfa_gateway::init_logging(&LogConfig { format: LogFormat::Pretty, filter: "info".into() });
            let tokens_dir = tokens_dir.unwrap_or_else(|| std::env::temp_dir().join("mfa-gateway-demo"));
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
            match rt.block_on(mfa_gateway::demo::run(mfa_gateway::demo::DemoOptions { listen, admin, tokens_dir, tls }))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mfa-gateway demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn config_error(e: mfa_gateway::config::ConfigError) -> ExitCode {
    eprintln!("mfa-gateway: bad config: {e}");
    ExitCode::from(EXIT_CONFIG)
}
