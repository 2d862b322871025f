//! A load generator for task-API gateways: simulated clients polling tasks by fetch or batch, at a
//! fixed interval or as fast as answers come, against any HTTP target (mjgate, nginx, Varnish, the
//! upstream itself). `mjgate bench` and `mjgate demo` drive it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;

use crate::family::Families;
use crate::task::TaskClass;
use crate::tools::simulator::Api;

/// How clients ask for their tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `GET /mj/task/{id}/fetch`, one task per request.
    Fetch,
    /// `POST /mj/task/list-by-condition` with this many ids per request.
    Batch(usize),
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Base URL of the gateway under test, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    pub clients: usize,
    /// Tasks per credential; client `i` polls task `i % tasks` (fetch) or a window from it (batch).
    pub tasks: usize,
    /// Pause between one client's requests; zero sends the next as soon as the answer is in.
    pub interval: Duration,
    pub duration: Duration,
    pub mode: Mode,
    /// `Authorization` values; client `i` uses credential `i % len`.
    pub credentials: Vec<String>,
    /// Each client sends exactly one request, all at once (a cold burst), instead of polling.
    pub burst: bool,
    /// Each request asks for a task no request asked for before (client `i` takes tasks `i`,
    /// `i + clients`, ...), pausing `interval` between them, and the run ends when every task was
    /// asked for once: fills a cache.
    pub sweep: bool,
    /// Task ids are `{prefix}{i}` for one credential, `{prefix}{c}-{i}` for several (as the simulator
    /// seeds them).
    pub id_prefix: String,
    /// Each client sends `If-None-Match` with the last `ETag` it got (a `304` counts as success).
    pub conditional: bool,
    /// Long-poll: fetches ask `?wait=` this long (with `If-None-Match`, as `conditional`).
    pub wait: Option<Duration>,
    /// The task APIs polled: task `i` is of `apis[i % len]` (as the simulator seeds them). Batches
    /// need APIs with a batch route (Midjourney, Suno).
    pub apis: Vec<Api>,
}

impl LoadSpec {
    /// The id of task `index` of credential `credential`.
    /// The API task `index` belongs to.
    pub fn api_of(&self, index: usize) -> Api {
        self.apis
            .get(index % self.apis.len().max(1))
            .copied()
            .unwrap_or(Api::Midjourney)
    }

    pub fn task_id(&self, credential: usize, index: usize) -> String {
        if self.credentials.len() <= 1 {
            format!("{}{index}", self.id_prefix)
        } else {
            format!("{}{credential}-{index}", self.id_prefix)
        }
    }
}

/// Counters a progress display can read while the run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub body_bytes: AtomicU64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    /// Transport failures and answers other than 2xx.
    pub errors: u64,
    /// Answers by status code, transport failures under 0.
    pub statuses: Vec<(u16, u64)>,
    pub elapsed_secs: f64,
    pub throughput: f64,
    pub latency_ms: Latency,
    /// Response body bytes received, all requests together.
    pub body_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs the load; `progress` is updated as answers arrive.
pub async fn run(spec: &LoadSpec, progress: Arc<Progress>) -> LoadReport {
    let client: Client<HttpConnector, Full<Bytes>> = {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(spec.clients.max(1))
            .build(connector)
    };
    let spec = Arc::new(spec.clone());
    let started = Instant::now();
    let deadline = started + spec.duration;
    let barrier = Arc::new(tokio::sync::Barrier::new(spec.clients));
    let mut workers = Vec::with_capacity(spec.clients);
    for index in 0..spec.clients {
        let client = client.clone();
        let spec = Arc::clone(&spec);
        let progress = Arc::clone(&progress);
        let barrier = Arc::clone(&barrier);
        workers.push(tokio::spawn(async move {
            let plan = ClientPlan::new(&spec, index);
            let mut etag = None;
            let mut histogram = new_histogram();
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            if spec.burst {
                barrier.wait().await;
                let status = plan
                    .send(&client, &mut histogram, &progress, &mut etag)
                    .await;
                count(&progress, &mut statuses, status);
                return (histogram, statuses);
            }
            // Spread the clients' first requests over one interval, as independent pollers would be.
            let offset = spec
                .interval
                .mul_f64(index as f64 / spec.clients.max(1) as f64);
            tokio::time::sleep(offset).await;
            if spec.sweep {
                let credentials = spec.credentials.len().max(1);
                let mut task = index;
                while task < spec.tasks * credentials && Instant::now() < deadline {
                    let plan = ClientPlan::for_task(&spec, task % credentials, task / credentials);
                    let status = plan
                        .send(&client, &mut histogram, &progress, &mut None)
                        .await;
                    count(&progress, &mut statuses, status);
                    task += spec.clients;
                    if !spec.interval.is_zero() {
                        tokio::time::sleep(spec.interval).await;
                    }
                }
                return (histogram, statuses);
            }
            let mut next = Instant::now();
            while Instant::now() < deadline {
                let status = plan
                    .send(&client, &mut histogram, &progress, &mut etag)
                    .await;
                count(&progress, &mut statuses, status);
                // A long-polling client is done once its task is: it would otherwise be answered
                // at once, again and again.
                if plan.long_poll && plan.finished.load(Ordering::Relaxed) {
                    break;
                }
                if !spec.interval.is_zero() {
                    next += spec.interval;
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep(next - now).await;
                    } else {
                        next = now;
                    }
                }
            }
            (histogram, statuses)
        }));
    }
    let mut histogram = new_histogram();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for worker in workers {
        if let Ok((h, s)) = worker.await {
            let _ = histogram.add(&h);
            for (status, n) in s {
                *statuses.entry(status).or_default() += n;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests: u64 = statuses.values().sum();
    let errors = statuses
        .iter()
        .filter(|(status, _)| !succeeded(**status))
        .map(|(_, n)| n)
        .sum();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    LoadReport {
        requests,
        errors,
        statuses: statuses.into_iter().collect(),
        elapsed_secs: elapsed,
        throughput: requests as f64 / elapsed.max(1e-9),
        latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
        },
        body_bytes: progress.body_bytes.load(Ordering::Relaxed),
    }
}

/// Whether a task answer says the task is over.
fn is_terminal(body: &[u8]) -> bool {
    static FAMILIES: std::sync::OnceLock<Families> = std::sync::OnceLock::new();
    let families = FAMILIES.get_or_init(Families::builtin);
    // Whichever family's answer it is: a body is finished if its family's status says so.
    families.all().iter().any(|family| {
        family
            .status_text(body)
            .is_some_and(|status| family.class_of(&status) == TaskClass::Terminal)
    })
}

/// A 2xx, or the `304` a conditional request hopes for.
fn succeeded(status: u16) -> bool {
    (200..300).contains(&status) || status == 304
}

fn count(progress: &Progress, statuses: &mut std::collections::BTreeMap<u16, u64>, status: u16) {
    progress.requests.fetch_add(1, Ordering::Relaxed);
    if !succeeded(status) {
        progress.errors.fetch_add(1, Ordering::Relaxed);
    }
    *statuses.entry(status).or_default() += 1;
}

/// What one client asks for, built once.
struct ClientPlan {
    method: Method,
    uri: http::Uri,
    credential: Option<http::HeaderValue>,
    body: Bytes,
    conditional: bool,
    long_poll: bool,
    /// Set when an answer showed the task terminal (read only for long-polling clients).
    finished: std::sync::atomic::AtomicBool,
}

impl ClientPlan {
    fn new(spec: &LoadSpec, index: usize) -> Self {
        let credential_index = index % spec.credentials.len().max(1);
        let first = (index / spec.credentials.len().max(1)) % spec.tasks.max(1);
        Self::for_task(spec, credential_index, first)
    }

    /// The request for task `first` (and, in batch mode, the ones after it) of one credential.
    fn for_task(spec: &LoadSpec, credential_index: usize, first: usize) -> Self {
        let credential = spec
            .credentials
            .get(credential_index)
            .and_then(|c| http::HeaderValue::from_str(c).ok());
        let base = spec.target.trim_end_matches('/');
        let api = spec.api_of(first);
        let (method, path, body) = match spec.mode {
            Mode::Fetch => {
                let path = api.status_path(&spec.task_id(credential_index, first));
                let wait = spec.wait.map(|wait| {
                    let join = if path.contains('?') { '&' } else { '?' };
                    format!("{join}wait={}ms", wait.as_millis())
                });
                (
                    Method::GET,
                    format!("{base}{path}{}", wait.unwrap_or_default()),
                    Bytes::new(),
                )
            }
            Mode::Batch(size) => {
                // One API per batch: the tasks after `first` that are of the same API.
                let ids: Vec<String> = (0..spec.tasks.max(1))
                    .map(|k| (first + k) % spec.tasks.max(1))
                    .filter(|index| spec.api_of(*index) == api)
                    .take(size)
                    .map(|index| spec.task_id(credential_index, index))
                    .collect();
                (
                    Method::POST,
                    format!(
                        "{base}{}",
                        api.batch_path().unwrap_or("/mj/task/list-by-condition")
                    ),
                    Bytes::from(serde_json::json!({ "ids": ids }).to_string()),
                )
            }
        };
        ClientPlan {
            method,
            uri: path.parse().unwrap_or_default(),
            credential,
            body,
            conditional: spec.conditional || spec.wait.is_some(),
            long_poll: spec.wait.is_some() && spec.mode == Mode::Fetch,
            finished: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sends one request and reads the whole answer; returns its status (0 for a transport failure).
    /// A conditional client sends the `ETag` it last got in `etag`, and keeps the new one there.
    async fn send(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        histogram: &mut Histogram<u64>,
        progress: &Progress,
        etag: &mut Option<http::HeaderValue>,
    ) -> u16 {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        if let Some(credential) = &self.credential {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, credential.clone());
        }
        if self.conditional
            && let Some(etag) = etag.as_ref()
        {
            request
                .headers_mut()
                .insert(http::header::IF_NONE_MATCH, etag.clone());
        }
        if self.method == Method::POST {
            request.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        let started = Instant::now();
        // A long-poll may be held up to its wait; anything else gets 30 s.
        let deadline = Duration::from_secs(30)
            + if self.conditional {
                Duration::from_secs(90)
            } else {
                Duration::ZERO
            };
        let status = match tokio::time::timeout(deadline, client.request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                if self.conditional
                    && status == StatusCode::OK
                    && let Some(tag) = response.headers().get(http::header::ETAG)
                {
                    *etag = Some(tag.clone());
                }
                match response.into_body().collect().await {
                    Ok(body) => {
                        let body = body.to_bytes();
                        progress
                            .body_bytes
                            .fetch_add(body.len() as u64, Ordering::Relaxed);
                        if self.long_poll && status == StatusCode::OK && is_terminal(&body) {
                            self.finished.store(true, Ordering::Relaxed);
                        }
                        status
                    }
                    Err(_) => StatusCode::from_u16(599).unwrap_or(status),
                }
            }
            _ => return 0,
        };
        let micros = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let _ = histogram.record(micros);
        status.as_u16()
    }
}

/// The simulator's counters (`GET /_sim/stats`), to count the upstream calls a run caused.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, Serialize)]
pub struct UpstreamStats {
    pub total: u64,
    pub fetches: u64,
    pub list_calls: u64,
    pub listed_ids: u64,
}

impl std::ops::Sub for UpstreamStats {
    type Output = UpstreamStats;
    fn sub(self, before: UpstreamStats) -> UpstreamStats {
        UpstreamStats {
            total: self.total.saturating_sub(before.total),
            fetches: self.fetches.saturating_sub(before.fetches),
            list_calls: self.list_calls.saturating_sub(before.list_calls),
            listed_ids: self.listed_ids.saturating_sub(before.listed_ids),
        }
    }
}

/// Reads a simulator's counters from `url` (its `/_sim/stats`).
pub async fn upstream_stats(url: &str) -> Option<UpstreamStats> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .ok()?
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_follow_the_simulators_seeding() {
        let mut spec = LoadSpec {
            target: "http://127.0.0.1:1".into(),
            clients: 1,
            tasks: 10,
            interval: Duration::ZERO,
            duration: Duration::ZERO,
            mode: Mode::Fetch,
            credentials: vec!["a".into()],
            burst: false,
            sweep: false,
            id_prefix: "task-".into(),
            apis: vec![Api::Midjourney],
            conditional: false,
            wait: None,
        };
        assert_eq!(spec.task_id(0, 3), "task-3");
        spec.credentials.push("b".into());
        assert_eq!(spec.task_id(1, 3), "task-1-3");
    }
}
