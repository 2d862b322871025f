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

/// `method url` with `Authorization: Bearer {token}`: the answer's status and body, within `timeout`
/// (`mjgate inspect` and `mjgate purge`).
pub async fn admin_call(
    method: http::Method,
    url: &str,
    token: &str,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), ProbeError> {
    use http_body_util::BodyExt;
    let uri: Uri = url.parse()?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .map_err(|e| ProbeError::Request(e.to_string()))?;
    let answer = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| ProbeError::Request(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ProbeError::Request(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
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
