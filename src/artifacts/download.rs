//! Fetching a result file from where the upstream's answer points, into the store.
//!
//! The URL comes from an upstream's answer, so it gets the webhook guard's rules: `http` or `https`,
//! no user information, and (unless `artifacts.allow_private`) every address its host resolves to
//! public; the download connects to exactly those addresses. A redirect is followed at most
//! [`MAX_REDIRECTS`] times, each target checked again, so a public link cannot bounce the gateway
//! inside. The body streams into the store, never held whole: a size cap, a deadline for the
//! whole download and one between two reads bound what a stalled or endless origin can cost. HTML
//! and SVG (a script host from the gateway's origin) are refused, never stored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::store::{BlobId, BlobStore, MediaKind, PutError};
use crate::webhook::guard::{HookError, HookUrl};

/// Redirects followed for one file, each target checked as the first was.
pub const MAX_REDIRECTS: usize = 3;

/// Why a file was not kept; [`DownloadError::is_transient`] says whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("refused: {0}")]
    Refused(#[from] HookError),
    #[error("the origin answered {0}")]
    Status(StatusCode),
    #[error("more than {MAX_REDIRECTS} redirects, or one without a usable Location")]
    Redirects,
    #[error("the origin sent {0:?}, which is never kept (a page or a script, not a result file)")]
    Unsafe(String),
    #[error("the download took longer than its deadline")]
    Timeout,
    #[error("the connection failed: {0}")]
    Connection(String),
    #[error(transparent)]
    Put(#[from] PutError),
    #[error("too many downloads waiting; tried again on the task's next store")]
    Busy,
}

impl DownloadError {
    /// Whether a later attempt may succeed: the origin's 5xx or 429, a timeout, a broken
    /// connection. A refusal, a 4xx, an unsafe type or a file past the cap stays so.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Status(status) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            DownloadError::Timeout | DownloadError::Connection(_) | DownloadError::Busy => true,
            DownloadError::Put(PutError::Source(_) | PutError::Store(_)) => true,
            _ => false,
        }
    }

    /// Every `cause` label.
    pub const CAUSES: [&'static str; 9] = [
        "refused",
        "status",
        "redirects",
        "unsafe_type",
        "timeout",
        "connection",
        "too_large",
        "store",
        "busy",
    ];

    /// The `cause` label of the failure metric.
    pub fn cause(&self) -> &'static str {
        match self {
            DownloadError::Refused(_) => "refused",
            DownloadError::Status(_) => "status",
            DownloadError::Redirects => "redirects",
            DownloadError::Unsafe(_) => "unsafe_type",
            DownloadError::Timeout => "timeout",
            DownloadError::Connection(_) => "connection",
            DownloadError::Put(PutError::TooLarge(_)) => "too_large",
            DownloadError::Put(PutError::Source(_)) => "connection",
            DownloadError::Put(PutError::Store(_)) => "store",
            DownloadError::Busy => "busy",
        }
    }
}

/// What a download is made under that a reload may change (`artifacts.allow_private`, `timeout`,
/// `idle_timeout`): read afresh for every download.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub allow_private: bool,
    /// For the whole download, redirects included.
    pub timeout: Duration,
    /// Between two reads of the body.
    pub idle: Duration,
}

/// Downloads result files under the guard's rules and the time bounds.
pub struct Downloader {
    tls: tokio_rustls::TlsConnector,
    terms: arc_swap::ArcSwap<Terms>,
    /// Origins (host, port) that may be inside addresses all the same: the upstream the operator
    /// configured, whose own result links (a self-hosted proxy's, the simulator's) sit beside it.
    trusted: Vec<(String, u16)>,
}

impl Downloader {
    pub fn new(tls: rustls::ClientConfig, terms: Terms) -> Self {
        Downloader {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            terms: arc_swap::ArcSwap::from_pointee(terms),
            trusted: Vec::new(),
        }
    }

    /// Puts reloaded terms in force for the downloads that start from now on.
    pub fn set_terms(&self, terms: Terms) {
        self.terms.store(Arc::new(terms));
    }

    fn terms(&self) -> Terms {
        **self.terms.load()
    }

    /// The deadline of one download, and the longest it may go without a byte.
    pub fn bounds(&self) -> (Duration, Duration) {
        let terms = self.terms();
        (terms.timeout, terms.idle)
    }

    /// This downloader, also connecting to `host:port` where it resolves to an inside address.
    pub fn trusting(mut self, host: &str, port: u16) -> Self {
        self.trusted.push((host.to_ascii_lowercase(), port));
        self
    }

    fn allows_private(&self, target: &HookUrl) -> bool {
        self.terms().allow_private
            || self
                .trusted
                .iter()
                .any(|(host, port)| target.host.eq_ignore_ascii_case(host) && target.port == *port)
    }

    /// Downloads `url` into `store`: the blob it became and its length.
    pub async fn fetch(
        &self,
        url: &str,
        store: &BlobStore,
    ) -> Result<(BlobId, u64), DownloadError> {
        match tokio::time::timeout(self.terms().timeout, self.follow(url, store)).await {
            Ok(result) => result,
            Err(_) => Err(DownloadError::Timeout),
        }
    }

    async fn follow(&self, url: &str, store: &BlobStore) -> Result<(BlobId, u64), DownloadError> {
        let mut target = HookUrl::parse(url)?;
        for _ in 0..=MAX_REDIRECTS {
            let addresses = target.resolve(self.allows_private(&target)).await?;
            let (response, _connection) = self.get(&target, &addresses).await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| resolve_location(&target.uri, l))
                    .ok_or(DownloadError::Redirects)?;
                target = HookUrl::parse(&location)?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(DownloadError::Status(status));
            }
            let content_type = content_type_of(response.headers());
            if is_unsafe(&content_type) {
                return Err(DownloadError::Unsafe(content_type));
            }
            let kind = MediaKind::of_content_type(&content_type);
            return Ok(store
                .put(idle_bounded(response.into_body(), self.terms().idle), kind)
                .await?);
        }
        Err(DownloadError::Redirects)
    }

    /// One `GET` of `target` on the first of `addresses` that takes the connection. The connection
    /// is driven by a task that ends with the returned guard (dropped: the socket closes).
    async fn get(
        &self,
        target: &HookUrl,
        addresses: &[std::net::SocketAddr],
    ) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), DownloadError> {
        let stream = crate::webhook::guard::connect(addresses)
            .await
            .map_err(DownloadError::Connection)?;
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| DownloadError::Connection(e.to_string()))?;
            let tls = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|e| DownloadError::Connection(e.to_string()))?;
            send(TokioIo::new(tls), target).await
        } else {
            send(TokioIo::new(stream), target).await
        }
    }
}

/// `body`'s bytes, failing when none comes for `idle`: a stalled origin ends the download.
pub fn idle_bounded<B>(
    body: B,
    idle: Duration,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, String>> + Send>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let body = http_body_util::BodyDataStream::new(body);
    Box::pin(futures_util::stream::unfold(
        Box::pin(body),
        move |mut body| async move {
            use futures_util::StreamExt;
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), body)),
                Ok(Some(Err(e))) => Some((Err(e.to_string()), body)),
                Ok(None) => None,
                Err(_) => Some((Err("the origin sent nothing for too long".to_owned()), body)),
            }
        },
    ))
}

/// A response's `Content-Type` as text, empty when it has none (or not as text).
pub fn content_type_of(headers: &http::HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Aborts the connection's task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send<I>(
    io: I,
    target: &HookUrl,
) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), DownloadError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| DownloadError::Connection(e.to_string()))?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let path = target.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host = target
        .uri
        .authority()
        .map_or(target.host.clone(), |a| a.as_str().to_owned());
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, HeaderValue::from_static("mjgate-artifacts"))
        .header(ACCEPT, HeaderValue::from_static("*/*"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| DownloadError::Connection(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| DownloadError::Connection(e.to_string()))?;
    Ok((response, driver))
}

/// HTML, XHTML, SVG, XML and script types: what a browser would run if served from the gateway's
/// origin. Never kept.
fn is_unsafe(content_type: &str) -> bool {
    let essence = super::store::essence(content_type);
    matches!(
        essence.as_str(),
        "text/html" | "application/xhtml+xml" | "image/svg+xml" | "text/xml" | "application/xml"
    ) || essence.contains("javascript")
        || essence.contains("ecmascript")
}

/// A redirect's `Location` as an absolute URL: absolute ones as they are, `//host/path` with the
/// current scheme, `/path` on the current authority. `None` for anything else.
fn resolve_location(current: &Uri, location: &str) -> Option<String> {
    let location = location.trim();
    if location.contains("://") {
        return Some(location.to_owned());
    }
    let scheme = current.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{}{location}", current.authority()?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_a_cause_the_metric_starts_at_zero() {
        let failures = [
            DownloadError::Refused(HookError::Scheme),
            DownloadError::Status(StatusCode::FORBIDDEN),
            DownloadError::Redirects,
            DownloadError::Unsafe("text/html".into()),
            DownloadError::Timeout,
            DownloadError::Connection("reset".into()),
            DownloadError::Put(PutError::TooLarge(1)),
            DownloadError::Put(PutError::Source("cut".into())),
            DownloadError::Busy,
        ];
        for failure in &failures {
            assert!(
                DownloadError::CAUSES.contains(&failure.cause()),
                "{failure}"
            );
        }
    }

    #[test]
    fn locations_are_resolved_against_the_current_url() {
        let here: Uri = "https://cdn.test/a/b.png?x=1".parse().unwrap();
        assert_eq!(
            resolve_location(&here, "https://other.test/c.png").as_deref(),
            Some("https://other.test/c.png")
        );
        assert_eq!(
            resolve_location(&here, "//other.test/c.png").as_deref(),
            Some("https://other.test/c.png")
        );
        assert_eq!(
            resolve_location(&here, "/c.png").as_deref(),
            Some("https://cdn.test/c.png")
        );
        assert_eq!(resolve_location(&here, "c.png"), None);
    }

    #[test]
    fn pages_and_scripts_are_never_kept() {
        for risky in [
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/javascript",
            "text/javascript",
            "application/xhtml+xml",
        ] {
            assert!(is_unsafe(risky), "{risky}");
        }
        for fine in [
            "image/png",
            "video/mp4",
            "audio/mpeg",
            "application/octet-stream",
            "",
        ] {
            assert!(!is_unsafe(fine), "{fine}");
        }
    }

    #[test]
    fn only_what_may_pass_is_tried_again() {
        assert!(DownloadError::Status(StatusCode::BAD_GATEWAY).is_transient());
        assert!(DownloadError::Status(StatusCode::TOO_MANY_REQUESTS).is_transient());
        assert!(DownloadError::Timeout.is_transient());
        assert!(!DownloadError::Status(StatusCode::FORBIDDEN).is_transient());
        assert!(!DownloadError::Put(PutError::TooLarge(1)).is_transient());
        assert!(!DownloadError::Unsafe("text/html".into()).is_transient());
        assert!(
            !DownloadError::Refused(HookError::Internal("127.0.0.1".parse().unwrap()))
                .is_transient()
        );
    }
}
