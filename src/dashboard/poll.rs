//! Fetching one service's endpoints. Every request has its own deadline, so one hung
//! service delays nothing else, and every failure becomes a message the page shows.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// A version list or a quality report is a few hundred kB at most; anything far larger
/// is not one of ours and is refused instead of buffered.
const MAX_BODY_BYTES: usize = 16 << 20;

/// One endpoint's answer: an HTTP status with its body (JSON when it parses, else the
/// text), or why there was no answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Fetched {
    Answer { status: u16, body: Value },
    Failed { error: String },
}

impl Fetched {
    /// The JSON body of a 2xx answer.
    pub fn ok_json(&self) -> Option<&Value> {
        match self {
            Fetched::Answer { status, body } if (200..300).contains(status) => Some(body),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Poller {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Poller {
    pub fn new(timeout: Duration) -> Poller {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        Poller { client, timeout }
    }

    /// `GET base+path`, within the timeout.
    pub async fn get(&self, base: &str, path: &str) -> Fetched {
        let url = format!("{base}{path}");
        match tokio::time::timeout(self.timeout, self.fetch(&url)).await {
            Ok(Ok((status, body))) => Fetched::Answer {
                status,
                body: parse_body(&body),
            },
            Ok(Err(error)) => Fetched::Failed { error },
            Err(_) => Fetched::Failed {
                error: format!("no answer within {} ms", self.timeout.as_millis()),
            },
        }
    }

    async fn fetch(&self, url: &str) -> Result<(u16, Bytes), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
        let resp = self.client.get(uri).await.map_err(|e| chain(&e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {}", chain(e.as_ref())))?;
        Ok((status, body.to_bytes()))
    }
}

fn parse_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).trim().to_string()))
}

/// "client error (Connect): tcp connect error: Connection refused (os error 111)".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_failure_with_the_reason() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = Poller::new(Duration::from_secs(2));
        let Fetched::Failed { error } = p.get(&format!("http://127.0.0.1:{port}"), "/stats").await
        else {
            panic!("a closed port answered");
        };
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let p = Poller::new(Duration::from_millis(200));
        let got = p.get(&format!("http://{addr}"), "/stats").await;
        assert!(
            matches!(&got, Fetched::Failed { error } if error.contains("200 ms")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn answers_keep_status_and_json_or_text() {
        use axum::{routing::get, Router};
        let app = Router::new()
            .route(
                "/j",
                get(|| async { axum::Json(serde_json::json!({"a": 1})) }),
            )
            .route(
                "/t",
                get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "loading\n") }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        let p = Poller::new(Duration::from_secs(2));
        let j = p.get(&base, "/j").await;
        assert_eq!(j.ok_json(), Some(&serde_json::json!({"a": 1})));
        let t = p.get(&base, "/t").await;
        assert_eq!(
            t,
            Fetched::Answer {
                status: 503,
                body: "loading".into()
            }
        );
        assert!(t.ok_json().is_none());
        let missing = p.get(&base, "/nope").await;
        assert!(matches!(missing, Fetched::Answer { status: 404, .. }));
    }
}
