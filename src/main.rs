//! CLI only: parse arguments, load and validate the config, start logging, hand over to `run`.

#![deny(clippy::too_many_lines)]
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mfa_gateway::config::{Config, LogConfig, LogFormat};

/// Exit status for a configuration error (sysexits EX_USAGE / EX_CONFIG family).
const EXIT_CONFIG: u8 = 64;
/// A service could not be had: `check --fetch` (an issuer's keys), `report` (Prometheus)
/// (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// `report --out`: the file cannot be written (sysexits EX_CANTCREAT).
const EXIT_CANTCREAT: u8 = 73;
/// `report`: written, but some replicas' /report could not be read (each is named, with why).
const EXIT_PARTIAL: u8 = 3;

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
        /// TOML config file to check, with every file it names (certificates, keys, key files).
        #[arg(long, short)]
        config: PathBuf,
        /// Also fetch every issuer's discovery document and keys (or read its key file), and say
        /// per issuer what was found; exit 69 if any issuer's keys cannot be had.
        #[arg(long)]
        fetch: bool,
    },
    /// The MFA status report across every replica: the ratio and its trend from the counters in
    /// Prometheus, and with --report-token-file the users without MFA from every replica's /report.
    Report(ReportArgs),
    /// Ask a running gateway's admin port whether it is healthy (for a container HEALTHCHECK):
    /// exit 0 on 200, 1 on another status, 69 when nothing answers.
    Probe {
        /// The admin address to ask.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// /healthz (the process serves), or /readyz (it also has every issuer's keys).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run a self-contained demo: a dev issuer, an echo upstream and the gateway with the
    /// Partner Center profile; writes tokens and prints curl lines to try.
    Demo {
        /// Gateway address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin address (/healthz, /readyz, /metrics, /report).
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

#[derive(clap::Args)]
struct ReportArgs {
    /// Prometheus base URL, e.g. http://prometheus:9090.
    #[arg(long)]
    prometheus: String,
    /// The window, as a Prometheus duration (7d, 24h, 90m); whole days (7d) also give the ratio
    /// per day.
    #[arg(long, default_value = "7d")]
    window: String,
    /// The scrape job of the gateways (the name the shipped alerts and ServiceMonitor use).
    #[arg(long, default_value = mfa_gateway::fleet::DEFAULT_JOB)]
    job: String,
    #[arg(long, value_enum, default_value = "text")]
    format: ReportFormat,
    /// Write the report here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit 1 when the App+User MFA ratio is below this (0 to 1), or there is none.
    #[arg(long)]
    fail_below: Option<f64>,
    /// A file holding the replicas' [report] secret: each target Prometheus scrapes for the job
    /// is asked for its /report with it, and their users and requests without MFA are merged.
    #[arg(long)]
    report_token_file: Option<PathBuf>,
    /// Send the report secret over https only (a replica scraped over http is left unread), and
    /// ask Prometheus over https only.
    #[arg(long)]
    require_https: bool,
    /// A PEM file of CA certificates to trust beside the system's, for Prometheus and the replicas.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
    Html,
    /// The users without MFA, one row each (as /report/users.csv).
    UsersCsv,
    /// The recent requests without MFA, newest first (as /report/recent.csv).
    RecentCsv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, fetch } => match Config::load(&config) {
            Ok(c) => {
                for w in c.warnings() {
                    println!("warning: {w}");
                }
                println!(
                    "{}: ok ({} routes, {} issuers, upstream {}://{})",
                    config.display(),
                    c.routes.len(),
                    c.auth.issuers.len(),
                    c.upstream.scheme,
                    c.upstream.authority
                );
                if fetch {
                    return fetch_keys(&c);
                }
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
        Command::Report(args) => fleet_report(&args),
        Command::Probe { admin, path, timeout } => probe(&admin, &path, timeout),
        Command::Demo { listen, admin, tokens_dir, tls } => {
            mfa_gateway::init_logging(&LogConfig { format: LogFormat::Pretty, filter: "info".into() });
            let tokens_dir = tokens_dir.unwrap_or_else(|| std::env::temp_dir().join("mfa-gateway-demo"));
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
            match rt.block_on(mfa_gateway::demo::run(mfa_gateway::demo::DemoOptions { listen, admin, tokens_dir, tls }))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mfa-gateway demo: {}", mfa_gateway::error_chain::describe(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `probe`: 0 when the admin port answers 200, 1 for another status, 69 when it does not answer.
fn probe(admin: &str, path: &str, timeout: std::time::Duration) -> ExitCode {
    let uri = match format!("http://{admin}{path}").parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("mfa-gateway probe: http://{admin}{path} is not a URL: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match rt.block_on(mfa_gateway::app::probe(&uri, timeout)) {
        Ok(http::StatusCode::OK) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("mfa-gateway probe: {uri} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mfa-gateway probe: {}", mfa_gateway::error_chain::describe(&e));
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `check --fetch`: each issuer's keys, fetched once; exit 69 when any cannot be had.
fn fetch_keys(c: &Config) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut failed = 0;
    for issuer in &c.auth.issuers {
        match rt.block_on(mfa_gateway::auth::fetch_keys(issuer)) {
            Ok(n) => println!("issuer {}: {n} keys", issuer.keys.name),
            Err(why) => {
                println!(
                    "issuer {}: cannot fetch its keys: {}",
                    issuer.keys.name,
                    mfa_gateway::error_chain::describe(&why)
                );
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("mfa-gateway: {failed} of {} issuers have no keys", c.auth.issuers.len());
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
    ExitCode::SUCCESS
}

/// Exit 0; 1 when `--fail-below` is not met; 3 when some replicas could not be read; 64 for bad
/// arguments; 69 when Prometheus cannot be asked; 73 when `--out` cannot be written.
fn fleet_report(args: &ReportArgs) -> ExitCode {
    use mfa_gateway::fleet::{self, Format};
    let secret = match report_arguments(args) {
        Ok(secret) => secret,
        Err(why) => {
            eprintln!("mfa-gateway report: {why}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let ask = fleet::Ask {
        prometheus: &args.prometheus,
        job: &args.job,
        window: &args.window,
        now: mfa_gateway::auth::unix_now(),
        report_secret: secret.as_deref(),
        ca_file: args.ca_file.as_deref(),
        require_https: args.require_https,
    };
    let report = match rt.block_on(fleet::fetch(&ask)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mfa-gateway report: {}", mfa_gateway::error_chain::describe(&e));
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let format = match args.format {
        ReportFormat::Text => Format::Text,
        ReportFormat::Json => Format::Json,
        ReportFormat::Html => Format::Html,
        ReportFormat::UsersCsv => Format::UsersCsv,
        ReportFormat::RecentCsv => Format::RecentCsv,
    };
    let body = fleet::render(&report, format);
    match &args.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, body) {
                eprintln!("mfa-gateway report: cannot write {}: {e}", path.display());
                return ExitCode::from(EXIT_CANTCREAT);
            }
        }
        None => print!("{body}"),
    }
    let partial = fleet::answered(&report).filter(|(read, listed)| read < listed);
    if let Some((read, listed)) = partial {
        eprintln!("mfa-gateway report: {read} of {listed} replicas answered; the user tables hold only theirs");
    }
    if !report.apart.is_empty() {
        eprintln!("mfa-gateway report: some replicas show users otherwise; their users are kept apart (JSON, HTML)");
    }
    match (args.fail_below, report.app_user_mfa_ratio) {
        (Some(min), Some(r)) if r < min => {
            eprintln!("mfa-gateway report: App+User MFA ratio {:.1} % is below {:.1} %", r * 100.0, min * 100.0);
            ExitCode::FAILURE
        }
        (Some(_), None) => {
            eprintln!("mfa-gateway report: no App+User requests in the window; nothing to hold to --fail-below");
            ExitCode::FAILURE
        }
        _ if partial.is_some() => ExitCode::from(EXIT_PARTIAL),
        _ => ExitCode::SUCCESS,
    }
}

/// The report's arguments checked, and the report secret read; or what is wrong with them.
fn report_arguments(args: &ReportArgs) -> Result<Option<String>, String> {
    let (window, job) = (&args.window, &args.job);
    if !mfa_gateway::fleet::valid_window(window) {
        return Err(format!("--window {window:?} is not a Prometheus duration (e.g. 7d, 24h, 90m)"));
    }
    if !mfa_gateway::fleet::valid_job(job) {
        return Err(format!("--job {job:?} cannot be a label value in a query"));
    }
    if args.fail_below.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return Err("--fail-below takes a ratio between 0 and 1 (0.95 for 95 %)".into());
    }
    if args.require_https && !args.prometheus.starts_with("https://") {
        return Err(format!("--require-https, but --prometheus {} is not https", args.prometheus));
    }
    let Some(path) = &args.report_token_file else {
        return Ok(None);
    };
    let secret = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --report-token-file {}: {e}", path.display()))?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(format!("--report-token-file {} is empty", path.display()));
    }
    Ok(Some(secret.to_string()))
}

fn config_error(e: mfa_gateway::config::ConfigError) -> ExitCode {
    eprintln!("mfa-gateway: bad config: {e}");
    ExitCode::from(EXIT_CONFIG)
}
