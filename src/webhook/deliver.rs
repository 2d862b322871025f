//! One delivery attempt: resolve the hook (through the [guard](super::guard)), connect to one of the
//! very addresses that passed, `POST` the signed event over HTTP/1.1 (TLS with the hook's name for
//! `https`), read at most a little of the answer, follow no redirect, all within one deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::guard::{HookError, HookUrl};
use super::sign::SigningSecret;

/// The most of a receiver's answer that is read (then the connection is dropped).
const MAX_ANSWER: usize = 64 * 1024;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx: the event is delivered.
    Delivered(StatusCode),
    /// `410 Gone`: the receiver wants no more events for this hook.
    Gone,
    /// Any other status, a timeout or no connection: try again later.
    Failed(Failure),
    /// The hook resolves to an internal address (or not at all): never delivered.
    Refused(HookError),
}

/// Why an attempt failed, as the `result` label of `mjgate_webhook_attempts_total` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Status(StatusCode),
    Timeout,
    Connection(String),
}

impl Attempt {
    /// The attempt's `result` label.
    pub fn label(&self) -> &'static str {
        let class = |status: StatusCode| match status.as_u16() {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        match self {
            Attempt::Delivered(status) | Attempt::Failed(Failure::Status(status)) => class(*status),
            Attempt::Gone => "4xx",
            Attempt::Failed(Failure::Timeout) => "timeout",
            Attempt::Failed(Failure::Connection(_)) | Attempt::Refused(_) => "error",
        }
    }
}

/// What an attempt is made with that a reload may change: read afresh for every attempt.
#[derive(Debug, Clone)]
pub struct Terms {
    pub secret: Arc<SigningSecret>,
    pub allow_private: bool,
    pub timeout: Duration,
}

/// Makes delivery attempts: the TLS roots for `https` hooks and the bound on attempts under way; the
/// secret and deadline each attempt is given ([`Terms`]).
pub struct Deliverer {
    tls: tokio_rustls::TlsConnector,
    /// One permit per attempt under way: receivers that hang cannot make the gateway hold a
    /// connection (and its buffers, about 70 KB with TLS) for every pending hook at once.
    in_flight: tokio::sync::Semaphore,
}

impl Deliverer {
    pub fn new(tls: rustls::ClientConfig, max_in_flight: usize) -> Self {
        Deliverer {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            in_flight: tokio::sync::Semaphore::new(max_in_flight),
        }
    }

    /// One attempt to deliver event `id` (`body`, the task's JSON) to `hook`.
    pub async fn attempt(&self, terms: &Terms, hook: &HookUrl, id: &str, body: &Bytes) -> Attempt {
        // Never closed, so the acquire cannot fail; the attempt's deadline starts once it is this one's turn.
        let Ok(_turn) = self.in_flight.acquire().await else {
            return Attempt::Failed(Failure::Timeout);
        };
        let addresses = match hook.resolve(terms.allow_private).await {
            Ok(addresses) => addresses,
            // A name that does not resolve now may tomorrow (a DNS hiccup): tried again later.
            Err(HookError::Unresolved) => {
                return Attempt::Failed(Failure::Connection(
                    "the URL's host does not resolve".into(),
                ));
            }
            Err(e) => return Attempt::Refused(e),
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = terms.secret.sign(id, timestamp, body);
        let request = match signed_request(hook, id, timestamp, &signature, body) {
            Ok(request) => request,
            Err(e) => return Attempt::Failed(Failure::Connection(e.to_string())),
        };
        let sent = tokio::time::timeout(terms.timeout, self.send(hook, &addresses, request)).await;
        match sent {
            Err(_) => Attempt::Failed(Failure::Timeout),
            Ok(Err(e)) => Attempt::Failed(Failure::Connection(e)),
            Ok(Ok(status)) if status.is_success() => Attempt::Delivered(status),
            Ok(Ok(StatusCode::GONE)) => Attempt::Gone,
            Ok(Ok(status)) => Attempt::Failed(Failure::Status(status)),
        }
    }

    /// Connects to the first address that answers and sends `request`; the answer's status.
    async fn send(
        &self,
        hook: &HookUrl,
        addresses: &[std::net::SocketAddr],
        request: Request<Full<Bytes>>,
    ) -> Result<StatusCode, String> {
        let stream = super::guard::connect(addresses).await?;
        if hook.https {
            let name = rustls::pki_types::ServerName::try_from(hook.host.clone())
                .map_err(|e| e.to_string())?;
            let tls = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|e| e.to_string())?;
            exchange(TokioIo::new(tls), request).await
        } else {
            exchange(TokioIo::new(stream), request).await
        }
    }
}

/// The `POST` of one event: the Standard Webhooks headers, the task's JSON as the body.
fn signed_request(
    hook: &HookUrl,
    id: &str,
    timestamp: u64,
    signature: &str,
    body: &Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let target = hook
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let host = hook
        .uri
        .authority()
        .map_or(hook.host.clone(), |a| a.as_str().to_owned());
    Request::builder()
        .method(Method::POST)
        .uri(target)
        .header(HOST, host)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static("mjgate-webhooks"))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(body.clone()))
}

/// One HTTP/1.1 exchange on `io`: the answer's status, its body read (at most [`MAX_ANSWER`]) and
/// dropped. The connection is driven here, not in a task of its own, so that an attempt given up (its
/// deadline passed) closes the socket as it is dropped, before its place is given to the next one.
async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Drained so the receiver is not cut off mid-answer, but never more than a little.
        let _ = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await;
        Ok(status)
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        biased;
        result = &mut exchange => result,
        // The receiver closed the connection: the exchange ends with what it got.
        _ = &mut connection => exchange.await,
    }
}
