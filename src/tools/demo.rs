//! `mjgate demo`: the simulated upstream, the gateway in front of it and a swarm of polling clients,
//! all in this process, with a live progress line and a closing table of what the gateway saved.
//! `--webhooks` ([`hooks`]): clients that submit with a hook and never poll.

pub mod hooks;
pub mod pool;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::tools::load::{self, LoadSpec, Mode, Progress};
use crate::tools::simulator::{Api, Simulator};

const CREDENTIAL: &str = "Bearer sk-demo";

/// How long the upstream's result links live past the run and one in-progress TTL (when the
/// gateway has seen the last task finish): time to keep their files.
const LINK_MARGIN_SECS: u64 = 2;

/// The demo's knobs.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    pub clients: usize,
    pub tasks: usize,
    pub interval: Duration,
    pub duration: Duration,
    /// Whether to redraw the progress line in place (a terminal) or print one line per second.
    pub redraw: bool,
    /// The task APIs the tasks belong to, in turn (`--api suno`, `--api mix`).
    pub apis: Vec<Api>,
}

impl Default for DemoSpec {
    fn default() -> Self {
        DemoSpec {
            clients: 200,
            tasks: 50,
            interval: Duration::from_millis(250),
            duration: Duration::from_secs(20),
            redraw: true,
            apis: vec![Api::Midjourney],
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub client_requests: u64,
    pub client_errors: u64,
    pub upstream_requests: u64,
    pub hit_ratio: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub elapsed: Duration,
    pub tasks: usize,
    /// Result files the finished answers link to on the gateway, read back after the simulated
    /// upstream's own links had expired.
    pub files: KeptFiles,
}

/// What became of the finished tasks' result files.
#[derive(Debug, Clone, Default)]
pub struct KeptFiles {
    /// Links in finished answers that point at the gateway's kept files.
    pub linked: u64,
    /// Of those, served whole (`200`) once the upstream's links had died.
    pub served: u64,
    /// Links in finished answers still the upstream's (not kept).
    pub upstream_links: u64,
    /// Downloads the simulated upstream's file links answered, in all.
    pub origin_downloads: u64,
}

impl DemoReport {
    pub fn calls_saved(&self) -> f64 {
        self.client_requests as f64 / (self.upstream_requests.max(1)) as f64
    }

    /// Upstream calls per task per minute, through the gateway.
    pub fn upstream_per_task_minute(&self) -> f64 {
        self.upstream_requests as f64
            / self.tasks.max(1) as f64
            / (self.elapsed.as_secs_f64() / 60.0)
    }

    /// What the clients would have sent the upstream per task per minute without the gateway.
    pub fn direct_per_task_minute(&self) -> f64 {
        self.client_requests as f64 / self.tasks.max(1) as f64 / (self.elapsed.as_secs_f64() / 60.0)
    }
}

/// Runs the demo, writing progress to `progress_out` and returning the figures.
pub async fn run(
    spec: &DemoSpec,
    progress_out: &mut (impl Write + Send),
) -> std::io::Result<DemoReport> {
    let sim = Simulator::start().await?;
    // Tasks finish between a fifth and two thirds of the way through, so the run shows both the
    // in-progress TTL and terminal answers that never go upstream again.
    for i in 0..spec.tasks {
        let share = 0.2 + 0.45 * (i as f64 / spec.tasks.max(1) as f64);
        let api = spec.apis.get(i % spec.apis.len().max(1)).copied();
        sim.submit_task_in(
            api.unwrap_or(Api::Midjourney),
            CREDENTIAL,
            &format!("task-{i}"),
            spec.duration.mul_f64(share),
        );
    }
    // The upstream's result links die a little after the run ends (as Discord's do a day later):
    // time enough for the gateway to see the last task finish (one in-progress TTL) and keep its files.
    let mut config = Config::for_upstream(&sim.url()).map_err(std::io::Error::other)?;
    let in_progress_ttl = config.cache.in_progress_ttl;
    let link_ttl = Duration::from_secs(
        (spec.duration + in_progress_ttl).as_secs_f64().ceil() as u64 + LINK_MARGIN_SECS,
    );
    sim.set_link_ttl(Some(link_ttl));
    let links_made = Instant::now();
    let kept_dir = KeptDir::new(&mut config);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let gateway_url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(listener, config, async {
        let _ = stopped.await;
    }));

    let load = LoadSpec {
        target: gateway_url.clone(),
        clients: spec.clients,
        tasks: spec.tasks,
        interval: spec.interval,
        duration: spec.duration,
        mode: Mode::Fetch,
        credentials: vec![CREDENTIAL.to_owned()],
        burst: false,
        sweep: false,
        id_prefix: "task-".into(),
        apis: spec.apis.clone(),
        conditional: false,
        wait: None,
    };
    let apis: Vec<&str> = spec.apis.iter().map(|api| api.name()).collect();
    writeln!(
        progress_out,
        "mjgate demo: {} clients polling {} tasks ({}) every {:?} for {:?} through mjgate at {gateway_url}",
        spec.clients,
        spec.tasks,
        apis.join(", "),
        spec.interval,
        spec.duration
    )?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let running = tokio::spawn({
        let progress = Arc::clone(&progress);
        async move { load::run(&load, progress).await }
    });
    while !running.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let requests = progress.requests.load(Ordering::Relaxed);
        let upstream = sim.all_fetch_calls();
        let line = format!(
            "[{:>4.1}s/{:.0}s] client requests {requests:>7}  upstream requests {upstream:>5}  saved {:>6.1}x",
            started
                .elapsed()
                .as_secs_f64()
                .min(spec.duration.as_secs_f64()),
            spec.duration.as_secs_f64(),
            requests as f64 / upstream.max(1) as f64,
        );
        show_progress(progress_out, spec.redraw, started, &line)?;
    }
    if spec.redraw {
        writeln!(progress_out)?;
    }
    let report = running.await.map_err(std::io::Error::other)?;
    let lookups = scrape_lookups(&gateway_url).await;
    let upstream_requests = sim.all_fetch_calls();
    // Every task's answer once more, one in-progress TTL after the run (the last to finish are
    // stored now), their files kept...
    tokio::time::sleep(
        (links_made + spec.duration + in_progress_ttl).saturating_duration_since(Instant::now()),
    )
    .await;
    read_kept_files(&gateway_url, &sim.url(), spec).await;
    wait_for_mirroring(&gateway_url).await;
    // ... then, a second past the upstream's links' expiry (signed in whole seconds), read back
    // through the gateway.
    let dead =
        (links_made + link_ttl + Duration::from_secs(1)).saturating_duration_since(Instant::now());
    writeln!(
        progress_out,
        "waiting {:.1} s for the upstream's result links to expire, then reading every result file through mjgate",
        dead.as_secs_f64()
    )?;
    tokio::time::sleep(dead).await;
    let mut files = read_kept_files(&gateway_url, &sim.url(), spec).await;
    files.origin_downloads = sim.all_downloads();
    let _ = stop.send(());
    let _ = server.await;
    drop(kept_dir);

    Ok(DemoReport {
        client_requests: report.requests,
        client_errors: report.errors,
        upstream_requests,
        files,
        hit_ratio: lookups.map_or(0.0, |(hit, all)| hit / all.max(1.0)),
        p50_ms: report.latency_ms.p50,
        p99_ms: report.latency_ms.p99,
        elapsed: Duration::from_secs_f64(report.elapsed_secs),
        tasks: spec.tasks,
    })
}

/// The demo's kept files, in a directory of their own that goes when the demo ends.
struct KeptDir(Option<std::path::PathBuf>);

impl KeptDir {
    /// Points `config`'s kept files (on by default) at a fresh temporary directory.
    fn new(config: &mut Config) -> Self {
        let Some(artifacts) = config.artifacts.as_mut() else {
            return KeptDir(None);
        };
        let dir = std::env::temp_dir().join(format!(
            "mjgate-demo-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        if let crate::config::ArtifactStore::Local { dir: kept, .. } = &mut artifacts.store {
            kept.clone_from(&dir);
        }
        KeptDir(Some(dir))
    }
}

impl Drop for KeptDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Every task's answer through the gateway, and every result link in it: the gateway's links read
/// whole, the upstream's counted.
async fn read_kept_files(gateway_url: &str, upstream_url: &str, spec: &DemoSpec) -> KeptFiles {
    let mut files = KeptFiles::default();
    for i in 0..spec.tasks {
        let api = spec
            .apis
            .get(i % spec.apis.len().max(1))
            .copied()
            .unwrap_or(Api::Midjourney);
        let url = format!("{gateway_url}{}", api.status_path(&format!("task-{i}")));
        let Some((_, body)) = get(&url, Some(CREDENTIAL)).await else {
            continue;
        };
        let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let mut links = Vec::new();
        collect_links(&answer, &mut links);
        for link in links {
            if link.starts_with(&format!(
                "{gateway_url}{}",
                crate::artifacts::token::FILES_PREFIX
            )) {
                files.linked += 1;
                if get(&link, None)
                    .await
                    .is_some_and(|(status, _)| status == 200)
                {
                    files.served += 1;
                }
            } else if link.starts_with(upstream_url) {
                files.upstream_links += 1;
            }
        }
    }
    files
}

fn collect_links(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(text) if text.starts_with("http") => out.push(text.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_links(v, out)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| collect_links(v, out)),
        _ => {}
    }
}

/// Waits (10 s at most) until the gateway is keeping no task's files.
async fn wait_for_mirroring(gateway_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some((_, body)) = get(&format!("{gateway_url}/metrics"), None).await else {
            return;
        };
        let mirroring = String::from_utf8_lossy(&body).lines().any(|line| {
            line.starts_with("mjgate_background_tasks{kind=\"mirror\"}") && !line.ends_with(" 0")
        });
        if !mirroring {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET url`: its status and body, `None` when it could not be asked.
async fn get(url: &str, credential: Option<&str>) -> Option<(u16, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut request = http::Request::get(url);
    if let Some(credential) = credential {
        request = request.header(http::header::AUTHORIZATION, credential);
    }
    let response = client
        .request(request.body(http_body_util::Empty::new()).ok()?)
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// Writes one progress line: redrawn in place on a terminal, else printed once a second (this is
/// called every 250 ms).
fn show_progress(
    out: &mut impl Write,
    redraw: bool,
    started: Instant,
    line: &str,
) -> std::io::Result<()> {
    if redraw {
        write!(out, "\r{line}")?;
    } else if started.elapsed().as_millis() % 1000 < 250 {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// (cache hits, all task lookups) from the gateway's `/metrics`.
async fn scrape_lookups(gateway_url: &str) -> Option<(f64, f64)> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri = format!("{gateway_url}/metrics").parse().ok()?;
    let body = client
        .get(uri)
        .await
        .ok()?
        .into_body()
        .collect()
        .await
        .ok()?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let (mut hit, mut all) = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("mjgate_task_lookups_total{"))
    {
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        all += value;
        if line.contains("cache=\"hit\"") {
            hit += value;
        }
    }
    Some((hit, all))
}

/// The closing table.
pub fn table(report: &DemoReport, spec: &DemoSpec) -> String {
    let recommended_low = 60.0 / 5.0;
    let recommended_high = 60.0 / 3.0;
    format!(
        "\n\
         | figure                            | value |\n\
         | --- | --- |\n\
         | client requests                   | {} ({} errors) |\n\
         | upstream requests                 | {} |\n\
         | calls saved (client ÷ upstream)   | {:.1}x |\n\
         | cache hit ratio                   | {:.1}% |\n\
         | client latency p50 / p99          | {:.2} ms / {:.2} ms |\n\
         | upstream requests per task-minute | {:.1} through mjgate, {:.0} without (recommended: {:.0}-{:.0}, one poll per 3-5 s) |\n\
         | result files kept                 | {} linked to mjgate, {} served after the upstream's links expired; {} downloads from the upstream, {} links left the upstream's |\n\
         \n{} clients, {} tasks, one poll per client every {:?}, for {:.1} s.\n",
        report.client_requests,
        report.client_errors,
        report.upstream_requests,
        report.calls_saved(),
        report.hit_ratio * 100.0,
        report.p50_ms,
        report.p99_ms,
        report.upstream_per_task_minute(),
        report.direct_per_task_minute(),
        recommended_low,
        recommended_high,
        report.files.linked,
        report.files.served,
        report.files.origin_downloads,
        report.files.upstream_links,
        spec.clients,
        spec.tasks,
        spec.interval,
        report.elapsed.as_secs_f64(),
    )
}
