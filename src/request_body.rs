//! Client request bodies, bounded in size and in idle time.
//!
//! `header_read_timeout` guards the request head only. A client that sends a head announcing a body and
//! then stalls (a slow-body slowloris) would otherwise hold its connection, and a batch or passthrough
//! request, for as long as it likes. Every body the gateway reads or forwards goes through [`bounded`]:
//! more than `max` bytes fails with [`http_body_util::LengthLimitError`] (413), and no new bytes for
//! `idle` fails with [`BodyIdle`] (408).

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Limited};
use tokio::time::{Instant, Sleep};

use crate::upstream::BoxError;

/// The client sent nothing of its request body for this long.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("request body idle for {0:?}")]
pub struct BodyIdle(pub Duration);

/// `body` limited to `max` bytes and to `idle` between two of its frames.
pub fn bounded<B>(body: B, max: u64, idle: Duration) -> BoxBody<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    Limited::new(IdleTimeout::new(body, idle), max).boxed()
}

/// Whether `error`, or an error it wraps, is a body that went idle; its timeout if so.
pub fn idle_in(error: &(dyn StdError + 'static)) -> Option<Duration> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(idle) = e.downcast_ref::<BodyIdle>() {
            return Some(idle.0);
        }
        source = e.source();
    }
    None
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
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
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
        assert_eq!(idle_in(&*error), Some(Duration::from_secs(5)));
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
        assert_eq!(idle_in(&*error), None);
    }
}
