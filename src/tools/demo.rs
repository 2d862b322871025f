//! `mjgate demo`: the simulated upstream, the gateway in front of it and a swarm of polling clients,
//! all in this process, with a live progress line and a closing table of what the gateway saved.
//! `--webhooks` ([`hooks`]): clients that submit with a hook and never poll.

pub mod hooks;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::tools::load::{self, LoadSpec, Mode, Progress};
use crate::tools::simulator::{Api, Simulator};

const CREDENTIAL: &str = "Bearer sk-demo";

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
    let config = Config::for_upstream(&sim.url()).map_err(std::io::Error::other)?;
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
    let _ = stop.send(());
    let _ = server.await;

    Ok(DemoReport {
        client_requests: report.requests,
        client_errors: report.errors,
        upstream_requests: sim.all_fetch_calls(),
        hit_ratio: lookups.map_or(0.0, |(hit, all)| hit / all.max(1.0)),
        p50_ms: report.latency_ms.p50,
        p99_ms: report.latency_ms.p99,
        elapsed: Duration::from_secs_f64(report.elapsed_secs),
        tasks: spec.tasks,
    })
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
        spec.clients,
        spec.tasks,
        spec.interval,
        report.elapsed.as_secs_f64(),
    )
}
