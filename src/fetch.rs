//! GET of a small JSON document over http or https, within a time limit and a size limit: the
//! key sets' discovery documents and JWKS, and the fleet report's Prometheus queries and replica
//! reports. The client follows no redirect: a 3xx is an answer like any other.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;

pub(crate) type Client = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An http-or-https client trusting what `tls` trusts.
pub(crate) fn client(tls: rustls::ClientConfig, connect_timeout: Option<Duration>) -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(crate::tls::https_connector(tls, false, connect_timeout))
}

/// Why a GET gave no status and body. Its `Display` is this step alone; its sources carry the
/// rest (`error_chain::describe` writes the whole chain).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {uri}: cannot make the request")]
    Request { uri: http::Uri, source: http::Error },
    #[error("GET {uri}")]
    Exchange { uri: http::Uri, source: hyper_util::client::legacy::Error },
    #[error("GET {uri}: body")]
    Body { uri: http::Uri, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("GET {uri}: timed out")]
    TimedOut { uri: http::Uri },
}

/// The status and body (at most `limit` bytes), all within `timeout`.
pub(crate) async fn get(
    client: &Client,
    uri: &http::Uri,
    limit: usize,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), FetchError> {
    get_with(client, uri, None, limit, timeout).await
}

/// `get`, sending `authorization` (marked sensitive, so no debug output shows it).
pub(crate) async fn get_with(
    client: &Client,
    uri: &http::Uri,
    authorization: Option<&http::HeaderValue>,
    limit: usize,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), FetchError> {
    let mut req = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("mfa-gateway/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|source| FetchError::Request { uri: uri.clone(), source })?;
    if let Some(value) = authorization {
        let mut value = value.clone();
        value.set_sensitive(true);
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    let fut = async {
        let resp = client.request(req).await.map_err(|source| FetchError::Exchange { uri: uri.clone(), source })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|source| FetchError::Body { uri: uri.clone(), source })?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| FetchError::TimedOut { uri: uri.clone() })?
}
