//! The body of every response the gateway sends: a buffer it owns (cache hits, errors), an upstream
//! stream (passthrough), or a task's server-sent events. An enum rather than a boxed trait object, so
//! a cache hit costs no allocation here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::gzip::Gzipped;

/// Errors of any body the gateway reads or hands on (a client's, the upstream client's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ResponseBody {
    /// A complete body; `None` once sent (or when empty).
    Full(Option<Bytes>),
    /// An upstream body, streamed as it arrives.
    Upstream(Incoming),
    /// Server-sent events, written by the stream's task as they happen; ends when it drops its sender.
    Events(tokio::sync::mpsc::Receiver<Bytes>),
    /// A stored task's answer, until the envelope picks its representation (identity or gzip,
    /// [`crate::cache::encoding`]); sent as its body if it never does. `None` once sent.
    Task(Option<Arc<dyn Stored>>),
}

/// A stored answer in its representations: what a [`ResponseBody::Task`] holds until the envelope
/// picks one. A trait so the body needs nothing of the cache that stores it.
pub trait Stored: Send + Sync {
    /// The answer as the upstream sent it.
    fn identity(&self) -> &Bytes;
    /// Its gzip copy, when one was made.
    fn gzipped(&self) -> Option<&Gzipped>;
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(incoming) => Pin::new(incoming).poll_frame(cx),
            ResponseBody::Events(events) => events
                .poll_recv(cx)
                .map(|event| event.map(|bytes| Ok(Frame::data(bytes)))),
            ResponseBody::Task(task) => Poll::Ready(
                task.take()
                    .filter(|task| !task.identity().is_empty())
                    .map(|task| Ok(Frame::data(task.identity().clone()))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream(incoming) => incoming.is_end_stream(),
            ResponseBody::Events(_) => false,
            ResponseBody::Task(task) => task.as_ref().is_none_or(|task| task.identity().is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Upstream(incoming) => incoming.size_hint(),
            ResponseBody::Events(_) => SizeHint::default(),
            ResponseBody::Task(task) => {
                SizeHint::with_exact(task.as_ref().map_or(0, |task| task.identity().len() as u64))
            }
        }
    }
}
