//! Each replica's `/report`, read from the address Prometheus scrapes it at. The report secret
//! goes only there: to targets Prometheus lists for the job, over https when asked, with no
//! redirect followed and a cap on what is read.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde::Deserialize;

use super::prometheus::Target;
use crate::fetch::Client;
use crate::report::{Recent, UserIdsShown, UserSeen};

/// A full report (10 000 recent requests and 10 000 users) is a few MiB of JSON.
const MAX_REPORT_BYTES: usize = 32 * 1024 * 1024;
const REPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// Replicas asked at once: enough for a large fleet, few enough to spare Prometheus's network.
const AT_ONCE: usize = 8;

/// The part of a replica's `/report` JSON the fleet report merges.
#[derive(Deserialize)]
pub(super) struct ReplicaTables {
    #[serde(default)]
    pub(super) instance: Option<String>,
    /// Absent from a gateway too old to say how it shows users.
    #[serde(default)]
    pub(super) user_ids: Option<UserIdsShown>,
    pub(super) users_without_mfa: Vec<UserSeen>,
    pub(super) recent_without_mfa: Vec<Recent>,
}

/// One target and what its `/report` gave.
pub(super) struct Read {
    /// Prometheus's `instance` label.
    pub(super) instance: String,
    pub(super) url: String,
    pub(super) tables: Result<ReplicaTables, String>,
}

/// How the fleet report asks the replicas.
pub(super) struct Asking {
    pub(super) client: Client,
    /// `Bearer <secret>`.
    pub(super) authorization: HeaderValue,
    pub(super) require_https: bool,
}

/// Every target's report, in the order of the targets.
pub(super) async fn read_all(asking: Arc<Asking>, targets: Vec<Target>) -> Vec<Read> {
    let permits = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|target| {
            let (asking, permits) = (asking.clone(), permits.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                read(&asking, target).await
            })
        })
        .collect();
    let mut reads = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(read) = task.await {
            reads.push(read);
        }
    }
    reads
}

async fn read(asking: &Asking, target: Target) -> Read {
    let instance = target.labels.get("instance").cloned().unwrap_or_else(|| target.scrape_url.clone());
    let uri = match report_uri(&target.scrape_url) {
        Ok(uri) => uri,
        Err(why) => return Read { instance, url: target.scrape_url.clone(), tables: Err(why) },
    };
    let url = uri.to_string();
    let tables = if asking.require_https && uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
        Err("not https, and --require-https sends the report secret over https only".to_string())
    } else {
        fetch(asking, &uri, &target).await
    };
    Read { instance, url, tables }
}

async fn fetch(asking: &Asking, uri: &http::Uri, target: &Target) -> Result<ReplicaTables, String> {
    let answer =
        crate::fetch::get_with(&asking.client, uri, Some(&asking.authorization), MAX_REPORT_BYTES, REPORT_TIMEOUT)
            .await
            .map_err(|e| {
                let mut why = crate::error_chain::describe(&e);
                if target.health == "down" {
                    why.push_str(&format!("; Prometheus's last scrape failed too: {}", target.last_error));
                }
                why
            })?;
    match answer {
        (StatusCode::OK, body) => serde_json::from_slice(&body).map_err(|e| format!("not a /report JSON answer: {e}")),
        (StatusCode::UNAUTHORIZED, _) => {
            Err("answered 401: its [report].token_file holds another secret than --report-token-file".into())
        }
        (StatusCode::FORBIDDEN, _) => {
            Err("answered 403: its /report is closed (no [report].token_file on a non-loopback admin address)".into())
        }
        (status, _) if status.is_redirection() => Err(format!("answered {status}; redirects are not followed")),
        (status, _) => Err(format!("answered {status}")),
    }
}

/// The replica's `/report` beside the `/metrics` Prometheus scrapes (under the same prefix, if
/// any), without the scrape's query parameters.
fn report_uri(scrape_url: &str) -> Result<http::Uri, String> {
    let scrape: http::Uri =
        scrape_url.parse().map_err(|e| format!("Prometheus gives {scrape_url:?} as its URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (scrape.scheme(), scrape.authority()) else {
        return Err(format!("Prometheus gives {scrape_url:?} as its URL, which has no scheme or host"));
    };
    let prefix = scrape.path().strip_suffix("/metrics").unwrap_or("");
    http::Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(format!("{prefix}/report"))
        .build()
        .map_err(|e| format!("no report URL beside {scrape_url:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn target(url: String) -> Target {
        Target {
            labels: [("instance".to_string(), "replica:9901".to_string())].into(),
            scrape_url: url,
            health: "up".into(),
            last_error: String::new(),
        }
    }

    fn asking(require_https: bool) -> Asking {
        let tls = crate::tls::client_config(None, None).unwrap();
        Asking {
            client: crate::fetch::client(tls, Some(Duration::from_secs(2))),
            authorization: HeaderValue::from_static("Bearer the-report-secret"),
            require_https,
        }
    }

    /// A server that answers each connection with `answer` (then `zeros` bytes of body), and
    /// counts the connections it had.
    async fn server(answer: String, zeros: usize) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = s.read(&mut [0; 4096]).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                    let chunk = vec![b'0'; 1 << 20];
                    for _ in 0..zeros.div_ceil(1 << 20) {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn require_https_sends_nothing_to_a_plain_http_replica() {
        let (addr, seen) = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".into(), 0).await;
        let read = read(&asking(true), target(format!("http://{addr}/metrics"))).await;
        assert!(read.tables.as_ref().is_err_and(|why| why.contains("not https")), "{:?}", read.tables.err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "no connection was made");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (elsewhere, seen) = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".into(), 0).await;
        let moved = format!("HTTP/1.1 302 Found\r\nlocation: http://{elsewhere}/report\r\ncontent-length: 0\r\n\r\n");
        let (addr, _) = server(moved, 0).await;
        let read = read(&asking(false), target(format!("http://{addr}/metrics"))).await;
        let why = read.tables.err().unwrap();
        assert_eq!(why, "answered 302 Found; redirects are not followed");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "the secret went nowhere else");
    }

    #[tokio::test]
    async fn an_answer_past_the_cap_is_cut_off() {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", MAX_REPORT_BYTES + (1 << 20));
        let (addr, _) = server(head, MAX_REPORT_BYTES + (1 << 20)).await;
        let read = read(&asking(false), target(format!("http://{addr}/metrics"))).await;
        let why = read.tables.err().unwrap();
        assert!(why.contains("body") && why.contains("length limit exceeded"), "{why}");
        assert_eq!(read.instance, "replica:9901");
    }

    #[test]
    fn the_report_is_asked_beside_the_metrics_without_the_scrape_parameters() {
        let at = |u: &str| report_uri(u).map(|u| u.to_string());
        assert_eq!(at("http://10.0.0.5:9901/metrics"), Ok("http://10.0.0.5:9901/report".into()));
        assert_eq!(at("https://pod:9901/gw/metrics?x=1"), Ok("https://pod:9901/gw/report".into()));
        assert_eq!(at("http://pod:9901/stats"), Ok("http://pod:9901/report".into()));
        assert!(at("/metrics").is_err());
    }
}
