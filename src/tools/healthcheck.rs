//! `mjgate healthcheck`: probes a running gateway's `/healthz` or `/readyz`, for container health checks
//! in images that have no shell or curl.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid URL: {0}")]
    Url(#[from] http::uri::InvalidUri),
    #[error("request failed: {0}")]
    Request(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(http::StatusCode),
}

/// GETs `url` and succeeds on a 2xx answer within `timeout`.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let uri: Uri = url.parse()?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| ProbeError::Request(e.to_string()))?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
        .map_err(|e| ProbeError::Request(e.to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(ProbeError::Status(response.status()))
    }
}
