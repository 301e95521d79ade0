//! GET of a small JSON document over http or https, within a time limit and a size limit: the
//! key sets' discovery documents and JWKS, and the fleet report's Prometheus queries.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;

pub type Client = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An http-or-https client trusting what `tls` trusts.
pub fn client(tls: rustls::ClientConfig, connect_timeout: Option<Duration>) -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(crate::tls::https_connector(tls, false, connect_timeout))
}

/// The status and body (at most `limit` bytes), all within `timeout`. Errors read
/// `GET <uri>: <why>`, with every cause of a connection failure.
pub async fn get(
    client: &Client,
    uri: &http::Uri,
    limit: usize,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let req = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("mfa-gateway/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|e| format!("GET {uri}: {e}"))?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("GET {uri}: {}", crate::error_chain::describe(&e)))?;
        let status = resp.status();
        let body =
            Limited::new(resp.into_body(), limit).collect().await.map_err(|e| format!("GET {uri}: body: {e}"))?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("GET {uri}: timed out"))?
}
