//! The gateway's request handling: route a request, serve task fetches from the cache with collapsing,
//! and forward everything else; every request is timed, counted and logged in one span.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue,
    IF_NONE_MATCH,
};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::Instrument;
use tracing::field::Empty;

use crate::body::ResponseBody;
use crate::cache::conditional;
use crate::cache::status::CacheStatus;
use crate::cache::{CacheKey, CachedTask, KeyBuf, Lookup, TaskCache};
use crate::config::Config;
use crate::credential::{CredentialFingerprint, FingerprintMemo, Fingerprinter};
use crate::error::{RequestError, json_error};
use crate::fetch::collapse::{Collapser, Role};
use crate::metrics::{Metrics, Outcome, RouteLabel};
use crate::push::long_poll;
use crate::push::watch::Watchers;
use crate::request::admission;
use crate::request::body::{self as request_body, BodyFault, Prefetched};
use crate::request::id::{self as request_id, X_REQUEST_ID};
use crate::request::routes::{self, Route};
use crate::shared::{self, Claim, Freshness, SharedCache};
use crate::task::{TaskId, classify_fetch_body, is_not_found_answer};
use crate::upstream::{
    BoxError, BufferedCall, BufferedReply, ClientInfo, Upstream, UpstreamBody, UpstreamError,
};

pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// On every answer from the credential-partitioned cache. A shared cache between mjgate and its clients
/// must not store it: RFC 9111 already keeps such caches off answers to requests with `Authorization`,
/// but not off those to `mj-api-secret` ones, which it would then serve to every other secret.
pub(crate) static PRIVATE: HeaderValue = HeaderValue::from_static("private");

/// The future a request is served by: ready at once for a cache hit, boxed otherwise.
pub enum Serving {
    Ready(Option<Response<ResponseBody>>),
    Pending(Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>),
}

impl Future for Serving {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Serving::Ready(response) => Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                // hyper never polls a finished future; answer sanely rather than panic if it did.
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "response already sent")
            }))),
            Serving::Pending(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Where clients connect.
    Main,
    /// `admin_listen`: `/metrics`, `/healthz`, `/readyz` only.
    Admin,
}

/// The result of one upstream call for one task, as handed to every request collapsed on it.
#[derive(Clone, Debug)]
pub enum Landed {
    /// The upstream's task object for that id; it is in the cache.
    Stored(Arc<CachedTask>),
    /// An upstream answer that is not that task's object (404, empty body, router error, ...): passed on
    /// as is, never stored.
    Passed(Arc<BufferedReply>),
    /// No usable upstream answer: the client gets 502 or 504; nothing is stored.
    Failed(UpstreamError),
    /// A batch call's answer did not include this id (unknown, or not the caller's).
    NotReturned,
    /// Another replica's answer, found in the shared tier; it is in the cache now too.
    Shared(Arc<CachedTask>),
}

/// A handler's answer and what the request's metrics and log line say about it.
pub(crate) struct Served {
    pub response: Response<ResponseBody>,
    pub outcome: Outcome,
    /// The status of the upstream answer this response came from, if one did.
    pub upstream_status: Option<u16>,
}

impl Served {
    pub fn new(
        response: Response<ResponseBody>,
        outcome: Outcome,
        upstream_status: Option<u16>,
    ) -> Self {
        Served {
            response,
            outcome,
            upstream_status,
        }
    }

    pub fn bypass(response: Response<ResponseBody>) -> Self {
        Served::new(response, Outcome::Bypass, None)
    }
}

/// Request limits the handlers enforce, copied out of the config.
pub(crate) struct Limits {
    pub batch_max_body: u64,
    pub batch_max_ids: usize,
    pub batch_upstream_chunk: usize,
    pub max_request_body: u64,
    pub passthrough_buffer: u64,
    pub body_read_timeout: std::time::Duration,
}

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub(crate) upstream: Upstream,
    pub(crate) cache: TaskCache,
    /// Task lookups in the air, by cache key, whether a fetch or a batch started them.
    pub(crate) flights: Arc<Collapser<Landed>>,
    pub(crate) fingerprinter: Fingerprinter,
    pub(crate) limits: Limits,
    pub(crate) metrics: Arc<Metrics>,
    /// Pollers behind long-polls and event streams, and the bounds on them.
    pub(crate) watchers: Watchers,
    /// The Redis tier between the cache and the upstream, when `[shared_cache]` is configured.
    pub(crate) shared: Option<SharedCache>,
    /// Bytes of passthrough bodies being read whole before their upstream call
    /// (`server.passthrough_buffer_total`), one reservation of `passthrough_buffer` per request.
    passthrough_buffers: Arc<tokio::sync::Semaphore>,
    /// Admin routes live on their own listener, so the main one passes those paths through.
    admin_separate: bool,
    /// Log every request at `info` (else at `debug`, under the `mjgate::access` target).
    access_log: bool,
    /// Set when shutdown begins, so `/readyz` tells load balancers to stop sending.
    draining: AtomicBool,
}

impl Gateway {
    /// Builds the gateway for `config`. With a shared tier it needs a Tokio runtime (for the tier's
    /// listener and probe) and fails only on a Redis URL the client cannot parse.
    pub fn new(config: &Config) -> Result<Self, crate::Error> {
        let metrics = Arc::new(Metrics::new(config.cache.max_memory));
        let (shared, fingerprinter) = match &config.shared_cache {
            Some(shared_config) => {
                let freshness = Freshness {
                    terminal: shared_config.terminal_ttl,
                    in_progress: config.cache.in_progress_ttl,
                    not_found: config.cache.not_found_ttl,
                };
                // A lease holder's call may queue, then run to its deadline; waiting any longer
                // than that (plus one lease, for a dead holder's to expire) means something is wrong.
                let max_wait = config.upstream.queue_timeout
                    + config.upstream.request_timeout
                    + shared_config.lease_ttl;
                let shared =
                    SharedCache::new(shared_config, freshness, max_wait, Arc::clone(&metrics))?;
                let fingerprinter =
                    Fingerprinter::from_secret(shared_config.fingerprint_secret.as_bytes());
                (Some(shared), fingerprinter)
            }
            None => (None, Fingerprinter::random()),
        };
        Ok(Gateway {
            upstream: Upstream::new(
                &config.upstream,
                config.server.max_request_body,
                Arc::clone(&metrics),
            )?,
            cache: TaskCache::new(&config.cache, Arc::clone(&metrics)),
            flights: Collapser::new(),
            fingerprinter,
            limits: Limits {
                batch_max_body: config.batch.max_body,
                batch_max_ids: config.batch.max_ids,
                batch_upstream_chunk: config.batch.upstream_chunk,
                max_request_body: config.server.max_request_body,
                passthrough_buffer: config.server.passthrough_buffer,
                body_read_timeout: config.server.body_read_timeout,
            },
            metrics,
            watchers: Watchers::new(&config.watch),
            shared,
            passthrough_buffers: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(config.server.passthrough_buffer_total)
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            admin_separate: config.admin_listen.is_some(),
            access_log: config.log.access,
            draining: AtomicBool::new(false),
        })
    }

    /// Stores `task` as the answer for `id` under the credential in `headers` (to pre-warm the cache).
    pub fn store(&self, headers: &HeaderMap, id: TaskId<'_>, task: Arc<CachedTask>) {
        let key = KeyBuf::new(&self.fingerprinter.fingerprint(headers), id);
        self.cache.insert(key.to_key(), task);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.watchers.start_draining();
    }

    /// Serves one request. A cache hit is answered here and now, with a ready future: it neither
    /// allocates nor moves the slow path's state machine (batch, passthrough, upstream calls), which is
    /// boxed for everything else.
    pub fn serve(
        self: &Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        listener: Listener,
        memo: &RefCell<FingerprintMemo>,
    ) -> Serving {
        let hit = match memo.try_borrow_mut() {
            Ok(mut memo) => self.try_hit(&request, listener, &mut memo),
            Err(_) => self.try_hit(&request, listener, &mut FingerprintMemo::default()),
        };
        match hit {
            Some(response) => Serving::Ready(Some(response)),
            None => Serving::Pending(Box::pin(Arc::clone(self).handle(request, peer, listener))),
        }
    }

    /// The hit path: a fetch whose answer is fresh in the cache. `None` sends the request down the slow
    /// path, which looks again (a miss is far costlier than a second lookup).
    pub fn try_hit<B>(
        &self,
        request: &Request<B>,
        listener: Listener,
        memo: &mut FingerprintMemo,
    ) -> Option<Response<ResponseBody>> {
        if listener == Listener::Admin {
            return None;
        }
        let started = Instant::now();
        let Route::Fetch(id) = routes::classify(request.method(), request.uri().path()) else {
            return None;
        };
        // A long-poll may have to wait: the slow path decides (and validates `wait`).
        if request.uri().query().is_some_and(long_poll::asks_to_wait) {
            return None;
        }
        // A refused request is answered (and counted) by the slow path.
        let credential = admission::admit(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        )
        .ok()?;
        let fingerprint = self.fingerprinter.of_memo(credential, memo);
        let key = KeyBuf::new(&fingerprint, id);
        let Lookup::Fresh { task, ttl } = self.cache.lookup(key.as_bytes()) else {
            return None;
        };
        let mut response = task_response(&task, CacheStatus::Hit { ttl }, true);
        if request.headers().contains_key(IF_NONE_MATCH) {
            response = self.conditional(request.headers(), response, RouteLabel::Fetch);
        }
        let request_id = request_id::of_request(request.headers());
        let elapsed = started.elapsed();
        self.metrics.task_lookups(Outcome::Hit, 1);
        self.metrics
            .request(RouteLabel::Fetch, Outcome::Hit, elapsed);
        // An event, not a span: nothing to carry into other work, and nothing at all when disabled.
        if self.access_log {
            tracing::info!(target: "mjgate::access", id = request_id.to_str().unwrap_or(""), route = "fetch", cache = "hit", status = task.status.as_u16(), duration_ms = elapsed.as_secs_f64() * 1000.0, "served");
        } else {
            tracing::debug!(target: "mjgate::access", id = request_id.to_str().unwrap_or(""), route = "fetch", cache = "hit", status = task.status.as_u16(), duration_ms = elapsed.as_secs_f64() * 1000.0, "served");
        }
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id);
        Some(response)
    }

    /// The slow path: routes a request, then counts, times and logs it, and echoes its request id.
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        listener: Listener,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = request_id::of_request(request.headers());
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let mut route = routes::classify(request.method(), request.uri().path());
        if self.admin_separate && listener == Listener::Main && route.is_admin() {
            route = Route::Passthrough;
        }
        let mut label = route.label();
        if label == RouteLabel::Fetch && request.uri().query().is_some_and(long_poll::asks_to_wait)
        {
            label = RouteLabel::LongPoll;
        }
        // `If-None-Match` is checked once the answer is known; batches consume the request.
        let if_none_match = conditional::if_none_match(request.headers());
        let span = tracing::info_span!(
            "request",
            id = request_id.to_str().unwrap_or(""),
            route = label.as_str(),
            cache = Empty,
            status = Empty,
            upstream_status = Empty,
            duration_ms = Empty,
        );
        let client = ClientInfo { ip: peer.ip() };
        if let Err(refused) = admission::admit(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        ) {
            route = Route::Refused(refused);
        }
        let served = match route {
            Route::Refused(refused) => {
                tracing::debug!(parent: &span, reason = %refused, "request refused");
                self.metrics.client_error(refused.label());
                Served::bypass(RequestError::Refused(refused).into_response())
            }
            _ if listener == Listener::Admin && !route.is_admin() => Served::bypass(json_error(
                StatusCode::NOT_FOUND,
                "the admin listener serves /metrics, /healthz and /readyz only",
            )),
            Route::Health => Served::bypass(plain(StatusCode::OK, "ok")),
            Route::Ready if self.draining.load(Ordering::Relaxed) => {
                Served::bypass(RequestError::Draining.into_response())
            }
            Route::Ready if self.upstream.protection().breaker().is_open() => {
                Served::bypass(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream unreachable (circuit open)",
                ))
            }
            Route::Ready => Served::bypass(plain(StatusCode::OK, "ready")),
            Route::Metrics => Served::bypass(self.metrics_response()),
            Route::Fetch(id) if label == RouteLabel::LongPoll => {
                self.long_poll(&request, id, client)
                    .instrument(span.clone())
                    .await
            }
            Route::Fetch(id) => {
                self.fetch(request.uri().path(), request.headers(), id, client)
                    .instrument(span.clone())
                    .await
            }
            Route::Events(id) => {
                self.events(&request, id, client)
                    .instrument(span.clone())
                    .await
            }
            Route::BadTaskId(e) => Served::bypass(RequestError::BadTaskId(e).into_response()),
            Route::Batch => self.batch(request, client).instrument(span.clone()).await,
            Route::Passthrough => {
                self.passthrough(request, client)
                    .instrument(span.clone())
                    .await
            }
        };

        let mut served = served;
        if let Some(if_none_match) = &if_none_match
            && matches!(
                label,
                RouteLabel::Fetch | RouteLabel::Batch | RouteLabel::LongPoll
            )
        {
            served.response = self.conditional(if_none_match, served.response, label);
        }
        let elapsed = started.elapsed();
        self.metrics.request(label, served.outcome, elapsed);
        let status = served.response.status().as_u16();
        span.record("cache", served.outcome.as_str());
        span.record("status", status);
        if let Some(upstream_status) = served.upstream_status {
            span.record("upstream_status", upstream_status);
        }
        span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
        span.in_scope(|| {
            if self.access_log {
                tracing::info!(target: "mjgate::access", "served");
            } else {
                tracing::debug!(target: "mjgate::access", "served");
            }
        });
        let mut response = served.response;
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id);
        response
    }

    /// `response` as `304 Not Modified` when the request's `If-None-Match` names its `ETag`.
    pub(crate) fn conditional(
        &self,
        request: &HeaderMap,
        response: Response<ResponseBody>,
        route: RouteLabel,
    ) -> Response<ResponseBody> {
        let (response, not_modified) = conditional::not_modified_if_unchanged(request, response);
        if not_modified {
            self.metrics.watch.not_modified(route);
        }
        response
    }

    fn metrics_response(&self) -> Response<ResponseBody> {
        // Apply pending evictions first, so the cache gauges are exact at scrape time.
        self.cache.sync();
        let mut response = Response::new(ResponseBody::full(self.metrics.render()));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// `GET [/{mode}]/mj/task/{id}/fetch`: a fresh cache entry, else one collapsed upstream call; a stale
    /// entry stands in if that call fails.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        path: &str,
        headers: &HeaderMap,
        id: TaskId<'_>,
        client: ClientInfo,
    ) -> Served {
        let fingerprint = self.fingerprinter.fingerprint(headers);
        let key = KeyBuf::new(&fingerprint, id);
        let stale = match self.cache.lookup(key.as_bytes()) {
            Lookup::Fresh { task, ttl } => {
                self.metrics.task_lookups(Outcome::Hit, 1);
                return Served::new(
                    task_response(&task, CacheStatus::Hit { ttl }, true),
                    Outcome::Hit,
                    None,
                );
            }
            other => other.stale(),
        };
        if let Some(stale) = &stale
            && let Some(fwd_status) = self.cache.refresh_held(key.as_bytes())
        {
            return serve_stale(stale, fwd_status);
        }
        // A flight started by a batch lands `NotReturned` for ids its answer left out; a fetch then asks
        // the upstream itself, to pass on the upstream's own not-found answer. Twice at most.
        for _ in 0..2 {
            let flight = match self.flights.join(key.as_bytes()) {
                Role::Follower(landing) => {
                    let waiting = self.metrics.collapse_waiter();
                    let landed = landing.wait().await;
                    drop(waiting);
                    match landed {
                        Ok(Landed::NotReturned) => continue,
                        Ok(landed) => {
                            self.metrics.task_lookups(Outcome::Collapsed, 1);
                            self.hold_if_failed(key.as_bytes(), &landed, stale.is_some());
                            return landed_response(landed, Outcome::Collapsed, stale.as_deref());
                        }
                        Err(abandoned) => {
                            return Served::bypass(RequestError::from(abandoned).into_response());
                        }
                    }
                }
                Role::Leader(flight) => flight,
            };
            // The previous flight for this key may have landed between our lookup and our join: its
            // answer is in the cache now, and calling the upstream again would break "one call per TTL".
            if let Lookup::Fresh { task, ttl } = self.cache.lookup(key.as_bytes()) {
                flight.land(Landed::Stored(Arc::clone(&task)));
                self.metrics.task_lookups(Outcome::Hit, 1);
                return Served::new(
                    task_response(&task, CacheStatus::Hit { ttl }, true),
                    Outcome::Hit,
                    None,
                );
            }
            self.metrics.task_lookups(Outcome::Miss, 1);
            let landing = flight.landing();
            let gateway = Arc::clone(self);
            let path = path.to_owned();
            let headers = headers.clone();
            let id = id.as_str().to_owned();
            // The call runs in a task of its own: if this client goes away, the other waiters still get
            // it. It keeps this request's span, so its log lines carry the leader's request id.
            tokio::spawn(
                async move {
                    let key = flight.key().clone();
                    let landed = gateway
                        .fetch_upstream(&path, &headers, fingerprint, client, &id, key)
                        .await;
                    flight.land(landed);
                }
                .in_current_span(),
            );
            return match landing.wait().await {
                Ok(landed) => {
                    self.hold_if_failed(key.as_bytes(), &landed, stale.is_some());
                    landed_response(landed, Outcome::Miss, stale.as_deref())
                }
                Err(abandoned) => Served::bypass(RequestError::from(abandoned).into_response()),
            };
        }
        not_returned()
    }

    /// After a failed refresh with a stale answer to stand in, holds off the next refresh for one TTL.
    pub(crate) fn hold_if_failed(&self, key: &[u8], landed: &Landed, has_stale: bool) {
        if has_stale && let Some(status) = failure_status(landed) {
            self.cache.hold_refresh(key, status);
        }
    }

    /// Asks the shared tier for one task, else calls the upstream (under the tier's lease) and stores
    /// the answer if it is that task's object, or briefly if it says there is no such task.
    async fn fetch_upstream(
        &self,
        path: &str,
        headers: &HeaderMap,
        fingerprint: CredentialFingerprint,
        client: ClientInfo,
        id: &str,
        key: CacheKey,
    ) -> Landed {
        let lease = match &self.shared {
            Some(shared) => match shared.claim(&key).await {
                Claim::Found(task) => {
                    self.cache.insert(key, Arc::clone(&task));
                    return Landed::Shared(task);
                }
                Claim::Lead(lease) => lease,
            },
            None => None,
        };
        let call = self.upstream.call_buffered(BufferedCall {
            route: RouteLabel::Fetch,
            credential: &fingerprint,
            method: Method::GET,
            path_and_query: path,
            headers,
            client,
            body: Bytes::new(),
        });
        let reply = shared::hold(lease.as_slice(), call).await;
        let landed = match reply {
            Err(e) => {
                e.log();
                Landed::Failed(e)
            }
            Ok(reply) => match self.store_if_task(&reply, id) {
                Some(task) => {
                    self.cache.insert(key.clone(), Arc::clone(&task));
                    if let Some(shared) = &self.shared {
                        shared.publish(&[(&key, &task)]).await;
                    }
                    Landed::Stored(task)
                }
                None => Landed::Passed(Arc::new(reply)),
            },
        };
        if let Some(lease) = lease {
            lease.release().await;
        }
        landed
    }

    /// The cache entry for `reply` if it is a storable answer for task `id`: that task's object, or one
    /// of the upstream's "no such task" answers.
    fn store_if_task(&self, reply: &BufferedReply, id: &str) -> Option<Arc<CachedTask>> {
        if !is_identity(&reply.headers) {
            return None;
        }
        let content_type = reply.headers.get(CONTENT_TYPE).map(compact_header);
        // Copies, not slices: the upstream's bytes may share a connection's read buffer, which a
        // long-lived entry would otherwise pin (and the memory budget would not see).
        if reply.status == StatusCode::OK
            && let Some(class) = classify_fetch_body(&reply.body, id)
        {
            let body = Bytes::copy_from_slice(&reply.body);
            return Some(Arc::new(CachedTask::new(body, content_type, class)));
        }
        is_not_found_answer(reply.status.as_u16(), &reply.body).then(|| {
            let body = Bytes::copy_from_slice(&reply.body);
            Arc::new(CachedTask::not_found(reply.status, body, content_type))
        })
    }

    /// Passthrough: bounds the request body, reads it whole when it is small (so a client trickling
    /// its upload holds no upstream slot meanwhile), then forwards it.
    async fn passthrough(&self, request: Request<Incoming>, client: ClientInfo) -> Served {
        let empty = request.body().is_end_stream();
        if let Err(fault) = request_body::check_framing(request.method(), request.headers(), empty)
        {
            return self.client_fault(fault);
        }
        let max = self.limits.max_request_body;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return self.client_fault(BodyFault::TooLarge(max));
        }
        // Counted and timed as it streams: a chunked body that grows too large (413), stalls (408) or
        // breaks (400) aborts the upstream call, and is the client's error.
        let idle = self.limits.body_read_timeout;
        let (parts, body) = request.into_parts();
        let body = request_body::bounded(body, max, idle);
        let buffer = self.limits.passthrough_buffer;
        // Only what the budget allows is buffered: past it, bodies stream as they always could.
        let reservation = match u32::try_from(buffer) {
            Ok(bytes) if bytes > 0 && declared.is_none_or(|len| len <= buffer) => {
                Arc::clone(&self.passthrough_buffers)
                    .try_acquire_many_owned(bytes)
                    .ok()
            }
            _ => None,
        };
        let body = match reservation {
            None => body,
            Some(_) => match request_body::prefetch(body, buffer as usize, max).await {
                Ok(Prefetched::Whole(bytes)) => Full::new(bytes)
                    .map_err(|never| -> BoxError { match never {} })
                    .boxed(),
                Ok(Prefetched::Streaming(body)) => body,
                Err(fault) => return self.client_fault(fault),
            },
        };
        let served = self.forward(Request::from_parts(parts, body), client).await;
        drop(reservation);
        served
    }

    /// A request whose body the client broke: its own 4xx, counted apart from upstream failures.
    pub(crate) fn client_fault(&self, fault: BodyFault) -> Served {
        tracing::debug!(error = %fault, "client request body failed");
        self.metrics.client_error(fault.label());
        Served::bypass(RequestError::ClientBody(fault).into_response())
    }

    /// Forwards the request untouched (but for hop-by-hop and forwarding headers), streaming both ways.
    pub(crate) async fn forward(
        &self,
        request: Request<UpstreamBody>,
        client: ClientInfo,
    ) -> Served {
        let fingerprint = self.fingerprinter.fingerprint(request.headers());
        match self
            .upstream
            .forward(RouteLabel::Passthrough, &fingerprint, request, client)
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                Served::new(
                    response.map(ResponseBody::Upstream),
                    Outcome::Bypass,
                    Some(status),
                )
            }
            Err(UpstreamError::ClientBody(fault)) => self.client_fault(fault),
            Err(e) => {
                e.log();
                Served::bypass(RequestError::Upstream(e).into_response())
            }
        }
    }
}

/// The answer for a landed flight, for a request that took part in it as `outcome` (miss or collapsed).
/// When the flight failed and `stale` holds an answer within `cache.max_stale`, that answer is served.
fn landed_response(landed: Landed, outcome: Outcome, stale: Option<&CachedTask>) -> Served {
    if let (Some(fwd_status), Some(stale)) = (failure_status(&landed), stale) {
        return serve_stale(stale, fwd_status);
    }
    let collapsed = outcome == Outcome::Collapsed;
    let status_for = |stored: bool, fwd_status: Option<u16>| {
        if collapsed {
            CacheStatus::Collapsed
        } else {
            CacheStatus::Miss { stored, fwd_status }
        }
    };
    match landed {
        Landed::Stored(task) => Served::new(
            task_response(&task, status_for(true, None), false),
            outcome,
            Some(task.status.as_u16()),
        ),
        Landed::Shared(task) if !collapsed => Served::new(
            task_response(&task, CacheStatus::Shared, true),
            Outcome::Shared,
            None,
        ),
        Landed::Shared(task) => Served::new(
            task_response(&task, CacheStatus::Collapsed, true),
            outcome,
            None,
        ),
        Landed::Passed(reply) => {
            let upstream_status = reply.status.as_u16();
            Served::new(
                passed_response(&reply, status_for(false, Some(upstream_status))),
                outcome,
                Some(upstream_status),
            )
        }
        Landed::Failed(e) => {
            let mut response = RequestError::Upstream(e).into_response();
            response
                .headers_mut()
                .insert(CACHE_STATUS.clone(), status_for(false, None).header_value());
            Served::new(response, outcome, None)
        }
        // Only batch calls land this, and fetches re-join rather than answer with it.
        Landed::NotReturned => not_returned(),
    }
}

/// A fetch that only ever found its task missing from batch answers: 502, as an unusable upstream answer.
fn not_returned() -> Served {
    Served::bypass(
        RequestError::Upstream(UpstreamError::unreachable(
            "the task was not in the upstream's answer",
            "a batch answer left the id out",
        ))
        .into_response(),
    )
}

/// A stale answer standing in for a failed refresh, marked RFC 9211 `fwd=stale`.
fn serve_stale(stale: &CachedTask, fwd_status: u16) -> Served {
    Served::new(
        task_response(stale, CacheStatus::Stale { fwd_status }, true),
        Outcome::Stale,
        Some(fwd_status),
    )
}

/// The status a failed flight stands for, when a stale answer should replace it: the gateway's own
/// error status, or an upstream `429` or `5xx`.
pub(crate) fn failure_status(landed: &Landed) -> Option<u16> {
    match landed {
        Landed::Failed(e) => Some(e.status().as_u16()),
        Landed::Passed(reply) if reply.status == StatusCode::TOO_MANY_REQUESTS => Some(429),
        Landed::Passed(reply) if reply.status.is_server_error() => Some(reply.status.as_u16()),
        _ => None,
    }
}

/// An upstream answer passed on as it came (status, headers, body), marked with `status`.
pub(crate) fn passed_response(
    reply: &BufferedReply,
    status: CacheStatus,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(reply.body.clone()));
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers.clone();
    response.headers_mut().remove(http::header::CONTENT_LENGTH);
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), status.header_value());
    response
}

/// A stored task as a response: the upstream's bytes and content type, plus `Cache-Status` (and `Age`
/// when it comes from the cache).
pub(crate) fn task_response(
    task: &CachedTask,
    status: CacheStatus,
    with_age: bool,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(task.body.clone()));
    *response.status_mut() = task.status;
    let headers = response.headers_mut();
    if task.status != StatusCode::NO_CONTENT {
        headers.insert(
            CONTENT_TYPE,
            task.content_type
                .clone()
                .unwrap_or_else(|| APPLICATION_JSON.clone()),
        );
    }
    if task.status == StatusCode::OK {
        headers.insert(ETAG, task.etag.clone());
    }
    headers.insert(CACHE_CONTROL, PRIVATE.clone());
    headers.insert(CACHE_STATUS.clone(), status.header_value());
    if with_age {
        headers.insert(AGE, crate::cache::status::age_header(task.age()));
    }
    response
}

/// A header value that owns its bytes (the common JSON types are shared statics), for cache entries.
pub(crate) fn compact_header(value: &HeaderValue) -> HeaderValue {
    const SHARED: [&str; 3] = [
        "application/json",
        "application/json;charset=UTF-8",
        "application/json; charset=utf-8",
    ];
    match SHARED.iter().find(|s| s.as_bytes() == value.as_bytes()) {
        Some(shared) => HeaderValue::from_static(shared),
        None => {
            HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| APPLICATION_JSON.clone())
        }
    }
}

pub(crate) fn is_identity(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
