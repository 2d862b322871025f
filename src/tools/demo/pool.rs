//! `mjgate demo --members N`: several midjourney-proxy-like members behind one gateway. Clients
//! submit tasks through it, poll them to the end, act on each (an upscale naming its parent task),
//! and read them all back in batches; the report says where every submit went, how many tasks each
//! member ran at once (against its limit), whether any follow-up missed its owner, and the upstream
//! calls per task.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::config::Config;
use crate::tools::simulator::Simulator;

const CREDENTIAL: &str = "Bearer sk-demo-pool";

/// What the pool demo runs.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub members: usize,
    /// Tasks submitted (each then gets one action, so twice as many run).
    pub tasks: usize,
    /// Each member's `max_running`.
    pub max_running: usize,
    /// How long a task runs on its member.
    pub task_duration: Duration,
    /// Each client's poll interval (also the gateway's `in_progress_ttl`).
    pub interval: Duration,
    /// Longest the whole run may take before the clients give up.
    pub deadline: Duration,
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            members: 3,
            tasks: 300,
            max_running: 10,
            task_duration: Duration::from_secs(2),
            interval: Duration::from_millis(500),
            deadline: Duration::from_secs(300),
        }
    }
}

/// What the pool demo measured.
#[derive(Debug, Clone, Default)]
pub struct PoolReport {
    pub elapsed: Duration,
    /// Submits (imagines and actions) each member received.
    pub submits: Vec<u64>,
    /// The most tasks each member ran at once, as the member itself counted.
    pub peak_running: Vec<u64>,
    /// Task fetches each member answered.
    pub fetches: Vec<u64>,
    /// Tasks that finished, imagines and actions together.
    pub finished: u64,
    /// Actions the owner of their parent accepted.
    pub actions_accepted: u64,
    /// Ids the batches answered (all of them, when every batch reached every owner).
    pub batched: u64,
    /// Anything a client did not get as it should have: an error status, an action whose parent
    /// its member did not know, a task missing from a batch, a task that never finished.
    pub errors: u64,
    /// Times the gateway had to look for an owner on every member (0: every follow-up went
    /// straight to the owner it learned from the submit).
    pub owner_lookups: u64,
    /// Client requests in all.
    pub client_requests: u64,
}

impl PoolReport {
    /// Upstream task fetches per finished task.
    pub fn fetches_per_task(&self) -> f64 {
        self.fetches.iter().sum::<u64>() as f64 / self.finished.max(1) as f64
    }
}

struct Clients {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Clients {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", CREDENTIAL)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .ok()?;
        let response = self.http.request(request).await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Submits at `path` until one is taken (a full pool answers 429 while the gateway waits no
    /// longer); the task id.
    async fn submit(&self, path: &str, body: Value, until: Instant) -> Option<String> {
        while Instant::now() < until {
            match self.call(Method::POST, path, Some(body.clone())).await {
                Some((200, answer)) if answer["code"] == 1 => {
                    return answer["result"].as_str().map(str::to_owned);
                }
                Some((429, _)) => tokio::time::sleep(Duration::from_millis(200)).await,
                _ => {
                    self.error();
                    return None;
                }
            }
        }
        self.error();
        None
    }

    /// Polls task `id` until it is finished.
    async fn finish(&self, id: &str, interval: Duration, until: Instant) -> bool {
        while Instant::now() < until {
            match self
                .call(Method::GET, &format!("/mj/task/{id}/fetch"), None)
                .await
            {
                Some((200, task)) if task["status"] == "SUCCESS" => return true,
                Some((200, _)) => tokio::time::sleep(interval).await,
                _ => {
                    self.error();
                    return false;
                }
            }
        }
        self.error();
        false
    }
}

/// Runs the pool demo, writing progress to `out`.
pub async fn run(spec: &PoolSpec, out: &mut (impl Write + Send)) -> std::io::Result<PoolReport> {
    let mut sims = Vec::with_capacity(spec.members);
    for _ in 0..spec.members.max(1) {
        let sim = Simulator::start().await?;
        sim.set_task_duration(spec.task_duration);
        sims.push(sim);
    }
    let mut text = format!(
        "[upstream]\npolicy = \"least-busy\"\nqueue_wait = \"{}ms\"\n[cache]\nin_progress_ttl = \"{}ms\"\n\
         [artifacts]\nenabled = false\n[log]\nfilter = \"warn\"\n",
        (spec.task_duration * 2).as_millis(),
        spec.interval.as_millis().max(1),
    );
    for (i, sim) in sims.iter().enumerate() {
        text.push_str(&format!(
            "[[upstream.members]]\nname = \"proxy-{i}\"\nurl = \"{}\"\nmax_running = {}\n",
            sim.url(),
            spec.max_running
        ));
    }
    let config = Config::from_toml(&text, &Default::default()).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(listener, config, async {
        let _ = stopped.await;
    }));
    writeln!(
        out,
        "mjgate demo: {} members (max_running {} each), {} clients each submitting a task, polling it \
         every {:?} to the end, upscaling it and polling that, through mjgate at {base}",
        spec.members, spec.max_running, spec.tasks, spec.interval
    )?;
    let clients = Arc::new(Clients {
        http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        base: base.clone(),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let until = started + spec.deadline;
    let finished = Arc::new(AtomicU64::new(0));
    let actions = Arc::new(AtomicU64::new(0));
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..spec.tasks {
        let (clients, finished, actions) = (
            Arc::clone(&clients),
            Arc::clone(&finished),
            Arc::clone(&actions),
        );
        let interval = spec.interval;
        runs.spawn(async move {
            let prompt = json!({ "prompt": format!("a lighthouse, variant {i}") });
            let id = clients.submit("/mj/submit/imagine", prompt, until).await?;
            if !clients.finish(&id, interval, until).await {
                return Some(vec![id]);
            }
            finished.fetch_add(1, Ordering::Relaxed);
            let action = json!({ "customId": "MJ::JOB::upsample::1::demo", "taskId": id });
            let Some(upscale) = clients.submit("/mj/submit/action", action, until).await else {
                return Some(vec![id]);
            };
            actions.fetch_add(1, Ordering::Relaxed);
            if clients.finish(&upscale, interval, until).await {
                finished.fetch_add(1, Ordering::Relaxed);
            }
            Some(vec![id, upscale])
        });
    }
    let mut ids = Vec::with_capacity(spec.tasks * 2);
    let mut shown = Instant::now();
    while let Some(done) = runs.join_next().await {
        ids.extend(done.ok().flatten().unwrap_or_default());
        if shown.elapsed() < Duration::from_secs(1) && !runs.is_empty() {
            continue;
        }
        shown = Instant::now();
        write!(
            out,
            "\r[{:>5.1}s] tasks finished {:>4}  client requests {:>6}",
            started.elapsed().as_secs_f64(),
            finished.load(Ordering::Relaxed),
            clients.requests.load(Ordering::Relaxed)
        )?;
    }
    writeln!(out)?;
    // Every task read back, 100 ids a batch, whichever members own them.
    let mut batched = 0;
    for chunk in ids.chunks(100) {
        match clients
            .call(
                Method::POST,
                "/mj/task/list-by-condition",
                Some(json!({ "ids": chunk })),
            )
            .await
        {
            Some((200, Value::Array(tasks))) => {
                let answered = tasks
                    .iter()
                    .zip(chunk)
                    .filter(|(task, id)| task["id"] == id.as_str() && task["status"] == "SUCCESS")
                    .count();
                batched += answered as u64;
                clients
                    .errors
                    .fetch_add((chunk.len() - answered) as u64, Ordering::Relaxed);
            }
            _ => {
                clients
                    .errors
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
    let owner_lookups = scrape_counter(&clients, "mjgate_owner_lookups_total").await;
    let report = PoolReport {
        elapsed: started.elapsed(),
        submits: sims.iter().map(Simulator::submits).collect(),
        peak_running: sims.iter().map(Simulator::peak_running).collect(),
        fetches: sims.iter().map(Simulator::all_fetch_calls).collect(),
        finished: finished.load(Ordering::Relaxed),
        actions_accepted: actions.load(Ordering::Relaxed),
        batched,
        errors: clients.errors.load(Ordering::Relaxed),
        owner_lookups,
        client_requests: clients.requests.load(Ordering::Relaxed),
    };
    let _ = stop.send(());
    let _ = server.await;
    Ok(report)
}

/// A counter's total over its labels, read from the gateway's `/metrics`.
async fn scrape_counter(clients: &Clients, name: &str) -> u64 {
    let request = Request::builder()
        .uri(format!("{}/metrics", clients.base))
        .body(Full::new(Bytes::new()));
    let Ok(request) = request else { return 0 };
    let Ok(response) = clients.http.request(request).await else {
        return 0;
    };
    let Ok(body) = response.into_body().collect().await else {
        return 0;
    };
    String::from_utf8_lossy(&body.to_bytes())
        .lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The report as a table.
pub fn print(report: &PoolReport, spec: &PoolSpec, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "\n| member | submits | most running at once (limit {}) | task fetches |",
        spec.max_running
    )?;
    writeln!(out, "| --- | ---: | ---: | ---: |")?;
    for m in 0..report.submits.len() {
        writeln!(
            out,
            "| proxy-{m} | {} | {} | {} |",
            report.submits[m], report.peak_running[m], report.fetches[m]
        )?;
    }
    writeln!(
        out,
        "\n{} tasks finished ({} imagines, {} upscales accepted by their parent's owner) in {:.1} s; \
         {} of {} read back by batch; {} client requests; {:.1} upstream fetches per task; \
         {} owner lookups; {} errors",
        report.finished,
        spec.tasks,
        report.actions_accepted,
        report.elapsed.as_secs_f64(),
        report.batched,
        spec.tasks * 2,
        report.client_requests,
        report.fetches_per_task(),
        report.owner_lookups,
        report.errors
    )
}
