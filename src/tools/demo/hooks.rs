//! `mjgate demo --webhooks`: clients submit tasks with a `notifyHook` and never poll; the gateway
//! watches the tasks and delivers every change to a receiver in this process, which checks each
//! signature. The table sets the deliveries against the polls the same clients would have made.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::{CREDENTIAL, DemoSpec};
use crate::config::{Config, Overrides};
use crate::tools::simulator::Simulator;
use crate::webhook::sign::SigningSecret;

/// What the webhooks demo measured.
#[derive(Debug, Clone)]
pub struct HooksReport {
    pub submits: u64,
    /// Deliveries the receiver got whose signature checked out.
    pub delivered: u64,
    /// Deliveries whose signature did not.
    pub bad_signatures: u64,
    /// Tasks whose finished state arrived.
    pub finished: u64,
    /// Upstream status lookups the gateway made to watch the tasks.
    pub upstream_polls: u64,
    /// Polls the same clients would have sent, one per `interval` per task, for as long.
    pub polls_avoided: u64,
    pub elapsed: Duration,
}

/// Counts what the receiver got.
#[derive(Default)]
struct Received {
    good: AtomicU64,
    bad: AtomicU64,
    finished: AtomicU64,
}

/// Runs the webhooks demo, writing progress to `progress_out`.
pub async fn run(
    spec: &DemoSpec,
    progress_out: &mut (impl Write + Send),
) -> std::io::Result<HooksReport> {
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let received = Arc::new(Received::default());
    let receiver = start_receiver(&secret, Arc::clone(&received)).await?;
    let sim = Simulator::start().await?;
    sim.set_task_duration(spec.duration.mul_f64(0.6));
    let text = format!(
        // Kept files off: this demo is about the polls hooks save (`mjgate demo` shows the files).
        "[upstream]\nurl = \"{}\"\n[webhooks]\nsecret = \"{secret}\"\nallow_private = true\nfirst_retry = \"200ms\"\n[artifacts]\nenabled = false\n",
        sim.url()
    );
    let config = Config::from_toml(&text, &Overrides::default()).map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let gateway = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(listener, config, async {
        let _ = stopped.await;
    }));
    writeln!(
        progress_out,
        "mjgate demo --webhooks: {} tasks submitted with a notifyHook through mjgate at {gateway}; nobody polls",
        spec.tasks
    )?;
    let started = Instant::now();
    let submits = submit_all(&gateway, &format!("http://{receiver}/hook"), spec.tasks).await;
    while started.elapsed() < spec.duration && received.finished.load(Ordering::Relaxed) < submits {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let line = format!(
            "[{:>4.1}s] deliveries {:>5}  finished {:>4}/{submits}  upstream polls {:>5}",
            started.elapsed().as_secs_f64(),
            received.good.load(Ordering::Relaxed),
            received.finished.load(Ordering::Relaxed),
            sim.all_fetch_calls(),
        );
        super::show_progress(progress_out, spec.redraw, started, &line)?;
    }
    if spec.redraw {
        writeln!(progress_out)?;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let _ = server.await;
    let per_task = (elapsed.as_secs_f64() / spec.interval.as_secs_f64().max(0.001)) as u64;
    Ok(HooksReport {
        submits,
        delivered: received.good.load(Ordering::Relaxed),
        bad_signatures: received.bad.load(Ordering::Relaxed),
        finished: received.finished.load(Ordering::Relaxed),
        upstream_polls: sim.all_fetch_calls(),
        polls_avoided: per_task * submits,
        elapsed,
    })
}

/// Submits `tasks` imagines with `hook`; how many the upstream took.
async fn submit_all(gateway: &str, hook: &str, tasks: usize) -> u64 {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut taken = 0;
    for i in 0..tasks {
        let body = serde_json::json!({"prompt": format!("demo task {i}"), "notifyHook": hook});
        let Ok(request) = Request::builder()
            .method(Method::POST)
            .uri(format!("{gateway}/mj/submit/imagine"))
            .header("authorization", CREDENTIAL)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
        else {
            continue;
        };
        if let Ok(response) = client.request(request).await
            && response.status().is_success()
        {
            taken += 1;
        }
    }
    taken
}

/// The hook receiver: checks every delivery's signature and counts it.
async fn start_receiver(
    secret: &str,
    received: Arc<Received>,
) -> std::io::Result<std::net::SocketAddr> {
    let secret = Arc::new(SigningSecret::parse(secret).map_err(std::io::Error::other)?);
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (secret, received) = (Arc::clone(&secret), Arc::clone(&received));
            let service = service_fn(move |request: Request<Incoming>| {
                let (secret, received) = (Arc::clone(&secret), Arc::clone(&received));
                async move {
                    receive(&secret, &received, request).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn receive(secret: &SigningSecret, received: &Received, request: Request<Incoming>) {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return;
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp = header("webhook-timestamp").parse().unwrap_or(0);
    let expected = secret.sign(&header("webhook-id"), timestamp, &body);
    if header("webhook-signature") != expected {
        received.bad.fetch_add(1, Ordering::Relaxed);
        return;
    }
    received.good.fetch_add(1, Ordering::Relaxed);
    let finished = serde_json::from_slice::<serde_json::Value>(&body)
        .is_ok_and(|task| matches!(task["status"].as_str(), Some("SUCCESS" | "FAILURE")));
    if finished {
        received.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The closing table.
pub fn table(report: &HooksReport, spec: &DemoSpec) -> String {
    format!(
        "\n\
         | figure | value |\n\
         | --- | --- |\n\
         | tasks submitted with a notifyHook | {} |\n\
         | webhook deliveries (signature checked) | {} ({} bad) |\n\
         | tasks whose finished state arrived | {} |\n\
         | upstream polls (the gateway's own watching) | {} |\n\
         | client polls needed | 0 (every {:?} per task: {} without hooks) |\n\
         \n{:.1} s; the upstream never saw a notifyHook.\n",
        report.submits,
        report.delivered,
        report.bad_signatures,
        report.finished,
        report.upstream_polls,
        spec.interval,
        report.polls_avoided,
        report.elapsed.as_secs_f64(),
    )
}
