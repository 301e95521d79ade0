//! One whole configuration, built for serving: routes, the authenticator (key sets and token
//! cache), the upstream client, the header screen, refusal style and the listener's settings.
//! A request loads the current snapshot once and keeps it to its end; a reload builds the next
//! snapshot from the new config and the previous snapshot, then swaps it in.

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::audit::UserIds;
use crate::auth::jwks::{IssuerKeys, KeySpec};
use crate::auth::metrics::AuthMetrics;
use crate::auth::Authenticator;
use crate::config::{AdminConfig, Config, ServerConfig};
use crate::headers::Screen;
use crate::proxy::Proxy;
use crate::ratios::RatioCounters;
use crate::refusal::RefusalStyle;
use crate::request_end::{Memo, RequestMetrics, Sinks};
use crate::routes::RouteTable;

pub(crate) struct Snapshot {
    /// The config this was built from; the next reload compares against it.
    pub config: Config,
    pub routes: RouteTable,
    /// Where each request's records go (`requests_total` handles by `Route::index`, ...).
    pub sinks: Arc<Sinks>,
    pub auth: Arc<Authenticator<Memo>>,
    pub proxy: Arc<Proxy>,
    pub screen: Screen,
    /// `<identity prefix>would-refuse`: set on requests a report-only route lets through.
    pub would_refuse: http::HeaderName,
    pub style: RefusalStyle,
    pub user_ids: Arc<UserIds>,
    /// The HTTP/1.1 and HTTP/2 server settings new connections are served with.
    pub http: Arc<auto::Builder<TokioExecutor>>,
    /// The same for the admin port, from `[admin]`.
    pub admin_http: Arc<auto::Builder<TokioExecutor>>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Why a config could not be built for serving. `Config` checks the same, so this is a config
/// that was not made by `Config::load` or `Config::parse`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("route[{index}]: {problem}")]
    Route { index: usize, problem: String },
    #[error("identity.header_prefix does not make header names")]
    HeaderPrefix(#[source] http::header::InvalidHeaderName),
}

/// What a build took over from the previous snapshot, for the reload's log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Carried {
    /// The authenticator whole: its verified-token cache survives.
    pub token_cache: bool,
    pub key_sets_kept: usize,
    pub key_sets_new: usize,
    /// The upstream client and its connection pool.
    pub upstream_pool: bool,
}

impl Snapshot {
    /// Builds a snapshot. With a `previous` one, it keeps what the change does not touch: the
    /// authenticator (and its token cache) when no setting that decides a token changed, each
    /// issuer's key set when that issuer's key settings and files did not change, and the
    /// upstream client when its settings and files did not. New key sets start fetching here.
    pub(crate) fn build(
        config: Config,
        previous: Option<&Snapshot>,
        requests: &Arc<RequestMetrics>,
        ratios: &Arc<RatioCounters>,
        metrics: &Arc<AuthMetrics>,
    ) -> Result<(Snapshot, Carried), BuildError> {
        let routes = RouteTable::new(&config.routes, config.defaults)
            .map_err(|(index, problem)| BuildError::Route { index, problem })?;
        let authz = config.authz.is_some();
        let counters =
            routes.all().map(|r| requests.route_counters(&r.name, &crate::refusal::possible(r, authz))).collect();
        let report_only =
            routes.all().filter(|r| !r.enforce && r.require != crate::routes::Requirement::Public).count();
        let changed: Vec<&Path> = previous.map(|p| p.config.changed(&config).collect()).unwrap_or_default();
        let untouched = |path: Option<&Path>| path.is_none_or(|p| !changed.contains(&p));
        let mut carried = Carried::default();

        // A key set whose key file or CA file changed is read again, as a new set.
        let spec_untouched = |s: &KeySpec| s.files().all(|f| untouched(Some(f)));
        let issuers_untouched = config.auth.issuers.iter().all(|i| spec_untouched(&i.keys));
        // The cache holds verdicts; what `[audit]` derives from a token is redone under new settings.
        let auth = match previous {
            Some(p) if p.config.auth == config.auth && issuers_untouched => {
                carried.token_cache = true;
                carried.key_sets_kept = p.auth.issuers.len();
                p.auth.clone()
            }
            _ => {
                let keep: Vec<Arc<IssuerKeys>> = previous
                    .map(|p| p.auth.issuers.iter().filter(|k| spec_untouched(&k.spec)).cloned().collect())
                    .unwrap_or_default();
                let auth = Authenticator::new(&config.auth, metrics.clone(), &keep);
                for k in &auth.issuers {
                    if keep.iter().any(|old| Arc::ptr_eq(old, k)) {
                        carried.key_sets_kept += 1;
                    } else {
                        carried.key_sets_new += 1;
                        tokio::spawn(IssuerKeys::maintain(Arc::downgrade(k)));
                    }
                }
                Arc::new(auth)
            }
        };
        let proxy = match previous {
            Some(p)
                if p.config.upstream == config.upstream
                    && config.upstream.tls_files.iter().all(|f| untouched(Some(f))) =>
            {
                carried.upstream_pool = true;
                p.proxy.clone()
            }
            _ => Arc::new(Proxy::new(&config.upstream)),
        };
        let user_ids = match previous {
            Some(p) if p.config.audit == config.audit => p.user_ids.clone(),
            _ => Arc::new(UserIds::new(&config.audit)),
        };
        let sinks = Arc::new(Sinks {
            metrics: requests.clone(),
            counters,
            ratios: ratios.clone(),
            audit: config.audit.enabled.then(|| user_ids.clone()),
        });
        let dpop_nonces = auth.nonces.clone();
        let snapshot = Snapshot {
            routes,
            sinks,
            screen: Screen::new(auth.header_prefix(), config.server.drop_underscore_headers, &config.forwarding),
            would_refuse: http::HeaderName::from_bytes(format!("{}would-refuse", auth.header_prefix()).as_bytes())
                .map_err(BuildError::HeaderPrefix)?,
            auth,
            proxy,
            style: RefusalStyle {
                dpop_nonces: dpop_nonces.clone(),
                challenge: config.auth.challenge.clone(),
                request_context: config.auth.request_context.clone(),
            },
            user_ids,
            http: Arc::new(http_builder(&config.server)),
            admin_http: Arc::new(admin_builder(&config.admin)),
            tls: config.server.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.built.clone())),
            config,
        };
        requests.report_only_routes.set(report_only as i64);
        Ok((snapshot, carried))
    }
}

fn http_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.http2.max_header_list_size)
        .max_concurrent_streams(cfg.http2.max_concurrent_streams)
        .max_pending_accept_reset_streams(cfg.http2.max_pending_reset_streams);
    builder
}

/// Probes and scrapes: small requests, a few streams.
fn admin_builder(cfg: &AdminConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(16 * 1024)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(16 * 1024).max_concurrent_streams(16);
    builder
}
