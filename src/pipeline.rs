//! One request pipeline: what every request goes through, hit or miss, written once.
//!
//! The stack, outermost first, is assembled in `Gateway::pipeline`:
//! 1. [`Envelope`] (a tower [`Layer`]): the request id (taken from the client or generated, echoed on
//!    the response, handed to the handler for the upstream), `304 Not Modified` from the gateway's own
//!    `ETag`s, the request's metrics and its access-log record ([`crate::access`], written once the
//!    connection has sent the body). It sits outermost so that it times and counts everything, the
//!    refusals included.
//! 2. [`crate::gateway::Handler`]: admission, routing and the handlers (fetch core, push, passthrough).
//!
//! The hit path stays synchronous and allocation-free: before calling the handler, the envelope offers
//! it the request by reference ([`HitPath::try_hit`]); a fresh cache hit is answered and finished there
//! and then, as a ready future, with no box, no reference count and no copy of `If-None-Match`. Only
//! requests that need the slow path pay for an owned future. The envelope's steps are one layer, not
//! four, for the same reason: each layer boundary on the hit path would need its own ready-answer hook,
//! and they share the request id and the start time anyway (see `docs/design.md`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{ACCEPT_ENCODING, HeaderMap, HeaderValue, IF_NONE_MATCH};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::access::{AccessLog, AccessRecord, Notes, RequestHead, Who};
use crate::body::ResponseBody;
use crate::cache::{conditional, encoding};
use crate::error::RequestError;
use crate::fetch::Served;
use crate::gzip;
use crate::metrics::{Metrics, Outcome, RouteLabel};
use crate::request::id::{self as request_id, X_REQUEST_ID};

/// A request as the envelope hands it on: the client's request, its request id, and the notes its
/// access-log line is to report (when the log is on).
pub struct Call<B> {
    pub request: Request<B>,
    pub request_id: HeaderValue,
    pub notes: Option<Arc<Notes>>,
}

/// The envelope's answer: the response, and the access-log record its body carries to the
/// connection (which counts the bytes sent; the record writes its line when dropped).
pub struct Logged {
    pub response: Response<ResponseBody>,
    pub record: Option<Box<AccessRecord>>,
}

/// A handler's answer and the route it took, for the envelope to finish.
pub struct Answer {
    pub served: Served,
    pub route: RouteLabel,
}

/// The handler's side of the hit path: a fresh cache hit answered from the request by reference. Its
/// route is a fetch and its outcome a hit by definition, so only the response comes back: on a path
/// this hot, every wrapper around a response is another copy of it.
pub trait HitPath<B> {
    fn try_hit(&mut self, request: &Request<B>) -> Option<Response<ResponseBody>>;

    /// The access log as it stands now (a reload may change it between two requests); `None` when
    /// it is off.
    fn access_log(&mut self) -> Option<Arc<AccessLog>>;

    /// Who sent a request with these headers, for its access-log line.
    fn who(&mut self, headers: &HeaderMap) -> Who;
}

/// The future of a request that took the slow path.
pub type SlowPath = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

/// Wraps a handler in the envelope.
#[derive(Clone)]
pub struct EnvelopeLayer {
    metrics: Arc<Metrics>,
    /// `cache.gzip`: answers may be compressed for clients that take gzip.
    gzip: bool,
}

impl EnvelopeLayer {
    pub fn new(metrics: Arc<Metrics>, gzip: bool) -> Self {
        EnvelopeLayer { metrics, gzip }
    }
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope {
            inner,
            metrics: Arc::clone(&self.metrics),
            gzip: self.gzip,
        }
    }
}

/// The per-request envelope around a handler (see the module's documentation).
pub struct Envelope<S> {
    inner: S,
    metrics: Arc<Metrics>,
    gzip: bool,
}

impl<S, B> Service<Request<B>> for Envelope<S>
where
    S: Service<Call<B>, Response = Answer, Error = Infallible, Future = SlowPath> + HitPath<B>,
{
    type Response = Logged;
    type Error = Infallible;
    type Future = Enveloped;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Enveloped {
        let access = self.inner.access_log();
        if let Some(answered) = hit(&mut self.inner, &request, &self.metrics, access.as_ref()) {
            return Enveloped::Ready(Some(answered));
        }
        let started = Instant::now();
        // Owned, like the If-None-Match lines below: a view of hyper's read buffer would keep all of
        // it for as long as a long-poll holds the request.
        let request_id = request_id::of_request_owned(request.headers());
        // The handler consumes the request (a batch reads its body): keep what the 304 check needs.
        let if_none_match = conditional::if_none_match(request.headers());
        let accepts_gzip = self.gzip && {
            let mut encodings = gzip::Acceptance::default();
            for value in request.headers().get_all(ACCEPT_ENCODING) {
                encodings.add(value.as_bytes());
            }
            encodings.gzip()
        };
        // What the handling learns (its trace, its upstream time) is noted for the access line and
        // for the upstream calls the request makes, wherever they run.
        let notes = Arc::new(Notes::default());
        let record = access.as_ref().map(|log| {
            let who = self.inner.who(request.headers());
            let head = head_of(&request, who);
            log.begin(&head, started, request_id.clone(), Some(Arc::clone(&notes)))
        });
        let slow = self.inner.call(Call {
            request,
            request_id: request_id.clone(),
            notes: Some(notes),
        });
        Enveloped::Pending {
            slow,
            finish: Some(Finish {
                started,
                request_id,
                if_none_match,
                accepts_gzip,
                record,
            }),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

fn head_of<B>(request: &Request<B>, who: Who) -> RequestHead<'_> {
    RequestHead {
        method: request.method(),
        uri: request.uri(),
        version: request.version(),
        headers: request.headers(),
        who,
    }
}

/// The envelope's hit path on its own: `handler`'s answer to `request` if it is a fresh cache hit,
/// finished (304 check, metrics, access-log record, request id). What [`Envelope`] runs before
/// anything else; public so the criterion benchmark measures exactly this.
#[inline]
pub fn hit<B, H: HitPath<B>>(
    handler: &mut H,
    request: &Request<B>,
    metrics: &Metrics,
    access: Option<&Arc<AccessLog>>,
) -> Option<Logged> {
    let started = Instant::now();
    let response = handler.try_hit(request)?;
    let request_id = request_id::of_request(request.headers());
    let record = match access {
        Some(log) if log.sample_hit() => {
            let who = handler.who(request.headers());
            Some(log.begin(&head_of(request, who), started, request_id.clone(), None))
        }
        _ => None,
    };
    let finish = Finish {
        started,
        request_id,
        if_none_match: None,
        // The hit path picked the representation already, from the headers admission read.
        accepts_gzip: false,
        record,
    };
    let mut response = response;
    let hit = (RouteLabel::Fetch, Outcome::Hit, None);
    let record = finish.apply(&mut response, hit, Some(request.headers()), metrics);
    Some(Logged { response, record })
}

/// What the envelope needs to finish a request once its answer is known.
pub struct Finish {
    started: Instant,
    request_id: HeaderValue,
    /// The request's `If-None-Match` lines, kept when the request itself went to the handler.
    if_none_match: Option<HeaderMap>,
    /// Whether the request's `Accept-Encoding` takes gzip.
    accepts_gzip: bool,
    /// The request's access-log record, when the log is on (and the hit is sampled).
    record: Option<Box<AccessRecord>>,
}

impl Finish {
    /// The 304 check, the metrics, the access-log record and the echoed request id. `request` is
    /// the request's headers when the hit path still has them. Inlined: on the hit path the answer
    /// then moves straight into the response instead of through three return slots.
    #[inline]
    fn apply(
        self,
        response: &mut Response<ResponseBody>,
        (route, outcome, upstream_status): (RouteLabel, Outcome, Option<u16>),
        request: Option<&HeaderMap>,
        metrics: &Metrics,
    ) -> Option<Box<AccessRecord>> {
        encoding::represent(response, self.accepts_gzip, route == RouteLabel::Batch);
        let conditions = request
            .filter(|headers| headers.contains_key(IF_NONE_MATCH))
            .or(self.if_none_match.as_ref());
        if let Some(conditions) = conditions
            && matches!(
                route,
                RouteLabel::Fetch | RouteLabel::Batch | RouteLabel::LongPoll
            )
        {
            let full = std::mem::replace(response, Response::new(ResponseBody::empty()));
            let (answered, not_modified) = conditional::not_modified_if_unchanged(conditions, full);
            if not_modified {
                metrics.watch.not_modified(route);
            }
            *response = answered;
        }
        let elapsed = self.started.elapsed();
        metrics.request(route, outcome, elapsed);
        let mut record = self.record;
        if let Some(record) = &mut record {
            record.answered(route, outcome, response.status().as_u16(), upstream_status);
        }
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), self.request_id);
        record
    }
}

/// The future a request is served by: ready at once for a cache hit, the slow path's otherwise.
pub enum Enveloped {
    Ready(Option<Logged>),
    Pending {
        slow: SlowPath,
        finish: Option<Finish>,
        metrics: Arc<Metrics>,
    },
}

impl Future for Enveloped {
    type Output = Result<Logged, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Enveloped::Ready(answered) => Poll::Ready(Ok(answered.take().unwrap_or_else(|| {
                // hyper never polls a finished future; answer sanely rather than panic if it did.
                Logged {
                    response: RequestError::Internal("response already sent").into_response(),
                    record: None,
                }
            }))),
            Enveloped::Pending {
                slow,
                finish,
                metrics,
            } => {
                let Ok(answer) = std::task::ready!(slow.as_mut().poll(cx));
                let Answer { served, route } = answer;
                let how = (route, served.outcome(), served.upstream_status);
                let mut response = served.response;
                let record = match finish.take() {
                    Some(finish) => finish.apply(&mut response, how, None, metrics),
                    None => {
                        response = RequestError::Internal("response already sent").into_response();
                        None
                    }
                };
                Poll::Ready(Ok(Logged { response, record }))
            }
        }
    }
}
