//! Client request bodies, bounded in size and in idle time, and every way reading one can fail.
//!
//! `header_read_timeout` guards the request head only. A client that sends a head announcing a body and
//! then stalls (a slow-body slowloris) would otherwise hold its connection, and a batch or passthrough
//! request, for as long as it likes. Every body the gateway reads or forwards goes through [`bounded`]:
//! more than `max` bytes fails with [`http_body_util::LengthLimitError`] (413), no new bytes for `idle`
//! fails with [`BodyIdle`] (408), and any error of the client's own stream (a malformed chunk, a
//! connection reset half way) is wrapped in [`BodyBroken`] (400). [`fault_in`] finds which, wherever the
//! error surfaces (in the batch reader, or inside the upstream client's error while forwarding), so a
//! client's broken body is always the client's error and never counts against the upstream's health.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{CONTENT_ENCODING, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Limited, StreamBody};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
use crate::metrics::ClientError;

/// The client sent nothing of its request body for this long.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("request body idle for {0:?}")]
pub struct BodyIdle(pub Duration);

/// The client's body stream failed: a malformed chunk, or the connection closed before the body ended.
/// The source (hyper's own words) goes to the debug log, never to the client.
#[derive(Debug, thiserror::Error)]
#[error("the request body was malformed or cut short")]
pub struct BodyBroken(#[source] BoxError);

/// Why a client's request body could not be read: always the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyFault {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("the request body sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the request body was malformed or cut short")]
    Broken,
    /// A body on a method whose body has no defined meaning (RFC 9110 §9.3): an upstream that does not
    /// read it would take it for the next request on a pooled connection (request smuggling).
    #[error("a {0} request cannot carry a body")]
    NotAllowed(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 §6.1: 501), which hyper would not decode.
    #[error("only the chunked transfer coding is supported")]
    TransferCoding,
    /// A content coding on a body the gateway must read itself (a batch query).
    #[error("the request body must not be content-encoded")]
    ContentCoding,
}

impl BodyFault {
    pub fn status(self) -> StatusCode {
        match self {
            BodyFault::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyFault::Idle(_) => StatusCode::REQUEST_TIMEOUT,
            BodyFault::Broken | BodyFault::NotAllowed(_) => StatusCode::BAD_REQUEST,
            BodyFault::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            BodyFault::ContentCoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The `reason` label of `mjgate_client_errors_total`.
    pub fn label(self) -> ClientError {
        match self {
            BodyFault::TooLarge(_) => ClientError::BodyTooLarge,
            BodyFault::Idle(_) => ClientError::BodyIdle,
            BodyFault::Broken => ClientError::BodyBroken,
            BodyFault::NotAllowed(_) => ClientError::BodyNotAllowed,
            BodyFault::TransferCoding | BodyFault::ContentCoding => ClientError::BodyCoding,
        }
    }
}

/// Checks how a request's body is framed before anything reads or forwards it: no body on `GET`,
/// `HEAD`, `DELETE` or `OPTIONS` (`empty` says whether the body is known to be empty: HTTP/2 can send
/// data without a `Content-Length`), and no transfer coding but `chunked`.
pub fn check_framing(method: &Method, headers: &HeaderMap, empty: bool) -> Result<(), BodyFault> {
    let no_body_method = match *method {
        Method::GET => Some("GET"),
        Method::HEAD => Some("HEAD"),
        Method::DELETE => Some("DELETE"),
        Method::OPTIONS => Some("OPTIONS"),
        _ => None,
    };
    if let Some(method) = no_body_method
        && !empty
    {
        return Err(BodyFault::NotAllowed(method));
    }
    let only_chunked = headers.get_all(TRANSFER_ENCODING).iter().all(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .all(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    if !only_chunked {
        return Err(BodyFault::TransferCoding);
    }
    Ok(())
}

/// Checks that a body the gateway parses itself is not content-encoded.
pub fn check_identity(headers: &HeaderMap) -> Result<(), BodyFault> {
    let identity = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if identity {
        Ok(())
    } else {
        Err(BodyFault::ContentCoding)
    }
}

/// `body` limited to `max` bytes and to `idle` between two of its frames, its own errors tagged as
/// [`BodyBroken`].
pub fn bounded<B>(body: B, max: u64, idle: Duration) -> BoxBody<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    Limited::new(IdleTimeout::new(body, idle), max).boxed()
}

/// The client-body fault `error` stands for, if it (or an error it wraps) is one; `max` is the size
/// limit [`bounded`] was given, to name it.
pub fn fault_in(error: &(dyn StdError + 'static), max: u64) -> Option<BodyFault> {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return Some(BodyFault::TooLarge(max));
        }
        if let Some(idle) = e.downcast_ref::<BodyIdle>() {
            return Some(BodyFault::Idle(idle.0));
        }
        if e.is::<BodyBroken>() {
            return Some(BodyFault::Broken);
        }
        source = e.source();
    }
    None
}

/// Reads a [`bounded`] body whole.
pub async fn read(body: BoxBody<Bytes, BoxError>, max: u64) -> Result<Bytes, BodyFault> {
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(classify(&*e, max)),
    }
}

/// A client body after the gateway read as much of it as it buffers before calling the upstream.
pub enum Prefetched {
    /// The whole body arrived within the buffer: the upstream call holds no slot while a slow client
    /// trickles it in.
    Whole(Bytes),
    /// Larger than the buffer: what was read, then the rest, streamed.
    Streaming(BoxBody<Bytes, BoxError>),
}

/// Reads up to `buffer` bytes of a [`bounded`] body: the whole of it if it fits.
pub async fn prefetch(
    mut body: BoxBody<Bytes, BoxError>,
    buffer: usize,
    max: u64,
) -> Result<Prefetched, BodyFault> {
    let mut read = BytesMut::new();
    while read.len() <= buffer {
        let frame = match body.frame().await {
            None => return Ok(Prefetched::Whole(read.freeze())),
            Some(Err(e)) => return Err(classify(&*e, max)),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => read.extend_from_slice(&data),
            // Trailers end a body: pass them on after what was read.
            Err(trailers) => {
                let frames = [Ok(Frame::data(read.freeze())), Ok(trailers)];
                let stream = futures_util::stream::iter(frames);
                return Ok(Prefetched::Streaming(BodyExt::boxed(StreamBody::new(
                    stream,
                ))));
            }
        }
    }
    let first = futures_util::stream::iter([Ok(Frame::data(read.freeze()))]);
    let frames = first.chain(BodyStream::new(body));
    Ok(Prefetched::Streaming(BodyExt::boxed(StreamBody::new(
        frames,
    ))))
}

/// Every byte of client bodies the gateway holds whole at once (`server.body_buffer_total`): batch
/// queries, submits read for their hook, small passthrough bodies read ahead of their upstream call.
/// Bytes are taken as they arrive and given back when the body is dropped, so 2,000 clients each
/// trickling a 1 MiB batch hold at most the budget, not 2 GB; past it, a body that must be read whole
/// is refused (503, `Retry-After`), and one that may stream streams. Counted in
/// `mjgate_request_body_buffered_bytes`.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: std::sync::Arc<tokio::sync::Semaphore>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// A client body read whole under the [`BodyBudget`], its bytes charged until it is dropped.
pub struct HeldBody {
    pub bytes: Bytes,
    _charge: Charge,
}

/// Bytes taken from the budget, given back (and uncounted) on drop.
pub struct Charge {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.metrics
                .body_buffered(-i64::try_from(permit.num_permits()).unwrap_or(i64::MAX));
        }
    }
}

impl Charge {
    /// Adds `more` bytes to this charge, if the budget has them.
    fn grow(&mut self, budget: &BodyBudget, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        let Ok(more32) = u32::try_from(more) else {
            return false;
        };
        let Ok(permit) = std::sync::Arc::clone(&budget.bytes).try_acquire_many_owned(more32) else {
            return false;
        };
        self.metrics.body_buffered(i64::from(more32));
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        true
    }
}

/// Why a body to be read whole was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The client's fault (too large, stalled, broken).
    #[error(transparent)]
    Fault(#[from] BodyFault),
    /// `server.body_buffer_total` is taken by other bodies right now.
    #[error("the request body budget is full")]
    OverBudget,
}

impl BodyBudget {
    pub fn new(total: u64, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        let permits = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: std::sync::Arc::new(tokio::sync::Semaphore::new(permits)),
            metrics,
        }
    }

    /// An empty charge on this budget.
    pub fn charge(&self) -> Charge {
        Charge {
            permit: None,
            metrics: std::sync::Arc::clone(&self.metrics),
        }
    }

    /// Takes `bytes` up front (a passthrough buffer), if the budget has them.
    pub fn reserve(&self, bytes: usize) -> Option<Charge> {
        let mut charge = self.charge();
        charge.grow(self, bytes).then_some(charge)
    }

    /// Reads a [`bounded`] body whole, charging its bytes as they arrive: a client trickling a
    /// large declared body holds about twice what it has sent, not what it announced. The buffer
    /// grows by doubling up to `declared` (the `Content-Length`, if any), so a body is held once,
    /// never copied into a buffer larger than it.
    pub async fn read(
        &self,
        mut body: BoxBody<Bytes, BoxError>,
        max: u64,
        declared: Option<u64>,
    ) -> Result<HeldBody, ReadError> {
        let mut charge = self.charge();
        let declared = usize::try_from(declared.unwrap_or(0).min(max)).unwrap_or(usize::MAX);
        let mut read = BytesMut::new();
        // What the buffer holds is what is charged: its capacity, growth included.
        let mut charged = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| classify(&*e, max))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let needed = read.len() + data.len();
            if needed > read.capacity() {
                let size = (read.capacity() * 2)
                    .max(FIRST_BUFFER)
                    .min(declared)
                    .max(needed);
                read.reserve(size - read.len());
                if !charge.grow(self, read.capacity() - charged) {
                    return Err(ReadError::OverBudget);
                }
                charged = read.capacity();
            }
            read.extend_from_slice(&data);
        }
        Ok(HeldBody {
            bytes: read.freeze(),
            _charge: charge,
        })
    }
}

/// The first buffer of a body read whole: a typical submit or batch fits.
const FIRST_BUFFER: usize = 16 << 10;

/// A body error as the fault it stands for. Errors [`bounded`] produces are always one of the three;
/// anything else is treated as a broken body.
fn classify(error: &(dyn StdError + 'static), max: u64) -> BodyFault {
    fault_in(error, max).unwrap_or(BodyFault::Broken)
}

/// A body that fails when its inner body yields nothing for `timeout`. The deadline restarts on
/// every frame, so a large upload that keeps moving is never cut off.
struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<B> IdleTimeout<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.timeout;
                this.deadline.as_mut().reset(deadline);
                Poll::Ready(
                    frame.map(|f| f.map_err(|e| -> BoxError { Box::new(BodyBroken(e.into())) })),
                )
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(this.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use http_body_util::{Full, StreamBody};

    use super::*;

    fn stalled_after(first: &'static [u8]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames =
            futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(first)))])
                .chain(futures_util::stream::pending());
        StreamBody::new(frames)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_sending_fails_after_the_idle_timeout() {
        let body = IdleTimeout::new(stalled_after(b"{\"ids\":"), Duration::from_secs(5));
        let started = Instant::now();
        let error = body.collect().await.expect_err("the body never ends");
        assert_eq!(
            fault_in(&*error, 0),
            Some(BodyFault::Idle(Duration::from_secs(5)))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_moving_is_not_cut_off() {
        // Ten frames, 3 s apart: 30 s in all, but never 5 s without a frame.
        let frames = futures_util::stream::iter(0..10).then(|_| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))
        });
        let body = bounded(
            StreamBody::new(Box::pin(frames)),
            1 << 20,
            Duration::from_secs(5),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
    }

    #[tokio::test]
    async fn the_size_limit_still_applies() {
        let body = bounded(
            Full::new(Bytes::from_static(b"0123456789")),
            4,
            Duration::from_secs(5),
        );
        let error = body.collect().await.unwrap_err();
        assert!(error.is::<http_body_util::LengthLimitError>());
        assert_eq!(fault_in(&*error, 4), Some(BodyFault::TooLarge(4)));
    }

    #[tokio::test]
    async fn an_error_of_the_clients_own_stream_is_a_broken_body() {
        let frames = futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"{"))),
            Err("invalid chunk size".into()),
        ]);
        let body = bounded(StreamBody::new(frames), 1 << 20, Duration::from_secs(5));
        assert_eq!(read(body, 1 << 20).await, Err(BodyFault::Broken));
    }

    #[tokio::test]
    async fn a_small_body_is_read_whole_and_a_large_one_streams_on_intact() {
        let chunks = |n: usize| {
            let frames =
                (0..n).map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![i as u8; 10]))));
            bounded(
                StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>())),
                1 << 20,
                Duration::from_secs(5),
            )
        };
        match prefetch(chunks(3), 64, 1 << 20).await {
            Ok(Prefetched::Whole(bytes)) => assert_eq!(bytes.len(), 30),
            _ => panic!("30 bytes fit a 64-byte buffer"),
        }
        match prefetch(chunks(20), 64, 1 << 20).await {
            Ok(Prefetched::Streaming(rest)) => {
                let bytes = read(rest, 1 << 20).await.unwrap();
                let expected: Vec<u8> = (0..20u8).flat_map(|i| [i; 10]).collect();
                assert_eq!(bytes, expected, "every byte, in order");
            }
            _ => panic!("200 bytes do not fit a 64-byte buffer"),
        }
    }
}
