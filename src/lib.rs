//! mfa-gateway: a reverse proxy that verifies bearer tokens and enforces MFA per route.
//!
//! A request goes listener -> gateway -> auth -> proxy; open the files in that order.
//!
//! The public modules are the library's surface, public on purpose: the binary runs `app`,
//! `demo` and `fleet` on a `config`; the benches and fuzz targets call the pure parts
//! (`auth::token`, `auth::keys`, `auth::policy`, `headers::Screen`, `path::check`, `routes`,
//! `report`); the tests mint tokens and serve keys with `dev`. Everything else is crate-private.

#![deny(clippy::too_many_lines)]
#![deny(unreachable_pub)]
// Not `forbid`: the heap trim (heap.rs) is the one documented exception.
#![deny(unsafe_code)]

pub(crate) mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub(crate) mod authz;
pub mod config;
pub mod demo;
pub mod dev;
pub mod error_chain;
pub(crate) mod fetch;
pub mod fleet;
pub(crate) mod gateway;
pub(crate) mod guarded;
pub mod headers;
pub(crate) mod heap;
pub(crate) mod hop_by_hop;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod outstanding;
pub mod path;
pub(crate) mod proxy;
pub(crate) mod ratios;
pub(crate) mod refusal;
pub(crate) mod reload;
pub mod report;
pub(crate) mod report_csv;
pub(crate) mod report_page;
pub mod request_end;
pub(crate) mod request_id;
pub mod routes;
pub(crate) mod snapshot;
pub(crate) mod tls;
pub(crate) mod tunnel;

use config::{Config, LogConfig, LogFormat};

/// Installs the global tracing subscriber. `RUST_LOG`, when set, overrides `log.filter`.
pub fn init_logging(log: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&log.filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Builds the runtime, serves until SIGTERM or SIGINT, goes lame duck, drains, and returns the
/// exit code.
pub fn run(config: Config) -> i32 {
    // One worker: a current-thread runtime does the same work without cross-thread wake-ups.
    let mut rt = match config.server.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mfa-gateway: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let running = match app::start(config).await {
            Ok(r) => r,
            Err(e) => {
                let e = error_chain::describe(&e);
                tracing::error!(error = %e, "start-up failed");
                eprintln!("mfa-gateway: {e}");
                return 1;
            }
        };
        wait_for_signal().await;
        running.drain_and_stop(wait_for_signal()).await;
        0
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
