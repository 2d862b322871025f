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
    Events(Events),
    /// A stored task's answer, until the envelope picks its representation (identity or gzip,
    /// [`crate::cache::encoding`]); sent as its body if it never does. `None` once sent.
    Task(Option<Arc<dyn Stored>>),
    /// A kept file (or a range of it), streamed from the store as the connection takes it; its exact
    /// length is known up front.
    File(FileBody),
}

/// A file's bytes as the store yields them, and how many are still to come.
pub struct FileBody {
    pub stream: Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, BoxError>> + Send>>,
    pub remaining: u64,
}

/// One server-sent event as the stream's writer hands it over: its own few bytes (`event:`, `id:`),
/// the task's data (shared by every stream of that task: no copy per stream), and what ends it. While
/// it waits for the connection to take it, and until the connection asks for the next one, it holds
/// `charge` (bytes under `watch.stream_buffer`).
pub struct EventFrame {
    pub head: Bytes,
    pub data: Bytes,
    pub tail: &'static [u8],
    /// Whatever accounts for the frame's bytes while it is held; dropped with it.
    pub charge: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// The reading end of an event stream.
pub struct Events {
    frames: tokio::sync::mpsc::Receiver<EventFrame>,
    /// The parts of the frame being handed to hyper, in order.
    parts: std::collections::VecDeque<Bytes>,
    /// The charge of the last frame handed over: given back when hyper asks for more, a sign it has
    /// room for it again. (A reader that stops reading is cut off with its connection, which drops
    /// this and what hyper holds: [`CutOff`].)
    handed: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Events {
    pub fn new(frames: tokio::sync::mpsc::Receiver<EventFrame>) -> Self {
        Events {
            frames,
            parts: std::collections::VecDeque::new(),
            handed: None,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(part) = self.parts.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(part))));
            }
            self.handed = None;
            match self.frames.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    self.parts.extend(
                        [frame.head, frame.data, Bytes::from_static(frame.tail)]
                            .into_iter()
                            .filter(|part| !part.is_empty()),
                    );
                    self.handed = frame.charge;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What a response can ask of the connection it is sent on: to be cut off at once, everything it
/// holds dropped (an event stream whose reader stopped reading: over HTTP/2 a stream with no window
/// is never polled again, so only closing its connection frees what it pinned).
#[derive(Default)]
pub struct CutOff {
    cut: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl CutOff {
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once [`cut`](Self::cut) is called (at once if it was).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cut() {
                return;
            }
            notified.await;
        }
    }
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map_err(|e| -> BoxError { Box::new(e) }),
            ResponseBody::Events(events) => events.poll_frame(cx),
            ResponseBody::Task(task) => Poll::Ready(
                task.take()
                    .filter(|task| !task.identity().is_empty())
                    .map(|task| Ok(Frame::data(task.identity().clone()))),
            ),
            ResponseBody::File(file) => match file.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    file.remaining = file.remaining.saturating_sub(chunk.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream(incoming) => incoming.is_end_stream(),
            ResponseBody::Events(_) => false,
            ResponseBody::Task(task) => task.as_ref().is_none_or(|task| task.identity().is_empty()),
            ResponseBody::File(file) => file.remaining == 0,
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
            ResponseBody::File(file) => SizeHint::with_exact(file.remaining),
        }
    }
}
