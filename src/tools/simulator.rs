//! A faithful in-process relay of task APIs: the upstream for tests, benchmarks and the demo.
//!
//! It speaks Midjourney as `UPSTREAM-API.md` describes it: task objects in midjourney-proxy's shape, tasks
//! owned by the credential that created them (another credential gets the not-found answer), the three
//! not-found shapes, `list-by-condition` answering in store order, mode prefixes, and faults on demand
//! (status codes, 429 with `Retry-After`, latency, a gate that holds task lookups). The other task APIs
//! of the relays (Suno, Kling, OpenAI videos, ...) are spoken in their own shapes ([`api`]). It counts
//! every call.

pub mod api;
mod links;
mod midjourney;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use api::{Api, Phase};
use api::{ApiTask, Lookup};
use midjourney::{
    lifecycle_state, midjourney_lookup, not_found, progress_for, strip_mode, submit, task_json,
};

/// Largest request body the simulator reads.
const MAX_BODY: usize = 16 << 20;
/// Requests kept for inspection; older ones are dropped.
const RECORDED: usize = 4096;

/// How the simulator answers a fetch for an id the caller may not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    /// `404` with `{"code":4,"description":"task_no_found"}` (new-api forks).
    Status404,
    /// `400` with new-api's object, trailing space included.
    Status400,
    /// `200` with an empty body (novicezk/midjourney-proxy).
    EmptyBody,
    /// `204 No Content` (trueai-org/midjourney-proxy).
    NoContent,
}

/// A fault the next task lookups answer with instead of the real answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This status with a router-style JSON error body.
    Status(u16),
    /// `429`, with `Retry-After: n` when given.
    RateLimited { retry_after: Option<u64> },
    /// `200` with an HTML page, as a misconfigured relay or a captive portal answers.
    Html,
}

/// One request as the simulator received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A task's state. Tasks made by a submit follow a timed lifecycle; tasks made by a test stay as set.
#[derive(Debug, Clone)]
struct Task {
    api: Api,
    owner: String,
    action: String,
    prompt: String,
    status: String,
    progress: String,
    submit_time: u64,
    fail_reason: String,
    /// For submitted tasks: when they started and how long they take.
    lifecycle: Option<(Instant, Duration)>,
    /// When the result's assets expire (OpenAI videos' `expires_at`, Unix seconds).
    expires_at: Option<u64>,
    /// Last change, Unix ms (video-query's `status_update_time`).
    updated_ms: u64,
    /// Lookups still to answer "no such task" (see [`Simulator::set_hidden_lookups`]).
    hidden: u64,
}

impl Task {
    fn new(
        api: Api,
        owner: &str,
        id: &str,
        status: &str,
        lifecycle: Option<(Instant, Duration)>,
    ) -> Self {
        Task {
            api,
            owner: owner.to_owned(),
            action: "IMAGINE".into(),
            prompt: format!("simulated task {id}"),
            status: status.to_owned(),
            progress: progress_for(status).into(),
            submit_time: epoch_ms(),
            fail_reason: String::new(),
            lifecycle,
            expires_at: None,
            updated_ms: epoch_ms(),
            hidden: 0,
        }
    }
}

#[derive(Default)]
struct Store {
    tasks: HashMap<String, Task>,
    /// Ids in creation order: `list-by-condition` answers in this order, not the request's.
    order: Vec<String>,
}

#[derive(Default)]
struct Counters {
    /// Every request received.
    total: u64,
    /// Status lookups by store key ([`Api::key`]).
    fetches: HashMap<String, u64>,
    /// The ids of each batch call, with its API, in call order.
    lists: Vec<(Api, Vec<String>)>,
}

struct State {
    store: Mutex<Store>,
    counters: Mutex<Counters>,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    faults: Mutex<VecDeque<Fault>>,
    /// A fault every task lookup answers with until cleared (after the queued ones).
    standing_fault: Mutex<Option<Fault>>,
    latency: Mutex<Duration>,
    not_found: Mutex<NotFound>,
    task_duration: Mutex<Duration>,
    /// How long a submit takes to answer (the task is created when it arrives, as a relay saves and
    /// bills it before its slow upstream call returns).
    submit_latency: Mutex<Duration>,
    /// How many lookups of a just-submitted task answer new-api's "not inserted yet" (`200`,
    /// `{"code":3,"description":"task_no_found"}`) before it shows.
    hidden_lookups: AtomicU64,
    /// Tasks created by Midjourney submits.
    submits: AtomicU64,
    /// Gzip task-lookup answers whatever the caller accepts, as a CDN that ignores
    /// `Accept-Encoding: identity` does.
    gzip_lookups: AtomicBool,
    /// True while a test holds task lookups; they wait until it turns false.
    held: watch::Sender<bool>,
    /// Woken on every request, for tests that wait for a call to arrive.
    arrived: Notify,
    /// TLS handshakes completed, and those that chose HTTP/2.
    handshakes: AtomicU64,
    h2_handshakes: AtomicU64,
    next_id: AtomicU64,
    /// The most Midjourney tasks it ever had running at once (counted at each submit): what a
    /// Discord account's concurrency limit would have seen.
    peak_running: AtomicU64,
    /// This instance's part of every id it makes (random), so several simulators (a pool's members)
    /// never make the same id, as real instances' snowflake-like ids do not collide.
    worker: u64,
    /// The result files' signed links, and their downloads.
    links: links::Links,
}

impl State {
    /// A fresh task id: the time in ms, this instance's worker number, a counter (19 digits, as
    /// midjourney-proxy's ids are digits).
    fn new_id(&self) -> String {
        format!(
            "{}{:03}{:03}",
            epoch_ms(),
            self.worker,
            self.next_id.fetch_add(1, Ordering::Relaxed) % 1000
        )
    }
}

/// A running simulator. Stops when dropped.
pub struct Simulator {
    addr: SocketAddr,
    /// Serving https (with a certificate for `localhost`) rather than http.
    tls: bool,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

/// Holds task lookups (fetch and list) until dropped.
pub struct Hold(Arc<State>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.held.send_replace(false);
    }
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(TcpListener::bind(("127.0.0.1", 0)).await?)
    }

    /// Starts a simulator on a bound listener.
    pub fn start_on(listener: TcpListener) -> std::io::Result<Self> {
        Self::serve(listener, None)
    }

    /// Starts a simulator on `127.0.0.1:0` serving https with `tls` (whose certificate should name
    /// `localhost`, the host [`url`](Self::url) gives), HTTP/2 or HTTP/1.1 by ALPN as it offers.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::serve(listener, Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn serve(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            store: Mutex::default(),
            counters: Mutex::default(),
            recorded: Mutex::default(),
            faults: Mutex::default(),
            standing_fault: Mutex::default(),
            latency: Mutex::new(Duration::ZERO),
            not_found: Mutex::new(NotFound::Status404),
            task_duration: Mutex::new(Duration::from_secs(60)),
            submit_latency: Mutex::new(Duration::ZERO),
            hidden_lookups: AtomicU64::new(0),
            submits: AtomicU64::new(0),
            gzip_lookups: AtomicBool::new(false),
            held: watch::channel(false).0,
            arrived: Notify::new(),
            next_id: AtomicU64::new(1),
            peak_running: AtomicU64::new(0),
            worker: rand::random::<u64>() % 1000,
            handshakes: AtomicU64::new(0),
            h2_handshakes: AtomicU64::new(0),
            links: links::Links::default(),
        });
        let host = if tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        state
            .links
            .set_origin(format!("{scheme}://{host}:{}", addr.port()));
        let (stop, stopped) = watch::channel(false);
        let is_tls = tls.is_some();
        tokio::spawn(accept_loop(listener, tls, Arc::clone(&state), stopped));
        Ok(Simulator {
            addr,
            tls: is_tls,
            state,
            stop,
        })
    }

    /// TLS handshakes completed (https only): one per connection the gateway opened.
    pub fn tls_handshakes(&self) -> u64 {
        self.state.handshakes.load(Ordering::Relaxed)
    }

    /// Of those, the ones that negotiated HTTP/2 by ALPN.
    pub fn h2_handshakes(&self) -> u64 {
        self.state.h2_handshakes.load(Ordering::Relaxed)
    }

    /// The base URL with `host` in place of the name the certificate is for (to test name checks).
    pub fn url_with_host(&self, host: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to point a gateway at.
    pub fn url(&self) -> String {
        if self.tls {
            self.url_with_host("localhost")
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Creates a task owned by `credential` (the `Authorization` or `mj-api-secret` value) with `status`.
    pub fn create_task(&self, credential: &str, id: &str, status: &str) {
        self.create_task_in(Api::Midjourney, credential, id, status);
    }

    /// Creates a task of `api` owned by `credential` with `status` (that API's own word).
    pub fn create_task_in(&self, api: Api, credential: &str, id: &str, status: &str) {
        self.insert(api.key(id), Task::new(api, credential, id, status, None));
    }

    /// Creates a task owned by `credential` that is submitted now and finishes after `duration`.
    pub fn submit_task(&self, credential: &str, id: &str, duration: Duration) {
        self.submit_task_in(Api::Midjourney, credential, id, duration);
    }

    /// Creates a task of `api` that is submitted now and finishes after `duration`.
    pub fn submit_task_in(&self, api: Api, credential: &str, id: &str, duration: Duration) {
        let lifecycle = Some((Instant::now(), duration));
        let status = api.status(Phase::Queued);
        self.insert(
            api.key(id),
            Task::new(api, credential, id, status, lifecycle),
        );
    }

    fn insert(&self, key: String, task: Task) {
        let mut store = self.state.store.lock();
        if !store.tasks.contains_key(&key) {
            store.order.push(key.clone());
        }
        store.tasks.insert(key, task);
    }

    /// Moves a task to `status` (and the progress that goes with it).
    pub fn set_status(&self, id: &str, status: &str) {
        self.set_status_in(Api::Midjourney, id, status);
    }

    /// Moves a task of `api` to `status` (that API's own word).
    pub fn set_status_in(&self, api: Api, id: &str, status: &str) {
        if let Some(task) = self.state.store.lock().tasks.get_mut(&api.key(id)) {
            task.status = status.to_owned();
            task.progress = progress_for(Api::Midjourney.status(api.phase(status))).into();
            task.lifecycle = None;
            task.updated_ms = epoch_ms();
        }
    }

    /// Sets when a task's result expires (`expires_at`, Unix seconds; APIs that state it).
    pub fn set_expires_at(&self, api: Api, id: &str, expires_at: Option<u64>) {
        if let Some(task) = self.state.store.lock().tasks.get_mut(&api.key(id)) {
            task.expires_at = expires_at;
        }
    }

    /// Sets `progress` of an in-progress task, e.g. `"65%"`.
    /// Sets a Midjourney task's prompt (it appears three times in its answer: a long one makes a
    /// large answer).
    pub fn set_prompt(&self, id: &str, prompt: &str) {
        if let Some(task) = self.state.store.lock().tasks.get_mut(id) {
            task.prompt = prompt.to_owned();
        }
    }

    pub fn set_progress(&self, id: &str, progress: &str) {
        if let Some(task) = self.state.store.lock().tasks.get_mut(id) {
            task.progress = progress.to_owned();
        }
    }

    /// How long tasks made by a submit take from submit to `SUCCESS`.
    /// How long every submit takes to answer; the task exists from the moment it arrives.
    pub fn set_submit_latency(&self, latency: Duration) {
        *self.state.submit_latency.lock() = latency;
    }

    /// The first `n` lookups of each task submitted from now on answer `200`
    /// `{"code":3,"description":"task_no_found"}`, as new-api does before its row is inserted.
    pub fn set_hidden_lookups(&self, n: u64) {
        self.state.hidden_lookups.store(n, Ordering::Relaxed);
    }

    /// Submits the simulator has created tasks for.
    /// The most submitted Midjourney tasks running here at once.
    pub fn peak_running(&self) -> u64 {
        self.state.peak_running.load(Ordering::Relaxed)
    }

    pub fn submits(&self) -> u64 {
        self.state.submits.load(Ordering::Relaxed)
    }

    /// Signs result links as the real ones are (Discord's `ex=`/`is=`/`hm=`, a CDN's
    /// `Expires=`/`Signature=`; Suno's and Luma's stay plain), expiring `ttl` after their task was
    /// made; past it, or with a wrong signature, they answer `403`. `None`, the default: plain links
    /// that never expire (answers then carry no expiry the gateway would read).
    pub fn set_link_ttl(&self, ttl: Option<Duration>) {
        self.state.links.set_ttl(ttl);
    }

    /// Downloads of the result file at `path` (a link's path, `/attachments/{id}/{id}.png` or
    /// `/files/{api}/{id}.mp4`) that were answered with the file.
    pub fn downloads(&self, path: &str) -> u64 {
        self.state.links.downloads(path)
    }

    /// Downloads of every result file, in all.
    pub fn all_downloads(&self) -> u64 {
        self.state.links.all_downloads()
    }

    pub fn set_task_duration(&self, duration: Duration) {
        *self.state.task_duration.lock() = duration;
    }

    /// Gzips every task-lookup answer (fetch and list) regardless of `Accept-Encoding`.
    pub fn set_gzip_lookups(&self, on: bool) {
        self.state.gzip_lookups.store(on, Ordering::Relaxed);
    }

    /// Delay before every answer.
    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock() = latency;
    }

    pub fn set_not_found(&self, style: NotFound) {
        *self.state.not_found.lock() = style;
    }

    /// The next `times` task lookups answer with `fault`.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.state
            .faults
            .lock()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Every task lookup answers with `fault` until this is called again with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.state.standing_fault.lock() = fault;
    }

    /// Drops every fault not yet served, queued or standing.
    pub fn clear_faults(&self) {
        self.state.faults.lock().clear();
        self.set_fault(None);
    }

    /// Holds every task lookup (fetch and list) until the returned guard is dropped.
    pub fn hold(&self) -> Hold {
        self.state.held.send_replace(true);
        Hold(Arc::clone(&self.state))
    }

    /// Every request received, whatever its route.
    pub fn total_calls(&self) -> u64 {
        self.state.counters.lock().total
    }

    /// `fetch` calls received for `id`.
    pub fn fetch_calls(&self, id: &str) -> u64 {
        self.fetch_calls_in(Api::Midjourney, id)
    }

    /// Status lookups received for task `id` of `api`.
    pub fn fetch_calls_in(&self, api: Api, id: &str) -> u64 {
        self.state
            .counters
            .lock()
            .fetches
            .get(&api.key(id))
            .copied()
            .unwrap_or(0)
    }

    /// The ids each batch call of `api` asked for, in call order.
    pub fn batch_calls_in(&self, api: Api) -> Vec<Vec<String>> {
        let counters = self.state.counters.lock();
        counters
            .lists
            .iter()
            .filter(|(of, _)| *of == api)
            .map(|(_, ids)| ids.clone())
            .collect()
    }

    /// `fetch` calls received, all ids together.
    pub fn all_fetch_calls(&self) -> u64 {
        self.state.counters.lock().fetches.values().sum()
    }

    /// The ids each `list-by-condition` call asked for, in call order.
    pub fn list_calls(&self) -> Vec<Vec<String>> {
        self.batch_calls_in(Api::Midjourney)
    }

    /// Upstream lookups of Midjourney task `id`: fetches plus appearances in list calls.
    pub fn lookups(&self, id: &str) -> u64 {
        let counters = self.state.counters.lock();
        let listed = counters
            .lists
            .iter()
            .filter(|(api, _)| *api == Api::Midjourney)
            .flat_map(|(_, ids)| ids)
            .filter(|listed| listed.as_str() == id)
            .count() as u64;
        counters.fetches.get(id).copied().unwrap_or(0) + listed
    }

    /// The requests received, oldest first (the most recent few thousand).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.recorded.lock().iter().cloned().collect()
    }

    /// Waits until at least `n` requests in all have arrived.
    pub async fn wait_for_calls(&self, n: u64) {
        loop {
            let notified = self.state.arrived.notified();
            if self.total_calls() >= n {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            () = until_stopped(&mut stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        let stopped = stopped.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(&builder, stream, state, stopped).await;
            };
            // A client that refuses the certificate ends here, as a real server sees it.
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            state.handshakes.fetch_add(1, Ordering::Relaxed);
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                state.h2_handshakes.fetch_add(1, Ordering::Relaxed);
            }
            serve_connection(&builder, stream, state, stopped).await;
        });
    }
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    stream: I,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(answer(&state, request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = until_stopped(&mut stopped) => {}
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here rather than hold it in a select.
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    if parts.method == Method::GET && parts.uri.path() == "/_sim/stats" {
        // Not an API call: not recorded, not counted.
        return json_response(StatusCode::OK, &stats(state));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, 413, "body too large"),
    };
    {
        let mut recorded = state.recorded.lock();
        if recorded.len() == RECORDED {
            recorded.pop_front();
        }
        recorded.push_back(RecordedRequest {
            method: parts.method.clone(),
            uri: parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let path = parts.uri.path();
    let route = strip_mode(path);
    let lookup = midjourney_lookup(&parts.method, route)
        .or_else(|| api::lookup(&parts.method, path, parts.uri.query()));
    {
        let mut counters = state.counters.lock();
        counters.total += 1;
        match &lookup {
            Some(Lookup::Fetch(api, id)) => {
                *counters.fetches.entry(api.key(id)).or_default() += 1;
            }
            Some(Lookup::Batch(api)) => counters.lists.push((*api, requested_ids(&body))),
            None => {}
        }
    }
    state.arrived.notify_waiters();

    let latency = *state.latency.lock();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if lookup.is_some() {
        let mut held = state.held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
        let fault = state
            .faults
            .lock()
            .pop_front()
            .or(*state.standing_fault.lock());
        if let Some(fault) = fault {
            return fault_response(fault);
        }
    }

    let credential = credential(&parts.headers);
    if let Some(lookup) = lookup {
        let response = match lookup {
            Lookup::Fetch(api, id) => fetch(state, api, &id, credential.as_deref()),
            Lookup::Batch(api) => list(state, api, &body, credential.as_deref()),
        };
        return if state.gzip_lookups.load(Ordering::Relaxed) {
            gzipped(response).await
        } else {
            response
        };
    }
    if parts.method == Method::POST
        && let Some(action) = route.strip_prefix("/mj/submit/")
    {
        let answer = submit(state, action, &body, credential.as_deref());
        let latency = *state.submit_latency.lock();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        return answer;
    }
    if parts.method == Method::POST && path == "/suno/submit/music" {
        return submit_music(state, credential.as_deref());
    }
    if parts.method == Method::GET
        && let Some(file) = state.links.serve(path, parts.uri.query())
    {
        return file;
    }
    if parts.method == Method::GET
        && let Some(id) = route.strip_prefix("/mj/image/")
    {
        return image(id);
    }
    if parts.method == Method::GET
        && let Some(id) = path
            .strip_prefix("/v1/videos/")
            .and_then(|rest| rest.strip_suffix("/content"))
    {
        // OpenAI videos' download: binary, never a status.
        return video_content(state, id, parts.uri.query(), credential.as_deref());
    }
    error(StatusCode::NOT_FOUND, 404, "not found")
}

/// The counters, for load generators in another process: `GET /_sim/stats`.
fn stats(state: &State) -> Value {
    let counters = state.counters.lock();
    json!({
        "total": counters.total,
        "fetches": counters.fetches.values().sum::<u64>(),
        "list_calls": counters.lists.len(),
        "listed_ids": counters.lists.iter().map(|(_, ids)| ids.len()).sum::<usize>(),
        "tasks": state.store.lock().tasks.len(),
    })
}

fn fetch(state: &State, api: Api, id: &str, credential: Option<&str>) -> Response<Full<Bytes>> {
    let Some(credential) = credential else {
        return error(StatusCode::UNAUTHORIZED, 401, "missing credential");
    };
    let mut store = state.store.lock();
    match store
        .tasks
        .get_mut(&api.key(id))
        .filter(|task| task.owner == credential)
    {
        Some(task) if task.hidden > 0 => {
            task.hidden -= 1;
            json_response(
                StatusCode::OK,
                &json!({"code": 3, "description": "task_no_found"}),
            )
        }
        Some(task) => json_response(StatusCode::OK, &answer_json(id, task, &state.links)),
        None if api == Api::Midjourney => not_found(*state.not_found.lock()),
        None => {
            let (status, body) = api.not_found();
            json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
                &body,
            )
        }
    }
}

/// A task's status answer in its API's shape.
fn answer_json(id: &str, task: &Task, links: &links::Links) -> Value {
    let issued = task.submit_time / 1000;
    if task.api == Api::Midjourney {
        return task_json(id, task, &links.discord(id, issued));
    }
    let (status, progress) = current_state(task);
    let status = task.api.status(Api::Midjourney.phase(&status));
    let status = if task.lifecycle.is_some() {
        status
    } else {
        // Set by a test: its own word, whatever the case.
        task.status.as_str()
    };
    task.api.answer(
        id,
        &ApiTask {
            status,
            progress: &progress,
            submit_time: task.submit_time,
            updated_ms: task.updated_ms,
            expires_at: task.expires_at,
            result_url: links.signed(task.api.name(), id, issued),
        },
    )
}

/// A task's Midjourney-style status and progress now (following its lifecycle, if submitted).
fn current_state(task: &Task) -> (String, String) {
    match task.lifecycle {
        Some((started, duration)) => lifecycle_state(started.elapsed(), duration, &task.prompt),
        None => {
            let phase = task.api.phase(&task.status);
            (
                Api::Midjourney.status(phase).to_owned(),
                task.progress.clone(),
            )
        }
    }
}

fn list(state: &State, api: Api, body: &[u8], credential: Option<&str>) -> Response<Full<Bytes>> {
    let Some(credential) = credential else {
        return error(StatusCode::UNAUTHORIZED, 401, "missing credential");
    };
    let Ok(query) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, 400, "invalid json");
    };
    let wanted: Vec<&str> = query
        .get("ids")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let keys: Vec<String> = wanted.iter().map(|id| api.key(id)).collect();
    let store = state.store.lock();
    let tasks: Vec<Value> = store
        .order
        .iter()
        .filter(|key| keys.contains(key))
        .filter_map(|key| {
            let task = store.tasks.get(key)?;
            let id = key.strip_prefix(&api.key("")).unwrap_or(key);
            let answer = answer_json(id, task, &state.links);
            let item = match api {
                Api::Suno => answer["data"].clone(),
                _ => answer,
            };
            (task.owner == credential).then_some(item)
        })
        .collect();
    json_response(StatusCode::OK, &api.batch_answer(tasks))
}

/// `POST /suno/submit/music`: a Suno task following the submit lifecycle, its id in new-api's envelope.
fn submit_music(state: &State, credential: Option<&str>) -> Response<Full<Bytes>> {
    let Some(credential) = credential else {
        return error(StatusCode::UNAUTHORIZED, 401, "missing credential");
    };
    let id = format!("suno-{}", state.new_id());
    let duration = *state.task_duration.lock();
    let lifecycle = Some((Instant::now(), duration));
    let task = Task::new(
        Api::Suno,
        credential,
        &id,
        Api::Suno.status(Phase::Queued),
        lifecycle,
    );
    let mut store = state.store.lock();
    store.order.push(Api::Suno.key(&id));
    store.tasks.insert(Api::Suno.key(&id), task);
    json_response(
        StatusCode::OK,
        &json!({"code": "success", "message": "", "data": id}),
    )
}

/// `GET /v1/videos/{id}/content?variant=video|thumbnail|spritesheet`, as OpenAI answers it: the
/// owner's finished video (MP4), its thumbnail (WebP) or spritesheet (JPEG), until `expires_at`;
/// OpenAI's error object otherwise. Every file served is counted under its path and variant.
fn video_content(
    state: &State,
    id: &str,
    query: Option<&str>,
    credential: Option<&str>,
) -> Response<Full<Bytes>> {
    let openai_error = |status: StatusCode, message: &str| {
        json_response(
            status,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
        )
    };
    let Some(credential) = credential else {
        return openai_error(StatusCode::UNAUTHORIZED, "You didn't provide an API key.");
    };
    let variant = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("variant="))
        .unwrap_or("video");
    let content_type = match variant {
        "video" => "video/mp4",
        "thumbnail" => "image/webp",
        "spritesheet" => "image/jpeg",
        _ => return openai_error(StatusCode::BAD_REQUEST, "Invalid variant."),
    };
    {
        let store = state.store.lock();
        let Some(task) = store
            .tasks
            .get(&Api::OpenAiVideos.key(id))
            .filter(|task| task.owner == credential)
        else {
            return openai_error(StatusCode::NOT_FOUND, "Video not found.");
        };
        let (status, _) = current_state(task);
        if Api::Midjourney.phase(&status) != Phase::Succeeded
            && task.api.phase(&task.status) != Phase::Succeeded
        {
            return openai_error(StatusCode::NOT_FOUND, "Video is not ready yet.");
        }
        if task.expires_at.is_some_and(|at| at <= epoch_ms() / 1000) {
            return openai_error(StatusCode::NOT_FOUND, "Video content has expired.");
        }
    }
    let path = format!("/v1/videos/{id}/content?variant={variant}");
    state.links.count(&path);
    let mut response = image(&path);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn image(id: &str) -> Response<Full<Bytes>> {
    // A deterministic 256 KiB "image", large enough to exercise streaming.
    let seed = id.bytes().fold(0u8, u8::wrapping_add);
    let bytes: Vec<u8> = (0..256 * 1024)
        .map(|i| (i as u8).wrapping_add(seed))
        .collect();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
    response
}

fn fault_response(fault: Fault) -> Response<Full<Bytes>> {
    match fault {
        Fault::Html => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"<html><body>502 Bad Gateway (nginx)</body></html>",
            )));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            response
        }
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, i64::from(code), "simulated upstream fault")
        }
        Fault::RateLimited { retry_after } => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, 429, "rate limited");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

fn requested_ids(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|query| {
            let ids = query.get("ids")?.as_array()?;
            Some(
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// The credential as the real APIs read it: `Authorization`, else `mj-api-secret`.
fn credential(headers: &HeaderMap) -> Option<String> {
    headers
        .get(AUTHORIZATION)
        .or_else(|| headers.get("mj-api-secret"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn error(status: StatusCode, code: i64, description: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"code": code, "description": description, "result": null}),
    )
}

async fn gzipped(response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    use std::io::Write;
    let (mut parts, body) = response.into_parts();
    let Ok(plain) = body.collect().await.map(|collected| collected.to_bytes());
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(&plain);
    let compressed = encoder.finish().unwrap_or_default();
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    Response::from_parts(parts, Full::new(Bytes::from(compressed)))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
