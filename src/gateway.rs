//! The gateway's request handling: route a request, serve task fetches from the cache with collapsing,
//! and forward everything else; every request is timed, counted and logged in one span.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};
use tracing::Instrument;

use crate::body::{BoxError, ResponseBody};
use crate::cache::response::task_response_for;
use crate::cache::status::CacheStatus;
use crate::cache::{CachedTask, KeyBuf, Lookup};
use crate::config::Config;
use crate::credential::FingerprintMemo;
use crate::error::{RequestError, json_error};
use crate::family::{FamilyId, TaskRef};
use crate::fetch::batch::BatchQuery;
use crate::fetch::{Fetcher, Served};
use crate::metrics::{Metrics, Outcome, RouteLabel};
use crate::pipeline::{Answer, Call, Envelope, EnvelopeLayer, HitPath, SlowPath};
use crate::push::Push;
use crate::push::hooks::HookTask;
use crate::request::admission;
use crate::request::body::{self as request_body, BodyFault, Prefetched};
use crate::request::id::X_REQUEST_ID;
use crate::request::routes::{self, Route};
use crate::task::TaskId;
use crate::upstream::{BufferedReply, ClientInfo, UpstreamBody, UpstreamError};
use crate::webhook::guard::{HookError, HookUrl};
use crate::webhook::{Hooks, Slot, submit};

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Where clients connect.
    Main,
    /// `admin_listen`: `/metrics`, `/healthz`, `/readyz` only.
    Admin,
}

/// Request limits the handlers enforce, copied out of the config.
struct Limits {
    batch_max_body: u64,
    batch_max_ids: usize,
    max_request_body: u64,
    passthrough_buffer: u64,
    body_read_timeout: std::time::Duration,
}

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    /// The fetch core: the only way to a task's answer.
    fetcher: Arc<Fetcher>,
    /// Long-polls and event streams, over the fetch core.
    push: Arc<Push>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Bytes of passthrough bodies being read whole before their upstream call
    /// (`server.passthrough_buffer_total`), one reservation of `passthrough_buffer` per request.
    passthrough_buffers: Arc<tokio::sync::Semaphore>,
    /// Admin routes live on their own listener, so the main one passes those paths through.
    admin_separate: bool,
    /// Log every request at `info` (else at `debug`, under the `mjgate::access` target).
    access_log: bool,
    /// `cache.gzip`.
    gzip: bool,
    /// Set when shutdown begins, so `/readyz` tells load balancers to stop sending.
    draining: AtomicBool,
    /// `[webhooks]`: submits' hooks delivered by the gateway; `None` passes them on untouched.
    hooks: Option<Arc<Hooks>>,
}

impl Gateway {
    /// Builds the gateway for `config`. With a shared tier it needs a Tokio runtime (for the tier's
    /// listener and probe) and fails only on a Redis URL the client cannot parse.
    pub fn new(config: &Config) -> Result<Self, crate::Error> {
        let metrics = Arc::new(Metrics::new(config.cache.max_memory, &config.families));
        let hooks = match &config.webhooks {
            Some(webhooks) => Some(Arc::new(Hooks::new(
                webhooks,
                crate::tls::client_config(crate::tls::Roots::Webpki, None)?,
                Arc::clone(&metrics),
            ))),
            None => None,
        };
        let fetcher = Arc::new(Fetcher::new(config, Arc::clone(&metrics))?);
        Ok(Gateway {
            push: Arc::new(Push::new(
                &config.watch,
                Arc::clone(&fetcher),
                Arc::clone(&metrics),
            )),
            fetcher,
            limits: Limits {
                batch_max_body: config.batch.max_body,
                batch_max_ids: config.batch.max_ids,
                max_request_body: config.server.max_request_body,
                passthrough_buffer: config.server.passthrough_buffer,
                body_read_timeout: config.server.body_read_timeout,
            },
            metrics,
            passthrough_buffers: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(config.server.passthrough_buffer_total)
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            admin_separate: config.admin_listen.is_some(),
            access_log: config.log.access,
            gzip: config.cache.gzip,
            draining: AtomicBool::new(false),
            hooks,
        })
    }

    /// Starts the background work a gateway needs beside its requests: with webhooks and the Redis
    /// tier, the sweep that takes over hooks another replica left. Needs a Tokio runtime.
    pub fn start_background(&self) {
        if let Some(hooks) = &self.hooks
            && self.fetcher.shared().is_some()
        {
            self.push.sweep_orphan_hooks(hooks);
        }
    }

    /// Stores `task` as the answer for `task_ref` under the credential in `headers` (to pre-warm the
    /// cache).
    pub fn store(&self, headers: &HeaderMap, task_ref: TaskRef<'_>, task: Arc<CachedTask>) {
        let key = KeyBuf::new(&self.fetcher.fingerprinter().fingerprint(headers), task_ref);
        self.fetcher.cache().insert(key.to_key(), task);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.push.start_draining();
    }

    /// The request pipeline for one connection: the envelope around this gateway's handler. Built
    /// once per connection; its `call` never waits to be ready.
    pub fn pipeline(self: &Arc<Self>, peer: SocketAddr, listener: Listener) -> Envelope<Handler> {
        ServiceBuilder::new()
            // Outermost: times, counts and logs everything below it, refusals included.
            .layer(EnvelopeLayer::new(
                Arc::clone(&self.metrics),
                self.access_log,
                self.gzip,
            ))
            .service(self.handler(peer, listener))
    }

    /// This gateway's side of the pipeline for one connection.
    pub fn handler(self: &Arc<Self>, peer: SocketAddr, listener: Listener) -> Handler {
        Handler {
            gateway: Arc::clone(self),
            peer,
            listener,
            memo: FingerprintMemo::default(),
        }
    }

    /// The hit path: a fetch whose answer is fresh in the cache. `None` sends the request down the slow
    /// path, which looks again (a miss is far costlier than a second lookup). Inlined into the
    /// envelope's hit path: returned through a call, the response costs a copy (callgrind: ~130
    /// instructions a hit).
    #[inline(always)]
    pub fn try_hit<B>(
        &self,
        request: &Request<B>,
        listener: Listener,
        memo: &mut FingerprintMemo,
    ) -> Option<Response<ResponseBody>> {
        if listener == Listener::Admin {
            return None;
        }
        // A refused request is answered (and counted) by the slow path.
        let admitted = admission::admit(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        )
        .ok()
        .filter(|admitted| !admitted.opaque_credential)?;
        let Route::Fetch(route) = routes::classify(
            self.fetcher.families(),
            request.method(),
            request.uri().path(),
            request.uri().query(),
            admitted.accepts_events,
        ) else {
            return None;
        };
        let credential = admitted.credential;
        let fingerprint = self.fetcher.fingerprinter().of_memo(credential, memo);
        let key = KeyBuf::new(&fingerprint, route.task);
        let Lookup::Fresh { task, ttl } = self.fetcher.cache().lookup(key.as_bytes()) else {
            return None;
        };
        self.metrics
            .task_lookups(route.task.family, Outcome::Hit, 1);
        Some(task_response_for(
            &task,
            CacheStatus::Hit { ttl },
            true,
            admitted.accepts_gzip,
        ))
    }

    /// The slow path: admits and routes a request and runs its handler, in a span carrying the request
    /// id (sent upstream too). The envelope around it ([`crate::pipeline`]) does the rest.
    async fn handle(
        self: Arc<Self>,
        call: Call<Incoming>,
        peer: SocketAddr,
        listener: Listener,
    ) -> Answer {
        let Call {
            mut request,
            request_id,
        } = call;
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let families = self.fetcher.families();
        let (mut route, mut label) = self.route_of(&request, listener);
        if matches!(route, Route::LongPoll(_) | Route::Events(_)) {
            // Held for as long as the task takes: a head that still views hyper's read buffer would
            // keep that whole buffer (8 KiB or more) alive beside the one hyper reads into next.
            request = detached(request);
            (route, label) = self.route_of(&request, listener);
        }
        let span = tracing::info_span!(
            "request",
            id = request_id.to_str().unwrap_or(""),
            route = label.as_str(),
        );
        let client = ClientInfo { ip: peer.ip() };
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
            Route::Health | Route::Ready | Route::Metrics => Served::bypass(self.admin(&route)),
            Route::LongPoll(task) => {
                let path = task.upstream_path(families);
                self.push
                    .long_poll(&request, task.task, &path, client)
                    .instrument(span.clone())
                    .await
            }
            Route::Fetch(task) => {
                let path = task.upstream_path(families);
                self.fetcher
                    .fetch(&path, request.headers(), task.task, client)
                    .instrument(span.clone())
                    .await
            }
            Route::Events(task) => {
                let path = task.upstream_path(families);
                self.push
                    .events(&request, task.task, path, client)
                    .instrument(span.clone())
                    .await
            }
            Route::BadTaskId(e) => Served::bypass(RequestError::BadTaskId(e).into_response()),
            // Boxed: their futures are the largest (passthrough's is 4.6 KB), and unboxed they would
            // size every request's future, a held long-poll's included (`-Zprint-type-sizes`: 5.8 KB
            // for this function's).
            Route::Batch(family) => {
                Box::pin(self.batch(request, family, client).instrument(span.clone())).await
            }
            Route::Callback(token) => {
                let token = token.to_owned();
                Box::pin(
                    self.callback_route(&token, request, client)
                        .instrument(span.clone()),
                )
                .await
            }
            Route::Passthrough => {
                Box::pin(self.passthrough(request, client).instrument(span.clone())).await
            }
        };

        Answer {
            served,
            route: label,
        }
    }

    /// Where a request goes, and the label its metrics and log line carry: admitted (or refused),
    /// routed, admin routes kept to their listener, credentials the cache cannot see passed through.
    fn route_of<'r>(
        &self,
        request: &'r Request<Incoming>,
        listener: Listener,
    ) -> (Route<'r>, RouteLabel) {
        let admitted = admission::admit(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        );
        let mut route = routes::classify(
            self.fetcher.families(),
            request.method(),
            request.uri().path(),
            request.uri().query(),
            admitted.is_ok_and(|a| a.accepts_events),
        );
        if self.admin_separate && listener == Listener::Main && route.is_admin() {
            route = Route::Passthrough;
        }
        let label = route.label();
        match admitted {
            Err(refused) => route = Route::Refused(refused),
            // Answers for a credential the cache cannot see go straight through.
            Ok(admitted) if admitted.opaque_credential && route.is_cached() => {
                route = Route::Passthrough;
            }
            Ok(_) => {}
        }
        (route, label)
    }

    /// `/_mjgate/callback/{token}`: the gateway's own with `[webhooks]` (`POST` only), passed through
    /// like any path without.
    async fn callback_route(
        &self,
        token: &str,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Served {
        match &self.hooks {
            Some(_) if request.method() != Method::POST => Served::bypass(json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "callbacks are POSTed",
            )),
            Some(hooks) => self.called_back(hooks, token, request).await,
            None => self.passthrough(request, client).await,
        }
    }

    /// `/healthz`, `/readyz` and `/metrics`.
    fn admin(&self, route: &Route<'_>) -> Response<ResponseBody> {
        match route {
            Route::Ready if self.draining.load(Ordering::Relaxed) => {
                RequestError::Draining.into_response()
            }
            Route::Ready if self.fetcher.upstream().protection().breaker().is_open() => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream unreachable (circuit open)",
            ),
            Route::Ready => plain(StatusCode::OK, "ready"),
            Route::Metrics => self.metrics_response(),
            _ => plain(StatusCode::OK, "ok"),
        }
    }

    fn metrics_response(&self) -> Response<ResponseBody> {
        // Apply pending evictions first, so the cache gauges are exact at scrape time.
        self.fetcher.cache().sync();
        let mut response = Response::new(ResponseBody::full(self.metrics.render()));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// `POST` on a family's batch route (`[/{mode}]/mj/task/list-by-condition`, `/suno/fetch`).
    async fn batch(
        &self,
        request: Request<Incoming>,
        family: FamilyId,
        client: ClientInfo,
    ) -> Served {
        let (parts, body) = request.into_parts();
        let body = match read_body(&parts.headers, body, &self.limits).await {
            Ok(body) => body,
            Err(fault) => return self.client_fault(fault),
        };
        let ignored = self
            .fetcher
            .families()
            .get(family)
            .batch()
            .map_or(&[][..], |batch| &batch.ignore_fields[..]);
        let query = BatchQuery::parse(&body, self.limits.batch_max_ids, ignored);
        let ids: Vec<TaskId<'_>> = match &query {
            // Validated by the parser; parsing again only turns them into `TaskId`s.
            Ok(BatchQuery::Ids(ids)) => {
                ids.iter().filter_map(|id| TaskId::parse(id).ok()).collect()
            }
            Ok(BatchQuery::Other) => {
                let request = Request::from_parts(
                    parts,
                    Full::new(body.clone())
                        .map_err(|never| -> BoxError { match never {} })
                        .boxed(),
                );
                return self.forward(request, client).await;
            }
            Err(e) => return Served::bypass(RequestError::BadBatch(e.to_string()).into_response()),
        };
        self.fetcher
            .batch(parts.uri.path(), &parts.headers, family, &ids, client)
            .await
    }

    /// Passthrough: bounds the request body, reads it whole when it is small (so a client trickling
    /// its upload holds no upstream slot meanwhile), then forwards it.
    async fn passthrough(&self, request: Request<Incoming>, client: ClientInfo) -> Served {
        if let Some(hooks) = &self.hooks
            && let Some(route) = self.submit_route(request.method(), request.uri().path())
            && request_body::check_identity(request.headers()).is_ok()
        {
            return self.submit_with_hook(hooks, route, request, client).await;
        }
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

    /// A Midjourney submit while the gateway delivers hooks: its `notifyHook` is taken out of the body
    /// the upstream sees; once the upstream's answer names the task, the gateway watches it and
    /// delivers every change to the hook. The client gets the upstream's answer unchanged.
    async fn submit_with_hook(
        &self,
        hooks: &Arc<Hooks>,
        route: SubmitRoute,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Served {
        let (mut parts, body) = request.into_parts();
        let max = self.limits.max_request_body;
        let read = request_body::read(
            request_body::bounded(body, max, self.limits.body_read_timeout),
            max,
        );
        let body = match read.await {
            Ok(body) => body,
            Err(fault) => return self.client_fault(fault),
        };
        let hooked = submit::take_over(&body, &route.field, None);
        let Some(hooked) = hooked else {
            return self
                .forward(Request::from_parts(parts, full(body)), client)
                .await;
        };
        // Checked before anything else, whatever happens next: a hook the gateway would refuse is
        // the client's error, never forwarded.
        let hook = match HookUrl::parse(&hooked.hook) {
            Ok(hook) => hook,
            Err(e) => return bad_hook(&e),
        };
        if let Err(e @ HookError::Internal(_)) = hook.resolve(hooks.allow_private()).await {
            return bad_hook(&e);
        }
        let family = route.family;
        let fingerprint = self.fetcher.fingerprinter().fingerprint(&parts.headers);
        let Some(slot) = hooks.reserve(fingerprint) else {
            // `webhooks.max_pending` (or its per-credential share) reached: the submit goes on as
            // it came, the upstream's own callback (if any) in place of the gateway's delivery.
            return self
                .forward(Request::from_parts(parts, full(body)), client)
                .await;
        };
        // With `public_url`, the upstream gets the gateway's own callback URL instead of nothing.
        let callback = hooks.issue_callback(fingerprint, family);
        let forwarded = match &callback {
            Some((url, _)) => submit::take_over(&body, &route.field, Some(url))
                .map_or(hooked.body, |taken| taken.body),
            None => hooked.body,
        };
        parts.headers.remove(CONTENT_LENGTH);
        let task = HookTask {
            family,
            id: String::new(),
            path: String::new(),
            headers: parts.headers.clone(),
            client,
            hook,
            callback: callback.map(|(_, token)| token),
        };
        let request = Request::from_parts(parts, full(forwarded));
        self.forward_submit(hooks, slot, &route, task, request)
            .await
    }

    /// Forwards a submit whose hook was taken over; once the upstream's answer names the task, its
    /// changes are delivered to the hook. The client gets the answer unchanged.
    async fn forward_submit(
        &self,
        hooks: &Arc<Hooks>,
        slot: Slot,
        route: &SubmitRoute,
        mut task: HookTask,
        request: Request<UpstreamBody>,
    ) -> Served {
        let served = self.forward(request, task.client).await;
        let (head, answer) = served.response.into_parts();
        let answer = match Limited::new(answer, 1 << 20).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return Served::bypass(json_error(
                    StatusCode::BAD_GATEWAY,
                    "the upstream's answer to the submit could not be read",
                ));
            }
        };
        let families = self.fetcher.families();
        let id = if route.midjourney {
            submit::submitted_task(&answer)
        } else {
            families
                .get(route.family)
                .submit()
                .and_then(|s| s.task_id_in(&answer))
        };
        let path = id.as_deref().and_then(|id| {
            let id = TaskId::parse(id).ok()?;
            families.status_path(route.family, &route.mode, id)
        });
        match (id, path) {
            (Some(id), Some(path)) if head.status.is_success() => {
                if let Some(token) = &task.callback {
                    hooks.bind_callback(token, &id);
                }
                task.path = path;
                task.id = id;
                self.push.deliver_hook(hooks, slot, task);
            }
            _ => {
                if let Some(token) = &task.callback {
                    hooks.forget_callback(token);
                }
            }
        }
        Served {
            response: Response::from_parts(head, ResponseBody::full(answer)),
            ..served
        }
    }

    /// `POST /_mjgate/callback/{token}`: an upstream calling back with a task. Stored only if the token
    /// was issued for that task, and only under the credential it was issued to; then the task's
    /// long-polls, streams and hook see it at once.
    async fn called_back(
        &self,
        hooks: &Arc<Hooks>,
        token: &str,
        request: Request<Incoming>,
    ) -> Served {
        let (parts, body) = request.into_parts();
        let body = match read_body(&parts.headers, body, &self.limits).await {
            Ok(body) => body,
            Err(fault) => return self.client_fault(fault),
        };
        let unknown = || Served::bypass(json_error(StatusCode::NOT_FOUND, "no such callback"));
        let Some(family) = hooks.callback_family(token) else {
            return unknown();
        };
        let families = self.fetcher.families();
        let Some(id) = families.get(family).task_id_in(&body) else {
            return Served::bypass(json_error(
                StatusCode::BAD_REQUEST,
                "the callback names no task",
            ));
        };
        let (Ok(task_id), Some(callback)) = (TaskId::parse(&id), hooks.callback(token, &id)) else {
            return unknown();
        };
        let task = TaskRef {
            family,
            id: task_id,
        };
        let answer = BufferedReply {
            status: StatusCode::OK,
            headers: parts.headers,
            body,
        };
        match self
            .fetcher
            .store_called_back(&callback.fingerprint, task, &answer)
            .await
        {
            Some((key, stored)) => {
                self.metrics.webhooks.callback();
                self.push.announce(&key, &stored);
                Served::bypass(plain(StatusCode::OK, "ok"))
            }
            None => Served::bypass(json_error(
                StatusCode::BAD_REQUEST,
                "the callback is not that task's answer",
            )),
        }
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
        let fingerprint = self.fetcher.fingerprinter().fingerprint(request.headers());
        match self
            .fetcher
            .upstream()
            .forward(RouteLabel::Passthrough, &fingerprint, request, client)
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                Served::forwarded(response.map(ResponseBody::Upstream), status)
            }
            Err(UpstreamError::ClientBody(fault)) => self.client_fault(fault),
            Err(e) => {
                e.log();
                Served::bypass(RequestError::Upstream(e).into_response())
            }
        }
    }
}

/// Reads a client body of at most `batch.max_body` bytes: 413 beyond, checked against `Content-Length`
/// first; 408 when it stalls for `server.body_read_timeout`; 400 when it is malformed or cut short.
async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limits: &Limits,
) -> Result<Bytes, BodyFault> {
    request_body::check_framing(&Method::POST, headers, false)?;
    request_body::check_identity(headers)?;
    let max = limits.batch_max_body;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(BodyFault::TooLarge(max));
    }
    request_body::read(
        request_body::bounded(body, max, limits.body_read_timeout),
        max,
    )
    .await
}

/// The gateway's side of one connection's pipeline: admission, routing and the handlers.
pub struct Handler {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    listener: Listener,
    /// The credential this connection sent last, so its hits need not hash it again.
    memo: FingerprintMemo,
}

impl<B> HitPath<B> for Handler {
    #[inline(always)]
    fn try_hit(&mut self, request: &Request<B>) -> Option<Response<ResponseBody>> {
        self.gateway.try_hit(request, self.listener, &mut self.memo)
    }
}

impl Service<Call<Incoming>> for Handler {
    type Response = Answer;
    type Error = Infallible;
    type Future = SlowPath;

    /// Always ready: nothing here queues.
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call<Incoming>) -> SlowPath {
        let handling = Arc::clone(&self.gateway).handle(call, self.peer, self.listener);
        Box::pin(async move { Ok(handling.await) })
    }
}

/// A submit whose callback field the gateway takes over.
struct SubmitRoute {
    family: FamilyId,
    /// The body's field with the client's callback URL.
    field: String,
    /// The mode segment it came under (`""` or `/mj-fast`), kept for the status path.
    mode: String,
    /// Midjourney's answers name the task by `code` and `result`; the others by `submit.id_at`.
    midjourney: bool,
}

impl Gateway {
    /// The submit route `method path` is, if the gateway takes its hook over: Midjourney's
    /// `[/{mode}]/mj/submit/*`, or a family's `submit.routes`.
    fn submit_route(&self, method: &Method, path: &str) -> Option<SubmitRoute> {
        if *method != Method::POST {
            return None;
        }
        let families = self.fetcher.families();
        if let Some(mode) = submit_mode(method, path)
            && let Some(midjourney) = families.by_name("midjourney")
        {
            return Some(SubmitRoute {
                family: midjourney.id(),
                field: submit::NOTIFY_HOOK.to_owned(),
                mode: mode.to_owned(),
                midjourney: true,
            });
        }
        let family = families.submit_route(path)?;
        Some(SubmitRoute {
            family: family.id(),
            field: family.submit()?.callback_field.clone(),
            mode: String::new(),
            midjourney: false,
        })
    }
}

/// The mode prefix of a Midjourney submit (`""` or `/mj-fast`), if this is one.
fn submit_mode<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if *method != Method::POST {
        return None;
    }
    let at = path.find("/mj/submit/")?;
    let mode = &path[..at];
    let one_segment = mode.is_empty() || (mode.starts_with('/') && !mode[1..].contains('/'));
    one_segment.then_some(mode)
}

/// A buffered body, as the upstream client takes it.
fn full(body: Bytes) -> UpstreamBody {
    Full::new(body)
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

/// A `notifyHook` the gateway will not deliver to: the client's error.
fn bad_hook(error: &HookError) -> Served {
    Served::bypass(json_error(
        StatusCode::BAD_REQUEST,
        &format!("notifyHook: {error}"),
    ))
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

/// The request with its target and header values copied out of hyper's read buffer.
fn detached(request: Request<Incoming>) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) =
        http::Uri::from_maybe_shared(Bytes::copy_from_slice(parts.uri.to_string().as_bytes()))
    {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let copied = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        headers.append(name.clone(), copied);
    }
    parts.headers = headers;
    Request::from_parts(parts, body)
}
