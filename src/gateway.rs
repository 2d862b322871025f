//! The gateway's request handling: route a request, serve task fetches from the cache with collapsing,
//! and forward everything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{AGE, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::cache::{CacheKey, CachedTask, KeyBuf, Lookup, TaskCache};
use crate::cache_status::CacheStatus;
use crate::collapse::{Collapser, Role};
use crate::config::Config;
use crate::credential::Fingerprinter;
use crate::error::RequestError;
use crate::routes::{self, Route};
use crate::task::{TaskClass, TaskId, classify_fetch_body};
use crate::upstream::{BoxError, BufferedReply, ClientInfo, Upstream, UpstreamBody, UpstreamError};

pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

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
}

/// Request limits the handlers enforce, copied out of the config.
pub(crate) struct Limits {
    pub batch_max_body: u64,
    pub batch_max_ids: usize,
    pub batch_upstream_chunk: usize,
}

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub(crate) upstream: Upstream,
    pub(crate) cache: TaskCache,
    /// Task lookups in the air, by cache key, whether a fetch or a batch started them.
    pub(crate) flights: Arc<Collapser<Landed>>,
    pub(crate) fingerprinter: Fingerprinter,
    pub(crate) limits: Limits,
    /// Set when shutdown begins, so `/readyz` tells load balancers to stop sending.
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(config: &Config) -> Self {
        Gateway {
            upstream: Upstream::new(&config.upstream),
            cache: TaskCache::new(config.cache.max_memory, config.cache.in_progress_ttl),
            flights: Collapser::new(),
            fingerprinter: Fingerprinter::random(),
            limits: Limits {
                batch_max_body: config.batch.max_body,
                batch_max_ids: config.batch.max_ids,
                batch_upstream_chunk: config.batch.upstream_chunk,
            },
            draining: AtomicBool::new(false),
        }
    }

    pub fn cache(&self) -> &TaskCache {
        &self.cache
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let client = ClientInfo { ip: peer.ip() };
        let route = routes::classify(request.method(), request.uri().path());
        tracing::debug!(route = route.label(), method = %request.method(), "request");
        match route {
            Route::Health => plain(StatusCode::OK, "ok"),
            Route::Ready if self.draining.load(Ordering::Relaxed) => {
                RequestError::Draining.into_response()
            }
            Route::Ready => plain(StatusCode::OK, "ready"),
            Route::Fetch(id) => self.fetch(&request, id, client).await,
            Route::BadTaskId(e) => RequestError::BadTaskId(e).into_response(),
            Route::Batch => self.batch(request, client).await,
            Route::Passthrough => {
                let request = request.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed());
                self.forward(request, client).await
            }
        }
    }

    /// `GET [/{mode}]/mj/task/{id}/fetch`: a fresh cache entry, else one collapsed upstream call.
    async fn fetch(
        self: &Arc<Self>,
        request: &Request<Incoming>,
        id: TaskId<'_>,
        client: ClientInfo,
    ) -> Response<ResponseBody> {
        let fingerprint = self.fingerprinter.fingerprint(request.headers());
        let key = KeyBuf::new(&fingerprint, id);
        if let Lookup::Fresh { task, ttl } = self.cache.lookup(key.as_bytes()) {
            return task_response(&task, CacheStatus::Hit { ttl }, true);
        }
        // A flight started by a batch lands `NotReturned` for ids its answer left out; a fetch then asks
        // the upstream itself, to pass on the upstream's own not-found answer. Twice at most.
        for _ in 0..2 {
            let flight = match self.flights.join(key.as_bytes()) {
                Role::Follower(landing) => match landing.wait().await {
                    Ok(Landed::NotReturned) => continue,
                    Ok(landed) => return landed_response(landed, |_| CacheStatus::Collapsed),
                    Err(abandoned) => return RequestError::from(abandoned).into_response(),
                },
                Role::Leader(flight) => flight,
            };
            // The previous flight for this key may have landed between our lookup and our join: its
            // answer is in the cache now, and calling the upstream again would break "one call per TTL".
            if let Lookup::Fresh { task, ttl } = self.cache.lookup(key.as_bytes()) {
                flight.land(Landed::Stored(Arc::clone(&task)));
                return task_response(&task, CacheStatus::Hit { ttl }, true);
            }
            let landing = flight.landing();
            let gateway = Arc::clone(self);
            let path = request.uri().path().to_owned();
            let headers = request.headers().clone();
            let id = id.as_str().to_owned();
            // The call runs in a task of its own: if this client goes away, the other waiters still get it.
            tokio::spawn(async move {
                let key = flight.key().clone();
                let landed = gateway
                    .fetch_upstream(&path, &headers, client, &id, key)
                    .await;
                flight.land(landed);
            });
            return match landing.wait().await {
                Ok(landed) => landed_response(landed, |stored| CacheStatus::Miss {
                    stored,
                    fwd_status: None,
                }),
                Err(abandoned) => RequestError::from(abandoned).into_response(),
            };
        }
        RequestError::Upstream(UpstreamError::Unreachable(
            "the task was not in the upstream's batch answers".into(),
        ))
        .into_response()
    }

    /// Calls the upstream for one task and stores the answer if it is that task's object.
    async fn fetch_upstream(
        &self,
        path: &str,
        headers: &HeaderMap,
        client: ClientInfo,
        id: &str,
        key: CacheKey,
    ) -> Landed {
        let reply = match self
            .upstream
            .call_buffered(Method::GET, path, headers, client, Bytes::new())
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, "upstream fetch failed");
                return Landed::Failed(e);
            }
        };
        match self.store_if_task(&reply, id) {
            Some(task) => {
                self.cache.insert(key, Arc::clone(&task));
                Landed::Stored(task)
            }
            None => Landed::Passed(Arc::new(reply)),
        }
    }

    /// The cache entry for `reply` if it is a storable answer for task `id`.
    fn store_if_task(&self, reply: &BufferedReply, id: &str) -> Option<Arc<CachedTask>> {
        if reply.status != StatusCode::OK || !is_identity(&reply.headers) {
            return None;
        }
        let class: TaskClass = classify_fetch_body(&reply.body, id)?;
        Some(Arc::new(CachedTask::new(
            reply.body.clone(),
            reply.headers.get(CONTENT_TYPE).cloned(),
            class,
        )))
    }

    /// Forwards the request untouched (but for hop-by-hop and forwarding headers), streaming both ways.
    pub(crate) async fn forward(
        &self,
        request: Request<UpstreamBody>,
        client: ClientInfo,
    ) -> Response<ResponseBody> {
        match self.upstream.forward(request, client).await {
            Ok(response) => response.map(ResponseBody::Upstream),
            Err(e) => {
                tracing::warn!(error = %e, "passthrough failed");
                RequestError::Upstream(e).into_response()
            }
        }
    }
}

/// The answer for a landed flight; `status_of(stored)` names how this request took part in it.
fn landed_response(
    landed: Landed,
    status_of: impl FnOnce(bool) -> CacheStatus,
) -> Response<ResponseBody> {
    match landed {
        Landed::Stored(task) => task_response(&task, status_of(true), false),
        Landed::Passed(reply) => {
            let mut status = status_of(false);
            if let CacheStatus::Miss { fwd_status, .. } = &mut status {
                *fwd_status = Some(reply.status.as_u16());
            }
            passed_response(&reply, status)
        }
        Landed::Failed(e) => {
            let mut response = RequestError::Upstream(e).into_response();
            response
                .headers_mut()
                .insert(CACHE_STATUS.clone(), status_of(false).header_value());
            response
        }
        // Only batch calls land this, and fetches re-join rather than answer with it.
        Landed::NotReturned => RequestError::Upstream(UpstreamError::Unreachable(
            "the task was not in the upstream's answer".into(),
        ))
        .into_response(),
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
fn task_response(task: &CachedTask, status: CacheStatus, with_age: bool) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(task.body.clone()));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        task.content_type
            .clone()
            .unwrap_or_else(|| APPLICATION_JSON.clone()),
    );
    headers.insert(CACHE_STATUS.clone(), status.header_value());
    if with_age {
        headers.insert(AGE, HeaderValue::from(task.age()));
    }
    response
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
