//! The gateway's request handling: admit and route a request, then hand it to the one handler that
//! owns its route. The fetch routes are answered by the fetch core ([`crate::fetch`]) and the watchers
//! ([`crate::push`]); the rest each have a file here:
//!
//! | route | handler |
//! | --- | --- |
//! | `POST` on a family's batch route | `gateway/batch.rs` |
//! | `POST` on a family's submit route | `gateway/submit.rs` |
//! | `POST /_mjgate/callback/{token}` | `gateway/callback.rs` |
//! | `GET`/`HEAD /_mjgate/files/{token}` | `gateway/files.rs` |
//! | `/healthz`, `/readyz`, `/upstreamz`, `/metrics` | `gateway/admin.rs` |
//! | `/admin/tasks...` | `gateway/tasks.rs` |
//! | `/admin/config`, `/admin/reload` | `gateway/config.rs` |
//! | everything else | `gateway/passthrough.rs` |
//!
//! Every answer the gateway makes up is a `RequestError` turned into a response in one place
//! (`RequestError::into_response`, `error.rs`); every request is timed, counted and logged by the envelope
//! around this ([`crate::pipeline`]).

mod admin;
mod batch;
mod callback;
mod config;
mod download;
mod files;
mod passthrough;
mod submit;
mod tasks;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};
use tracing::Instrument;

use arc_swap::ArcSwap;

use crate::access::{AccessLog, Who};
use crate::body::{BoxError, CutOff, ResponseBody};
use crate::cache::response::task_response_for;
use crate::cache::status::CacheStatus;
use crate::cache::{CachedTask, KeyBuf, Lookup};
use crate::config::Config;
use crate::credential::FingerprintMemo;
use crate::error::RequestError;
use crate::family::TaskRef;
use crate::fetch::{Fetcher, Served};
use crate::idempotency::Idempotency;
use crate::metrics::{Metrics, Outcome, RouteLabel};
use crate::pipeline::{Answer, Call, Envelope, EnvelopeLayer, HitPath, SlowPath};
use crate::push::Push;
use crate::request::admission;
use crate::request::body::BodyBudget;
use crate::request::client_addr::TrustedProxies;
use crate::request::client_limits::{ClientLimits, Verdict};
use crate::request::id::X_REQUEST_ID;
use crate::request::routes::{self, Route};
use crate::upstream::{ClientInfo, UpstreamBody};
use crate::webhook::Hooks;

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Where clients connect.
    Main,
    /// `admin_listen`: `/metrics`, `/healthz`, `/readyz`, `/upstreamz` only.
    Admin,
}

/// Who is on the other end of a connection, as the handlers and the forwarding headers see it.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub listener: Listener,
    /// The connection is TLS (the upstream is told `proto=https`).
    pub tls: bool,
    /// The TLS version it speaks, for the access log.
    pub tls_version: Option<&'static str>,
    /// Cuts the connection off: what an event stream whose reader stopped reading asks for.
    pub cut_off: Arc<CutOff>,
}

impl Peer {
    /// A cleartext peer on the main listener.
    pub fn plain(addr: SocketAddr) -> Self {
        Peer {
            addr,
            listener: Listener::Main,
            tls: false,
            tls_version: None,
            cut_off: Arc::default(),
        }
    }

    /// The client of a request over this connection with `headers`: the peer, or behind
    /// `trusted` proxies the address they name.
    fn client(&self, headers: &http::HeaderMap, trusted: &TrustedProxies) -> ClientInfo {
        let peer = self.addr.ip();
        ClientInfo {
            ip: trusted.client(peer, headers),
            peer,
            tls: self.tls,
        }
    }
}

/// Request limits the handlers enforce, copied out of the config.
#[derive(Debug)]
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
    metrics: Arc<Metrics>,
    /// Bytes of client bodies held whole at once (passthrough buffers, batch queries, submits read
    /// for their hook): `server.body_buffer_total`, taken as the bytes arrive.
    bodies: BodyBudget,
    /// Admin routes live on their own listener, so the main one passes those paths through.
    admin_separate: bool,
    /// What a reload changes: read afresh by every request.
    settings: Arc<ArcSwap<Settings>>,
    /// The config running now, as its file said it (reloads compare against it), and where a
    /// reload reads the next one (set by the binary).
    running: parking_lot::Mutex<Config>,
    /// `server.per_client_*`: the per-address request rate and connection limits.
    client_limits: Arc<ClientLimits>,
    reload_source: std::sync::OnceLock<crate::reload::Source>,
    /// `cache.gzip`.
    gzip: bool,
    /// Set when shutdown begins, so `/readyz` tells load balancers to stop sending.
    draining: AtomicBool,
    /// `[webhooks]`: submits' hooks delivered by the gateway; `None` passes them on untouched.
    hooks: Option<Arc<Hooks>>,
    /// `[idempotency]`: submits' `Idempotency-Key`s; `None` when turned off.
    idempotency: Option<Arc<Idempotency>>,
    /// `upstream.submit_timeout`: how long a submit with a key may take (its work runs on its own).
    submit_timeout: std::time::Duration,
    /// `server.max_header_bytes`, checked on every request: hyper's read buffer bounds only a
    /// connection's first head exactly.
    max_header_bytes: usize,
    /// `upstream.request_timeout`.
    request_timeout: std::time::Duration,
}

/// The part of the config a reload swaps in whole for the requests that come after it.
#[derive(Debug)]
pub struct Settings {
    limits: Limits,
    /// `server.trusted_proxies`.
    trusted_proxies: TrustedProxies,
    /// `[log]`'s access log.
    access: Arc<AccessLog>,
    /// `admin.token`: the task admin routes' bearer token; `None` turns them off.
    admin_token: Option<String>,
}

impl Settings {
    fn of(config: &Config) -> Self {
        Settings {
            limits: Limits {
                batch_max_body: config.batch.max_body,
                batch_max_ids: config.batch.max_ids,
                max_request_body: config.server.max_request_body,
                passthrough_buffer: config.server.passthrough_buffer,
                body_read_timeout: config.server.body_read_timeout,
            },
            trusted_proxies: config.server.trusted_proxies.clone(),
            access: AccessLog::new(config.log.access.clone()),
            admin_token: config.admin_token.clone(),
        }
    }
}

impl Gateway {
    /// Builds the gateway for `config`. With a shared tier it needs a Tokio runtime (for the tier's
    /// listener and probe) and fails only on a Redis URL the client cannot parse.
    pub fn new(config: &Config) -> Result<Self, crate::Error> {
        let metrics = Arc::new(Metrics::new(config.cache.max_memory, &config.families));
        let fetcher = Arc::new(Fetcher::new(config, Arc::clone(&metrics))?);
        let hooks = match &config.webhooks {
            Some(webhooks) => Some(Arc::new(Hooks::new(
                webhooks,
                crate::tls::client_config(crate::tls::Roots::Webpki, None)?,
                Arc::clone(&metrics),
                fetcher.shared().cloned(),
            ))),
            None => None,
        };
        let idempotency = config.idempotency.as_ref().map(|idempotency| {
            Arc::new(Idempotency::new(
                idempotency,
                config.upstream.submit_timeout,
                fetcher.shared().cloned(),
                config
                    .shared_cache
                    .as_ref()
                    .map(|shared| shared.fingerprint_secret.as_bytes()),
                Arc::clone(&metrics),
            ))
        });
        Ok(Gateway {
            idempotency,
            submit_timeout: config.upstream.submit_timeout,
            max_header_bytes: config.server.max_header_bytes,
            request_timeout: config.upstream.request_timeout,
            settings: Arc::new(ArcSwap::from_pointee(Settings::of(config))),
            running: parking_lot::Mutex::new(config.clone()),
            client_limits: ClientLimits::new(
                config.server.per_client_rps,
                config.server.per_client_burst,
                config.server.per_client_connections,
            ),
            reload_source: std::sync::OnceLock::new(),
            push: Arc::new(Push::new(
                &config.watch,
                Arc::clone(&fetcher),
                Arc::clone(&metrics),
            )),
            fetcher,
            bodies: BodyBudget::new(config.server.body_buffer_total, Arc::clone(&metrics)),
            metrics,
            admin_separate: config.admin_listen.is_some(),
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

    /// Every upstream pool.
    pub fn pools(&self) -> &Arc<crate::upstream::pool::Pools> {
        self.fetcher.pools()
    }

    /// The settings as they stand now.
    fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Applies a reloaded config (already checked by [`crate::reload::check`]): the request
    /// settings for every request from now on, the cache's TTLs in place.
    fn apply(&self, config: &Config, running: &Config) {
        self.settings.store(Arc::new(Settings::of(config)));
        self.metrics.add_families(&config.families);
        self.fetcher.live_families().store(config.families.clone());
        // A family taken away: its entries are unreachable now, so their memory is given back.
        for family in config.families.retired_from(&running.families) {
            self.fetcher.cache().purge(&crate::cache::Scope {
                family: Some(family),
                id: None,
                credential: None,
            });
        }
        // Turning either section on or off needs a restart (`reload::check` refused it), so each
        // is here on both sides or on neither.
        if let (Some(hooks), Some(webhooks)) = (&self.hooks, &config.webhooks) {
            hooks.reconfigure(webhooks);
        }
        if let (Some(keeper), Some(artifacts)) = (self.fetcher.keeper(), &config.artifacts) {
            keeper.reconfigure(artifacts);
        }
        self.fetcher.cache().set_lifetime(&config.cache);
        self.client_limits.set(
            config.server.per_client_rps,
            config.server.per_client_burst,
            config.server.per_client_connections,
        );
    }

    /// The per-address limits.
    pub fn client_limits(&self) -> &Arc<ClientLimits> {
        &self.client_limits
    }

    /// Whether `peer` is one of `server.trusted_proxies` (whose connections carry many clients).
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.settings.load().trusted_proxies.trusts(peer)
    }

    /// The config this gateway runs, as its file said it (before the listeners it was given
    /// changed anything).
    pub fn set_running(&self, config: Config) {
        *self.running.lock() = config;
    }

    /// Where reloads read the config from (the binary's file and command line).
    pub fn set_reload_source(&self, source: crate::reload::Source) {
        let _ = self.reload_source.set(source);
    }

    /// The running config, described key by key (secrets redacted).
    pub fn running_config(&self) -> std::collections::BTreeMap<String, String> {
        crate::reload::describe(&self.running.lock())
    }

    /// Reads the config again and applies it, or refuses it whole (invalid, or changing a key only
    /// a restart applies) and keeps the running one. Counted and logged either way.
    pub fn reload_now(&self) -> Result<Vec<crate::reload::Change>, crate::reload::Refused> {
        let result = self.try_reload();
        match &result {
            Ok(changes) => {
                self.metrics.config_reload("ok");
                let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
                tracing::info!(changed = ?keys, "config reloaded");
            }
            Err(refused) => {
                self.metrics.config_reload(refused.label());
                tracing::warn!(error = %refused, "config not reloaded: the running one keeps serving");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Vec<crate::reload::Change>, crate::reload::Refused> {
        use crate::reload::Refused;
        let source = self.reload_source.get().ok_or(Refused::NoSource)?;
        let mut new = (source.load)().map_err(Refused::Invalid)?;
        // One reload at a time: two racing would each check against the same old config.
        let mut running = self.running.lock();
        // The families numbered as the running ones are, so that entries stay filed right.
        new.families = new
            .families
            .rebase(&running.families)
            .map_err(|e| Refused::Invalid(e.to_string()))?;
        let changes = crate::reload::check(&running, &new)?;
        (source.apply)(&new).map_err(Refused::Invalid)?;
        self.apply(&new, &running);
        *running = new;
        Ok(changes)
    }

    /// Everything spawned on behalf of requests, for the drain to wait on.
    pub fn work(&self) -> &crate::work::Work {
        self.fetcher.work()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.push.start_draining();
    }

    /// The request pipeline for one connection: the envelope around this gateway's handler. Built
    /// once per connection; its `call` never waits to be ready.
    pub fn pipeline(self: &Arc<Self>, peer: Peer) -> Envelope<Handler> {
        ServiceBuilder::new()
            // Outermost: times, counts and logs everything below it, refusals included.
            .layer(EnvelopeLayer::new(Arc::clone(&self.metrics), self.gzip))
            .service(self.handler(peer))
    }

    /// This gateway's side of the pipeline for one connection.
    pub fn handler(self: &Arc<Self>, peer: Peer) -> Handler {
        Handler {
            gateway: Arc::clone(self),
            settings: arc_swap::Cache::new(Arc::clone(&self.settings)),
            rate: None,
            peer,
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
            self.max_header_bytes,
        )
        .ok()
        .filter(|admitted| !admitted.opaque_credential)?;
        let Route::Fetch(route) = routes::classify(
            &self.fetcher.families(),
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
        // Kept files to link for this client first, or links on another name: the slow path.
        if task.files_pending()
            || self
                .fetcher
                .keeper()
                .is_some_and(|keeper| keeper.may_rebase(&task, request.headers()))
        {
            return None;
        }
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
    async fn handle(self: Arc<Self>, call: Call<Incoming>, peer: Peer) -> Answer {
        let Call {
            mut request,
            request_id,
            notes,
        } = call;
        let settings = self.settings();
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        keep_authority_as_host(&mut request);
        let families = &*self.fetcher.live_families().load_full();
        let (mut route, mut label) = self.route_of(&request, peer.listener);
        if matches!(route, Route::LongPoll(_) | Route::Events(_)) {
            // Held for as long as the task takes: a head that still views hyper's read buffer would
            // keep that whole buffer (8 KiB or more) alive beside the one hyper reads into next.
            request = detached(request);
            (route, label) = self.route_of(&request, peer.listener);
        }
        crate::access::note_route(label);
        let span = tracing::info_span!(
            "request",
            id = request_id.to_str().unwrap_or(""),
            route = label.as_str(),
            otel.kind = tracing::field::Empty,
        );
        if crate::trace::exporting() {
            crate::trace::describe_request(&span, &request, label.as_str());
        }
        // The client's trace continues here: this span is the parent of every upstream call.
        let trace = crate::trace::begin(&span, request.headers());
        if let Some(notes) = &notes {
            notes.set_trace(trace);
        }
        let client = peer.client(request.headers(), &settings.trusted_proxies);
        let served = match route {
            Route::Refused(refused) => {
                tracing::debug!(parent: &span, reason = %refused, "request refused");
                self.metrics.client_error(refused.label());
                Served::error(refused)
            }
            _ if peer.listener == Listener::Admin && !route.is_admin() => {
                Served::error(RequestError::AdminOnly)
            }
            Route::Health | Route::Ready | Route::Upstream | Route::Metrics => {
                Served::bypass(self.admin(&route))
            }
            Route::AdminConfig(which) => Served::bypass(self.admin_config(which, &request)),
            Route::AdminTasks(rest) => {
                let rest = rest.to_owned();
                Box::pin(self.admin_tasks(&rest, &request).instrument(span.clone())).await
            }
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
                    .events(&request, task.task, path, client, Arc::clone(&peer.cut_off))
                    .instrument(span.clone())
                    .await
            }
            Route::BadTaskId(e) => Served::error(e),
            // Boxed: their futures are the largest (passthrough's is 4.6 KB), and unboxed they would
            // size every request's future, a held long-poll's included (`-Zprint-type-sizes`: 5.8 KB
            // for this function's).
            Route::Batch(family) => {
                Box::pin(self.batch(request, family, client).instrument(span.clone())).await
            }
            Route::Submit(submit) => {
                let gateway = Arc::clone(&self);
                Box::pin(
                    gateway
                        .submit(request, submit, client)
                        .instrument(span.clone()),
                )
                .await
            }
            Route::Callback(token) => {
                let token = token.to_owned();
                Box::pin(
                    self.callback(&token, request, client)
                        .instrument(span.clone()),
                )
                .await
            }
            Route::File(token) => {
                let token = token.to_owned();
                Box::pin(self.file(&token, &request).instrument(span.clone())).await
            }
            Route::Download(task) => {
                let (family, id) = (task.task.family, task.task.id.as_str().to_owned());
                Box::pin(
                    self.download(family, &id, request, client)
                        .instrument(span.clone()),
                )
                .await
            }
            Route::Passthrough => {
                Box::pin(self.passthrough(request, client).instrument(span.clone())).await
            }
        };

        if crate::trace::exporting() {
            let cache = served.cache.map(|cache| cache.outcome().as_str());
            crate::trace::describe_answer(&span, served.response.status(), cache);
        }
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
            self.max_header_bytes,
        );
        let mut route = routes::classify(
            &self.fetcher.families(),
            request.method(),
            request.uri().path(),
            request.uri().query(),
            admitted.is_ok_and(|a| a.accepts_events),
        );
        if self.admin_separate && listener == Listener::Main && route.is_admin() {
            // An admin call sent to the wrong listener is answered here: the admin token never
            // goes upstream.
            route = if self.admin_authorized(request).is_ok() {
                Route::Refused(admission::Refused::AdminElsewhere)
            } else {
                Route::Passthrough
            };
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
}

/// The gateway's side of one connection's pipeline: admission, routing and the handlers.
pub struct Handler {
    gateway: Arc<Gateway>,
    /// The settings, looked at once per request (one atomic load unless a reload swapped them).
    settings: arc_swap::Cache<Arc<ArcSwap<Settings>>, Arc<Settings>>,
    /// The per-address rate's verdict on the request the hit path just looked at, for the slow
    /// path to act on without asking (and charging) again.
    rate: Option<Verdict>,
    peer: Peer,
    /// The credential this connection sent last, so its hits need not hash it again.
    memo: FingerprintMemo,
}

impl<B> HitPath<B> for Handler {
    #[inline(always)]
    fn try_hit(&mut self, request: &Request<B>) -> Option<Response<ResponseBody>> {
        let limits = &self.gateway.client_limits;
        if limits.rate_limited() && self.peer.listener == Listener::Main {
            let client = self
                .peer
                .client(request.headers(), &self.settings.load().trusted_proxies);
            let verdict = limits.admit(client.ip);
            self.rate = Some(verdict);
            if verdict != Verdict::Admitted {
                return None;
            }
        }
        self.gateway
            .try_hit(request, self.peer.listener, &mut self.memo)
    }

    fn access_log(&mut self) -> Option<Arc<AccessLog>> {
        let access = &self.settings.load().access;
        access.enabled().then(|| Arc::clone(access))
    }

    fn who(&mut self, headers: &HeaderMap) -> Who {
        let client = self
            .peer
            .client(headers, &self.settings.load().trusted_proxies);
        let credential = admission::credential_of(headers).map(|credential| {
            self.gateway
                .fetcher
                .fingerprinter()
                .of_memo(credential, &mut self.memo)
                .short()
        });
        Who {
            client: client.ip,
            peer: client.peer,
            tls: self.peer.tls_version,
            credential,
        }
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
        if let Some(Verdict::Limited(seconds)) = self.rate.take() {
            self.gateway.metrics.client_limited(false);
            let served = Served::error(RequestError::ClientRateLimited(seconds));
            let (_, route) = self.gateway.route_of(&call.request, self.peer.listener);
            return Box::pin(std::future::ready(Ok(Answer { served, route })));
        }
        let notes = call.notes.clone();
        let handling = Arc::clone(&self.gateway).handle(call, self.peer.clone());
        Box::pin(async move { Ok(crate::access::with_notes(notes, handling).await) })
    }
}

/// A buffered body, as the upstream client takes it.
fn full(body: Bytes) -> UpstreamBody {
    Full::new(body)
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

/// An HTTP/2 request's `:authority` as a `Host` header, so that what the forwarding headers report
/// (`X-Forwarded-Host`) is the same over both protocols.
fn keep_authority_as_host<B>(request: &mut Request<B>) {
    if request.headers().contains_key(HOST) {
        return;
    }
    if let Some(authority) = request.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(HOST, host);
    }
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
